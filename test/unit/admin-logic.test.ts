// The admin service's pure logic: request checks and selections, page tokens, and
// ExplainTimer's sentences (the live dispatcher view: heartbeat-listener.test.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  CancelTimersRequestSchema,
  PurgeTimersRequestSchema,
  RetryTimersRequestSchema,
} from "../../services/shared/src/gen/admin/v1/admin_pb.js";
import {
  RequestError,
  cancelSelection,
  decodeAuditCursor,
  decodeFailedCursor,
  encodeFailedCursor,
  pageSize,
  purgeSettings,
  retrySelection,
} from "../../services/admin/src/admin-requests.js";
import {
  roughDuration,
  shardComputation,
  whatHappensNext,
  type TimerFacts,
} from "../../services/admin/src/explain.js";
import { ADMIN_DEFAULT_DB_POOL_MAX, loadAdminConfig } from "../../services/admin/src/config.js";
import { shardOf } from "../../services/shared/src/shard.js";
import { State } from "../../services/shared/src/timer-model.js";

const T0 = Date.parse("2030-01-01T00:00:00Z");

test("retry selections: one timer, a group, or a fire_at range; bounded", () => {
  const one = retrySelection(create(RetryTimersRequestSchema, { groupId: "billing", timerId: "t1" }));
  assert.deepEqual(one, {
    groupId: "billing",
    timerId: "t1",
    fireAfter: null,
    fireBefore: null,
    limit: 1000,
    single: true,
  });
  const group = retrySelection(create(RetryTimersRequestSchema, { groupId: "billing", limit: 50 }));
  assert.equal(group.single, false);
  assert.equal(group.limit, 50);
  const r = retrySelection(
    create(RetryTimersRequestSchema, {
      fireAfter: timestampFromMs(T0),
      fireBefore: timestampFromMs(T0 + 1000),
    }),
  );
  assert.equal(r.groupId, null);
  assert.equal(r.fireAfter!.getTime(), T0);
  assert.equal(r.fireBefore!.getTime(), T0 + 1000);

  const refused: [object, RegExp][] = [
    [{}, /select the failed timers/],
    [{ timerId: "t1" }, /timer_id needs group_id/],
    [{ groupId: "g", limit: 10_001 }, /limit must be between 1 and 10000/],
    [{ groupId: "g", limit: -1 }, /limit/],
    [
      { fireAfter: timestampFromMs(T0), fireBefore: timestampFromMs(T0) },
      /fire_after must be earlier than fire_before/,
    ],
  ];
  for (const [init, message] of refused) {
    assert.throws(
      () => retrySelection(create(RetryTimersRequestSchema, init)),
      (e: Error) => e instanceof RequestError && message.test(e.message),
    );
  }
});

test("cancel selections need a group; purge needs a positive retention", () => {
  assert.throws(() => cancelSelection(create(CancelTimersRequestSchema, {})), /group_id is required/);
  const c = cancelSelection(
    create(CancelTimersRequestSchema, { groupId: "g", fireBefore: timestampFromMs(T0) }),
  );
  assert.deepEqual(c, {
    groupId: "g",
    timerId: null,
    fireAfter: null,
    fireBefore: new Date(T0),
    limit: 1000,
  });
  assert.throws(() => purgeSettings(create(PurgeTimersRequestSchema, {})), /retention is required/);
  assert.throws(
    () => purgeSettings(create(PurgeTimersRequestSchema, { retention: durationFromMs(0) })),
    /retention must be positive/,
  );
  assert.deepEqual(
    purgeSettings(create(PurgeTimersRequestSchema, { retention: durationFromMs(86_400_000) })),
    { retentionMs: 86_400_000, batchSize: 1000 },
  );
  assert.equal(
    purgeSettings(create(PurgeTimersRequestSchema, { retention: durationFromMs(1000), batchSize: 7 }))
      .batchSize,
    7,
  );
  assert.throws(
    () =>
      purgeSettings(create(PurgeTimersRequestSchema, { retention: durationFromMs(1000), batchSize: 20_000 })),
    /batch_size/,
  );
});

test("page sizes and page tokens", () => {
  assert.equal(pageSize(0), 100);
  assert.equal(pageSize(1000), 1000);
  assert.throws(() => pageSize(1001), /page_size/);
  const cursor = { finish: "2030-01-01 00:00:00.123456+00", groupId: "g", timerId: "t" };
  assert.deepEqual(decodeFailedCursor(encodeFailedCursor(cursor, "g"), "g"), cursor);
  assert.throws(() => decodeFailedCursor(encodeFailedCursor(cursor, "g"), "other"), /different query/);
  assert.throws(() => decodeFailedCursor("garbage!", ""), /malformed/);
  assert.equal(decodeAuditCursor("42"), "42");
  assert.throws(() => decodeAuditCursor("0"), /malformed/);
  assert.throws(() => decodeAuditCursor("1; DROP TABLE"), /malformed/);
});

test("the shard computation shows the hash and the modulo that give the timer's shard", () => {
  const text = shardComputation("billing", "invoice-42", 1024);
  assert.match(
    text,
    /^fnv1a32\(utf8\("billing"\) \|\| 0x00 \|\| utf8\("invoice-42"\)\) = 0x[0-9a-f]{8} = \d+; \d+ mod 1024 = \d+$/,
  );
  assert.ok(text.endsWith(`= ${shardOf("billing", "invoice-42", 1024)}`));
});

function facts(over: Partial<TimerFacts>): TimerFacts {
  return {
    groupId: "billing",
    state: State.Scheduled,
    nextAttemptAtMs: T0 + 60_000,
    finishTimeMs: null,
    attempt: 0,
    maxAttempts: 5,
    lastError: null,
    claimOwner: null,
    claimExpiresAtMs: null,
    pause: null,
    shard: 17,
    leaseOwner: "d2",
    leaseExpiresAtMs: T0 + 3_000,
    ownerLive: true,
    nowMs: T0,
    ...over,
  };
}

test("what happens next, in words", () => {
  assert.equal(whatHappensNext(facts({})), "fires at 2030-01-01T00:01:00.000Z (in 60.0 s) by dispatcher d2");
  assert.equal(
    whatHappensNext(facts({ attempt: 2, nextAttemptAtMs: T0 + 4_000 })),
    "retry 3 of 5 at 2030-01-01T00:00:04.000Z (in 4.0 s) by dispatcher d2",
  );
  assert.match(
    whatHappensNext(facts({ nextAttemptAtMs: T0 - 5_000 })),
    /^overdue by 5\.0 s: fires as soon as dispatcher d2 picks it up/,
  );
  assert.equal(
    whatHappensNext(facts({ pause: { by: "ops", atMs: T0 - 1_000, reason: "incident 12" } })),
    'waiting: group "billing" is paused (by ops at 2029-12-31T23:59:59.000Z: incident 12); due at 2030-01-01T00:01:00.000Z, it fires once the group is resumed',
  );
  assert.match(
    whatHappensNext(
      facts({ pause: { by: "ops", atMs: T0 - 1_000, reason: "" }, nextAttemptAtMs: T0 - 2_000 }),
    ),
    /^waiting: group "billing" is paused \(by ops at [^)]*\); it is due \(by 2\.0 s\) and fires once the group is resumed$/,
  );
  assert.match(whatHappensNext(facts({ leaseOwner: null })), /^waiting: shard 17 has no owner/);
  assert.match(
    whatHappensNext(facts({ ownerLive: false })),
    /by dispatcher d2 \(not heard on NATS: if it is gone, its lease expires at 2030-01-01T00:00:03\.000Z/,
  );
  assert.equal(
    whatHappensNext(facts({ state: State.Succeeded, attempt: 1, finishTimeMs: T0 })),
    "finished: SUCCEEDED at 2030-01-01T00:00:00.000Z after 1 attempt",
  );
  assert.equal(
    whatHappensNext(facts({ state: State.Cancelled, finishTimeMs: T0 })),
    "finished: CANCELLED at 2030-01-01T00:00:00.000Z",
  );
  assert.match(
    whatHappensNext(facts({ state: State.Failed, attempt: 5, finishTimeMs: T0, lastError: "HTTP 500" })),
    /^finished: FAILED at 2030-01-01T00:00:00\.000Z after 5 attempts \(last error: HTTP 500\); AdminService\/RetryTimers fires it again$/,
  );
  assert.match(
    whatHappensNext(
      facts({ state: State.Firing, attempt: 2, claimOwner: "d2#ab12", claimExpiresAtMs: T0 + 10_000 }),
    ),
    /^delivering now: attempt 2 of 5 by d2#ab12/,
  );
  assert.equal(roughDuration(90 * 60_000), "90 min");
  assert.equal(roughDuration(3 * 86_400_000), "3.0 d");
});

test("admin settings: member TTL, rebalance wait, dispatcher TLS", () => {
  const noAuth = { AUTH_DISABLED: "true" }; // services refuse to start without token configuration
  const c = loadAdminConfig(noAuth);
  assert.equal(c.grpcPort, 50053);
  assert.equal(c.memberTtlMs, 3000);
  assert.equal(c.rebalanceWaitMs, 1000);
  assert.equal(c.dispatcherTlsCaFile, undefined);
  assert.equal(
    loadAdminConfig({ ...noAuth, REBALANCE_WAIT: "250ms", DISPATCHER_TLS_CA_FILE: "/ca.pem" })
      .rebalanceWaitMs,
    250,
  );
  assert.throws(() => loadAdminConfig({ ...noAuth, MEMBER_TTL: "soon" }), /MEMBER_TTL/);
});

test("admin settings: DB_POOL_MAX is honoured as set, and is ADMIN_DEFAULT_DB_POOL_MAX when unset", () => {
  const noAuth = { AUTH_DISABLED: "true" };
  assert.equal(loadAdminConfig(noAuth).dbPoolMax, ADMIN_DEFAULT_DB_POOL_MAX);
  assert.equal(loadAdminConfig({ ...noAuth, DB_POOL_MAX: "" }).dbPoolMax, ADMIN_DEFAULT_DB_POOL_MAX);
  assert.equal(loadAdminConfig({ ...noAuth, DB_POOL_MAX: "12" }).dbPoolMax, 12);
  assert.equal(loadAdminConfig({ ...noAuth, DB_POOL_MAX: "2" }).dbPoolMax, 2);
  assert.throws(
    () => loadAdminConfig({ ...noAuth, DB_POOL_MAX: "0" }),
    /DB_POOL_MAX must be between 1 and 1000/,
  );
});
