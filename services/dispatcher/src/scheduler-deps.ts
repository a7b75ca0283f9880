// What the scheduler needs from the world, as small interfaces. Production passes Postgres
// (dispatch-store.ts: pgDispatchStore), Postgres's measured clock (db-clock.ts: DbClock), the
// shard leases (shard-leases.ts) and the callback deliverer (delivery.ts); the unit tests pass an
// in-memory store, a fake clock and a recording deliver function, so the firing loop can be
// driven step by step without a database, a network or real time.
import type { Tracer } from "@opentelemetry/api";
import type { Logger } from "../../shared/src/logger.js";
import type { Clock } from "./db-clock.js";
import type { Delivery, DeliveryResult } from "./delivery.js";
import type { ClaimedTimer, Completion, LoadCursor } from "./dispatch-store.js";
import type { DueTimer } from "./due-queue.js";
import type { LatenessAction } from "./lateness-contract.js";

/** Which shards this dispatcher may fire. */
export interface ShardOwnership {
  /** Owned shards, ascending. */
  owned(): number[];
  owns(shard: number): boolean;
  /** Fencing epoch of our lease on the shard. */
  epochOf(shard: number): bigint;
}

/**
 * The dispatch store as the scheduler uses it: bound to this dispatcher (its id and its claim
 * owner), so the firing loop passes only timers, shards and cursors. See dispatch-store.ts for
 * what each statement guarantees (claims fenced by the lease epoch, completions by the claim).
 */
export interface SchedulerStore {
  /** Scheduled timers of `shards` due after `after` and at or before `untilMs`, in due order. */
  loadWindow(shards: number[], after: LoadCursor, untilMs: number, limit: number): Promise<DueTimer[]>;
  /** Scheduled timers of `shards` overdue by more than `graceMs`, oldest first, after `after`. */
  loadOverdue(shards: number[], graceMs: number, after: LoadCursor, limit: number): Promise<DueTimer[]>;
  /** Claims the timers still scheduled, due within `leadMs`, whose shard is ours at `epochs[i]`. */
  claim(timers: DueTimer[], epochs: bigint[], leadMs: number, claimTtlMs: number): Promise<ClaimedTimer[]>;
  /** Records outcomes of claims this process still holds; returns how many were applied. */
  complete(done: Completion[]): Promise<number>;
  /** Takes back claims of `shards` whose holder is gone past their deadline; they are due now. */
  reclaimExpired(shards: number[], limit: number): Promise<DueTimer[]>;
}

/** Sends one delivery attempt and says what came of it (never throws: a failure is a result). */
export type Deliver = (delivery: Delivery) => Promise<DeliveryResult>;

/** Observations the scheduler reports (metrics hook in here). */
export interface SchedulerEvents {
  fired?(lateMs: number): void;
  /** One delivery attempt made; `ms` is its time (tracing included) by the scheduler's clock. */
  attempted?(transport: string, result: DeliveryResult, ms: number): void;
  finished?(succeeded: boolean): void;
  /** A timer was dropped because Postgres refuses it in a claim statement even alone. */
  claimDropped?(): void;
  /** A timer's first attempt started beyond its lateness contract's max_lateness; `action` is what was done. */
  latenessExceeded?(action: LatenessAction): void;
}

/** Everything the scheduler works with besides its tuning. */
export interface SchedulerDeps {
  store: SchedulerStore;
  /**
   * Postgres's clock (db-clock.ts): fire times, claims and "never early" are all judged by it,
   * not by this machine's wall clock; the scheduler's timers go off by it too.
   */
  clock: Clock;
  deliver: Deliver;
  ownership: ShardOwnership;
  log: Logger;
  events?: SchedulerEvents;
  /** Where "fire timer" spans go (fire-tracing.ts); undefined when tracing is off. */
  tracer?: Tracer | undefined;
}
