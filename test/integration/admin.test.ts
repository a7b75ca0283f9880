// The admin service driven the way an operator drives it: `buf curl` through reflection, JSON
// in and out, with bearer tokens, against a running mesh (timer service, three dispatchers,
// admin; real Postgres and nats-server). Each test asserts the effect on the mesh itself:
// shard_leases, timers, timer_attempts, deliveries at a real HTTP receiver, the audit log.
// Each test makes the timers, groups and changes it looks at (its own group names), so any one
// of them runs alone (--test-name-pattern) or in any order.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  create,
  type DescMessage,
  type DescMethod,
  fromJsonString,
  type JsonObject,
  type MessageShape,
} from "@bufbuild/protobuf";
import { type Timestamp, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { hashToken } from "../../services/shared/src/auth.js";
import { AdminService } from "../../services/shared/src/gen/admin/v1/admin_pb.js";
import {
  Health,
  HealthCheckResponse_ServingStatus,
} from "../../services/shared/src/gen/grpc/health/v1/health_pb.js";
import {
  CreateTimerRequestSchema,
  TimerService,
  TimerState,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { shardOf } from "../../services/shared/src/shard.js";
import { bufCurl, type BufCurlResult } from "../support/buf-curl.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startHangingHttpReceiver, startHttpReceiver, type Received } from "../support/receivers.js";
import { startService, type ServiceProcess } from "../support/service-process.js";
import { waitForShardOwners } from "../support/shard-owners.js";
import { waitFor } from "../support/wait.js";

const SHARDS = 64;
/** The admin's DB_POOL_MAX: not its default (5), so the pool's size shows that it is honoured. */
const ADMIN_DB_POOL_MAX = 7;
const OPS = "ops-7f3c9a2e41b0d6";
const BILLING = "billing-0c8e5d1f92a47b";
/** The admin service's own token for dispatchers (DISPATCHER_TOKEN). */
const ADMIN_SERVICE = "admin-service-5b1e07c3d9";
const TOKENS = JSON.stringify([
  { name: "ops", sha256: hashToken(OPS), admin: true },
  { name: "admin-service", sha256: hashToken(ADMIN_SERVICE), admin: true },
  { name: "ci-billing", sha256: hashToken(BILLING), groups: ["billing", "orders-*"] },
]);
const ADMIN = AdminService.typeName;

type AdminMethods = typeof AdminService.method;
type AdminMethod = keyof AdminMethods;
/** An AdminService response as the message it decodes to. */
type AdminResponse<M extends AdminMethod> = MessageShape<AdminMethods[M]["output"]>;

let mesh: TestMesh;
let admin: ServiceProcess;
let receiver: Awaited<ReturnType<typeof startHttpReceiver>>;

const timesSeen = (received: Received[], group: string, id: string) =>
  received.filter((r) => r.groupId === group && r.timerId === id).length;

/** Rows of a query on the mesh's database, typed by the caller. */
async function rowsOf<Row extends object>(sql: string, params: unknown[] = []): Promise<Row[]> {
  return (await mesh.db.pool.query<Row>(sql, params)).rows;
}

/** The one row a query returns. */
async function rowOf<Row extends object>(sql: string, params: unknown[] = []): Promise<Row> {
  const [row] = await rowsOf<Row>(sql, params);
  assert.ok(row, `no row from ${sql}`);
  return row;
}

before(async () => {
  receiver = await startHttpReceiver((r) => {
    // "flaky*" groups fail a timer's first delivery for good (400), then succeed; "doomed" always fails.
    if (r.groupId.startsWith("flaky") && timesSeen(receiver.received, r.groupId, r.timerId) === 1) return 400;
    if (r.groupId === "doomed") return 400;
    return 200;
  });
  // OVERDUE_GRACE is short so a resumed group's timers are picked up quickly.
  mesh = await startMesh({
    dispatchers: 3,
    env: { SHARD_COUNT: String(SHARDS), AUTH_TOKENS: TOKENS, OVERDUE_GRACE: "500ms" },
  });
  admin = await startService("admin", {
    ...mesh.envFor("admin"),
    DISPATCHER_TOKEN: ADMIN_SERVICE,
    DB_POOL_MAX: String(ADMIN_DB_POOL_MAX),
  });
  await waitForShardOwners(mesh.db.pool, 3, SHARDS);
});
after(async () => {
  await admin?.[Symbol.asyncDispose]();
  await mesh?.[Symbol.asyncDispose]();
  await receiver?.close();
});

/**
 * Calls a method with `buf curl` and decodes its JSON answer as the method's response message;
 * throws unless the call succeeded.
 */
async function callOk<Output extends DescMessage>(
  port: number,
  method: Pick<DescMethod, "parent" | "name"> & { output: Output },
  body: JsonObject,
  token?: string,
): Promise<MessageShape<Output>> {
  const r = await bufCurl(port, `${method.parent.typeName}/${method.name}`, body, token);
  if (r.exitCode !== 0) throw new Error(`${method.name} failed: ${r.code}: ${r.message}`);
  return fromJsonString(method.output, r.stdout.trim() === "" ? "{}" : r.stdout);
}

/** An AdminService call as ops; it must succeed. */
function adminOk<M extends AdminMethod>(method: M, body: JsonObject = {}): Promise<AdminResponse<M>> {
  // Typed per method (not the union of all), so each call's answer has its own response type.
  const methods: {
    [K in AdminMethod]: Pick<DescMethod, "parent" | "name"> & { output: AdminMethods[K]["output"] };
  } = AdminService.method;
  return callOk(admin.grpcPort, methods[method], body, OPS);
}

/** An AdminService call as ops that may fail: look at the result's code. */
function adminCall(method: AdminMethod, body: JsonObject): Promise<BufCurlResult> {
  return bufCurl(admin.grpcPort, `${ADMIN}/${AdminService.method[method].name}`, body, OPS);
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
  const rows = await rowsOf<{ timer_id: string; state: number }>(
    "SELECT timer_id, state FROM timers WHERE group_id = $1",
    [groupId],
  );
  return new Map(rows.map((r) => [r.timer_id, r.state]));
}

/** Waits until a count query (`n`) counts `n`. */
async function waitForCount(sql: string, n: number, what: string): Promise<void> {
  await waitFor(async () => (await rowOf<{ n: number }>(sql)).n === n, 15_000, what);
}

/** Waits until `count` timers of the group are in `state`. */
async function waitForGroupState(groupId: string, state: number, count: number, what: string): Promise<void> {
  await waitFor(
    async () => [...(await states(groupId)).values()].filter((s) => s === state).length === count,
    15_000,
    what,
  );
}

async function ownedCounts(): Promise<Map<string, number>> {
  const rows = await rowsOf<{ owner: string; n: number }>(
    "SELECT owner, count(*)::int AS n FROM shard_owners WHERE owner IS NOT NULL GROUP BY owner",
  );
  return new Map(rows.map((r) => [r.owner, r.n]));
}

/** A timestamp the test expects to be there, in ms. */
function msOf(t: Timestamp | undefined): number {
  assert.ok(t, "a timestamp");
  return timestampMs(t);
}

/** The newest audit event of an AdminService method. */
async function lastAuditEvent(
  method: AdminMethod,
): Promise<AdminResponse<"listAuditEvents">["events"][number]> {
  const [event] = (
    await adminOk("listAuditEvents", { action: AdminService.method[method].name, pageSize: 1 })
  ).events;
  assert.ok(event, `an audit event of ${method}`);
  return event;
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
      const health = await callOk(port, Health.method.check, {});
      assert.equal(health.status, HealthCheckResponse_ServingStatus.SERVING);
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
    const created = await callOk(t, TimerService.method.createTimer, body("billing", "b-1"), BILLING);
    assert.equal(created.created, true);
    await callOk(t, TimerService.method.createTimer, body("orders-eu", "o-1"), BILLING);
    const read = await callOk(
      t,
      TimerService.method.getTimer,
      { groupId: "billing", timerId: "b-1" },
      BILLING,
    );
    assert.equal(read.timer?.timerId, "b-1");

    assertCode(
      await bufCurl(t, "timer.v1.TimerService/CreateTimer", body("payroll", "p-1"), BILLING),
      "permission_denied",
      /^token "ci-billing" may not use group "payroll"$/,
    );
    assert.equal((await states("payroll")).size, 0, "nothing was stored");

    await callOk(t, TimerService.method.createTimer, body("payroll", "p-2"), OPS);
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
    // Except the methods group tokens may call for their own groups (auth.ts's SCOPED_METHODS),
    // whose handlers check the group: tested in forecast.test.ts and the bulk operations' tests;
    // and WhoAmI, which any token may call about itself (auth.test.ts).
    const scoped = new Set([
      "StartBulkOperation",
      "GetOperation",
      "ListOperations",
      "CancelOperation",
      "ForecastLoad",
      "WhoAmI",
    ]);
    for (const method of AdminService.methods.filter((m) => !scoped.has(m.name))) {
      assertCode(
        await bufCurl(admin.grpcPort, `${ADMIN}/${method.name}`, {}, BILLING),
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
    const refused = await rowOf<{ n: number }>(
      "SELECT count(*)::int AS n FROM audit_events WHERE actor = 'ci-billing'",
    );
    assert.equal(refused.n, 0, "refused calls change nothing");
  });
});

describe("the mesh as operators see it", () => {
  test("the admin's Postgres pool is DB_POOL_MAX as configured", async () => {
    const metrics = await (await fetch(`http://127.0.0.1:${admin.httpPort}/metrics`)).text();
    const max = /^database_connections_max(?:\{[^}]*\})? (\d+)$/m.exec(metrics);
    assert.ok(max, "the admin exports database_connections_max");
    assert.equal(Number(max[1]), ADMIN_DB_POOL_MAX);
  });

  test("ListDispatchers and ListShards show the three dispatchers and their shards as shard_leases has them", async () => {
    await waitFor(
      async () => (await adminOk("listDispatchers")).dispatchers.length === 3,
      10_000,
      "the admin to hear three heartbeats",
    );
    const { dispatchers } = await adminOk("listDispatchers");
    const owned = await ownedCounts();
    assert.deepEqual(
      dispatchers.map((d) => d.id),
      ["d1", "d2", "d3"],
    );
    for (const [i, d] of dispatchers.entries()) {
      assert.equal(d.address, `127.0.0.1:${mesh.dispatchers[i]!.grpcPort}`);
      assert.equal(d.live, true);
      assert.match(d.version, /\d/);
      assert.ok(Date.now() - msOf(d.lastHeartbeatTime) < 3_000);
      assert.equal(d.ownedShards, owned.get(d.id));
    }
    assert.equal(
      dispatchers.reduce((n, d) => n + d.ownedShards, 0),
      SHARDS,
    );

    const all = await adminOk("listShards");
    assert.equal(all.shardCount, SHARDS);
    assert.deepEqual(
      all.shards.map((s) => s.shard),
      [...Array(SHARDS).keys()],
    );
    assert.ok(all.shards.every((s) => s.leased && ["d1", "d2", "d3"].includes(s.owner) && s.epoch > 0n));
    const mine = await adminOk("listShards", { owner: "d1" });
    assert.equal(mine.shards.length, owned.get("d1"));
    assert.ok(mine.shards.every((s) => s.owner === "d1"));
  });

  test("ListDispatchers counts each dispatcher's deliveries in flight", async () => {
    const hanging = await startHangingHttpReceiver();
    await mesh.client.call(
      "createTimer",
      create(CreateTimerRequestSchema, {
        groupId: "in-flight",
        timerId: "stuck",
        schedule: { case: "fireAt", value: timestampFromMs(Date.now()) },
        callback: { target: { case: "http", value: { url: hanging.url, headers: {} } } },
        retryPolicy: { maxAttempts: 1 },
      }),
      auth(OPS),
    );
    // The receiver holds the request open: the timer stays FIRING, claimed by one dispatcher.
    await waitFor(() => hanging.open() === 1, 10_000, "the delivery to reach the hanging receiver");
    const claim = await rowOf<{ owner: string }>(
      "SELECT split_part(claim_owner, '#', 1) AS owner FROM timers WHERE group_id = 'in-flight' AND state = 2",
    );
    const { dispatchers } = await adminOk("listDispatchers");
    assert.deepEqual(
      dispatchers.map((d) => [d.id, d.inFlight]),
      dispatchers.map((d) => [d.id, d.id === claim.owner ? 1n : 0n]),
    );
    // The receiver goes away: the one attempt fails, and nothing is left in flight for the tests after.
    await hanging.close();
    await waitForGroupState("in-flight", TimerState.FAILED, 1, "the stuck delivery to fail");
  });

  test("PauseGroup holds a group's timers past their fire time; ResumeGroup fires them once each, oldest first", async () => {
    // Five timers in one shard, so one dispatcher fires them and their order is observable.
    const shard = shardOf("reports", "r-0", SHARDS);
    const ids: string[] = [];
    for (let i = 0; ids.length < 5; i++)
      if (shardOf("reports", `r-${i}`, SHARDS) === shard) ids.push(`r-${i}`);
    const paused = await adminOk("pauseGroup", { groupId: "reports", reason: "incident 7" });
    assert.equal(paused.newlyPaused, true);
    assert.equal(paused.pause?.pausedBy, "ops");
    const again = await adminOk("pauseGroup", { groupId: "reports", reason: "again" });
    assert.equal(again.newlyPaused, false, "pausing a paused group changes nothing");
    assert.equal(again.pause?.reason, "incident 7");

    const base = Date.now() + 1_000;
    const fireAt = new Map(ids.map((id, i) => [id, base + i * 100]));
    for (const id of [...ids].reverse()) await createTimer("reports", id, fireAt.get(id)!);

    const groups = await adminOk("listGroups");
    const reports = groups.groups.find((g) => g.groupId === "reports");
    assert.ok(reports);
    assert.equal(reports.scheduled, 5n);
    assert.equal(reports.pause?.reason, "incident 7");

    // Past OVERDUE_GRACE + POLL_INTERVAL, a dispatcher would long have fired them if not paused.
    await waitForCount(
      "SELECT count(*)::int AS n FROM timers WHERE group_id = 'reports' AND state = 1 AND next_attempt_at < now() - interval '2500 milliseconds'",
      5,
      "every paused timer to be 2.5 s overdue",
    );
    assert.equal(receiver.received.filter((r) => r.groupId === "reports").length, 0, "no paused timer fired");
    // ListGroups counts them as due now: waiting on the pause, not on a dispatcher.
    const waiting = (await adminOk("listGroups")).groups.find((g) => g.groupId === "reports");
    assert.deepEqual(
      [waiting?.due, waiting?.retrying, waiting?.failedLastHour],
      [5n, 0n, 0n],
      "five due, none retrying or failed",
    );
    const explained = await adminOk("explainTimer", { groupId: "reports", timerId: ids[0]! });
    assert.match(
      explained.next,
      /^waiting: group "reports" is paused \(by ops at [^:]+:[^)]*: incident 7\); it is due \(by [\d.]+ s\) and fires once the group is resumed$/,
    );
    // Waiting on purpose is not lag (nor backlog): the shard is not listed as lagging.
    const lagging = await adminOk("listShards", { onlyLagging: true, lagThreshold: "2s" });
    assert.equal(
      lagging.shards.find((s) => s.shard === shard),
      undefined,
      "a paused group's due timers are not shard lag",
    );

    const resumed = await adminOk("resumeGroup", { groupId: "reports" });
    assert.equal(resumed.wasPaused, true);
    assert.equal(resumed.overdueTimers, 5n);
    await waitFor(
      () => ids.every((id) => timesSeen(receiver.received, "reports", id) === 1),
      15_000,
      "the resumed timers to fire",
    );
    await waitForGroupState("reports", TimerState.SUCCEEDED, 5, "the resumed timers to be SUCCEEDED");
    assert.ok(
      ids.every((id) => timesSeen(receiver.received, "reports", id) === 1),
      "each fired once",
    );
    const order = await rowsOf<{ timer_id: string }>(
      "SELECT timer_id FROM timer_attempts WHERE group_id = 'reports' ORDER BY started_at, id",
    );
    assert.deepEqual(
      order.map((r) => r.timer_id),
      ids,
      "oldest first",
    );
    const notPaused = await adminOk("resumeGroup", { groupId: "reports" });
    assert.equal(notPaused.wasPaused, false);
  });

  test("RetryTimers refires failed timers exactly once: one timer, a fire_at range, then the rest of a group", async () => {
    const ids = ["f1", "f2", "f3", "f4", "f5"];
    const base = Date.now() + 500;
    const fireAt = new Map(ids.map((id, i) => [id, base + i * 40]));
    for (const id of ids) await createTimer("flaky", id, fireAt.get(id)!);
    await waitForGroupState("flaky", TimerState.FAILED, 5, "the flaky timers to fail");

    // ListFailedTimers pages through them (most recent failure first), each once.
    const seen: string[] = [];
    let token = "";
    do {
      const page = await adminOk("listFailedTimers", { groupId: "flaky", pageSize: 2, pageToken: token });
      assert.ok(page.timers.length <= 2);
      seen.push(...page.timers.map((t) => t.timerId));
      assert.ok(page.timers.every((t) => t.state === TimerState.FAILED && /400/.test(t.lastError)));
      token = page.nextPageToken;
    } while (token !== "");
    assert.deepEqual([...seen].sort(), ids);

    const dry = await adminOk("retryTimers", { groupId: "flaky", timerId: "f1", dryRun: true });
    assert.equal(dry.count, 1);
    assert.equal(dry.dryRun, true);
    assert.equal(dry.sample[0]?.timerId, "f1");
    assert.equal((await states("flaky")).get("f1"), TimerState.FAILED, "a dry run changes nothing");

    const one = await adminOk("retryTimers", { groupId: "flaky", timerId: "f1" });
    assert.equal(one.count, 1);
    await waitFor(
      async () => (await states("flaky")).get("f1") === TimerState.SUCCEEDED,
      10_000,
      "f1 to succeed on retry",
    );

    const range = {
      fireAfter: new Date(fireAt.get("f2")!).toISOString(),
      fireBefore: new Date(fireAt.get("f4")!).toISOString(),
    };
    const byRange = await adminOk("retryTimers", range);
    assert.equal(byRange.count, 2);
    assert.deepEqual(
      byRange.sample.map((t) => t.timerId),
      ["f2", "f3"],
    );
    await waitFor(
      async () => {
        const s = await states("flaky");
        return s.get("f2") === TimerState.SUCCEEDED && s.get("f3") === TimerState.SUCCEEDED;
      },
      10_000,
      "f2 and f3 to succeed",
    );
    assert.equal((await states("flaky")).get("f4"), TimerState.FAILED, "f4 is outside the range");

    const preview = await adminOk("retryTimers", { groupId: "flaky", dryRun: true });
    assert.equal(preview.count, 2);
    assert.equal(preview.matched, 2n);
    assert.deepEqual(
      preview.sample.map((t) => t.timerId),
      ["f4", "f5"],
    );
    const rest = await adminOk("retryTimers", { groupId: "flaky" });
    assert.equal(rest.count, 2);
    assert.equal(rest.more, false);
    await waitForGroupState("flaky", TimerState.SUCCEEDED, 5, "every flaky timer to succeed");

    for (const id of ids)
      assert.equal(timesSeen(receiver.received, "flaky", id), 2, `${id}: failed once, refired exactly once`);
    const attempts = await rowsOf<{ timer_id: string; outcomes: string[] }>(
      "SELECT timer_id, array_agg(outcome ORDER BY id) AS outcomes FROM timer_attempts WHERE group_id = 'flaky' GROUP BY timer_id ORDER BY timer_id",
    );
    assert.deepEqual(
      attempts.map((r) => [r.timer_id, r.outcomes]),
      ids.map((id) => [id, ["failed", "succeeded"]]),
    );

    assertCode(
      await adminCall("retryTimers", { groupId: "flaky", timerId: "f1" }),
      "failed_precondition",
      /flaky\/f1 is SUCCEEDED; only FAILED timers can be retried/,
    );
    assertCode(await adminCall("retryTimers", { groupId: "flaky", timerId: "nope" }), "not_found");
    assertCode(await adminCall("retryTimers", {}), "invalid_argument", /select the failed timers/);
  });

  test("ExplainTimer gives the shard and how it is computed, its owner, every attempt, and what happens next", async () => {
    await createTimer("explain", "far-1", Date.now() + 3_600_000);
    const far = await adminOk("explainTimer", { groupId: "explain", timerId: "far-1" });
    const shard = shardOf("explain", "far-1", SHARDS);
    assert.ok(far.placement);
    assert.equal(far.placement.shard, shard);
    assert.match(far.placement.computation, new RegExp(`mod ${SHARDS} = ${shard}$`));
    const lease = await rowOf<{ owner: string; epoch: string }>(
      "SELECT owner, epoch::text FROM shard_leases WHERE shard = $1",
      [shard],
    );
    assert.equal(far.placement.owner, lease.owner);
    assert.equal(String(far.placement.epoch), lease.epoch);
    assert.equal(far.placement.leased, true);
    assert.equal(far.placement.ownerLive, true);
    assert.equal(far.timer?.state, TimerState.SCHEDULED);
    assert.match(far.next, new RegExp(`^fires at \\S+Z \\(in [\\d.]+ min\\) by dispatcher ${lease.owner}$`));

    // A timer that failed its first delivery and succeeded when retried.
    await createTimer("flaky-explain", "e1", Date.now() + 300);
    await waitForGroupState("flaky-explain", TimerState.FAILED, 1, "e1 to fail");
    await adminOk("retryTimers", { groupId: "flaky-explain", timerId: "e1" });
    await waitForGroupState("flaky-explain", TimerState.SUCCEEDED, 1, "e1 to succeed on retry");
    const retried = await adminOk("explainTimer", { groupId: "flaky-explain", timerId: "e1" });
    assert.deepEqual(
      retried.attempts.map((a) => [a.attempt, a.outcome]),
      [
        [1, "failed"],
        [1, "succeeded"],
      ],
    );
    assert.match(retried.attempts[0]?.error ?? "", /400/);
    assert.match(retried.attempts[0]?.dispatcherId ?? "", /^d[123]$/);
    assert.match(retried.next, /^finished: SUCCEEDED at \S+ after 1 attempt$/);
    assertCode(
      await adminCall("explainTimer", { groupId: "explain", timerId: "missing" }),
      "not_found",
      /explain\/missing not found/,
    );
  });

  test("ExplainTimer gives each attempt the trace id the receiver got, and the trace id of the CreateTimer call", async () => {
    // The CreateTimer call carries a traceparent of its own: the timer keeps its trace id.
    const createTrace = "4bf92f3577b34da6a3ce929d0e0e4736";
    const md = auth(OPS);
    md.set("traceparent", `00-${createTrace}-00f067aa0ba902b7-01`);
    await mesh.client.call(
      "createTimer",
      create(CreateTimerRequestSchema, {
        groupId: "flaky-trace",
        timerId: "t1",
        schedule: { case: "fireAt", value: timestampFromMs(Date.now() + 300) },
        callback: { target: { case: "http", value: { url: receiver.url, headers: {} } } },
      }),
      md,
    );
    // Two deliveries, two traces: the first is refused (400, FAILED), the retry succeeds.
    await waitForGroupState("flaky-trace", TimerState.FAILED, 1, "t1 to fail");
    // The group is failing now: ListGroups says so (the console sorts such groups first).
    const failing = (await adminOk("listGroups")).groups.find((g) => g.groupId === "flaky-trace");
    assert.deepEqual([failing?.failed, failing?.failedLastHour], [1n, 1n]);
    await adminOk("retryTimers", { groupId: "flaky-trace", timerId: "t1" });
    await waitForGroupState("flaky-trace", TimerState.SUCCEEDED, 1, "t1 to succeed on retry");

    const deliveries = receiver.received.filter((r) => r.groupId === "flaky-trace" && r.timerId === "t1");
    const sentTraces = deliveries.map(
      (r) => /^00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/.exec(r.traceparent)?.[1],
    );
    assert.equal(sentTraces.length, 2);
    assert.ok(
      sentTraces.every((t) => t !== undefined),
      `traceparents: ${deliveries.map((r) => r.traceparent)}`,
    );
    assert.notEqual(sentTraces[0], sentTraces[1], "each attempt is a trace of its own");

    const explained = await adminOk("explainTimer", { groupId: "flaky-trace", timerId: "t1" });
    assert.deepEqual(
      explained.attempts.map((a) => [a.outcome, a.traceId]),
      [
        ["failed", sentTraces[0]],
        ["succeeded", sentTraces[1]],
      ],
    );
    assert.equal(explained.traceId, createTrace);

    // Created without a traceparent (and the timer service does not trace here): no trace to name.
    await createTimer("explain-trace", "untraced", Date.now() + 3_600_000);
    const untraced = await adminOk("explainTimer", { groupId: "explain-trace", timerId: "untraced" });
    assert.equal(untraced.traceId, "");
  });

  test("CancelTimers cancels a group's scheduled timers in a fire_at range, at most limit; a dry run changes nothing", async () => {
    const base = Date.now() + 3_600_000;
    for (let i = 0; i < 10; i++) await createTimer("bulk", `c-${i}`, base + i * 60_000);
    const range = {
      groupId: "bulk",
      fireAfter: new Date(base + 2 * 60_000).toISOString(),
      fireBefore: new Date(base + 8 * 60_000).toISOString(),
    };
    const dry = await adminOk("cancelTimers", { ...range, dryRun: true });
    assert.equal(dry.count, 6);
    assert.equal(dry.matched, 6n);
    assert.deepEqual(
      dry.sample.map((t) => t.timerId),
      ["c-2", "c-3", "c-4", "c-5", "c-6", "c-7"],
    );
    assert.ok(
      [...(await states("bulk")).values()].every((s) => s === TimerState.SCHEDULED),
      "a dry run changes nothing",
    );

    const limited = await adminOk("cancelTimers", { ...range, dryRun: true, limit: 4 });
    assert.equal(limited.count, 4);
    assert.equal(limited.more, true);

    const done = await adminOk("cancelTimers", range);
    assert.equal(done.count, 6);
    const s = [...(await states("bulk"))];
    const inState = (state: TimerState) =>
      s
        .filter(([, st]) => st === state)
        .map(([id]) => id)
        .sort();
    assert.deepEqual(inState(TimerState.CANCELLED), ["c-2", "c-3", "c-4", "c-5", "c-6", "c-7"]);
    assert.deepEqual(inState(TimerState.SCHEDULED), ["c-0", "c-1", "c-8", "c-9"]);
    const finished = await rowOf<{ n: number }>(
      "SELECT count(*)::int AS n FROM timers WHERE group_id = 'bulk' AND state = 5 AND finish_time > now() - interval '1 minute'",
    );
    assert.equal(finished.n, 6, "cancelled timers have a finish time");
    assertCode(
      await adminCall("cancelTimers", { fireBefore: range.fireBefore }),
      "invalid_argument",
      /group_id is required/,
    );
  });

  test("PurgeTimers deletes only finished timers older than the retention, with their attempts, in batches", async () => {
    const soon = Date.now() + 300;
    for (let i = 0; i < 6; i++) await createTimer("old", `ok-${i}`, soon);
    await createTimer("doomed", "x-1", soon);
    await createTimer("old", "cancelled-1", Date.now() + 3_600_000);
    await callOk(
      mesh.timer.grpcPort,
      TimerService.method.cancelTimer,
      { groupId: "old", timerId: "cancelled-1" },
      OPS,
    );
    await createTimer("old", "future-1", Date.now() + 3_600_000);
    for (let i = 0; i < 2; i++) await createTimer("recent", `ok-${i}`, soon);
    await waitForCount(
      "SELECT count(*)::int AS n FROM timers WHERE group_id IN ('old', 'doomed', 'recent') AND state IN (3, 4)",
      9,
      "the purge candidates to finish",
    );
    // Age them: the retention is measured on finish_time.
    await mesh.db.pool.query(
      "UPDATE timers SET finish_time = now() - interval '2 days' WHERE group_id IN ('old', 'doomed') AND finish_time IS NOT NULL",
    );
    const count = async (table: string, groups: string[]) =>
      (
        await rowOf<{ n: number }>(`SELECT count(*)::int AS n FROM ${table} WHERE group_id = ANY($1)`, [
          groups,
        ])
      ).n;
    const elsewhere = async () =>
      (
        await rowOf<{ n: number }>(
          "SELECT count(*)::int AS n FROM timers WHERE group_id NOT IN ('old', 'doomed', 'recent')",
        )
      ).n;
    const attemptsBefore = await count("timer_attempts", ["old", "doomed"]);
    assert.equal(attemptsBefore, 7);
    const elsewhereBefore = await elsewhere();

    const dry = await adminOk("purgeTimers", { retention: "86400s", dryRun: true });
    assert.equal(dry.deletedTimers, 8n);
    assert.equal(dry.deletedAttempts, 7n);
    assert.equal(dry.dryRun, true);
    assert.ok(Math.abs(msOf(dry.cutoffTime) - (Date.now() - 86_400_000)) < 60_000);
    assert.equal(await count("timers", ["old", "doomed"]), 9, "a dry run deletes nothing");

    const done = await adminOk("purgeTimers", { retention: "86400s", batchSize: 3 });
    assert.equal(done.deletedTimers, 8n);
    assert.equal(done.deletedAttempts, 7n);
    assert.equal(done.batches, 3);
    const left = await rowsOf<{ group_id: string; timer_id: string; state: number }>(
      "SELECT group_id, timer_id, state FROM timers WHERE group_id IN ('old', 'doomed', 'recent') ORDER BY group_id, timer_id",
    );
    assert.deepEqual(
      left.map((r) => `${r.group_id}/${r.timer_id}:${r.state}`),
      ["old/future-1:1", "recent/ok-0:3", "recent/ok-1:3"],
    );
    assert.equal(await count("timer_attempts", ["old", "doomed"]), 0);
    assert.equal(await count("timer_attempts", ["recent"]), 2, "recent attempts are kept");
    assert.equal(await elsewhere(), elsewhereBefore, "timers of other groups are kept");

    // The purge's one audit event counts what every batch deleted.
    const event = await lastAuditEvent("purgeTimers");
    assert.equal(event.outcome, "OK");
    assert.equal(event.dryRun, false);
    assert.equal(event.result?.deleted_timers, 8);
    assert.equal(event.result?.batches, 3);
    assertCode(await adminCall("purgeTimers", {}), "invalid_argument", /retention is required/);
  });

  test("GetStats counts active timers by group, due now, and recent firings", async () => {
    for (let i = 0; i < 4; i++) await createTimer("stats", `later-${i}`, Date.now() + 3_600_000);
    await createTimer("stats-fired", "now-1", Date.now() + 300);
    await waitForGroupState("stats-fired", TimerState.SUCCEEDED, 1, "a timer to have fired");
    // Nothing fires meanwhile, so the windowed counts can only shrink as time passes: the
    // answer lies between what Postgres says just after and just before.
    const firings = () =>
      rowOf<{ first_minute: number; first_hour: number; all_minute: number }>(
        `SELECT count(*) FILTER (WHERE attempt = 1 AND finished_at > now() - interval '1 minute')::int AS first_minute,
                count(*) FILTER (WHERE attempt = 1)::int AS first_hour,
                count(*) FILTER (WHERE finished_at > now() - interval '1 minute')::int AS all_minute
           FROM timer_attempts WHERE finished_at > now() - interval '1 hour'`,
      );
    const before = await firings();
    const stats = await adminOk("getStats");
    const after = await firings();
    const within = (value: bigint, key: keyof typeof before) => {
      const n = Number(value);
      assert.ok(
        n <= before[key] && n >= after[key],
        `${key}: ${n} not within [${after[key]}, ${before[key]}]`,
      );
    };
    assert.ok(after.first_hour > 0);
    within(stats.firedLastMinute, "first_minute");
    within(stats.firedLastHour, "first_hour");
    within(stats.attemptsLastMinute, "all_minute");
    const active = await rowsOf<{ group_id: string; n: number }>(
      "SELECT group_id, count(*)::int AS n FROM timers WHERE state IN (1, 2) GROUP BY group_id ORDER BY group_id",
    );
    assert.deepEqual(
      stats.activeByGroup.map((g) => [g.groupId, Number(g.scheduled + g.firing)]),
      active.map((r) => [r.group_id, r.n]),
    );
    assert.equal(
      Number(stats.activeTimers),
      active.reduce((n, r) => n + r.n, 0),
    );
    assert.equal(stats.activeByGroup.find((g) => g.groupId === "stats")?.scheduled, 4n);
    assert.equal(stats.dueNow, 0n);
    assert.equal(stats.liveDispatchers, 3);
  });

  test("DrainDispatcher hands a dispatcher's shards to the others; RebalanceShards lets it take shards again", async () => {
    const drained = await adminOk("drainDispatcher", { dispatcherId: "d2" });
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
        (await adminOk("listDispatchers")).dispatchers.find((d) => d.id === "d2")?.draining === true,
      5_000,
      "d2 to be shown draining",
    );
    // A drain changes nothing in Postgres itself: its audit event is written after the fact.
    const event = await lastAuditEvent("drainDispatcher");
    assert.equal(event.outcome, "OK");
    assert.equal(event.result?.dispatcher_id, "d2");
    assert.equal(event.result?.released_shards, drained.releasedShards);
    assertCode(
      await adminCall("drainDispatcher", { dispatcherId: "d9" }),
      "not_found",
      /dispatcher "d9" is not live .*live: d1, d2, d3/,
    );

    const rebalanced = await adminOk("rebalanceShards", { undrain: ["d2"] });
    assert.deepEqual(
      rebalanced.replies.map((r) => [r.dispatcherId, r.draining]),
      [
        ["d1", false],
        ["d2", false],
        ["d3", false],
      ],
    );
    assert.deepEqual(rebalanced.missing, []);
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
    // Events up to here are other tests'; this test's own changes come after.
    const since = (await adminOk("listAuditEvents", { pageSize: 1 })).events[0]?.id ?? 0n;
    const changes: { method: AdminMethod; body: JsonObject; outcome: string }[] = [];
    const change = async (method: AdminMethod, body: JsonObject) => {
      const r = await adminCall(method, body);
      changes.push({ method, body, outcome: r.exitCode === 0 ? "OK" : String(r.code).toUpperCase() });
    };
    await change("pauseGroup", { groupId: "audited", reason: "audit test" });
    await change("pauseGroup", { groupId: "audited", reason: "again" });
    await change("cancelTimers", { groupId: "audited", dryRun: true });
    await change("retryTimers", {});
    await change("setGroupQuota", { groupId: "audited", maxActiveTimers: "10" });
    await change("purgeTimers", { retention: "315360000s", dryRun: true });
    await change("resumeGroup", { groupId: "audited" });

    const events: AdminResponse<"listAuditEvents">["events"] = [];
    let token = "";
    do {
      const page = await adminOk("listAuditEvents", { pageSize: 5, pageToken: token });
      events.push(...page.events);
      token = page.events.some((e) => e.id <= since) ? "" : page.nextPageToken;
    } while (token !== "");
    const ids = events.map((e) => e.id);
    assert.deepEqual(
      ids,
      [...ids].sort((a, b) => (a > b ? -1 : a < b ? 1 : 0)),
      "newest first",
    );
    assert.equal(new Set(ids).size, ids.length, "pages do not overlap");

    const oldestFirst = events.filter((e) => e.id > since).reverse();
    assert.deepEqual(
      oldestFirst.map((e) => [e.action, e.outcome]),
      changes.map((c) => [`${ADMIN}/${AdminService.method[c.method].name}`, c.outcome]),
      "one event per changing call, in order",
    );
    for (const [i, e] of oldestFirst.entries()) {
      const made = changes[i];
      assert.ok(made);
      assert.equal(e.actor, "ops");
      assert.equal(e.dryRun, made.body.dryRun === true, `event ${e.id} dry-run mark`);
      assert.deepEqual(e.arguments ?? {}, made.body, `event ${e.id} arguments`);
    }
    const quota = oldestFirst.find((e) => e.action.endsWith("/SetGroupQuota"));
    assert.equal(quota?.result?.max_active_timers, "10");

    const pauses = await adminOk("listAuditEvents", { action: "PauseGroup" });
    const ours = pauses.events.filter((e) => e.id > since);
    assert.equal(ours.length, 2);
    assert.ok(ours.every((e) => e.action === `${ADMIN}/PauseGroup`));
    assert.match(admin.output(), /"msg":"audit: admin\.v1\.AdminService\/PauseGroup by ops"/);
  });
});
