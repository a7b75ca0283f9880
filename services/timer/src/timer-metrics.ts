// The timer service's own metrics (names from the operations document).
import type { Meter } from "@opentelemetry/api";
import { GaugeSeries } from "../../shared/src/telemetry/gauge-series.js";
import { counter, observableGauge } from "../../shared/src/telemetry/instruments.js";
import type { RecountListener } from "./active-timer-recount.js";

/**
 * Counters the CreateTimer and CreateTimers handlers update, in creates (a CreateTimers call
 * counts each of its items); active_timers_total follows the recount.
 */
export interface TimerMetrics extends RecountListener {
  attempt(n?: number): void;
  created(n?: number): void;
  failed(code: string, n?: number): void;
}

// active_timers_total has one series per group: only the largest groups get their own, the rest
// are summed under "_other", so a tenant with a million groups cannot blow up Prometheus.
const TOP_GROUPS = 50;

/** The largest `top` groups by active timers (ties by group id), the rest summed as "_other". */
export function largestGroups(
  activeByGroup: ReadonlyMap<string, number>,
  top: number,
): { group_id: string; n: number }[] {
  const sorted = [...activeByGroup].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const out = sorted.slice(0, top).map(([group_id, n]) => ({ group_id, n }));
  const rest = sorted.slice(top).reduce((sum, [, n]) => sum + n, 0);
  if (sorted.length > top) out.push({ group_id: "_other", n: rest });
  return out;
}

/** Creates the timer service's instruments; active_timers_total is set from each recount (active-timer-recount.ts). */
export function createTimerMetrics(meter: Meter): TimerMetrics {
  const attempts = counter(meter, "timer_creation_attempts_total");
  const creations = counter(meter, "timer_creations_total");
  const failures = counter(meter, "timer_creation_failures_total");
  // Present from the first scrape, so rate() has a starting point.
  attempts.add(0);
  creations.add(0);
  let active: { group_id: string; n: number }[] = [];
  // A group whose timers all finished (or that left the largest 50) must drop to 0.
  const activeSeries = new GaugeSeries();
  observableGauge(meter, "active_timers_total").addCallback((r) =>
    activeSeries.observe(
      r,
      active.map((a) => ({ attributes: { group_id: a.group_id }, value: a.n })),
    ),
  );
  return {
    attempt: (n = 1) => attempts.add(n),
    created: (n = 1) => creations.add(n),
    failed: (code, n = 1) => failures.add(n, { code }),
    recountStarting: () => (result) => {
      if (result) active = largestGroups(result.activeByGroup, TOP_GROUPS);
    },
  };
}
