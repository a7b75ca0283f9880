// The benchmarks' pure logic: judging figures against issue 10's targets, BENCH_STRICT's exit
// code, the summary table, and judging deliveries (early, twice, missing, late).
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  exitCode,
  judged,
  meets,
  mustBeZero,
  summaryTable,
  TARGETS,
  type Verdict,
} from "../../bench/targets.js";
import { exactlyOnce, fireRate, judgeDeliveries, type Delivery } from "../../bench/stats.js";

test("a figure meets an at-least target at or above it and an at-most target at or below it", () => {
  assert.equal(meets(3_000, TARGETS.unaryCreates), true);
  assert.equal(meets(2_999.9, TARGETS.unaryCreates), false);
  assert.equal(meets(50, TARGETS.lateP99), true);
  assert.equal(meets(50.1, TARGETS.lateP99), false);
});

test("a figure that could not be measured never meets its target", () => {
  assert.equal(meets(NaN, TARGETS.unaryCreates), false);
  assert.equal(meets(NaN, TARGETS.lateP99), false);
  assert.equal(meets(Infinity, TARGETS.lateP99), false);
});

test("a row whose run was not valid misses even with a good figure, and says why", () => {
  const v = judged("unary", 5_000, "5,000", TARGETS.unaryCreates, {
    valid: false,
    note: "3 of 20000 not acknowledged",
  });
  assert.equal(v.pass, false);
  assert.match(summaryTable([v]), /MISS \(3 of 20000 not acknowledged\)/);
  assert.equal(judged("unary", 5_000, "5,000", TARGETS.unaryCreates).pass, true);
});

test("BENCH_STRICT exits 1 on any miss, 0 when every judged row passes, and never without it", () => {
  const pass = judged("batch", 45_000, "45,000", TARGETS.batchCreates);
  const reported: Verdict = { measure: "p50", result: "1", target: "", pass: undefined };
  const miss = mustBeZero("early / twice / missing", [0, 1, 0]);
  assert.equal(miss.pass, false);
  assert.equal(exitCode([pass, reported], true), 0);
  assert.equal(exitCode([pass, reported, miss], true), 1);
  assert.equal(exitCode([pass, reported, miss], false), 0);
});

test("the summary shows each figure beside its target and the peers' figures on their rows", () => {
  const table = summaryTable([
    judged("unary CreateTimer/s", 700, "700", TARGETS.unaryCreates, { peers: "unary" }),
    { measure: "cores", result: "2", target: "", pass: undefined },
  ]);
  const lines = table.split("\n");
  assert.match(lines[0]!, /measure .*this run .*target .*verdict .*pg-boss 12 .*BullMQ 6/);
  assert.match(
    lines[2]!,
    /unary CreateTimer\/s .* 700 .*>= 3,000\/s .*MISS .*1,274-1,328 \/s .*10,689-15,925 \/s .*712-764 \/s/,
  );
  assert.doesNotMatch(lines[3]!, /PASS|MISS|\/s/);
});

test("deliveries are judged: early, the same attempt twice, a retry, missing, unexpected, lateness", () => {
  const expected = new Map([
    ["a", 1_000],
    ["b", 1_000],
    ["c", 2_000],
    ["d", 2_000],
  ]);
  const rows: Delivery[] = [
    ["a", 1, 1_000, 1_010],
    ["a", 1, 1_000, 1_020], // same attempt again: a double fire
    ["b", 1, 1_000, 999], // early
    ["c", 1, 2_000, 2_030],
    ["c", 2, 2_000, 2_500], // a retry: allowed, but the timer was delivered twice
    ["x", 1, 2_000, 2_040], // nobody created x
  ];
  const r = judgeDeliveries(rows, expected);
  assert.equal(r.duplicates, 1);
  assert.equal(r.redelivered, 2);
  assert.equal(r.early, 1);
  assert.equal(r.retries, 1);
  assert.equal(r.missing, 1);
  assert.equal(r.unexpected, 1);
  assert.equal(r.unique, 3);
  assert.deepEqual([r.lateness.min, r.lateness.max], [-1, 30]);
  assert.equal(exactlyOnce(r), false);
  assert.equal(fireRate(r), 3 / ((2_500 - 999) / 1000));
});

test("a clean run is exactly once", () => {
  const expected = new Map([
    ["a", 1_000],
    ["b", 1_500],
  ]);
  const r = judgeDeliveries(
    [
      ["a", 1, 1_000, 1_002],
      ["b", 1, 1_500, 1_501],
    ],
    expected,
  );
  assert.equal(exactlyOnce(r), true);
  assert.equal(r.redelivered, 0);
  assert.equal(r.lateness.p99, 2);
});
