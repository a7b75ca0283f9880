// Writing delivery outcomes back to Postgres. Outcomes are queued as deliveries end and written
// in batches: one statement for whatever accumulated while the previous one ran, so a burst of
// fires costs a few statements, not one per timer. A failed write is retried with backoff (the
// claims stay ours meanwhile); an outcome whose claim was taken back in the meantime is not
// recorded (dispatch-store.ts: completeAttempts), and the timer is delivered again elsewhere.
import type { Logger } from "../../shared/src/logger.js";
import type { Clock } from "./db-clock.js";
import type { Completion } from "./dispatch-store.js";
import type { DueTimer } from "./due-queue.js";
import type { SchedulerStore } from "./scheduler-deps.js";

/** An outcome waiting to be written, with the retry to hold in memory once it is (when due within the window). */
export interface PendingCompletion {
  completion: Completion;
  retryAt: DueTimer | undefined;
}

const MAX_BATCH = 1000;
const RETRY_MIN_MS = 50;
const RETRY_MAX_MS = 5_000;

/** Queues outcomes and writes them in batches, one write at a time. */
export class CompletionWriter {
  private pending: PendingCompletion[] = [];
  private flushing: Promise<void> | undefined;

  constructor(
    private readonly store: Pick<SchedulerStore, "complete">,
    private readonly clock: Clock,
    private readonly log: Logger,
    /** Called after each written batch (retries are held only once their outcome is recorded). */
    private readonly written: (batch: PendingCompletion[]) => void,
  ) {}

  /** Queues an outcome and starts a write if none is running. */
  add(p: PendingCompletion): void {
    this.pending.push(p);
    void this.flush();
  }

  /** Writes everything queued; resolves once the queue is empty (retrying failed writes until they succeed). */
  flush(): Promise<void> {
    if (this.flushing !== undefined) return this.flushing;
    if (this.pending.length === 0) return Promise.resolve();
    this.flushing = this.writeAll().finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  private async writeAll(): Promise<void> {
    let delay = RETRY_MIN_MS;
    while (this.pending.length > 0) {
      const batch = this.pending.splice(0, MAX_BATCH);
      try {
        const applied = await this.store.complete(batch.map((b) => b.completion));
        if (applied < batch.length) {
          // This process stalled or lost Postgres past those claims' deadline and another
          // dispatcher took them back: they are delivered again there (at least once).
          this.log.warn(
            { count: batch.length - applied },
            "delivery outcomes arrived after their claims were taken back; not recorded",
          );
        }
        this.written(batch);
        delay = RETRY_MIN_MS;
      } catch (err) {
        this.log.error({ err, count: batch.length }, "recording delivery outcomes failed; retrying");
        this.pending.unshift(...batch);
        await new Promise<void>((resolve) => this.clock.after(delay, resolve));
        delay = Math.min(delay * 2, RETRY_MAX_MS);
      }
    }
  }
}
