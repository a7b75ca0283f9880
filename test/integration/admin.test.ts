// The admin service driven the way an operator drives it: `buf curl` through reflection, JSON
// in and out, with bearer tokens, against a running mesh (timer service, three dispatchers,
// admin; real Postgres and nats-server). Each test asserts the effect on the mesh itself:
// shard_leases, timers, timer_attempts, deliveries at a real HTTP receiver, the audit log.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { hashToken } from "../../services/shared/src/auth.js";
import { CreateTimerRequestSchema } from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { shardOf } from "../../services/shared/src/shard.js";
import { bufCurl, bufCurlOk, type BufCurlResult } from "../support/buf-curl.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startHttpReceiver, type Received } from "../support/receivers.js";
import { startService, type ServiceProcess } from "../support/service-process.js";
import { waitFor } from "../support/wait.js";

const SHARDS = 64;
const OPS = "ops-7f3c9a2e41b0d6";
const BILLING = "billing-0c8e5d1f92a47b";
/** The admin service's own token for dispatchers (DISPATCHER_TOKEN). */
const ADMIN_SERVICE = "admin-service-5b1e07c3d9";
const TOKENS = JSON.stringify([
  { name: "ops", sha256: hashToken(OPS), admin: true },
  { name: "admin-service", sha256: hashToken(ADMIN_SERVICE), admin: true },
  { name: "ci-billing", sha256: hashToken(BILLING), groups: ["billing", "orders-*"] },
]);
const ADMIN = "admin.v1.AdminService";
const ADMIN_METHODS = [
  "ListDispatchers",
  "ListShards",
  "DrainDispatcher",
  "RebalanceShards",
  "PauseGroup",
  "ResumeGroup",
  "ListGroups",
  "ListFailedTimers",
  "RetryTimers",
  "CancelTimers",
  "PurgeTimers",
  "ExplainTimer",
  "GetStats",
  "ListAuditEvents",
  "SetGroupQuota",
  "ListGroupQuotas",
];

let mesh: TestMesh;
let admin: ServiceProcess;
let receiver: Awaited<ReturnType<typeof startHttpReceiver>>;
/** Every changing admin call made, in order: what the audit log must show. */
const changes: { method: string; body: Record<string, unknown>; outcome: string }[] = [];

const timesSeen = (received: Received[], group: string, id: string) =>
  received.filter((r) => r.groupId === group && r.timerId === id).length;

before(async () => {
  receiver = await startHttpReceiver((r) => {
    // "flaky" fails a timer's first delivery for good (400), then succeeds; "doomed" always fails.
    if (r.groupId === "flaky" && timesSeen(receiver.received, r.groupId, r.timerId) === 1) return 400;
    if (r.groupId === "doomed") return 400;
    return 200;
  });
  // OVERDUE_GRACE is short so a resumed group's timers are picked up quickly.
  mesh = await startMesh({
    dispatchers: 3,
    env: { SHARD_COUNT: String(SHARDS), AUTH_TOKENS: TOKENS, OVERDUE_GRACE: "500ms" },
  });
  admin = await startService("admin", { ...mesh.envFor("admin"), DISPATCHER_TOKEN: ADMIN_SERVICE });
  await waitFor(
    async () => {
      const { rows } = await mesh.db.pool.query(
        "SELECT count(DISTINCT owner)::int AS owners, count(*)::int AS n FROM shard_owners WHERE owner IS NOT NULL",
      );
      return rows[0].owners === 3 && rows[0].n === SHARDS;
    },
    20_000,
    "three dispatchers to share the shards",
  );
});
after(async () => {
  await admin?.[Symbol.asyncDispose]();
  await mesh?.[Symbol.asyncDispose]();
  await receiver?.close();
});

/** An AdminService call as ops; it must succeed. */
function adminOk(method: string, body: Record<string, unknown> = {}): Promise<any> {
  return bufCurlOk(admin.grpcPort, `${ADMIN}/${method}`, body, OPS);
}

/** A changing AdminService call as ops, remembered for the audit-log check. */
async function change(method: string, body: Record<string, unknown>): Promise<BufCurlResult> {
  const r = await bufCurl(admin.grpcPort, `${ADMIN}/${method}`, body, OPS);
  changes.push({ method, body, outcome: r.exitCode === 0 ? "OK" : String(r.code).toUpperCase() });
  return r;
}

async function changeOk(method: string, body: Record<string, unknown>): Promise<any> {
  const r = await change(method, body);
  if (r.exitCode !== 0) throw new Error(`${method} failed: ${r.code}: ${r.message}`);
  return r.json;
}

function auth(token: string): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  return md;
}

/** Creates an HTTP timer to the test receiver at fireAtMs (through the timer service, as ops). */
async function createTimer(groupId: string, timerId: string, fireAtMs: number): Promise<void> {
  await mesh.client.call(
    "createTimer",
    create(CreateTimerRequestSchema, {
      groupId,
      timerId,
      schedule: { case: "fireAt", value: timestampFromMs(fireAtMs) },
      callback: { target: { case: "http", value: { url: receiver.url, headers: {} } } },
    }),
    auth(OPS),
  );
}

async function states(groupId: string): Promise<Map<string, number>> {
  const { rows } = await mesh.db.pool.query("SELECT timer_id, state FROM timers WHERE group_id = $1", [
    groupId,
  ]);
  return new Map(rows.map((r) => [r.timer_id as string, r.state as number]));
}

async function ownedCounts(): Promise<Map<string, number>> {
  const { rows } = await mesh.db.pool.query(
    "SELECT owner, count(*)::int AS n FROM shard_owners WHERE owner IS NOT NULL GROUP BY owner",
  );
  return new Map(rows.map((r) => [r.owner as string, r.n as number]));
}

function assertCode(r: BufCurlResult, code: string, message?: RegExp): void {
  assert.equal(
    r.code,
    code,
    `expected ${code}, got ${r.exitCode === 0 ? `success ${r.stdout}` : `${r.code}: ${r.message}`}`,
  );
  if (message) assert.match(r.message ?? "", message);
}

describe("authentication and authorization", () => {
  test("calls without a token are UNAUTHENTICATED on every gRPC port; health and reflection stay open", async () => {
    const ports = {
      timer: mesh.timer.grpcPort,
      dispatcher: mesh.dispatchers[0]!.grpcPort,
      admin: admin.grpcPort,
    };
    assertCode(
      await bufCurl(ports.timer, "timer.v1.TimerService/ListTimers", { groupId: "billing" }),
      "unauthenticated",
      /missing credentials: send the header "authorization: Bearer <token>"/,
    );
    assertCode(
      await bufCurl(ports.dispatcher, "dispatcher.v1.DispatcherService/GetStatus", {}),
      "unauthenticated",
      /missing credentials/,
    );
    assertCode(
      await bufCurl(ports.admin, `${ADMIN}/ListDispatchers`, {}),
      "unauthenticated",
      /missing credentials/,
    );
    assertCode(
      await bufCurl(ports.admin, `${ADMIN}/ListDispatchers`, {}, "not-a-token"),
      "unauthenticated",
      /unknown token/,
    );
    for (const port of Object.values(ports)) {
      const health = await bufCurlOk(port, "grpc.health.v1.Health/Check", {});
      assert.equal(health.status, "SERVING");
    }
  });

  test("a token for group A can create and read in A, and gets PERMISSION_DENIED in group B", async () => {
    const t = mesh.timer.grpcPort;
    const body = (groupId: string, timerId: string) => ({
      groupId,
      timerId,
      delay: "3600s",
      callback: { http: { url: receiver.url } },
    });
    const created = await bufCurlOk(t, "timer.v1.TimerService/CreateTimer", body("billing", "b-1"), BILLING);
    assert.equal(created.created, true);
    await bufCurlOk(t, "timer.v1.TimerService/CreateTimer", body("orders-eu", "o-1"), BILLING);
    assert.equal(
      (await bufCurlOk(t, "timer.v1.TimerService/GetTimer", { groupId: "billing", timerId: "b-1" }, BILLING))
        .timer.timerId,
      "b-1",
    );

    assertCode(
      await bufCurl(t, "timer.v1.TimerService/CreateTimer", body("payroll", "p-1"), BILLING),
      "permission_denied",
      /^token "ci-billing" may not use group "payroll"$/,
    );
    assert.equal((await states("payroll")).size, 0, "nothing was stored");

    await bufCurlOk(t, "timer.v1.TimerService/CreateTimer", body("payroll", "p-2"), OPS);
    for (const method of ["GetTimer", "CancelTimer"]) {
      assertCode(
        await bufCurl(t, `timer.v1.TimerService/${method}`, { groupId: "payroll", timerId: "p-2" }, BILLING),
        "permission_denied",
        /token "ci-billing" may not use group "payroll"/,
      );
    }
    assertCode(
      await bufCurl(t, "timer.v1.TimerService/ListTimers", { groupId: "payroll" }, BILLING),
      "permission_denied",
      /may not use group "payroll"/,
    );
    assert.equal((await states("payroll")).get("p-2"), 1, "the other group's timer is untouched");
  });

  test("a non-admin token gets PERMISSION_DENIED on every AdminService call and on DispatcherService/Drain", async () => {
    for (const method of ADMIN_METHODS) {
      assertCode(
        await bufCurl(admin.grpcPort, `${ADMIN}/${method}`, {}, BILLING),
        "permission_denied",
        /^token "ci-billing" may not call admin\.v1\.AdminService: it needs an admin token$/,
      );
    }
    const before = await ownedCounts();
    assertCode(
      await bufCurl(mesh.dispatchers[0]!.grpcPort, "dispatcher.v1.DispatcherService/Drain", {}, BILLING),
      "permission_denied",
      /token "ci-billing" may not call dispatcher\.v1\.DispatcherService/,
    );
    assert.ok((before.get("d1") ?? 0) > 0);
    assert.equal((await ownedCounts()).get("d1"), before.get("d1"), "d1 was not drained");
    const { rows } = await mesh.db.pool.query(
      "SELECT count(*)::int AS n FROM audit_events WHERE actor = 'ci-billing'",
    );
    assert.equal(rows[0].n, 0, "refused calls change nothing");
  });
});

describe("the mesh as operators see it", () => {
  test("ListDispatchers and ListShards show the three dispatchers and their shards as shard_leases has them", async () => {
    await waitFor(
      async () => (await adminOk("ListDispatchers")).dispatchers?.length === 3,
      10_000,
      "the admin to hear three heartbeats",
    );
    const { dispatchers } = await adminOk("ListDispatchers");
    const owned = await ownedCounts();
    assert.deepEqual(
      dispatchers.map((d: any) => d.id),
      ["d1", "d2", "d3"],
    );
    for (const [i, d] of dispatchers.entries()) {
      assert.equal(d.address, `127.0.0.1:${mesh.dispatchers[i]!.grpcPort}`);
      assert.equal(d.live, true);
      assert.match(d.version, /\d/);
      assert.ok(Date.now() - Date.parse(d.lastHeartbeatTime) < 3_000);
      assert.equal(d.ownedShards, owned.get(d.id));
    }
    assert.equal(
      dispatchers.reduce((n: number, d: any) => n + d.ownedShards, 0),
      SHARDS,
    );

    const all = await adminOk("ListShards");
    assert.equal(all.shardCount, SHARDS);
    assert.deepEqual(
      all.shards.map((s: any) => s.shard ?? 0),
      [...Array(SHARDS).keys()],
    );
    assert.ok(
      all.shards.every(
        (s: any) => s.leased === true && ["d1", "d2", "d3"].includes(s.owner) && Number(s.epoch) > 0,
      ),
    );
    const mine = await adminOk("ListShards", { owner: "d1" });
    assert.equal(mine.shards.length, owned.get("d1"));
    assert.ok(mine.shards.every((s: any) => s.owner === "d1"));
  });

  test("PauseGroup holds a group's timers past their fire time; ResumeGroup fires them once each, oldest first", async () => {
    // Five timers in one shard, so one dispatcher fires them and their order is observable.
    const shard = shardOf("reports", "r-0", SHARDS);
    const ids: string[] = [];
    for (let i = 0; ids.length < 5; i++)
      if (shardOf("reports", `r-${i}`, SHARDS) === shard) ids.push(`r-${i}`);
    const paused = await changeOk("PauseGroup", { groupId: "reports", reason: "incident 7" });
    assert.equal(paused.newlyPaused, true);
    assert.equal(paused.pause.pausedBy, "ops");
    const again = await changeOk("PauseGroup", { groupId: "reports", reason: "again" });
    assert.equal(again.newlyPaused, undefined, "pausing a paused group changes nothing");
    assert.equal(again.pause.reason, "incident 7");

    const base = Date.now() + 1_000;
    const fireAt = new Map(ids.map((id, i) => [id, base + i * 100]));
    for (const id of [...ids].reverse()) await createTimer("reports", id, fireAt.get(id)!);

    const groups = await adminOk("ListGroups");
    const reports = groups.groups.find((g: any) => g.groupId === "reports");
    assert.equal(reports.scheduled, "5");
    assert.equal(reports.pause.reason, "incident 7");

    // Past OVERDUE_GRACE + POLL_INTERVAL, a dispatcher would long have fired them if not paused.
    await waitFor(
      async () => {
        const { rows } = await mesh.db.pool.query(
          "SELECT count(*)::int AS n FROM timers WHERE group_id = 'reports' AND state = 1 AND next_attempt_at < now() - interval '2500 milliseconds'",
        );
        return rows[0].n === 5;
      },
      15_000,
      "every paused timer to be 2.5 s overdue",
    );
    assert.equal(receiver.received.filter((r) => r.groupId === "reports").length, 0, "no paused timer fired");
    const explained = await adminOk("ExplainTimer", { groupId: "reports", timerId: ids[0] });
    assert.match(
      explained.next,
      /^waiting: group "reports" is paused \(by ops at [^:]+:[^)]*: incident 7\); it is due \(by [\d.]+ s\) and fires once the group is resumed$/,
    );
    const lagging = await adminOk("ListShards", { onlyLagging: true, lagThreshold: "2s" });
    const lag = lagging.shards.find((s: any) => (s.shard ?? 0) === shard);
    assert.ok(lag, "the paused shard is listed as lagging");
    assert.ok(Number(lag.dueCount) >= 5 && lag.lagSeconds > 2, JSON.stringify(lag));
    assert.ok(Number((await adminOk("GetStats")).dueNow) >= 5);

    const resumed = await changeOk("ResumeGroup", { groupId: "reports" });
    assert.equal(resumed.wasPaused, true);
    assert.equal(resumed.overdueTimers, "5");
    await waitFor(
      () => ids.every((id) => timesSeen(receiver.received, "reports", id) === 1),
      15_000,
      "the resumed timers to fire",
    );
    await waitFor(
      async () => [...(await states("reports")).values()].every((s) => s === 3),
      5_000,
      "the resumed timers to be SUCCEEDED",
    );
    assert.ok(
      ids.every((id) => timesSeen(receiver.received, "reports", id) === 1),
      "each fired once",
    );
    const { rows } = await mesh.db.pool.query(
      "SELECT timer_id FROM timer_attempts WHERE group_id = 'reports' ORDER BY started_at, id",
    );
    assert.deepEqual(
      rows.map((r) => r.timer_id),
      ids,
      "oldest first",
    );
    const notPaused = await changeOk("ResumeGroup", { groupId: "reports" });
    assert.equal(notPaused.wasPaused, undefined);
  });

  test("RetryTimers refires failed timers exactly once: one timer, a fire_at range, then the rest of a group", async () => {
    const ids = ["f1", "f2", "f3", "f4", "f5"];
    const base = Date.now() + 500;
    const fireAt = new Map(ids.map((id, i) => [id, base + i * 40]));
    for (const id of ids) await createTimer("flaky", id, fireAt.get(id)!);
    await waitFor(
      async () => [...(await states("flaky")).values()].filter((s) => s === 4).length === 5,
      15_000,
      "the flaky timers to fail",
    );

    // ListFailedTimers pages through them (most recent failure first), each once.
    const seen: string[] = [];
    let token = "";
    do {
      const page = await adminOk("ListFailedTimers", { groupId: "flaky", pageSize: 2, pageToken: token });
      assert.ok(page.timers.length <= 2);
      seen.push(...page.timers.map((t: any) => t.timerId));
      assert.ok(page.timers.every((t: any) => t.state === "TIMER_STATE_FAILED" && /400/.test(t.lastError)));
      token = page.nextPageToken ?? "";
    } while (token !== "");
    assert.deepEqual([...seen].sort(), ids);

    const dry = await changeOk("RetryTimers", { groupId: "flaky", timerId: "f1", dryRun: true });
    assert.equal(dry.count, 1);
    assert.equal(dry.dryRun, true);
    assert.equal(dry.sample[0].timerId, "f1");
    assert.equal((await states("flaky")).get("f1"), 4, "a dry run changes nothing");

    const one = await changeOk("RetryTimers", { groupId: "flaky", timerId: "f1" });
    assert.equal(one.count, 1);
    await waitFor(async () => (await states("flaky")).get("f1") === 3, 10_000, "f1 to succeed on retry");

    const range = {
      fireAfter: new Date(fireAt.get("f2")!).toISOString(),
      fireBefore: new Date(fireAt.get("f4")!).toISOString(),
    };
    const byRange = await changeOk("RetryTimers", range);
    assert.equal(byRange.count, 2);
    assert.deepEqual(
      byRange.sample.map((t: any) => t.timerId),
      ["f2", "f3"],
    );
    await waitFor(
      async () => {
        const s = await states("flaky");
        return s.get("f2") === 3 && s.get("f3") === 3;
      },
      10_000,
      "f2 and f3 to succeed",
    );
    assert.equal((await states("flaky")).get("f4"), 4, "f4 is outside the range");

    const preview = await changeOk("RetryTimers", { groupId: "flaky", dryRun: true });
    assert.equal(preview.count, 2);
    assert.equal(preview.matched, "2");
    assert.deepEqual(
      preview.sample.map((t: any) => t.timerId),
      ["f4", "f5"],
    );
    const rest = await changeOk("RetryTimers", { groupId: "flaky" });
    assert.equal(rest.count, 2);
    assert.equal(rest.more, undefined);
    await waitFor(
      async () => [...(await states("flaky")).values()].every((s) => s === 3),
      10_000,
      "every flaky timer to succeed",
    );

    for (const id of ids)
      assert.equal(timesSeen(receiver.received, "flaky", id), 2, `${id}: failed once, refired exactly once`);
    const { rows } = await mesh.db.pool.query(
      "SELECT timer_id, array_agg(outcome ORDER BY id) AS outcomes FROM timer_attempts WHERE group_id = 'flaky' GROUP BY timer_id ORDER BY timer_id",
    );
    assert.deepEqual(
      rows.map((r) => [r.timer_id, r.outcomes]),
      ids.map((id) => [id, ["failed", "succeeded"]]),
    );

    assertCode(
      await change("RetryTimers", { groupId: "flaky", timerId: "f1" }),
      "failed_precondition",
      /flaky\/f1 is SUCCEEDED; only FAILED timers can be retried/,
    );
    assertCode(await change("RetryTimers", { groupId: "flaky", timerId: "nope" }), "not_found");
    assertCode(await change("RetryTimers", {}), "invalid_argument", /select the failed timers/);
  });

  test("ExplainTimer gives the shard and how it is computed, its owner, every attempt, and what happens next", async () => {
    const far = await adminOk("ExplainTimer", { groupId: "billing", timerId: "b-1" });
    const shard = shardOf("billing", "b-1", SHARDS);
    assert.equal(far.placement.shard ?? 0, shard);
    assert.match(far.placement.computation, new RegExp(`mod ${SHARDS} = ${shard}$`));
    const { rows } = await mesh.db.pool.query(
      "SELECT owner, epoch::text FROM shard_leases WHERE shard = $1",
      [shard],
    );
    assert.equal(far.placement.owner, rows[0].owner);
    assert.equal(far.placement.epoch, rows[0].epoch);
    assert.equal(far.placement.leased, true);
    assert.equal(far.placement.ownerLive, true);
    assert.equal(far.timer.state, "TIMER_STATE_SCHEDULED");
    assert.match(
      far.next,
      new RegExp(`^fires at \\S+Z \\(in [\\d.]+ min\\) by dispatcher ${rows[0].owner}$`),
    );

    const retried = await adminOk("ExplainTimer", { groupId: "flaky", timerId: "f1" });
    assert.deepEqual(
      retried.attempts.map((a: any) => [a.attempt, a.outcome]),
      [
        [1, "failed"],
        [1, "succeeded"],
      ],
    );
    assert.match(retried.attempts[0].error, /400/);
    assert.match(retried.attempts[0].dispatcherId, /^d[123]$/);
    assert.match(retried.next, /^finished: SUCCEEDED at \S+ after 1 attempt$/);
    assertCode(
      await bufCurl(admin.grpcPort, `${ADMIN}/ExplainTimer`, { groupId: "billing", timerId: "missing" }, OPS),
      "not_found",
      /billing\/missing not found/,
    );
  });

  test("CancelTimers cancels a group's scheduled timers in a fire_at range, at most limit; a dry run changes nothing", async () => {
    const base = Date.now() + 3_600_000;
    for (let i = 0; i < 10; i++) await createTimer("bulk", `c-${i}`, base + i * 60_000);
    const range = {
      groupId: "bulk",
      fireAfter: new Date(base + 2 * 60_000).toISOString(),
      fireBefore: new Date(base + 8 * 60_000).toISOString(),
    };
    const dry = await changeOk("CancelTimers", { ...range, dryRun: true });
    assert.equal(dry.count, 6);
    assert.equal(dry.matched, "6");
    assert.deepEqual(
      dry.sample.map((t: any) => t.timerId),
      ["c-2", "c-3", "c-4", "c-5", "c-6", "c-7"],
    );
    assert.ok(
      [...(await states("bulk")).values()].every((s) => s === 1),
      "a dry run changes nothing",
    );

    const limited = await changeOk("CancelTimers", { ...range, dryRun: true, limit: 4 });
    assert.equal(limited.count, 4);
    assert.equal(limited.more, true);

    const done = await changeOk("CancelTimers", range);
    assert.equal(done.count, 6);
    const s = await states("bulk");
    assert.deepEqual(
      [...s]
        .filter(([, st]) => st === 5)
        .map(([id]) => id)
        .sort(),
      ["c-2", "c-3", "c-4", "c-5", "c-6", "c-7"],
    );
    assert.deepEqual(
      [...s]
        .filter(([, st]) => st === 1)
        .map(([id]) => id)
        .sort(),
      ["c-0", "c-1", "c-8", "c-9"],
    );
    const { rows } = await mesh.db.pool.query(
      "SELECT count(*)::int AS n FROM timers WHERE group_id = 'bulk' AND state = 5 AND finish_time > now() - interval '1 minute'",
    );
    assert.equal(rows[0].n, 6, "cancelled timers have a finish time");
    assertCode(
      await change("CancelTimers", { fireBefore: range.fireBefore }),
      "invalid_argument",
      /group_id is required/,
    );
  });

  test("PurgeTimers deletes only finished timers older than the retention, with their attempts, in batches", async () => {
    const soon = Date.now() + 300;
    for (let i = 0; i < 6; i++) await createTimer("old", `ok-${i}`, soon);
    await createTimer("doomed", "x-1", soon);
    await createTimer("old", "cancelled-1", Date.now() + 3_600_000);
    await bufCurlOk(
      mesh.timer.grpcPort,
      "timer.v1.TimerService/CancelTimer",
      { groupId: "old", timerId: "cancelled-1" },
      OPS,
    );
    await createTimer("old", "future-1", Date.now() + 3_600_000);
    for (let i = 0; i < 2; i++) await createTimer("recent", `ok-${i}`, soon);
    await waitFor(
      async () => {
        const { rows } = await mesh.db.pool.query(
          "SELECT count(*)::int AS n FROM timers WHERE group_id IN ('old', 'doomed', 'recent') AND state IN (3, 4)",
        );
        return rows[0].n === 9;
      },
      15_000,
      "the purge candidates to finish",
    );
    // Age them: the retention is measured on finish_time.
    await mesh.db.pool.query(
      "UPDATE timers SET finish_time = now() - interval '2 days' WHERE group_id IN ('old', 'doomed') AND finish_time IS NOT NULL",
    );
    const count = async (table: string, groups: string[]) =>
      (await mesh.db.pool.query(`SELECT count(*)::int AS n FROM ${table} WHERE group_id = ANY($1)`, [groups]))
        .rows[0].n as number;
    const attemptsBefore = await count("timer_attempts", ["old", "doomed"]);
    assert.equal(attemptsBefore, 7);

    const dry = await changeOk("PurgeTimers", { retention: "86400s", dryRun: true });
    assert.equal(dry.deletedTimers, "8");
    assert.equal(dry.deletedAttempts, "7");
    assert.equal(dry.dryRun, true);
    assert.ok(Math.abs(Date.parse(dry.cutoffTime) - (Date.now() - 86_400_000)) < 60_000);
    assert.equal(await count("timers", ["old", "doomed"]), 9, "a dry run deletes nothing");

    const done = await changeOk("PurgeTimers", { retention: "86400s", batchSize: 3 });
    assert.equal(done.deletedTimers, "8");
    assert.equal(done.deletedAttempts, "7");
    assert.equal(done.batches, 3);
    const left = await mesh.db.pool.query(
      "SELECT group_id, timer_id, state FROM timers WHERE group_id IN ('old', 'doomed', 'recent') ORDER BY group_id, timer_id",
    );
    assert.deepEqual(
      left.rows.map((r) => `${r.group_id}/${r.timer_id}:${r.state}`),
      ["old/future-1:1", "recent/ok-0:3", "recent/ok-1:3"],
    );
    assert.equal(await count("timer_attempts", ["old", "doomed"]), 0);
    assert.equal(await count("timer_attempts", ["recent"]), 2, "recent attempts are kept");
    assert.ok(
      (await states("flaky")).size === 5 && (await states("billing")).size >= 1,
      "recently finished and scheduled timers elsewhere are kept",
    );
    assertCode(await change("PurgeTimers", {}), "invalid_argument", /retention is required/);
  });

  test("GetStats counts active timers by group, due now, and recent firings", async () => {
    // Nothing fires meanwhile, so the windowed counts can only shrink as time passes: the
    // answer lies between what Postgres says just after and just before.
    const firings = async () =>
      (
        await mesh.db.pool.query(
          `SELECT count(*) FILTER (WHERE attempt = 1 AND finished_at > now() - interval '1 minute')::int AS first_minute,
                count(*) FILTER (WHERE attempt = 1)::int AS first_hour,
                count(*) FILTER (WHERE finished_at > now() - interval '1 minute')::int AS all_minute
           FROM timer_attempts WHERE finished_at > now() - interval '1 hour'`,
        )
      ).rows[0] as { first_minute: number; first_hour: number; all_minute: number };
    const before = await firings();
    const stats = await adminOk("GetStats");
    const after = await firings();
    const within = (value: unknown, key: keyof typeof before) => {
      const n = Number(value ?? 0);
      assert.ok(
        n <= before[key] && n >= after[key],
        `${key}: ${n} not within [${after[key]}, ${before[key]}]`,
      );
    };
    assert.ok(after.first_hour > 0);
    within(stats.firedLastMinute, "first_minute");
    within(stats.firedLastHour, "first_hour");
    within(stats.attemptsLastMinute, "all_minute");
    const { rows } = await mesh.db.pool.query(
      "SELECT group_id, count(*)::int AS n FROM timers WHERE state IN (1, 2) GROUP BY group_id ORDER BY group_id",
    );
    assert.deepEqual(
      stats.activeByGroup.map((g: any) => [g.groupId, Number(g.scheduled ?? 0) + Number(g.firing ?? 0)]),
      rows.map((r) => [r.group_id, r.n]),
    );
    assert.equal(
      Number(stats.activeTimers),
      rows.reduce((n, r) => n + r.n, 0),
    );
    assert.equal(stats.activeByGroup.find((g: any) => g.groupId === "bulk").scheduled, "4");
    assert.equal(stats.dueNow ?? "0", "0");
    assert.equal(stats.liveDispatchers, 3);
  });

  test("DrainDispatcher hands a dispatcher's shards to the others; RebalanceShards lets it take shards again", async () => {
    const drained = await changeOk("DrainDispatcher", { dispatcherId: "d2" });
    assert.equal(drained.dispatcherId, "d2");
    assert.ok(drained.releasedShards > 0);
    await waitFor(
      async () => {
        const c = await ownedCounts();
        return !c.has("d2") && (c.get("d1") ?? 0) + (c.get("d3") ?? 0) === SHARDS;
      },
      15_000,
      "d2 to own nothing and d1 and d3 to own every shard",
    );
    await waitFor(
      async () =>
        (await adminOk("ListDispatchers")).dispatchers.find((d: any) => d.id === "d2")?.draining === true,
      5_000,
      "d2 to be shown draining",
    );
    assertCode(
      await change("DrainDispatcher", { dispatcherId: "d9" }),
      "not_found",
      /dispatcher "d9" is not live .*live: d1, d2, d3/,
    );

    const rebalanced = await changeOk("RebalanceShards", { undrain: ["d2"] });
    assert.deepEqual(
      rebalanced.replies.map((r: any) => [r.dispatcherId, r.draining ?? false]),
      [
        ["d1", false],
        ["d2", false],
        ["d3", false],
      ],
    );
    assert.equal(rebalanced.missing, undefined);
    await waitFor(
      async () => {
        const c = await ownedCounts();
        return (c.get("d2") ?? 0) > 0 && [...c.values()].reduce((a, b) => a + b, 0) === SHARDS;
      },
      15_000,
      "d2 to take shards again",
    );
  });

  test("every change is in the audit log, newest first, with who, what, arguments and outcome; dry runs marked", async () => {
    const events: any[] = [];
    let token = "";
    do {
      const page = await adminOk("ListAuditEvents", { pageSize: 5, pageToken: token });
      events.push(...page.events);
      token = page.nextPageToken ?? "";
    } while (token !== "");
    const ids = events.map((e) => Number(e.id));
    assert.deepEqual(
      ids,
      [...ids].sort((a, b) => b - a),
      "newest first",
    );
    assert.equal(new Set(ids).size, ids.length, "pages do not overlap");

    const oldestFirst = [...events].reverse();
    assert.deepEqual(
      oldestFirst.map((e) => [e.action, e.outcome]),
      changes.map((c) => [`${ADMIN}/${c.method}`, c.outcome]),
      "one event per changing call, in order",
    );
    for (const [i, e] of oldestFirst.entries()) {
      assert.equal(e.actor, "ops");
      assert.equal(e.dryRun ?? false, changes[i]!.body["dryRun"] === true, `event ${e.id} dry-run mark`);
      if (!changes[i]!.body["fireAfter"])
        assert.deepEqual(e.arguments ?? {}, changes[i]!.body, `event ${e.id} arguments`);
    }
    const purge = oldestFirst.find(
      (e) => e.action.endsWith("/PurgeTimers") && !e.dryRun && e.outcome === "OK",
    );
    assert.equal(purge.result.deleted_timers, 8);
    assert.equal(purge.result.batches, 3);
    const drain = oldestFirst.find((e) => e.action.endsWith("/DrainDispatcher") && e.outcome === "OK");
    assert.equal(drain.result.dispatcher_id, "d2");
    assert.ok(drain.result.released_shards > 0);

    const pauses = await adminOk("ListAuditEvents", { action: "PauseGroup" });
    assert.equal(pauses.events.length, 2);
    assert.ok(pauses.events.every((e: any) => e.action === `${ADMIN}/PauseGroup`));
    assert.match(admin.output(), /"msg":"audit: admin\.v1\.AdminService\/PauseGroup by ops"/);
  });
});
