// PurgeTimers in SQL: finished timers older than a cutoff are deleted with their attempts, in
// batches of short transactions, and the purge's one audit event counts what each committed
// batch deleted. The deletion itself is retention's (services/shared/src/retention.ts), the same
// the dispatchers' automatic retention runs; here it is joined to the audit event in one
// statement. The loop over the batches is purgeInBatches (purge-handlers.ts).
import type { JsonObject } from "@bufbuild/protobuf";
import type pg from "pg";
import { deleteFinishedTimersCtes, previewFinishedTimersCte } from "../../shared/src/retention.js";
import { type AuditInfo, auditParams, insertAuditSql } from "./audit-store.js";

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
     WITH ${deleteFinishedTimersCtes("$1::timestamptz", "$2::int")}, c AS (
       SELECT (SELECT count(*) FROM retention_timers) AS timers, (SELECT count(*) FROM retention_attempts) AS attempts
     ), ins AS (
       ${insertAuditSql(
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
     WITH ${previewFinishedTimersCte("$1::timestamptz")}, c AS (
       SELECT timers, attempts FROM retention_preview
     ), audit AS (
       ${insertAuditSql(2, "'OK'", "jsonb_build_object('dry_run', true, 'would_delete_timers', c.timers, 'would_delete_attempts', c.attempts, 'cutoff', $1::timestamptz)", "FROM c")}
     )
     SELECT c.timers::text, c.attempts::text FROM c, audit`,
    [cutoff, ...auditParams(audit)],
  );
  return { timers: Number(rows[0]!.timers), attempts: Number(rows[0]!.attempts) };
}
