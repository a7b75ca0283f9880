import { test } from "node:test";
import assert from "node:assert/strict";
import { assignShards, shardsOf } from "../../services/dispatcher/src/shard-ring.js";

const SHARDS = 1024;

function counts(owners: string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const o of owners) m.set(o, (m.get(o) ?? 0) + 1);
  return m;
}

test("every member computes the same assignment from the same set, whatever its order", () => {
  const a = assignShards(["d-1", "d-2", "d-3"], SHARDS);
  const b = assignShards(["d-3", "d-1", "d-2", "d-1"], SHARDS);
  assert.deepEqual(a, b);
  assert.equal(a.length, SHARDS);
});

test("with 3 dispatchers each owns within 15% of the mean", () => {
  for (const members of [
    ["d-1", "d-2", "d-3"],
    ["dispatcher-a", "dispatcher-b", "dispatcher-c"],
    ["host1-123", "host2-456", "host3-789"],
  ]) {
    const c = counts(assignShards(members, SHARDS));
    const mean = SHARDS / 3;
    for (const m of members) {
      const n = c.get(m) ?? 0;
      assert.ok(Math.abs(n - mean) <= mean * 0.15, `${m} owns ${n}, mean ${mean.toFixed(1)}`);
    }
  }
});

test("when the Nth dispatcher joins, at most 1/N of the shards plus 5% move, all to the newcomer", () => {
  const members: string[] = [];
  for (let n = 1; n <= 10; n++) {
    const before = assignShards(members, SHARDS);
    members.push(`dispatcher-${n}`);
    const after = assignShards(members, SHARDS);
    if (n === 1) continue;
    let moved = 0;
    for (let s = 0; s < SHARDS; s++) {
      if (before[s] !== after[s]) {
        moved++;
        assert.equal(after[s], `dispatcher-${n}`, "a shard may only move to the member that joined");
      }
    }
    assert.ok(moved <= SHARDS / n + SHARDS * 0.05, `join of member ${n} moved ${moved} shards`);
  }
});

test("when a dispatcher leaves, only its shards move", () => {
  const members = ["a", "b", "c", "d"];
  const before = assignShards(members, SHARDS);
  const after = assignShards(["a", "b", "d"], SHARDS);
  for (let s = 0; s < SHARDS; s++) {
    if (before[s] !== "c") assert.equal(after[s], before[s]);
    else assert.notEqual(after[s], "c");
  }
});

test("shardsOf lists exactly a member's shards; no members means no owners", () => {
  const owners = assignShards(["x", "y"], 64);
  assert.deepEqual(
    shardsOf("x", ["x", "y"], 64),
    owners.flatMap((o, s) => (o === "x" ? [s] : [])),
  );
  assert.deepEqual(assignShards([], 64), []);
});
