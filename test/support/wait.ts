// Waiting in tests: for a condition to hold, and for a free port to listen on.
import { getFreePort } from "../../scripts/child-process.js";

/** Polls `cond` until it returns truthy, or throws after `timeoutMs` naming what was awaited. */
export async function waitFor<T>(
  cond: () => T | Promise<T>,
  timeoutMs: number,
  what: string,
  everyMs = 20,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`, { cause: lastErr });
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A TCP port free on 127.0.0.1 right now. */
export function freePort(): Promise<number> {
  return getFreePort("127.0.0.1");
}
