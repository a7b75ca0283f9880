// What "a shard's backlog" and "a shard's lag" mean, in SQL, once: the dispatcher's lag gauge
// (timer_shard_lag_seconds, which ShardLagHigh alerts on), the admin's ListShards and GetStats
// all read them, and they must agree with each other.
import { State } from "./timer-model.js";

/**
 * FROM-and-WHERE of one shard's due timers (SCHEDULED, next attempt now or past); `shard` is the
 * SQL expression of the shard, e.g. "l.shard". Per shard, so each query reads the due part of its
 * own range of timers_due_idx (led by the shard) instead of the whole index; select `min(...)`
 * alone to read only the range's first entry.
 */
export function dueTimersOfShardSql(shard: string): string {
  return `timers WHERE state = ${State.Scheduled} AND timers.shard = ${shard} AND next_attempt_at <= now()`;
}

/** Seconds a shard lags (now minus `oldest`, its oldest due next_attempt_at), as an SQL expression; NULL when nothing is due. */
export function lagSecondsSql(oldest: string): string {
  return `extract(epoch FROM now() - ${oldest})`;
}
