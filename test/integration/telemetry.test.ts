// Observability against the real processes: every metric of the catalogue on /metrics, JSON
// logs with trace ids, and one timer's whole story in the exported traces.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { CreateTimerRequestSchema } from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { METRICS, RUNTIME_METRICS } from "../../services/shared/src/telemetry/metric-names.js";
import { AdminService } from "../../services/shared/src/gen/admin/v1/admin_pb.js";
import { shardOf } from "../../services/shared/src/shard.js";
import { httpTimerAt } from "../support/timer-client.js";
import { HEARTBEAT_SUBJECT } from "../../services/shared/src/mesh-messages.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startHttpReceiver } from "../support/receivers.js";
import { startOtlpReceiver, type ExportedSpan } from "../support/otlp-receiver.js";
import { startService, type ServiceProcess } from "../support/service-process.js";
import { waitFor } from "../support/wait.js";
import { dispatcherClient } from "../support/dispatcher-client.js";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  Health,
  HealthCheckResponse_ServingStatus,
} from "../../services/shared/src/gen/grpc/health/v1/health_pb.js";

let mesh: TestMesh;
let admin: ServiceProcess;
let otlp: Awaited<ReturnType<typeof startOtlpReceiver>>;
let receiver: Awaited<ReturnType<typeof startHttpReceiver>>;
let failing: Awaited<ReturnType<typeof startHttpReceiver>>;

before(async () => {
  otlp = await startOtlpReceiver();
  receiver = await startHttpReceiver();
  failing = await startHttpReceiver(() => 500);
  const otel = {
    OTEL_EXPORTER_OTLP_ENDPOINT: otlp.endpoint,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/json",
  };
  mesh = await startMesh({ dispatchers: 1, env: otel, timerEnv: { ACTIVE_TIMERS_REFRESH: "1s" } });
  admin = await startService("admin", { ...mesh.envFor("admin") });
});
after(async () => {
  await admin?.[Symbol.asyncDispose]();
  await mesh?.[Symbol.asyncDispose]();
  await receiver?.close();
  await failing?.close();
  await otlp?.[Symbol.asyncDispose]();
});

function adminClient() {
  return createClient(AdminService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${admin.grpcPort}` }));
}

async function scrape(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(res.status, 200);
  return res.text();
}

function timer(id: string, url: string, delayMs: number) {
  return create(CreateTimerRequestSchema, {
    groupId: "obs",
    timerId: id,
    schedule: { case: "delay", value: durationFromMs(delayMs) },
    callback: { target: { case: "http", value: { url, headers: {} } } },
    retryPolicy: { maxAttempts: 1 },
  });
}

/** The value of the one series `series` (name and labels as printed) on a scrape, or undefined. */
function seriesValue(text: string, series: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe("metrics", () => {
  test("every service exports every metric of the catalogue that it owns", async () => {
    await mesh.client.call("createTimer", timer("m-later", receiver.url, 3_600_000));
    await mesh.client.call("createTimer", timer("m-ok", receiver.url, 50));
    await mesh.client.call("createTimer", timer("m-fail", failing.url, 50));
    await assert.rejects(mesh.client.call("createTimer", timer("bad id", receiver.url, 50)));
    // A paused group with a due timer, for timer_paused_due_timers.
    const admins = adminClient();
    await admins.pauseGroup({ groupId: "obs-held", reason: "metrics test" });
    await mesh.client.call("createTimer", httpTimerAt("obs-held", "held", Date.now(), receiver.url));
    // One malformed heartbeat (sent as a dispatcher may), for mesh_messages_dropped_total.
    const asDispatcher = await mesh.nats.connectAs("dispatcher");
    asDispatcher.publish(HEARTBEAT_SUBJECT, new TextEncoder().encode("not a heartbeat"));
    await asDispatcher.flush();
    await asDispatcher.close();
    await waitFor(
      () => receiver.received.some((r) => r.timerId === "m-ok") && failing.received.length > 0,
      15_000,
      "deliveries",
    );
    const ports = {
      timer: mesh.timer.httpPort,
      dispatcher: mesh.dispatchers[0]!.httpPort,
      admin: admin.httpPort,
    };
    // One RPC served by each of the others, so their RPC histograms have a series.
    await dispatcherClient(mesh.dispatchers[0]!.grpcPort).getStatus({});
    const health = createClient(
      Health,
      createGrpcTransport({ baseUrl: `http://127.0.0.1:${admin.grpcPort}` }),
    );
    assert.equal((await health.check({ service: "" })).status, HealthCheckResponse_ServingStatus.SERVING);
    await waitFor(
      async () =>
        /^timer_executions_total 2$/m.test(await scrape(ports.dispatcher)) &&
        /^timer_paused_due_timers\{group_id="obs-held"\} 1$/m.test(await scrape(ports.dispatcher)) &&
        /active_timers_total\{/.test(await scrape(ports.timer)) &&
        /^mesh_messages_dropped_total\{/m.test(await scrape(ports.admin)),
      20_000,
      "counters and refreshed gauges",
    );
    // The GC histogram has a series from a process's first garbage collection on.
    for (const port of Object.values(ports))
      await waitFor(async () => /^v8js_gc_duration_bucket\{/m.test(await scrape(port)), 20_000, "a GC");
    for (const [name, spec] of Object.entries({ ...METRICS, ...RUNTIME_METRICS })) {
      for (const service of spec.services) {
        const text = await scrape(ports[service]);
        const series = spec.type === "histogram" ? `${name}_bucket` : name;
        assert.match(text, new RegExp(`^${series}[{ ]`, "m"), `${service} does not export ${name}`);
      }
    }
    const timerText = await scrape(ports.timer);
    assert.match(timerText, /^timer_creations_total \d+/m);
    assert.match(timerText, /^timer_creation_failures_total\{code="INVALID_ARGUMENT"\} 1/m);
    assert.match(timerText, /^active_timers_total\{group_id="obs"\} \d/m);
    assert.match(
      timerText,
      /^rpc_server_call_duration_seconds_count\{rpc_system="grpc",rpc_service="timer.v1.TimerService",rpc_method="CreateTimer",rpc_grpc_status_code="0"\} \d/m,
    );
    const d = await scrape(ports.dispatcher);
    assert.match(d, /^timer_executions_success_total 1$/m);
    assert.match(d, /^timer_executions_total 2$/m);
    assert.match(d, /^callback_failures_total\{transport="http",retryable="true"\} 1$/m);
    // Each attempt timed, by what the receiver answered (m-fail's 500 is retryable).
    assert.match(d, /^callback_duration_seconds_count\{transport="http",outcome="success"\} [1-9]/m);
    assert.match(d, /^callback_duration_seconds_count\{transport="http",outcome="retryable_failure"\} 1$/m);
    assert.match(d, /^callback_duration_seconds_bucket\{transport="http",outcome="success",le="30"\} [1-9]/m);
    for (const text of [d, await scrape(ports.timer), await scrape(ports.admin)]) {
      assert.match(text, /^database_connections_waiting 0$/m);
      assert.match(text, /^process_cpu_time_seconds_total\{cpu_mode="user"\} [0-9.e+-]+$/m);
      assert.match(text, /^process_memory_usage_bytes [1-9]\d*$/m);
      assert.match(text, /^nodejs_eventloop_delay_p99 [0-9.e+-]+$/m);
    }
    assert.match(d, /^dispatcher_owned_shards 64$/m);
    // Lag is recomputed every 5 s for every shard, with the lease holder as owner.
    await waitFor(
      async () => /^timer_shard_lag_seconds\{shard="0",owner="d1"\} 0$/m.test(await scrape(ports.dispatcher)),
      10_000,
      "shard lag with its owner",
    );
    assert.match(d, /^database_query_duration_seconds_count\{operation="claim_timers"\} \d/m);
    // Bounded cardinality: the lag gauge has one live series per shard, no more. A scrape before
    // the leases were taken saw owner="none" (the dispatcher's first refresh, at start); those
    // series stay, at 0 (gauge-series.ts).
    assert.equal(d.match(/^timer_shard_lag_seconds\{shard="\d+",owner="d1"\}/gm)!.length, 64);
    const others = d.match(/^timer_shard_lag_seconds\{shard="\d+",owner="(?!d1")[^"]*"\} .*$/gm) ?? [];
    assert.ok(others.length <= 64 && others.every((l) => l.endsWith(" 0")), others.join("\n"));
  });
});

describe("traces and logs", () => {
  test("one timer's story: CreateTimer, the NATS hop, a fire span linked to the create, the callback, and the receiver's traceparent", async () => {
    const traceId = "4bf92f3577b34da6a3ce929d0e0736aa";
    const md = new grpc.Metadata();
    md.set("traceparent", `00-${traceId}-00f067aa0ba902b7-01`);
    await mesh.client.call("createTimer", timer("story", receiver.url, 300), md);
    const got = await waitFor(
      () => receiver.received.find((r) => r.timerId === "story"),
      10_000,
      "the callback",
    );

    let spans: ExportedSpan[] = [];
    const find = (pred: (s: ExportedSpan) => boolean) => spans.find(pred);
    await waitFor(
      () => {
        spans = otlp.spans;
        // Each process exports on its own schedule: wait for the timer service's spans as well.
        return (
          find((s) => s.name === "fire timer" && s.attributes["timer.id"] === "story") &&
          find((s) => s.name.startsWith("process timers.shard.")) &&
          find(
            (s) =>
              s.service === "timer" &&
              s.traceId === traceId &&
              s.name === "timer.v1.TimerService/CreateTimer",
          ) &&
          find((s) => s.traceId === traceId && s.name.startsWith("send timers.shard."))
        );
      },
      15_000,
      "spans to be exported",
    );

    const createSpan = find(
      (s) => s.service === "timer" && s.name === "timer.v1.TimerService/CreateTimer" && s.traceId === traceId,
    );
    assert.ok(createSpan, "a CreateTimer server span continuing the caller's trace");
    assert.equal(createSpan.parentSpanId, "00f067aa0ba902b7");
    assert.equal(createSpan.attributes["rpc.system"], "grpc");
    assert.ok(
      find((s) => s.traceId === traceId && s.name === "create_timers postgresql"),
      "the INSERT is a span in the create's trace",
    );
    const publish = find((s) => s.traceId === traceId && s.name.startsWith("send timers.shard."));
    assert.ok(publish, "the NATS publish is a PRODUCER span in the create's trace");
    const consume = find(
      (s) =>
        s.service === "dispatcher" && s.name.startsWith("process timers.shard.") && s.traceId === traceId,
    );
    assert.ok(consume, "the dispatcher's NATS consume continues the same trace");
    assert.equal(consume.parentSpanId, publish.spanId);

    const fire = find((s) => s.name === "fire timer" && s.attributes["timer.id"] === "story")!;
    assert.notEqual(fire.traceId, traceId, "the firing is its own trace");
    assert.deepEqual(fire.links, [{ traceId, spanId: createSpan.spanId }], "linked to the CreateTimer span");
    const delivery = find((s) => s.traceId === fire.traceId && s.name === "deliver http");
    assert.ok(delivery, "the callback is a span in the fire trace");
    assert.equal(delivery.parentSpanId, fire.spanId);
    assert.equal(
      got.traceparent,
      `00-${fire.traceId}-${delivery.spanId}-01`,
      "the receiver sees the callback span's context",
    );

    // Logs: JSON, with the service and, inside traced work, the trace id.
    const lines = mesh.dispatchers[0]!.output()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l));
    assert.ok(
      lines.length > 0 && lines.every((l) => l.service === "dispatcher" && typeof l.level === "string"),
    );
    for (const secret of ["password", "aGVsbG8"]) assert.ok(!mesh.timer.output().includes(secret));
  });
});

// Last in the file: every other timer has fired (or waits paused, or an hour ahead), so any lag
// on these shards would be theirs.
describe("paused groups", () => {
  test("a paused group's due timers are counted apart, not as shard lag, and fire once it is resumed", async () => {
    const admins = adminClient();
    const group = "paused-lag";
    await admins.pauseGroup({ groupId: group, reason: "receiver down" });
    const ids = ["p1", "p2", "p3", "p4", "p5"];
    const shards = [...new Set(ids.map((id) => shardOf(group, id, 64)))];
    for (const id of ids) {
      const res = await mesh.client.call("createTimer", httpTimerAt(group, id, Date.now(), receiver.url));
      assert.equal(res.created, true);
    }
    const port = mesh.dispatchers[0]!.httpPort;
    // The lag gauge is refreshed with the paused count, from a read made after it: once the
    // count shows the five, the same scrape's lag saw them due.
    const text = await waitFor(
      async () => {
        const t = await scrape(port);
        return seriesValue(t, `timer_paused_due_timers{group_id="${group}"}`) === ids.length ? t : undefined;
      },
      30_000,
      "the dispatcher's metrics to count the paused group's due timers",
    );
    for (const shard of shards)
      assert.equal(
        seriesValue(text, `timer_shard_lag_seconds{shard="${shard}",owner="d1"}`),
        0,
        `shard ${shard} holds only a paused group's due timers: no lag`,
      );
    // The admin's view agrees: no lag and no backlog on those shards, none in GetStats.
    const listed = await admins.listShards({});
    for (const shard of shards) {
      const row = listed.shards.find((r) => r.shard === shard);
      assert.deepEqual([row?.lagSeconds, row?.dueCount], [0, 0n], `ListShards, shard ${shard}`);
    }
    const stats = await admins.getStats({});
    assert.equal(stats.dueNow, 0n, "GetStats' backlog leaves the paused group out");
    assert.equal(
      receiver.received.filter((r) => r.groupId === group).length,
      0,
      "nothing fired while paused",
    );

    await admins.resumeGroup({ groupId: group });
    await waitFor(
      () => ids.every((id) => receiver.received.some((r) => r.groupId === group && r.timerId === id)),
      30_000,
      "the resumed group's timers to fire",
    );
    assert.equal(receiver.received.filter((r) => r.groupId === group).length, ids.length, "each fired once");
    await waitFor(
      async () => seriesValue(await scrape(port), `timer_paused_due_timers{group_id="${group}"}`) === 0,
      30_000,
      "the resumed group's paused-and-due count to drop to 0",
    );
  });
});
