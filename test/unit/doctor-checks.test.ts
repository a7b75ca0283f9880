import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  type CheckResult,
  doctorExitCode,
  formatDoctorText,
  instanceOf,
  judgeClockOffsets,
  judgeDispatcherCoverage,
  judgeOldestOverdue,
  judgePausedGroups,
  judgePoolUse,
  judgePostgres,
  judgeReadiness,
  judgeRecentFailures,
  judgeShardLag,
  judgeShardOwners,
  parsePrometheusText,
  sampleValue,
} from "../../scripts/ops/doctor-checks.js";
import { REPO_ROOT } from "../../scripts/repo-root.js";

test("Prometheus text: samples with labels, escapes and special values; comments skipped", () => {
  const samples = parsePrometheusText(
    [
      "# HELP target_info Target metadata",
      "# TYPE target_info gauge",
      'target_info{service_name="dispatcher",service_instance_id="d-1"} 1',
      "database_connections_active 3",
      'x{a="q\\"uote",b="back\\\\slash"} +Inf',
      "dispatcher_clock_offset_seconds -0.0125 1700000000000",
      "garbage line without value",
    ].join("\n"),
  );
  assert.equal(instanceOf(samples), "d-1");
  assert.equal(sampleValue(samples, "database_connections_active"), 3);
  assert.equal(sampleValue(samples, "dispatcher_clock_offset_seconds"), -0.0125);
  assert.deepEqual(
    samples.find((s) => s.name === "x"),
    {
      name: "x",
      labels: { a: 'q"uote', b: "back\\slash" },
      value: Infinity,
    },
  );
  assert.equal(sampleValue(samples, "missing"), undefined);
});

test("readiness: 200 is OK, 503 FAILs naming the failing checks, no answer FAILs with the runbook", () => {
  const ok = judgeReadiness("timer", "timer", "http://t:8080", {
    status: 200,
    body: { status: "ready", checks: { postgres: true, nats: true } },
  });
  assert.equal(ok.status, "OK");
  const optionalDown = judgeReadiness("timer", "timer", "http://t:8080", {
    status: 200,
    body: { status: "ready", checks: { postgres: true, nats: false }, optional: ["nats"] },
  });
  assert.equal(optionalDown.status, "WARN");
  assert.match(optionalDown.summary, /nats \(optional\) failing/);
  const unready = judgeReadiness("dispatcher", "dispatcher d1", "http://d:8081", {
    status: 503,
    body: { status: "not ready", checks: { postgres: true, nats: false, mesh: false } },
  });
  assert.equal(unready.status, "FAIL");
  assert.match(unready.summary, /not ready: nats, mesh/);
  const gone = judgeReadiness("admin", "admin", "http://a:8082", { error: "ECONNREFUSED" });
  assert.equal(gone.status, "FAIL");
  assert.match(gone.action!, /infra\/README\.md#adminservicedown/);
});

test("dispatchers: none alive FAILs, an alive one not checked WARNs", () => {
  assert.equal(judgeDispatcherCoverage([], []).status, "FAIL");
  const partial = judgeDispatcherCoverage(["d1", "d2"], [{ url: "http://d1:8081", id: "d1" }]);
  assert.equal(partial.status, "WARN");
  assert.match(partial.summary, /not checked: d2/);
  assert.match(partial.action!, /--dispatcher/);
  assert.equal(judgeDispatcherCoverage(["d1"], [{ url: "u", id: "d1" }]).status, "OK");
});

test("Postgres connections: WARN from 80 % of the usable connections, FAIL from 95 %", () => {
  const at = (used: number) =>
    judgePostgres({ version: "15.8", used, maxConnections: 103, reserved: 3 }).status;
  assert.equal(at(79), "OK");
  assert.equal(at(80), "WARN");
  assert.equal(at(95), "FAIL");
  assert.equal(judgePostgres({ error: "ECONNREFUSED" }).status, "FAIL");
});

test("shard owners: any unowned shard FAILs, naming their last owners and the first shards", () => {
  const r = judgeShardOwners({
    shardCount: 64,
    owners: [{ owner: "d1", shards: 57 }],
    unowned: [
      { lastOwner: "d2", count: 6, firstShards: [3, 5, 8, 13, 21] },
      { lastOwner: null, count: 1, firstShards: [9] },
    ],
  });
  assert.equal(r.status, "FAIL");
  assert.match(r.summary, /^7 of 64 shards have no live owner/);
  assert.deepEqual(r.details, [
    "last owner d2: 6 shard(s) (3, 5, 8, 13, 21, …)",
    "last owner none: 1 shard(s) (9)",
    "owned: d1: 57",
  ]);
  assert.match(r.action!, /#shardsunowned/);
  assert.equal(
    judgeShardOwners({ shardCount: 2, owners: [{ owner: "d1", shards: 2 }], unowned: [] }).status,
    "OK",
  );
});

test("lag: OK up to 5 s, WARN above, FAIL above 15 s (ShardLagHigh); the oldest timer WARNs past 30 s", () => {
  const backlog = (lagSeconds: number, shard = 1) => ({
    shard,
    owner: "d1",
    lagSeconds,
    groupId: "billing",
    timerId: "invoice-42",
  });
  assert.equal(judgeShardLag([]).status, "OK");
  assert.equal(judgeShardLag([backlog(5)]).status, "OK");
  assert.equal(judgeShardLag([backlog(1), backlog(6, 2)]).status, "WARN");
  const fail = judgeShardLag([backlog(16, 7), backlog(6, 2)]);
  assert.equal(fail.status, "FAIL");
  assert.match(fail.summary, /2 shard\(s\) lag more than 5 s, worst 16\.0 s \(shard 7, owner d1\)/);
  assert.match(fail.action!, /ListShards.*#shardlaghigh/);
  assert.equal(judgeOldestOverdue(undefined).status, "OK");
  assert.equal(judgeOldestOverdue(backlog(30)).status, "OK");
  const old = judgeOldestOverdue(backlog(31));
  assert.equal(old.status, "WARN");
  assert.match(old.summary, /^billing\/invoice-42 due 31\.0 s ago/);
  assert.match(old.action!, /ExplainTimer/);
});

test("clock offsets over 1 s WARN, naming the machines; unmeasured ones are said so", () => {
  const r = judgeClockOffsets({ offsetMs: 12, uncertaintyMs: 0.4 }, [
    { label: "d1", offsetSeconds: -1.5 },
    { label: "d2", offsetSeconds: undefined },
  ]);
  assert.equal(r.status, "WARN");
  assert.match(r.summary, /this machine \+0\.012 s .*d1 -1\.500 s, d2: not reported/);
  assert.match(r.details![0]!, /off: d1$/);
  const fine = judgeClockOffsets({ offsetMs: -900, uncertaintyMs: 1 }, [
    { label: "d1", offsetSeconds: -0.0001 },
  ]);
  assert.equal(fine.status, "OK");
  assert.match(fine.summary, /this machine -0\.900 s .*d1 \+0\.000 s$/);
});

test("pool use WARNs at 90 % or with callers waiting", () => {
  const pool = (active: number, waiting = 0) => ({ label: "timer", active, max: 20, waiting });
  assert.equal(judgePoolUse([pool(17)]).status, "OK");
  assert.equal(judgePoolUse([pool(18)]).status, "WARN");
  assert.equal(judgePoolUse([pool(2, 1)]).status, "WARN");
  assert.match(
    judgePoolUse([{ label: "admin", active: undefined, max: undefined, waiting: undefined }]).summary,
    /admin: not reported/,
  );
});

test("paused groups WARN only when timers wait on them; failed timers WARN with the RPCs to use", () => {
  const now = new Date("2026-12-02T10:00:00Z");
  const paused = (due: number) => ({
    groupId: "demo",
    pausedAt: new Date("2026-12-02T09:30:00Z"),
    pausedBy: "ops",
    reason: "INC-42",
    due,
  });
  assert.equal(judgePausedGroups([paused(0)], now).status, "OK");
  const waiting = judgePausedGroups([paused(12)], now);
  assert.equal(waiting.status, "WARN");
  assert.match(waiting.details![0]!, /demo: paused 30 min ago by ops \("INC-42"\), 12 due/);
  assert.match(waiting.action!, /ResumeGroup/);
  assert.equal(judgeRecentFailures([]).status, "OK");
  const failed = judgeRecentFailures([{ groupId: "billing", count: 3 }]);
  assert.equal(failed.status, "WARN");
  assert.match(failed.action!, /ListFailedTimers.*RetryTimers/);
});

test("exit code: FAIL is 1, WARN is 0 unless strict; the text lists what to do", () => {
  const ok: CheckResult = { name: "nats", status: "OK", summary: "fine" };
  const warn: CheckResult = { name: "pool use", status: "WARN", summary: "busy", action: "look" };
  const fail: CheckResult = { name: "postgres", status: "FAIL", summary: "down", action: "start it" };
  assert.equal(doctorExitCode([ok, warn], false), 0);
  assert.equal(doctorExitCode([ok, warn], true), 1);
  assert.equal(doctorExitCode([ok, fail], false), 1);
  const text = formatDoctorText([ok, warn, fail], new Date("2026-12-02T10:00:00Z"));
  assert.match(text, /^doctor 2026-12-02T10:00:00\.000Z: 3 checks, 1 OK, 1 WARN, 1 FAIL$/m);
  assert.match(text, /^FAIL {2}postgres {2}down\n {16}do: start it$/m);
});

test("every runbook the doctor points at is an entry of infra/README.md", () => {
  const source = readFileSync(join(REPO_ROOT, "scripts/ops/doctor-checks.ts"), "utf8");
  // Alert names are the source's CamelCase string literals (runbook("ShardsUnowned"), DOWN_ALERT).
  const alerts = new Set([...source.matchAll(/"((?:[A-Z][a-z]+){2,})"/g)].map((m) => m[1]!));
  for (const a of [
    "DispatcherDown",
    "ShardsUnowned",
    "NatsDisconnected",
    "TimerServiceDown",
    "DatabaseConnectionPoolSaturated",
  ])
    assert.ok(alerts.has(a), `found ${a} in the source`);
  const headings = new Set(
    [...readFileSync(join(REPO_ROOT, "infra/README.md"), "utf8").matchAll(/^### (\S+)$/gm)].map((m) => m[1]!),
  );
  const missing = [...alerts].filter((a) => !headings.has(a));
  assert.deepEqual(missing, [], "runbook entries the doctor names that infra/README.md lacks");
});
