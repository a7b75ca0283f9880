// The waiting room in front of the create INSERTs. Creates from concurrent callers are gathered
// into batches, at most `maxConcurrentBatches` in flight; the rest wait here. While Postgres
// hangs, nothing leaves the queue, so it is bounded (CREATE_QUEUE_MAX: beyond it a create is
// refused at once with RESOURCE_EXHAUSTED), and a create whose caller gave up (deadline passed,
// or cancelled) while it waited is taken out and never inserted: inserting it later would store
// a timer nobody was told about, and a retried create with a server-made id would become a
// second timer.
//
// A CreateTimers call is a batch already, so it is not split up and merged with unary creates
// (that would break its one INSERT into several); but it does not bypass the queue either: N
// concurrent calls would put N statements on Postgres, and while Postgres hangs their creates
// would pile up in memory unbounded. It waits here as one unit (runWhole), counted as its number
// of creates against CREATE_QUEUE_MAX, and takes a batch slot of its own, so unary and batch
// creates together never have more than `maxConcurrentBatches` statements in flight, and a call
// whose caller gave up before its turn is never stored, as for unary creates.
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

interface Wait {
  reject(e: unknown): void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

/** A create to run in a batch with others (add). */
interface WaitingItem<T, R> extends Wait {
  kind: "item";
  item: T;
  resolve(v: R): void;
}

/** A batch formed already (runWhole): it takes a slot alone, and counts as `weight` creates. */
interface WaitingWhole extends Wait {
  kind: "whole";
  weight: number;
  run(): void;
}

type Waiting<T, R> = WaitingItem<T, R> | WaitingWhole;

/** A bounded batching queue; items whose signal aborts while they wait are dropped. */
export class CreateQueue<T, R> {
  private waiting: Waiting<T, R>[] = [];
  /** Creates waiting: items, plus the weight of each whole unit. */
  private waitingCreates = 0;
  private inFlight = 0;

  constructor(
    private readonly run: RunBatch<T, R>,
    private readonly opts: CreateQueueOptions,
  ) {}

  /** Creates waiting for a batch slot (a unit run whole counts as its weight). */
  get queued(): number {
    return this.waitingCreates;
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
    return new Promise<R>((resolve, reject) =>
      this.enqueue({ kind: "item", item, resolve, reject, signal, onAbort: undefined }, 1),
    );
  }

  /**
   * Runs `job` (a batch formed already, `weight` creates) alone in a batch slot, in turn with
   * the items waiting before it. Refused like add() when the queue has no room for `weight`
   * more creates, unless nothing waits: a unit larger than the whole queue still gets its turn.
   * When `signal` aborts before the job starts, it never runs; once started it is awaited.
   */
  runWhole<J>(weight: number, job: () => Promise<J>, signal?: AbortSignal): Promise<J> {
    return new Promise<J>((resolve, reject) => {
      this.enqueue(
        {
          kind: "whole",
          weight,
          // The slot is free before the caller goes on.
          run: () =>
            void job()
              .finally(() => this.finished())
              .then(resolve, reject),
          reject,
          signal,
          onAbort: undefined,
        },
        weight,
      );
    });
  }

  private enqueue(w: Waiting<T, R>, weight: number): void {
    const { signal } = w;
    if (signal?.aborted) {
      w.reject(abandoned(signal));
      return;
    }
    if (this.waiting.length > 0 && this.waitingCreates + weight > this.opts.maxQueued) {
      w.reject(
        new ConnectError(
          `too many creates are waiting for the database. The queue holds at most ${this.opts.maxQueued} (CREATE_QUEUE_MAX). Retry with backoff`,
          Code.ResourceExhausted,
        ),
      );
      return;
    }
    if (signal) {
      w.onAbort = () => {
        const i = this.waiting.indexOf(w);
        if (i < 0) return; // already in a batch
        this.waiting.splice(i, 1);
        this.waitingCreates -= weight;
        w.reject(abandoned(signal));
      };
      signal.addEventListener("abort", w.onAbort, { once: true });
    }
    this.waiting.push(w);
    this.waitingCreates += weight;
    this.pump();
  }

  private finished(): void {
    this.inFlight--;
    this.pump();
  }

  private pump(): void {
    while (this.waiting.length > 0 && this.inFlight < this.opts.maxConcurrentBatches) {
      const head = this.waiting[0]!;
      if (head.kind === "whole") {
        this.waiting.shift();
        this.waitingCreates -= head.weight;
        if (head.onAbort) head.signal!.removeEventListener("abort", head.onAbort);
        this.inFlight++;
        head.run();
        continue;
      }
      // Items up to maxBatch, stopping at a unit run whole.
      const batch: WaitingItem<T, R>[] = [];
      for (const w of this.waiting) {
        if (w.kind !== "item" || batch.length === this.opts.maxBatch) break;
        batch.push(w);
      }
      this.waiting.splice(0, batch.length);
      this.waitingCreates -= batch.length;
      // From here on the item is inserted whatever its caller does.
      for (const w of batch) if (w.onAbort) w.signal!.removeEventListener("abort", w.onAbort);
      this.inFlight++;
      this.run(batch.map((w) => w.item))
        .then(
          (results) => {
            batch.forEach((w, i) => {
              const r = results[i];
              if (!r)
                w.reject(new Error(`batch returned ${results.length} results for ${batch.length} items`));
              else if (r.status === "fulfilled") w.resolve(r.value);
              else w.reject(r.reason);
            });
          },
          (err: unknown) => {
            for (const w of batch) w.reject(err);
          },
        )
        .finally(() => this.finished());
    }
  }
}

/** Why a waiting create was dropped: its caller's deadline passed, or the caller cancelled. */
function abandoned(signal: AbortSignal): ConnectError {
  const reason: unknown = signal.reason;
  const deadline = reason instanceof ConnectError && reason.code === Code.DeadlineExceeded;
  return deadline
    ? new ConnectError(
        "the deadline passed while the create waited for the database. It was not stored",
        Code.DeadlineExceeded,
      )
    : new ConnectError(
        "the call was cancelled while the create waited for the database. It was not stored",
        Code.Canceled,
      );
}
