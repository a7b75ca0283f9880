// The timer service's own metrics (names from the operations document).
import type { Meter } from "@opentelemetry/api";
import type pg from "pg";
import type { Logger } from "../../shared/src/logger.js";
import { State } from "../../shared/src/timer-model.js";
import { GaugeSeries } from "../../shared/src/telemetry/gauge-series.js";

/** Counters the CreateTimer handler updates. */
export interface TimerMetrics {
  attempt(): void;
  created(): void;
  failed(code: string): void;
  stop(): void;
}

// active_timers_total has one series per group: only the largest groups get their own, the rest
// are summed under "_other", so a tenant with a million groups cannot blow up Prometheus.
const TOP_GROUPS = 50;

/** Creates the timer service's instruments; active_timers_total is refreshed from Postgres. */
export function createTimerMetrics(meter: Meter, pool: pg.Pool, log: Logger, activeRefreshMs: number): TimerMetrics {
  const attempts = meter.createCounter("timer_creation_attempts_total", { description: "CreateTimer calls" });
  const creations = meter.createCounter("timer_creations_total", { description: "Timers created (not replays)" });
  const failures = meter.createCounter("timer_creation_failures_total", { description: "CreateTimer calls that failed, by gRPC code" });
  // Present from the first scrape, so rate() has a starting point.
  attempts.add(0);
  creations.add(0);
  let active: { group_id: string; n: number }[] = [];
  // A group whose timers all finished (or that left the largest 50) must drop to 0.
  const activeSeries = new GaugeSeries();
  const refresh = async () => {
    try {
      const { rows } = await pool.query<{ group_id: string; n: string }>(
        `-- active_timers_by_group
         WITH g AS (SELECT group_id, count(*) AS n FROM timers WHERE state IN (${State.Scheduled}, ${State.Firing}) GROUP BY group_id),
              r AS (SELECT group_id, n, row_number() OVER (ORDER BY n DESC, group_id) AS rank FROM g)
         SELECT CASE WHEN rank <= $1 THEN group_id ELSE '_other' END AS group_id, sum(n)::bigint AS n
           FROM r GROUP BY 1`,
        [TOP_GROUPS],
      );
      active = rows.map((r) => ({ group_id: r.group_id, n: Number(r.n) }));
    } catch (err) {
      log.warn({ err }, "could not count active timers");
    }
  };
  void refresh();
  const timer = setInterval(() => void refresh(), activeRefreshMs);
  timer.unref();
  meter
    .createObservableGauge("active_timers_total", { description: "Scheduled or firing timers per group (largest 50 groups; the rest as _other)" })
    .addCallback((r) => activeSeries.observe(r, active.map((a) => ({ attributes: { group_id: a.group_id }, value: a.n }))));
  return {
    attempt: () => attempts.add(1),
    created: () => creations.add(1),
    failed: (code) => failures.add(1, { code }),
    stop: () => clearInterval(timer),
  };
}
