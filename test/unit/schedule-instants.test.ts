import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import {
  AmbiguousTimePolicy,
  MissedFiringPolicy,
  NonexistentTimePolicy,
  type OverlapPolicy,
  ScheduleSpecSchema,
} from "../../services/shared/src/gen/timer/v1/schedule_pb.js";
import {
  type AmbiguousPolicy,
  type NonexistentPolicy,
  type ScheduleRules,
  ScheduleSearchError,
  firingInstants,
  jitterFor,
} from "../../services/shared/src/schedule-instants.js";
import { SpecError, checkScheduleSpec } from "../../services/shared/src/schedule-spec.js";

const NOW = Date.parse("2026-01-01T00:00:00Z");

function rules(over: Partial<ScheduleRules> & { cron?: string } = {}): ScheduleRules {
  const { cron = "0 30 2 * * *", ...rest } = over;
  return {
    recurrence: { kind: "cron", expression: cron },
    timeZone: "UTC",
    startMs: null,
    endMs: null,
    jitterMs: 0,
    nonexistent: "shift_forward",
    ambiguous: "first",
    missed: "latest_only",
    catchUpWindowMs: 3_600_000,
    overlap: "allow",
    ...rest,
  };
}

/** The firings as "local time | note" lines, the way a person would check them. */
function lines(r: ScheduleRules, from: string, count: number): string[] {
  return firingInstants(r, Date.parse(from), count).map((f) =>
    f.note === "" ? f.localTime : `${f.localTime} | ${f.note}`,
  );
}

function utc(r: ScheduleRules, from: string, count: number): string[] {
  return firingInstants(r, Date.parse(from), count).map((f) => new Date(f.instantMs).toISOString());
}

const GAP: Record<NonexistentPolicy, string[]> = {
  shift_forward: [
    "2026-03-28T02:30:00+01:00",
    "2026-03-29T03:30:00+02:00 | shifted forward: 02:30 does not exist on 2026-03-29",
    "2026-03-30T02:30:00+02:00",
  ],
  skip: ["2026-03-28T02:30:00+01:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"],
};

for (const nonexistent of ["shift_forward", "skip"] as const) {
  test(`Europe/Berlin spring forward (2026-03-29) under ${nonexistent}`, () => {
    assert.deepEqual(
      lines(rules({ timeZone: "Europe/Berlin", nonexistent }), "2026-03-28T00:00:00Z", 3),
      GAP[nonexistent],
    );
  });
}

test("a skipped nonexistent time is counted on the next firing", () => {
  const firings = firingInstants(
    rules({ timeZone: "Europe/Berlin", nonexistent: "skip" }),
    Date.parse("2026-03-28T12:00:00Z"),
    1,
  );
  assert.equal(firings[0]?.localTime, "2026-03-30T02:30:00+02:00");
  assert.equal(firings[0]?.skippedBefore, 1);
});

const BERLIN_FALL: Record<AmbiguousPolicy, string[]> = {
  first: [
    "2026-10-24T02:30:00+02:00",
    "2026-10-25T02:30:00+02:00 | first of two 02:30",
    "2026-10-26T02:30:00+01:00",
  ],
  last: [
    "2026-10-24T02:30:00+02:00",
    "2026-10-25T02:30:00+01:00 | second of two 02:30",
    "2026-10-26T02:30:00+01:00",
  ],
  both: [
    "2026-10-24T02:30:00+02:00",
    "2026-10-25T02:30:00+02:00 | first of two 02:30",
    "2026-10-25T02:30:00+01:00 | second of two 02:30",
    "2026-10-26T02:30:00+01:00",
  ],
};

for (const ambiguous of ["first", "last", "both"] as const) {
  test(`Europe/Berlin fall back (2026-10-25) under ${ambiguous}`, () => {
    const expected = BERLIN_FALL[ambiguous];
    assert.deepEqual(
      lines(rules({ timeZone: "Europe/Berlin", ambiguous }), "2026-10-24T00:00:00Z", expected.length),
      expected,
    );
  });
}

test("America/New_York spring forward (2026-03-08): 02:30 shifts to 03:30 EDT or is skipped", () => {
  const r = rules({ timeZone: "America/New_York" });
  assert.deepEqual(lines(r, "2026-03-07T12:00:00Z", 2), [
    "2026-03-08T03:30:00-04:00 | shifted forward: 02:30 does not exist on 2026-03-08",
    "2026-03-09T02:30:00-04:00",
  ]);
  assert.deepEqual(utc(r, "2026-03-07T12:00:00Z", 1), ["2026-03-08T07:30:00.000Z"]);
  assert.deepEqual(lines({ ...r, nonexistent: "skip" }, "2026-03-07T12:00:00Z", 1), [
    "2026-03-09T02:30:00-04:00",
  ]);
});

test("America/New_York fall back (2026-11-01): 01:30 happens twice", () => {
  const r = rules({ timeZone: "America/New_York", cron: "0 30 1 * * *" });
  assert.deepEqual(lines({ ...r, ambiguous: "first" }, "2026-11-01T00:00:00Z", 1), [
    "2026-11-01T01:30:00-04:00 | first of two 01:30",
  ]);
  assert.deepEqual(lines({ ...r, ambiguous: "last" }, "2026-11-01T00:00:00Z", 1), [
    "2026-11-01T01:30:00-05:00 | second of two 01:30",
  ]);
  assert.deepEqual(utc({ ...r, ambiguous: "both" }, "2026-11-01T00:00:00Z", 3), [
    "2026-11-01T05:30:00.000Z",
    "2026-11-01T06:30:00.000Z",
    "2026-11-02T06:30:00.000Z",
  ]);
});

test("every 30 minutes across Berlin's fall back under BOTH comes out in instant order", () => {
  assert.deepEqual(
    utc(
      rules({ timeZone: "Europe/Berlin", cron: "0 */30 * * * *", ambiguous: "both" }),
      "2026-10-24T23:30:00Z",
      6,
    ),
    [
      "2026-10-24T23:30:00.000Z",
      "2026-10-25T00:00:00.000Z",
      "2026-10-25T00:30:00.000Z",
      "2026-10-25T01:00:00.000Z",
      "2026-10-25T01:30:00.000Z",
      "2026-10-25T02:00:00.000Z",
    ],
  );
});

test("every 30 minutes across Berlin's spring forward: a shifted time that exists anyway fires once", () => {
  assert.deepEqual(
    lines(rules({ timeZone: "Europe/Berlin", cron: "0 */30 * * * *" }), "2026-03-29T00:30:00Z", 3),
    ["2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00"],
  );
});

test("Australia/Lord_Howe's 30-minute shifts", () => {
  const back = rules({ timeZone: "Australia/Lord_Howe", cron: "0 45 1 * * *" });
  // 2026-04-05 02:00 (+11) -> 01:30 (+10:30): 01:45 happens twice.
  assert.deepEqual(lines({ ...back, ambiguous: "both" }, "2026-04-04T12:00:00Z", 3), [
    "2026-04-05T01:45:00+11:00 | first of two 01:45",
    "2026-04-05T01:45:00+10:30 | second of two 01:45",
    "2026-04-06T01:45:00+10:30",
  ]);
  const forward = rules({ timeZone: "Australia/Lord_Howe", cron: "0 15 2 * * *" });
  // 2026-10-04 02:00 (+10:30) -> 02:30 (+11): 02:15 does not exist, shifts to 02:45.
  assert.deepEqual(lines(forward, "2026-10-03T12:00:00Z", 2), [
    "2026-10-04T02:45:00+11:00 | shifted forward: 02:15 does not exist on 2026-10-04",
    "2026-10-05T02:15:00+11:00",
  ]);
  assert.deepEqual(lines({ ...forward, nonexistent: "skip" }, "2026-10-03T12:00:00Z", 1), [
    "2026-10-05T02:15:00+11:00",
  ]);
});

test("Asia/Tokyo has no transitions: every policy gives the same instants", () => {
  const expected = ["2026-03-29T02:30:00+09:00", "2026-03-30T02:30:00+09:00"];
  for (const nonexistent of ["shift_forward", "skip"] as const) {
    for (const ambiguous of ["first", "last", "both"] as const) {
      assert.deepEqual(
        lines(rules({ timeZone: "Asia/Tokyo", nonexistent, ambiguous }), "2026-03-28T12:00:00Z", 2),
        expected,
      );
    }
  }
});

test("a cron on Feb 29 next fires in 2028", () => {
  assert.deepEqual(utc(rules({ cron: "0 0 12 29 2 *" }), "2026-03-01T00:00:00Z", 2), [
    "2028-02-29T12:00:00.000Z",
    "2032-02-29T12:00:00.000Z",
  ]);
});

test("a cron that never matches ends with an error, not a loop", () => {
  assert.throws(() => firingInstants(rules({ cron: "0 0 0 30 2 *" }), NOW, 1), ScheduleSearchError);
  assert.throws(
    () =>
      checkScheduleSpec(
        create(ScheduleSpecSchema, { recurrence: { case: "cron", value: "0 0 0 30 2 *" } }),
        "spec",
        NOW,
      ),
    (err: unknown) => err instanceof SpecError && err.field === "spec.cron",
  );
});

test("five-field cron fires on the minute", () => {
  assert.deepEqual(utc(rules({ cron: "*/15 * * * *" }), "2026-01-01T00:07:00Z", 2), [
    "2026-01-01T00:15:00.000Z",
    "2026-01-01T00:30:00.000Z",
  ]);
});

test("an interval counts from the epoch plus its offset, in any zone", () => {
  const r: ScheduleRules = {
    ...rules({ timeZone: "Europe/Berlin" }),
    recurrence: { kind: "interval", intervalMs: 3_600_000, offsetMs: 900_000 },
  };
  // Hourly at :15 UTC straight through the 01:00Z transition: the local hour 02 never shows.
  assert.deepEqual(lines(r, "2026-03-29T00:10:00Z", 3), [
    "2026-03-29T01:15:00+01:00",
    "2026-03-29T03:15:00+02:00",
    "2026-03-29T04:15:00+02:00",
  ]);
});

test("start is inclusive, end exclusive, and the count is respected", () => {
  const start = Date.parse("2026-05-02T02:30:00Z");
  const end = Date.parse("2026-05-05T02:30:00Z");
  const r = rules({ startMs: start, endMs: end });
  assert.deepEqual(utc(r, "2026-05-01T00:00:00Z", 10), [
    "2026-05-02T02:30:00.000Z",
    "2026-05-03T02:30:00.000Z",
    "2026-05-04T02:30:00.000Z",
  ]);
  assert.equal(firingInstants(r, Date.parse("2026-05-01T00:00:00Z"), 2).length, 2);
  assert.deepEqual(firingInstants(r, end, 5), []);
});

test("an every-second cron in a DST zone answers quickly (the advancer calls it every poll)", () => {
  const r = rules({ timeZone: "Europe/Berlin", cron: "* * * * * *" });
  const firings = firingInstants(r, Date.parse("2026-06-01T10:00:00.200Z"), 1000);
  assert.equal(firings.length, 1000);
  assert.equal(new Date(firings[0]?.instantMs ?? 0).toISOString(), "2026-06-01T10:00:01.000Z");
});

test("jitter is deterministic per schedule and instant, and within bounds", () => {
  assert.equal(jitterFor("s", 1000, 0), 0);
  const a = jitterFor("s", 1000, 60_000);
  assert.equal(jitterFor("s", 1000, 60_000), a);
  assert.ok(a >= 0 && a <= 60_000);
  const spread = new Set(Array.from({ length: 50 }, (_, i) => jitterFor("s", i * 1000, 60_000)));
  assert.ok(spread.size > 40);
});

test("spec defaults follow the proto", () => {
  const r = checkScheduleSpec(
    create(ScheduleSpecSchema, { recurrence: { case: "cron", value: "0 30 2 * * *" } }),
    "spec",
    NOW,
  );
  assert.equal(r.timeZone, "UTC");
  assert.equal(r.nonexistent, "shift_forward");
  assert.equal(r.ambiguous, "first");
  assert.equal(r.missed, "latest_only");
  assert.equal(r.overlap, "allow");
  assert.equal(r.catchUpWindowMs, 3_600_000);
  assert.equal(r.jitterMs, 0);
  const explicit = checkScheduleSpec(
    create(ScheduleSpecSchema, {
      recurrence: { case: "cron", value: "0 30 2 * * *" },
      nonexistentTimePolicy: NonexistentTimePolicy.SKIP,
      ambiguousTimePolicy: AmbiguousTimePolicy.BOTH,
      missedFiringPolicy: MissedFiringPolicy.ALL,
    }),
    "spec",
    NOW,
  );
  assert.deepEqual([explicit.nonexistent, explicit.ambiguous, explicit.missed], ["skip", "both", "all"]);
});

test("spec errors name the field", () => {
  const cases: [Parameters<typeof create<typeof ScheduleSpecSchema>>[1], string][] = [
    [{ recurrence: { case: "cron", value: "0 30 2 * * *" }, timeZone: "Mars/Olympus" }, "spec.time_zone"],
    [{ recurrence: { case: "cron", value: "not a cron" } }, "spec.cron"],
    [{ recurrence: { case: "cron", value: "0 0 0 1 1 * 2030" } }, "spec.cron"],
    [{}, "spec"],
    [{ recurrence: { case: "interval", value: {} } }, "spec.interval.interval"],
    [{ recurrence: { case: "interval", value: { interval: { seconds: 0n } } } }, "spec.interval.interval"],
    [
      { recurrence: { case: "interval", value: { interval: { seconds: 1n, nanos: 500_000_000 } } } },
      "spec.interval.interval",
    ],
    [
      { recurrence: { case: "interval", value: { interval: { seconds: BigInt(367 * 86400) } } } },
      "spec.interval.interval",
    ],
    [
      { recurrence: { case: "interval", value: { interval: { seconds: 60n }, offset: { seconds: 60n } } } },
      "spec.interval.offset",
    ],
    [{ recurrence: { case: "cron", value: "* * * * *" }, jitter: { seconds: 3601n } }, "spec.jitter"],
    [
      { recurrence: { case: "cron", value: "* * * * *" }, catchUpWindow: { seconds: 0n, nanos: 1_000_000 } },
      "spec.catch_up_window",
    ],
    [
      { recurrence: { case: "cron", value: "* * * * *" }, catchUpWindow: { seconds: BigInt(8 * 86400) } },
      "spec.catch_up_window",
    ],
    [
      {
        recurrence: { case: "cron", value: "* * * * *" },
        startTime: { seconds: 1_800_000_000n },
        endTime: { seconds: 1_700_000_000n },
      },
      "spec.end_time",
    ],
    [
      { recurrence: { case: "cron", value: "* * * * *" }, missedFiringPolicy: 9 as MissedFiringPolicy },
      "spec.missed_firing_policy",
    ],
    [
      { recurrence: { case: "cron", value: "* * * * *" }, overlapPolicy: 9 as OverlapPolicy },
      "spec.overlap_policy",
    ],
    [
      { recurrence: { case: "cron", value: "* * * * *" }, ambiguousTimePolicy: 9 as AmbiguousTimePolicy },
      "spec.ambiguous_time_policy",
    ],
    [
      { recurrence: { case: "cron", value: "* * * * *" }, nonexistentTimePolicy: 9 as NonexistentTimePolicy },
      "spec.nonexistent_time_policy",
    ],
  ];
  for (const [init, field] of cases) {
    assert.throws(
      () => checkScheduleSpec(create(ScheduleSpecSchema, init), "spec", NOW),
      (err: unknown) => err instanceof SpecError && err.field === field,
      `expected an error naming ${field} for ${JSON.stringify(init, (_, v: unknown) => (typeof v === "bigint" ? String(v) : v))}`,
    );
  }
});
