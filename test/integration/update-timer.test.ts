// UpdateTimer against real processes: the timer service, one dispatcher, Postgres and NATS, with
// real HTTP and gRPC receivers. A timer changed in place fires once, at its new time and as it
// now is, never at the time it had; the dispatcher's claim is fenced by the timer's version.
//
// The dispatcher looks 8 s ahead and leaves overdue timers for 10 minutes (OVERDUE_GRACE): a
// timer reaches it in these tests only by an announcement or by the window loader, never by the
// overdue scan, so a missing announcement shows as a timer that does not fire.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, FieldMaskSchema, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import {
  CreateTimerRequestSchema,
  LatenessPolicy,
  TimerState,
  UpdateTimerRequestSchema,
  type Callback,
  type Timer,
  type UpdateTimerRequest,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { hashToken } from "../../services/shared/src/auth.js";
import { claimTimers } from "../../services/dispatcher/src/dispatch-store.js";
import { bufCurl } from "../support/buf-curl.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startGrpcReceiver, startHttpReceiver, type Received } from "../support/receivers.js";
import { waitFor } from "../support/wait.js";

const BILLING = "billing-token";
const PAYROLL = "payroll-token";
const LOOKAHEAD_MS = 8_000;
const POLL_MS = 250;

let mesh: TestMesh;
let http: Awaited<ReturnType<typeof startHttpReceiver>>;
let grpcReceiver: Awaited<ReturnType<typeof startGrpcReceiver>>;

before(async () => {
  http = await startHttpReceiver();
  grpcReceiver = await startGrpcReceiver();
  const tokens = JSON.stringify([
    { name: "ci-billing", sha256: hashToken(BILLING), groups: ["billing"] },
    { name: "ci-payroll", sha256: hashToken(PAYROLL), groups: ["payroll"] },
  ]);
  mesh = await startMesh({
    dispatchers: 1,
    env: { AUTH_TOKENS: tokens },
    dispatcherEnv: { LOOKAHEAD: `${LOOKAHEAD_MS}ms`, POLL_INTERVAL: `${POLL_MS}ms`, OVERDUE_GRACE: "600s" },
  });
});
after(async () => {
  await mesh?.[Symbol.asyncDispose]();
  await grpcReceiver?.[Symbol.asyncDispose]();
  await http?.close();
});

function auth(token = BILLING): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  return md;
}

let seq = 0;
const newId = (prefix: string) => `${prefix}-${process.pid}-${seq++}`;
const bytes = (s: string) => new TextEncoder().encode(s);

function httpTo(url: string): Callback {
  return {
    $typeName: "timer.v1.Callback",
    target: { case: "http", value: { $typeName: "timer.v1.HttpCallback", url, headers: {} } },
  };
}

/** Creates billing/<timerId> firing at `fireAtMs` with an HTTP callback to the receiver. */
async function createAt(timerId: string, fireAtMs: number, payload = "v1"): Promise<Timer> {
  const res = await mesh.client.call(
    "createTimer",
    create(CreateTimerRequestSchema, {
      groupId: "billing",
      timerId,
      schedule: { case: "fireAt", value: timestampFromMs(fireAtMs) },
      callback: httpTo(http.url),
      payload: bytes(payload),
    }),
    auth(),
  );
  assert.equal(res.created, true);
  return res.timer!;
}

function update(
  timerId: string,
  change: Omit<Partial<UpdateTimerRequest>, "$typeName">,
  token = BILLING,
): Promise<Timer> {
  return mesh.client
    .call(
      "updateTimer",
      create(UpdateTimerRequestSchema, { groupId: "billing", timerId, ...change }),
      auth(token),
    )
    .then((r) => r.timer!);
}

function moveTo(timerId: string, fireAtMs: number, payload?: string): Promise<Timer> {
  return update(timerId, {
    schedule: { case: "fireAt", value: timestampFromMs(fireAtMs) },
    ...(payload === undefined ? {} : { payload: bytes(payload) }),
  });
}

function getTimer(timerId: string): Promise<Timer> {
  return mesh.client
    .call("getTimer", { $typeName: "timer.v1.GetTimerRequest", groupId: "billing", timerId }, auth())
    .then((r) => r.timer!);
}

const deliveriesOf = (timerId: string, from: Received[] = http.received) =>
  from.filter((r) => r.timerId === timerId);

/** Waits until the timer has finished (delivered and recorded). */
async function waitSucceeded(timerId: string, timeoutMs: number): Promise<Timer> {
  return waitFor(
    async () => {
      const t = await getTimer(timerId);
      return t.state === TimerState.SUCCEEDED ? t : undefined;
    },
    timeoutMs,
    `timer ${timerId} to succeed`,
  );
}

/** Resolves once the wall clock has passed `atMs` (what "the old fire time has gone by" means). */
async function clockPast(atMs: number): Promise<void> {
  await waitFor(
    () => Date.now() > atMs,
    atMs - Date.now() + 30_000,
    `the clock to pass ${new Date(atMs).toISOString()}`,
  );
}

async function expectCode(
  p: Promise<unknown>,
  code: grpc.status,
  pattern?: RegExp,
): Promise<grpc.ServiceError> {
  let caught: grpc.ServiceError | undefined;
  await assert.rejects(p, (err: grpc.ServiceError) => {
    caught = err;
    assert.equal(
      err.code,
      code,
      `expected ${grpc.status[code]}, got ${grpc.status[err.code]}: ${err.details}`,
    );
    if (pattern) assert.match(err.details, pattern);
    return true;
  });
  return caught!;
}

describe("a held timer changed in place fires at its new time, once", () => {
  test("moved earlier: it fires at the new time, never at the old one", async () => {
    const id = newId("earlier");
    const oldAt = Date.now() + 7_000; // within the lookahead: held by the dispatcher
    await createAt(id, oldAt);
    const newAt = Date.now() + 1_000;
    const t = await moveTo(id, newAt);
    assert.equal(timestampMs(t.fireAt!), newAt);
    assert.equal(t.version, 2n);
    await waitFor(() => deliveriesOf(id).length > 0, 30_000, "the delivery");
    const [d] = deliveriesOf(id);
    assert.ok(d!.receivedAtMs >= newAt, "not before the new time");
    assert.equal(d!.fireAtMs, newAt, "x-timer-fire-at is the new time");
    assert.ok(d!.receivedAtMs < oldAt, "delivered at the new time, not held back to the old one");
    await clockPast(oldAt + 4 * POLL_MS);
    assert.equal(deliveriesOf(id).length, 1, "nothing more at the old time");
  });

  test("moved later, within the lookahead: never before the new time, exactly once", async () => {
    const id = newId("later");
    const oldAt = Date.now() + 2_500;
    await createAt(id, oldAt);
    const newAt = oldAt + 3_000;
    await moveTo(id, newAt);
    await clockPast(oldAt + 4 * POLL_MS);
    assert.equal(deliveriesOf(id).length, 0, "nothing at the old time");
    await waitSucceeded(id, 30_000);
    const got = deliveriesOf(id);
    assert.equal(got.length, 1);
    assert.ok(got[0]!.receivedAtMs >= newAt);
  });

  test("moved out of the lookahead window: the held timer is dropped and fires later, at its new time", async () => {
    const id = newId("out");
    const oldAt = Date.now() + 2_500;
    await createAt(id, oldAt);
    const newAt = Date.now() + LOOKAHEAD_MS + 3_000;
    await moveTo(id, newAt);
    await clockPast(oldAt + 4 * POLL_MS);
    assert.equal(deliveriesOf(id).length, 0, "nothing at the old time");
    await waitSucceeded(id, 60_000);
    const got = deliveriesOf(id);
    assert.equal(got.length, 1);
    assert.ok(got[0]!.receivedAtMs >= newAt);
  });

  test("moved into the lookahead window: announced, it fires on time (the window loader had passed it)", async () => {
    const id = newId("into");
    await createAt(id, Date.now() + 3_600_000);
    const newAt = Date.now() + 1_500;
    await moveTo(id, newAt);
    // The overdue scan waits 10 minutes: only the announcement can bring it in time.
    await waitSucceeded(id, 30_000);
    const got = deliveriesOf(id);
    assert.equal(got.length, 1);
    assert.ok(got[0]!.receivedAtMs >= newAt);
  });
});

test("an update and the claim at the same millisecond: exactly one outcome each time, never the old time after a successful update", async (t) => {
  const ROUNDS = 8;
  const rounds = await Promise.all(
    Array.from({ length: ROUNDS }, async (_, i) => {
      const id = newId("race");
      // Staggered, so the claims are separate statements; each update is sent around its
      // timer's claim (CLAIM_LEAD, 25 ms, before its time, or a little earlier when claims are
      // spaced), from 200 ms before its time to its time, 25 ms apart from round to round.
      const oldAt = Date.now() + 2_000 + i * 400;
      await createAt(id, oldAt, "old");
      const sendAt = oldAt - 200 + i * 25;
      await waitFor(() => Date.now() >= sendAt, 30_000, "the moment to update");
      const newAt = oldAt + 1_000;
      try {
        await moveTo(id, newAt, "new");
        return { id, updated: true, oldAt, newAt };
      } catch (err) {
        const e = err as grpc.ServiceError;
        assert.equal(e.code, grpc.status.FAILED_PRECONDITION, `${e.code}: ${e.details}`);
        assert.match(e.details, /FIRING|SUCCEEDED/);
        return { id, updated: false, oldAt, newAt };
      }
    }),
  );
  const won = rounds.filter((r) => r.updated).length;
  t.diagnostic(`${won} of ${ROUNDS} updates won the race; ${ROUNDS - won} found the timer claimed`);
  for (const r of rounds) {
    const timer = await waitSucceeded(r.id, 30_000);
    const got = deliveriesOf(r.id);
    assert.equal(got.length, 1, `${r.id}: one delivery`);
    const d = got[0]!;
    if (r.updated) {
      assert.equal(d.body.toString(), "new", `${r.id}: the new payload`);
      assert.equal(d.fireAtMs, r.newAt, `${r.id}: the new fire time`);
      assert.ok(d.receivedAtMs >= r.newAt, `${r.id}: never before the new time`);
      assert.equal(timer.version, 2n);
    } else {
      assert.equal(d.body.toString(), "old", `${r.id}: the old version`);
      assert.equal(d.fireAtMs, r.oldAt);
      assert.equal(timer.version, 1n, "a refused update changes nothing");
    }
  }
  // Stay past the latest new time: a refused update must not fire again later either.
  await clockPast(Math.max(...rounds.map((r) => r.newAt)) + 4 * POLL_MS);
  for (const r of rounds) assert.equal(deliveriesOf(r.id).length, 1, `${r.id}: still one delivery`);
});

test("the claim is fenced by version: an entry of the version before an update claims nothing", async () => {
  const id = newId("fence");
  const t = await createAt(id, Date.now() + 3_600_000);
  await update(id, { payload: bytes("v2") });
  const { rows } = await mesh.db.pool.query<{ owner: string; epoch: string }>(
    "SELECT owner, epoch::text AS epoch FROM shard_owners WHERE shard = $1",
    [t.shard],
  );
  const lease = rows[0]!;
  const claim = (version: number) =>
    claimTimers(
      mesh.db.pool,
      lease.owner,
      `${lease.owner}#fence-test`,
      [{ groupId: "billing", timerId: id, shard: t.shard, dueMs: 0, destination: "", version }],
      [BigInt(lease.epoch)],
      7_200_000,
      3_600_000,
    );
  assert.deepEqual(await claim(1), [], "version 1 is not claimed once the update made version 2");
  const claimed = await claim(2);
  assert.equal(claimed.length, 1, "version 2 is");
  assert.equal(claimed[0]!.version, "2");
});

describe("the API", () => {
  test("version: 1 on create, raised by one per update, the same on Get and List", async () => {
    const id = newId("ver");
    const created = await createAt(id, Date.now() + 3_600_000);
    assert.equal(created.version, 1n);
    assert.equal((await update(id, { payload: bytes("a") })).version, 2n);
    assert.equal((await update(id, { payload: bytes("b"), expectedVersion: 2n })).version, 3n);
    assert.equal((await getTimer(id)).version, 3n);
    const list = await mesh.client.call(
      "listTimers",
      {
        $typeName: "timer.v1.ListTimersRequest",
        groupId: "billing",
        pageSize: 1000,
        pageToken: "",
        states: [],
      },
      auth(),
    );
    assert.equal(list.timers.find((x) => x.timerId === id)?.version, 3n);
  });

  test("a replay of the original CreateTimer still answers created=false with the updated timer", async () => {
    const id = newId("replay");
    const fireAt = Date.now() + 3_600_000;
    await createAt(id, fireAt, "original");
    await moveTo(id, fireAt + 60_000, "changed");
    const replay = await mesh.client.call(
      "createTimer",
      create(CreateTimerRequestSchema, {
        groupId: "billing",
        timerId: id,
        schedule: { case: "fireAt", value: timestampFromMs(fireAt) },
        callback: httpTo(http.url),
        payload: bytes("original"),
      }),
      auth(),
    );
    assert.equal(replay.created, false);
    assert.equal(replay.timer!.version, 2n);
  });

  test("a stale expected_version is ABORTED, naming the current and the expected version", async () => {
    const id = newId("stale");
    await createAt(id, Date.now() + 3_600_000);
    await update(id, { payload: bytes("a") });
    await expectCode(
      update(id, { payload: bytes("b"), expectedVersion: 1n }),
      grpc.status.ABORTED,
      /version 2, not the expected 1/,
    );
    assert.equal(new TextDecoder().decode((await getTimer(id)).payload), "a", "unchanged");
  });

  test("a finished timer is FAILED_PRECONDITION naming its state; an unknown one NOT_FOUND", async () => {
    const id = newId("done");
    await createAt(id, Date.now() + 3_600_000);
    await mesh.client.call(
      "cancelTimer",
      { $typeName: "timer.v1.CancelTimerRequest", groupId: "billing", timerId: id },
      auth(),
    );
    await expectCode(update(id, { payload: bytes("x") }), grpc.status.FAILED_PRECONDITION, /CANCELLED/);
    await expectCode(update(newId("nobody"), { payload: bytes("x") }), grpc.status.NOT_FOUND);
  });

  test("bad fields are INVALID_ARGUMENT naming the field", async () => {
    const id = newId("bad");
    await createAt(id, Date.now() + 3_600_000);
    await expectCode(update(id, {}), grpc.status.INVALID_ARGUMENT, /update_mask/);
    await expectCode(
      update(id, { schedule: { case: "delay", value: durationFromMs(-1_000) } }),
      grpc.status.INVALID_ARGUMENT,
      /\bdelay\b/,
    );
    await expectCode(
      update(id, { labels: { "no spaces": "x" } }),
      grpc.status.INVALID_ARGUMENT,
      /\blabels\b/,
    );
    await expectCode(
      update(id, { callback: httpTo("ftp://x") }),
      grpc.status.INVALID_ARGUMENT,
      /callback\.http\.url/,
    );
    await expectCode(
      update(id, { updateMask: create(FieldMaskSchema, { paths: ["state"] }) }),
      grpc.status.INVALID_ARGUMENT,
      /update_mask/,
    );
    await expectCode(
      update(id, { expectedVersion: -1n, payload: bytes("x") }),
      grpc.status.INVALID_ARGUMENT,
      /expected_version/,
    );
    assert.equal((await getTimer(id)).version, 1n, "nothing changed");
  });

  test("another group's token is PERMISSION_DENIED", async () => {
    const id = newId("perm");
    await createAt(id, Date.now() + 3_600_000);
    await expectCode(update(id, { payload: bytes("x") }, PAYROLL), grpc.status.PERMISSION_DENIED);
    assert.equal((await getTimer(id)).version, 1n);
  });

  test("payload, labels, callback, retry policy and lateness changes show in GetTimer and in the delivered request", async () => {
    const id = newId("fields");
    await createAt(id, Date.now() + 3_600_000, "before");
    const grpcCallback: Callback = {
      $typeName: "timer.v1.Callback",
      target: { case: "grpc", value: { $typeName: "timer.v1.GrpcCallback", target: grpcReceiver.target } },
    };
    const changed = await update(id, {
      payload: bytes("after"),
      labels: { tier: "gold" },
      callback: grpcCallback,
      retryPolicy: { $typeName: "timer.v1.RetryPolicy", maxAttempts: 2, multiplier: 3 },
      lateness: {
        $typeName: "timer.v1.LatenessContract",
        maxLateness: durationFromMs(60_000),
        policy: LatenessPolicy.FIRE_MARKED,
      },
    });
    const got = await getTimer(id);
    for (const t of [changed, got]) {
      assert.equal(new TextDecoder().decode(t.payload), "after");
      assert.deepEqual(t.labels, { tier: "gold" });
      assert.equal(t.callback?.target.case, "grpc");
      assert.equal(t.retryPolicy?.maxAttempts, 2);
      assert.equal(t.retryPolicy?.multiplier, 3);
      assert.equal(t.lateness?.policy, LatenessPolicy.FIRE_MARKED);
      assert.equal(Number(t.lateness?.maxLateness?.seconds), 60);
    }
    // update_mask clears labels when named with an empty map, and leaves the rest alone.
    const cleared = await update(id, { updateMask: create(FieldMaskSchema, { paths: ["labels"] }) });
    assert.deepEqual(cleared.labels, {});
    assert.equal(new TextDecoder().decode(cleared.payload), "after");
    await update(id, {
      labels: { tier: "platinum" },
      schedule: { case: "delay", value: durationFromMs(500) },
    });
    await waitSucceeded(id, 30_000);
    const [d] = deliveriesOf(id, grpcReceiver.received);
    assert.ok(d, "delivered to the new callback");
    assert.equal(d.body.toString(), "after");
    assert.deepEqual(d.labels, { tier: "platinum" });
    assert.equal(deliveriesOf(id).length, 0, "nothing to the old callback");
  });

  test("buf curl through reflection, as the README shows: a JSON update_mask", async () => {
    const id = newId("curl");
    await createAt(id, Date.now() + 3_600_000);
    const res = await bufCurl<{
      timer: { version: string; labels: Record<string, string>; payload?: string };
    }>(
      mesh.timer.grpcPort,
      "timer.v1.TimerService/UpdateTimer",
      {
        groupId: "billing",
        timerId: id,
        expectedVersion: "1",
        updateMask: "labels,payload",
        labels: { tier: "gold" },
      },
      BILLING,
    );
    assert.equal(res.exitCode, 0, res.stderr);
    assert.equal(res.json!.timer.version, "2");
    assert.deepEqual(res.json!.timer.labels, { tier: "gold" });
    assert.equal(res.json!.timer.payload, undefined, "payload named with none given: cleared");
  });
});
