// The timers a dispatcher holds in memory, ordered by when they are due. A binary min-heap
// with a key map: adding, finding the earliest and removing are O(log n), and a timer is held
// at most once whatever path (load, announcement, retry) brought it.
import { timerKey } from "../../shared/src/timer-id.js";

/** A timer held in memory until it is due. */
export interface DueTimer {
  groupId: string;
  timerId: string;
  shard: number;
  dueMs: number;
  /** Where its callback goes (services/shared/src/callback-destination.ts): fair delivery counts by it. */
  destination: string;
  /**
   * The timer's version when it was loaded or announced (timers.version): its claim is fenced
   * by it, so an updated timer is never fired as it was. 0 (an announcer that predates
   * versions): any version is claimed.
   */
  version: number;
}

/**
 * Whether a timer entry of version `incoming` is older than the held one of version `held`, and
 * must not replace it (an announcement or a load that arrives after a newer one). 0 is unknown,
 * never older.
 */
export function isOlderVersion(incoming: number, held: number): boolean {
  return incoming !== 0 && held !== 0 && incoming < held;
}

interface Slot<T extends DueTimer> {
  timer: T;
  key: string;
  index: number;
}

// The queue's key of a timer, re-exported for the scheduler and fair-share, which key by it too.
export { timerKey };

/** Min-heap of held timers by due time, one slot per timer. */
export class DueQueue<T extends DueTimer = DueTimer> {
  private heap: Slot<T>[] = [];
  private byKey = new Map<string, Slot<T>>();

  get size(): number {
    return this.heap.length;
  }

  has(groupId: string, timerId: string): boolean {
    return this.byKey.has(timerKey(groupId, timerId));
  }

  /** The held entry of a timer, if any. */
  get(groupId: string, timerId: string): T | undefined {
    return this.byKey.get(timerKey(groupId, timerId))?.timer;
  }

  /**
   * Holds a timer; if it is held already, moves it to the new due time, unless the entry held
   * is of a newer version (isOlderVersion): a late, stale entry never replaces it.
   */
  add(t: T): void {
    const key = timerKey(t.groupId, t.timerId);
    const existing = this.byKey.get(key);
    if (existing) {
      if (isOlderVersion(t.version, existing.timer.version)) return;
      const before = existing.timer.dueMs;
      existing.timer = t;
      if (t.dueMs < before) this.up(existing.index);
      else if (t.dueMs > before) this.down(existing.index);
      return;
    }
    const slot: Slot<T> = { timer: t, key, index: this.heap.length };
    this.heap.push(slot);
    this.byKey.set(key, slot);
    this.up(slot.index);
  }

  /** The earliest due time held, or undefined when empty. */
  peekDueMs(): number | undefined {
    return this.heap[0]?.timer.dueMs;
  }

  /** Removes and returns the earliest timer if it is due at or before `untilMs`. */
  popNext(untilMs: number): T | undefined {
    if (this.heap.length === 0 || this.heap[0]!.timer.dueMs > untilMs) return undefined;
    return this.removeAt(0).timer;
  }

  /** Removes and returns timers due at or before `untilMs`, earliest first, at most `max`. */
  popDue(untilMs: number, max: number): T[] {
    const out: T[] = [];
    while (out.length < max) {
      const t = this.popNext(untilMs);
      if (t === undefined) break;
      out.push(t);
    }
    return out;
  }

  /** Drops a timer if held, and returns it. */
  remove(groupId: string, timerId: string): T | undefined {
    const s = this.byKey.get(timerKey(groupId, timerId));
    if (!s) return undefined;
    this.removeAt(s.index);
    return s.timer;
  }

  /** Drops every timer the predicate picks (e.g. of shards handed to another dispatcher). */
  removeWhere(drop: (t: T) => boolean): number {
    const keep = this.heap.filter((s) => !drop(s.timer));
    const removed = this.heap.length - keep.length;
    if (removed === 0) return 0;
    this.heap = keep;
    this.byKey = new Map();
    keep.forEach((s, i) => {
      s.index = i;
      this.byKey.set(s.key, s);
    });
    for (let i = (this.heap.length >> 1) - 1; i >= 0; i--) this.down(i);
    return removed;
  }

  /** Counts held timers due at or before `untilMs` (a scan: for scrapes, not hot paths). */
  countDue(untilMs: number): number {
    let n = 0;
    for (const s of this.heap) if (s.timer.dueMs <= untilMs) n++;
    return n;
  }

  private removeAt(i: number): Slot<T> {
    const s = this.heap[i]!;
    const last = this.heap.pop()!;
    this.byKey.delete(s.key);
    if (i < this.heap.length) {
      this.heap[i] = last;
      last.index = i;
      this.down(i);
      this.up(last.index);
    }
    return s;
  }

  private up(i: number): void {
    const h = this.heap;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (h[p]!.timer.dueMs <= h[i]!.timer.dueMs) break;
      this.swap(i, p);
      i = p;
    }
  }

  private down(i: number): void {
    const h = this.heap;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && h[l]!.timer.dueMs < h[m]!.timer.dueMs) m = l;
      if (r < h.length && h[r]!.timer.dueMs < h[m]!.timer.dueMs) m = r;
      if (m === i) return;
      this.swap(i, m);
      i = m;
    }
  }

  private swap(a: number, b: number): void {
    const h = this.heap;
    const t = h[a]!;
    h[a] = h[b]!;
    h[b] = t;
    h[a]!.index = a;
    h[b]!.index = b;
  }
}
