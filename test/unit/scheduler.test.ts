// The firing loop driven step by step: a fake clock that moves only when the test advances it,
// an in-memory store that keeps the SQL's rules (test/support/firing-fakes.ts), and a deliver
// function whose answers the test decides. Each test follows one path a timer can take: claimed
// and fired on time, retried, handed over to another dispatcher, or caught by a shutdown.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { Delivery, DeliveryResult } from "../../services/dispatcher/src/delivery.js";
import { Scheduler, type SchedulerOptions } from "../../services/dispatcher/src/scheduler.js";
import {
  FakeClock,
  FakeOwnership,
  MemoryStore,
  recordingLogger,
  TEST_DESTINATION,
} from "../support/firing-fakes.js";

const T0 = 1_700_000_000_000;
/** When timer g/t1, which every test starts with, is DUE. */
const DUE = T0 + 5_000;
const CLAIM_LEAD = 25;

const OPTIONS: SchedulerOptions = {
  announcementsFlowing: () => true,
  lookaheadMs: 30_000,
  pollIntervalMs: 1_000,
  overdueGraceMs: 2_000,
  claimLeadMs: CLAIM_LEAD,
  claimBatch: 100,
  maxInFlight: 16,
  maxHeld: 1_000,
  claimTtlMs: 60_000,
  catchUpShare: 0.25,
  groupShare: 1,
  destinationShare: 1,
};

/** A delivery the test answers when it chooses. */
function pending(): { promise: Promise<DeliveryResult>; answer: (r: DeliveryResult) => void } {
  let answer: (r: DeliveryResult) => void = () => {};
  const promise = new Promise<DeliveryResult>((resolve) => {
    answer = resolve;
  });
  return { promise, answer };
}

/**
 * A scheduler owning shard 0 (lease epoch 1) over fakes, with timer g/t1 due at DUE (3 attempts
 * unless `maxAttempts` says otherwise); deliveries succeed unless `replies.answer` says otherwise.
 */
function firing(opts: { earlyMs?: number; maxAttempts?: number } = {}) {
  const clock = new FakeClock(T0, opts.earlyMs ?? 0);
  const store = new MemoryStore(clock);
  const ownership = new FakeOwnership();
  ownership.epochs.set(0, 1n);
  store.leaseEpochs.set(0, 1n);
  store.add({ groupId: "g", timerId: "t1", shard: 0, dueMs: DUE, maxAttempts: opts.maxAttempts ?? 3 });
  const { log, lines } = recordingLogger();
  const deliveries: { delivery: Delivery; atMs: number }[] = [];
  /** How deliveries are answered; a test replaces `answer`. */
  const replies = { answer: async (_d: Delivery): Promise<DeliveryResult> => ({ ok: true }) };
  const scheduler = new Scheduler(
    {
      store,
      clock,
      ownership,
      log,
      deliver: (delivery) => {
        deliveries.push({ delivery, atMs: clock.now() });
        return replies.answer(delivery);
      },
    },
    OPTIONS,
  );
  return { clock, store, ownership, lines, deliveries, replies, scheduler };
}

test("a timer is claimed within the claim lead and fired at its time, exactly once", async () => {
  const f = firing();
  f.scheduler.start();
  await f.clock.advance(0);
  assert.equal(f.scheduler.held, 1, "the window load holds it");

  await f.clock.advanceTo(DUE - CLAIM_LEAD - 1);
  assert.equal(f.store.claimStatements, 0, "not claimed before the lead");
  await f.clock.advanceTo(DUE - 1);
  assert.equal(f.store.get("g", "t1").state, "firing", "claimed within the lead");
  assert.equal(f.deliveries.length, 0, "claimed is not fired: never before its time");

  await f.clock.advanceTo(DUE);
  assert.deepEqual(
    f.deliveries.map((d) => d.atMs),
    [DUE],
  );
  const sent = f.deliveries[0]?.delivery;
  assert.equal(sent?.attempt, 1);
  assert.equal(sent?.fireAtMs, DUE);

  await f.clock.advance(60_000);
  assert.equal(f.deliveries.length, 1, "fired once");
  assert.equal(f.store.get("g", "t1").state, "succeeded");
  assert.deepEqual(
    f.store.completed.map((c) => [c.outcome, c.attempt, c.startedAt.getTime()]),
    [["succeeded", 1, DUE]],
  );
  assert.equal(
    f.store.completed[0]?.traceId,
    sent?.traceparent.split("-")[1],
    "the attempt keeps the trace id of the traceparent sent",
  );
  await f.scheduler.stop(1_000);
});

test("a timer is never fired early, even when its wake-up comes early", async () => {
  // setTimeout may wake a fraction of a millisecond early; here every wake-up is 3 ms early.
  const f = firing({ earlyMs: 3 });
  f.scheduler.start();
  await f.clock.advanceTo(DUE - 1);
  assert.equal(f.store.get("g", "t1").state, "firing");
  assert.equal(f.deliveries.length, 0);
  await f.clock.advanceTo(DUE);
  assert.deepEqual(
    f.deliveries.map((d) => d.atMs),
    [DUE],
  );
  await f.scheduler.stop(1_000);
});

test("a retryable failure is tried again at its backoff time, not before", async () => {
  const f = firing();
  let calls = 0;
  f.replies.answer = async () =>
    ++calls === 1 ? { ok: false, retryable: true, error: "HTTP 503" } : { ok: true };
  f.scheduler.start();
  await f.clock.advanceTo(DUE);
  assert.equal(f.deliveries.length, 1);

  const row = f.store.get("g", "t1");
  assert.equal(row.state, "scheduled");
  assert.equal(row.lastError, "HTTP 503");
  // 1 s initial backoff, less up to 20% jitter, from when the attempt finished.
  const retryAt = row.nextAttemptAtMs;
  assert.ok(retryAt >= DUE + 800 && retryAt <= DUE + 1_000, `retry at +${retryAt - DUE} ms`);
  assert.equal(f.scheduler.held, 1, "the retry is held in memory once its outcome is recorded");

  await f.clock.advanceTo(retryAt - 1);
  assert.equal(f.deliveries.length, 1, "not before the backoff time");
  await f.clock.advanceTo(retryAt);
  assert.deepEqual(
    f.deliveries.map((d) => [d.atMs, d.delivery.attempt]),
    [
      [DUE, 1],
      [retryAt, 2],
    ],
  );
  await f.clock.advance(60_000);
  assert.equal(f.deliveries.length, 2);
  assert.equal(f.store.get("g", "t1").state, "succeeded");
  await f.scheduler.stop(1_000);
});

test("a timer whose attempts are used up fails, and is not tried again", async () => {
  const f = firing({ maxAttempts: 2 });
  f.replies.answer = async () => ({ ok: false, retryable: true, error: "HTTP 503" });
  f.scheduler.start();
  await f.clock.advanceTo(DUE + 60_000);
  assert.deepEqual(
    f.deliveries.map((d) => d.delivery.attempt),
    [1, 2],
  );
  const row = f.store.get("g", "t1");
  assert.equal(row.state, "failed");
  assert.equal(row.lastError, "gave up after 2 attempts: HTTP 503");
  assert.equal(f.scheduler.held, 0);
  assert.ok(f.lines.some((l) => l.msg === "timer failed" && l.attempt === 2));
  await f.scheduler.stop(1_000);
});

test("a claim that fails is retried after a backoff and the timer still fires, once", async () => {
  const f = firing();
  f.store.failClaims = 1;
  f.scheduler.start();
  await f.clock.advanceTo(DUE + 10_000);
  assert.equal(f.store.claimStatements, 2);
  // The first claim ran at DUE - 25 ms and failed; the next came 200 ms later.
  assert.deepEqual(
    f.deliveries.map((d) => d.atMs),
    [DUE - CLAIM_LEAD + 200],
  );
  assert.ok(f.lines.some((l) => l.msg === "claiming due timers failed; retrying"));
  assert.equal(f.store.get("g", "t1").state, "succeeded");
  await f.scheduler.stop(1_000);
});

test("a shard handed over before its timers are claimed: they are forgotten and never fired here", async () => {
  const f = firing();
  f.store.add({ groupId: "g", timerId: "t2", shard: 0, dueMs: DUE + 1_000 });
  f.scheduler.start();
  await f.clock.advance(0);
  assert.equal(f.scheduler.held, 2);

  f.ownership.epochs.delete(0);
  assert.equal(await f.scheduler.dropUnowned(), 2);
  assert.equal(f.scheduler.held, 0);
  await f.clock.advanceTo(DUE + 60_000);
  assert.equal(f.store.claimStatements, 0);
  assert.equal(f.deliveries.length, 0);
  assert.equal(f.store.get("g", "t1").state, "scheduled", "left for the new owner");
  await f.scheduler.stop(1_000);
});

test("a shard whose lease moved before we noticed: the claim is fenced and nothing fires here", async () => {
  const f = firing();
  f.scheduler.start();
  await f.clock.advance(0);
  // Another dispatcher holds the lease now, at a later epoch; this one still believes epoch 1.
  f.store.leaseEpochs.set(0, 2n);
  await f.clock.advanceTo(DUE + 1_000);
  assert.equal(f.store.claimStatements, 1);
  assert.equal(f.deliveries.length, 0);
  assert.equal(f.store.get("g", "t1").state, "scheduled");
  assert.equal(f.scheduler.deliveriesInFlight, 0);
  await f.scheduler.stop(1_000);
});

test("an outcome arriving after the claim was taken back is not recorded, and the retry is not held for a lost shard", async () => {
  const f = firing();
  const slow = pending();
  f.replies.answer = () => slow.promise;
  f.scheduler.start();
  await f.clock.advanceTo(DUE);
  assert.equal(f.deliveries.length, 1);

  // The delivery hangs past the claim's deadline; the shard moves and its new owner takes the claim back.
  f.ownership.epochs.delete(0);
  await f.scheduler.dropUnowned();
  f.store.takeBack("g", "t1");
  slow.answer({ ok: false, retryable: true, error: "HTTP 503" });
  await f.clock.advance(0);
  assert.equal(f.scheduler.held, 0, "the retry is not held: the shard is someone else's");
  await f.clock.advance(60_000);

  assert.equal(f.store.completed.length, 0, "the late outcome is not recorded");
  assert.equal(f.store.get("g", "t1").state, "scheduled", "the new owner's claim stands");
  assert.ok(
    f.lines.some(
      (l) => l.msg === "delivery outcomes arrived after their claims were taken back; not recorded",
    ),
  );
  assert.equal(f.deliveries.length, 1);
  await f.scheduler.stop(1_000);
});

test("stop waits for the delivery in flight, records it, and fires nothing afterwards", async () => {
  const f = firing();
  f.store.add({ groupId: "g", timerId: "t2", shard: 0, dueMs: DUE + 10_000 });
  const slow = pending();
  f.replies.answer = () => slow.promise;
  f.scheduler.start();
  await f.clock.advanceTo(DUE);
  assert.equal(f.deliveries.length, 1);

  let stopped = false;
  const stopping = f.scheduler.stop(5_000).then(() => {
    stopped = true;
  });
  await f.clock.advance(1_000);
  assert.equal(stopped, false, "still waiting for the delivery");
  slow.answer({ ok: true });
  await stopping;
  assert.equal(f.store.get("g", "t1").state, "succeeded", "its outcome written before stop returned");

  const claims = f.store.claimStatements;
  await f.clock.advance(60_000);
  assert.equal(f.deliveries.length, 1, "t2 is not fired after stop");
  assert.equal(f.store.claimStatements, claims, "nothing claimed after stop");
  assert.equal(f.store.get("g", "t2").state, "scheduled");
});

test("stop gives up on a delivery that never ends at its bound", async () => {
  const f = firing();
  f.replies.answer = () => pending().promise; // never answered
  f.scheduler.start();
  await f.clock.advanceTo(DUE);
  assert.equal(f.scheduler.deliveriesInFlight, 1);

  let stopped = false;
  void f.scheduler.stop(5_000).then(() => {
    stopped = true;
  });
  await f.clock.advance(4_999);
  assert.equal(stopped, false);
  await f.clock.advance(1);
  assert.equal(stopped, true, "stop returns at its bound");
  assert.ok(
    f.lines.some(
      (l) => String(l.msg).startsWith("deliveries still in flight at shutdown") && l.in_flight === 1,
    ),
  );
  assert.equal(f.store.get("g", "t1").state, "firing", "its claim expires and is taken back elsewhere");
});

/** The announcement UpdateTimer sends for g/t1 after `store.update`: its new due time and version. */
function announcementOf(dueMs: number, version: number) {
  return { groupId: "g", timerId: "t1", shard: 0, dueMs, destination: TEST_DESTINATION, version };
}

test("an updated timer: the held old version is not fired, a late announcement of it changes nothing, and the new version fires at its new time", async () => {
  const f = firing();
  f.scheduler.start();
  await f.clock.advance(0);
  assert.equal(f.scheduler.held, 1, "version 1 held at DUE");

  const NEW_DUE = DUE + 3_000;
  const row = f.store.update("g", "t1", NEW_DUE);
  assert.equal(row.version, 2);
  f.scheduler.announce(announcementOf(NEW_DUE, 2));
  // Version 1's announcement, delayed in NATS, arrives after version 2's; a window load that
  // read the row before the update brings version 1 too. Neither may bring back the old time.
  f.scheduler.announce(announcementOf(DUE, 1));
  await f.clock.advanceTo(DUE + 1_000);
  assert.equal(f.deliveries.length, 0, "nothing fires at the old time");
  assert.equal(f.store.get("g", "t1").state, "scheduled");

  await f.clock.advanceTo(NEW_DUE - 1);
  assert.equal(f.deliveries.length, 0, "never before the new time");
  await f.clock.advanceTo(NEW_DUE + 5_000);
  assert.deepEqual(
    f.deliveries.map((d) => d.atMs),
    [NEW_DUE],
    "fired once, at the new time",
  );
  await f.scheduler.stop(1_000);
});

test("a held entry of an old version is fenced in the claim: it is not claimed, and the new version is", async () => {
  const f = firing();
  const claimed: number[] = [];
  const claim = f.store.claim.bind(f.store);
  f.store.claim = async (timers, epochs, leadMs) => {
    // The update commits between the scheduler's admitting version 1 and its claim statement.
    if (f.store.get("g", "t1").version === 1) f.store.update("g", "t1", DUE);
    const rows = await claim(timers, epochs, leadMs);
    // The version each claimed row was held at (what the scheduler asked for).
    for (const r of rows) claimed.push(timers.find((t) => t.timerId === r.timer_id)!.version);
    return rows;
  };
  f.scheduler.start();
  await f.clock.advanceTo(DUE - 1);
  assert.equal(f.store.get("g", "t1").state, "scheduled", "version 1's claim found version 2: fenced");
  f.scheduler.announce(announcementOf(DUE, 2));
  await f.clock.advanceTo(DUE + 1_000);
  assert.deepEqual(claimed, [2], "only the entry of version 2 claimed it");
  assert.deepEqual(
    f.deliveries.map((d) => d.atMs),
    [DUE],
  );
  await f.scheduler.stop(1_000);
});

test("an update moving a held timer beyond the lookahead drops it; the window loader brings it back for its new time", async () => {
  const f = firing();
  f.scheduler.start();
  await f.clock.advance(0);
  assert.equal(f.scheduler.held, 1);

  const FAR = T0 + OPTIONS.lookaheadMs + 20_000;
  f.store.update("g", "t1", FAR);
  f.scheduler.announce(announcementOf(FAR, 2));
  assert.equal(f.scheduler.held, 0, "dropped at once");
  await f.clock.advanceTo(DUE + 1_000);
  assert.equal(f.store.claimStatements, 0, "nothing to claim at the old time");
  await f.clock.advanceTo(FAR + 1_000);
  assert.deepEqual(
    f.deliveries.map((d) => d.atMs),
    [FAR],
  );
  await f.scheduler.stop(1_000);
});
