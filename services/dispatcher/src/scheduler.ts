// The dispatcher's firing loop. Timers due within the lookahead window are held in memory; a
// little before each is due (claimLeadMs) it is claimed in Postgres, and the callback is sent
// at its fire time to the millisecond, never before. Outcomes are written back in batches.
//
// The loop's parts live beside it, one job each: which held timers may be claimed next
// (held-timers.ts: the on-time and catch-up lanes, fair delivery), claiming a batch
// (claiming.ts), what an attempt's result means (attempt-outcome.ts), tracing an attempt
// (fire-tracing.ts) and writing outcomes back (completion-writer.ts). This file loads timers,
// decides when to wake, and runs each delivery at its time. Its store, clock and delivery are
// injected (scheduler-deps.ts), so unit tests drive it with a fake clock and an in-memory store.
import { destinationOfJson } from "../../shared/src/callback-destination.js";
import type { Announcement } from "../../shared/src/mesh-messages.js";
import { callbackFromJson, idempotencyKey } from "../../shared/src/timer-model.js";
import { decideOutcome, retryPolicyOf } from "./attempt-outcome.js";
import { type AdmittedTimer, type ClaimContext, claimAdmitted } from "./claiming.js";
import { CompletionWriter, type PendingCompletion } from "./completion-writer.js";
import type { FiringTuning } from "./config.js";
import type { ClaimedTimer, LoadCursor } from "./dispatch-store.js";
import type { DueTimer } from "./due-queue.js";
import { slotsOf } from "./fair-share.js";
import { sentTraceId, tracedAttempt } from "./fire-tracing.js";
import { HeldTimers } from "./held-timers.js";
import { expiredError, judgeLateness, type LatenessExceeded } from "./lateness-contract.js";
import type { SchedulerDeps, SchedulerEvents } from "./scheduler-deps.js";

export type { SchedulerDeps, SchedulerEvents, SchedulerStore, ShardOwnership } from "./scheduler-deps.js";

/** Tuning of the firing loop (config.ts owns the meanings and defaults), and what this process adds. */
export interface SchedulerOptions extends FiringTuning {
  /**
   * Whether announcements can reach this dispatcher (its mesh NATS connection is up). While they
   * cannot, a timer created due soon is only in Postgres, behind the window loader's cursor:
   * each poll then also re-reads the next moments of the window, and the whole window is read
   * again once announcements flow again.
   */
  announcementsFlowing: () => boolean;
  /** How long a claim holds before another dispatcher may take it back (claim_expires_at). */
  claimTtlMs: number;
}

const OVERDUE_START: LoadCursor = { atMs: 0, groupId: "", timerId: "" };
const CLAIM_BACKOFF_MIN_MS = 200;
const CLAIM_BACKOFF_MAX_MS = 2_000;
/** Rows one load statement asks for. */
const LOAD_PAGE = 5000;

/** Holds near-future timers of owned shards and fires them on time. */
export class Scheduler {
  private readonly timers: HeldTimers;
  private readonly completions: CompletionWriter;
  private readonly events: SchedulerEvents;
  /** What every claim passes besides its timers. */
  private readonly claimContext: ClaimContext;
  /** Where the window loader stopped; set at the first load (once the clock is measured). */
  private cursorAt: LoadCursor | undefined;
  /** Announcements could not reach us at some poll since the window was last read whole. */
  private announcementsMissed = false;
  private overdueCursor: LoadCursor = OVERDUE_START;
  private claimBackoffMs = CLAIM_BACKOFF_MIN_MS;
  private inFlight = 0;
  private catchUpInFlight = 0;
  /** The claim running now (at most one at a time), backoff after a failure included. */
  private claiming: Promise<void> | undefined;
  /** When the last claim statement was sent (by now()); claims are spaced (see schedule()). */
  private lastClaimAt = -Infinity;
  private cancelWake: (() => void) | undefined;
  private wakeAt = Infinity;
  private cancelPoll: (() => void) | undefined;
  private polling: Promise<void> | undefined;
  private stopped = false;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly deps: SchedulerDeps,
    private readonly opts: SchedulerOptions,
  ) {
    this.events = deps.events ?? {};
    this.timers = new HeldTimers({
      perGroup: slotsOf(opts.maxInFlight, opts.groupShare),
      perDestination: slotsOf(opts.maxInFlight, opts.destinationShare),
    });
    this.claimContext = {
      store: deps.store,
      ownership: deps.ownership,
      log: deps.log,
      events: this.events,
      claimLeadMs: opts.claimLeadMs,
      claimTtlMs: opts.claimTtlMs,
    };
    this.completions = new CompletionWriter(deps.store, deps.clock, deps.log, (batch) =>
      this.recorded(batch),
    );
  }

  /** Milliseconds since the epoch by Postgres's clock (never ahead of it). */
  private now(): number {
    return this.deps.clock.now();
  }

  /** Resolves after `ms` by the scheduler's clock. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.deps.clock.after(ms, resolve));
  }

  /** Where a load starting now begins: the grace before now, where overdue loading takes over. */
  private windowStart(): LoadCursor {
    return { atMs: this.now() - this.opts.overdueGraceMs, groupId: "", timerId: "" };
  }

  /** Timers held in memory, waiting for their time (parked ones included). */
  get held(): number {
    return this.timers.size;
  }

  /** Due timers waiting because their group or destination holds its full share of the slots. */
  get parked(): number {
    return this.timers.parked;
  }

  /** How many times a due timer was parked by fair delivery since start. */
  get parkedTotal(): number {
    return this.timers.parkedTotal;
  }

  /** Deliveries in flight (claimed, waiting for their time or being sent). */
  get deliveriesInFlight(): number {
    return this.inFlight;
  }

  /** Held timers already due and not yet being delivered (a backlog when high). */
  dueNotStarted(): number {
    return this.timers.dueNotStarted(this.now());
  }

  /** Starts polling Postgres and firing. */
  start(): void {
    const loop = async (): Promise<void> => {
      if (this.stopped) return;
      this.polling = this.pollLogged();
      await this.polling;
      if (!this.stopped) this.cancelPoll = this.deps.clock.after(this.opts.pollIntervalMs, () => void loop());
    };
    void loop();
  }

  /**
   * Takes a timer announced over NATS (a new, rescheduled or updated timer), decoded and
   * checked by the subscriber. A newer version replaces what is held (an older one arriving
   * late changes nothing); one due beyond the window drops what is held, and the window loader
   * brings it back when its time nears.
   */
  announce(t: Announcement): void {
    if (this.stopped || !this.deps.ownership.owns(t.shard)) return;
    if (t.dueMs > this.now() + this.opts.lookaheadMs) {
      this.timers.forget(t.groupId, t.timerId, t.version);
      return;
    }
    this.timers.holdAnnounced({
      groupId: t.groupId,
      timerId: t.timerId,
      shard: t.shard,
      dueMs: t.dueMs,
      destination: t.destination,
      version: t.version,
    });
    this.schedule();
  }

  /** Forgets held timers of shards no longer owned, and waits for a claim in flight to end. */
  async dropUnowned(): Promise<number> {
    const n = this.timers.dropWhere((t) => !this.deps.ownership.owns(t.shard));
    // A claim in flight may still take timers of those shards (fenced by the old epoch in
    // Postgres); the caller releases the leases only after it ended.
    while (this.claiming !== undefined) await this.claiming;
    return n;
  }

  /**
   * Loads the current part of the window (due from now - overdueGrace up to the window cursor)
   * for newly owned shards; older overdue timers come through the catch-up loader in batches.
   */
  async loadShards(shards: number[]): Promise<void> {
    let after = this.windowStart();
    while (this.timers.size < this.opts.maxHeld && !this.stopped) {
      const limit = Math.min(LOAD_PAGE, this.opts.maxHeld - this.timers.size);
      // Up to where the window loader is now (a poll may move it between pages).
      const rows = await this.deps.store.loadWindow(shards, after, this.cursor().atMs, limit);
      for (const t of rows) if (this.deps.ownership.owns(t.shard)) this.timers.hold(t);
      const last = rows.at(-1);
      if (rows.length < limit || !last) break;
      after = { atMs: last.dueMs, groupId: last.groupId, timerId: last.timerId };
    }
    this.schedule();
    // Overdue timers of these shards (their previous owner died with them due) start now.
    void this.pollLogged();
  }

  /** Stops taking new work, waits (bounded) for deliveries in flight, and writes back outcomes. */
  async stop(timeoutMs: number): Promise<void> {
    this.stopped = true;
    this.cancelPoll?.();
    this.cancelWake?.();
    await this.polling;
    const idle = new Promise<void>((resolve) => {
      if (this.inFlight === 0 && this.claiming === undefined) resolve();
      else this.idleWaiters.push(resolve);
    });
    let cancelBound: (() => void) | undefined;
    const bound = new Promise<"timeout">((resolve) => {
      cancelBound = this.deps.clock.after(timeoutMs, () => resolve("timeout"));
    });
    const ended = await Promise.race([idle.then(() => "idle" as const), bound]);
    cancelBound?.();
    if (ended === "timeout") {
      this.deps.log.warn(
        { in_flight: this.inFlight },
        "deliveries still in flight at shutdown; their claims expire and another dispatcher retries them",
      );
    }
    await this.completions.flush();
  }

  /** The window loader's position, starting at the grace before the first load. */
  private cursor(): LoadCursor {
    if (this.cursorAt === undefined) this.cursorAt = this.windowStart();
    return this.cursorAt;
  }

  private pollLogged(): Promise<void> {
    return this.poll().catch((err: unknown) => this.deps.log.error({ err }, "loading due timers failed"));
  }

  private async poll(): Promise<void> {
    const { store, ownership, log } = this.deps;
    const shards = ownership.owned();
    if (shards.length === 0) return;
    const reclaimed = await store.reclaimExpired(shards, 1000);
    if (reclaimed.length > 0) log.warn({ count: reclaimed.length }, "took back expired claims");
    for (const t of reclaimed) this.timers.hold(t);

    if (!this.opts.announcementsFlowing()) {
      // Timers created now are not announced: read what falls due before the next poll but one
      // (a short slice, whatever the window's size), so they fire on time all the same.
      this.announcementsMissed = true;
      const nearUntil = this.now() + 2 * this.opts.pollIntervalMs;
      const near = await store.loadWindow(shards, this.windowStart(), nearUntil, LOAD_PAGE);
      for (const t of near) this.timers.hold(t);
    } else if (this.announcementsMissed) {
      // Back: timers created during the gap and due later in the window are behind the cursor.
      this.announcementsMissed = false;
      this.cursorAt = this.windowStart();
    }

    const until = this.now() + this.opts.lookaheadMs;
    while (this.timers.size < this.opts.maxHeld && !this.stopped) {
      const limit = Math.min(LOAD_PAGE, this.opts.maxHeld - this.timers.size);
      const rows = await store.loadWindow(shards, this.cursor(), until, limit);
      for (const t of rows) this.timers.hold(t);
      const last = rows.at(-1);
      if (rows.length < limit || !last) {
        this.cursorAt = { atMs: until, groupId: "", timerId: "" };
        break;
      }
      this.cursorAt = { atMs: last.dueMs, groupId: last.groupId, timerId: last.timerId };
    }

    // Overdue timers, oldest first. Parked ones stay SCHEDULED in Postgres, so a cursor walks
    // past what is held and starts over once a pass reaches the end; half of maxHeld is kept
    // for the window, so a parked backlog cannot stop the present from being loaded.
    if (this.timers.catchUpSize < this.opts.claimBatch && this.timers.size < this.opts.maxHeld / 2) {
      const limit = this.opts.claimBatch * 4;
      const overdue = await store.loadOverdue(shards, this.opts.overdueGraceMs, this.overdueCursor, limit);
      for (const t of overdue) this.timers.holdOverdue(t);
      const last = overdue.at(-1);
      this.overdueCursor =
        last && overdue.length === limit
          ? { atMs: last.dueMs, groupId: last.groupId, timerId: last.timerId }
          : OVERDUE_START;
    }
    // Parked timers whose cap has room although no delivery's end let them out (rare); a look
    // at parked keys, not timers.
    this.timers.reopen();
    this.schedule();
  }

  /**
   * Arms the wake-up for the earliest held timer (minus the claim lead), but not sooner than a
   * quarter of the claim lead after the previous claim started: under load, claims would
   * otherwise follow each other back to back, each taking the few timers that came due (or
   * got a slot back) during the last one's round trip, and Postgres would spend its time on
   * the fixed cost of many small statements. Timers are still claimed at least three quarters
   * of the lead before they are due.
   */
  private schedule(): void {
    if (this.stopped) return;
    const next = this.timers.nextDueMs();
    if (next === undefined) return;
    const at = Math.max(next - this.opts.claimLeadMs, this.lastClaimAt + this.opts.claimLeadMs / 4);
    if (this.cancelWake && at >= this.wakeAt) return;
    this.cancelWake?.();
    this.wakeAt = at;
    this.cancelWake = this.deps.clock.after(Math.max(0, at - this.now()), () => {
      this.cancelWake = undefined;
      this.wakeAt = Infinity;
      this.claimDue();
    });
  }

  /** Claims what is due within the claim lead and fits the free slots, unless a claim is running. */
  private claimDue(): void {
    if (this.claiming !== undefined || this.stopped) return;
    const free = this.opts.maxInFlight - this.inFlight;
    if (free <= 0) return; // a finishing delivery calls schedule() again
    const catchUpRoom = Math.floor(this.opts.maxInFlight * this.opts.catchUpShare) - this.catchUpInFlight;
    const admitted = this.timers.admit(
      this.now() + this.opts.claimLeadMs,
      Math.min(free, this.opts.claimBatch),
      catchUpRoom,
    );
    if (admitted.onTime.length + admitted.catchUp.length === 0) {
      this.schedule();
      return;
    }
    this.lastClaimAt = this.now();
    const batch: AdmittedTimer[] = [
      ...admitted.onTime.map((timer) => ({ timer, lane: "onTime" as const })),
      ...admitted.catchUp.map((timer) => ({ timer, lane: "catchUp" as const })),
    ];
    this.claiming = this.claim(batch)
      .catch((err: unknown) => this.deps.log.error({ err }, "claiming due timers failed unexpectedly"))
      .finally(() => {
        this.claiming = undefined;
        this.notifyIdle();
        // More may be due already (a big batch, or timers that arrived while claiming).
        this.schedule();
      });
  }

  private async claim(batch: AdmittedTimer[]): Promise<void> {
    const round = await claimAdmitted(this.claimContext, batch);
    for (const { row, admitted } of round.claimed) this.launch(row, admitted);
    // A failed claim changed nothing in Postgres: those are held again.
    for (const a of round.putBack) this.timers.putBack(a.timer, a.lane);
    // The rest were not claimed: their slots go to the next in line.
    for (const t of round.unclaimed) this.timers.release(t);
    if (round.failed) {
      await this.sleep(this.claimBackoffMs);
      this.claimBackoffMs = Math.min(this.claimBackoffMs * 2, CLAIM_BACKOFF_MAX_MS);
    } else {
      this.claimBackoffMs = CLAIM_BACKOFF_MIN_MS;
    }
  }

  /** Delivers a claimed timer at its time; `admitted` is what took its slots (given back at the end). */
  private launch(row: ClaimedTimer, admitted: AdmittedTimer): void {
    const late = admitted.lane === "catchUp";
    this.inFlight++;
    if (late) this.catchUpInFlight++;
    const dueMs = row.next_attempt_at.getTime();
    const wait = dueMs - this.now();
    const go = (): void => {
      void this.fire(row, dueMs).finally(() => {
        this.inFlight--;
        if (late) this.catchUpInFlight--;
        this.timers.release(admitted.timer);
        this.notifyIdle();
        this.schedule();
      });
    };
    if (wait > 0) this.deps.clock.after(wait, go);
    else go();
  }

  /** Sends one attempt at (never before) `dueMs` and queues its outcome. */
  private async fire(row: ClaimedTimer, dueMs: number): Promise<void> {
    // A timer may wake a fraction of a millisecond early; a timer must never fire early (by
    // Postgres's clock: now() is never ahead of it).
    while (this.now() < dueMs) await new Promise((r) => setImmediate(r));
    const startedMs = this.now();
    const startedAt = new Date(startedMs);
    const lateness = judgeLateness(row, startedMs);
    if (lateness.action !== "deliver") this.events.latenessExceeded?.(lateness.action);
    if (lateness.action === "expired") {
      this.expire(row, startedAt, lateness);
      return;
    }
    if (row.attempt === 1) this.events.fired?.(startedAt.getTime() - row.fire_at.getTime());
    const callback = callbackFromJson(row.callback);
    const transport = callback.target.case ?? "none";
    // Recorded with the attempt (timer_attempts.trace_id): the receiver's side of the trace.
    let traceparentSent = "";
    const result = await tracedAttempt(this.deps.tracer, row, transport, (traceparent) => {
      traceparentSent = traceparent;
      return this.deps.deliver({
        groupId: row.group_id,
        timerId: row.timer_id,
        fireAtMs: row.fire_at.getTime(),
        attempt: row.attempt,
        payload: row.payload, // a Buffer is a Uint8Array: no copy
        labels: row.labels,
        callback,
        idempotencyKey: idempotencyKey(row.group_id, row.timer_id),
        traceparent,
        ...(lateness.action === "fired_marked" ? { lateMs: lateness.lateMs } : {}),
      });
    });
    const finishedMs = this.now();
    this.events.attempted?.(transport, result, finishedMs - startedMs);
    const finishedAt = new Date(finishedMs);
    const decided = decideOutcome(result, row.attempt, retryPolicyOf(row), finishedAt.getTime());
    if (decided.outcome === "succeeded") this.events.finished?.(true);
    if (decided.outcome === "failed") {
      this.events.finished?.(false);
      this.deps.log.warn(
        {
          group_id: row.group_id,
          timer_id: row.timer_id,
          shard: row.shard,
          attempt: row.attempt,
          error: decided.error,
        },
        "timer failed",
      );
    }
    const next = decided.nextAttemptAtMs;
    // A retry due within the window is held once its outcome is recorded; a later one is loaded.
    const retryAt: DueTimer | undefined =
      next !== null && next - this.now() <= this.opts.lookaheadMs
        ? {
            groupId: row.group_id,
            timerId: row.timer_id,
            shard: row.shard,
            dueMs: next,
            destination: destinationOfJson(row.callback),
            // The claimed version: an update while the retry waits raises it and announces the new one.
            version: Number(row.version),
          }
        : undefined;
    this.completions.add({
      completion: {
        groupId: row.group_id,
        timerId: row.timer_id,
        shard: row.shard,
        attempt: row.attempt,
        startedAt,
        finishedAt,
        outcome: decided.outcome,
        nextAttemptAt: next === null ? null : new Date(next),
        error: decided.error,
        traceId: sentTraceId(traceparentSent),
      },
      retryAt,
    });
  }

  /**
   * Ends a timer its lateness contract skips (SKIP, started beyond max_lateness): no delivery;
   * the timer ends EXPIRED, judged at `startedAt`, and the attempt is recorded as expired.
   */
  private expire(row: ClaimedTimer, startedAt: Date, lateness: LatenessExceeded): void {
    const error = expiredError(lateness);
    this.deps.log.info(
      { group_id: row.group_id, timer_id: row.timer_id, shard: row.shard, late_ms: lateness.lateMs },
      "timer expired: not delivered, beyond its lateness contract",
    );
    this.completions.add({
      completion: {
        groupId: row.group_id,
        timerId: row.timer_id,
        shard: row.shard,
        attempt: row.attempt,
        startedAt,
        finishedAt: startedAt,
        outcome: "expired",
        nextAttemptAt: null,
        error,
        traceId: null, // nothing was sent
      },
      retryAt: undefined,
    });
  }

  /** After outcomes were written: retries of shards still owned are held for their next attempt. */
  private recorded(batch: PendingCompletion[]): void {
    for (const b of batch)
      if (b.retryAt && this.deps.ownership.owns(b.retryAt.shard)) this.timers.holdAt(b.retryAt);
    this.schedule();
  }

  private notifyIdle(): void {
    if (this.inFlight === 0 && this.claiming === undefined) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }
}
