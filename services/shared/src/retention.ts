// Retention: the SQL that deletes finished timers (with their delivery attempts) and audit events
// older than a cutoff, in batches, and the figures that show what is kept. Written once here and
// used by AdminService/PurgeTimers (services/admin/src/purge-store.ts), the dispatchers'
// automatic retention (services/dispatcher/src/retention-loop.ts) and the operators' one-shot
// command (scripts/ops/retention.ts).
//
// Every batch is one statement, so a timer and its attempts go in one transaction (there is no
// foreign key to cascade: attempts are inserted by the dispatchers at a rate a foreign key check
// would slow). The batch is found by the shard-led keys: the oldest finished timers through
// timers_finished_idx (finish_time), then each timer by its primary key (shard, group_id,
// timer_id) and its attempts by theirs (shard, group_id, timer_id, id), so a batch costs the rows
// it deletes whatever the size of the tables (test/integration/retention.test.ts checks the plans).
import { setTimeout as sleep } from "node:timers/promises";
import type pg from "pg";
import { FINISHED_STATES } from "./timer-model.js";
import { intervalOfMsSql } from "./time.js";

// The states a timer never leaves by itself (EXPIRED included): only these are deleted.
const FINISHED = FINISHED_STATES.join(", ");

/** The tables retention deletes from, as the metrics' `table` label names them. */
export const RETENTION_TABLES = ["timers", "timer_attempts", "audit_events"] as const;
export type RetentionTable = (typeof RETENTION_TABLES)[number];

/**
 * The advisory lock that lets one process at a time run retention (the dispatchers' loop, the
 * one-shot command). The two-key form: Postgres keeps two-key and one-key (bigint) advisory locks
 * apart, so it cannot collide with the migration lock (db.ts, one key). "timr", "retn".
 */
export const RETENTION_LOCK_KEYS = [0x74696d72, 0x7265746e] as const;

/** Something that runs a query: a pool, or one of its clients (a transaction, a session lock). */
export type SqlRunner = Pick<pg.ClientBase, "query">;

/**
 * CTEs deleting one batch of finished timers whose finish_time is before `cutoff`, with their
 * attempts, skipping rows others hold locked: `retention_timers` and `retention_attempts` return
 * one row per row deleted. `cutoff` and `limit` are SQL expressions (parameters), for a caller that
 * adds its own CTEs to the statement (PurgeTimers counts the batch into its audit event).
 */
export function deleteFinishedTimersCtes(cutoff: string, limit: string): string {
  // Rows are deleted by their ctid (a TID scan), and attempts found by a per-timer lookup the
  // planner may not flatten (OFFSET 0): a join of the batch with the table would be planned as a
  // hash join over a sequential scan of the whole table while it is small, and nothing in the
  // statement's estimates (a CTE has none) would reliably turn it back into key lookups as the
  // table grows. The doomed rows are locked, so their ctids hold until the statement ends.
  return `retention_doomed AS (
       SELECT ctid, shard, group_id, timer_id FROM timers
        WHERE state IN (${FINISHED}) AND finish_time < ${cutoff}
        ORDER BY finish_time
        LIMIT ${limit}
        FOR UPDATE SKIP LOCKED
     ), retention_timers AS (
       DELETE FROM timers WHERE ctid = ANY (ARRAY(SELECT ctid FROM retention_doomed))
       RETURNING 1
     ), retention_attempts AS (
       DELETE FROM timer_attempts WHERE ctid = ANY (ARRAY(
         SELECT a.ctid FROM retention_doomed d CROSS JOIN LATERAL (
           SELECT x.ctid FROM timer_attempts x
            WHERE x.shard = d.shard AND x.group_id = d.group_id AND x.timer_id = d.timer_id
           OFFSET 0) a))
       RETURNING 1
     )`;
}

/**
 * A CTE `retention_preview` with one row (timers, attempts): what deleting every finished timer
 * before `cutoff` would delete. It reads every such timer: for dry runs, not for the loop.
 */
export function previewFinishedTimersCte(cutoff: string): string {
  return `retention_preview AS (
       SELECT (SELECT count(*) FROM timers WHERE state IN (${FINISHED}) AND finish_time < ${cutoff}) AS timers,
              (SELECT count(*) FROM timer_attempts x
                 JOIN timers d ON x.shard = d.shard AND x.group_id = d.group_id AND x.timer_id = d.timer_id
                WHERE d.state IN (${FINISHED}) AND d.finish_time < ${cutoff}) AS attempts
     )`;
}

/** What one batch of finished timers deleted. */
export interface FinishedTimersDeleted {
  timers: number;
  attempts: number;
}

/** Deletes one batch of up to `batchSize` finished timers finished before `cutoff`, with their attempts. */
export async function deleteFinishedTimersBatch(
  db: SqlRunner,
  cutoff: string,
  batchSize: number,
): Promise<FinishedTimersDeleted> {
  const { rows } = await db.query<{ timers: string; attempts: string }>(
    `-- retention_delete_timers
     WITH ${deleteFinishedTimersCtes("$1::timestamptz", "$2::int")}
     SELECT (SELECT count(*) FROM retention_timers)::text AS timers,
            (SELECT count(*) FROM retention_attempts)::text AS attempts`,
    [cutoff, batchSize],
  );
  return { timers: Number(rows[0]!.timers), attempts: Number(rows[0]!.attempts) };
}

/** Counts what deleting the finished timers before `cutoff` would delete (a dry run). */
export async function previewFinishedTimers(db: SqlRunner, cutoff: string): Promise<FinishedTimersDeleted> {
  const { rows } = await db.query<{ timers: string; attempts: string }>(
    `-- retention_preview_timers
     WITH ${previewFinishedTimersCte("$1::timestamptz")}
     SELECT timers::text, attempts::text FROM retention_preview`,
    [cutoff],
  );
  return { timers: Number(rows[0]!.timers), attempts: Number(rows[0]!.attempts) };
}

/** Deletes up to `batchSize` of the oldest audit events recorded before `cutoff` (by audit_events_at_idx). */
export async function deleteAuditEventsBatch(
  db: SqlRunner,
  cutoff: string,
  batchSize: number,
): Promise<number> {
  const { rowCount } = await db.query(
    `-- retention_delete_audit_events
     DELETE FROM audit_events WHERE ctid = ANY (ARRAY(
       SELECT ctid FROM audit_events WHERE at < $1::timestamptz ORDER BY at LIMIT $2::int FOR UPDATE SKIP LOCKED))`,
    [cutoff, batchSize],
  );
  return rowCount ?? 0;
}

/** Counts the audit events recorded before `cutoff` (a dry run). */
export async function previewAuditEvents(db: SqlRunner, cutoff: string): Promise<number> {
  const { rows } = await db.query<{ n: string }>(
    `-- retention_preview_audit_events
     SELECT count(*)::text AS n FROM audit_events WHERE at < $1::timestamptz`,
    [cutoff],
  );
  return Number(rows[0]!.n);
}

/** now() minus `ageMs`, by the database's clock: as a Date, and exactly (text) for the batches. */
export async function cutoffBefore(db: SqlRunner, ageMs: number): Promise<{ cutoff: Date; exact: string }> {
  const { rows } = await db.query<{ cutoff: Date; exact: string }>(
    `-- retention_cutoff
     SELECT c AS cutoff, c::text AS exact FROM (SELECT now() - ${intervalOfMsSql("$1")} AS c) x`,
    [ageMs],
  );
  return rows[0]!;
}

/** Takes the retention lock on this session if no one holds it; false when someone does. */
export async function tryRetentionLock(session: pg.ClientBase): Promise<boolean> {
  const { rows } = await session.query<{ locked: boolean }>(
    "SELECT pg_try_advisory_lock($1::int, $2::int) AS locked",
    [...RETENTION_LOCK_KEYS],
  );
  return rows[0]!.locked;
}

/** Releases the retention lock taken by tryRetentionLock on this session. */
export async function releaseRetentionLock(session: pg.ClientBase): Promise<void> {
  await session.query("SELECT pg_advisory_unlock($1::int, $2::int)", [...RETENTION_LOCK_KEYS]);
}

/**
 * The age in seconds of the oldest row kept in each table, 0 when it is empty. timers: the oldest
 * finished timer (timers_finished_idx); audit_events: the oldest event (audit_events_at_idx);
 * timer_attempts: the oldest attempt of the 100 oldest finished timers, since attempts have no
 * B-tree by time (a BRIN only, which stops narrowing once deleted space is reused) and an exact
 * minimum would read the whole table. Attempts of live timers are kept whatever their age (a live
 * timer's history, bounded by its retry policy) and are not counted.
 */
export async function oldestRowAges(db: SqlRunner): Promise<Record<RetentionTable, number>> {
  const { rows } = await db.query<{ timers: number; timer_attempts: number; audit_events: number }>(
    `-- retention_oldest_rows
     WITH oldest AS (
       SELECT shard, group_id, timer_id, finish_time FROM timers
        WHERE state IN (${FINISHED}) AND finish_time IS NOT NULL
        ORDER BY finish_time LIMIT 100
     )
     SELECT coalesce(extract(epoch FROM now() - (SELECT min(finish_time) FROM oldest)), 0)::float8 AS timers,
            coalesce(extract(epoch FROM now() - (
              SELECT min(a.finished_at) FROM oldest o
                JOIN timer_attempts a ON a.shard = o.shard AND a.group_id = o.group_id AND a.timer_id = o.timer_id)), 0)::float8 AS timer_attempts,
            coalesce(extract(epoch FROM now() - (SELECT min(at) FROM audit_events)), 0)::float8 AS audit_events`,
  );
  const r = rows[0]!;
  return { timers: r.timers, timer_attempts: r.timer_attempts, audit_events: r.audit_events };
}

/** The database's size and its largest tables (with their indexes and TOAST), largest first. */
export async function databaseSizes(
  db: SqlRunner,
  tables = 10,
): Promise<{ databaseBytes: number; tables: { table: string; bytes: number }[] }> {
  const size = await db.query<{ bytes: string }>(
    "-- database_size\n SELECT pg_database_size(current_database())::text AS bytes",
  );
  const { rows } = await db.query<{ table: string; bytes: string }>(
    `-- database_table_sizes
     SELECT c.relname AS table, pg_total_relation_size(c.oid)::text AS bytes
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()
      ORDER BY pg_total_relation_size(c.oid) DESC, c.relname
      LIMIT $1::int`,
    [tables],
  );
  return {
    databaseBytes: Number(size.rows[0]!.bytes),
    tables: rows.map((r) => ({ table: r.table, bytes: Number(r.bytes) })),
  };
}

/** How old a row must be to go, per kind of row. */
export interface RetentionAges {
  /** Finished timers (and their attempts), by finish_time. */
  finishedTimersMs: number;
  /** Audit events, by their time. */
  auditEventsMs: number;
}

/** What a retention run deleted, and before which times. */
export interface RetentionRun {
  cutoffs: { timers: Date; audit_events: Date };
  deleted: Record<RetentionTable, number>;
  batches: number;
  /** Stopped by the signal before it was done. */
  stopped: boolean;
}

/**
 * Deletes, batch by batch (each its own short transaction, `pauseMs` apart so that the dispatchers'
 * own statements always find the tables free), the finished timers with their attempts and then
 * the audit events older than their ages. `onBatch` hears each batch as it commits; `signal` stops
 * the run between batches. The caller holds the retention lock (tryRetentionLock).
 */
export async function runRetention(
  db: SqlRunner,
  opts: {
    ages: RetentionAges;
    batchSize: number;
    pauseMs: number;
    signal?: AbortSignal;
    onBatch?: (deleted: Partial<Record<RetentionTable, number>>) => void;
  },
): Promise<RetentionRun> {
  const timersCutoff = await cutoffBefore(db, opts.ages.finishedTimersMs);
  const auditCutoff = await cutoffBefore(db, opts.ages.auditEventsMs);
  const run: RetentionRun = {
    cutoffs: { timers: timersCutoff.cutoff, audit_events: auditCutoff.cutoff },
    deleted: { timers: 0, timer_attempts: 0, audit_events: 0 },
    batches: 0,
    stopped: false,
  };
  const pause = async (): Promise<boolean> => {
    if (opts.signal?.aborted) return false;
    if (opts.pauseMs > 0) await sleep(opts.pauseMs, undefined, { signal: opts.signal }).catch(() => {});
    return !opts.signal?.aborted;
  };
  for (;;) {
    const b = await deleteFinishedTimersBatch(db, timersCutoff.exact, opts.batchSize);
    run.batches++;
    run.deleted.timers += b.timers;
    run.deleted.timer_attempts += b.attempts;
    opts.onBatch?.({ timers: b.timers, timer_attempts: b.attempts });
    if (b.timers < opts.batchSize) break;
    if (!(await pause())) return { ...run, stopped: true };
  }
  for (;;) {
    if (!(await pause())) return { ...run, stopped: true };
    const n = await deleteAuditEventsBatch(db, auditCutoff.exact, opts.batchSize);
    run.batches++;
    run.deleted.audit_events += n;
    opts.onBatch?.({ audit_events: n });
    if (n < opts.batchSize) break;
  }
  return run;
}
