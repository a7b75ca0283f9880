// The pieces every page is made of: errors, confirmations, paging, freshness, trace links.
import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { errorText, useSession } from "./api.js";
import { relative } from "./format.js";
import type { Polled } from "./poll.js";

export function ErrorBox(props: { error: string | undefined }) {
  if (!props.error) return null;
  return (
    <p class="error" role="alert">
      {props.error}
    </p>
  );
}

/** "updated 2 s ago", and the last refresh's error beside the data it kept. */
export function Freshness(props: { polled: Polled<unknown> }) {
  const { loadedAt, error } = props.polled;
  return (
    <div class="freshness">
      <span class="muted">{loadedAt ? `updated ${relative(loadedAt)}` : "loading…"}</span>
      <ErrorBox error={error} />
    </div>
  );
}

/** A page's title, with how fresh its data is. */
export function PageHead(props: { title: string; polled?: Polled<unknown> }) {
  return (
    <header class="page-head">
      <h2>{props.title}</h2>
      {props.polled && <Freshness polled={props.polled} />}
    </header>
  );
}

/**
 * A filter field, applied when the operator presses Enter or leaves it. What is typed is kept
 * in the field's own state: the page's refresh every few seconds re-renders it without wiping
 * a half-typed value. The page's value is copied in only when it changes to something this
 * field did not apply: the echo of its own apply arrives a render later, after the operator
 * may have typed on (cleared the field and pressed Enter again), and must not undo that.
 */
export function FilterField(props: {
  label: string;
  name: string;
  value: string;
  placeholder: string;
  onApply: (value: string) => void;
}) {
  const [draft, setDraft] = useState(props.value);
  const applied = useRef(props.value);
  useEffect(() => {
    if (props.value === applied.current) return;
    applied.current = props.value;
    setDraft(props.value);
  }, [props.value]);
  return (
    <label>
      {props.label}{" "}
      <input
        name={props.name}
        value={draft}
        placeholder={props.placeholder}
        onInput={(e) => setDraft(e.currentTarget.value)}
        onChange={(e) => {
          applied.current = e.currentTarget.value.trim();
          props.onApply(applied.current);
        }}
      />
    </label>
  );
}

/** The group a page is about: an admin may leave it empty where the page shows every group. */
export function GroupFilter(props: {
  value: string;
  placeholder: string;
  onChange: (group: string) => void;
}) {
  return (
    <FilterField
      label="Group"
      name="group"
      value={props.value}
      placeholder={props.placeholder}
      onApply={props.onChange}
    />
  );
}

/** What an admin-only page shows to a group token (the server refuses the calls too). */
export function Forbidden(props: { page: string }) {
  const { me } = useSession();
  return (
    <section class="forbidden" data-testid="forbidden">
      <h2>{props.page} needs an admin token</h2>
      <p>
        You are signed in as <b>{me.name}</b>, a token for the group(s) {me.groups.join(", ") || "(none)"}.
        Sign in with an admin token to see this page; the Timer, Failed, Load ahead and Schedules pages work
        within your groups.
      </p>
    </section>
  );
}

/**
 * A change that needs a second look: says what will happen, and after Confirm what did (the
 * RPC's answer) or why it did not. Nothing runs until the operator confirms.
 */
export function ConfirmDialog(props: {
  title: string;
  children: ComponentChildren;
  confirmLabel: string;
  /** Runs the change; its string is shown as the outcome. */
  onConfirm: () => Promise<string>;
  onClose: () => void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const [state, setState] = useState<
    | { kind: "asking" }
    | { kind: "running" }
    | { kind: "done"; text: string }
    | { kind: "failed"; text: string }
  >({ kind: "asking" });
  useEffect(() => {
    ref.current?.showModal();
  }, []);
  const confirm = async () => {
    setState({ kind: "running" });
    try {
      setState({ kind: "done", text: await props.onConfirm() });
    } catch (err) {
      setState({ kind: "failed", text: errorText(err) });
    }
  };
  return (
    <dialog ref={ref} onClose={props.onClose} aria-label={props.title}>
      <h3>{props.title}</h3>
      <div>{props.children}</div>
      {state.kind === "done" && (
        <p class="ok" role="status">
          {state.text}
        </p>
      )}
      {state.kind === "failed" && (
        <p class="error" role="alert">
          {state.text}
        </p>
      )}
      <div class="buttons">
        {state.kind === "asking" || state.kind === "running" ? (
          <>
            <button type="button" onClick={() => ref.current?.close()}>
              Cancel
            </button>
            <button
              type="button"
              class="danger"
              disabled={state.kind === "running"}
              onClick={() => void confirm()}
            >
              {props.confirmLabel}
            </button>
          </>
        ) : (
          <button type="button" onClick={() => ref.current?.close()}>
            Close
          </button>
        )}
      </div>
    </dialog>
  );
}

/** Paging through a list RPC: the page tokens seen so far, so Previous goes back. */
export interface Pages {
  /** The page token of the page shown ("" for the first). */
  token: string;
  number: number;
  next(token: string): void;
  previous(): void;
  first(): void;
}

export function usePages(): Pages {
  const [stack, setStack] = useState<string[]>([""]);
  return {
    token: stack[stack.length - 1] ?? "",
    number: stack.length,
    next: (token) => setStack((s) => [...s, token]),
    previous: () => setStack((s) => (s.length > 1 ? s.slice(0, -1) : s)),
    first: () => setStack([""]),
  };
}

export function Pager(props: { pages: Pages; nextToken: string | undefined }) {
  const { pages, nextToken } = props;
  return (
    <nav class="pager" aria-label="pages">
      <button type="button" disabled={pages.number === 1} onClick={pages.previous}>
        ← Previous
      </button>
      <span>page {pages.number}</span>
      <button type="button" disabled={!nextToken} onClick={() => nextToken && pages.next(nextToken)}>
        Next →
      </button>
    </nav>
  );
}

/** A trace id, linked to Jaeger when JAEGER_UI_URL is set. */
export function TraceLink(props: { traceId: string }) {
  const { config } = useSession();
  if (!props.traceId) return <span class="muted">–</span>;
  if (!config.jaegerUiUrl) return <code>{props.traceId}</code>;
  return (
    <a href={`${config.jaegerUiUrl}/trace/${props.traceId}`} target="_blank" rel="noreferrer noopener">
      <code>{props.traceId}</code>
    </a>
  );
}
