// Reading timers the way an operator inspects them: the failed ones page by page, and one timer
// with its claim, its shard's lease, its group's pause and every delivery attempt (ExplainTimer).
import type pg from "pg";
import { boundedPageSql, TIMER_BYTES_SQL, timerColumnsOf } from "../../shared/src/page-bytes.js";
import { State, TIMER_COLUMNS, type TimerRow } from "../../shared/src/timer-model.js";
import type { FailedCursor } from "./admin-requests.js";

/** A failed timer with the exact finish time to page on; window_rows as boundedPageSql says. */
export type FailedRow = TimerRow & { finish_key: string; window_rows: number };

/**
 * A page of FAILED timers, most recently failed first, after `after`: at most `limit`, cut
 * where their estimated size passes `maxBytes` (the first always comes).
 */
export async function listFailedTimers(
  pool: pg.Pool,
  groupId: string | null,
  after: FailedCursor | null,
  limit: number,
  maxBytes: number,
): Promise<FailedRow[]> {
  const { rows } = await pool.query<FailedRow>(
    `-- list_failed_timers
     ${boundedPageSql({
       keysetQuery: `SELECT shard, group_id, timer_id, finish_time, finish_time::text AS finish_key, ${TIMER_BYTES_SQL} AS bytes FROM timers
                      WHERE state = ${State.Failed} AND finish_time IS NOT NULL
                        AND ($1::text IS NULL OR group_id = $1::text)
                        AND ($2::timestamptz IS NULL OR (finish_time, group_id, timer_id) < ($2::timestamptz, $3::text, $4::text))
                      ORDER BY finish_time DESC, group_id DESC, timer_id DESC
                      LIMIT $5`,
       orderBy: "finish_time DESC, group_id DESC, timer_id DESC",
       columns: `${timerColumnsOf(TIMER_COLUMNS)}, s.finish_key`,
       maxBytesParam: "$6::bigint",
     })}`,
    [groupId, after?.finish ?? null, after?.groupId ?? null, after?.timerId ?? null, limit, maxBytes],
  );
  return rows;
}

/** A timer with its claim, its shard's lease and its group's pause. */
export type ExplainRow = TimerRow & {
  claim_owner: string | null;
  claim_expires_at: Date | null;
  lease_owner: string | null;
  lease_epoch: string;
  lease_expires_at: Date | null;
  leased: boolean;
  paused_at: Date | null;
  paused_by: string | null;
  pause_reason: string | null;
  /** The traceparent of the CreateTimer call that made the timer, when it had one. */
  create_traceparent: string | null;
  db_now: Date;
};

/** Everything ExplainTimer needs from the timer's row and its shard, or undefined. */
export async function explainTimer(
  pool: pg.Pool,
  groupId: string,
  timerId: string,
  shard: number,
): Promise<ExplainRow | undefined> {
  const { rows } = await pool.query<ExplainRow>(
    `-- explain_timer
     SELECT ${timerColumnsOf(TIMER_COLUMNS)},
            t.claim_owner, t.claim_expires_at,
            l.last_owner AS lease_owner, coalesce(l.epoch, 0)::text AS lease_epoch,
            l.lease_expires_at,
            coalesce(l.owner IS NOT NULL, false) AS leased,
            p.paused_at, p.paused_by, p.reason AS pause_reason, t.create_traceparent, now() AS db_now
       FROM timers t
       LEFT JOIN shard_owners l ON l.shard = t.shard
       LEFT JOIN paused_groups p ON p.group_id = t.group_id
      WHERE t.shard = $3 AND t.group_id = $1 AND t.timer_id = $2`,
    [groupId, timerId, shard],
  );
  return rows[0];
}

/** One delivery attempt. */
export interface AttemptRow {
  attempt: number;
  dispatcher_id: string;
  started_at: Date;
  finished_at: Date;
  outcome: string;
  error: string | null;
  /** NULL when nothing was sent (expired, abandoned) and for attempts older than the column. */
  trace_id: string | null;
}

/** A timer's delivery attempts, oldest first. */
export async function timerAttempts(
  pool: pg.Pool,
  groupId: string,
  timerId: string,
  shard: number,
): Promise<AttemptRow[]> {
  const { rows } = await pool.query<AttemptRow>(
    `-- timer_attempts
     SELECT attempt, dispatcher_id, started_at, finished_at, outcome, error, trace_id FROM timer_attempts
      WHERE shard = $3 AND group_id = $1 AND timer_id = $2
      ORDER BY id`,
    [groupId, timerId, shard],
  );
  return rows;
}
