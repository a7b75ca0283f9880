// A timer's lateness contract (timer.v1.LatenessContract), judged when its first delivery
// attempt starts: lateness is that start minus fire_at, and beyond max_lateness the policy
// decides: FIRE delivers as if on time, FIRE_MARKED delivers with the lateness in a header, SKIP
// delivers nothing and the timer ends EXPIRED. A pure function of the claimed row and the start
// time the scheduler read from Postgres's clock, so every rule is checked without a database.
import { compactDuration, latenessPolicyName } from "../../shared/src/lateness.js";
import { Lateness } from "../../shared/src/timer-model.js";
import type { ClaimedTimer } from "./dispatch-store.js";

/** What was done with a timer whose first attempt started beyond its max_lateness (the metric's `action`). */
export type LatenessAction = "fired" | "fired_marked" | "expired";

/** An attempt that started beyond its max_lateness, and what its policy does. */
export interface LatenessExceeded {
  action: LatenessAction;
  /** How late the attempt started, in whole milliseconds (never below the limit). */
  lateMs: number;
  maxLatenessMs: number;
  policy: number;
}

/** The verdict on one attempt: deliver as usual, or what the contract says beyond its limit. */
export type LatenessVerdict = { action: "deliver" } | LatenessExceeded;

/** What the judgment reads of a claimed timer. */
export type JudgedTimer = Pick<
  ClaimedTimer,
  "attempt" | "fire_at" | "next_attempt_at" | "fired_time" | "max_lateness_ms" | "lateness_policy"
>;

const DELIVER: LatenessVerdict = Object.freeze({ action: "deliver" });

const ACTION_OF: Record<number, LatenessAction> = {
  [Lateness.Fire]: "fired",
  [Lateness.FireMarked]: "fired_marked",
  [Lateness.Skip]: "expired",
};

/**
 * Judges the attempt of `t` starting at `startedMs` (epoch ms, Postgres's clock). Only a timer's
 * first start is judged: a retry of a started timer never is, and neither is a timer an operator
 * sent again (RetryTimers, a bulk retry of a FAILED or EXPIRED timer): its attempts start over
 * at 1, but the claim keeps its first fired_time, which lies before its new due time, while a
 * first start's fired_time is never before it (the claim sets greatest(now(), next_attempt_at)).
 */
export function judgeLateness(t: JudgedTimer, startedMs: number): LatenessVerdict {
  if (t.max_lateness_ms === null || t.attempt !== 1) return DELIVER;
  if (t.fired_time !== null && t.fired_time.getTime() < t.next_attempt_at.getTime()) return DELIVER;
  const maxLatenessMs = Number(t.max_lateness_ms);
  const late = startedMs - t.fire_at.getTime();
  if (!(late > maxLatenessMs)) return DELIVER;
  return {
    action: ACTION_OF[t.lateness_policy] ?? "fired",
    lateMs: Math.max(maxLatenessMs, Math.floor(late)),
    maxLatenessMs,
    policy: t.lateness_policy,
  };
}

/** The last_error of a timer its contract skipped: how late, the limit, and the policy. */
export function expiredError(v: Omit<LatenessExceeded, "action">): string {
  return (
    `expired: started ${compactDuration(v.lateMs)} after fire_at, beyond max_lateness ` +
    `${compactDuration(v.maxLatenessMs)} (lateness policy ${latenessPolicyName(v.policy)})`
  );
}
