// The waiting room in front of the create INSERTs. Creates from concurrent callers are gathered
// into batches, at most `maxConcurrentBatches` in flight; the rest wait here. While Postgres
// hangs, nothing leaves the queue, so it is bounded (CREATE_QUEUE_MAX: beyond it a create is
// refused at once with RESOURCE_EXHAUSTED), and a create whose caller gave up (deadline passed,
// or cancelled) while it waited is taken out and never inserted: inserting it later would store
// a timer nobody was told about, and a retried create with a server-made id would become a
// second timer.
import { Code, ConnectError } from "@connectrpc/connect";

/** Settles one batch: one result per item, in order; a rejection settles every item with it. */
export type RunBatch<T, R> = (items: T[]) => Promise<PromiseSettledResult<R>[]>;

export interface CreateQueueOptions {
  /** Creates allowed to wait for a batch slot (CREATE_QUEUE_MAX). */
  maxQueued: number;
  /** Items per batch. */
  maxBatch: number;
  /** Batches in flight at once. */
  maxConcurrentBatches: number;
}

interface Waiting<T, R> {
  item: T;
  resolve(v: R): void;
  reject(e: unknown): void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

/** A bounded batching queue; items whose signal aborts while they wait are dropped. */
export class CreateQueue<T, R> {
  private waiting: Waiting<T, R>[] = [];
  private inFlight = 0;

  constructor(
    private readonly run: RunBatch<T, R>,
    private readonly opts: CreateQueueOptions,
  ) {}

  /** Items waiting for a batch slot. */
  get queued(): number {
    return this.waiting.length;
  }

  /** Batches being run. */
  get running(): number {
    return this.inFlight;
  }

  /**
   * Runs `item` in a batch. Rejects with RESOURCE_EXHAUSTED when `maxQueued` items already wait,
   * and with DEADLINE_EXCEEDED or CANCELLED (the item not run) when `signal` aborts before its
   * batch starts. Once its batch has started, the item's result is awaited whatever the signal.
   */
  add(item: T, signal?: AbortSignal): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      if (signal?.aborted) return reject(abandoned(signal));
      if (this.waiting.length >= this.opts.maxQueued) {
        return reject(
          new ConnectError(
            `too many creates are waiting for the database. The queue holds at most ${this.opts.maxQueued} (CREATE_QUEUE_MAX). Retry with backoff`,
            Code.ResourceExhausted,
          ),
        );
      }
      const w: Waiting<T, R> = { item, resolve, reject, signal, onAbort: undefined };
      if (signal) {
        w.onAbort = () => {
          const i = this.waiting.indexOf(w);
          if (i < 0) return; // already in a batch
          this.waiting.splice(i, 1);
          reject(abandoned(signal));
        };
        signal.addEventListener("abort", w.onAbort, { once: true });
      }
      this.waiting.push(w);
      this.pump();
    });
  }

  private pump(): void {
    while (this.waiting.length > 0 && this.inFlight < this.opts.maxConcurrentBatches) {
      const batch = this.waiting.splice(0, this.opts.maxBatch);
      // From here on the item is inserted whatever its caller does.
      for (const w of batch) if (w.onAbort) w.signal!.removeEventListener("abort", w.onAbort);
      this.inFlight++;
      this.run(batch.map((w) => w.item))
        .then(
          (results) => {
            batch.forEach((w, i) => {
              const r = results[i];
              if (!r) w.reject(new Error(`batch returned ${results.length} results for ${batch.length} items`));
              else if (r.status === "fulfilled") w.resolve(r.value);
              else w.reject(r.reason);
            });
          },
          (err: unknown) => {
            for (const w of batch) w.reject(err);
          },
        )
        .finally(() => {
          this.inFlight--;
          this.pump();
        });
    }
  }
}

/** Why a waiting create was dropped: its caller's deadline passed, or the caller cancelled. */
function abandoned(signal: AbortSignal): ConnectError {
  const reason: unknown = signal.reason;
  const deadline = reason instanceof ConnectError && reason.code === Code.DeadlineExceeded;
  return deadline
    ? new ConnectError("the deadline passed while the create waited for the database. It was not stored", Code.DeadlineExceeded)
    : new ConnectError("the call was cancelled while the create waited for the database. It was not stored", Code.Canceled);
}
