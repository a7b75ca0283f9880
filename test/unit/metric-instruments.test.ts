// Every instrument the services create is made from its entry in the metric catalogue
// (services/shared/src/telemetry/metric-names.ts): its HELP text, unit and buckets are the
// catalogue's, so they cannot drift apart again.
import { test } from "node:test";
import assert from "node:assert/strict";
import { trace } from "@opentelemetry/api";
import { type Histogram, MeterProvider, MetricReader } from "@opentelemetry/sdk-metrics";
import type pg from "pg";
import { createDispatcherMetrics } from "../../services/dispatcher/src/dispatcher-metrics.js";
import { createLogger } from "../../services/shared/src/logger.js";
import { MeshMessageDrops } from "../../services/shared/src/mesh-message-drops.js";
import { instrumentPool } from "../../services/shared/src/telemetry/db-metrics.js";
import { METRICS, type MetricSpec } from "../../services/shared/src/telemetry/metric-names.js";
import { rpcServerInterceptor } from "../../services/shared/src/telemetry/rpc.js";
import { createTimerMetrics } from "../../services/timer/src/timer-metrics.js";

/** A reader that only collects on demand. */
class CollectingReader extends MetricReader {
  protected override async onShutdown(): Promise<void> {}
  protected override async onForceFlush(): Promise<void> {}
}

test("the services' instruments take their help text, unit and buckets from the catalogue", async () => {
  const reader = new CollectingReader();
  const provider = new MeterProvider({ readers: [reader] });
  const meter = provider.getMeter("test");
  const log = createLogger("test", "silent");
  const pool = {
    query: async () => ({ rows: [] }),
    totalCount: 0,
    idleCount: 0,
    waitingCount: 0,
  } as unknown as pg.Pool;
  const tracer = trace.getTracer("test");

  const timer = createTimerMetrics(meter);
  timer.failed("INTERNAL");
  const dispatcher = createDispatcherMetrics(
    meter,
    pool,
    4,
    {
      ownedShards: () => 1,
      members: () => 1,
      timersInMemory: () => 0,
      deliveriesInFlight: () => 0,
      dueNotStarted: () => 0,
      timersParked: () => 0,
      timersParkedTotal: () => 0,
      clockOffsetMs: () => 0,
    },
    log,
  );
  dispatcher.fired(5);
  dispatcher.attempted("http", { ok: false, retryable: true, error: "x" }, 12);
  instrumentPool(pool, meter, tracer, false, 5);
  await pool.query("SELECT 1");
  rpcServerInterceptor(meter, tracer, false);
  new MeshMessageDrops(meter, log).drop("mesh.x", "undecodable");

  const { resourceMetrics, errors } = await reader.collect();
  dispatcher.stop();
  assert.deepEqual(errors, []);
  const seen = new Set<string>();
  for (const scope of resourceMetrics.scopeMetrics) {
    for (const metric of scope.metrics) {
      const { name, description, unit } = metric.descriptor;
      assert.ok(name in METRICS, `${name} is in the catalogue`);
      const spec: MetricSpec = METRICS[name as keyof typeof METRICS];
      assert.equal(description, spec.help, `help text of ${name}`);
      assert.equal(unit, spec.unit ?? "", `unit of ${name}`);
      if (spec.buckets) {
        const point = metric.dataPoints[0];
        if (point) assert.deepEqual((point.value as Histogram).buckets.boundaries, [...spec.buckets], name);
      }
      seen.add(name);
    }
  }
  // Every instrument made here showed up (those with a value to report).
  for (const name of [
    "timer_creation_attempts_total",
    "timer_creation_failures_total",
    "timer_fire_lateness_seconds",
    "callback_failures_total",
    "callback_duration_seconds",
    "dispatcher_owned_shards",
    "dispatcher_clock_offset_seconds",
    "database_query_duration_seconds",
    "database_connections_max",
    "database_connections_waiting",
    "mesh_messages_dropped_total",
  ]) {
    assert.ok(seen.has(name), `${name} was collected`);
  }
  await provider.shutdown();
});
