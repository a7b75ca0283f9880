import { test } from "node:test";
import assert from "node:assert/strict";
import type { MissedPolicy, ScheduleRules } from "../../services/shared/src/schedule-instants.js";
import { planFirings, type PlanInput } from "../../services/shared/src/schedule-plan.js";

const T0 = Date.parse("2026-06-01T12:00:00Z");
const MINUTE = 60_000;

function everyMinute(over: Partial<ScheduleRules> = {}): ScheduleRules {
  return {
    recurrence: { kind: "interval", intervalMs: MINUTE, offsetMs: 0 },
    timeZone: "UTC",
    startMs: null,
    endMs: null,
    jitterMs: 0,
    nonexistent: "shift_forward",
    ambiguous: "first",
    missed: "latest_only",
    catchUpWindowMs: 10 * MINUTE,
    overlap: "allow",
    ...over,
  };
}

function plan(over: Partial<PlanInput> & { rules?: ScheduleRules } = {}) {
  return planFirings({
    scheduleId: "s",
    rules: everyMinute(),
    lastInstantMs: null,
    firstFromMs: T0,
    nowMs: T0,
    leadMs: 0,
    maxFirings: 1000,
    ...over,
  });
}

const minutes = (list: readonly { instantMs: number }[]) => list.map((f) => (f.instantMs - T0) / MINUTE);

test("the first plan creates the first instant; with a lead, every instant within it and the next", () => {
  // Due now: the one after it is created with it.
  assert.deepEqual(minutes(plan().firings), [0, 1]);
  // A start a moment past is a missed instant: caught up (LATEST_ONLY), then the next.
  assert.deepEqual(minutes(plan({ nowMs: T0 + 1 }).firings), [0, 1]);
  assert.deepEqual(minutes(plan({ nowMs: T0 + 1, rules: everyMinute({ missed: "skip" }) }).firings), [1]);
  assert.deepEqual(minutes(plan({ leadMs: 3 * MINUTE }).firings), [0, 1, 2, 3, 4]);
  const later = plan({ lastInstantMs: T0 + 4 * MINUTE, nowMs: T0 + 3.5 * MINUTE, leadMs: MINUTE });
  assert.deepEqual(minutes(later.firings), [5]);
  assert.equal(later.lastInstantMs, T0 + 5 * MINUTE);
  assert.equal(later.completed, false);
});

// Down from minute 0 to minute 30 (the last firing created was minute 0), window 10 minutes.
const missed: Record<MissedPolicy, { firings: number[]; skipped: number }> = {
  all: { firings: [21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31], skipped: 20 },
  latest_only: { firings: [30, 31], skipped: 29 },
  skip: { firings: [31], skipped: 30 },
};

for (const policy of ["all", "latest_only", "skip"] as const) {
  test(`missed firings under ${policy}: within the catch-up window, the rest counted`, () => {
    const p = plan({
      rules: everyMinute({ missed: policy }),
      lastInstantMs: T0,
      nowMs: T0 + 30 * MINUTE + 1,
    });
    assert.deepEqual({ firings: minutes(p.firings), skipped: p.skipped }, missed[policy]);
  });
}

test("an instant outside the window is not caught up even under ALL", () => {
  const p = plan({
    rules: everyMinute({ missed: "all", catchUpWindowMs: 1000 }),
    lastInstantMs: T0,
    nowMs: T0 + 5 * MINUTE + 2000,
  });
  assert.deepEqual(minutes(p.firings), [6]);
  assert.equal(p.skipped, 5);
});

test("maxFirings stops a plan early; the next one goes on from where it stopped", () => {
  const first = plan({ leadMs: 10 * MINUTE, maxFirings: 3 });
  assert.deepEqual(minutes(first.firings), [0, 1, 2]);
  const next = plan({ leadMs: 10 * MINUTE, maxFirings: 3, lastInstantMs: first.lastInstantMs });
  assert.deepEqual(minutes(next.firings), [3, 4, 5]);
});

test("end_time completes the schedule after its last instant", () => {
  const rules = everyMinute({ endMs: T0 + 2 * MINUTE });
  const p = plan({ rules, leadMs: 10 * MINUTE });
  assert.deepEqual(minutes(p.firings), [0, 1]);
  assert.equal(p.completed, true);
  const missedEnd = plan({ rules, lastInstantMs: T0 + MINUTE, nowMs: T0 + 20 * MINUTE });
  assert.deepEqual(missedEnd.firings, []);
  assert.equal(missedEnd.completed, true);
});

test("a nonexistent local time skipped by policy is counted", () => {
  const rules: ScheduleRules = {
    ...everyMinute(),
    recurrence: { kind: "cron", expression: "0 30 2 * * *" },
    timeZone: "Europe/Berlin",
    nonexistent: "skip",
  };
  const from = Date.parse("2026-03-28T12:00:00Z");
  const p = plan({ rules, firstFromMs: from, nowMs: from });
  assert.equal(new Date(p.firings[0]?.instantMs ?? 0).toISOString(), "2026-03-30T00:30:00.000Z");
  assert.equal(p.skipped, 1);
});

test("jitter moves fire_at, not the instant, and stays within bounds", () => {
  const p = plan({ rules: everyMinute({ jitterMs: 30_000 }), leadMs: 5 * MINUTE });
  for (const f of p.firings) {
    assert.equal(f.instantMs % MINUTE, 0);
    assert.ok(f.fireAtMs >= f.instantMs && f.fireAtMs <= f.instantMs + 30_000);
  }
  assert.ok(new Set(p.firings.map((f) => f.fireAtMs - f.instantMs)).size > 1);
});
