import { test } from "node:test";
import assert from "node:assert/strict";
import { claimSplitting, isDataError } from "../../services/dispatcher/src/claim-split.js";

/** A Postgres-like error with a SQLSTATE. */
const pgError = (code: string, message: string) => Object.assign(new Error(message), { code });

test("a batch with one entry Postgres refuses claims all the others and drops only that one", async () => {
  const entries = Array.from({ length: 20 }, (_, i) => `t${i}`);
  const bad = "t13";
  let statements = 0;
  const r = await claimSplitting([...entries.slice(0, 13), bad, ...entries.slice(14)], async (part) => {
    statements++;
    if (part.includes(bad)) throw pgError("22P02", "malformed array literal");
    return part.map((e) => ({ claimed: e }));
  });
  assert.deepEqual(r.claimed.map((c) => c.claimed).sort(), entries.filter((e) => e !== bad).sort());
  assert.deepEqual(
    r.dropped.map((d) => d.entry),
    [bad],
  );
  assert.deepEqual(r.retry, []);
  assert.equal(r.error, undefined);
  assert.ok(statements <= 2 * Math.ceil(Math.log2(20)) + 1, `${statements} statements`);
});

test("several bad entries are each dropped alone", async () => {
  const entries = Array.from({ length: 64 }, (_, i) => i);
  const bad = new Set([0, 31, 32, 63]);
  const r = await claimSplitting(entries, async (part) => {
    if (part.some((e) => bad.has(e))) throw pgError("23505", "duplicate key");
    return part;
  });
  assert.equal(r.claimed.length, 60);
  assert.deepEqual(
    r.dropped.map((d) => d.entry).sort((a, b) => a - b),
    [0, 31, 32, 63],
  );
});

test("a connection-level failure drops nothing and keeps every entry for a retry", async () => {
  for (const err of [
    new Error("Connection terminated unexpectedly"),
    pgError("57P01", "terminating connection due to administrator command"),
    pgError("08006", "connection failure"),
    pgError("53300", "too many clients"),
  ]) {
    let statements = 0;
    const r = await claimSplitting(["a", "b", "c", "d"], async () => {
      statements++;
      throw err;
    });
    assert.deepEqual(r.claimed, []);
    assert.deepEqual(r.dropped, []);
    assert.deepEqual(r.retry.sort(), ["a", "b", "c", "d"]);
    assert.equal(r.error, err);
    assert.equal(statements, 1, "not split: the rows are not at fault");
  }
});

test("an outage in the middle of splitting keeps what is unsettled for a retry", async () => {
  let calls = 0;
  const r = await claimSplitting(["a", "b", "bad", "d"], async (part) => {
    calls++;
    if (calls === 1) throw pgError("22021", 'invalid byte sequence for encoding "UTF8": 0x00');
    if (calls === 2) return part; // ["a", "b"]
    throw new Error("connect ECONNREFUSED 127.0.0.1:5432");
  });
  assert.deepEqual(r.claimed, ["a", "b"]);
  assert.deepEqual(r.dropped, []);
  assert.deepEqual(r.retry, ["bad", "d"]);
});

test("data errors are SQLSTATE classes 22 and 23 only", () => {
  assert.ok(isDataError(pgError("22P02", "")));
  assert.ok(isDataError(pgError("22021", "")));
  assert.ok(isDataError(pgError("23505", "")));
  assert.ok(!isDataError(pgError("08006", "")));
  assert.ok(!isDataError(pgError("40001", "")));
  assert.ok(!isDataError(Object.assign(new Error(), { code: "ECONNRESET" })));
  assert.ok(!isDataError(new Error("timeout")));
  assert.ok(!isDataError(undefined));
});
