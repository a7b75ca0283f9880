// What ExplainTimer says in words: how a timer's shard is computed, and what happens to the
// timer next. No I/O: the facts come from Postgres and the heartbeats.
import { compactDuration, latenessPolicyName } from "../../shared/src/lateness.js";
import { Lateness, State } from "../../shared/src/timer-model.js";
import { timerHash } from "../../shared/src/shard.js";

/** A timer's lateness contract (timer.v1.LatenessContract), when it has one. */
export interface ContractFacts {
  fireAtMs: number;
  maxLatenessMs: number;
  /** Stored lateness_policy code. */
  policy: number;
  /**
   * Its first attempt started already (fired_time set): the contract was judged then, and is
   * not again, also when an operator retries the timer.
   */
  started: boolean;
}

/** What is known about a timer and its shard when explaining it. */
export interface TimerFacts {
  groupId: string;
  state: number;
  nextAttemptAtMs: number;
  finishTimeMs: number | null;
  /** Delivery attempts made so far. */
  attempt: number;
  maxAttempts: number;
  lastError: string | null;
  claimOwner: string | null;
  claimExpiresAtMs: number | null;
  pause: { by: string; atMs: number; reason: string } | null;
  shard: number;
  /** Holder of the shard's unexpired lease, or null when nobody holds it. */
  leaseOwner: string | null;
  leaseExpiresAtMs: number | null;
  ownerLive: boolean;
  nowMs: number;
  /** Its lateness contract; absent when it has none. */
  lateness?: ContractFacts;
}

const iso = (ms: number) => new Date(ms).toISOString();

/** "12.3 s", "4 min", "2.5 h": a rough length of time for sentences. */
export function roughDuration(ms: number): string {
  const a = Math.abs(ms);
  if (a < 1_000) return `${Math.round(a)} ms`;
  if (a < 120_000) return `${(a / 1_000).toFixed(1)} s`;
  if (a < 7_200_000) return `${Math.round(a / 60_000)} min`;
  if (a < 172_800_000) return `${(a / 3_600_000).toFixed(1)} h`;
  return `${(a / 86_400_000).toFixed(1)} d`;
}

/** How the shard of (group, timer) is computed, with this timer's numbers. */
export function shardComputation(groupId: string, timerId: string, shardCount: number): string {
  const h = timerHash(groupId, timerId);
  return (
    `fnv1a32(utf8(${JSON.stringify(groupId)}) || 0x00 || utf8(${JSON.stringify(timerId)})) = ` +
    `0x${h.toString(16).padStart(8, "0")} = ${h}; ${h} mod ${shardCount} = ${h % shardCount}`
  );
}

const attempts = (n: number) => `${n} attempt${n === 1 ? "" : "s"}`;

/** One sentence on what happens to the timer next. */
export function whatHappensNext(f: TimerFacts): string {
  switch (f.state) {
    case State.Succeeded:
      return `finished: SUCCEEDED${f.finishTimeMs !== null ? ` at ${iso(f.finishTimeMs)}` : ""} after ${attempts(f.attempt)}`;
    case State.Cancelled:
      return `finished: CANCELLED${f.finishTimeMs !== null ? ` at ${iso(f.finishTimeMs)}` : ""}`;
    case State.Expired:
      return expiredNext(f);
    case State.Paused:
      return pausedNext(f);
    case State.Failed:
      return (
        `finished: FAILED${f.finishTimeMs !== null ? ` at ${iso(f.finishTimeMs)}` : ""} after ${attempts(f.attempt)}` +
        `${f.lastError ? ` (last error: ${f.lastError})` : ""}; AdminService/RetryTimers fires it again`
      );
    case State.Firing:
      return (
        `delivering now: attempt ${f.attempt} of ${f.maxAttempts} by ${f.claimOwner ?? "a dispatcher"}` +
        (f.claimExpiresAtMs !== null
          ? `; if it stops mid-delivery, the claim expires at ${iso(f.claimExpiresAtMs)} and the attempt is made again`
          : "")
      );
    case State.Scheduled:
      return scheduledNext(f) + contractClause(f);
    default:
      return `unknown state ${f.state}`;
  }
}

function scheduledNext(f: TimerFacts): string {
  const dueIn = f.nextAttemptAtMs - f.nowMs;
  if (f.pause) {
    const why = f.pause.reason ? `: ${f.pause.reason}` : "";
    const due =
      dueIn <= 0 ? `; it is due (by ${roughDuration(dueIn)}) and` : `; due at ${iso(f.nextAttemptAtMs)}, it`;
    return `waiting: group ${JSON.stringify(f.groupId)} is paused (by ${f.pause.by} at ${iso(f.pause.atMs)}${why})${due} fires once the group is resumed`;
  }
  if (f.leaseOwner === null) {
    return `waiting: shard ${f.shard} has no owner (no dispatcher holds its lease); it fires ${dueIn > 0 ? `at ${iso(f.nextAttemptAtMs)} or ` : ""}as soon as a dispatcher takes the shard`;
  }
  const by = `by dispatcher ${f.leaseOwner}`;
  const caveat = f.ownerLive
    ? ""
    : ` (not heard on NATS: if it is gone, its lease expires${f.leaseExpiresAtMs !== null ? ` at ${iso(f.leaseExpiresAtMs)}` : ""} and another dispatcher takes the shard)`;
  const what = f.attempt === 0 ? "fires" : `retry ${f.attempt + 1} of ${f.maxAttempts}`;
  if (dueIn > 0) {
    return `${what} at ${iso(f.nextAttemptAtMs)} (in ${roughDuration(dueIn)}) ${by}${caveat}`;
  }
  return `overdue by ${roughDuration(dueIn)}: ${what} as soon as dispatcher ${f.leaseOwner} picks it up (late timers go oldest first)${caveat}`;
}

/** "finished: EXPIRED at T, 40m12s late (max_lateness 5m, SKIP)". */
function expiredNext(f: TimerFacts): string {
  const at = f.finishTimeMs !== null ? ` at ${iso(f.finishTimeMs)}` : "";
  const c = f.lateness;
  if (!c || f.finishTimeMs === null) return `finished: EXPIRED${at}`;
  const late = compactDuration(Math.max(0, f.finishTimeMs - c.fireAtMs));
  return (
    `finished: EXPIRED${at}, ${late} late (max_lateness ${compactDuration(c.maxLatenessMs)}, ` +
    `${latenessPolicyName(c.policy)}): not delivered; AdminService/StartBulkOperation retry fires it again`
  );
}

/**
 * What the lateness contract will do, after a scheduled timer's sentence: "; skipped (EXPIRED) if
 * not started by T+5m". Only a first attempt is judged, so a retry's sentence has none.
 */
function contractClause(f: TimerFacts): string {
  const c = f.lateness;
  if (!c || c.started || f.attempt > 0) return "";
  const deadlineMs = c.fireAtMs + c.maxLatenessMs;
  const limit = `max_lateness ${compactDuration(c.maxLatenessMs)}`;
  const what =
    c.policy === Lateness.Skip
      ? "skipped (EXPIRED), not delivered"
      : c.policy === Lateness.FireMarked
        ? "delivered marked late (x-timer-late-ms)"
        : "delivered all the same (FIRE), counted late";
  if (f.nowMs > deadlineMs)
    return `; already beyond its ${limit} (since ${iso(deadlineMs)}): ${what} when its attempt starts`;
  return `; ${what} if not started by ${iso(deadlineMs)} (${limit})`;
}

/** A timer held by a bulk pause: it waits for a bulk resume, however due it is. */
function pausedNext(f: TimerFacts): string {
  const dueIn = f.nextAttemptAtMs - f.nowMs;
  const due = dueIn > 0 ? `due at ${iso(f.nextAttemptAtMs)}` : `overdue by ${roughDuration(dueIn)}`;
  return (
    `paused by a bulk operation (${due}): it does not fire until AdminService/StartBulkOperation resume ` +
    `makes it SCHEDULED again${dueIn > 0 ? "" : ", then it fires at once"}`
  );
}
