import assert from "node:assert/strict";
import { test } from "node:test";
import type { DueTimer } from "../../services/dispatcher/src/due-queue.js";
import { HeldTimers } from "../../services/dispatcher/src/held-timers.js";

const ROOMY = { perGroup: 100, perDestination: 100 };

function timer(timerId: string, dueMs: number, groupId = "g"): DueTimer {
  return { groupId, timerId, shard: 0, dueMs, destination: "http://receiver.test:80", version: 1 };
}

const ids = (ts: DueTimer[]) => ts.map((t) => t.timerId);

test("while on-time timers are due, the backlog gets only its room; otherwise it gets all of it", () => {
  const held = new HeldTimers(ROOMY);
  for (let i = 0; i < 5; i++) held.holdOverdue(timer(`late${i}`, 100 + i));
  held.hold(timer("now1", 1_000));
  held.hold(timer("now2", 1_001));
  const busy = held.admit(1_010, 10, 2);
  assert.deepEqual(ids(busy.onTime), ["now1", "now2"]);
  assert.deepEqual(ids(busy.catchUp), ["late0", "late1"]);

  // No on-time timer due: the backlog may take the whole batch.
  const idle = held.admit(1_010, 10, 0);
  assert.deepEqual(ids(idle.onTime), []);
  assert.deepEqual(ids(idle.catchUp), ["late2", "late3", "late4"]);
});

test("a timer is held once: a loaded timer already in the backlog or parked stays where it is", () => {
  const held = new HeldTimers(ROOMY);
  held.holdOverdue(timer("a", 100));
  held.hold(timer("a", 100));
  assert.equal(held.size, 1);
  assert.equal(held.catchUpSize, 1);

  // "b" and "c" of one group that may hold one slot: "c" is parked while "b" holds it.
  const capped = new HeldTimers({ perGroup: 1, perDestination: 100 });
  capped.hold(timer("b", 200));
  capped.hold(timer("c", 201));
  assert.deepEqual(ids(capped.admit(1_000, 10, 10).onTime), ["b"]);
  assert.equal(capped.parked, 1);
  capped.hold(timer("c", 201));
  assert.equal(capped.size, 1, "the parked timer is not held a second time");

  // Its slot given back, the parked one goes back to its lane and is admitted next.
  capped.release(timer("b", 200));
  assert.equal(capped.parked, 0);
  assert.deepEqual(ids(capped.admit(1_000, 10, 10).onTime), ["c"]);
});

test("a failed claim's timers are held again in their lanes; dropped shards are forgotten everywhere", () => {
  const held = new HeldTimers(ROOMY);
  held.hold(timer("a", 100));
  held.holdOverdue({ ...timer("b", 50), shard: 1 });
  const admitted = held.admit(1_000, 10, 10);
  assert.equal(held.size, 0);
  for (const t of admitted.onTime) held.putBack(t, "onTime");
  for (const t of admitted.catchUp) held.putBack(t, "catchUp");
  assert.equal(held.size, 2);
  assert.equal(held.catchUpSize, 1);
  assert.equal(held.nextDueMs(), 50);

  assert.equal(
    held.dropWhere((t) => t.shard === 1),
    1,
  );
  assert.equal(held.nextDueMs(), 100);
});

test("versions: a newer version replaces the entry held in any lane or the parking; an older one never does", () => {
  const v = (t: DueTimer, version: number): DueTimer => ({ ...t, version });
  const held = new HeldTimers(ROOMY);
  held.holdOverdue(timer("a", 100));
  // Updated while in the backlog: the new version is held on time, at its new time.
  held.holdAnnounced(v(timer("a", 5_000), 2));
  assert.equal(held.catchUpSize, 0);
  assert.equal(held.find("g", "a")?.version, 2);
  assert.equal(held.nextDueMs(), 5_000);
  // A late announcement, a stale load, a stale overdue read or a stale retry of version 1.
  held.holdAnnounced(timer("a", 100));
  held.hold(timer("a", 100));
  held.holdOverdue(timer("a", 100));
  held.holdAt(timer("a", 100));
  assert.equal(held.size, 1);
  assert.deepEqual([held.find("g", "a")?.version, held.nextDueMs()], [2, 5_000]);
  // Moved beyond the window: a stale version-1 drop changes nothing, the version-3 one drops it.
  assert.equal(held.forget("g", "a", 1), false);
  assert.equal(held.forget("g", "a", 3), true);
  assert.equal(held.size, 0);

  // Parked under its group's cap, then updated: the parked entry is replaced, not kept twice.
  const capped = new HeldTimers({ perGroup: 1, perDestination: 100 });
  capped.hold(timer("b", 200));
  capped.hold(timer("c", 201));
  assert.deepEqual(ids(capped.admit(1_000, 10, 10).onTime), ["b"]);
  assert.equal(capped.parked, 1);
  capped.hold(v(timer("c", 3_000), 2));
  assert.deepEqual([capped.parked, capped.size, capped.find("g", "c")?.version], [0, 1, 2]);
});
