// OpenTelemetry JS keeps exporting, at its last value, an attribute set that an observable
// gauge no longer observes (an SDK behaviour the specification says it should not have). For
// gauges whose labels move (a shard's owner, the largest groups) that would leave a dead
// owner's lag frozen high forever, and an alert on it firing forever. This remembers every
// attribute set observed and reports 0 for those no longer current.
import type { Attributes, ObservableResult } from "@opentelemetry/api";

/** Observes a set of labelled values, zeroing the label sets that disappeared. */
export class GaugeSeries {
  private readonly seen = new Map<string, Attributes>();

  /** Reports `current` (label set → value) and 0 for every label set seen before but absent now. */
  observe(result: ObservableResult, current: { attributes: Attributes; value: number }[]): void {
    const now = new Set<string>();
    for (const c of current) {
      const key = JSON.stringify(c.attributes);
      now.add(key);
      this.seen.set(key, c.attributes);
      result.observe(c.value, c.attributes);
    }
    for (const [key, attributes] of this.seen) if (!now.has(key)) result.observe(0, attributes);
  }
}
