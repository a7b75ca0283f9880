// Failed: the timers that failed for good, by group and error, and bulk retry / cancel of a
// group's timers: a dry run counts what would change before anything does, and the change runs
// as a bulk operation whose progress shows here.
import { create } from "@bufbuild/protobuf";
import { useState } from "preact/hooks";
import {
  type Operation,
  OperationState,
  type StartBulkOperationResponse,
} from "../../../../shared/src/gen/admin/v1/admin_pb.js";
import { type Timer, TimerSelectorSchema, TimerState } from "../../../../shared/src/gen/timer/v1/timer_pb.js";
import { errorText, firstExactGroup, useSession } from "../api.js";
import { ConfirmDialog, Freshness, GroupFilter, PageHead, Pager, usePages } from "../components.js";
import { count, relative, utc } from "../format.js";
import { usePoll } from "../poll.js";
import { hrefOf } from "../routes.js";

const PAGE_SIZE = 50;

export function FailedPage() {
  const { api, me } = useSession();
  // An admin sees every group's failures (ListFailedTimers); a group token one group's (ListTimers).
  const [group, setGroup] = useState(me.admin ? "" : firstExactGroup(me.groups));
  const pages = usePages();
  const polled = usePoll(async () => {
    if (me.admin) {
      const r = await api.admin.listFailedTimers({
        groupId: group,
        pageSize: PAGE_SIZE,
        pageToken: pages.token,
      });
      return { timers: r.timers, next: r.nextPageToken };
    }
    if (!group) return { timers: [], next: "" };
    const r = await api.timers.listTimers({
      groupId: group,
      states: [TimerState.FAILED],
      pageSize: PAGE_SIZE,
      pageToken: pages.token,
    });
    return { timers: r.timers, next: r.nextPageToken };
  }, `${group}\u0000${pages.token}`);
  const timers = polled.data?.timers ?? [];
  return (
    <section>
      <PageHead title="Failed timers" polled={polled} />
      <div class="toolbar">
        <GroupFilter
          value={group}
          placeholder={me.admin ? "every group" : "one of your groups"}
          onChange={(g) => {
            setGroup(g);
            pages.first();
          }}
        />
      </div>
      <ErrorSummary timers={timers} />
      <table data-testid="failed">
        <thead>
          <tr>
            <th>group</th>
            <th>timer</th>
            <th>fire at</th>
            <th>finished</th>
            <th class="num">attempts</th>
            <th>last error</th>
          </tr>
        </thead>
        <tbody>
          {timers.map((t) => (
            <tr key={`${t.groupId}/${t.timerId}`} data-timer={`${t.groupId}/${t.timerId}`}>
              <td>
                <code>{t.groupId}</code>
              </td>
              <td>
                <a href={hrefOf({ page: "timer", groupId: t.groupId, timerId: t.timerId })}>
                  <code>{t.timerId}</code>
                </a>
              </td>
              <td>{utc(t.fireAt)}</td>
              <td>{relative(t.finishTime)}</td>
              <td class="num">{t.attempt}</td>
              <td class="bad-text">{t.lastError}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {polled.data && timers.length === 0 && (
        <p class="muted">No failed timer{group ? ` in ${group}` : ""}.</p>
      )}
      <Pager pages={pages} nextToken={polled.data?.next} />
      <BulkActions defaultGroup={group} />
    </section>
  );
}

/** Failures on this page by group and error: which receiver is broken and how. */
function ErrorSummary(props: { timers: Timer[] }) {
  const byCause = new Map<string, { group: string; error: string; n: number }>();
  for (const t of props.timers) {
    const key = `${t.groupId}\u0000${t.lastError}`;
    const entry = byCause.get(key) ?? { group: t.groupId, error: t.lastError, n: 0 };
    entry.n++;
    byCause.set(key, entry);
  }
  if (byCause.size === 0) return null;
  return (
    <table class="summary" data-testid="failed-summary">
      <caption>By group and error (this page)</caption>
      <tbody>
        {[...byCause.values()]
          .sort((a, b) => b.n - a.n)
          .map((c) => (
            <tr key={`${c.group}/${c.error}`}>
              <td>
                <code>{c.group}</code>
              </td>
              <td class="bad-text">{c.error || "(no error recorded)"}</td>
              <td class="num">{count(c.n)}</td>
            </tr>
          ))}
      </tbody>
    </table>
  );
}

type BulkKind = "retry" | "cancel";

/** Retry a group's failed timers, or cancel its waiting ones: dry run, confirm, then follow. */
function BulkActions(props: { defaultGroup: string }) {
  const { api } = useSession();
  const [group, setGroup] = useState(props.defaultGroup);
  const [prefix, setPrefix] = useState("");
  const [labels, setLabels] = useState("");
  const [planned, setPlanned] = useState<{ kind: BulkKind; dry: StartBulkOperationResponse } | undefined>(
    undefined,
  );
  const [error, setError] = useState<string | undefined>(undefined);
  const [operationId, setOperationId] = useState<string | undefined>(undefined);

  const selector = (kind: BulkKind) =>
    create(TimerSelectorSchema, {
      groupId: group,
      timerIdPrefix: prefix,
      labelSelector: labels,
      states: kind === "retry" ? [TimerState.FAILED] : [TimerState.SCHEDULED, TimerState.PAUSED],
    });
  const action = (kind: BulkKind) =>
    kind === "retry" ? { case: "retry" as const, value: {} } : { case: "cancel" as const, value: {} };
  const dryRun = async (kind: BulkKind) => {
    setError(undefined);
    try {
      const dry = await api.admin.startBulkOperation({
        selector: selector(kind),
        dryRun: true,
        action: action(kind),
      });
      setPlanned({ kind, dry });
    } catch (err) {
      setError(errorText(err));
    }
  };

  return (
    <section class="bulk">
      <h3>Bulk action</h3>
      <form class="toolbar" onSubmit={(e) => e.preventDefault()}>
        <label>
          Group{" "}
          <input name="bulk-group" value={group} onInput={(e) => setGroup(e.currentTarget.value.trim())} />
        </label>
        <label>
          Timer id prefix{" "}
          <input name="bulk-prefix" value={prefix} onInput={(e) => setPrefix(e.currentTarget.value)} />
        </label>
        <label>
          Label selector{" "}
          <input
            name="bulk-labels"
            value={labels}
            placeholder="customer=acme,!canary"
            onInput={(e) => setLabels(e.currentTarget.value)}
          />
        </label>
        <button type="button" disabled={!group} onClick={() => void dryRun("retry")}>
          Retry failed…
        </button>
        <button type="button" class="danger" disabled={!group} onClick={() => void dryRun("cancel")}>
          Cancel waiting…
        </button>
      </form>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {planned && (
        <ConfirmDialog
          title={
            planned.kind === "retry" ? `Retry failed timers of ${group}` : `Cancel waiting timers of ${group}`
          }
          confirmLabel={
            planned.kind === "retry"
              ? `Retry ${count(planned.dry.matched)}`
              : `Cancel ${count(planned.dry.matched)}`
          }
          onClose={() => setPlanned(undefined)}
          onConfirm={async () => {
            const r = await api.admin.startBulkOperation({
              selector: selector(planned.kind),
              action: action(planned.kind),
              reason: "from the console",
            });
            const id = r.operation?.id ?? "";
            setOperationId(id);
            return `Started ${id}; its progress shows below`;
          }}
        >
          <p data-testid="dry-run">
            Dry run: <b>{count(planned.dry.matched)}</b> timer(s) match now.
            {planned.kind === "retry"
              ? " Each is delivered again now, with a fresh set of attempts."
              : " None of them will fire. This cannot be undone."}
          </p>
          {planned.dry.sample.length > 0 && (
            <ul class="sample">
              {planned.dry.sample.map((s) => (
                <li key={s.timerId}>
                  <code>{s.timerId}</code> {utc(s.fireAt)} <span class="muted">{s.lastError}</span>
                </li>
              ))}
            </ul>
          )}
        </ConfirmDialog>
      )}
      {operationId && <OperationProgress id={operationId} />}
    </section>
  );
}

function OperationProgress(props: { id: string }) {
  const { api } = useSession();
  const polled = usePoll(async () => (await api.admin.getOperation({ id: props.id })).operation, props.id);
  const op: Operation | undefined = polled.data;
  if (!op) return <Freshness polled={polled} />;
  return (
    <p class="operation" data-testid="operation" role="status">
      <code>{op.id}</code> {OperationState[op.state]}: {count(op.changed)} changed of{" "}
      {count(op.matchedAtStart)} matched, {count(op.examined)} examined in {op.batches} batch(es)
      {op.error && <span class="bad-text"> · {op.error}</span>}
    </p>
  );
}
