// Load ahead: timers due per minute over the coming hours (AdminService/ForecastLoad), against
// the most the mesh fired in a minute over the last day: a herd shows before it arrives.
import { useState } from "preact/hooks";
import type { ForecastLoadResponse } from "../../../../shared/src/gen/admin/v1/admin_pb.js";
import { firstExactGroup, useSession } from "../api.js";
import { GroupFilter, PageHead } from "../components.js";
import { count, dateOf, utc } from "../format.js";
import { usePoll } from "../poll.js";

const HORIZONS = { "1 hour": 3600, "3 hours": 3 * 3600, "6 hours": 6 * 3600, "24 hours": 24 * 3600 } as const;
type HorizonName = keyof typeof HORIZONS;
/** Chart size in SVG units (scaled to the page's width by console.css). */
const CHART_W = 960;
const CHART_H = 220;

export function LoadPage() {
  const { api, me } = useSession();
  const [group, setGroup] = useState(me.admin ? "" : firstExactGroup(me.groups));
  const [horizon, setHorizon] = useState<HorizonName>("1 hour");
  const polled = usePoll(async () => {
    if (!me.admin && !group) return undefined;
    return api.admin.forecastLoad({
      groupId: group,
      horizon: { seconds: BigInt(HORIZONS[horizon]) },
      // A minute per bar up to 6 hours; beyond, 5 minutes (still "per minute" on the axis).
      bucket: { seconds: HORIZONS[horizon] > 6 * 3600 ? 300n : 60n },
      topGroups: 5,
    });
  }, `${group}\u0000${horizon}`);
  const f = polled.data;
  return (
    <section>
      <PageHead title="Load ahead" polled={polled} />
      <form class="toolbar" onSubmit={(e) => e.preventDefault()}>
        <GroupFilter
          value={group}
          placeholder={me.admin ? "every group" : "one of your groups"}
          onChange={setGroup}
        />
        <label>
          Horizon{" "}
          <select value={horizon} onChange={(e) => setHorizon(e.currentTarget.value as HorizonName)}>
            {Object.keys(HORIZONS).map((h) => (
              <option key={h}>{h}</option>
            ))}
          </select>
        </label>
      </form>
      {f && <Forecast f={f} />}
    </section>
  );
}

function Forecast(props: { f: ForecastLoadResponse }) {
  const f = props.f;
  const bucketSeconds = Number(f.bucket?.seconds ?? 60n);
  const perMinute = (n: bigint) => (Number(n) * 60) / bucketSeconds;
  const recentPeak = Number(f.maxFiredPerMinuteLastDay);
  const values = f.buckets.map((b) => perMinute(b.due));
  const top = Math.max(1, recentPeak, ...values);
  const barW = CHART_W / Math.max(1, values.length);
  const y = (v: number) => CHART_H - (v / top) * CHART_H;
  return (
    <>
      <dl class="stats">
        <div>
          <dt>due in the horizon</dt>
          <dd>{count(f.total)}</dd>
        </div>
        <div>
          <dt>peak per minute</dt>
          <dd>
            {count(Math.round(perMinute(f.peak?.due ?? 0n)))}{" "}
            <span class="muted">at {utc(f.peak?.startTime)}</span>
          </dd>
        </div>
        <div>
          <dt>most fired in a minute, last day</dt>
          <dd>{count(f.maxFiredPerMinuteLastDay)}</dd>
        </div>
        <div>
          <dt>overdue now</dt>
          <dd>{count(f.overdue)}</dd>
        </div>
      </dl>
      {f.truncated && (
        <p class="warn-text">
          Too many timers to read them all: complete until {utc(f.completeUntil)}; later buckets are counted
          in part.
        </p>
      )}
      <svg
        class="chart"
        data-testid="load-chart"
        viewBox={`0 0 ${CHART_W} ${CHART_H + 20}`}
        role="img"
        aria-label="timers due per minute"
      >
        {f.buckets.map((b, i) => {
          const v = values[i]!;
          const start = dateOf(b.startTime);
          return (
            <rect
              key={i}
              class={v === 0 ? "bar empty" : v > recentPeak && recentPeak > 0 ? "bar over" : "bar"}
              x={i * barW}
              y={y(v)}
              width={Math.max(1, barW - 1)}
              height={CHART_H - y(v)}
            >
              <title>{`${start ? utc(start) : ""}: ${count(b.due)} due`}</title>
            </rect>
          );
        })}
        {recentPeak > 0 && (
          <line class="recent-peak" x1={0} x2={CHART_W} y1={y(recentPeak)} y2={y(recentPeak)} />
        )}
        <text x={0} y={CHART_H + 16} class="axis">
          {utc(f.startTime)}
        </text>
        <text x={CHART_W} y={CHART_H + 16} class="axis end">
          {`max ${count(Math.round(top))}/min`}
        </text>
      </svg>
      <p class="muted">
        Bars: timers due per minute. Line: the most fired in a minute over the last day; bars above it are
        drawn red.
      </p>
      <div class="columns">
        <Series title="By shard owner" series={f.byOwner} />
        <Series title="Top groups" series={f.topGroups} />
      </div>
    </>
  );
}

function Series(props: { title: string; series: ForecastLoadResponse["byOwner"] }) {
  return (
    <table>
      <caption>{props.title}</caption>
      <tbody>
        {props.series.map((s) => (
          <tr key={s.key}>
            <td>
              <code>{s.key}</code>
            </td>
            <td class="num">{count(s.total)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
