// Mesh messages refused on arrival (mesh-messages.ts): counted in
// mesh_messages_dropped_total{subject,reason} and logged, at most one line per subject per
// interval (with the count since the last line), so a flood of bad messages cannot flood the
// logs or slow the receiver down.
import type { Counter, Meter } from "@opentelemetry/api";
import type { Logger } from "./logger.js";
import { counter } from "./telemetry/instruments.js";
import type { DropReason } from "./mesh-messages.js";

/** Counts and logs refused mesh messages. */
export class MeshMessageDrops {
  private readonly counter: Counter;
  private readonly pending = new Map<
    string,
    { count: number; reasons: Set<DropReason>; lastLogMs: number }
  >();

  constructor(
    meter: Meter,
    private readonly log: Logger,
    private readonly logIntervalMs = 10_000,
  ) {
    this.counter = counter(meter, "mesh_messages_dropped_total");
  }

  /**
   * Records one refused message. `subject` is the subject's kind (timers.shard.* rather than
   * each shard), so the metric has a bounded number of series.
   */
  drop(subject: string, reason: DropReason, nowMs = Date.now()): void {
    this.counter.add(1, { subject, reason });
    let p = this.pending.get(subject);
    if (!p) {
      p = { count: 0, reasons: new Set(), lastLogMs: -Infinity };
      this.pending.set(subject, p);
    }
    p.count++;
    p.reasons.add(reason);
    if (nowMs - p.lastLogMs < this.logIntervalMs) return;
    this.log.warn(
      { subject, dropped: p.count, reasons: [...p.reasons] },
      `dropped ${p.count} malformed message(s) on ${subject} (see mesh_messages_dropped_total)`,
    );
    p.count = 0;
    p.reasons.clear();
    p.lastLogMs = nowMs;
  }
}
