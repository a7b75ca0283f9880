import { test } from "node:test";
import assert from "node:assert/strict";
import { DueQueue, type DueTimer } from "../../services/dispatcher/src/due-queue.js";
import { FairShare, slotsOf } from "../../services/dispatcher/src/fair-share.js";

const DEAD = "http://127.0.0.1:9001";
const GOOD = "http://127.0.0.1:9002";
const t = (groupId: string, timerId: string, dueMs: number, destination = GOOD, shard = 0): DueTimer => ({
  groupId,
  timerId,
  shard,
  dueMs,
  destination,
  version: 1,
});

function queueOf(...timers: DueTimer[]): DueQueue {
  const q = new DueQueue();
  for (const x of timers) q.add(x);
  return q;
}

test("a group at its cap is parked and the timers behind it in due order go on", () => {
  const fair = new FairShare({ perGroup: 2, perDestination: 100 });
  const q = queueOf(
    t("a", "a1", 1),
    t("a", "a2", 2),
    t("a", "a3", 3),
    t("a", "a4", 4),
    t("a", "a5", 5),
    t("b", "b1", 6),
    t("b", "b2", 7),
  );
  const admitted = fair.admitDue(q, "onTime", 100, 10);
  assert.deepEqual(
    admitted.map((x) => x.timerId),
    ["a1", "a2", "b1", "b2"],
  );
  assert.equal(fair.parked, 3);
  assert.equal(fair.parkedTotal, 3);
  assert.equal(fair.groupInFlight("a"), 2);
  assert.ok(fair.isParked("a", "a3") && fair.isParked("a", "a5") && !fair.isParked("b", "b1"));
  assert.equal(q.size, 0);
});

test("admits only due timers, and at most max", () => {
  const fair = new FairShare({ perGroup: 100, perDestination: 100 });
  const q = queueOf(t("a", "a1", 10), t("b", "b1", 20), t("c", "c1", 30), t("d", "d1", 40));
  assert.deepEqual(fair.admitDue(q, "onTime", 5, 10), []);
  assert.deepEqual(
    fair.admitDue(q, "onTime", 30, 2).map((x) => x.timerId),
    ["a1", "b1"],
  );
  assert.deepEqual(
    fair.admitDue(q, "onTime", 30, 10).map((x) => x.timerId),
    ["c1"],
  );
  assert.equal(q.size, 1);
});

test("a freed slot lets out one parked timer of that group, earliest first, in its own lane", () => {
  const fair = new FairShare({ perGroup: 1, perDestination: 100 });
  const q = new DueQueue();
  for (let i = 0; i < 50; i++) q.add(t("a", `a${i}`, 1000 - i)); // a49 is the earliest
  const [first] = fair.admitDue(q, "catchUp", 2000, 100);
  assert.equal(first?.timerId, "a49");
  assert.equal(fair.parked, 49);
  const out = fair.release(first!);
  assert.equal(out.length, 1, "one slot freed: one timer let out, not all 49");
  assert.equal(out[0]!.timer.timerId, "a48");
  assert.equal(out[0]!.lane, "catchUp");
  assert.deepEqual(Object.keys(out[0]!.timer).sort(), [
    "destination",
    "dueMs",
    "groupId",
    "shard",
    "timerId",
    "version",
  ]);
  assert.equal(fair.parked, 48);
  assert.equal(fair.groupInFlight("a"), 0);
});

test("a destination at its cap is parked whatever the group, and other destinations go on", () => {
  const fair = new FairShare({ perGroup: 100, perDestination: 2 });
  const q = queueOf(t("a", "1", 1, DEAD), t("b", "2", 2, DEAD), t("c", "3", 3, DEAD), t("c", "4", 4, GOOD));
  assert.deepEqual(
    fair.admitDue(q, "onTime", 10, 10).map((x) => x.timerId),
    ["1", "2", "4"],
  );
  assert.ok(fair.isParked("c", "3"));
  assert.equal(fair.destinationInFlight(DEAD), 2);
  const out = fair.release(t("a", "1", 1, DEAD));
  assert.deepEqual(
    out.map((u) => u.timer.timerId),
    ["3"],
  );
});

test("a timer let out by its group but stopped by its destination is parked again under the destination", () => {
  const fair = new FairShare({ perGroup: 1, perDestination: 1 });
  const q = queueOf(t("a", "a1", 1, DEAD), t("a", "a2", 2, GOOD), t("b", "b1", 3, GOOD));
  // a2 waits for group a; b1 takes destination GOOD.
  assert.deepEqual(
    fair.admitDue(q, "onTime", 10, 10).map((x) => x.timerId),
    ["a1", "b1"],
  );
  assert.ok(fair.isParked("a", "a2"));
  // a1 ends: group a lets a2 out, but GOOD is held by b1, so a2 parks again, under GOOD.
  const back = queueOf(...fair.release(t("a", "a1", 1, DEAD)).map((u) => u.timer));
  assert.deepEqual(fair.admitDue(back, "onTime", 10, 10), []);
  assert.ok(fair.isParked("a", "a2"));
  // b1 ends: GOOD lets a2 out, and now it is admitted.
  const again = queueOf(...fair.release(t("b", "b1", 3, GOOD)).map((u) => u.timer));
  assert.deepEqual(
    fair.admitDue(again, "onTime", 10, 10).map((x) => x.timerId),
    ["a2"],
  );
  assert.equal(fair.parked, 0);
});

test("reopen lets out parked timers whose cap has room, no more than the room", () => {
  const fair = new FairShare({ perGroup: 2, perDestination: 100 });
  const q = queueOf(t("a", "a1", 1), t("a", "a2", 2), t("a", "a3", 3), t("a", "a4", 4), t("a", "a5", 5));
  const [a1, a2] = fair.admitDue(q, "onTime", 10, 10);
  assert.deepEqual(fair.reopen(), [], "no room: nothing let out");
  // Both end; the two let out are then forgotten (say, rescheduled far away): a5 would be stuck.
  const out = [...fair.release(a1!), ...fair.release(a2!)];
  assert.deepEqual(
    out.map((u) => u.timer.timerId),
    ["a3", "a4"],
  );
  assert.equal(fair.parked, 1);
  assert.deepEqual(
    fair.reopen().map((u) => u.timer.timerId),
    ["a5"],
  );
  assert.equal(fair.parked, 0);
});

test("remove and removeWhere take parked timers out without touching in-flight counts", () => {
  const fair = new FairShare({ perGroup: 1, perDestination: 100 });
  const q = new DueQueue();
  for (let i = 0; i < 10; i++) q.add(t("a", `a${i}`, i, GOOD, i % 2));
  fair.admitDue(q, "onTime", 100, 100);
  assert.equal(fair.parked, 9);
  assert.equal(fair.remove("a", "a3")?.timerId, "a3");
  assert.equal(fair.remove("a", "a3"), undefined);
  assert.equal(
    fair.removeWhere((x) => x.shard === 1),
    4,
  ); // a1, a5, a7, a9
  assert.equal(fair.parked, 4);
  assert.equal(fair.groupInFlight("a"), 1);
  assert.deepEqual(
    fair.release(t("a", "a0", 0)).map((u) => u.timer.timerId),
    ["a2"],
  );
});

test("shares become slot counts of at least one", () => {
  assert.equal(slotsOf(512, 0.25), 128);
  assert.equal(slotsOf(3, 0.25), 1);
  assert.throws(() => new FairShare({ perGroup: 0, perDestination: 1 }), RangeError);
});

test("admitting stays cheap with a large parked backlog", () => {
  const fair = new FairShare({ perGroup: 128, perDestination: 128 });
  const q = new DueQueue();
  for (let i = 0; i < 100_000; i++) q.add(t("a", `a${i}`, i, DEAD));
  for (let i = 0; i < 1_000; i++) q.add(t("b", `b${i}`, 100_000 + i, GOOD));
  const admitted = fair.admitDue(q, "onTime", Infinity, 1_000_000);
  assert.equal(admitted.filter((x) => x.groupId === "a").length, 128);
  assert.equal(
    admitted.filter((x) => x.groupId === "b").length,
    128,
    "b is held by its own cap, not by a's backlog",
  );
  assert.equal(fair.parked, 100_000 - 128 + 1_000 - 128);
  // Each release lets out exactly one timer per freed cap; no scan of the backlog.
  const started = performance.now();
  for (const x of admitted) assert.ok(fair.release(x).length <= 2);
  assert.ok(performance.now() - started < 1_000);
});

test("within a group, a timer due now is let out before the group's older backlog", () => {
  const fair = new FairShare({ perGroup: 1, perDestination: 100 });
  const backlog = queueOf(t("a", "old1", 1), t("a", "old2", 2), t("a", "old3", 3));
  const [first] = fair.admitDue(backlog, "catchUp", 100, 10);
  assert.equal(first?.timerId, "old1");
  const now = queueOf(t("a", "now", 50));
  assert.deepEqual(fair.admitDue(now, "onTime", 100, 10), []);
  const out = fair.release(first!);
  assert.deepEqual(
    out.map((u) => [u.timer.timerId, u.lane]),
    [["now", "onTime"]],
  );
  assert.deepEqual(
    fair.release(t("a", "now", 50)).map((u) => u.timer.timerId),
    ["old2"],
  );
});
