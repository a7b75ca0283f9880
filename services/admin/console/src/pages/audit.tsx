// Audit: every change made through the admin API (and the console), newest first: who, what,
// with which arguments, and what came of it.
import { useState } from "preact/hooks";
import type { AuditEvent } from "../../../../shared/src/gen/admin/v1/admin_pb.js";
import { useSession } from "../api.js";
import { FilterField, PageHead, Pager, TraceLink, usePages } from "../components.js";
import { relative, utc } from "../format.js";
import { usePoll } from "../poll.js";

const PAGE_SIZE = 50;

export function AuditPage() {
  const { api } = useSession();
  const [actor, setActor] = useState("");
  const [action, setAction] = useState("");
  const pages = usePages();
  const polled = usePoll(
    () => api.admin.listAuditEvents({ actor, action, pageSize: PAGE_SIZE, pageToken: pages.token }),
    `${actor}\u0000${action}\u0000${pages.token}`,
  );
  const apply = (set: (v: string) => void) => (value: string) => {
    set(value);
    pages.first();
  };
  return (
    <section>
      <PageHead title="Audit log" polled={polled} />
      <form class="toolbar" onSubmit={(e) => e.preventDefault()}>
        <FilterField
          label="Actor"
          name="actor"
          value={actor}
          placeholder="token name"
          onApply={apply(setActor)}
        />
        <FilterField
          label="Action"
          name="action"
          value={action}
          placeholder="PauseGroup"
          onApply={apply(setAction)}
        />
      </form>
      <table data-testid="audit">
        <thead>
          <tr>
            <th>time</th>
            <th>actor</th>
            <th>action</th>
            <th>outcome</th>
            <th>arguments</th>
            <th>result</th>
            <th>trace</th>
          </tr>
        </thead>
        <tbody>
          {(polled.data?.events ?? []).map((e) => (
            <AuditRow key={String(e.id)} event={e} />
          ))}
        </tbody>
      </table>
      {polled.data?.events.length === 0 && <p class="muted">No audit event matches.</p>}
      <Pager pages={pages} nextToken={polled.data?.nextPageToken} />
    </section>
  );
}

function structText(s: AuditEvent["arguments"]): string {
  if (!s) return "";
  return JSON.stringify(s);
}

function AuditRow(props: { event: AuditEvent }) {
  const e = props.event;
  return (
    <tr data-action={e.action.split("/").pop()}>
      <td title={utc(e.time)}>{relative(e.time)}</td>
      <td>
        <code>{e.actor}</code>
      </td>
      <td>
        <code>{e.action.replace(/^admin\.v1\.AdminService\//, "")}</code>
        {e.dryRun && <span class="badge">dry run</span>}
      </td>
      <td>
        <span class={`badge ${e.outcome === "OK" ? "good" : e.outcome === "RUNNING" ? "warn" : "bad"}`}>
          {e.outcome}
        </span>
      </td>
      <td class="json">
        <code>{structText(e.arguments)}</code>
      </td>
      <td class="json">
        <code>{structText(e.result)}</code>
      </td>
      <td>
        <TraceLink traceId={e.traceId} />
      </td>
    </tr>
  );
}
