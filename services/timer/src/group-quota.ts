// The limit of active (SCHEDULED + FIRING + PAUSED: a paused timer fires once resumed) timers per group: GROUP_MAX_ACTIVE_TIMERS, or the
// group's own limit set by an admin (group_quotas). Pure: no I/O.
//
// Counting a group's timers at every create would cost a scan per create (creates are batched
// and must reach tens of thousands per second), so the estimate is
//
//   active(group) = count at the last recount (every ACTIVE_TIMERS_REFRESH, the same recount
//                   that feeds active_timers_total)
//                 + timers this process created since that recount began
//                 + creates of this process admitted and still being stored
//
// How exact that is:
// - With one timer service, never below the truth: a group can never pass its limit. It is
//   above the truth by the timers that finished (fired, cancelled) since the last recount, and
//   by the creates that committed while the recount ran (counted twice until the next one), so
//   a group near its limit may be refused a little early, for at most one refresh interval.
// - With N timer services, each sees the others' creates only at its next recount: a group can
//   pass its limit by what the other N-1 create within one ACTIVE_TIMERS_REFRESH.
// - Overrides (SetGroupQuota) take effect at the next recount, within ACTIVE_TIMERS_REFRESH.

/** A create refused by the quota: what the caller is told. */
export interface QuotaRefusal {
  groupId: string;
  limit: number;
  active: number;
  /** The limit is the group's own (set by an admin), not GROUP_MAX_ACTIVE_TIMERS. */
  overridden: boolean;
}

/** A create admitted by the quota; say how it ended, exactly once. */
export interface Admission {
  /** The create stored a new timer. */
  created(): void;
  /** The create stored nothing (a replay, a conflict, an error). */
  released(): void;
}

/** What a recount found: active timers per group (absent = 0) and the groups' own limits. */
export interface Recount {
  activeByGroup: ReadonlyMap<string, number>;
  overrides: ReadonlyMap<string, number>;
}

/** Active timers per group, as this process knows them, against their limits. */
export class GroupQuota {
  private counted: ReadonlyMap<string, number> = new Map();
  private overrides: ReadonlyMap<string, number> = new Map();
  private createdSinceRecount = new Map<string, number>();
  private readonly storing = new Map<string, number>();

  constructor(readonly defaultLimit: number) {}

  /** The limit of a group: its own, or the default. */
  limitOf(groupId: string): number {
    return this.overrides.get(groupId) ?? this.defaultLimit;
  }

  /** The estimated active timers of a group (see the top of this file). */
  activeOf(groupId: string): number {
    return (
      (this.counted.get(groupId) ?? 0) +
      (this.createdSinceRecount.get(groupId) ?? 0) +
      (this.storing.get(groupId) ?? 0)
    );
  }

  /** Admits one more create for the group, or says why not. */
  admit(groupId: string): Admission | QuotaRefusal {
    const limit = this.limitOf(groupId);
    const active = this.activeOf(groupId);
    if (active + 1 > limit) return { groupId, limit, active, overridden: this.overrides.has(groupId) };
    add(this.storing, groupId, 1);
    let done = false;
    const finish = (created: boolean) => {
      if (done) return;
      done = true;
      add(this.storing, groupId, -1);
      if (created) add(this.createdSinceRecount, groupId, 1);
    };
    return { created: () => finish(true), released: () => finish(false) };
  }

  /**
   * Call when a recount query starts; call the returned function with its result, or with
   * undefined when it failed. Creates finished before the query started are in its result;
   * those finished after are counted again on top until the next recount.
   */
  recountStarting(): (result: Recount | undefined) => void {
    const before = this.createdSinceRecount;
    this.createdSinceRecount = new Map();
    return (result) => {
      if (result) {
        this.counted = result.activeByGroup;
        this.overrides = result.overrides;
        return;
      }
      for (const [g, n] of before) add(this.createdSinceRecount, g, n);
    };
  }
}

/** Whether admit() refused. */
export function isRefusal(a: Admission | QuotaRefusal): a is QuotaRefusal {
  return "limit" in a;
}

function add(m: Map<string, number>, key: string, n: number): void {
  const v = (m.get(key) ?? 0) + n;
  if (v === 0) m.delete(key);
  else m.set(key, v);
}
