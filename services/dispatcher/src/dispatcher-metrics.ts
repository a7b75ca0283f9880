// The dispatcher's metrics: firing, delivery, the mesh, the lag of every shard and the due
// timers held back by paused groups.
import type { Meter } from "@opentelemetry/api";
import type pg from "pg";
import type { Logger } from "../../shared/src/logger.js";
import type { DeliveryResult } from "./delivery.js";
import type { LatenessAction } from "./lateness-contract.js";
import { GaugeSeries } from "../../shared/src/telemetry/gauge-series.js";
import {
  counter,
  histogram,
  observableCounter,
  observableGauge,
  type GaugeName,
} from "../../shared/src/telemetry/instruments.js";
import { lagSecondsSql, oldestDueOfShardSql, pausedDueTimersSql } from "../../shared/src/shard-lag.js";
import { msToSeconds } from "../../shared/src/time.js";

/** What the firing loop reports. */
export interface DispatcherMetrics {
  fired(lateMs: number): void;
  /** One delivery attempt made, taking `ms`. */
  attempted(transport: string, result: DeliveryResult, ms: number): void;
  finished(succeeded: boolean): void;
  /** A timer dropped because Postgres refuses it in a claim statement even alone. */
  claimDropped(): void;
  /** A timer's first attempt started beyond its max_lateness; `action` is what its contract did. */
  latenessExceeded(action: LatenessAction): void;
  stop(): void;
}

/** Live values the gauges read at scrape time. */
export interface DispatcherGauges {
  ownedShards(): number;
  members(): number;
  timersInMemory(): number;
  deliveriesInFlight(): number;
  dueNotStarted(): number;
  /** Due timers waiting because their group or destination holds its full share of delivery slots. */
  timersParked(): number;
  /** Times a due timer was parked by fair delivery since start. */
  timersParkedTotal(): number;
  /** This machine's wall clock minus Postgres's, in ms; undefined until first measured. */
  clockOffsetMs(): number | undefined;
}

const LAG_REFRESH_MS = 5_000;
const LATENESS_ACTIONS: readonly LatenessAction[] = ["expired", "fired_marked", "fired"];

/**
 * Creates the dispatcher's instruments. timer_shard_lag_seconds is computed for every shard
 * (not only owned ones) from one query, so that while any dispatcher lives the lag of a shard
 * whose owner died is still visible, with the lease's owner as a label.
 */
export function createDispatcherMetrics(
  meter: Meter,
  pool: pg.Pool,
  shardCount: number,
  gauges: DispatcherGauges,
  log: Logger,
): DispatcherMetrics {
  const lateness = histogram(meter, "timer_fire_lateness_seconds");
  const attempts = counter(meter, "callback_attempts_total");
  const failures = counter(meter, "callback_failures_total");
  const callbackDuration = histogram(meter, "callback_duration_seconds");
  const executions = counter(meter, "timer_executions_total");
  const successes = counter(meter, "timer_executions_success_total");
  executions.add(0);
  successes.add(0);
  const gauge = (name: GaugeName, read: () => number) =>
    observableGauge(meter, name).addCallback((r) => r.observe(read()));
  gauge("dispatcher_owned_shards", gauges.ownedShards);
  gauge("dispatcher_members", gauges.members);
  gauge("timer_shard_count", () => shardCount);
  gauge("dispatcher_timers_in_memory", gauges.timersInMemory);
  gauge("dispatcher_deliveries_in_flight", gauges.deliveriesInFlight);
  gauge("timer_execution_queue_size", gauges.dueNotStarted);
  gauge("dispatcher_timers_parked", gauges.timersParked);
  observableGauge(meter, "dispatcher_clock_offset_seconds").addCallback((r) => {
    const ms = gauges.clockOffsetMs();
    if (ms !== undefined) r.observe(msToSeconds(ms));
  });
  observableCounter(meter, "dispatcher_timers_parked_total").addCallback((r) =>
    r.observe(gauges.timersParkedTotal()),
  );
  const claimDropped = counter(meter, "dispatcher_claim_entries_dropped_total");
  claimDropped.add(0);
  // Every action's series exists from the start, so a rate or an alert sees its first one.
  const latenessExceeded = counter(meter, "timer_lateness_exceeded_total");
  for (const action of LATENESS_ACTIONS) latenessExceeded.add(0, { action });

  let lag: { shard: number; owner: string; lag: number }[] = [];
  let pausedDue: { groupId: string; due: number }[] = [];
  // A shard's owner label changes on hand-off; the previous owner's series must drop to 0. A
  // resumed group's series drops to 0 the same way.
  const lagSeries = new GaugeSeries();
  const pausedSeries = new GaugeSeries();
  const refresh = async () => {
    try {
      // Paused first, both published together: a timer counted as paused-and-due in a scrape
      // was already due when that scrape's lag was read, so the two never disagree about it.
      const paused = await pool.query<{ group_id: string; due: string }>(
        `-- paused_due_timers
         ${pausedDueTimersSql()}`,
      );
      const { rows } = await pool.query<{ shard: number; owner: string | null; lag: number | null }>(
        `-- shard_lag
         SELECT l.shard, l.owner, ${lagSecondsSql("d.oldest")}::float8 AS lag
           FROM shard_owners l
           CROSS JOIN LATERAL (SELECT ${oldestDueOfShardSql("l.shard")} AS oldest) d
          WHERE l.shard < $1`,
        [shardCount],
      );
      pausedDue = paused.rows.map((r) => ({ groupId: r.group_id, due: Number(r.due) }));
      lag = rows.map((r) => ({ shard: r.shard, owner: r.owner ?? "none", lag: Math.max(0, r.lag ?? 0) }));
    } catch (err) {
      log.warn({ err }, "could not compute shard lag");
    }
  };
  void refresh();
  const timer = setInterval(() => void refresh(), LAG_REFRESH_MS);
  timer.unref();
  observableGauge(meter, "timer_shard_lag_seconds").addCallback((r) =>
    lagSeries.observe(
      r,
      lag.map((l) => ({ attributes: { shard: String(l.shard), owner: l.owner }, value: l.lag })),
    ),
  );

  observableGauge(meter, "timer_paused_due_timers").addCallback((r) =>
    pausedSeries.observe(
      r,
      pausedDue.map((p) => ({ attributes: { group_id: p.groupId }, value: p.due })),
    ),
  );

  return {
    fired: (lateMs) => lateness.record(msToSeconds(Math.max(0, lateMs))),
    attempted: (transport, result, ms) => {
      attempts.add(1, { transport });
      if (!result.ok) failures.add(1, { transport, retryable: String(result.retryable) });
      // Measured on the Postgres-aligned clock, whose offset may be re-estimated mid-attempt.
      callbackDuration.record(msToSeconds(Math.max(0, ms)), {
        transport,
        outcome: attemptOutcomeLabel(result),
      });
    },
    finished: (succeeded) => {
      executions.add(1);
      if (succeeded) successes.add(1);
    },
    claimDropped: () => claimDropped.add(1),
    latenessExceeded: (action) => latenessExceeded.add(1, { action }),
    stop: () => clearInterval(timer),
  };
}

/**
 * The outcome label of callback_duration_seconds: what the receiver's answer was, not what came
 * of the timer (a retryable failure on the last attempt still fails the timer).
 */
function attemptOutcomeLabel(result: DeliveryResult): "success" | "retryable_failure" | "permanent_failure" {
  if (result.ok) return "success";
  return result.retryable ? "retryable_failure" : "permanent_failure";
}
