// The firing instants of a schedule: pure arithmetic over the IANA time zone database that the
// runtime's Intl carries, no I/O. A cron expression names LOCAL wall-clock times; croner
// enumerates them over wall-clock-as-UTC (where no day has a gap or a repeat), and each local
// time is then placed in the zone explicitly, so a time the clocks skip or repeat is resolved by
// the schedule's own policy instead of by whatever a cron library does at a transition.

import { createHash } from "node:crypto";
import { Cron } from "croner";

export type NonexistentPolicy = "shift_forward" | "skip";
export type AmbiguousPolicy = "first" | "last" | "both";
export type MissedPolicy = "all" | "latest_only" | "skip";
export type OverlapMode = "allow" | "skip";

export type Recurrence =
  | { readonly kind: "cron"; readonly expression: string }
  | { readonly kind: "interval"; readonly intervalMs: number; readonly offsetMs: number };

/** A validated schedule spec with every default applied (schedule-spec.ts builds it). */
export interface ScheduleRules {
  readonly recurrence: Recurrence;
  readonly timeZone: string;
  /** No instant before this. */
  readonly startMs: number | null;
  /** No instant at or after this. */
  readonly endMs: number | null;
  readonly jitterMs: number;
  readonly nonexistent: NonexistentPolicy;
  readonly ambiguous: AmbiguousPolicy;
  readonly missed: MissedPolicy;
  readonly catchUpWindowMs: number;
  readonly overlap: OverlapMode;
}

export interface FiringInstant {
  /** The nominal instant, whole seconds since the epoch in ms. */
  readonly instantMs: number;
  /** The instant in the zone, "2026-03-29T03:30:00+02:00". */
  readonly localTime: string;
  /** Why a policy moved or doubled this instant; "" when it did not. */
  readonly note: string;
  /** Local times skipped by the SKIP policy for nonexistent times since the previous instant. */
  readonly skippedBefore: number;
}

/** A cron expression with no (further) match within the search horizon. */
export class ScheduleSearchError extends Error {
  override name = "ScheduleSearchError";
}

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
/** Every UTC offset in the database lies within -12h..+14h. */
const MAX_OFFSET_MS = 14 * HOUR_MS;
const MIN_OFFSET_MS = -12 * HOUR_MS;
/** How far a cron is searched for its next match before the search gives up (a Feb 29 on a given weekday recurs every 28 years). */
const SEARCH_HORIZON_MS = 120 * 366 * DAY_MS;
/** How many local times one call may examine: a one-second cron over a DST spread of one hour stays far below it. */
const MAX_STEPS = 2_000_000;

const formatters = new Map<string, Intl.DateTimeFormat>();

function formatterFor(timeZone: string): Intl.DateTimeFormat {
  let formatter = formatters.get(timeZone);
  if (formatter === undefined) {
    formatter = new Intl.DateTimeFormat("en-US", {
      timeZone,
      hourCycle: "h23",
      year: "numeric",
      month: "numeric",
      day: "numeric",
      hour: "numeric",
      minute: "numeric",
      second: "numeric",
    });
    formatters.set(timeZone, formatter);
  }
  return formatter;
}

/** Whether the runtime knows `timeZone` as an IANA zone. */
export function isKnownTimeZone(timeZone: string): boolean {
  try {
    formatterFor(timeZone);
    return true;
  } catch {
    return false;
  }
}

/** The zone's UTC offset at `utcMs`, in ms (wall clock minus UTC). */
export function offsetAt(timeZone: string, utcMs: number): number {
  const whole = Math.floor(utcMs / 1000) * 1000;
  const parts = formatterFor(timeZone).formatToParts(new Date(whole));
  const field = (type: Intl.DateTimeFormatPartTypes): number => {
    const part = parts.find((p) => p.type === type);
    return part === undefined ? 0 : Number(part.value);
  };
  const wall = Date.UTC(
    field("year"),
    field("month") - 1,
    field("day"),
    field("hour"),
    field("minute"),
    field("second"),
  );
  return wall - whole;
}

function pad(value: number, width = 2): string {
  return String(value).padStart(width, "0");
}

/** "2026-03-29T03:30:00+02:00": `utcMs` on the zone's wall clock with its offset. */
export function localTimeOf(timeZone: string, utcMs: number): string {
  const offset = offsetAt(timeZone, utcMs);
  const wall = new Date(utcMs + offset).toISOString().slice(0, 19);
  const sign = offset < 0 ? "-" : "+";
  const minutes = Math.abs(offset) / 60_000;
  return `${wall}${sign}${pad(Math.floor(minutes / 60))}:${pad(minutes % 60)}`;
}

/** "02:30" (or "02:30:15" when the seconds are not zero) of a wall-clock-as-UTC time. */
function clockOf(localMs: number): string {
  const text = new Date(localMs).toISOString();
  return text.slice(17, 19) === "00" ? text.slice(11, 16) : text.slice(11, 19);
}

type Placement =
  | { readonly kind: "single"; readonly instantMs: number }
  | { readonly kind: "gap"; readonly shiftedMs: number }
  | { readonly kind: "repeated"; readonly firstMs: number; readonly lastMs: number };

/**
 * Where the local wall-clock time `localMs` (as if UTC) falls in the zone. The candidates are
 * the offsets in force around it (every instant of that wall time lies within -14h..+12h of it);
 * an offset is right when the zone has it at the instant it gives.
 */
export function placeLocalTime(timeZone: string, localMs: number): Placement {
  const candidates = new Set<number>();
  for (const probe of [-MAX_OFFSET_MS, -6 * HOUR_MS, 0, 6 * HOUR_MS, -MIN_OFFSET_MS]) {
    candidates.add(offsetAt(timeZone, localMs + probe));
  }
  const valid: number[] = [];
  for (const offset of candidates) {
    if (offsetAt(timeZone, localMs - offset) === offset) valid.push(localMs - offset);
  }
  valid.sort((a, b) => a - b);
  const first = valid[0];
  const last = valid[valid.length - 1];
  if (first !== undefined && last !== undefined) {
    return first === last
      ? { kind: "single", instantMs: first }
      : { kind: "repeated", firstMs: first, lastMs: last };
  }
  // A gap: clocks sprang forward over it, so the offset before the transition is the smallest;
  // with it the wall time lands the same distance past the transition (RFC 5545, java.time).
  const before = Math.min(...candidates);
  return { kind: "gap", shiftedMs: localMs - before };
}

const spreads = new Map<string, number>();

/**
 * How far apart the zone's offsets lie in `year` (sampled twice a day), memoized: how far a
 * later local time's instant can fall before an earlier one's. 0 for a zone without DST.
 */
function yearSpread(timeZone: string, year: number): number {
  const key = `${timeZone}\u0000${year}`;
  let spread = spreads.get(key);
  if (spread === undefined) {
    let low = Number.POSITIVE_INFINITY;
    let high = Number.NEGATIVE_INFINITY;
    for (let t = Date.UTC(year, 0, 1) - DAY_MS; t <= Date.UTC(year + 1, 0, 1) + DAY_MS; t += DAY_MS / 2) {
      const offset = offsetAt(timeZone, t);
      low = Math.min(low, offset);
      high = Math.max(high, offset);
    }
    spread = high - low;
    spreads.set(key, spread);
  }
  return spread;
}

/** The offset spread around `utcMs`: its year and the neighbouring ones. */
function spreadAround(timeZone: string, utcMs: number): number {
  const year = new Date(utcMs).getUTCFullYear();
  return Math.max(yearSpread(timeZone, year - 1), yearSpread(timeZone, year), yearSpread(timeZone, year + 1));
}

/** Whether the zone keeps one offset for two days either side of `utcMs` (no transition near it). */
function steadyAround(timeZone: string, utcMs: number): boolean {
  const offset = offsetAt(timeZone, utcMs);
  return (
    offsetAt(timeZone, utcMs - 2 * DAY_MS) === offset && offsetAt(timeZone, utcMs + 2 * DAY_MS) === offset
  );
}

interface Pending {
  readonly instantMs: number;
  readonly localMs: number;
  readonly note: string;
  readonly skip: boolean;
}

/** Inserts in instant order; at one instant an unmoved local time goes before a shifted one. */
function insertPending(pending: Pending[], entry: Pending): void {
  let index = pending.length;
  while (index > 0) {
    const previous = pending[index - 1];
    if (previous === undefined) break;
    if (previous.instantMs < entry.instantMs) break;
    if (previous.instantMs === entry.instantMs && (previous.note === "" || entry.note !== "")) break;
    index -= 1;
  }
  pending.splice(index, 0, entry);
}

/** The instants (with notes) that the local time `localMs` gives under the policies. */
function resolve(rules: ScheduleRules, localMs: number): Pending[] {
  const placement = placeLocalTime(rules.timeZone, localMs);
  const day = new Date(localMs).toISOString().slice(0, 10);
  const clock = clockOf(localMs);
  if (placement.kind === "single")
    return [{ instantMs: placement.instantMs, localMs, note: "", skip: false }];
  if (placement.kind === "gap") {
    if (rules.nonexistent === "skip") {
      return [
        {
          instantMs: placement.shiftedMs,
          localMs,
          note: `skipped: ${clock} does not exist on ${day}`,
          skip: true,
        },
      ];
    }
    return [
      {
        instantMs: placement.shiftedMs,
        localMs,
        note: `shifted forward: ${clock} does not exist on ${day}`,
        skip: false,
      },
    ];
  }
  const first: Pending = {
    instantMs: placement.firstMs,
    localMs,
    note: `first of two ${clock}`,
    skip: false,
  };
  const second: Pending = {
    instantMs: placement.lastMs,
    localMs,
    note: `second of two ${clock}`,
    skip: false,
  };
  if (rules.ambiguous === "first") return [first];
  if (rules.ambiguous === "last") return [second];
  return [first, second];
}

function cronOf(expression: string): Cron {
  // Wall-clock-as-UTC: croner's own DST handling never comes into play.
  return new Cron(expression, { timezone: "UTC", paused: true, mode: "5-or-6-parts" });
}

/** Parses a cron expression the way schedules read it; throws croner's error when it is malformed. */
export function parseCron(expression: string): void {
  cronOf(expression).stop();
}

function cronInstants(
  rules: ScheduleRules,
  expression: string,
  fromMs: number,
  count: number,
): FiringInstant[] {
  const zone = rules.timeZone;
  const cron = cronOf(expression);
  const result: FiringInstant[] = [];
  const pending: Pending[] = [];
  let skippedBefore = 0;
  let lastEmitted = Number.NEGATIVE_INFINITY;
  // The wall clock only runs back (by at most the spread) when clocks fall back, so every local
  // time whose instant is at or after fromMs is at least fromMs's wall time minus the spread.
  let spread = spreadAround(zone, fromMs);
  const rewind = steadyAround(zone, fromMs) ? 0 : spread;
  let cursor: Date = new Date(fromMs + offsetAt(zone, fromMs) - rewind - 1);
  let spreadYear = cursor.getUTCFullYear();
  const horizon = fromMs + SEARCH_HORIZON_MS;
  let steps = 0;
  // An instant is final once no later local time can give an earlier one: the next local time
  // is more than the spread past it, or no transition is near it at all.
  const final = (head: Pending, nextLocalMs: number): boolean =>
    nextLocalMs > head.localMs + spread || spread === 0 || steadyAround(zone, head.instantMs);
  const flush = (nextLocalMs: number): boolean => {
    for (let head = pending[0]; head !== undefined && final(head, nextLocalMs); head = pending[0]) {
      pending.shift();
      if (head.instantMs < fromMs || head.instantMs <= lastEmitted) continue;
      if (rules.endMs !== null && head.instantMs >= rules.endMs) return true;
      if (head.skip) {
        skippedBefore += 1;
        continue;
      }
      result.push({
        instantMs: head.instantMs,
        localTime: localTimeOf(zone, head.instantMs),
        note: head.note,
        skippedBefore,
      });
      skippedBefore = 0;
      lastEmitted = head.instantMs;
      if (result.length >= count) return true;
    }
    return false;
  };
  try {
    for (;;) {
      const next: Date | null = cron.nextRun(cursor);
      if (next === null) {
        // croner proved there is no further match: what is pending is all there will be.
        flush(Number.POSITIVE_INFINITY);
        if (result.length === 0 && lastEmitted === Number.NEGATIVE_INFINITY && steps === 0) {
          throw new ScheduleSearchError(`"${expression}" never matches`);
        }
        return result;
      }
      const localMs = next.getTime();
      if (next.getUTCFullYear() > spreadYear) {
        spreadYear = next.getUTCFullYear();
        spread = Math.max(spread, spreadAround(zone, localMs));
      }
      if (flush(localMs)) return result;
      steps += 1;
      if (localMs > horizon || steps > MAX_STEPS) {
        if (result.length > 0) return result;
        throw new ScheduleSearchError(
          `no firing of "${expression}" found within ${Math.round(SEARCH_HORIZON_MS / DAY_MS / 366)} years`,
        );
      }
      for (const entry of resolve(rules, localMs)) insertPending(pending, entry);
      cursor = next;
    }
  } finally {
    cron.stop();
  }
}

function intervalInstants(
  rules: ScheduleRules,
  intervalMs: number,
  offsetMs: number,
  fromMs: number,
  count: number,
): FiringInstant[] {
  const result: FiringInstant[] = [];
  let k = Math.ceil((fromMs - offsetMs) / intervalMs);
  while (result.length < count) {
    const instantMs = offsetMs + k * intervalMs;
    if (rules.endMs !== null && instantMs >= rules.endMs) break;
    result.push({ instantMs, localTime: localTimeOf(rules.timeZone, instantMs), note: "", skippedBefore: 0 });
    k += 1;
  }
  return result;
}

/**
 * Up to `count` firing instants at or after `fromMs` (and the spec's start, before its end),
 * soonest first, each once. Throws ScheduleSearchError when a cron never matches within the
 * search horizon; an empty result means the schedule has ended.
 */
export function firingInstants(rules: ScheduleRules, fromMs: number, count: number): FiringInstant[] {
  if (count <= 0) return [];
  // Instants are whole seconds: the first candidate is the first whole second at or after the bound.
  const lower = Math.ceil(Math.max(fromMs, rules.startMs ?? Number.NEGATIVE_INFINITY) / 1000) * 1000;
  if (rules.recurrence.kind === "interval") {
    return intervalInstants(rules, rules.recurrence.intervalMs, rules.recurrence.offsetMs, lower, count);
  }
  return cronInstants(rules, rules.recurrence.expression, lower, count);
}

/**
 * The jitter of one firing: a pseudo-random delay in [0, jitterMs], whole ms, fixed by the
 * schedule id and the instant so that a replayed creation (after a restart, or by another
 * dispatcher) computes the same fire_at.
 */
export function jitterFor(scheduleId: string, instantMs: number, jitterMs: number): number {
  if (jitterMs <= 0) return 0;
  const digest = createHash("sha256").update(`${scheduleId}@${instantMs}`).digest();
  return digest.readUInt32BE(0) % (jitterMs + 1);
}
