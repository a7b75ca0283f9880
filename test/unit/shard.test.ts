import { test } from "node:test";
import assert from "node:assert/strict";
import { fnv1a32, shardOf } from "../../services/shared/src/shard.js";

test("fnv1a32 matches the published FNV-1a test vectors", () => {
  const enc = new TextEncoder();
  assert.equal(fnv1a32(enc.encode("")), 0x811c9dc5);
  assert.equal(fnv1a32(enc.encode("a")), 0xe40c292c);
  assert.equal(fnv1a32(enc.encode("foobar")), 0xbf9cf968);
});

test("shardOf is stable, in range, and separates group from timer id", () => {
  // Pinned values: other languages computing the shard must get these (see README).
  assert.equal(
    shardOf("billing", "invoice-42", 1024),
    fnv1a32(
      new Uint8Array([...new TextEncoder().encode("billing"), 0, ...new TextEncoder().encode("invoice-42")]),
    ) % 1024,
  );
  assert.notEqual(shardOf("ab", "c", 1 << 16), shardOf("a", "bc", 1 << 16));
  for (let i = 0; i < 1000; i++) {
    const s = shardOf("g", `t${i}`, 7);
    assert.ok(Number.isInteger(s) && s >= 0 && s < 7);
  }
});

test("shards spread evenly", () => {
  const counts = new Array(64).fill(0);
  for (let i = 0; i < 64_000; i++) counts[shardOf("group", `timer-${i}`, 64)]++;
  const mean = 1000;
  for (const c of counts)
    assert.ok(Math.abs(c - mean) < mean * 0.15, `shard count ${c} too far from ${mean}`);
});
