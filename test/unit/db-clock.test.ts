// The dispatcher's estimate of Postgres's clock: the sample with the shortest round trip wins,
// its midpoint is the estimate, and half its round trip is how far off it may be.
import assert from "node:assert/strict";
import { test } from "node:test";
import { estimateClock, type ClockSample } from "../../services/dispatcher/src/db-clock.js";

// A machine whose wall clock is 2,000 ms ahead of Postgres's, whose monotonic clock started
// 1,000,000 ms (Postgres time) before these samples.
const sample = (monoBeforeMs: number, rttMs: number, dbAtMs: number): ClockSample => ({
  monoBeforeMs,
  monoAfterMs: monoBeforeMs + rttMs,
  wallBeforeMs: 1_000_000 + monoBeforeMs + 2_000,
  wallAfterMs: 1_000_000 + monoBeforeMs + rttMs + 2_000,
  dbMs: 1_000_000 + dbAtMs,
});

test("the shortest round trip gives the estimate, its half is the uncertainty", () => {
  const e = estimateClock([
    // Postgres read its clock 9 ms into a 10 ms round trip: a bad sample, off by 4 ms.
    sample(100, 10, 109),
    // 0.4 ms round trip, read in the middle.
    sample(200, 0.4, 200.2),
    sample(300, 3, 300.5),
  ]);
  assert.ok(Math.abs(e.monoToDbMs - 1_000_000) < 1e-6, `monoToDb ${e.monoToDbMs}`);
  assert.ok(Math.abs(e.uncertaintyMs - 0.2) < 1e-9);
  assert.ok(Math.abs(e.wallOffsetMs - 2_000) < 1e-6, `wall offset ${e.wallOffsetMs}`);
});

test("a clock behind Postgres's has a negative offset", () => {
  const behind: ClockSample = {
    monoBeforeMs: 0,
    monoAfterMs: 1,
    wallBeforeMs: 5_000,
    wallAfterMs: 5_001,
    dbMs: 7_000.5,
  };
  assert.equal(estimateClock([behind]).wallOffsetMs, -2_000);
});

test("no samples is a programming error, not a zero offset", () => {
  assert.throws(() => estimateClock([]), /at least one sample/);
});
