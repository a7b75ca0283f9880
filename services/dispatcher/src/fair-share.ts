// Fair delivery: a group, and a destination (the receiver's scheme://host:port), may hold only
// a bounded number of a dispatcher's delivery slots. Slots are not preemptible (a delivery to a
// receiver that accepts and never answers holds its slot until the callback timeout), so the
// caps hold even when nobody else is waiting: a slot lent to a hanging receiver could not be
// taken back when another team's timers come due.
//
// A due timer whose group or destination is at its cap is parked here, without being claimed
// in Postgres (claims have a short TTL and must not sit idle), so the timers behind it in due
// order go on. Each parked timer waits under the one cap that stopped it, earliest first. When
// a delivery ends and frees a slot of its group and of its destination, the earliest timer
// parked under each goes back to its lane (at most one per freed slot, never all of them); if
// the other cap stops it then, it is parked again under that one. Timers due now go before a
// backlog of overdue ones (the catch-up lane) of the same group, as they do between groups:
// a group's own backlog must not starve its present either.
import { DueQueue, timerKey, type DueTimer } from "./due-queue.js";

/** Which queue of the scheduler a timer came from, and goes back to. */
export type Lane = "onTime" | "catchUp";

/** A timer leaving the parking, with the lane it goes back to. */
export interface Unparked {
  timer: DueTimer;
  lane: Lane;
}

/** Most deliveries one group, and one destination, may have in flight at once. */
export interface FairShareLimits {
  perGroup: number;
  perDestination: number;
}

type ParkedTimer = DueTimer & { lane: Lane };

/** The timers parked under one key, per lane. */
class ParkedLanes {
  readonly onTime = new DueQueue<ParkedTimer>();
  readonly catchUp = new DueQueue<ParkedTimer>();

  get size(): number {
    return this.onTime.size + this.catchUp.size;
  }

  lane(lane: Lane): DueQueue<ParkedTimer> {
    return lane === "catchUp" ? this.catchUp : this.onTime;
  }

  /** The earliest timer due now, or else the earliest of the backlog, removed. */
  popFirst(): ParkedTimer | undefined {
    return this.onTime.popNext(Infinity) ?? this.catchUp.popNext(Infinity);
  }
}

/** One kind of cap (group or destination): slots in use per key and the timers parked under it. */
class CapTable {
  readonly inFlight = new Map<string, number>();
  readonly parked = new Map<string, ParkedLanes>();

  constructor(readonly limit: number) {}

  full(key: string): boolean {
    return (this.inFlight.get(key) ?? 0) >= this.limit;
  }

  take(key: string): void {
    this.inFlight.set(key, (this.inFlight.get(key) ?? 0) + 1);
  }

  give(key: string): void {
    const n = (this.inFlight.get(key) ?? 0) - 1;
    if (n > 0) this.inFlight.set(key, n);
    else this.inFlight.delete(key);
  }

  park(key: string, t: ParkedTimer): void {
    let p = this.parked.get(key);
    if (!p) {
      p = new ParkedLanes();
      this.parked.set(key, p);
    }
    p.lane(t.lane).add(t);
  }

  /** The next timer parked under `key` to go (due now before backlog, earliest first), removed. */
  unparkNext(key: string): ParkedTimer | undefined {
    const p = this.parked.get(key);
    if (!p) return undefined;
    const t = p.popFirst();
    if (p.size === 0) this.parked.delete(key);
    return t;
  }

  /** Takes one timer out of the parking (it was rescheduled or is forgotten). */
  remove(key: string, lane: Lane, groupId: string, timerId: string): ParkedTimer | undefined {
    const p = this.parked.get(key);
    const t = p?.lane(lane).remove(groupId, timerId);
    if (p && p.size === 0) this.parked.delete(key);
    return t;
  }
}

/** In-flight counts per group and destination, and the timers waiting for their turn. */
export class FairShare {
  private readonly groups: CapTable;
  private readonly destinations: CapTable;
  /** Where each parked timer waits (by timer key), to find it without a scan. */
  private readonly where = new Map<string, { table: CapTable; key: string; lane: Lane }>();
  private parkings = 0;

  constructor(limits: FairShareLimits) {
    if (limits.perGroup < 1 || limits.perDestination < 1)
      throw new RangeError("fair-share limits must be at least 1");
    this.groups = new CapTable(limits.perGroup);
    this.destinations = new CapTable(limits.perDestination);
  }

  /** Timers parked now. */
  get parked(): number {
    return this.where.size;
  }

  /** Times a timer was parked since start (a timer may be parked more than once). */
  get parkedTotal(): number {
    return this.parkings;
  }

  /** Deliveries in flight (admitted and not released) for a group. */
  groupInFlight(groupId: string): number {
    return this.groups.inFlight.get(groupId) ?? 0;
  }

  /** Deliveries in flight (admitted and not released) to a destination. */
  destinationInFlight(destination: string): number {
    return this.destinations.inFlight.get(destination) ?? 0;
  }

  isParked(groupId: string, timerId: string): boolean {
    return this.where.has(timerKey(groupId, timerId));
  }

  /**
   * Takes one slot of the timer's group and of its destination if neither is at its cap, and
   * returns true; otherwise parks the timer (under the cap that is full) and returns false.
   */
  tryAdmit(t: DueTimer, lane: Lane): boolean {
    const table = this.groups.full(t.groupId)
      ? this.groups
      : this.destinations.full(t.destination)
        ? this.destinations
        : undefined;
    if (table) {
      const key = table === this.groups ? t.groupId : t.destination;
      table.park(key, { ...t, lane });
      this.where.set(timerKey(t.groupId, t.timerId), { table, key, lane });
      this.parkings++;
      return false;
    }
    this.groups.take(t.groupId);
    this.destinations.take(t.destination);
    return true;
  }

  /**
   * Pops timers due by `untilMs` from `queue`, earliest first, until `max` are admitted or none
   * is due; the ones whose group or destination is full are parked on the way.
   */
  admitDue(queue: DueQueue, lane: Lane, untilMs: number, max: number): DueTimer[] {
    const out: DueTimer[] = [];
    while (out.length < max) {
      const t = queue.popNext(untilMs);
      if (t === undefined) break;
      if (this.tryAdmit(t, lane)) out.push(t);
    }
    return out;
  }

  /**
   * Gives back the slots an admitted timer held (its delivery ended, or it was not claimed),
   * and returns the timers that may go now: the next parked under its group and the next
   * parked under its destination (due now before backlog, earliest first).
   */
  release(t: DueTimer): Unparked[] {
    this.groups.give(t.groupId);
    this.destinations.give(t.destination);
    const out: Unparked[] = [];
    const g = this.groups.unparkNext(t.groupId);
    if (g) out.push(this.leave(g));
    const d = this.destinations.unparkNext(t.destination);
    if (d) out.push(this.leave(d));
    return out;
  }

  /**
   * Safety net, for a periodic call: returns parked timers whose cap has room although no
   * release let them out (the timers let out earlier went elsewhere: rescheduled, or their
   * shard moved away). Looks at keys with parked timers only, never at every timer.
   */
  reopen(): Unparked[] {
    const out: Unparked[] = [];
    for (const table of [this.groups, this.destinations]) {
      for (const key of [...table.parked.keys()]) {
        for (let room = table.limit - (table.inFlight.get(key) ?? 0); room > 0; room--) {
          const t = table.unparkNext(key);
          if (!t) break;
          out.push(this.leave(t));
        }
      }
    }
    return out;
  }

  /** The parked entry of a timer, if it is parked. */
  get(groupId: string, timerId: string): DueTimer | undefined {
    const at = this.where.get(timerKey(groupId, timerId));
    return at?.table.parked.get(at.key)?.lane(at.lane).get(groupId, timerId);
  }

  /** Takes a parked timer out (it was rescheduled, or is to be forgotten). */
  remove(groupId: string, timerId: string): DueTimer | undefined {
    const k = timerKey(groupId, timerId);
    const at = this.where.get(k);
    const t = at?.table.remove(at.key, at.lane, groupId, timerId);
    return t && this.leave(t).timer;
  }

  /** Forgets parked timers the predicate picks (shards handed to another dispatcher). */
  removeWhere(drop: (t: DueTimer) => boolean): number {
    let n = 0;
    for (const table of [this.groups, this.destinations]) {
      for (const [key, p] of [...table.parked]) {
        const gone: ParkedTimer[] = [];
        const pick = (t: ParkedTimer): boolean => {
          if (!drop(t)) return false;
          gone.push(t);
          return true;
        };
        p.onTime.removeWhere(pick);
        p.catchUp.removeWhere(pick);
        for (const t of gone) this.where.delete(timerKey(t.groupId, t.timerId));
        n += gone.length;
        if (p.size === 0) table.parked.delete(key);
      }
    }
    return n;
  }

  private leave(p: ParkedTimer): Unparked {
    this.where.delete(timerKey(p.groupId, p.timerId));
    const { lane, ...timer } = p;
    return { timer, lane };
  }
}

/** A share (0..1] of the delivery slots as a slot count, at least 1. */
export function slotsOf(maxInFlight: number, share: number): number {
  return Math.max(1, Math.floor(maxInFlight * share));
}
