// Schedules: a group's recurring schedules (timer.v1.ScheduleService) with their next firings
// in the schedule's own time zone, and why a firing moved (a DST gap, a repeated hour).
import { useState } from "preact/hooks";
import { type Schedule, ScheduleState } from "../../../../shared/src/gen/timer/v1/schedule_pb.js";
import { firstExactGroup, useSession } from "../api.js";
import { GroupFilter, PageHead, Pager, usePages } from "../components.js";
import { count, durationMs, relative, span, utc } from "../format.js";
import { usePoll } from "../poll.js";
import { hrefOf } from "../routes.js";

const PAGE_SIZE = 10;
/** Upcoming firings shown per schedule (PreviewSchedule of the stored schedule). */
const UPCOMING = 5;

export function SchedulesPage() {
  const { api, me } = useSession();
  const [group, setGroup] = useState(firstExactGroup(me.groups));
  const pages = usePages();
  const polled = usePoll(async () => {
    if (!group) return undefined;
    return api.schedules.listSchedules({ groupId: group, pageSize: PAGE_SIZE, pageToken: pages.token });
  }, `${group}\u0000${pages.token}`);
  return (
    <section>
      <PageHead title="Schedules" polled={polled} />
      <form class="toolbar" onSubmit={(e) => e.preventDefault()}>
        <GroupFilter
          value={group}
          placeholder="group id"
          onChange={(g) => {
            setGroup(g);
            pages.first();
          }}
        />
      </form>
      {!group && <p class="muted">Name a group to see its schedules.</p>}
      {(polled.data?.schedules ?? []).map((s) => (
        <ScheduleCard key={s.scheduleId} schedule={s} />
      ))}
      {polled.data?.schedules.length === 0 && <p class="muted">No schedule in {group}.</p>}
      {polled.data && <Pager pages={pages} nextToken={polled.data.nextPageToken} />}
    </section>
  );
}

function recurrence(s: Schedule): string {
  const spec = s.spec;
  const r = spec?.recurrence;
  if (r?.case === "cron") return `cron "${r.value}" in ${spec?.timeZone || "UTC"}`;
  if (r?.case === "interval") {
    const every = span(durationMs(r.value.interval) ?? 0);
    const offset = durationMs(r.value.offset);
    return `every ${every}${offset ? ` + ${span(offset)}` : ""} (UTC)`;
  }
  return "–";
}

function ScheduleCard(props: { schedule: Schedule }) {
  const { api } = useSession();
  const s = props.schedule;
  // The stored firings are only the next one or two (created ahead of time by the advancer);
  // the preview computes the instants after them, with the same DST policies.
  const upcoming = usePoll(
    async () =>
      (await api.schedules.previewSchedule({ groupId: s.groupId, scheduleId: s.scheduleId, count: UPCOMING }))
        .firings,
    `${s.groupId}\u0000${s.scheduleId}\u0000${s.version}`,
  );
  const stored = new Set(s.nextFirings.map((f) => f.timerId));
  return (
    <article class="schedule" data-schedule={s.scheduleId}>
      <h3>
        <code>{s.scheduleId}</code>{" "}
        <span class={`badge ${s.state === ScheduleState.ACTIVE ? "good" : "warn"}`}>
          {ScheduleState[s.state]}
        </span>
      </h3>
      <p>
        {recurrence(s)} · latest firing created for {s.lastInstant ? utc(s.lastInstant) : "none yet"} ·{" "}
        {count(s.skippedFirings)} skipped by policy · version {String(s.version)}
      </p>
      <table>
        <caption>Next firings</caption>
        <thead>
          <tr>
            <th>local time</th>
            <th>fires at (UTC)</th>
            <th>timer</th>
            <th>note</th>
          </tr>
        </thead>
        <tbody>
          {(upcoming.data ?? s.nextFirings).map((f) => (
            <tr key={utc(f.instant)}>
              <td>{f.localTime}</td>
              <td>
                {utc(f.fireAt)} <span class="muted">{relative(f.fireAt)}</span>
              </td>
              <td>
                {f.timerId && stored.has(f.timerId) ? (
                  <a href={hrefOf({ page: "timer", groupId: s.groupId, timerId: f.timerId })}>
                    <code>{f.timerId}</code>
                  </a>
                ) : (
                  <span class="muted">created before it falls due</span>
                )}
              </td>
              <td class="muted">{f.note}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {upcoming.error && <p class="error">{upcoming.error}</p>}
    </article>
  );
}
