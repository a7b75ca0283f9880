// The lateness contract: the verdict on one attempt (lateness-contract.ts), the words of an
// EXPIRED timer's last_error, the firing loop applying the verdict (driven over the in-memory
// fakes of test/support/firing-fakes.ts), and the late mark in what every transport sends.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  LATE_MS_HEADER,
  onTimerFiredRequest,
  standardHeaders,
  type Delivery,
} from "../../services/dispatcher/src/delivery.js";
import {
  expiredError,
  judgeLateness,
  type JudgedTimer,
  type LatenessAction,
} from "../../services/dispatcher/src/lateness-contract.js";
import { Scheduler, type SchedulerOptions } from "../../services/dispatcher/src/scheduler.js";
import { type TimerFacts, whatHappensNext } from "../../services/admin/src/explain.js";
import { compactDuration, latenessPolicyName } from "../../services/shared/src/lateness.js";
import { Lateness, State } from "../../services/shared/src/timer-model.js";
import { FakeClock, FakeOwnership, MemoryStore, recordingLogger } from "../support/firing-fakes.js";

const FIRE_AT = 1_700_000_000_000;

/** A first attempt of a timer due at FIRE_AT, claimed at its due time, with the given contract. */
function claimed(maxLatenessMs: number | null, policy: number, over: Partial<JudgedTimer> = {}): JudgedTimer {
  return {
    attempt: 1,
    fire_at: new Date(FIRE_AT),
    next_attempt_at: new Date(FIRE_AT),
    fired_time: new Date(FIRE_AT),
    max_lateness_ms: maxLatenessMs === null ? null : String(maxLatenessMs),
    lateness_policy: policy,
    ...over,
  };
}

test("without a contract, or within it, an attempt is delivered as usual", () => {
  assert.deepEqual(judgeLateness(claimed(null, Lateness.Fire), FIRE_AT + 3_600_000), { action: "deliver" });
  assert.deepEqual(judgeLateness(claimed(null, Lateness.Skip), FIRE_AT + 3_600_000), { action: "deliver" });
  assert.deepEqual(judgeLateness(claimed(5_000, Lateness.Skip), FIRE_AT), { action: "deliver" });
  // max_lateness is the lateness beyond which the policy applies: exactly at it is still in time.
  assert.deepEqual(judgeLateness(claimed(5_000, Lateness.Skip), FIRE_AT + 5_000), { action: "deliver" });
});

test("beyond max_lateness the policy decides: FIRE fires, FIRE_MARKED marks, SKIP expires", () => {
  const at = FIRE_AT + 5_000.4; // Postgres's clock has sub-millisecond readings
  assert.deepEqual(judgeLateness(claimed(5_000, Lateness.Fire), at), {
    action: "fired",
    lateMs: 5_000,
    maxLatenessMs: 5_000,
    policy: Lateness.Fire,
  });
  assert.deepEqual(judgeLateness(claimed(5_000, Lateness.FireMarked), FIRE_AT + 2_412_345.9), {
    action: "fired_marked",
    lateMs: 2_412_345,
    maxLatenessMs: 5_000,
    policy: Lateness.FireMarked,
  });
  assert.deepEqual(judgeLateness(claimed(300_000, Lateness.Skip), FIRE_AT + 2_412_000), {
    action: "expired",
    lateMs: 2_412_000,
    maxLatenessMs: 300_000,
    policy: Lateness.Skip,
  });
});

test("only a timer's first start is judged: not its retries, nor an operator's retry of it", () => {
  const late = FIRE_AT + 3_600_000;
  assert.deepEqual(judgeLateness(claimed(5_000, Lateness.Skip, { attempt: 2 }), late), { action: "deliver" });
  // RetryTimers / a bulk retry: attempts start over at 1 and it is due now; the claim keeps the
  // first fired_time, from before that.
  const retried = claimed(5_000, Lateness.Skip, {
    next_attempt_at: new Date(late - 10),
    fired_time: new Date(FIRE_AT + 20),
  });
  assert.deepEqual(judgeLateness(retried, late), { action: "deliver" });
  // A first start claimed late: fired_time is the claim's now(), after the due time.
  const first = claimed(5_000, Lateness.Skip, { fired_time: new Date(late - 10) });
  assert.equal(judgeLateness(first, late).action, "expired");
});

test("an EXPIRED timer's last_error says how late, the limit and the policy", () => {
  assert.equal(
    expiredError({ lateMs: 2_412_345, maxLatenessMs: 300_000, policy: Lateness.Skip }),
    "expired: started 40m12s after fire_at, beyond max_lateness 5m (lateness policy SKIP)",
  );
  assert.equal(
    expiredError({ lateMs: 5_400, maxLatenessMs: 5_000, policy: Lateness.Skip }),
    "expired: started 5.4s after fire_at, beyond max_lateness 5s (lateness policy SKIP)",
  );
});

test("durations read compactly, and policies by their proto names", () => {
  const cases: [number, string][] = [
    [0, "0ms"],
    [250, "250ms"],
    [1_000, "1s"],
    [4_250, "4.25s"],
    [60_000, "1m"],
    [2_412_999, "40m12s"],
    [3_605_000, "1h5s"],
    [86_400_000 + 3 * 3_600_000, "1d3h"],
    [-1_500, "-1.5s"],
  ];
  for (const [ms, text] of cases) assert.equal(compactDuration(ms), text, `${ms} ms`);
  assert.deepEqual([Lateness.Fire, Lateness.Skip, Lateness.FireMarked].map(latenessPolicyName), [
    "FIRE",
    "SKIP",
    "FIRE_MARKED",
  ]);
});

const delivery: Delivery = {
  groupId: "g",
  timerId: "t",
  fireAtMs: FIRE_AT,
  attempt: 1,
  payload: new Uint8Array([1]),
  labels: {},
  callback: { $typeName: "timer.v1.Callback", target: { case: undefined } },
  idempotencyKey: "g/t",
  traceparent: "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01",
};

test("a marked delivery carries x-timer-late-ms on every transport and late_ms in OnTimerFired", () => {
  const headersOf = (d: Delivery) => {
    const h = new Map<string, string>();
    standardHeaders(d, (k, v) => h.set(k, v));
    return h;
  };
  assert.equal(LATE_MS_HEADER, "x-timer-late-ms");
  assert.equal(headersOf({ ...delivery, lateMs: 7_250 }).get("x-timer-late-ms"), "7250");
  assert.equal(headersOf(delivery).has("x-timer-late-ms"), false, "unmarked: no header");
  assert.equal(onTimerFiredRequest({ ...delivery, lateMs: 7_250 }).lateMs, 7_250n);
  assert.equal(onTimerFiredRequest(delivery).lateMs, 0n);
});

// The firing loop over fakes: the scheduler starts at T0 with timers already overdue.
const T0 = FIRE_AT + 60_000;
const OPTIONS: SchedulerOptions = {
  announcementsFlowing: () => true,
  lookaheadMs: 30_000,
  pollIntervalMs: 1_000,
  overdueGraceMs: 2_000,
  claimLeadMs: 25,
  claimBatch: 100,
  maxInFlight: 16,
  maxHeld: 1_000,
  claimTtlMs: 60_000,
  catchUpShare: 1,
  groupShare: 1,
  destinationShare: 1,
};

function firing() {
  const clock = new FakeClock(T0);
  const store = new MemoryStore(clock);
  const ownership = new FakeOwnership();
  ownership.epochs.set(0, 1n);
  store.leaseEpochs.set(0, 1n);
  const { log, lines } = recordingLogger();
  const deliveries: Delivery[] = [];
  const exceeded: LatenessAction[] = [];
  const fired: number[] = [];
  let failFirst = false;
  const scheduler = new Scheduler(
    {
      store,
      clock,
      ownership,
      log,
      deliver: async (d) => {
        deliveries.push(d);
        if (failFirst && d.attempt === 1) return { ok: false, retryable: true, error: "HTTP 503" };
        return { ok: true };
      },
      events: { latenessExceeded: (a) => exceeded.push(a), fired: (ms) => fired.push(ms) },
    },
    OPTIONS,
  );
  const failFirstAttempts = () => {
    failFirst = true;
  };
  return { clock, store, lines, deliveries, exceeded, fired, scheduler, failFirstAttempts };
}

test("the firing loop: SKIP beyond the limit is not delivered and ends expired; FIRE_MARKED is marked; FIRE and no contract are not", async () => {
  const f = firing();
  const overdue = FIRE_AT; // 60 s late at T0
  f.store.add({
    groupId: "g",
    timerId: "skip",
    shard: 0,
    dueMs: overdue,
    maxLatenessMs: 5_000,
    latenessPolicy: Lateness.Skip,
  });
  f.store.add({
    groupId: "g",
    timerId: "marked",
    shard: 0,
    dueMs: overdue,
    maxLatenessMs: 5_000,
    latenessPolicy: Lateness.FireMarked,
  });
  f.store.add({
    groupId: "g",
    timerId: "fire",
    shard: 0,
    dueMs: overdue,
    maxLatenessMs: 5_000,
    latenessPolicy: Lateness.Fire,
  });
  f.store.add({ groupId: "g", timerId: "none", shard: 0, dueMs: overdue });
  f.store.add({
    groupId: "g",
    timerId: "in-time",
    shard: 0,
    dueMs: T0 + 1_000,
    maxLatenessMs: 5_000,
    latenessPolicy: Lateness.Skip,
  });
  f.scheduler.start();
  await f.clock.advance(5_000);

  const sent = new Map(f.deliveries.map((d) => [d.timerId, d]));
  assert.deepEqual([...sent.keys()].sort(), ["fire", "in-time", "marked", "none"], "SKIP is never delivered");
  assert.equal(sent.get("marked")?.lateMs, 60_000);
  for (const id of ["fire", "none", "in-time"])
    assert.equal(sent.get(id)?.lateMs, undefined, `${id} unmarked`);

  const skipped = f.store.get("g", "skip");
  assert.equal(skipped.state, "expired");
  assert.equal(
    skipped.lastError,
    "expired: started 1m after fire_at, beyond max_lateness 5s (lateness policy SKIP)",
  );
  const c = f.store.completed.find((x) => x.timerId === "skip");
  assert.equal(c?.outcome, "expired");
  assert.equal(c?.attempt, 1);
  assert.equal(c?.startedAt.getTime(), T0, "judged when its first attempt started");
  assert.equal(c?.finishedAt.getTime(), T0);
  assert.equal(c?.nextAttemptAt, null);
  assert.equal(c?.traceId, null, "nothing was sent: no trace id");
  assert.deepEqual(f.exceeded.sort(), ["expired", "fired", "fired_marked"]);
  assert.equal(f.fired.length, 4, "the lateness histogram counts deliveries only");
  assert.ok(f.lines.some((l) => l.msg === "timer expired: not delivered, beyond its lateness contract"));
  await f.scheduler.stop(1_000);
});

test("a retry of a timer started in time is never judged, however late it comes", async () => {
  const f = firing();
  f.failFirstAttempts();
  // Due in 100 ms (in time), 1 ms of max_lateness: its retry comes a second later.
  f.store.add({
    groupId: "g",
    timerId: "t",
    shard: 0,
    dueMs: T0 + 100,
    maxLatenessMs: 1,
    latenessPolicy: Lateness.Skip,
  });
  f.scheduler.start();
  await f.clock.advance(10_000);
  assert.deepEqual(
    f.deliveries.map((d) => [d.attempt, d.lateMs]),
    [
      [1, undefined],
      [2, undefined],
    ],
  );
  assert.equal(f.store.get("g", "t").state, "succeeded");
  assert.deepEqual(f.exceeded, []);
  await f.scheduler.stop(1_000);
});

/** ExplainTimer's facts of a scheduled timer due at FIRE_AT, with a 5-minute contract. */
function explained(over: Partial<TimerFacts>, policy: number = Lateness.Skip): TimerFacts {
  return {
    groupId: "billing",
    state: State.Scheduled,
    nextAttemptAtMs: FIRE_AT,
    finishTimeMs: null,
    attempt: 0,
    maxAttempts: 5,
    lastError: null,
    claimOwner: null,
    claimExpiresAtMs: null,
    pause: null,
    shard: 17,
    leaseOwner: "d2",
    leaseExpiresAtMs: FIRE_AT,
    ownerLive: true,
    nowMs: FIRE_AT - 60_000,
    lateness: { fireAtMs: FIRE_AT, maxLatenessMs: 300_000, policy, started: false },
    ...over,
  };
}

test("ExplainTimer shows the contract of a scheduled timer, and how an EXPIRED one ended", () => {
  assert.equal(
    whatHappensNext(explained({})),
    "fires at 2023-11-14T22:13:20.000Z (in 60.0 s) by dispatcher d2; skipped (EXPIRED), not delivered if not started by 2023-11-14T22:18:20.000Z (max_lateness 5m)",
  );
  assert.match(
    whatHappensNext(explained({}, Lateness.FireMarked)),
    /; delivered marked late \(x-timer-late-ms\) if not started by 2023-11-14T22:18:20\.000Z/,
  );
  assert.match(
    whatHappensNext(explained({ nowMs: FIRE_AT + 600_000 })),
    /^overdue by 10 min: .*; already beyond its max_lateness 5m \(since 2023-11-14T22:18:20\.000Z\): skipped \(EXPIRED\), not delivered when its attempt starts$/,
  );
  // Retries, and timers an operator sent again, are not judged: no clause.
  assert.doesNotMatch(whatHappensNext(explained({ attempt: 1 })), /max_lateness/);
  const started = explained({});
  started.lateness = { fireAtMs: FIRE_AT, maxLatenessMs: 300_000, policy: Lateness.Skip, started: true };
  assert.doesNotMatch(whatHappensNext(started), /max_lateness/);
  const none = explained({});
  delete none.lateness;
  assert.equal(whatHappensNext(none), "fires at 2023-11-14T22:13:20.000Z (in 60.0 s) by dispatcher d2");
  assert.equal(
    whatHappensNext(explained({ state: State.Expired, attempt: 1, finishTimeMs: FIRE_AT + 2_412_000 })),
    "finished: EXPIRED at 2023-11-14T22:53:32.000Z, 40m12s late (max_lateness 5m, SKIP): not delivered; AdminService/StartBulkOperation retry fires it again",
  );
});
