// Which firings of a schedule to create now: pure, no I/O. Used when a schedule is created,
// updated or resumed (timer service) and by the advancer (dispatchers), so both apply the
// missed-firing policy and the "next firing always exists" rule the same way.

import {
  type FiringInstant,
  type ScheduleRules,
  ScheduleSearchError,
  firingInstants,
  jitterFor,
} from "./schedule-instants.js";

export interface PlannedFiring {
  readonly instantMs: number;
  readonly fireAtMs: number;
}

export interface FiringPlan {
  /** Firings to create, oldest first. */
  readonly firings: readonly PlannedFiring[];
  /** Instants passed over because of a policy. */
  readonly skipped: number;
  /** The instant of the latest firing planned (or passed over), to store as last_instant. */
  readonly lastInstantMs: number | null;
  /** No instant follows: the schedule has ended. */
  readonly completed: boolean;
}

export interface PlanInput {
  readonly scheduleId: string;
  readonly rules: ScheduleRules;
  /** The instant of the latest firing created so far; null before the first. */
  readonly lastInstantMs: number | null;
  /** Where the first firing may be when there is none yet (start_time, or the creation time). */
  readonly firstFromMs: number;
  readonly nowMs: number;
  /** Firings due within this of now are followed by the next one already now. */
  readonly leadMs: number;
  /** At most this many firings per plan; the rest are planned by the next call. */
  readonly maxFirings: number;
}

/** How many instants a plan counts when it passes over missed ones (they are only counted). */
const MAX_COUNTED = 10_000;
const BATCH = 64;

/** Instants in [fromMs, beforeMs), at most `limit`, plus whether the schedule ended before beforeMs. */
function instantsBetween(
  rules: ScheduleRules,
  fromMs: number,
  beforeMs: number,
  limit: number,
): { list: FiringInstant[]; ended: boolean } {
  const list: FiringInstant[] = [];
  let from = fromMs;
  while (list.length < limit) {
    const want = Math.min(BATCH, limit - list.length);
    const batch = firingInstants(rules, from, want);
    for (const f of batch) {
      if (f.instantMs >= beforeMs) return { list, ended: false };
      list.push(f);
    }
    const last = batch[batch.length - 1];
    if (last === undefined || batch.length < want) return { list, ended: true };
    from = last.instantMs + 1;
  }
  return { list, ended: false };
}

/**
 * The firings to create: missed instants (before now) by the missed-firing policy within the
 * catch-up window, then every instant due within the lead, then the first one after it, so that
 * the schedule's next firing exists. Stops early at `maxFirings` (the next call goes on).
 */
export function planFirings(input: PlanInput): FiringPlan {
  const { rules, nowMs } = input;
  const firings: PlannedFiring[] = [];
  let skipped = 0;
  let lastInstantMs = input.lastInstantMs;
  let from = input.lastInstantMs === null ? input.firstFromMs : input.lastInstantMs + 1;
  const plan = (f: FiringInstant): void => {
    skipped += f.skippedBefore;
    firings.push({
      instantMs: f.instantMs,
      fireAtMs: f.instantMs + jitterFor(input.scheduleId, f.instantMs, rules.jitterMs),
    });
    lastInstantMs = f.instantMs;
  };
  try {
    if (from < nowMs) {
      // Missed: instants that passed before a firing could be created for them.
      const windowStart = rules.missed === "skip" ? nowMs : nowMs - rules.catchUpWindowMs;
      if (from < windowStart) {
        const old = instantsBetween(rules, from, windowStart, MAX_COUNTED);
        for (const f of old.list) skipped += f.skippedBefore + 1;
        const lastOld = old.list[old.list.length - 1];
        if (lastOld !== undefined) lastInstantMs = lastOld.instantMs;
        if (old.ended) return { firings, skipped, lastInstantMs, completed: true };
        from = old.list.length >= MAX_COUNTED && lastOld !== undefined ? lastOld.instantMs + 1 : windowStart;
        if (from < windowStart) return { firings, skipped, lastInstantMs, completed: false };
      }
      const missed = instantsBetween(
        rules,
        from,
        nowMs,
        rules.missed === "all" ? input.maxFirings : MAX_COUNTED,
      );
      if (rules.missed === "all") {
        for (const f of missed.list) plan(f);
        if (firings.length >= input.maxFirings) return { firings, skipped, lastInstantMs, completed: false };
      } else {
        const latest = missed.list[missed.list.length - 1];
        for (const f of missed.list) {
          if (f !== latest) skipped += f.skippedBefore + 1;
        }
        if (latest !== undefined) plan({ ...latest, skippedBefore: 0 });
      }
      if (missed.ended) return { firings, skipped, lastInstantMs, completed: true };
      from = Math.max(from, nowMs);
    }
    // Due within the lead, and the first one after it.
    for (;;) {
      const batch = firingInstants(rules, from, BATCH);
      for (const f of batch) {
        plan(f);
        if (f.instantMs > nowMs + input.leadMs || firings.length >= input.maxFirings) {
          return { firings, skipped, lastInstantMs, completed: false };
        }
      }
      const last = batch[batch.length - 1];
      if (last === undefined || batch.length < BATCH)
        return { firings, skipped, lastInstantMs, completed: true };
      from = last.instantMs + 1;
    }
  } catch (err) {
    // A cron that stops matching within the search horizon: nothing more will fire.
    if (err instanceof ScheduleSearchError) return { firings, skipped, lastInstantMs, completed: true };
    throw err;
  }
}
