// Claiming one batch of admitted timers in Postgres and sorting out the answer. A claim is one
// statement for the whole batch (fenced by each shard's lease epoch); one bad entry never wedges
// it (claim-split.ts). Every admitted timer leaves in exactly one of three ways: claimed (to be
// launched), to be held again (a claim that failed changed nothing in Postgres), or not claimed
// (cancelled, rescheduled, claimed elsewhere, its shard moved, or dropped as refused): the caller
// gives each one's fair-share slots back accordingly.
import type { Logger } from "../../shared/src/logger.js";
import { claimSplitting } from "./claim-split.js";
import type { ClaimedTimer } from "./dispatch-store.js";
import { type DueTimer, timerKey } from "./due-queue.js";
import type { Lane } from "./fair-share.js";
import type { SchedulerEvents, SchedulerStore, ShardOwnership } from "./scheduler-deps.js";

/** An admitted timer and the lane it came from. */
export interface AdmittedTimer {
  timer: DueTimer;
  lane: Lane;
}

/** What came of claiming a batch. */
export interface ClaimRound {
  /** Claimed rows, in due order, each with what was admitted for it. */
  claimed: { row: ClaimedTimer; admitted: AdmittedTimer }[];
  /** Not settled because the claim failed (no fault of theirs): hold them again. */
  putBack: AdmittedTimer[];
  /** Not claimed, for good: their slots go to the next in line. */
  unclaimed: DueTimer[];
  /** The claim failed; the caller backs off before the next. */
  failed: boolean;
}

/** The claim's parameters besides the timers. */
export interface ClaimContext {
  store: Pick<SchedulerStore, "claim">;
  ownership: ShardOwnership;
  log: Logger;
  events: SchedulerEvents;
  claimLeadMs: number;
  claimTtlMs: number;
}

/** Claims `admitted` (those of shards still owned) and says what became of each. */
export async function claimAdmitted(ctx: ClaimContext, admitted: AdmittedTimer[]): Promise<ClaimRound> {
  const pending = new Map<string, AdmittedTimer>();
  for (const a of admitted) pending.set(timerKey(a.timer.groupId, a.timer.timerId), a);
  const round: ClaimRound = { claimed: [], putBack: [], unclaimed: [], failed: false };
  const take = (groupId: string, timerId: string): AdmittedTimer | undefined => {
    const key = timerKey(groupId, timerId);
    const a = pending.get(key);
    pending.delete(key);
    return a;
  };
  try {
    const wanted = admitted.map((a) => a.timer).filter((t) => ctx.ownership.owns(t.shard));
    const result = await claimSplitting(wanted, (part) =>
      ctx.store.claim(
        part,
        part.map((t) => ctx.ownership.epochOf(t.shard)),
        ctx.claimLeadMs,
        ctx.claimTtlMs,
      ),
    );
    // UPDATE ... RETURNING has no order; launch in due order.
    result.claimed.sort((a, b) => a.next_attempt_at.getTime() - b.next_attempt_at.getTime());
    for (const row of result.claimed) {
      const a = take(row.group_id, row.timer_id);
      if (a) round.claimed.push({ row, admitted: a }); // always: a claim returns only timers it was given
    }
    for (const { entry, err } of result.dropped) {
      ctx.events.claimDropped?.();
      ctx.log.error(
        { err, group_id: entry.groupId, timer_id: entry.timerId, shard: entry.shard },
        "dropped a timer that Postgres refuses in a claim even alone; the rest of its batch went on",
      );
    }
    if (result.retry.length > 0) {
      ctx.log.error(
        { err: result.error, count: result.retry.length },
        "claiming due timers failed; retrying",
      );
      for (const t of result.retry) {
        const a = take(t.groupId, t.timerId);
        if (a) round.putBack.push(a);
      }
      round.failed = true;
    }
  } catch (err) {
    ctx.log.error({ err }, "claiming due timers failed unexpectedly; retrying");
    round.putBack.push(...pending.values());
    pending.clear();
    round.failed = true;
  }
  for (const a of pending.values()) round.unclaimed.push(a.timer);
  return round;
}
