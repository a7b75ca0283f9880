// The timers a scheduler holds in memory and which of them may be claimed next. Two lanes keep a
// backlog from starving the present: timers found overdue (after downtime, or a lost
// announcement) wait in `catchUp` and may use only part of the delivery capacity while timers
// due now wait in `onTime`. Fair delivery (fair-share.ts) parks, unclaimed, the due timers of a
// group or destination that holds its full share of the slots. A timer is in at most one of the
// lanes and the parking at a time.
import { DueQueue, isOlderVersion, type DueTimer } from "./due-queue.js";
import { FairShare, type FairShareLimits, type Lane, type Unparked } from "./fair-share.js";

/** Timers admitted to a claim (their slots taken), per lane. */
export interface Admitted {
  onTime: DueTimer[];
  catchUp: DueTimer[];
}

/** The two lanes of held timers and the fair-delivery parking, kept consistent. */
export class HeldTimers {
  private readonly onTime = new DueQueue();
  private readonly catchUp = new DueQueue();
  private readonly fair: FairShare;

  constructor(limits: FairShareLimits) {
    this.fair = new FairShare(limits);
  }

  /** Timers held, waiting for their time (parked ones included). */
  get size(): number {
    return this.onTime.size + this.catchUp.size + this.fair.parked;
  }

  /** Overdue timers waiting in the catch-up lane. */
  get catchUpSize(): number {
    return this.catchUp.size;
  }

  /** Due timers waiting because their group or destination holds its full share of the slots. */
  get parked(): number {
    return this.fair.parked;
  }

  /** How many times a due timer was parked since start. */
  get parkedTotal(): number {
    return this.fair.parkedTotal;
  }

  /** Held timers due by `nowMs` and not yet admitted (a backlog when high). */
  dueNotStarted(nowMs: number): number {
    return this.onTime.countDue(nowMs) + this.catchUp.countDue(nowMs) + this.fair.parked;
  }

  /** The earliest due time in the lanes (parked timers wait for a slot, not a time). */
  nextDueMs(): number | undefined {
    const next = Math.min(this.onTime.peekDueMs() ?? Infinity, this.catchUp.peekDueMs() ?? Infinity);
    return next === Infinity ? undefined : next;
  }

  /**
   * Holds a loaded timer on time, unless it is held already (in the backlog or parked) at the
   * same or a newer version: an older one held there is replaced, since its claim would fail.
   */
  hold(t: DueTimer): void {
    if (this.catchUp.has(t.groupId, t.timerId) || this.fair.isParked(t.groupId, t.timerId)) {
      if (!this.supersedes(t)) return;
      this.catchUp.remove(t.groupId, t.timerId);
      this.fair.remove(t.groupId, t.timerId);
    }
    this.onTime.add(t);
  }

  /**
   * Holds a timer at the given (possibly new) due time, out of the parking: retries. Not when a
   * newer version of it is held (it was updated while its outcome was being written).
   */
  holdAt(t: DueTimer): void {
    const held = this.find(t.groupId, t.timerId);
    if (held && isOlderVersion(t.version, held.version)) return;
    this.fair.remove(t.groupId, t.timerId);
    this.onTime.add(t);
  }

  /** Whether `t` is a newer version of a timer held. */
  private supersedes(t: DueTimer): boolean {
    const held = this.find(t.groupId, t.timerId);
    return held !== undefined && isOlderVersion(held.version, t.version);
  }

  /**
   * Holds an announced timer (new, rescheduled or updated) at its due time, wherever an older
   * version of it is held. One already in the backlog at the same version stays there (the
   * announcement of a timer the overdue loader found is a repeat); an announcement of a version
   * older than the one held (it arrived late) changes nothing.
   */
  holdAnnounced(t: DueTimer): void {
    const newer = this.supersedes(t);
    if (!newer && this.catchUp.has(t.groupId, t.timerId)) return;
    if (newer) this.catchUp.remove(t.groupId, t.timerId);
    this.holdAt(t);
  }

  /** The entry held for a timer (in a lane or parked), if any. */
  find(groupId: string, timerId: string): DueTimer | undefined {
    return (
      this.onTime.get(groupId, timerId) ??
      this.catchUp.get(groupId, timerId) ??
      this.fair.get(groupId, timerId)
    );
  }

  /**
   * Forgets a timer an announcement moved beyond the window, wherever it is held, unless what
   * is held is of a newer version than `version` (the announcement arrived late). Returns
   * whether it was dropped.
   */
  forget(groupId: string, timerId: string, version: number): boolean {
    const held = this.find(groupId, timerId);
    if (!held || isOlderVersion(version, held.version)) return false;
    this.onTime.remove(groupId, timerId);
    this.catchUp.remove(groupId, timerId);
    this.fair.remove(groupId, timerId);
    return true;
  }

  /** Puts an overdue timer in the backlog, unless it is held already at the same or a newer version. */
  holdOverdue(t: DueTimer): void {
    if (this.onTime.has(t.groupId, t.timerId) || this.fair.isParked(t.groupId, t.timerId)) {
      if (!this.supersedes(t)) return;
      this.onTime.remove(t.groupId, t.timerId);
      this.fair.remove(t.groupId, t.timerId);
    }
    this.catchUp.add(t);
  }

  /** Forgets held timers the predicate picks (shards handed to another dispatcher); returns how many. */
  dropWhere(drop: (t: DueTimer) => boolean): number {
    return this.onTime.removeWhere(drop) + this.catchUp.removeWhere(drop) + this.fair.removeWhere(drop);
  }

  /**
   * Takes the timers due by `horizonMs` that may be claimed now, at most `max`: on-time ones
   * first, then the backlog, which gets only `catchUpRoom` slots while on-time timers are due
   * (all the room otherwise). Timers whose group or destination is full are parked on the way.
   */
  admit(horizonMs: number, max: number, catchUpRoom: number): Admitted {
    const onTime = this.fair.admitDue(this.onTime, "onTime", horizonMs, max);
    const presentWaits = onTime.length > 0 || (this.onTime.peekDueMs() ?? Infinity) <= horizonMs;
    const catchUpMax = presentWaits
      ? Math.min(max - onTime.length, Math.max(0, catchUpRoom))
      : max - onTime.length;
    const catchUp = this.fair.admitDue(this.catchUp, "catchUp", horizonMs, catchUpMax);
    return { onTime, catchUp };
  }

  /** Gives back an admitted timer's group and destination slots; the timers they let out go back to their lanes. */
  release(t: DueTimer): void {
    this.requeue(this.fair.release(t));
  }

  /** Gives back an admitted timer's slots and holds it again in its lane (its claim failed). */
  putBack(t: DueTimer, lane: Lane): void {
    this.release(t);
    this.laneOf(lane).add(t);
  }

  /**
   * Safety net for each poll: parked timers whose cap has room although no release let them out
   * (the ones let out before were rescheduled or moved away) go back to their lanes.
   */
  reopen(): void {
    this.requeue(this.fair.reopen());
  }

  private laneOf(lane: Lane): DueQueue {
    return lane === "catchUp" ? this.catchUp : this.onTime;
  }

  /** Puts timers let out of the parking back in their lanes, where due order decides. */
  private requeue(unparked: Unparked[]): void {
    for (const u of unparked) this.laneOf(u.lane).add(u.timer);
  }
}
