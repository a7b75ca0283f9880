// The admin service's SQL. Every change is one statement that also writes its audit event
// (data-modifying CTEs), so the change and its record commit together or not at all, and every
// query names itself with a leading "-- operation" comment for the per-operation metrics.
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import type pg from "pg";
import { boundedPageSql, timerColumnsOf, TIMER_BYTES_SQL } from "../../shared/src/page-bytes.js";
import { State, TIMER_COLUMNS, type TimerRow } from "../../shared/src/timer-model.js";
import { SAMPLE_SIZE, type FailedCursor, type TimerSelection } from "./admin-requests.js";

/** Who changed what, recorded with the change. */
export interface AuditInfo {
  actor: string;
  /** The RPC, e.g. admin.v1.AdminService/PauseGroup. */
  action: string;
  /** The request as JSON. */
  arguments: JsonValue;
  traceId: string | null;
}

const FINISHED = `${State.Succeeded}, ${State.Failed}, ${State.Cancelled}`;

/** The audit parameters, appended after a query's own. */
function auditParams(a: AuditInfo): unknown[] {
  return [a.actor, a.action, JSON.stringify(a.arguments), a.traceId];
}

/** INSERT of an audit event whose outcome and result are SQL expressions; audit params from $first. */
function insertAudit(first: number, outcome: string, result: string, from = ""): string {
  return `INSERT INTO audit_events (actor, action, arguments, outcome, result, trace_id)
          SELECT $${first}::text, $${first + 1}::text, $${first + 2}::jsonb, ${outcome}, ${result}, $${first + 3}::text ${from}
          RETURNING id`;
}

/** The first SAMPLE_SIZE rows of a CTE as [{group_id, timer_id}] in fire_at order. */
function sampleJson(cte: string): string {
  return `coalesce((SELECT jsonb_agg(jsonb_build_object('group_id', s.group_id, 'timer_id', s.timer_id) ORDER BY s.fire_at, s.group_id, s.timer_id)
                      FROM (SELECT group_id, timer_id, fire_at FROM ${cte} ORDER BY fire_at, group_id, timer_id LIMIT ${SAMPLE_SIZE}) s), '[]'::jsonb)`;
}

/** Selection filter over $1 group, $2 timer, $3 fire_after, $4 fire_before. */
const SELECTION = `($1::text IS NULL OR group_id = $1::text)
         AND ($2::text IS NULL OR timer_id = $2::text)
         AND ($3::timestamptz IS NULL OR fire_at >= $3::timestamptz)
         AND ($4::timestamptz IS NULL OR fire_at < $4::timestamptz)`;

function selectionParams(s: TimerSelection): unknown[] {
  return [s.groupId, s.timerId, s.fireAfter, s.fireBefore, s.limit];
}

// ------------------------------------------------------------------------------ dispatchers

/** Shards per owner of an unexpired lease. */
export async function ownedShardCounts(pool: pg.Pool): Promise<Map<string, number>> {
  const { rows } = await pool.query<{ owner: string; owned: number }>(
    `-- owned_shard_counts
     SELECT owner, count(*)::int AS owned FROM shard_owners
      WHERE owner IS NOT NULL
      GROUP BY owner`,
  );
  return new Map(rows.map((r) => [r.owner, r.owned]));
}

/** A shard with its lease and backlog. */
export interface ShardRow {
  shard: number;
  owner: string | null;
  epoch: string;
  expires_at: Date | null;
  leased: boolean;
  lag: number;
  due: string;
}

/** Shards with lease, lag and due count; optionally one owner's, optionally only those lagging more than minLagSeconds. */
export async function listShards(
  pool: pg.Pool,
  owner: string | null,
  minLagSeconds: number | null,
): Promise<ShardRow[]> {
  const { rows } = await pool.query<ShardRow>(
    `-- list_shards
     SELECT l.shard, l.last_owner AS owner, l.epoch::text AS epoch,
            l.lease_expires_at AS expires_at,
            (l.owner IS NOT NULL) AS leased,
            coalesce(extract(epoch FROM now() - d.oldest), 0)::float8 AS lag,
            coalesce(d.due, 0)::text AS due
       FROM shard_owners l
       -- Per shard, so each reads the due part of its own range of timers_due_idx (led by the
       -- shard) instead of the whole index.
       CROSS JOIN LATERAL (SELECT count(*) AS due, min(next_attempt_at) AS oldest FROM timers
                            WHERE state = ${State.Scheduled} AND shard = l.shard AND next_attempt_at <= now()) d
      WHERE ($1::text IS NULL OR l.owner = $1::text)
        AND ($2::float8 IS NULL OR coalesce(extract(epoch FROM now() - d.oldest), 0) > $2::float8)
      ORDER BY l.shard`,
    [owner, minLagSeconds],
  );
  return rows;
}

// ------------------------------------------------------------------------------ groups

/** A paused group. */
export interface PauseRow {
  group_id: string;
  paused_at: Date;
  paused_by: string;
  reason: string;
}

/** Pauses a group (a paused one stays as it was) and records it; newly is false when it was paused already. */
export async function pauseGroup(
  pool: pg.Pool,
  groupId: string,
  reason: string,
  audit: AuditInfo,
): Promise<PauseRow & { newly: boolean }> {
  const { rows } = await pool.query<PauseRow & { newly: boolean }>(
    `-- pause_group
     WITH p AS (
       INSERT INTO paused_groups (group_id, paused_by, reason) VALUES ($1, $3, $2)
       ON CONFLICT (group_id) DO UPDATE SET group_id = EXCLUDED.group_id
       RETURNING group_id, paused_at, paused_by, reason, (xmax = 0) AS newly
     ), audit AS (
       ${insertAudit(3, "'OK'", "jsonb_build_object('newly_paused', p.newly, 'paused_at', p.paused_at, 'paused_by', p.paused_by)", "FROM p")}
     )
     SELECT p.* FROM p, audit`,
    [groupId, reason, ...auditParams(audit)],
  );
  return rows[0]!;
}

/** Resumes a group and records it: whether it was paused, and how many of its timers are overdue. */
export async function resumeGroup(
  pool: pg.Pool,
  groupId: string,
  audit: AuditInfo,
): Promise<{ wasPaused: boolean; overdue: number }> {
  const { rows } = await pool.query<{ was_paused: boolean; overdue: string }>(
    `-- resume_group
     WITH d AS (
       DELETE FROM paused_groups WHERE group_id = $1 RETURNING group_id
     ), o AS (
       SELECT EXISTS (SELECT 1 FROM d) AS was_paused,
              (SELECT count(*) FROM timers WHERE group_id = $1 AND state = ${State.Scheduled} AND next_attempt_at <= now()) AS overdue
     ), audit AS (
       ${insertAudit(2, "'OK'", "jsonb_build_object('was_paused', o.was_paused, 'overdue_timers', o.overdue)", "FROM o")}
     )
     SELECT o.was_paused, o.overdue::text FROM o, audit`,
    [groupId, ...auditParams(audit)],
  );
  return { wasPaused: rows[0]!.was_paused, overdue: Number(rows[0]!.overdue) };
}

/** A group with its timers counted per state, and its pause. */
export interface GroupRow {
  group_id: string;
  scheduled: string;
  firing: string;
  succeeded: string;
  failed: string;
  cancelled: string;
  paused_at: Date | null;
  paused_by: string | null;
  reason: string | null;
}

/** Every group with timers or a pause. Counts the whole timers table. */
export async function listGroups(pool: pg.Pool): Promise<GroupRow[]> {
  const { rows } = await pool.query<GroupRow>(
    `-- list_groups
     SELECT group_id,
            coalesce(c.scheduled, 0)::text AS scheduled, coalesce(c.firing, 0)::text AS firing,
            coalesce(c.succeeded, 0)::text AS succeeded, coalesce(c.failed, 0)::text AS failed,
            coalesce(c.cancelled, 0)::text AS cancelled,
            p.paused_at, p.paused_by, p.reason
       FROM (SELECT group_id,
                    count(*) FILTER (WHERE state = ${State.Scheduled}) AS scheduled,
                    count(*) FILTER (WHERE state = ${State.Firing}) AS firing,
                    count(*) FILTER (WHERE state = ${State.Succeeded}) AS succeeded,
                    count(*) FILTER (WHERE state = ${State.Failed}) AS failed,
                    count(*) FILTER (WHERE state = ${State.Cancelled}) AS cancelled
               FROM timers GROUP BY group_id) c
       FULL JOIN paused_groups p USING (group_id)
      ORDER BY group_id`,
  );
  return rows;
}

// ------------------------------------------------------------------------------ timers

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

async function bulkChange(
  pool: pg.Pool,
  sql: string,
  sel: TimerSelection,
  audit: AuditInfo,
): Promise<BulkChange> {
  const { rows } = await pool.query<Partial<SummaryRow> & { has_more: boolean }>(sql, [
    ...selectionParams(sel),
    ...auditParams(audit),
  ]);
  return {
    more: rows[0]?.has_more ?? false,
    changed: rows.filter((r) => r.group_id !== null && r.group_id !== undefined) as SummaryRow[],
  };
}

async function bulkPreview(
  pool: pg.Pool,
  sql: string,
  sel: TimerSelection,
  audit: AuditInfo,
): Promise<BulkPreview> {
  const { rows } = await pool.query<Partial<SummaryRow> & { matched: string }>(sql, [
    ...selectionParams(sel),
    ...auditParams(audit),
  ]);
  return {
    matched: Number(rows[0]?.matched ?? 0),
    sample: rows.filter((r) => r.group_id !== null && r.group_id !== undefined) as SummaryRow[],
  };
}

/**
 * Moves up to sel.limit FAILED timers back to SCHEDULED, due now, attempts reset (last_error
 * kept), skipping rows locked by others, and records it.
 */
export function retryTimers(pool: pg.Pool, sel: TimerSelection, audit: AuditInfo): Promise<BulkChange> {
  return bulkChange(
    pool,
    `-- retry_timers
     WITH picked AS (
       SELECT shard, group_id, timer_id FROM timers
        WHERE state = ${State.Failed} AND ${SELECTION}
        ORDER BY fire_at, group_id, timer_id
        LIMIT $5
        FOR UPDATE SKIP LOCKED
     ), m AS (
       SELECT count(*) > $5::int AS has_more
         FROM (SELECT 1 FROM timers WHERE state = ${State.Failed} AND ${SELECTION} LIMIT $5::int + 1) x
     ), u AS (
       UPDATE timers t
          SET state = ${State.Scheduled}, next_attempt_at = now(), attempt = 0, finish_time = NULL,
              claim_owner = NULL, claim_expires_at = NULL
         FROM picked p
        WHERE t.shard = p.shard AND t.group_id = p.group_id AND t.timer_id = p.timer_id AND t.state = ${State.Failed}
       RETURNING t.${SUMMARY_COLUMNS.split(", ").join(", t.")}, t.callback
     ), audit AS (
       ${insertAudit(6, "'OK'", `jsonb_build_object('retried', (SELECT count(*) FROM u), 'more', m.has_more, 'sample', ${sampleJson("u")})`, "FROM m")}
     )
     SELECT m.has_more, u.* FROM m CROSS JOIN audit LEFT JOIN u ON true
      ORDER BY u.fire_at, u.group_id, u.timer_id`,
    sel,
    audit,
  );
}

/** Counts the FAILED timers a retry would select, returns the first of them, and records the dry run. */
export function previewRetry(pool: pg.Pool, sel: TimerSelection, audit: AuditInfo): Promise<BulkPreview> {
  return bulkPreview(
    pool,
    `-- retry_timers_dry_run
     WITH c AS (
       SELECT count(*) AS matched FROM timers WHERE state = ${State.Failed} AND ${SELECTION}
     ), s AS (
       SELECT ${SUMMARY_COLUMNS} FROM timers WHERE state = ${State.Failed} AND ${SELECTION}
        ORDER BY fire_at, group_id, timer_id LIMIT ${SAMPLE_SIZE}
     ), audit AS (
       ${insertAudit(6, "'OK'", `jsonb_build_object('dry_run', true, 'would_retry', least(c.matched, $5::int), 'matched', c.matched, 'sample', ${sampleJson("s")})`, "FROM c")}
     )
     SELECT c.matched::text, s.* FROM c CROSS JOIN audit LEFT JOIN s ON true
      ORDER BY s.fire_at, s.group_id, s.timer_id`,
    sel,
    audit,
  );
}

/** Cancels up to sel.limit SCHEDULED timers (finish time now), skipping rows locked by others, and records it. */
export function cancelTimers(pool: pg.Pool, sel: TimerSelection, audit: AuditInfo): Promise<BulkChange> {
  return bulkChange(
    pool,
    `-- cancel_timers
     WITH picked AS (
       SELECT shard, group_id, timer_id FROM timers
        WHERE state = ${State.Scheduled} AND ${SELECTION}
        ORDER BY fire_at, group_id, timer_id
        LIMIT $5
        FOR UPDATE SKIP LOCKED
     ), m AS (
       SELECT count(*) > $5::int AS has_more
         FROM (SELECT 1 FROM timers WHERE state = ${State.Scheduled} AND ${SELECTION} LIMIT $5::int + 1) x
     ), u AS (
       UPDATE timers t SET state = ${State.Cancelled}, finish_time = now()
         FROM picked p
        WHERE t.shard = p.shard AND t.group_id = p.group_id AND t.timer_id = p.timer_id AND t.state = ${State.Scheduled}
       RETURNING t.${SUMMARY_COLUMNS.split(", ").join(", t.")}
     ), audit AS (
       ${insertAudit(6, "'OK'", `jsonb_build_object('cancelled', (SELECT count(*) FROM u), 'more', m.has_more, 'sample', ${sampleJson("u")})`, "FROM m")}
     )
     SELECT m.has_more, u.* FROM m CROSS JOIN audit LEFT JOIN u ON true
      ORDER BY u.fire_at, u.group_id, u.timer_id`,
    sel,
    audit,
  );
}

/** Counts the SCHEDULED timers a cancel would select, returns the first of them, and records the dry run. */
export function previewCancel(pool: pg.Pool, sel: TimerSelection, audit: AuditInfo): Promise<BulkPreview> {
  return bulkPreview(
    pool,
    `-- cancel_timers_dry_run
     WITH c AS (
       SELECT count(*) AS matched FROM timers WHERE state = ${State.Scheduled} AND ${SELECTION}
     ), s AS (
       SELECT ${SUMMARY_COLUMNS} FROM timers WHERE state = ${State.Scheduled} AND ${SELECTION}
        ORDER BY fire_at, group_id, timer_id LIMIT ${SAMPLE_SIZE}
     ), audit AS (
       ${insertAudit(6, "'OK'", `jsonb_build_object('dry_run', true, 'would_cancel', least(c.matched, $5::int), 'matched', c.matched, 'sample', ${sampleJson("s")})`, "FROM c")}
     )
     SELECT c.matched::text, s.* FROM c CROSS JOIN audit LEFT JOIN s ON true
      ORDER BY s.fire_at, s.group_id, s.timer_id`,
    sel,
    audit,
  );
}

// ------------------------------------------------------------------------------ purge

/** now() minus the retention, by the database's clock: as a Date, and exactly (text) for the batches. */
export async function purgeCutoff(
  pool: pg.Pool,
  retentionMs: number,
): Promise<{ cutoff: Date; exact: string }> {
  const { rows } = await pool.query<{ cutoff: Date; exact: string }>(
    `-- purge_cutoff
     SELECT c AS cutoff, c::text AS exact FROM (SELECT now() - make_interval(secs => $1::float8 / 1000) AS c) x`,
    [retentionMs],
  );
  return rows[0]!;
}

/**
 * Deletes one batch of finished timers older than the cutoff, with their attempts, skipping
 * rows locked by others. The first batch (auditId null) inserts the audit event, later ones add
 * their counts to it, in the same statement: the event always counts what was committed. Its
 * outcome is OK once a batch comes back short (nothing left), RUNNING until then.
 */
export async function purgeBatch(
  pool: pg.Pool,
  cutoff: string,
  batchSize: number,
  auditId: string | null,
  audit: AuditInfo,
): Promise<{ timers: number; attempts: number; auditId: string }> {
  const { rows } = await pool.query<{ timers: string; attempts: string; audit_id: string }>(
    `-- purge_timers_batch
     WITH doomed AS (
       SELECT shard, group_id, timer_id FROM timers
        WHERE state IN (${FINISHED}) AND finish_time < $1::timestamptz
        ORDER BY finish_time
        LIMIT $2
        FOR UPDATE SKIP LOCKED
     ), t AS (
       DELETE FROM timers x USING doomed d
        WHERE x.shard = d.shard AND x.group_id = d.group_id AND x.timer_id = d.timer_id
       RETURNING 1
     ), a AS (
       DELETE FROM timer_attempts x USING doomed d
        WHERE x.shard = d.shard AND x.group_id = d.group_id AND x.timer_id = d.timer_id
       RETURNING 1
     ), c AS (
       SELECT (SELECT count(*) FROM t) AS timers, (SELECT count(*) FROM a) AS attempts
     ), ins AS (
       ${insertAudit(
         4,
         `CASE WHEN c.timers < $2::int THEN 'OK' ELSE 'RUNNING' END`,
         `jsonb_build_object('deleted_timers', c.timers, 'deleted_attempts', c.attempts, 'batches', 1, 'cutoff', $1::timestamptz)`,
         "FROM c WHERE $3::bigint IS NULL",
       )}
     ), upd AS (
       UPDATE audit_events e
          SET outcome = CASE WHEN c.timers < $2::int THEN 'OK' ELSE 'RUNNING' END,
              result = e.result || jsonb_build_object(
                'deleted_timers', (e.result->>'deleted_timers')::bigint + c.timers,
                'deleted_attempts', (e.result->>'deleted_attempts')::bigint + c.attempts,
                'batches', (e.result->>'batches')::int + 1)
         FROM c
        WHERE e.id = $3::bigint
       RETURNING e.id
     )
     SELECT c.timers::text, c.attempts::text, coalesce((SELECT id FROM ins), (SELECT id FROM upd))::text AS audit_id FROM c`,
    [cutoff, batchSize, auditId, ...auditParams(audit)],
  );
  const r = rows[0]!;
  return { timers: Number(r.timers), attempts: Number(r.attempts), auditId: r.audit_id };
}

/** Marks a purge's audit event with how it ended early (CANCELED, or an error code). */
export async function endPurgeAudit(
  pool: pg.Pool,
  auditId: string,
  outcome: string,
  note: JsonObject,
): Promise<void> {
  await pool.query(
    `-- end_purge_audit
     UPDATE audit_events SET outcome = $2, result = result || $3::jsonb WHERE id = $1::bigint`,
    [auditId, outcome, JSON.stringify(note)],
  );
}

/** Counts what a purge would delete, and records the dry run. */
export async function previewPurge(
  pool: pg.Pool,
  cutoff: string,
  audit: AuditInfo,
): Promise<{ timers: number; attempts: number }> {
  const { rows } = await pool.query<{ timers: string; attempts: string }>(
    `-- purge_timers_dry_run
     WITH d AS (
       SELECT shard, group_id, timer_id FROM timers WHERE state IN (${FINISHED}) AND finish_time < $1::timestamptz
     ), c AS (
       SELECT (SELECT count(*) FROM d) AS timers,
              (SELECT count(*) FROM timer_attempts x JOIN d ON x.shard = d.shard AND x.group_id = d.group_id AND x.timer_id = d.timer_id) AS attempts
     ), audit AS (
       ${insertAudit(2, "'OK'", "jsonb_build_object('dry_run', true, 'would_delete_timers', c.timers, 'would_delete_attempts', c.attempts, 'cutoff', $1::timestamptz)", "FROM c")}
     )
     SELECT c.timers::text, c.attempts::text FROM c, audit`,
    [cutoff, ...auditParams(audit)],
  );
  return { timers: Number(rows[0]!.timers), attempts: Number(rows[0]!.attempts) };
}

// ------------------------------------------------------------------------------ explain

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
     SELECT ${TIMER_COLUMNS.split(", ")
       .map((c) => `t.${c}`)
       .join(", ")},
            t.claim_owner, t.claim_expires_at,
            l.last_owner AS lease_owner, coalesce(l.epoch, 0)::text AS lease_epoch,
            l.lease_expires_at,
            coalesce(l.owner IS NOT NULL, false) AS leased,
            p.paused_at, p.paused_by, p.reason AS pause_reason, now() AS db_now
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
     SELECT attempt, dispatcher_id, started_at, finished_at, outcome, error FROM timer_attempts
      WHERE shard = $3 AND group_id = $1 AND timer_id = $2
      ORDER BY id`,
    [groupId, timerId, shard],
  );
  return rows;
}

// ------------------------------------------------------------------------------ stats

/** Active (SCHEDULED, FIRING) timers per group. */
export async function activeByGroup(
  pool: pg.Pool,
): Promise<{ group_id: string; scheduled: string; firing: string }[]> {
  const { rows } = await pool.query<{ group_id: string; scheduled: string; firing: string }>(
    `-- active_by_group
     SELECT group_id,
            count(*) FILTER (WHERE state = ${State.Scheduled})::text AS scheduled,
            count(*) FILTER (WHERE state = ${State.Firing})::text AS firing
       FROM timers WHERE state IN (${State.Scheduled}, ${State.Firing})
      GROUP BY group_id ORDER BY group_id`,
  );
  return rows;
}

/** Mesh-wide counters: due now, firings and attempts in the last minute and hour, paused groups. */
export interface StatsRow {
  due_now: string;
  fired_minute: string;
  fired_hour: string;
  attempts_minute: string;
  attempts_hour: string;
  failed_hour: string;
  paused_groups: string;
  db_now: Date;
}

/** Due timers, recent firings (timer_attempts, by finish time) and paused groups. */
export async function meshCounters(pool: pg.Pool): Promise<StatsRow> {
  const { rows } = await pool.query<StatsRow>(
    `-- mesh_counters
     SELECT (SELECT sum(d.n) FROM shard_leases l
               -- Per shard: each counts the due part of its range of timers_due_idx (led by the shard).
               CROSS JOIN LATERAL (SELECT count(*) AS n FROM timers
                                    WHERE state = ${State.Scheduled} AND shard = l.shard AND next_attempt_at <= now()) d)::text AS due_now,
            count(*) FILTER (WHERE attempt = 1 AND finished_at > now() - interval '1 minute')::text AS fired_minute,
            count(*) FILTER (WHERE attempt = 1)::text AS fired_hour,
            count(*) FILTER (WHERE finished_at > now() - interval '1 minute')::text AS attempts_minute,
            count(*)::text AS attempts_hour,
            count(*) FILTER (WHERE outcome = 'failed')::text AS failed_hour,
            (SELECT count(*) FROM paused_groups)::text AS paused_groups,
            now() AS db_now
       FROM timer_attempts
      WHERE finished_at > now() - interval '1 hour'`,
  );
  return rows[0]!;
}

// ------------------------------------------------------------------------------ audit

/** Records an audit event on its own: for changes outside Postgres and for failed calls. */
export async function recordAudit(
  pool: pg.Pool,
  audit: AuditInfo,
  outcome: string,
  result: JsonObject,
): Promise<string> {
  const { rows } = await pool.query<{ id: string }>(
    `-- record_audit_event
     INSERT INTO audit_events (actor, action, arguments, outcome, result, trace_id)
     VALUES ($1, $2, $3::jsonb, $5, $6::jsonb, $4)
     RETURNING id::text`,
    [...auditParams(audit), outcome, JSON.stringify(result)],
  );
  return rows[0]!.id;
}

/** An audit event as stored. */
export interface AuditRow {
  id: string;
  at: Date;
  actor: string;
  action: string;
  arguments: JsonValue;
  outcome: string;
  result: JsonValue;
  trace_id: string | null;
}

/** Audit events older than `beforeId`, newest first; optionally one actor's or one action's. */
export async function listAuditEvents(
  pool: pg.Pool,
  beforeId: string | null,
  actor: string | null,
  action: string | null,
  limit: number,
): Promise<AuditRow[]> {
  const { rows } = await pool.query<AuditRow>(
    `-- list_audit_events
     SELECT id::text, at, actor, action, arguments, outcome, result, trace_id FROM audit_events
      WHERE ($1::bigint IS NULL OR id < $1::bigint)
        AND ($2::text IS NULL OR actor = $2::text)
        AND ($3::text IS NULL OR action = $3::text OR split_part(action, '/', 2) = $3::text)
      ORDER BY audit_events.id DESC -- the table's bigint, not the text column of the same name
      LIMIT $4`,
    [beforeId, actor, action, limit],
  );
  return rows;
}

// ------------------------------------------------------------------------------ group quotas

/** A group's own limit of active timers, as stored. */
export interface GroupQuotaRow {
  group_id: string;
  max_active_timers: string;
  set_by: string;
  set_at: Date;
}

/**
 * Sets a group's limit of active timers (maxActive > 0) or removes it (0), and records it, in
 * one statement. Returns the override before and after the change (null when there was none).
 */
export async function setGroupQuota(
  pool: pg.Pool,
  groupId: string,
  maxActive: bigint,
  audit: AuditInfo,
): Promise<{ previous: GroupQuotaRow | null; quota: GroupQuotaRow | null }> {
  const { rows } = await pool.query<{ previous: GroupQuotaRow | null; quota: GroupQuotaRow | null }>(
    `-- set_group_quota
     WITH prev AS (
       SELECT group_id, max_active_timers::text, set_by, set_at FROM group_quotas WHERE group_id = $1 FOR UPDATE
     ), removed AS (
       DELETE FROM group_quotas WHERE group_id = $1 AND $2::bigint = 0 RETURNING group_id
     ), q AS (
       INSERT INTO group_quotas (group_id, max_active_timers, set_by)
       SELECT $1, $2::bigint, $3::text WHERE $2::bigint > 0
       ON CONFLICT (group_id) DO UPDATE SET max_active_timers = EXCLUDED.max_active_timers, set_by = EXCLUDED.set_by, set_at = now()
       RETURNING group_id, max_active_timers::text, set_by, set_at
     ), audit AS (
       ${insertAudit(
         3,
         "'OK'",
         `jsonb_build_object('previous_max_active_timers', (SELECT max_active_timers FROM prev),
                             'max_active_timers', (SELECT max_active_timers FROM q),
                             'removed', EXISTS (SELECT 1 FROM removed))`,
       )}
     )
     SELECT (SELECT to_jsonb(prev) FROM prev) AS previous, (SELECT to_jsonb(q) FROM q) AS quota FROM audit`,
    [groupId, maxActive.toString(), ...auditParams(audit)],
  );
  const parse = (r: GroupQuotaRow | null) => (r ? { ...r, set_at: new Date(r.set_at) } : null);
  return { previous: parse(rows[0]!.previous), quota: parse(rows[0]!.quota) };
}

/** Groups with their own limit, by group id, with their active (SCHEDULED + FIRING) timers counted now. */
export async function listGroupQuotas(
  pool: pg.Pool,
  groupId: string | null,
): Promise<(GroupQuotaRow & { active: string })[]> {
  const { rows } = await pool.query<GroupQuotaRow & { active: string }>(
    `-- list_group_quotas
     SELECT q.group_id, q.max_active_timers::text, q.set_by, q.set_at,
            (SELECT count(*) FROM timers t WHERE t.group_id = q.group_id AND t.state IN (${State.Scheduled}, ${State.Firing}))::text AS active
       FROM group_quotas q
      WHERE ($1::text IS NULL OR q.group_id = $1::text)
      ORDER BY q.group_id`,
    [groupId],
  );
  return rows;
}
