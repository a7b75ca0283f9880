// The dispatcher's firing loop. Timers due within the lookahead window are held in memory; a
// little before each is due (claimLeadMs) it is claimed in Postgres, and the callback is sent
// at its fire time to the millisecond, never before. Outcomes are written back in batches.
//
// Two queues keep a backlog from starving the present: timers found overdue (after downtime,
// or a lost announcement) wait in `catchUp` and may use only part of the delivery capacity
// while timers due now are waiting in `onTime`.
//
// Fair delivery (fair-share.ts): one group, and one destination, may hold only its share of the
// delivery slots; its other due timers are parked, unclaimed, while everyone else's go on. And
// one bad entry never wedges a claim batch (claim-split.ts).
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Tracer } from "@opentelemetry/api";
import { within } from "../../shared/src/bounded-wait.js";
import { randomTraceparent, spanContextOf, traceparentOf } from "../../shared/src/telemetry/trace-context.js";
import type pg from "pg";
import type { Logger } from "../../shared/src/logger.js";
import { destinationOfJson } from "../../shared/src/callback-destination.js";
import type { Announcement } from "../../shared/src/mesh-messages.js";
import { callbackFromJson, idempotencyKey } from "../../shared/src/timer-model.js";
import { backoffMs, mayRetry } from "./backoff.js";
import type { CallbackDeliverer, DeliveryResult } from "./delivery.js";
import {
  claimTimers,
  completeAttempts,
  loadOverdue,
  loadWindow,
  reclaimExpired,
  type ClaimedTimer,
  type Completion,
  type LoadCursor,
} from "./dispatch-store.js";
import { claimSplitting } from "./claim-split.js";
import { DueQueue, timerKey, type DueTimer } from "./due-queue.js";
import { FairShare, slotsOf, type Lane, type Unparked } from "./fair-share.js";
import type { Clock } from "./db-clock.js";

/** Which shards this dispatcher may fire. */
export interface ShardOwnership {
  /** Owned shards, ascending. */
  owned(): number[];
  owns(shard: number): boolean;
  /** Fencing epoch of our lease on the shard. */
  epochOf(shard: number): bigint;
}

/** Tuning of the firing loop; see the dispatcher's config.ts for meanings and defaults. */
export interface SchedulerOptions {
  dispatcherId: string;
  /**
   * Postgres's clock (db-clock.ts): fire times, claims and "never early" are all judged by it,
   * not by this machine's wall clock.
   */
  clock: Clock;
  /**
   * Whether announcements can reach this dispatcher (its mesh NATS connection is up). While they
   * cannot, a timer created due soon is only in Postgres, behind the window loader's cursor:
   * each poll then also re-reads the next moments of the window, and the whole window is read
   * again once announcements flow again.
   */
  announcementsFlowing: () => boolean;
  /** Written to timers.claim_owner: the dispatcher id and this process's incarnation. */
  claimOwner: string;
  lookaheadMs: number;
  pollIntervalMs: number;
  overdueGraceMs: number;
  claimLeadMs: number;
  claimBatch: number;
  maxInFlight: number;
  maxHeld: number;
  claimTtlMs: number;
  catchUpShare: number;
  /** Share (0..1] of maxInFlight one group may hold. */
  groupShare: number;
  /** Share (0..1] of maxInFlight one callback destination may hold. */
  destinationShare: number;
}

const OVERDUE_START = { atMs: 0, groupId: "", timerId: "" };
const CLAIM_BACKOFF_MIN_MS = 200;
const CLAIM_BACKOFF_MAX_MS = 2_000;

/** Observations the scheduler reports (metrics hook in here). */
export interface SchedulerEvents {
  fired?(lateMs: number): void;
  attempted?(transport: string, result: DeliveryResult): void;
  finished?(succeeded: boolean): void;
  /** A timer was dropped because Postgres refuses it in a claim statement even alone. */
  claimDropped?(): void;
}

/** Holds near-future timers of owned shards and fires them on time. */
export class Scheduler {
  private readonly onTime = new DueQueue();
  private readonly catchUp = new DueQueue();
  private readonly fair: FairShare;
  /** Where the window loader stopped; starts at the first load (once the clock is measured). */
  private cursorAt: LoadCursor | undefined;
  /** Announcements could not reach us at some poll since the window was last read whole. */
  private announcementsMissed = false;
  private overdueCursor: LoadCursor = OVERDUE_START;
  private claimBackoffMs = CLAIM_BACKOFF_MIN_MS;
  private inFlight = 0;
  private catchUpInFlight = 0;
  private claiming = false;
  /** When the last claim statement was sent (by this.now()); claims are spaced (see schedule()). */
  private lastClaimAt = -Infinity;
  private wakeTimer: NodeJS.Timeout | undefined;
  private wakeAt = Infinity;
  private pollTimer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  private pendingDone: { c: Completion; retryAt: DueTimer | undefined }[] = [];
  private flushing: Promise<void> | undefined;
  private stopped = false;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly pool: pg.Pool,
    private readonly deliverer: Pick<CallbackDeliverer, "deliver">,
    private readonly ownership: ShardOwnership,
    private readonly opts: SchedulerOptions,
    private readonly log: Logger,
    private readonly events: SchedulerEvents = {},
    private readonly tracer: Tracer = trace.getTracer("dispatcher"),
    private readonly tracing = false,
  ) {
    this.fair = new FairShare({
      perGroup: slotsOf(opts.maxInFlight, opts.groupShare),
      perDestination: slotsOf(opts.maxInFlight, opts.destinationShare),
    });
  }

  /** Milliseconds since the epoch by Postgres's clock (never ahead of it). */
  private now(): number {
    return this.opts.clock.now();
  }

  private get cursor(): LoadCursor {
    return (this.cursorAt ??= { atMs: this.now() - this.opts.overdueGraceMs, groupId: "", timerId: "" });
  }

  private set cursor(c: LoadCursor) {
    this.cursorAt = c;
  }

  /** Timers held in memory, waiting for their time (parked ones included). */
  get held(): number {
    return this.onTime.size + this.catchUp.size + this.fair.parked;
  }

  /** Due timers waiting because their group or destination holds its full share of the slots. */
  get parked(): number {
    return this.fair.parked;
  }

  /** How many times a due timer was parked by fair delivery since start. */
  get parkedTotal(): number {
    return this.fair.parkedTotal;
  }

  /** Deliveries in flight. */
  get deliveriesInFlight(): number {
    return this.inFlight;
  }

  /** Held timers already due and not yet being delivered (a backlog when high). */
  dueNotStarted(): number {
    const now = this.now();
    return this.onTime.countDue(now) + this.catchUp.countDue(now) + this.fair.parked;
  }

  /** Starts polling Postgres and firing. */
  start(): void {
    const loop = async () => {
      if (this.stopped) return;
      this.polling = this.poll().catch((err) => this.log.error({ err }, "loading due timers failed"));
      await this.polling;
      if (!this.stopped) this.pollTimer = setTimeout(loop, this.opts.pollIntervalMs);
    };
    void loop();
  }

  /** Takes a timer announced over NATS (a new or rescheduled timer due soon), decoded and checked by the subscriber. */
  announce(t: Announcement): void {
    if (this.stopped || !this.ownership.owns(t.shard)) return;
    if (t.dueMs > this.now() + this.opts.lookaheadMs) return; // the window loader will get it
    if (this.catchUp.has(t.groupId, t.timerId)) return;
    this.holdAt({
      groupId: t.groupId,
      timerId: t.timerId,
      shard: t.shard,
      dueMs: t.dueMs,
      destination: t.destination,
    });
    this.schedule();
  }

  /** Forgets held timers of shards no longer owned, and waits for a claim in flight to end. */
  async dropUnowned(): Promise<number> {
    const drop = (t: DueTimer) => !this.ownership.owns(t.shard);
    const n = this.onTime.removeWhere(drop) + this.catchUp.removeWhere(drop) + this.fair.removeWhere(drop);
    while (this.claiming) await new Promise((r) => setTimeout(r, 1));
    return n;
  }

  /**
   * Loads the current part of the window (due from now - overdueGrace up to the window cursor)
   * for newly owned shards; older overdue timers come through the catch-up loader in batches.
   */
  async loadShards(shards: number[]): Promise<void> {
    let after: LoadCursor = { atMs: this.now() - this.opts.overdueGraceMs, groupId: "", timerId: "" };
    while (this.held < this.opts.maxHeld && !this.stopped) {
      const limit = Math.min(5000, this.opts.maxHeld - this.held);
      const rows = await loadWindow(this.pool, shards, after, this.cursor.atMs, limit);
      for (const t of rows) if (this.ownership.owns(t.shard)) this.hold(t);
      if (rows.length < limit) break;
      const last = rows[rows.length - 1]!;
      after = { atMs: last.dueMs, groupId: last.groupId, timerId: last.timerId };
    }
    this.schedule();
    // Overdue timers of these shards (their previous owner died with them due) start now.
    void this.poll().catch((err) => this.log.error({ err }, "loading due timers failed"));
  }

  /** Stops taking new work, waits (bounded) for deliveries in flight, and writes back outcomes. */
  async stop(timeoutMs: number): Promise<void> {
    this.stopped = true;
    clearTimeout(this.pollTimer);
    clearTimeout(this.wakeTimer);
    await this.polling;
    const idle = new Promise<void>((resolve) => {
      if (this.inFlight === 0 && !this.claiming) resolve();
      else this.idleWaiters.push(resolve);
    });
    if (!(await within(idle, timeoutMs))) {
      this.log.warn(
        { in_flight: this.inFlight },
        "deliveries still in flight at shutdown; their claims expire and another dispatcher retries them",
      );
    }
    await this.flushCompletions();
  }

  private async poll(): Promise<void> {
    const shards = this.ownership.owned();
    if (shards.length === 0) return;
    const reclaimed = await reclaimExpired(this.pool, this.opts.dispatcherId, shards, 1000);
    if (reclaimed.length > 0) this.log.warn({ count: reclaimed.length }, "took back expired claims");
    for (const t of reclaimed) this.hold(t);

    if (!this.opts.announcementsFlowing()) {
      // Timers created now are not announced: read what falls due before the next poll but one
      // (a short slice, whatever the window's size), so they fire on time all the same.
      this.announcementsMissed = true;
      const nearUntil = this.now() + 2 * this.opts.pollIntervalMs;
      const near = await loadWindow(
        this.pool,
        shards,
        { atMs: this.now() - this.opts.overdueGraceMs, groupId: "", timerId: "" },
        nearUntil,
        5000,
      );
      for (const t of near) this.hold(t);
    } else if (this.announcementsMissed) {
      // Back: timers created during the gap and due later in the window are behind the cursor.
      this.announcementsMissed = false;
      this.cursor = { atMs: this.now() - this.opts.overdueGraceMs, groupId: "", timerId: "" };
    }

    const until = this.now() + this.opts.lookaheadMs;
    while (this.held < this.opts.maxHeld && !this.stopped) {
      const limit = Math.min(5000, this.opts.maxHeld - this.held);
      const rows = await loadWindow(this.pool, shards, this.cursor, until, limit);
      for (const t of rows) this.hold(t);
      if (rows.length < limit) {
        this.cursor = { atMs: until, groupId: "", timerId: "" };
        break;
      }
      const last = rows[rows.length - 1]!;
      this.cursor = { atMs: last.dueMs, groupId: last.groupId, timerId: last.timerId };
    }

    // Overdue timers, oldest first. Parked ones stay SCHEDULED in Postgres, so a cursor walks
    // past what is held and starts over once a pass reaches the end; half of maxHeld is kept
    // for the window, so a parked backlog cannot stop the present from being loaded.
    if (this.catchUp.size < this.opts.claimBatch && this.held < this.opts.maxHeld / 2) {
      const limit = this.opts.claimBatch * 4;
      const overdue = await loadOverdue(
        this.pool,
        shards,
        this.opts.overdueGraceMs,
        this.overdueCursor,
        limit,
      );
      for (const t of overdue) {
        if (!this.onTime.has(t.groupId, t.timerId) && !this.fair.isParked(t.groupId, t.timerId))
          this.catchUp.add(t);
      }
      const last = overdue.at(-1);
      this.overdueCursor =
        last && overdue.length === limit
          ? { atMs: last.dueMs, groupId: last.groupId, timerId: last.timerId }
          : OVERDUE_START;
    }
    // Parked timers whose cap has room although no delivery's end let them out (rare: the ones
    // let out before were rescheduled or moved away); a look at parked keys, not timers.
    this.requeue(this.fair.reopen());
    this.schedule();
  }

  /** Holds a loaded timer, unless it is held already. */
  private hold(t: DueTimer): void {
    if (!this.catchUp.has(t.groupId, t.timerId) && !this.fair.isParked(t.groupId, t.timerId))
      this.onTime.add(t);
  }

  /** Holds a timer at the given (possibly new) due time: announcements and retries. */
  private holdAt(t: DueTimer): void {
    this.fair.remove(t.groupId, t.timerId);
    this.onTime.add(t);
  }

  private laneOf(lane: Lane): DueQueue {
    return lane === "catchUp" ? this.catchUp : this.onTime;
  }

  /** Puts timers let out of the parking back in their lanes, where due order decides. */
  private requeue(unparked: Unparked[]): void {
    for (const u of unparked) this.laneOf(u.lane).add(u.timer);
  }

  /** Gives back an admitted timer's group and destination slots. */
  private release(t: DueTimer): void {
    this.requeue(this.fair.release(t));
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
    const next = Math.min(this.onTime.peekDueMs() ?? Infinity, this.catchUp.peekDueMs() ?? Infinity);
    if (next === Infinity) return;
    const at = Math.max(next - this.opts.claimLeadMs, this.lastClaimAt + this.opts.claimLeadMs / 4);
    if (this.wakeTimer && at >= this.wakeAt) return;
    clearTimeout(this.wakeTimer);
    this.wakeAt = at;
    this.wakeTimer = setTimeout(
      () => {
        this.wakeTimer = undefined;
        this.wakeAt = Infinity;
        void this.claimDue();
      },
      Math.max(0, at - this.now()),
    );
  }

  private async claimDue(): Promise<void> {
    if (this.claiming || this.stopped) return;
    const free = this.opts.maxInFlight - this.inFlight;
    if (free <= 0) return; // a finishing delivery calls schedule() again
    const horizon = this.now() + this.opts.claimLeadMs;
    const batchMax = Math.min(free, this.opts.claimBatch);
    // Timers whose group or destination holds its full share are parked on the way.
    const batch = this.fair.admitDue(this.onTime, "onTime", horizon, batchMax);
    const catchUpRoom = Math.floor(this.opts.maxInFlight * this.opts.catchUpShare) - this.catchUpInFlight;
    const catchUpMax =
      batch.length > 0 || (this.onTime.peekDueMs() ?? Infinity) <= horizon
        ? Math.min(batchMax - batch.length, Math.max(0, catchUpRoom))
        : batchMax - batch.length;
    const late = this.fair.admitDue(this.catchUp, "catchUp", horizon, catchUpMax);
    if (batch.length + late.length === 0) {
      this.schedule();
      return;
    }
    this.claiming = true;
    this.lastClaimAt = this.now();
    // Admitted and not launched yet: each leaves by launch, or gives its slots back.
    const pending = new Map<string, { timer: DueTimer; lane: Lane }>();
    for (const timer of batch) pending.set(timerKey(timer.groupId, timer.timerId), { timer, lane: "onTime" });
    for (const timer of late) pending.set(timerKey(timer.groupId, timer.timerId), { timer, lane: "catchUp" });
    let backOff = false;
    try {
      const wanted = [...pending.values()].map((p) => p.timer).filter((t) => this.ownership.owns(t.shard));
      const result = await claimSplitting(wanted, (part) =>
        claimTimers(
          this.pool,
          this.opts.dispatcherId,
          this.opts.claimOwner,
          part,
          part.map((t) => this.ownership.epochOf(t.shard)),
          this.opts.claimLeadMs,
          this.opts.claimTtlMs,
        ),
      );
      // UPDATE ... RETURNING has no order; launch in due order.
      result.claimed.sort((a, b) => a.next_attempt_at.getTime() - b.next_attempt_at.getTime());
      for (const row of result.claimed) {
        const key = timerKey(row.group_id, row.timer_id);
        const p = pending.get(key);
        if (!p) continue; // cannot happen: a claim returns only timers it was given
        pending.delete(key);
        this.launch(row, p.timer, p.lane === "catchUp");
      }
      for (const { entry, err } of result.dropped) {
        this.events.claimDropped?.();
        this.log.error(
          { err, group_id: entry.groupId, timer_id: entry.timerId, shard: entry.shard },
          "dropped a timer that Postgres refuses in a claim even alone; the rest of its batch went on",
        );
      }
      if (result.retry.length > 0) {
        this.log.error(
          { err: result.error, count: result.retry.length },
          "claiming due timers failed; retrying",
        );
        // Put them back; a failed claim changed nothing in Postgres.
        for (const t of result.retry) {
          const key = timerKey(t.groupId, t.timerId);
          const p = pending.get(key)!;
          pending.delete(key);
          this.release(t);
          this.laneOf(p.lane).add(t);
        }
        backOff = true;
      }
    } catch (err) {
      this.log.error({ err }, "claiming due timers failed unexpectedly; retrying");
      for (const p of pending.values()) {
        this.release(p.timer);
        this.laneOf(p.lane).add(p.timer);
      }
      pending.clear();
      backOff = true;
    } finally {
      // The rest were not claimed (cancelled, rescheduled, claimed elsewhere, shard moved, or
      // dropped above): their slots go to the next in line.
      for (const p of pending.values()) this.release(p.timer);
    }
    if (backOff) {
      await new Promise((r) => setTimeout(r, this.claimBackoffMs));
      this.claimBackoffMs = Math.min(this.claimBackoffMs * 2, CLAIM_BACKOFF_MAX_MS);
    } else {
      this.claimBackoffMs = CLAIM_BACKOFF_MIN_MS;
    }
    this.claiming = false;
    this.notifyIdle();
    // More may be due already (a big batch, or timers that arrived while claiming).
    this.schedule();
  }

  /** Delivers a claimed timer at its time; `timer` is what was admitted (its slots are given back at the end). */
  private launch(row: ClaimedTimer, timer: DueTimer, late: boolean): void {
    this.inFlight++;
    if (late) this.catchUpInFlight++;
    const dueMs = row.next_attempt_at.getTime();
    const wait = dueMs - this.now();
    const go = () =>
      void this.deliver(row, dueMs).finally(() => {
        this.inFlight--;
        if (late) this.catchUpInFlight--;
        this.release(timer);
        this.notifyIdle();
        this.schedule();
      });
    if (wait > 0) setTimeout(go, wait);
    else go();
  }

  private async deliver(row: ClaimedTimer, dueMs: number): Promise<void> {
    // setTimeout may wake a fraction of a millisecond early; a timer must never fire early (by
    // Postgres's clock: this.now() is never ahead of it).
    while (this.now() < dueMs) await new Promise((r) => setImmediate(r));
    const startedAt = new Date(this.now());
    if (row.attempt === 1) this.events.fired?.(startedAt.getTime() - row.fire_at.getTime());
    const callback = callbackFromJson(row.callback);
    const transport = callback.target.case ?? "none";
    const result = await this.traced(row, transport, (traceparent) =>
      this.deliverer.deliver({
        groupId: row.group_id,
        timerId: row.timer_id,
        fireAtMs: row.fire_at.getTime(),
        attempt: row.attempt,
        payload: row.payload, // a Buffer is a Uint8Array: no copy
        labels: row.labels,
        callback,
        idempotencyKey: idempotencyKey(row.group_id, row.timer_id),
        traceparent,
      }),
    );
    this.events.attempted?.(transport, result);
    const finishedAt = new Date(this.now());
    const policy = {
      maxAttempts: row.max_attempts,
      initialBackoffMs: row.initial_backoff_ms,
      maxBackoffMs: row.max_backoff_ms,
      multiplier: row.backoff_multiplier,
    };
    let completion: Completion;
    let retryAt: DueTimer | undefined;
    if (result.ok) {
      completion = base("succeeded", null, null);
      this.events.finished?.(true);
    } else if (result.retryable && mayRetry(policy, row.attempt)) {
      const next = finishedAt.getTime() + backoffMs(policy, row.attempt);
      completion = base("retry", new Date(next), result.error);
      if (next - this.now() <= this.opts.lookaheadMs) {
        retryAt = {
          groupId: row.group_id,
          timerId: row.timer_id,
          shard: row.shard,
          dueMs: next,
          destination: destinationOfJson(row.callback),
        };
      }
    } else {
      const why = result.retryable ? `gave up after ${row.attempt} attempts: ${result.error}` : result.error;
      completion = base("failed", null, why);
      this.events.finished?.(false);
      this.log.warn(
        {
          group_id: row.group_id,
          timer_id: row.timer_id,
          shard: row.shard,
          attempt: row.attempt,
          error: why,
        },
        "timer failed",
      );
    }
    this.pendingDone.push({ c: completion, retryAt });
    void this.flushCompletions();

    function base(
      outcome: Completion["outcome"],
      nextAttemptAt: Date | null,
      error: string | null,
    ): Completion {
      return {
        groupId: row.group_id,
        timerId: row.timer_id,
        shard: row.shard,
        attempt: row.attempt,
        startedAt,
        finishedAt,
        outcome,
        nextAttemptAt,
        error,
      };
    }
  }

  /**
   * Runs one delivery attempt inside its own trace: a "fire timer" root span linked to the
   * CreateTimer call that made the timer (even days later), with the delivery as a CLIENT span
   * whose context travels to the receiver as traceparent. Without tracing, a random traceparent.
   */
  private async traced(
    row: ClaimedTimer,
    transport: string,
    deliver: (traceparent: string) => Promise<DeliveryResult>,
  ): Promise<DeliveryResult> {
    if (!this.tracing) return deliver(randomTraceparent());
    const created = spanContextOf(row.create_traceparent);
    const attributes = {
      "timer.group_id": row.group_id,
      "timer.id": row.timer_id,
      "timer.shard": row.shard,
      "timer.attempt": row.attempt,
    };
    // Parents are passed explicitly (no implicit context on this hot path).
    const fire = this.tracer.startSpan("fire timer", {
      root: true,
      kind: SpanKind.INTERNAL,
      attributes,
      links: created ? [{ context: created, attributes: { "link.reason": "created by" } }] : [],
    });
    const delivery = this.tracer.startSpan(
      `deliver ${transport}`,
      { kind: SpanKind.CLIENT, attributes: { ...attributes, "timer.transport": transport } },
      trace.setSpan(ROOT_CONTEXT, fire),
    );
    try {
      const result = await deliver(traceparentOf(delivery.spanContext()));
      if (!result.ok) {
        delivery.setStatus({ code: SpanStatusCode.ERROR, message: result.error });
        delivery.setAttribute("timer.retryable", result.retryable);
      }
      return result;
    } finally {
      delivery.end();
      fire.end();
    }
  }

  /** Writes back queued outcomes; batches whatever accumulated while the previous write ran. */
  private flushCompletions(): Promise<void> {
    if (this.flushing) return this.flushing;
    if (this.pendingDone.length === 0) return Promise.resolve();
    this.flushing = (async () => {
      let delay = 50;
      while (this.pendingDone.length > 0) {
        const batch = this.pendingDone.splice(0, 1000);
        try {
          const applied = await completeAttempts(
            this.pool,
            this.opts.dispatcherId,
            this.opts.claimOwner,
            batch.map((b) => b.c),
          );
          if (applied < batch.length) {
            // This process stalled or lost Postgres past those claims' deadline and another
            // dispatcher took them back: they are delivered again there (at least once).
            this.log.warn(
              { count: batch.length - applied },
              "delivery outcomes arrived after their claims were taken back; not recorded",
            );
          }
          for (const b of batch)
            if (b.retryAt && this.ownership.owns(b.retryAt.shard)) this.holdAt(b.retryAt);
          this.schedule();
          delay = 50;
        } catch (err) {
          this.log.error({ err, count: batch.length }, "recording delivery outcomes failed; retrying");
          this.pendingDone.unshift(...batch);
          await new Promise((r) => setTimeout(r, delay));
          delay = Math.min(delay * 2, 5_000);
        }
      }
    })().finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  private notifyIdle(): void {
    if (this.inFlight === 0 && !this.claiming) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }
}
