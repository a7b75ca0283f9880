import { test } from "node:test";
import assert from "node:assert/strict";
import { DueQueue } from "../../services/dispatcher/src/due-queue.js";

const t = (id: string, dueMs: number, shard = 0) => ({
  groupId: "g",
  timerId: id,
  shard,
  dueMs,
  destination: "http://127.0.0.1:80",
  version: 1,
});

test("pops due timers earliest first, and only those due", () => {
  const q = new DueQueue();
  const ids = Array.from({ length: 500 }, (_, i) => i).sort(() => Math.random() - 0.5);
  for (const i of ids) q.add(t(`t${i}`, 1000 + i));
  assert.equal(q.peekDueMs(), 1000);
  const due = q.popDue(1099, 1000);
  assert.deepEqual(
    due.map((d) => d.dueMs),
    Array.from({ length: 100 }, (_, i) => 1000 + i),
  );
  assert.equal(q.size, 400);
  assert.equal(q.popDue(1200, 10).length, 10);
});

test("holds a timer once, moving it when re-added with a new time", () => {
  const q = new DueQueue();
  q.add(t("a", 500));
  q.add(t("a", 500));
  q.add(t("b", 300));
  assert.equal(q.size, 2);
  q.add(t("a", 100));
  assert.equal(q.peekDueMs(), 100);
  q.add(t("a", 900));
  assert.deepEqual(
    q.popDue(1000, 10).map((d) => d.timerId),
    ["b", "a"],
  );
});

test("removes by key and by shard predicate, keeping heap order", () => {
  const q = new DueQueue();
  for (let i = 0; i < 200; i++) q.add(t(`t${i}`, 1000 - i, i % 4));
  assert.equal(q.remove("g", "t5")?.timerId, "t5");
  assert.equal(q.remove("g", "t5"), undefined);
  assert.equal(
    q.removeWhere((x) => x.shard === 1),
    49, // 50 timers of shard 1, less t5 (removed above)
  );
  const all = q.popDue(Infinity, 1000);
  assert.ok(all.every((x) => x.shard !== 1));
  for (let i = 1; i < all.length; i++) assert.ok(all[i - 1]!.dueMs <= all[i]!.dueMs);
  assert.equal(q.size, 0);
});

test("popNext takes the earliest only when it is due", () => {
  const q = new DueQueue();
  q.add(t("late", 2000));
  q.add(t("early", 1000));
  assert.equal(q.popNext(999), undefined);
  assert.equal(q.popNext(1000)?.timerId, "early");
  assert.equal(q.popNext(1999), undefined);
  assert.equal(q.size, 1);
});
