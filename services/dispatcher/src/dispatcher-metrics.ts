// The dispatcher's metrics: firing, delivery, the mesh, and the lag of every shard.
import type { Meter } from "@opentelemetry/api";
import type pg from "pg";
import type { Logger } from "../../shared/src/logger.js";
import { State } from "../../shared/src/timer-model.js";
import type { DeliveryResult } from "./delivery.js";
import { GaugeSeries } from "../../shared/src/telemetry/gauge-series.js";
import { METRICS } from "../../shared/src/telemetry/metric-names.js";

/** What the firing loop reports. */
export interface DispatcherMetrics {
  fired(lateMs: number): void;
  attempted(transport: string, result: DeliveryResult): void;
  finished(succeeded: boolean): void;
  /** A timer dropped because Postgres refuses it in a claim statement even alone. */
  claimDropped(): void;
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
  const lateness = meter.createHistogram("timer_fire_lateness_seconds", {
    description: "Start of the first delivery attempt minus fire_at",
    unit: "s",
    advice: {
      explicitBucketBoundaries: [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
      ],
    },
  });
  const attempts = meter.createCounter("callback_attempts_total", {
    description: "Callback delivery attempts",
  });
  const failures = meter.createCounter("callback_failures_total", {
    description: "Callback delivery attempts that failed",
  });
  const executions = meter.createCounter("timer_executions_total", {
    description: "Timers that reached a final outcome (SUCCEEDED or FAILED)",
  });
  const successes = meter.createCounter("timer_executions_success_total", {
    description: "Timers whose callback succeeded",
  });
  executions.add(0);
  successes.add(0);
  const gauge = (name: string, description: string, read: () => number) =>
    meter.createObservableGauge(name, { description }).addCallback((r) => r.observe(read()));
  gauge("dispatcher_owned_shards", "Shards whose lease this dispatcher holds", gauges.ownedShards);
  gauge("dispatcher_members", "Live dispatchers as this one sees them", gauges.members);
  gauge("timer_shard_count", "SHARD_COUNT of the mesh", () => shardCount);
  gauge("dispatcher_timers_in_memory", "Timers held in memory", gauges.timersInMemory);
  gauge("dispatcher_deliveries_in_flight", "Deliveries in flight", gauges.deliveriesInFlight);
  gauge(
    "timer_execution_queue_size",
    "Timers held in memory that are due and not yet being delivered",
    gauges.dueNotStarted,
  );
  gauge(
    "dispatcher_timers_parked",
    "Due timers waiting because their group or callback destination holds its full share of delivery slots",
    gauges.timersParked,
  );
  meter
    .createObservableGauge("dispatcher_clock_offset_seconds", {
      description: METRICS.dispatcher_clock_offset_seconds.help,
      unit: "s",
    })
    .addCallback((r) => {
      const ms = gauges.clockOffsetMs();
      if (ms !== undefined) r.observe(ms / 1000);
    });
  meter
    .createObservableCounter("dispatcher_timers_parked_total", {
      description:
        "Times a due timer was parked by fair delivery (DELIVERY_GROUP_SHARE, DELIVERY_DESTINATION_SHARE)",
    })
    .addCallback((r) => r.observe(gauges.timersParkedTotal()));
  const claimDropped = meter.createCounter("dispatcher_claim_entries_dropped_total", {
    description: "Timers dropped because Postgres refuses them in a claim statement even alone",
  });
  claimDropped.add(0);

  let lag: { shard: number; owner: string; lag: number }[] = [];
  // A shard's owner label changes on hand-off; the previous owner's series must drop to 0.
  const lagSeries = new GaugeSeries();
  const refresh = async () => {
    try {
      const { rows } = await pool.query<{ shard: number; owner: string | null; lag: number | null }>(
        `-- shard_lag
         SELECT l.shard, l.owner, extract(epoch FROM now() - d.oldest)::float8 AS lag
           FROM shard_owners l
           -- Per shard: the first entry of its range of timers_due_idx (led by the shard), not
           -- every due row of the table.
           CROSS JOIN LATERAL (SELECT min(next_attempt_at) AS oldest FROM timers
                                WHERE state = ${State.Scheduled} AND shard = l.shard AND next_attempt_at <= now()) d
          WHERE l.shard < $1`,
        [shardCount],
      );
      lag = rows.map((r) => ({ shard: r.shard, owner: r.owner ?? "none", lag: Math.max(0, r.lag ?? 0) }));
    } catch (err) {
      log.warn({ err }, "could not compute shard lag");
    }
  };
  void refresh();
  const timer = setInterval(() => void refresh(), LAG_REFRESH_MS);
  timer.unref();
  meter
    .createObservableGauge("timer_shard_lag_seconds", {
      description: "Now minus the oldest due, unfired fire_at in the shard; 0 when none is due",
      unit: "s",
    })
    .addCallback((r) =>
      lagSeries.observe(
        r,
        lag.map((l) => ({ attributes: { shard: String(l.shard), owner: l.owner }, value: l.lag })),
      ),
    );

  return {
    fired: (lateMs) => lateness.record(Math.max(0, lateMs) / 1000),
    attempted: (transport, result) => {
      attempts.add(1, { transport });
      if (!result.ok) failures.add(1, { transport, retryable: String(result.retryable) });
    },
    finished: (succeeded) => {
      executions.add(1);
      if (succeeded) successes.add(1);
    },
    claimDropped: () => claimDropped.add(1),
    stop: () => clearInterval(timer),
  };
}
