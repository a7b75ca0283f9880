// Validation of a timer.v1.ScheduleSpec into the rules the instants are computed from: pure, no
// I/O. Shared by the timer service (create, update, preview) and the dispatcher's advancer (which
// re-reads stored specs), so both apply the same defaults.

import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";
import {
  AmbiguousTimePolicy,
  MissedFiringPolicy,
  NonexistentTimePolicy,
  OverlapPolicy,
  type ScheduleSpec,
} from "./gen/timer/v1/schedule_pb.js";
import {
  type AmbiguousPolicy,
  type MissedPolicy,
  type NonexistentPolicy,
  type OverlapMode,
  type ScheduleRules,
  ScheduleSearchError,
  firingInstants,
  isKnownTimeZone,
  parseCron,
} from "./schedule-instants.js";

/** A spec field that failed validation: `field` is its full name ("spec.time_zone"). */
export class SpecError extends Error {
  override name = "SpecError";
  constructor(
    readonly field: string,
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(`${field} ${reason}`, options);
  }
}

const SECOND_MS = 1000;
const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
export const MAX_INTERVAL_MS = 366 * DAY_MS;
export const MAX_JITTER_MS = HOUR_MS;
export const MIN_CATCH_UP_WINDOW_MS = SECOND_MS;
export const MAX_CATCH_UP_WINDOW_MS = 7 * DAY_MS;
export const DEFAULT_CATCH_UP_WINDOW_MS = HOUR_MS;

function durationOf(d: Duration, field: string): number {
  if (d.seconds < 0n || d.nanos < 0 || d.nanos > 999_999_999)
    throw new SpecError(field, "must not be negative");
  return Number(d.seconds) * 1000 + Math.ceil(d.nanos / 1_000_000);
}

function wholeSeconds(d: Duration, field: string): number {
  if (d.nanos !== 0) throw new SpecError(field, "must be whole seconds");
  return durationOf(d, field);
}

function timestampOf(ts: Timestamp, field: string): number {
  if (ts.nanos < 0 || ts.nanos > 999_999_999) throw new SpecError(field, "nanos must be in [0, 999999999]");
  const ms = Number(ts.seconds) * 1000 + Math.ceil(ts.nanos / 1_000_000);
  if (ms < Date.UTC(2000, 0, 1) || ms > Date.UTC(2200, 0, 1))
    throw new SpecError(field, "must be between 2000 and 2200");
  return ms;
}

const NONEXISTENT: Record<number, NonexistentPolicy> = {
  [NonexistentTimePolicy.UNSPECIFIED]: "shift_forward",
  [NonexistentTimePolicy.SHIFT_FORWARD]: "shift_forward",
  [NonexistentTimePolicy.SKIP]: "skip",
};
const AMBIGUOUS: Record<number, AmbiguousPolicy> = {
  [AmbiguousTimePolicy.UNSPECIFIED]: "first",
  [AmbiguousTimePolicy.FIRST]: "first",
  [AmbiguousTimePolicy.LAST]: "last",
  [AmbiguousTimePolicy.BOTH]: "both",
};
const MISSED: Record<number, MissedPolicy> = {
  [MissedFiringPolicy.UNSPECIFIED]: "latest_only",
  [MissedFiringPolicy.ALL]: "all",
  [MissedFiringPolicy.LATEST_ONLY]: "latest_only",
  [MissedFiringPolicy.SKIP]: "skip",
};
const OVERLAP: Record<number, OverlapMode> = {
  [OverlapPolicy.UNSPECIFIED]: "allow",
  [OverlapPolicy.ALLOW]: "allow",
  [OverlapPolicy.SKIP]: "skip",
};

function policy<T>(table: Record<number, T>, value: number, field: string, enumName: string): T {
  const mapped = table[value];
  if (mapped === undefined) throw new SpecError(field, `is not a ${enumName} (${value})`);
  return mapped;
}

/**
 * Checks a spec (`prefix` names it in errors: "spec") and applies its defaults. A cron must
 * parse and match at least once from `nowMs` (or its start) on, so "0 0 0 30 2 *" is refused here
 * rather than leaving a schedule that never fires.
 */
export function checkScheduleSpec(
  spec: ScheduleSpec | undefined,
  prefix: string,
  nowMs: number,
): ScheduleRules {
  if (spec === undefined) throw new SpecError(prefix, "is required");
  const timeZone = spec.timeZone === "" ? "UTC" : spec.timeZone;
  if (timeZone.length > 64 || !isKnownTimeZone(timeZone)) {
    throw new SpecError(
      `${prefix}.time_zone`,
      `"${timeZone.slice(0, 64)}" is not an IANA time zone (e.g. "Europe/Berlin")`,
    );
  }
  const startMs = spec.startTime ? timestampOf(spec.startTime, `${prefix}.start_time`) : null;
  const endMs = spec.endTime ? timestampOf(spec.endTime, `${prefix}.end_time`) : null;
  if (startMs !== null && endMs !== null && endMs <= startMs) {
    throw new SpecError(`${prefix}.end_time`, "must be after start_time");
  }
  const jitterMs = spec.jitter ? durationOf(spec.jitter, `${prefix}.jitter`) : 0;
  if (jitterMs > MAX_JITTER_MS) throw new SpecError(`${prefix}.jitter`, "must be 0 to 1h");
  const catchUpWindowMs = spec.catchUpWindow
    ? durationOf(spec.catchUpWindow, `${prefix}.catch_up_window`)
    : DEFAULT_CATCH_UP_WINDOW_MS;
  if (catchUpWindowMs < MIN_CATCH_UP_WINDOW_MS || catchUpWindowMs > MAX_CATCH_UP_WINDOW_MS) {
    throw new SpecError(`${prefix}.catch_up_window`, "must be 1s to 7d (unset for 1h)");
  }
  const common = {
    timeZone,
    startMs,
    endMs,
    jitterMs,
    nonexistent: policy(
      NONEXISTENT,
      spec.nonexistentTimePolicy,
      `${prefix}.nonexistent_time_policy`,
      "NonexistentTimePolicy",
    ),
    ambiguous: policy(
      AMBIGUOUS,
      spec.ambiguousTimePolicy,
      `${prefix}.ambiguous_time_policy`,
      "AmbiguousTimePolicy",
    ),
    missed: policy(MISSED, spec.missedFiringPolicy, `${prefix}.missed_firing_policy`, "MissedFiringPolicy"),
    catchUpWindowMs,
    overlap: policy(OVERLAP, spec.overlapPolicy, `${prefix}.overlap_policy`, "OverlapPolicy"),
  };
  switch (spec.recurrence.case) {
    case "cron": {
      const expression = spec.recurrence.value.trim();
      const field = `${prefix}.cron`;
      if (expression === "" || expression.length > 256)
        throw new SpecError(field, "must be 1-256 characters");
      try {
        parseCron(expression);
      } catch (err) {
        throw new SpecError(field, `is not a cron expression of 5 or 6 fields: ${(err as Error).message}`, {
          cause: err,
        });
      }
      const rules: ScheduleRules = { ...common, recurrence: { kind: "cron", expression } };
      try {
        firingInstants({ ...rules, endMs: null }, Math.max(nowMs, startMs ?? nowMs), 1);
      } catch (err) {
        if (err instanceof ScheduleSearchError) throw new SpecError(field, err.message, { cause: err });
        throw err;
      }
      return rules;
    }
    case "interval": {
      const field = `${prefix}.interval`;
      const { interval, offset } = spec.recurrence.value;
      if (interval === undefined) throw new SpecError(`${field}.interval`, "is required");
      const intervalMs = wholeSeconds(interval, `${field}.interval`);
      if (intervalMs < SECOND_MS || intervalMs > MAX_INTERVAL_MS) {
        throw new SpecError(`${field}.interval`, "must be 1s to 366d");
      }
      const offsetMs = offset ? wholeSeconds(offset, `${field}.offset`) : 0;
      if (offsetMs >= intervalMs) throw new SpecError(`${field}.offset`, "must be less than the interval");
      return { ...common, recurrence: { kind: "interval", intervalMs, offsetMs } };
    }
    default:
      throw new SpecError(prefix, "needs a recurrence: set cron or interval");
  }
}
