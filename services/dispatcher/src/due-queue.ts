// The timers a dispatcher holds in memory, ordered by when they are due. A binary min-heap
// with a key map: adding, finding the earliest and removing are O(log n), and a timer is held
// at most once whatever path (load, announcement, retry) brought it.

/** A timer held in memory until it is due. */
export interface DueTimer {
  groupId: string;
  timerId: string;
  shard: number;
  dueMs: number;
}

interface Slot extends DueTimer {
  key: string;
  index: number;
}

/** Key of a timer in the queue. */
export function timerKey(groupId: string, timerId: string): string {
  return `${groupId}\u0000${timerId}`;
}

/** Min-heap of held timers by due time, one slot per timer. */
export class DueQueue {
  private heap: Slot[] = [];
  private byKey = new Map<string, Slot>();

  get size(): number {
    return this.heap.length;
  }

  has(groupId: string, timerId: string): boolean {
    return this.byKey.has(timerKey(groupId, timerId));
  }

  /** Holds a timer; if it is held already, moves it to the new due time. */
  add(t: DueTimer): void {
    const key = timerKey(t.groupId, t.timerId);
    const existing = this.byKey.get(key);
    if (existing) {
      if (existing.dueMs === t.dueMs) return;
      const earlier = t.dueMs < existing.dueMs;
      existing.dueMs = t.dueMs;
      if (earlier) this.up(existing.index);
      else this.down(existing.index);
      return;
    }
    const slot: Slot = { ...t, key, index: this.heap.length };
    this.heap.push(slot);
    this.byKey.set(key, slot);
    this.up(slot.index);
  }

  /** The earliest due time held, or undefined when empty. */
  peekDueMs(): number | undefined {
    return this.heap[0]?.dueMs;
  }

  /** Removes and returns timers due at or before `untilMs`, earliest first, at most `max`. */
  popDue(untilMs: number, max: number): DueTimer[] {
    const out: DueTimer[] = [];
    while (out.length < max && this.heap.length > 0 && this.heap[0]!.dueMs <= untilMs) {
      const s = this.removeAt(0);
      out.push({ groupId: s.groupId, timerId: s.timerId, shard: s.shard, dueMs: s.dueMs });
    }
    return out;
  }

  /** Drops a timer if held. */
  remove(groupId: string, timerId: string): boolean {
    const s = this.byKey.get(timerKey(groupId, timerId));
    if (!s) return false;
    this.removeAt(s.index);
    return true;
  }

  /** Drops every timer whose shard fails the predicate (shards handed to another dispatcher). */
  removeWhere(drop: (t: DueTimer) => boolean): number {
    const keep = this.heap.filter((s) => !drop(s));
    const removed = this.heap.length - keep.length;
    if (removed === 0) return 0;
    this.heap = keep;
    this.byKey = new Map(keep.map((s, i) => ((s.index = i), [s.key, s])));
    for (let i = (this.heap.length >> 1) - 1; i >= 0; i--) this.down(i);
    return removed;
  }

  /** Counts held timers due at or before `untilMs` (a scan: for scrapes, not hot paths). */
  countDue(untilMs: number): number {
    let n = 0;
    for (const s of this.heap) if (s.dueMs <= untilMs) n++;
    return n;
  }

  private removeAt(i: number): Slot {
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
      if (h[p]!.dueMs <= h[i]!.dueMs) break;
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
      if (l < h.length && h[l]!.dueMs < h[m]!.dueMs) m = l;
      if (r < h.length && h[r]!.dueMs < h[m]!.dueMs) m = r;
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
