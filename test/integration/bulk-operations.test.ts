// Bulk operations by selector (AdminService StartBulkOperation, GetOperation, ListOperations,
// CancelOperation) and ListTimers with a selector, against a running mesh: timer service, two
// dispatchers, admin processes, real Postgres and nats-server, an HTTP receiver. Each test
// makes its own groups, so any one runs alone.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { hashToken } from "../../services/shared/src/auth.js";
import {
  AdminService,
  type Operation,
  OperationState,
  StartBulkOperationRequestSchema,
} from "../../services/shared/src/gen/admin/v1/admin_pb.js";
import {
  CreateTimerRequestSchema,
  CreateTimersRequestSchema,
  TimerService,
  TimerState,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { shardOf } from "../../services/shared/src/shard.js";
import { bufCurl } from "../support/buf-curl.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startHttpReceiver, type Received } from "../support/receivers.js";
import { startService, type ServiceProcess } from "../support/service-process.js";
import { waitForShardOwners } from "../support/shard-owners.js";
import { waitFor } from "../support/wait.js";

const SHARDS = 16;
const OPS = "ops-3c1f9a7e52d84b";
const BILLING = "billing-8d2e4f6a1c3b5e";
const TOKENS = JSON.stringify([
  { name: "ops", sha256: hashToken(OPS), admin: true },
  { name: "ci-billing", sha256: hashToken(BILLING), groups: ["billing", "orders-*"] },
]);
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
/** Admin processes of the mesh poll rarely: each works on the operations it starts itself. */
const QUIET_ADMIN = { BULK_OPERATION_POLL: "10m", BULK_OPERATION_LEASE: "2s" };

let mesh: TestMesh;
let admin: ServiceProcess;
let receiver: Awaited<ReturnType<typeof startHttpReceiver>>;
let adminClient: Client<typeof AdminService>;
let timerClient: Client<typeof TimerService>;

const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });
const seen = (group: string, id: string) =>
  receiver.received.filter((r: Received) => r.groupId === group && r.timerId === id);

before(async () => {
  receiver = await startHttpReceiver((r) => {
    // "flaky*" groups fail a timer's first delivery for good (400), then succeed.
    if (r.groupId.startsWith("flaky") && seen(r.groupId, r.timerId).length === 1) return 400;
    return 200;
  });
  mesh = await startMesh({
    dispatchers: 2,
    env: { SHARD_COUNT: String(SHARDS), AUTH_TOKENS: TOKENS, OVERDUE_GRACE: "500ms" },
  });
  admin = await startService("admin", { ...mesh.envFor("admin"), ...QUIET_ADMIN });
  adminClient = clientOn(AdminService, admin.grpcPort);
  timerClient = clientOn(TimerService, mesh.timer.grpcPort);
  await waitForShardOwners(mesh.db.pool, 2, SHARDS);
});
after(async () => {
  await admin?.[Symbol.asyncDispose]();
  await mesh?.[Symbol.asyncDispose]();
  await receiver?.close();
});

function clientOn<S extends typeof AdminService | typeof TimerService>(service: S, port: number): Client<S> {
  return createClient(service, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
}

interface Spec {
  id: string;
  fireAtMs: number;
  labels?: Record<string, string>;
}

/** Creates the timers (HTTP callbacks to the receiver) in one CreateTimers call, as ops. */
async function createTimers(groupId: string, specs: Spec[]): Promise<void> {
  for (let i = 0; i < specs.length; i += 500) {
    const res = await timerClient.createTimers(
      create(CreateTimersRequestSchema, {
        requests: specs.slice(i, i + 500).map((s) =>
          create(CreateTimerRequestSchema, {
            groupId,
            timerId: s.id,
            schedule: { case: "fireAt", value: timestampFromMs(s.fireAtMs) },
            callback: { target: { case: "http", value: { url: receiver.url, headers: {} } } },
            labels: s.labels ?? {},
          }),
        ),
      }),
      as(OPS),
    );
    for (const r of res.results) assert.equal(r.created, true, `${r.timerId} created: ${r.error?.message}`);
  }
}

interface Row {
  timer_id: string;
  state: number;
  fire_at: Date;
  next_attempt_at: Date;
  version: string;
}

async function timersOf(groupId: string): Promise<Map<string, Row>> {
  const { rows } = await mesh.db.pool.query<Row>(
    "SELECT timer_id, state, fire_at, next_attempt_at, version::text FROM timers WHERE group_id = $1",
    [groupId],
  );
  return new Map(rows.map((r) => [r.timer_id, r]));
}

type StartInit = MessageInitShape<typeof StartBulkOperationRequestSchema>;

function start(init: StartInit, token = OPS) {
  return adminClient.startBulkOperation(create(StartBulkOperationRequestSchema, init), as(token));
}

/** Waits until the operation is no longer RUNNING; returns it. */
async function finished(id: string, client = adminClient, timeoutMs = 20_000): Promise<Operation> {
  return waitFor(
    async () => {
      const { operation } = await client.getOperation({ id }, as(OPS));
      return operation && operation.state !== OperationState.RUNNING ? operation : undefined;
    },
    timeoutMs,
    `operation ${id} to finish`,
  );
}

/** Starts an operation and waits for it to succeed. */
async function run(init: StartInit): Promise<Operation> {
  const { operation } = await start(init);
  assert.ok(operation);
  const done = await finished(operation.id);
  assert.equal(done.state, OperationState.SUCCEEDED, `operation ${done.id}: ${done.error}`);
  return done;
}

async function refusedWith(p: Promise<unknown>, code: Code, message?: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof ConnectError, String(err));
    assert.equal(err.code, code, err.message);
    if (message) assert.match(err.rawMessage, message);
    return true;
  });
}

/** Audit events of StartBulkOperation about one operation (or a dry run's, by group), oldest first. */
async function auditOf(where: string, param: string) {
  const { rows } = await mesh.db.pool.query<{
    actor: string;
    outcome: string;
    arguments: { selector?: object };
    result: Record<string, unknown>;
  }>(
    `SELECT actor, outcome, arguments, result FROM audit_events
      WHERE action = 'admin.v1.AdminService/StartBulkOperation' AND ${where} ORDER BY id`,
    [param],
  );
  return rows;
}

/** Midnight UTC of tomorrow. */
function tomorrow(): number {
  const d = new Date();
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1);
}

test("ListTimers with a selector: labels, id prefix, fire range, paging bound to the selector", async () => {
  const g = "list-sel";
  const t0 = Date.now() + HOUR;
  await createTimers(g, [
    { id: "a1", fireAtMs: t0, labels: { customer: "acme", tier: "gold" } },
    { id: "inv-1", fireAtMs: t0 + HOUR / 2, labels: { customer: "acme" } },
    { id: "a2", fireAtMs: t0 + HOUR, labels: { customer: "acme" } },
    { id: "b1", fireAtMs: t0 + 10_000, labels: { customer: "beta" } },
    { id: "c1", fireAtMs: t0 + 2 * HOUR },
  ]);
  const list = async (selector: object, groupId = g) =>
    (await timerClient.listTimers({ groupId, selector }, as(OPS))).timers.map((t) => t.timerId);

  assert.deepEqual(await list({ labelSelector: "customer=acme" }), ["a1", "inv-1", "a2"]);
  assert.deepEqual(await list({ labelSelector: "customer in (acme, beta),!tier" }), ["b1", "inv-1", "a2"]);
  assert.deepEqual(await list({ labelSelector: "customer!=acme" }), ["b1", "c1"]);
  assert.deepEqual(await list({ timerIdPrefix: "inv" }), ["inv-1"]);
  assert.deepEqual(
    await list({ fireAfter: timestampFromMs(t0 + HOUR / 4), fireBefore: timestampFromMs(t0 + 2 * HOUR) }),
    ["inv-1", "a2"],
  );
  // The selector's group stands in for the request's.
  assert.deepEqual(await list({ groupId: g, labelSelector: "tier" }, ""), ["a1"]);

  // Paging walks the selection; a token is refused for another selector.
  const ids: string[] = [];
  let token = "";
  let second = "";
  do {
    const page = await timerClient.listTimers(
      { groupId: g, pageSize: 1, pageToken: token, selector: { labelSelector: "customer=acme" } },
      as(OPS),
    );
    ids.push(...page.timers.map((t) => t.timerId));
    token = page.nextPageToken;
    if (ids.length === 1) second = token;
  } while (token !== "");
  assert.deepEqual(ids, ["a1", "inv-1", "a2"]);
  await refusedWith(
    timerClient.listTimers(
      { groupId: g, pageToken: second, selector: { labelSelector: "customer=beta" } },
      as(OPS),
    ),
    Code.InvalidArgument,
    /page_token/,
  );

  await refusedWith(
    timerClient.listTimers({ groupId: g, selector: { labelSelector: "customer=acme," } }, as(OPS)),
    Code.InvalidArgument,
    /^selector\.label_selector at character 15/,
  );
  await refusedWith(
    timerClient.listTimers({ groupId: g, selector: { groupPattern: "*" } }, as(OPS)),
    Code.InvalidArgument,
    /^selector\.group_pattern/,
  );
  await refusedWith(
    timerClient.listTimers({ groupId: "", selector: { groupId: g } }, as(BILLING)),
    Code.PermissionDenied,
  );
});

test("shift by 2h of 'group X, customer=acme, due tomorrow': a dry run first, then exactly those move", async () => {
  const day = tomorrow();
  await createTimers("shift-x", [
    { id: "acme-1", fireAtMs: day + 9 * HOUR, labels: { customer: "acme" } },
    { id: "acme-2", fireAtMs: day + 15 * HOUR, labels: { customer: "acme" } },
    { id: "acme-3", fireAtMs: day + 23 * HOUR, labels: { customer: "acme" } },
    { id: "acme-later", fireAtMs: day + DAY + 10 * HOUR, labels: { customer: "acme" } },
    { id: "beta-1", fireAtMs: day + 10 * HOUR, labels: { customer: "beta" } },
  ]);
  await createTimers("shift-y", [{ id: "acme-1", fireAtMs: day + 9 * HOUR, labels: { customer: "acme" } }]);
  const before = new Map(
    [...(await timersOf("shift-x"))].concat([...(await timersOf("shift-y"))].map(([k, v]) => [`y/${k}`, v])),
  );
  const selector = {
    groupId: "shift-x",
    labelSelector: "customer=acme",
    fireAfter: timestampFromMs(day),
    fireBefore: timestampFromMs(day + DAY),
  };
  const shift = {
    case: "shift" as const,
    value: { shift: { case: "by" as const, value: durationFromMs(2 * HOUR) } },
  };

  const dry = await start({ selector, dryRun: true, action: shift, reason: "acme asked" });
  assert.equal(dry.dryRun, true);
  assert.equal(dry.operation, undefined);
  assert.equal(dry.matched, 3n);
  assert.deepEqual(
    dry.sample.map((s) => [s.timerId, timestampMs(s.fireAt!)]),
    [
      ["acme-1", day + 9 * HOUR],
      ["acme-2", day + 15 * HOUR],
      ["acme-3", day + 23 * HOUR],
    ],
  );
  for (const [id, row] of await timersOf("shift-x"))
    assert.equal(row.version, "1", `${id} unchanged by the dry run`);
  const [dryEvent] = await auditOf(
    "result ->> 'dry_run' = 'true' AND arguments -> 'selector' ->> 'groupId' = $1",
    "shift-x",
  );
  assert.ok(dryEvent, "the dry run is audited");
  assert.equal(dryEvent.result.matched, 3);

  const op = await run({ selector, action: shift, batchSize: 2, reason: "acme asked" });
  assert.equal(op.matchedAtStart, 3n);
  assert.equal(op.changed, 3n);
  assert.equal(op.examined, 3n);
  assert.equal(op.createdBy, "ops");
  assert.ok(op.finishTime);
  assert.equal(op.request?.action.case, "shift");
  assert.deepEqual(op.sample.map((s) => s.timerId).sort(), ["acme-1", "acme-2", "acme-3"]);

  const after = await timersOf("shift-x");
  for (const id of ["acme-1", "acme-2", "acme-3"]) {
    const b = before.get(id)!;
    const a = after.get(id)!;
    assert.equal(a.fire_at.getTime(), b.fire_at.getTime() + 2 * HOUR, `${id} moved by 2h`);
    assert.equal(a.next_attempt_at.getTime(), b.next_attempt_at.getTime() + 2 * HOUR);
    assert.equal(a.version, "2", `${id} changed once`);
    assert.equal(a.state, TimerState.SCHEDULED);
  }
  for (const id of ["acme-later", "beta-1"]) {
    assert.equal(after.get(id)!.fire_at.getTime(), before.get(id)!.fire_at.getTime(), `${id} untouched`);
    assert.equal(after.get(id)!.version, "1");
  }
  const y = (await timersOf("shift-y")).get("acme-1")!;
  assert.equal(y.fire_at.getTime(), before.get("y/acme-1")!.fire_at.getTime(), "another group untouched");

  // Audited at the start with the selector, and at the end with the counts.
  const events = await auditOf("result ->> 'operation_id' = $1", op.id);
  assert.deepEqual(
    events.map((e) => e.result.phase),
    ["started", "finished"],
  );
  assert.deepEqual(events[0]!.result.selector, {
    groupId: "shift-x",
    labelSelector: "customer=acme",
    fireAfter: new Date(day).toISOString().replace(".000", ""),
    fireBefore: new Date(day + DAY).toISOString().replace(".000", ""),
  });
  assert.equal(events[0]!.result.matched_at_start, 3);
  assert.equal(events[1]!.result.state, "SUCCEEDED");
  assert.equal(events[1]!.result.changed, 3);
  assert.equal(events[1]!.actor, "ops");

  const listed = await adminClient.listOperations({ groupId: "shift-x" }, as(OPS));
  assert.deepEqual(
    listed.operations.map((o) => o.id),
    [op.id],
  );
});

test("shifted timers fire at their new time, once", async () => {
  const g = "shift-fire";
  const due = Date.now() + 8_000;
  await createTimers(g, [
    { id: "w1", fireAtMs: due, labels: { wave: "1" } },
    { id: "w2", fireAtMs: due, labels: { wave: "1" } },
    { id: "control", fireAtMs: due },
  ]);
  await run({
    selector: { groupId: g, labelSelector: "wave=1" },
    action: { case: "shift", value: { shift: { case: "by", value: durationFromMs(4_000) } } },
  });
  await waitFor(
    () => seen(g, "w1").length > 0 && seen(g, "w2").length > 0,
    30_000,
    "the shifted timers to fire",
  );
  assert.equal(seen(g, "control").length, 1);
  for (const id of ["w1", "w2"]) {
    const [r, ...more] = seen(g, id);
    assert.equal(more.length, 0, `${id} delivered once`);
    assert.equal(r!.fireAtMs, due + 4_000, `${id} carries its new fire time`);
    assert.ok(r!.receivedAtMs >= due + 4_000, `${id} not delivered before its new time`);
  }
});

test("pause holds timers (they do not fire, count as active); resume fires them", async () => {
  const g = "pause-p";
  const due = Date.now() + 6_000;
  await createTimers(g, [
    { id: "p1", fireAtMs: due, labels: { hold: "yes" } },
    { id: "p2", fireAtMs: due, labels: { hold: "yes" } },
    // Due later than the paused ones: once it is delivered, they would have been too.
    { id: "control", fireAtMs: due + 3_000 },
  ]);
  const paused = await run({
    selector: { groupId: g, labelSelector: "hold=yes" },
    action: { case: "pause", value: {} },
  });
  assert.equal(paused.changed, 2n);
  for (const id of ["p1", "p2"]) {
    const r = (await timersOf(g)).get(id)!;
    assert.equal(r.state, TimerState.PAUSED);
    assert.equal(r.version, "2");
  }
  const group = (await adminClient.listGroups({}, as(OPS))).groups.find((x) => x.groupId === g);
  assert.equal(group?.pausedTimers, 2n);
  assert.equal(group?.scheduled, 1n);
  // Paused timers count against the group's quota: at least the two of them are active.
  await adminClient.setGroupQuota({ groupId: g, maxActiveTimers: 100n }, as(OPS));
  const [quota] = (await adminClient.listGroupQuotas({ groupId: g }, as(OPS))).quotas;
  assert.ok((quota?.activeTimers ?? 0n) >= 2n, `active timers: ${quota?.activeTimers}`);
  const explained = await adminClient.explainTimer({ groupId: g, timerId: "p1" }, as(OPS));
  assert.match(explained.next, /paused by a bulk operation/);

  await waitFor(() => seen(g, "control").length > 0, 30_000, "the control timer to fire");
  assert.equal(seen(g, "p1").length + seen(g, "p2").length, 0, "paused timers did not fire");
  assert.equal((await timersOf(g)).get("p1")!.state, TimerState.PAUSED);

  const resumed = await run({ selector: { groupId: g }, action: { case: "resume", value: {} } });
  assert.equal(resumed.changed, 2n);
  await waitFor(() => seen(g, "p1").length > 0 && seen(g, "p2").length > 0, 30_000, "resumed timers to fire");
  assert.equal((await timersOf(g)).get("p1")!.version, "3");
});

test("cancel takes SCHEDULED and PAUSED timers; retry brings FAILED ones back and they fire", async () => {
  const g = "flaky-c";
  await createTimers(g, [
    { id: "f1", fireAtMs: Date.now() },
    { id: "s1", fireAtMs: Date.now() + HOUR },
    { id: "s2", fireAtMs: Date.now() + HOUR, labels: { hold: "yes" } },
    { id: "s3", fireAtMs: Date.now() + HOUR, labels: { hold: "yes" } },
  ]);
  await waitFor(async () => (await timersOf(g)).get("f1")!.state === TimerState.FAILED, 20_000, "f1 to fail");
  await run({ selector: { groupId: g, labelSelector: "hold" }, action: { case: "pause", value: {} } });
  // CancelTimer takes a paused timer too.
  const one = await timerClient.cancelTimer({ groupId: g, timerId: "s3" }, as(OPS));
  assert.equal(one.timer?.state, TimerState.CANCELLED);

  const cancelled = await run({ selector: { groupId: g }, action: { case: "cancel", value: {} } });
  assert.equal(cancelled.changed, 2n);
  let rows = await timersOf(g);
  assert.equal(rows.get("s1")!.state, TimerState.CANCELLED);
  assert.equal(rows.get("s2")!.state, TimerState.CANCELLED);
  assert.equal(rows.get("f1")!.state, TimerState.FAILED, "a failed timer is not cancelled");

  const dry = await start({ selector: { groupId: g }, dryRun: true, action: { case: "retry", value: {} } });
  assert.equal(dry.matched, 1n);
  const retried = await run({ selector: { groupId: g }, action: { case: "retry", value: {} } });
  assert.equal(retried.changed, 1n);
  await waitFor(
    async () => (await timersOf(g)).get("f1")!.state === TimerState.SUCCEEDED,
    20_000,
    "f1 to succeed",
  );
  assert.equal(seen(g, "f1").length, 2);
  rows = await timersOf(g);
  assert.equal(rows.get("s1")!.state, TimerState.CANCELLED, "a cancelled timer is not retried");
});

/** The timers' ids in the order an operation walks them (shard, then timer id). */
function walkOrder(groupId: string, ids: string[]): string[] {
  return [...ids].sort(
    (a, b) => shardOf(groupId, a, SHARDS) - shardOf(groupId, b, SHARDS) || (a < b ? -1 : 1),
  );
}

/** Holds a row lock on one timer (as a dispatcher's claim would) until released. */
async function lockTimer(groupId: string, timerId: string): Promise<() => Promise<void>> {
  const client = await mesh.db.pool.connect();
  await client.query("BEGIN");
  await client.query("SELECT 1 FROM timers WHERE group_id = $1 AND timer_id = $2 FOR UPDATE", [
    groupId,
    timerId,
  ]);
  return async () => {
    await client.query("COMMIT");
    client.release();
  };
}

test("progress is visible while an operation runs; CancelOperation stops it after the batch in flight", async () => {
  const g = "slow-op";
  const ids = Array.from({ length: 30 }, (_, i) => `t${String(i).padStart(2, "0")}`);
  await createTimers(
    g,
    ids.map((id) => ({ id, fireAtMs: Date.now() + HOUR })),
  );
  // The walk stops at the 11th timer while it is locked: ten batches of one are done by then.
  const release = await lockTimer(g, walkOrder(g, ids)[10]!);
  let op: Operation | undefined;
  try {
    op = (await start({ selector: { groupId: g }, action: { case: "pause", value: {} }, batchSize: 1 }))
      .operation!;
    const id = op.id;
    const running = await waitFor(
      async () => {
        const { operation } = await adminClient.getOperation({ id }, as(OPS));
        return operation?.changed === 10n ? operation : undefined;
      },
      20_000,
      "ten batches",
    );
    assert.equal(running.state, OperationState.RUNNING);
    assert.equal(running.matchedAtStart, 30n);
    assert.equal(running.examined, 10n);
    assert.equal(running.batches, 10);
    assert.equal(running.sample.length, 10);
    const listed = await adminClient.listOperations({ states: [OperationState.RUNNING] }, as(OPS));
    assert.ok(listed.operations.some((o) => o.id === id && o.changed === 10n));

    const cancel = await adminClient.cancelOperation({ id }, as(OPS));
    assert.equal(cancel.operation?.state, OperationState.RUNNING, "it stops after its batch in flight");
  } finally {
    await release();
  }
  const done = await finished(op.id);
  assert.equal(done.state, OperationState.CANCELLED);
  assert.equal(done.changed, 11n, "the batch in flight committed; nothing after it");
  const states = [...(await timersOf(g)).values()].map((r) => r.state);
  assert.equal(states.filter((s) => s === TimerState.PAUSED).length, 11);
  assert.equal(states.filter((s) => s === TimerState.SCHEDULED).length, 19);
  const events = await auditOf("result ->> 'operation_id' = $1", op.id);
  assert.equal(events.at(-1)?.result.state, "CANCELLED");
  assert.equal(events.at(-1)?.result.changed, 11);
});

test("an operation resumes after its admin process is killed: every timer shifted exactly once", async () => {
  const g = "resume-k";
  const ids = Array.from({ length: 400 }, (_, i) => `k${String(i).padStart(3, "0")}`);
  const fireAtMs = Date.now() + 2 * HOUR;
  await createTimers(
    g,
    ids.map((id) => ({ id, fireAtMs })),
  );
  const doomed = await startService("admin", { ...mesh.envFor("admin"), ...QUIET_ADMIN });
  const doomedClient = clientOn(AdminService, doomed.grpcPort);
  let successor: ServiceProcess | undefined;
  // The walk stops at the 206th timer, inside the 21st batch of ten, while the test locks it.
  const release = await lockTimer(g, walkOrder(g, ids)[205]!);
  try {
    const { operation } = await doomedClient.startBulkOperation(
      {
        selector: { groupId: g },
        action: { case: "shift", value: { shift: { case: "by", value: durationFromMs(HOUR) } } },
        batchSize: 10,
      },
      as(OPS),
    );
    const id = operation!.id;
    await waitFor(
      async () => (await adminClient.getOperation({ id }, as(OPS))).operation?.changed === 200n,
      20_000,
      "twenty batches",
    );
    await doomed.stop("SIGKILL");
    successor = await startService("admin", {
      ...mesh.envFor("admin"),
      BULK_OPERATION_POLL: "100ms",
      BULK_OPERATION_LEASE: "2s",
    });
    await release();
    const done = await finished(id, adminClient, 30_000);
    assert.equal(done.state, OperationState.SUCCEEDED, done.error);
    assert.equal(done.changed, 400n);
    assert.equal(done.examined, 400n);
    const rows = await timersOf(g);
    for (const k of ids) {
      const r = rows.get(k)!;
      assert.equal(r.version, "2", `${k} changed exactly once`);
      assert.equal(r.fire_at.getTime(), fireAtMs + HOUR, `${k} moved by one hour`);
    }
    assert.match(
      successor.output(),
      new RegExp(`${id}.*working on bulk operation|working on bulk operation.*${id}`),
    );
  } finally {
    await release().catch(() => undefined);
    await doomed[Symbol.asyncDispose]();
    await successor?.[Symbol.asyncDispose]();
  }
});

test("group tokens act only inside their groups and see only their groups' operations", async () => {
  await createTimers("orders-eu", [{ id: "o1", fireAtMs: Date.now() + HOUR }]);
  await createTimers("shipping-t", [{ id: "s1", fireAtMs: Date.now() + HOUR }]);
  const pause = { case: "pause" as const, value: {} };

  await refusedWith(
    start({ selector: { groupId: "shipping-t" }, action: pause }, BILLING),
    Code.PermissionDenied,
  );
  await refusedWith(
    start({ selector: { groupPattern: "orders-*" }, action: pause, dryRun: true }, BILLING),
    Code.PermissionDenied,
    /group_pattern/,
  );
  const own = (await start({ selector: { groupId: "orders-eu" }, action: pause }, BILLING)).operation!;
  assert.equal(own.createdBy, "ci-billing");
  assert.equal((await finished(own.id)).state, OperationState.SUCCEEDED);
  assert.equal((await adminClient.getOperation({ id: own.id }, as(BILLING))).operation?.id, own.id);

  const other = (await start({ selector: { groupId: "shipping-t" }, action: pause })).operation!;
  const everyGroup = (await start({ selector: { groupPattern: "nothing-here-*" }, action: pause }))
    .operation!;
  await finished(other.id);
  await finished(everyGroup.id);
  await refusedWith(adminClient.getOperation({ id: other.id }, as(BILLING)), Code.PermissionDenied);
  await refusedWith(adminClient.getOperation({ id: everyGroup.id }, as(BILLING)), Code.PermissionDenied);
  await refusedWith(adminClient.cancelOperation({ id: other.id }, as(BILLING)), Code.PermissionDenied);
  await refusedWith(
    adminClient.listOperations({ groupId: "shipping-t" }, as(BILLING)),
    Code.PermissionDenied,
  );
  const mine = (await adminClient.listOperations({}, as(BILLING))).operations;
  assert.ok(mine.some((o) => o.id === own.id));
  for (const o of mine) assert.match(o.request?.selector?.groupId ?? "", /^(billing|orders-)/);
  const all = (await adminClient.listOperations({}, as(OPS))).operations.map((o) => o.id);
  assert.ok(all.includes(other.id) && all.includes(everyGroup.id));
  await refusedWith(
    adminClient.getOperation({ id: "op-00000000-0000-0000-0000-000000000000" }, as(OPS)),
    Code.NotFound,
  );
});

test("buf curl: a dry run then the operation then GetOperation, as the README shows", async () => {
  await createTimers("curl-g", [{ id: "c1", fireAtMs: Date.now() + HOUR, labels: { customer: "acme" } }]);
  const method = (name: string) => `admin.v1.AdminService/${name}`;
  const body = {
    selector: { groupId: "curl-g", labelSelector: "customer=acme" },
    shift: { by: "7200s" },
    reason: "customer asked",
  };
  const dry = await bufCurl<{ dryRun: boolean; matched: string }>(
    admin.grpcPort,
    method("StartBulkOperation"),
    { ...body, dryRun: true },
    OPS,
  );
  assert.equal(dry.exitCode, 0, dry.stderr);
  assert.deepEqual([dry.json?.dryRun, dry.json?.matched], [true, "1"]);
  const started = await bufCurl<{ operation: { id: string } }>(
    admin.grpcPort,
    method("StartBulkOperation"),
    body,
    OPS,
  );
  assert.equal(started.exitCode, 0, started.stderr);
  const id = started.json!.operation.id;
  await finished(id);
  const got = await bufCurl<{ operation: { state: string; changed: string } }>(
    admin.grpcPort,
    method("GetOperation"),
    { id },
    OPS,
  );
  assert.deepEqual(
    [got.json?.operation.state, got.json?.operation.changed],
    ["OPERATION_STATE_SUCCEEDED", "1"],
  );
});
