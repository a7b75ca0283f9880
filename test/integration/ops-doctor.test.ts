// `npm run ops -- doctor` against a real mesh (timer, admin and two dispatcher processes, Postgres,
// nats-server), run as an operator runs it: all OK and exit 0 when healthy; exit 1 naming the
// problem when NATS is down, when a dispatcher hangs (without hanging the doctor), and when no
// dispatcher is left and the shards have no owner.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import type { CheckResult } from "../../scripts/ops/doctor-checks.js";
import { shardOf } from "../../services/shared/src/shard.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { runOps } from "../support/ops-cli.js";
import { startService, type ServiceProcess } from "../support/service-process.js";
import { waitForShardOwners } from "../support/shard-owners.js";
import { freePort, waitFor } from "../support/wait.js";

const SHARDS = 64;

let mesh: TestMesh;
let admin: ServiceProcess;

before(async () => {
  mesh = await startMesh({ dispatchers: 2 });
  admin = await startService("admin", mesh.envFor("admin"));
  await waitForShardOwners(mesh.db.pool, 2, SHARDS);
});
after(async () => {
  await admin?.[Symbol.asyncDispose]();
  await mesh?.[Symbol.asyncDispose]();
});

/** The doctor as an operator runs it against this mesh, with the admin's NATS user. */
async function doctor(...extra: string[]) {
  const url = (p: ServiceProcess) => `http://127.0.0.1:${p.httpPort}`;
  const args = [
    "doctor",
    "--timer",
    url(mesh.timer),
    "--admin",
    url(admin),
    ...mesh.dispatchers.flatMap((d) => ["--dispatcher", url(d)]),
    ...extra,
  ];
  return runOps(args, { DATABASE_URL: mesh.db.url, ...mesh.nats.serviceEnv("admin") });
}

async function doctorJson(...extra: string[]) {
  const run = await doctor("--format", "json", ...extra);
  assert.equal(run.stderr, "", "nothing on stderr");
  const report = JSON.parse(run.stdout) as { exitCode: number; checks: CheckResult[] };
  assert.equal(report.exitCode, run.code, "the JSON's exitCode is the process's");
  const by = new Map(report.checks.map((c) => [c.name, c]));
  return { run, checks: report.checks, by };
}

describe("npm run ops -- doctor", () => {
  test("a healthy mesh: every check OK, exit 0, in JSON and in text", async () => {
    const { run, checks, by } = await doctorJson();
    assert.equal(run.code, 0, run.stdout);
    assert.deepEqual(
      checks.map((c) => c.name),
      [
        "timer ready",
        "admin ready",
        "dispatcher d1 ready",
        "dispatcher d2 ready",
        "dispatchers",
        "postgres",
        "nats",
        "shard owners",
        "shard lag",
        "oldest overdue timer",
        "clock offset",
        "pool use",
        "paused groups",
        "failed timers (1 h)",
      ],
      "dispatchers are named by their DISPATCHER_ID, read from their metrics",
    );
    // The test Postgres is shared with other test files: its connection count is theirs too.
    const notOk = checks.filter((c) => c.status !== "OK" && c.name !== "postgres");
    assert.deepEqual(notOk, [], "every check OK");
    assert.notEqual(by.get("postgres")?.status, "FAIL");
    assert.match(by.get("postgres")!.summary, /^Postgres \d+/);
    assert.match(by.get("shard owners")!.summary, /all 64 shards owned \(d1: \d+, d2: \d+\)/);
    assert.match(by.get("dispatchers")!.summary, /2 live \(d1, d2\), all checked/);
    assert.match(by.get("clock offset")!.summary, /this machine [+-]\d+\.\d{3} s .*d1 [+-]\d+\.\d{3} s, d2 /);
    assert.match(by.get("pool use")!.summary, /timer \d+\/20, admin \d+\/5, d1 \d+\/20, d2 \d+\/20/);

    const text = await doctor();
    assert.equal(text.code, 0, text.stdout);
    assert.match(text.stdout, /: 14 checks, 1[34] OK, [01] WARN, 0 FAIL\n/);
    assert.match(text.stdout, /^OK {4}shard owners +all 64 shards owned/m);
  });

  test("a paused group with due timers: WARN with the resume command, not lag; exit 0, 1 with --strict", async () => {
    await mesh.db.pool.query(
      "INSERT INTO paused_groups (group_id, paused_by, reason) VALUES ('held', 'ops', 'receiver down, INC-42')",
    );
    await mesh.db.pool.query(
      `INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, callback, payload,
                           max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash)
       VALUES ('held', 'h1', $1, 1, now() - interval '40 s', now() - interval '40 s',
               '{"http":{"url":"http://127.0.0.1:9/hook"}}', '\\x', 3, 1000, 10000, 2, '\\x')`,
      [shardOf("held", "h1", SHARDS)],
    );
    try {
      const { run, by } = await doctorJson();
      assert.equal(run.code, 0, "a WARN alone exits 0");
      assert.equal(by.get("paused groups")?.status, "WARN");
      assert.match(by.get("paused groups")!.summary, /held \(1\)/);
      assert.match(by.get("paused groups")!.action!, /"groupId":"held".*AdminService\/ResumeGroup/);
      assert.equal(by.get("shard lag")?.status, "OK", "a paused group's timers are not lag");
      assert.equal(by.get("oldest overdue timer")?.status, "OK");
      const strict = await doctor("--strict");
      assert.equal(strict.code, 1, "--strict fails on a WARN");
    } finally {
      await mesh.db.pool.query("DELETE FROM timers WHERE group_id = 'held'");
      await mesh.db.pool.query("DELETE FROM paused_groups WHERE group_id = 'held'");
    }
  });

  test("NATS down: exit 1, the nats check and the dispatchers' readiness FAIL and say why", async () => {
    await mesh.nats.stop();
    try {
      // A dispatcher is not ready without NATS; the doctor must say so, not only that NATS is down.
      await waitFor(
        async () => (await mesh.dispatchers[0]!.readiness()).status === 503,
        20_000,
        "d1 unready",
      );
      const { run, by } = await doctorJson();
      assert.equal(run.code, 1);
      assert.equal(by.get("nats")?.status, "FAIL");
      assert.match(by.get("nats")!.summary, /^nats:\/\/127\.0\.0\.1:\d+: /);
      assert.match(by.get("nats")!.action!, /nats-server/);
      assert.equal(by.get("dispatcher d1 ready")?.status, "FAIL");
      assert.match(by.get("dispatcher d1 ready")!.summary, /not ready: .*nats/i);
      // The timer service needs Postgres only: still ready.
      assert.notEqual(by.get("timer ready")?.status, "FAIL");
      assert.equal(by.get("shard owners")?.status, "OK", "leases outlive a NATS outage");
    } finally {
      await mesh.nats.restart();
    }
    await Promise.all([...mesh.dispatchers, admin, mesh.timer].map((p) => p.waitReady()));
  });

  test("a hung dispatcher: its check times out, the others still answer, exit 1", async () => {
    const d2 = mesh.dispatchers[1]!;
    d2.child.kill("SIGSTOP");
    try {
      // Long enough for the live processes to answer on a busy machine; the hung one never does.
      const { run, by } = await doctorJson("--timeout", "3s");
      assert.equal(run.code, 1);
      const hung = [...by.values()].find((c) => c.name.startsWith("dispatcher ") && c.status === "FAIL");
      assert.ok(hung, "the hung dispatcher's readiness FAILs");
      assert.match(hung.summary, new RegExp(`127\\.0\\.0\\.1:${d2.httpPort}`));
      assert.match(hung.summary, /no answer within 3000 ms/);
      assert.match(hung.action!, /infra\/README\.md#dispatcherdown/);
      assert.equal(by.get("dispatcher d1 ready")?.status, "OK");
      assert.equal(by.get("timer ready")?.status, "OK");
      assert.equal(by.get("nats")?.status, "OK");
    } finally {
      d2.child.kill("SIGCONT");
    }
  });

  test("Postgres unreachable: postgres FAILs, what it would read is not checked, the services still are", async () => {
    const closed = await freePort();
    const url = (p: ServiceProcess) => `http://127.0.0.1:${p.httpPort}`;
    const run = await runOps(
      [
        "doctor",
        "--format",
        "json",
        "--timer",
        url(mesh.timer),
        "--admin",
        url(admin),
        "--dispatcher",
        url(mesh.dispatchers[0]!),
      ],
      { DATABASE_URL: `postgres://postgres@127.0.0.1:${closed}/timers`, ...mesh.nats.serviceEnv("admin") },
    );
    assert.equal(run.code, 1, run.stderr);
    const checks = (JSON.parse(run.stdout) as { checks: CheckResult[] }).checks;
    const by = new Map(checks.map((c) => [c.name, c]));
    assert.equal(by.get("postgres")?.status, "FAIL");
    assert.match(by.get("postgres")!.summary, /^unreachable: .*ECONNREFUSED/);
    assert.match(by.get("postgres")!.action!, /DATABASE_URL/);
    for (const name of ["dispatchers", "shard owners", "shard lag", "paused groups", "failed timers (1 h)"])
      assert.deepEqual(
        [by.get(name)?.status, by.get(name)?.summary],
        ["WARN", "not checked: Postgres unreachable"],
        name,
      );
    assert.equal(by.get("timer ready")?.status, "OK", "the services' own view is still asked");
    assert.equal(by.get("nats")?.status, "OK");
    assert.equal(checks.filter((c) => c.status === "FAIL").length, 1, "one cause, one FAIL");
  });

  test("every dispatcher gone: no live owner for any shard, exit 1 naming both problems", async () => {
    for (const d of mesh.dispatchers) await d.stop("SIGKILL");
    // A crashed owner keeps its leases until they expire (LEASE_TTL), then its shards are unowned.
    await waitFor(
      async () =>
        (await mesh.db.pool.query("SELECT 1 FROM shard_owners WHERE owner IS NOT NULL")).rowCount === 0,
      20_000,
      "the dead dispatchers' leases to expire",
    );
    const { run, by } = await doctorJson();
    assert.equal(run.code, 1);
    assert.equal(by.get("shard owners")?.status, "FAIL");
    assert.match(by.get("shard owners")!.summary, /^64 of 64 shards have no live owner/);
    assert.match(by.get("shard owners")!.details!.join("\n"), /^last owner d[12]: \d+ shard\(s\) \(/m);
    assert.match(by.get("shard owners")!.action!, /RebalanceShards.*infra\/README\.md#shardsunowned/);
    assert.equal(by.get("dispatchers")?.status, "FAIL");
    assert.match(by.get("dispatchers")!.summary, /no dispatcher holds a live lease/);

    const text = await doctor();
    assert.equal(text.code, 1);
    assert.match(text.stdout, /^FAIL {2}shard owners +64 of 64 shards have no live owner/m);
    assert.match(text.stdout, /^ +do: a dead owner's shards move after LEASE_TTL/m);
  });
});
