// What "a shard's backlog" and "a shard's lag" mean, in SQL, once: the dispatcher's lag gauge
// (timer_shard_lag_seconds, which ShardLagHigh alerts on), the admin's ListShards and GetStats
// all read them, and they must agree with each other and with what the dispatchers claim. A
// paused group's timers are not claimed (they wait, on purpose, until it is resumed), so they are
// not backlog either: counting them made pausing a group page as if its shard's owner were stuck.
// They are counted on their own instead (timer_paused_due_timers, pausedDueTimersSql).
import { State } from "./timer-model.js";

/**
 * SQL condition: the group `groupId` (an SQL expression, e.g. "t.group_id") is paused. Claims,
 * the catch-up read and the backlog all leave out the timers for which it holds.
 */
export function groupPausedSql(groupId: string): string {
  return `EXISTS (SELECT 1 FROM paused_groups p WHERE p.group_id = ${groupId})`;
}

/**
 * FROM-and-WHERE of one shard's backlog: its due timers (SCHEDULED, next attempt now or past)
 * outside paused groups; `shard` is the SQL expression of the shard, e.g. "l.shard". Per shard,
 * so each query reads the due part of its own range of timers_due_idx (led by the shard) instead
 * of the whole index.
 */
export function dueTimersOfShardSql(shard: string): string {
  return `timers WHERE state = ${State.Scheduled} AND timers.shard = ${shard} AND next_attempt_at <= now()
     AND NOT ${groupPausedSql("timers.group_id")}`;
}

/**
 * The oldest next_attempt_at of a shard's backlog as a scalar subquery (NULL when none is due).
 * Written as ORDER BY ... LIMIT 1 rather than min(): Postgres turns min() into a read of the
 * index's first entry only for a single table, and the paused-group test makes this a join, so
 * min() would aggregate every due row of the shard. This walks the shard's due range in order
 * and stops at the first timer of an unpaused group (it reads past a paused group's due timers
 * only, usually none).
 */
export function oldestDueOfShardSql(shard: string): string {
  return `(SELECT next_attempt_at FROM ${dueTimersOfShardSql(shard)} ORDER BY next_attempt_at LIMIT 1)`;
}

/** Seconds a shard lags (now minus `oldest`, its oldest due next_attempt_at), as an SQL expression; NULL when nothing is due. */
export function lagSecondsSql(oldest: string): string {
  return `extract(epoch FROM now() - ${oldest})`;
}

/**
 * FROM-and-WHERE of one group's due timers (SCHEDULED, next attempt now or past), whether or not
 * it is paused; `groupId` is an SQL expression. Read through timers_group_idx (group_id leads).
 */
export function dueTimersOfGroupSql(groupId: string): string {
  return `timers WHERE timers.group_id = ${groupId} AND state = ${State.Scheduled} AND next_attempt_at <= now()`;
}

/**
 * SELECT of the due SCHEDULED timers of each paused group that has any: (group_id, due::text).
 * It costs the paused groups' timers only.
 */
export function pausedDueTimersSql(): string {
  return `SELECT p.group_id, d.due::text AS due
       FROM paused_groups p
       CROSS JOIN LATERAL (SELECT count(*) AS due FROM ${dueTimersOfGroupSql("p.group_id")}) d
      WHERE d.due > 0`;
}
