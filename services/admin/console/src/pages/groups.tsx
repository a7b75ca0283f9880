// Groups: "which groups are failing right now?" Every group's timers by state, failing first,
// with its pause (who, when, why), and pause / resume.
import { useState } from "preact/hooks";
import type { Group } from "../../../../shared/src/gen/admin/v1/admin_pb.js";
import { useSession } from "../api.js";
import { ConfirmDialog, PageHead } from "../components.js";
import { count, relative, utc } from "../format.js";
import { usePoll } from "../poll.js";

/** Groups per page (ListGroups answers them all; the page shows them in slices). */
const PAGE_SIZE = 50;

/** Failing now first (most failures in the last hour), then the most retries, then by name. */
function failingFirst(a: Group, b: Group): number {
  return (
    Number(b.failedLastHour - a.failedLastHour) ||
    Number(b.retrying - a.retrying) ||
    a.groupId.localeCompare(b.groupId)
  );
}

export function GroupsPage() {
  const { api } = useSession();
  const polled = usePoll(async () => (await api.admin.listGroups({})).groups, "groups");
  const [filter, setFilter] = useState("");
  const [page, setPage] = useState(0);
  const [dialog, setDialog] = useState<{ kind: "pause" | "resume"; group: Group } | undefined>(undefined);
  const groups = (polled.data ?? []).filter((g) => g.groupId.includes(filter)).sort(failingFirst);
  const pages = Math.max(1, Math.ceil(groups.length / PAGE_SIZE));
  const shown = groups.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
  return (
    <section>
      <PageHead title="Groups" polled={polled} />
      <div class="toolbar">
        <label>
          Filter{" "}
          <input
            name="filter"
            placeholder="group id contains"
            value={filter}
            onInput={(e) => {
              setFilter(e.currentTarget.value);
              setPage(0);
            }}
          />
        </label>
        <span class="muted">{count(groups.length)} group(s), failing first</span>
      </div>
      <table data-testid="groups">
        <thead>
          <tr>
            <th>group</th>
            <th class="num">active</th>
            <th class="num">due now</th>
            <th class="num">retrying</th>
            <th class="num">failed (last hour)</th>
            <th class="num">succeeded</th>
            <th>paused</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {shown.map((g) => (
            <tr key={g.groupId} data-group={g.groupId} class={g.failedLastHour > 0n ? "failing" : ""}>
              <td>
                <code>{g.groupId}</code>
              </td>
              <td class="num">{count(g.scheduled + g.firing + g.pausedTimers)}</td>
              <td class="num">{count(g.due)}</td>
              <td class="num">{count(g.retrying)}</td>
              <td class="num">
                {count(g.failed)}{" "}
                <span class={g.failedLastHour > 0n ? "bad-text" : "muted"}>({count(g.failedLastHour)})</span>
              </td>
              <td class="num">{count(g.succeeded)}</td>
              <td data-testid="pause">
                {g.pause ? (
                  <>
                    <span class="badge warn">paused</span> “{g.pause.reason || "no reason given"}”
                    <div class="muted">
                      by {g.pause.pausedBy}, {relative(g.pause.pausedTime)} ({utc(g.pause.pausedTime)})
                    </div>
                  </>
                ) : g.pausedTimers > 0n ? (
                  <span class="muted">{count(g.pausedTimers)} timer(s) held by a bulk pause</span>
                ) : (
                  <span class="muted">no</span>
                )}
              </td>
              <td>
                {g.pause ? (
                  <button type="button" onClick={() => setDialog({ kind: "resume", group: g })}>
                    Resume…
                  </button>
                ) : (
                  <button type="button" onClick={() => setDialog({ kind: "pause", group: g })}>
                    Pause…
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {pages > 1 && (
        <nav class="pager" aria-label="pages">
          <button type="button" disabled={page === 0} onClick={() => setPage(page - 1)}>
            ← Previous
          </button>
          <span>
            page {page + 1} of {pages}
          </span>
          <button type="button" disabled={page + 1 >= pages} onClick={() => setPage(page + 1)}>
            Next →
          </button>
        </nav>
      )}
      {dialog?.kind === "pause" && (
        <PauseDialog group={dialog.group} onClose={() => setDialog(undefined)} onDone={polled.reload} />
      )}
      {dialog?.kind === "resume" && (
        <ConfirmDialog
          title={`Resume group ${dialog.group.groupId}`}
          confirmLabel="Resume"
          onClose={() => setDialog(undefined)}
          onConfirm={async () => {
            const r = await api.admin.resumeGroup({ groupId: dialog.group.groupId });
            polled.reload();
            return r.wasPaused
              ? `Resumed: ${count(r.overdueTimers)} overdue timer(s) fire now, oldest first`
              : "The group was not paused";
          }}
        >
          <p>
            Its {count(dialog.group.due)} due timer(s) fire at once, oldest first. Make sure the receiver can
            take them.
          </p>
        </ConfirmDialog>
      )}
    </section>
  );
}

function PauseDialog(props: { group: Group; onClose: () => void; onDone: () => void }) {
  const { api } = useSession();
  const [reason, setReason] = useState("");
  return (
    <ConfirmDialog
      title={`Pause group ${props.group.groupId}`}
      confirmLabel="Pause"
      onClose={props.onClose}
      onConfirm={async () => {
        const r = await api.admin.pauseGroup({ groupId: props.group.groupId, reason });
        props.onDone();
        return r.newlyPaused
          ? `Paused: none of its timers fires until it is resumed`
          : `Already paused by ${r.pause?.pausedBy ?? "someone"}: “${r.pause?.reason ?? ""}”`;
      }}
    >
      <p>None of its timers fires until the group is resumed; they wait, and nothing is lost.</p>
      <label>
        Reason (shown to the next operator){" "}
        <input
          name="reason"
          value={reason}
          placeholder="receiver down, INC-42"
          onInput={(e) => setReason(e.currentTarget.value)}
        />
      </label>
    </ConfirmDialog>
  );
}
