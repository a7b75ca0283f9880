// RetryTimers and CancelTimers in SQL. Both are the same bulk change: pick up to `limit` timers
// in one state that match a selection (skipping rows locked by others), move them, and record
// the change with a sample of what moved in the same statement; their dry runs count the
// matches and record that instead. BulkAction says what differs between the two.
import type { JsonValue } from "@bufbuild/protobuf";
import type pg from "pg";
import { timerColumnsOf } from "../../shared/src/page-bytes.js";
import type { TimerState } from "../../shared/src/gen/timer/v1/timer_pb.js";
import { State } from "../../shared/src/timer-model.js";
import { SAMPLE_SIZE, type TimerSelection } from "./admin-requests.js";
import { type AuditInfo, auditParams, insertAuditSql } from "./audit-store.js";

/** A timer as a bulk change reports it. */
export interface SummaryRow {
  group_id: string;
  timer_id: string;
  shard: number;
  fire_at: Date;
  next_attempt_at: Date;
  state: number;
  attempt: number;
  last_error: string | null;
  /** The callback (proto JSON), only on rows a retry returns: their announcements name its destination. */
  callback?: JsonValue;
}

const SUMMARY_COLUMNS = "group_id, timer_id, shard, fire_at, next_attempt_at, state, attempt, last_error";

/** The outcome of a bulk change: the rows changed (in fire_at order) and whether more match. */
export interface BulkChange {
  changed: SummaryRow[];
  more: boolean;
}

/** The outcome of a bulk dry run: how many match in all, and the first of them. */
export interface BulkPreview {
  matched: number;
  sample: SummaryRow[];
}

/** What one kind of bulk change does; the rest of its SQL is shared. */
export interface BulkAction {
  /** The operation's name in the per-operation metrics; its dry run adds "_dry_run". */
  operation: string;
  /** Only timers in this state are selected and changed. */
  from: TimerState;
  /** The UPDATE's SET list. */
  set: string;
  /** Columns the UPDATE returns besides the summary's. */
  alsoReturning: string;
  /** The audit result's key for the number changed; the dry run's is `would_<verb>`. */
  countKey: string;
  verb: string;
}

/**
 * FAILED back to SCHEDULED, due now, attempts reset (last_error kept). The callback comes back
 * so the handler can announce each timer to its shard's owner.
 */
export const RETRY: BulkAction = {
  operation: "retry_timers",
  from: State.Failed,
  set: `state = ${State.Scheduled}, next_attempt_at = now(), attempt = 0, finish_time = NULL,
              claim_owner = NULL, claim_expires_at = NULL`,
  alsoReturning: ", t.callback",
  countKey: "retried",
  verb: "retry",
};

/** SCHEDULED to CANCELLED, finish time now. */
export const CANCEL: BulkAction = {
  operation: "cancel_timers",
  from: State.Scheduled,
  set: `state = ${State.Cancelled}, finish_time = now()`,
  alsoReturning: "",
  countKey: "cancelled",
  verb: "cancel",
};

/** Selection filter over $1 group, $2 timer, $3 fire_after, $4 fire_before ($5 is the limit). */
const SELECTION = `($1::text IS NULL OR group_id = $1::text)
         AND ($2::text IS NULL OR timer_id = $2::text)
         AND ($3::timestamptz IS NULL OR fire_at >= $3::timestamptz)
         AND ($4::timestamptz IS NULL OR fire_at < $4::timestamptz)`;

/** The first SAMPLE_SIZE rows of a CTE as [{group_id, timer_id}] in fire_at order. */
function sampleJson(cte: string): string {
  return `coalesce((SELECT jsonb_agg(jsonb_build_object('group_id', s.group_id, 'timer_id', s.timer_id) ORDER BY s.fire_at, s.group_id, s.timer_id)
                      FROM (SELECT group_id, timer_id, fire_at FROM ${cte} ORDER BY fire_at, group_id, timer_id LIMIT ${SAMPLE_SIZE}) s), '[]'::jsonb)`;
}

/**
 * Runs a bulk statement with the selection and audit parameters. Its rows are the timers (in
 * fire_at order), each also carrying the statement's one-row answer (`has_more` or `matched`);
 * with no timer, one row of nulls carries it.
 */
async function queryBulk<Answer extends object>(
  pool: pg.Pool,
  sql: string,
  sel: TimerSelection,
  audit: AuditInfo,
): Promise<{ answer: Partial<Answer>; timers: SummaryRow[] }> {
  const { rows } = await pool.query<(SummaryRow | { [K in keyof SummaryRow]: null }) & Answer>(sql, [
    sel.groupId,
    sel.timerId,
    sel.fireAfter,
    sel.fireBefore,
    sel.limit,
    ...auditParams(audit),
  ]);
  const timers: SummaryRow[] = [];
  for (const r of rows) if (r.group_id !== null) timers.push(r);
  return { answer: rows[0] ?? {}, timers };
}

/** Changes up to sel.limit timers as `action` says, skipping rows locked by others, and records it. */
export async function bulkChange(
  pool: pg.Pool,
  action: BulkAction,
  sel: TimerSelection,
  audit: AuditInfo,
): Promise<BulkChange> {
  const { answer, timers } = await queryBulk<{ has_more: boolean }>(
    pool,
    `-- ${action.operation}
     WITH picked AS (
       SELECT shard, group_id, timer_id FROM timers
        WHERE state = ${action.from} AND ${SELECTION}
        ORDER BY fire_at, group_id, timer_id
        LIMIT $5
        FOR UPDATE SKIP LOCKED
     ), m AS (
       SELECT count(*) > $5::int AS has_more
         FROM (SELECT 1 FROM timers WHERE state = ${action.from} AND ${SELECTION} LIMIT $5::int + 1) x
     ), u AS (
       UPDATE timers t
          SET ${action.set}
         FROM picked p
        WHERE t.shard = p.shard AND t.group_id = p.group_id AND t.timer_id = p.timer_id AND t.state = ${action.from}
       RETURNING ${timerColumnsOf(SUMMARY_COLUMNS)}${action.alsoReturning}
     ), audit AS (
       ${insertAuditSql(6, "'OK'", `jsonb_build_object('${action.countKey}', (SELECT count(*) FROM u), 'more', m.has_more, 'sample', ${sampleJson("u")})`, "FROM m")}
     )
     SELECT m.has_more, u.* FROM m CROSS JOIN audit LEFT JOIN u ON true
      ORDER BY u.fire_at, u.group_id, u.timer_id`,
    sel,
    audit,
  );
  return { more: answer.has_more ?? false, changed: timers };
}

/** Counts the timers `action` would change, returns the first of them, and records the dry run. */
export async function previewBulkChange(
  pool: pg.Pool,
  action: BulkAction,
  sel: TimerSelection,
  audit: AuditInfo,
): Promise<BulkPreview> {
  const { answer, timers } = await queryBulk<{ matched: string }>(
    pool,
    `-- ${action.operation}_dry_run
     WITH c AS (
       SELECT count(*) AS matched FROM timers WHERE state = ${action.from} AND ${SELECTION}
     ), s AS (
       SELECT ${SUMMARY_COLUMNS} FROM timers WHERE state = ${action.from} AND ${SELECTION}
        ORDER BY fire_at, group_id, timer_id LIMIT ${SAMPLE_SIZE}
     ), audit AS (
       ${insertAuditSql(6, "'OK'", `jsonb_build_object('dry_run', true, 'would_${action.verb}', least(c.matched, $5::int), 'matched', c.matched, 'sample', ${sampleJson("s")})`, "FROM c")}
     )
     SELECT c.matched::text, s.* FROM c CROSS JOIN audit LEFT JOIN s ON true
      ORDER BY s.fire_at, s.group_id, s.timer_id`,
    sel,
    audit,
  );
  return { matched: Number(answer.matched ?? 0), sample: timers };
}

/** The state of one timer (its shard: shardOf(groupId, timerId, SHARD_COUNT)), or undefined when there is none. */
export async function timerState(
  pool: pg.Pool,
  groupId: string,
  timerId: string,
  shard: number,
): Promise<number | undefined> {
  const { rows } = await pool.query<{ state: number }>(
    `-- timer_state
     SELECT state FROM timers WHERE shard = $3 AND group_id = $1 AND timer_id = $2`,
    [groupId, timerId, shard],
  );
  return rows[0]?.state;
}
