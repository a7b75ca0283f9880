// Stand-ins for the scheduler's dependencies (services/dispatcher/src/scheduler-deps.ts): a fake
// clock that moves only when a test advances it, and an in-memory dispatch store that keeps the
// rules the SQL keeps (a claim takes only scheduled timers due within the lead whose shard's
// lease is at the epoch given, at the version held; a completion applies only to a claim still
// held, at its attempt).
import { Writable } from "node:stream";
import { pino } from "pino";
import { destinationOfJson } from "../../services/shared/src/callback-destination.js";
import type { Logger } from "../../services/shared/src/logger.js";
import type { Clock } from "../../services/dispatcher/src/db-clock.js";
import type { ClaimedTimer, Completion, LoadCursor } from "../../services/dispatcher/src/dispatch-store.js";
import type { DueTimer } from "../../services/dispatcher/src/due-queue.js";
import type { SchedulerStore, ShardOwnership } from "../../services/dispatcher/src/scheduler-deps.js";

/** Lets every promise chain that waits only on other promises run to its end. */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

interface FakeTimer {
  at: number;
  seq: number;
  fn: () => void;
}

/** A clock whose time moves only in advance(); its timers go off as time passes them. */
export class FakeClock implements Clock {
  private nowMs: number;
  private timers: FakeTimer[] = [];
  private seq = 0;

  /**
   * `earlyMs`: timers go off this much before their time, as setTimeout may by a fraction of a
   * millisecond (the scheduler must still never fire a timer early).
   */
  constructor(
    startMs: number,
    private readonly earlyMs = 0,
  ) {
    this.nowMs = startMs;
  }

  now(): number {
    return this.nowMs;
  }

  after(ms: number, fn: () => void): () => void {
    // Early only by less than the delay: a wake-up never comes before the moment it was set.
    const early = ms > this.earlyMs ? this.earlyMs : 0;
    const timer = { at: this.nowMs + Math.max(0, ms) - early, seq: this.seq++, fn };
    this.timers.push(timer);
    return () => {
      this.timers = this.timers.filter((t) => t !== timer);
    };
  }

  /** Moves time forward by `ms`, running each timer at its time and letting the work it starts settle before the next. */
  async advance(ms: number): Promise<void> {
    const until = this.nowMs + ms;
    for (;;) {
      await settle();
      const next = this.timers
        .filter((t) => t.at <= until)
        .sort((a, b) => a.at - b.at || a.seq - b.seq)
        .at(0);
      if (!next) break;
      this.timers = this.timers.filter((t) => t !== next);
      this.nowMs = Math.max(this.nowMs, next.at);
      next.fn();
    }
    this.nowMs = until;
    await settle();
  }

  /** Moves time to `atMs` (see advance). */
  advanceTo(atMs: number): Promise<void> {
    return this.advance(atMs - this.nowMs);
  }
}

/** A timer row of the in-memory store. */
export interface MemoryTimer {
  groupId: string;
  timerId: string;
  shard: number;
  state: "scheduled" | "firing" | "succeeded" | "failed" | "expired";
  fireAtMs: number;
  nextAttemptAtMs: number;
  attempt: number;
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
  /** Who holds the claim while FIRING: "us", or another dispatcher that took it back. */
  claimOwner: string | undefined;
  lastError: string | null;
  /** The lateness contract: null for none (timers.max_lateness_ms), and its policy code. */
  maxLatenessMs: number | null;
  latenessPolicy: number;
  /** When the first attempt was claimed (timers.fired_time), kept across retries. */
  firedAtMs: number | null;
  /** timers.version: raised by update(); claims are fenced by it. */
  version: number;
}

/** Where every test timer's callback goes. */
export const TEST_CALLBACK = { http: { url: "http://receiver.test/hook" } };
export const TEST_DESTINATION = destinationOfJson(TEST_CALLBACK);

const US = "us";

function key(groupId: string, timerId: string): string {
  return `${groupId}/${timerId}`;
}

function after(t: MemoryTimer, c: LoadCursor): boolean {
  if (t.nextAttemptAtMs !== c.atMs) return t.nextAttemptAtMs > c.atMs;
  if (t.groupId !== c.groupId) return t.groupId > c.groupId;
  return t.timerId > c.timerId;
}

/** The dispatch store in memory, bound to one dispatcher ("us"). */
export class MemoryStore implements SchedulerStore {
  readonly timers = new Map<string, MemoryTimer>();
  /** The epoch of our lease on each shard; a shard not here is not ours in "Postgres". */
  readonly leaseEpochs = new Map<number, bigint>();
  /** Outcomes applied, in order. */
  readonly completed: Completion[] = [];
  /** Claim statements run. */
  claimStatements = 0;
  /** Claim statements still to fail as a lost connection would. */
  failClaims = 0;

  constructor(private readonly clock: Clock) {}

  /** Adds a scheduled timer due at `dueMs` (retry policy: 3 attempts, 1 s doubling). */
  add(
    t: Pick<MemoryTimer, "groupId" | "timerId" | "shard"> & { dueMs: number } & Partial<MemoryTimer>,
  ): MemoryTimer {
    const row: MemoryTimer = {
      state: "scheduled",
      fireAtMs: t.dueMs,
      nextAttemptAtMs: t.dueMs,
      attempt: 0,
      maxAttempts: 3,
      initialBackoffMs: 1000,
      maxBackoffMs: 10_000,
      multiplier: 2,
      claimOwner: undefined,
      lastError: null,
      maxLatenessMs: null,
      latenessPolicy: 1,
      firedAtMs: null,
      version: 1,
      ...t,
    };
    this.timers.set(key(t.groupId, t.timerId), row);
    return row;
  }

  get(groupId: string, timerId: string): MemoryTimer {
    const row = this.timers.get(key(groupId, timerId));
    if (!row) throw new Error(`no timer ${groupId}/${timerId}`);
    return row;
  }

  /**
   * What UpdateTimer does to a scheduled timer: a new fire time (and next attempt, before the
   * first attempt), version raised by one. Returns the row.
   */
  update(groupId: string, timerId: string, dueMs: number): MemoryTimer {
    const row = this.get(groupId, timerId);
    if (row.state !== "scheduled") throw new Error(`timer ${groupId}/${timerId} is ${row.state}`);
    if (row.attempt === 0) row.fireAtMs = dueMs;
    row.nextAttemptAtMs = dueMs;
    row.version++;
    return row;
  }

  /** Another dispatcher takes the claim back (its deadline passed): the timer is due again, elsewhere. */
  takeBack(groupId: string, timerId: string): void {
    const row = this.get(groupId, timerId);
    row.state = "scheduled";
    row.claimOwner = undefined;
  }

  private scheduled(shards: number[], from: LoadCursor, untilMs: number, limit: number): DueTimer[] {
    return [...this.timers.values()]
      .filter((t) => t.state === "scheduled" && shards.includes(t.shard) && after(t, from))
      .filter((t) => t.nextAttemptAtMs <= untilMs)
      .sort(
        (a, b) =>
          a.nextAttemptAtMs - b.nextAttemptAtMs ||
          a.groupId.localeCompare(b.groupId) ||
          a.timerId.localeCompare(b.timerId),
      )
      .slice(0, limit)
      .map((t) => ({
        groupId: t.groupId,
        timerId: t.timerId,
        shard: t.shard,
        dueMs: t.nextAttemptAtMs,
        destination: TEST_DESTINATION,
        version: t.version,
      }));
  }

  async loadWindow(shards: number[], from: LoadCursor, untilMs: number, limit: number): Promise<DueTimer[]> {
    return this.scheduled(shards, from, untilMs, limit);
  }

  async loadOverdue(shards: number[], graceMs: number, from: LoadCursor, limit: number): Promise<DueTimer[]> {
    return this.scheduled(shards, from, this.clock.now() - graceMs, limit);
  }

  async claim(timers: DueTimer[], epochs: bigint[], leadMs: number): Promise<ClaimedTimer[]> {
    this.claimStatements++;
    if (this.failClaims > 0) {
      this.failClaims--;
      throw new Error("Connection terminated unexpectedly");
    }
    const out: ClaimedTimer[] = [];
    timers.forEach((t, i) => {
      const row = this.timers.get(key(t.groupId, t.timerId));
      if (row?.state !== "scheduled") return;
      if (row.nextAttemptAtMs > this.clock.now() + leadMs) return;
      if (this.leaseEpochs.get(row.shard) !== epochs[i]) return; // the fence
      if (t.version !== 0 && row.version !== t.version) return; // the version fence
      row.state = "firing";
      row.attempt++;
      row.claimOwner = US;
      row.firedAtMs ??= Math.max(this.clock.now(), row.nextAttemptAtMs);
      out.push({
        group_id: row.groupId,
        timer_id: row.timerId,
        shard: row.shard,
        fire_at: new Date(row.fireAtMs),
        next_attempt_at: new Date(row.nextAttemptAtMs),
        attempt: row.attempt,
        callback: TEST_CALLBACK,
        payload: Buffer.from("payload"),
        labels: {},
        max_attempts: row.maxAttempts,
        initial_backoff_ms: row.initialBackoffMs,
        max_backoff_ms: row.maxBackoffMs,
        backoff_multiplier: row.multiplier,
        create_traceparent: null,
        version: String(row.version),
        max_lateness_ms: row.maxLatenessMs === null ? null : String(row.maxLatenessMs),
        lateness_policy: row.latenessPolicy,
        schedule_id: null,
        fired_time: new Date(row.firedAtMs),
      });
    });
    return out;
  }

  async complete(done: Completion[]): Promise<number> {
    let applied = 0;
    for (const c of done) {
      const row = this.timers.get(key(c.groupId, c.timerId));
      if (row?.state !== "firing" || row.claimOwner !== US || row.attempt !== c.attempt) continue;
      row.state = c.outcome === "retry" ? "scheduled" : c.outcome;
      if (c.nextAttemptAt) row.nextAttemptAtMs = c.nextAttemptAt.getTime();
      row.lastError = c.error ?? row.lastError;
      row.claimOwner = undefined;
      this.completed.push(c);
      applied++;
    }
    return applied;
  }

  async reclaimExpired(): Promise<DueTimer[]> {
    return [];
  }
}

/** Shard ownership as the lease keeper would report it; a test hands shards over by changing it. */
export class FakeOwnership implements ShardOwnership {
  readonly epochs = new Map<number, bigint>();

  owned(): number[] {
    return [...this.epochs.keys()].sort((a, b) => a - b);
  }

  owns(shard: number): boolean {
    return this.epochs.has(shard);
  }

  epochOf(shard: number): bigint {
    return this.epochs.get(shard) ?? 0n;
  }
}

/** A logger whose lines a test can read. */
export function recordingLogger(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino(
    { level: "info" },
    new Writable({
      write: (chunk, _encoding, done) => {
        lines.push(JSON.parse(String(chunk)) as Record<string, unknown>);
        done();
      },
    }),
  );
  return { log, lines };
}
