// Timer: "why did this timer not fire?" One timer by group and id: its state and fire time,
// every delivery attempt with its outcome, error and trace, what happens next and why, and
// cancel / retry. ExplainTimer (admin) tells all; a group token sees what GetTimer tells.
import { useState } from "preact/hooks";
import type { ExplainTimerResponse } from "../../../../shared/src/gen/admin/v1/admin_pb.js";
import { type Timer, TimerState } from "../../../../shared/src/gen/timer/v1/timer_pb.js";
import { isPermissionDenied, useSession } from "../api.js";
import { ConfirmDialog, Freshness, PageHead, TraceLink } from "../components.js";
import { dateOf, durationMs, relative, span, stateName, utc } from "../format.js";
import { usePoll } from "../poll.js";
import { navigate } from "../routes.js";

export function TimerPage(props: { groupId: string; timerId: string }) {
  const [group, setGroup] = useState(props.groupId);
  const [id, setId] = useState(props.timerId);
  return (
    <section>
      <PageHead title="Timer" />
      <form
        class="toolbar"
        onSubmit={(e) => {
          e.preventDefault();
          navigate({ page: "timer", groupId: group.trim(), timerId: id.trim() });
        }}
      >
        <label>
          Group <input name="group" value={group} onInput={(e) => setGroup(e.currentTarget.value)} required />
        </label>
        <label>
          Timer id <input name="timer" value={id} onInput={(e) => setId(e.currentTarget.value)} required />
        </label>
        <button type="submit">Look up</button>
      </form>
      {props.groupId && props.timerId && <TimerView groupId={props.groupId} timerId={props.timerId} />}
    </section>
  );
}

/** What the page knows: the full explanation, or (a group token) the timer alone. */
type Loaded =
  | { kind: "explained"; explain: ExplainTimerResponse; timer: Timer }
  | { kind: "timer"; timer: Timer };

function TimerView(props: { groupId: string; timerId: string }) {
  const { api, me } = useSession();
  const [action, setAction] = useState<"cancel" | "retry" | undefined>(undefined);
  const key = `${props.groupId}\u0000${props.timerId}`;
  const polled = usePoll(async (): Promise<Loaded> => {
    const ids = { groupId: props.groupId, timerId: props.timerId };
    if (me.admin) {
      try {
        const explain = await api.admin.explainTimer(ids);
        if (explain.timer) return { kind: "explained", explain, timer: explain.timer };
      } catch (err) {
        if (!isPermissionDenied(err)) throw err;
      }
    }
    const r = await api.timers.getTimer(ids);
    if (!r.timer) throw new Error("GetTimer answered without a timer");
    return { kind: "timer", timer: r.timer };
  }, key);
  const loaded = polled.data;
  const t = loaded?.timer;
  return (
    <>
      <Freshness polled={polled} />
      {t && (
        <article class="timer" data-testid="timer">
          <h3>
            <code>
              {t.groupId} / {t.timerId}
            </code>{" "}
            <span class={`badge state-${stateName(t.state).toLowerCase()}`} data-testid="timer-state">
              {stateName(t.state)}
            </span>
          </h3>
          {loaded.kind === "explained" && (
            <p class="next" data-testid="explain">
              {loaded.explain.next}
            </p>
          )}
          <dl class="detail">
            <dt>fire at</dt>
            <dd>
              {utc(t.fireAt)} <span class="muted">{relative(t.fireAt)}</span>
            </dd>
            <dt>next attempt</dt>
            <dd>{t.state === TimerState.SCHEDULED ? utc(t.nextAttemptTime) : "–"}</dd>
            <dt>attempts</dt>
            <dd>
              {t.attempt} of {t.retryPolicy?.maxAttempts || "the default"}
            </dd>
            {t.lastError && (
              <>
                <dt>last error</dt>
                {/* A timer retried since keeps its last error: it is history, not its state. */}
                <dd class={t.state === TimerState.FAILED ? "bad-text" : "muted"}>
                  {t.lastError}
                  {t.state !== TimerState.FAILED && " (an earlier attempt's)"}
                </dd>
              </>
            )}
            <dt>first fired</dt>
            <dd>
              {utc(t.firedTime)}
              {t.fireLateness && <span class="muted"> ({span(durationMs(t.fireLateness) ?? 0)} late)</span>}
            </dd>
            <dt>finished</dt>
            <dd>{utc(t.finishTime)}</dd>
            <dt>callback</dt>
            <dd>
              <code>{callbackText(t)}</code>
            </dd>
            <dt>created</dt>
            <dd>{utc(t.createTime)}</dd>
            <dt>version</dt>
            <dd>{String(t.version)}</dd>
            {t.scheduleId && (
              <>
                <dt>schedule</dt>
                <dd>
                  <code>{t.scheduleId}</code>
                </dd>
              </>
            )}
            {Object.keys(t.labels).length > 0 && (
              <>
                <dt>labels</dt>
                <dd>
                  {Object.entries(t.labels).map(([k, v]) => (
                    <code key={k} class="label">
                      {k}={v}
                    </code>
                  ))}
                </dd>
              </>
            )}
            {loaded.kind === "explained" && <ExplainDetail explain={loaded.explain} />}
          </dl>
          <div class="buttons">
            {(t.state === TimerState.SCHEDULED || t.state === TimerState.PAUSED) && (
              <button type="button" class="danger" onClick={() => setAction("cancel")}>
                Cancel timer…
              </button>
            )}
            {t.state === TimerState.FAILED &&
              (me.admin ? (
                <button type="button" onClick={() => setAction("retry")}>
                  Retry…
                </button>
              ) : (
                <span class="muted">
                  Retrying one timer needs an admin token (the Failed page retries your groups'.)
                </span>
              ))}
          </div>
          {loaded.kind === "explained" ? (
            <Attempts explain={loaded.explain} />
          ) : (
            <p class="muted">
              The attempt history and the explanation need an admin token (AdminService/ExplainTimer).
            </p>
          )}
        </article>
      )}
      {action === "cancel" && t && (
        <ConfirmDialog
          title="Cancel timer"
          confirmLabel="Cancel timer"
          onClose={() => setAction(undefined)}
          onConfirm={async () => {
            const r = await api.timers.cancelTimer({ groupId: t.groupId, timerId: t.timerId });
            polled.reload();
            return `Now ${r.timer ? stateName(r.timer.state) : "cancelled"}`;
          }}
        >
          <p>
            <code>
              {t.groupId}/{t.timerId}
            </code>{" "}
            will not fire. This cannot be undone.
          </p>
        </ConfirmDialog>
      )}
      {action === "retry" && t && (
        <ConfirmDialog
          title="Retry timer"
          confirmLabel="Retry"
          onClose={() => setAction(undefined)}
          onConfirm={async () => {
            const r = await api.admin.retryTimers({ groupId: t.groupId, timerId: t.timerId });
            polled.reload();
            return r.count === 1
              ? "Scheduled again: it fires now, with a fresh set of attempts"
              : "Nothing retried: it is no longer FAILED";
          }}
        >
          <p>
            <code>
              {t.groupId}/{t.timerId}
            </code>{" "}
            is delivered again now, with its retry policy's attempts.
          </p>
        </ConfirmDialog>
      )}
    </>
  );
}

function callbackText(t: Timer): string {
  const target = t.callback?.target;
  switch (target?.case) {
    case "http":
      return `HTTP POST ${target.value.url}`;
    case "nats":
      return `NATS ${target.value.jetstream ? "JetStream " : ""}${target.value.subject}`;
    case "grpc":
      return `gRPC ${target.value.target}`;
    default:
      return "–";
  }
}

function ExplainDetail(props: { explain: ExplainTimerResponse }) {
  const { placement, pause, claimOwner, traceId } = props.explain;
  return (
    <>
      {placement && (
        <>
          <dt>shard</dt>
          <dd>
            {placement.shard} of {placement.shardCount}, owner{" "}
            {placement.owner ? <code>{placement.owner}</code> : "none"}
            {placement.owner && !placement.ownerLive && <span class="bad-text"> (not heard on NATS)</span>}
            {!placement.leased && <span class="bad-text"> (lease not held)</span>}
            <div class="muted">{placement.computation}</div>
          </dd>
        </>
      )}
      {pause && (
        <>
          <dt>group paused</dt>
          <dd class="warn-text">
            by {pause.pausedBy} {relative(pause.pausedTime)}: “{pause.reason}”
          </dd>
        </>
      )}
      {claimOwner && (
        <>
          <dt>in flight at</dt>
          <dd>
            <code>{claimOwner}</code>
          </dd>
        </>
      )}
      <dt>created by trace</dt>
      <dd>
        <TraceLink traceId={traceId} />
      </dd>
    </>
  );
}

function Attempts(props: { explain: ExplainTimerResponse }) {
  const attempts = props.explain.attempts;
  if (attempts.length === 0) return <p class="muted">No delivery attempt yet.</p>;
  return (
    <table data-testid="attempts">
      <caption>Delivery attempts, oldest first</caption>
      <thead>
        <tr>
          <th class="num">#</th>
          <th>dispatcher</th>
          <th>started</th>
          <th class="num">took</th>
          <th>outcome</th>
          <th>error</th>
          <th>trace</th>
        </tr>
      </thead>
      <tbody>
        {attempts.map((a, i) => {
          const started = dateOf(a.startTime)?.getTime();
          const finished = dateOf(a.finishTime)?.getTime();
          return (
            <tr key={i} class={`outcome-${a.outcome}`}>
              <td class="num">{a.attempt}</td>
              <td>
                <code>{a.dispatcherId}</code>
              </td>
              <td>{utc(a.startTime)}</td>
              <td class="num">
                {started !== undefined && finished !== undefined ? span(finished - started) : "–"}
              </td>
              <td>
                <span class={`badge outcome-${a.outcome}`}>{a.outcome}</span>
              </td>
              <td class="error-text">{a.error}</td>
              <td>
                <TraceLink traceId={a.traceId} />
              </td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}
