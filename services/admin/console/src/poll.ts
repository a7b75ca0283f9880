// Data that refreshes itself: every page shows what the mesh is now, without a reload.
import { useEffect, useRef, useState } from "preact/hooks";
import { errorText } from "./api.js";

/** How often a page reloads its data while the tab is visible. */
export const REFRESH_MS = 4_000;

export interface Polled<T> {
  data: T | undefined;
  /** The last load's error (the previous data stays shown beside it). */
  error: string | undefined;
  /** When `data` was loaded. */
  loadedAt: Date | undefined;
  /** Loads now (after a change the operator made), without waiting for the next tick. */
  reload(): void;
}

/**
 * Calls `load` now, whenever `key` changes (say, the page token or a filter), and every
 * REFRESH_MS while the tab is visible. Loads of one key never overlap, and an answer for an
 * older key is dropped, so a slow response never overwrites a newer one.
 */
export function usePoll<T>(load: () => Promise<T>, key: string): Polled<T> {
  const [state, setState] = useState<Omit<Polled<T>, "reload">>({
    data: undefined,
    error: undefined,
    loadedAt: undefined,
  });
  const current = useRef({ key, loading: false });
  const loadRef = useRef(load);
  loadRef.current = load;
  const run = useRef(async (forKey: string) => {
    const c = current.current;
    if (c.key !== forKey || c.loading) return;
    c.loading = true;
    try {
      const data = await loadRef.current();
      if (current.current === c) setState({ data, error: undefined, loadedAt: new Date() });
    } catch (err) {
      if (current.current === c) setState((s) => ({ ...s, error: errorText(err) }));
    } finally {
      c.loading = false;
    }
  }).current;

  useEffect(() => {
    current.current = { key, loading: false };
    setState({ data: undefined, error: undefined, loadedAt: undefined });
    void run(key);
    const timer = setInterval(() => {
      if (document.visibilityState === "visible") void run(key);
    }, REFRESH_MS);
    return () => clearInterval(timer);
  }, [key, run]);

  return { ...state, reload: () => void run(current.current.key) };
}
