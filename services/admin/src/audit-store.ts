// The audit_events table. A change in Postgres writes its event in the same statement as the
// change itself (a data-modifying CTE built with insertAuditSql), so the two commit together or
// not at all; recordAudit is for changes outside Postgres and for failed calls.
import type { JsonValue } from "@bufbuild/protobuf";
import type pg from "pg";

/** Who changed what, recorded with the change. */
export interface AuditInfo {
  actor: string;
  /** The RPC, e.g. admin.v1.AdminService/PauseGroup. */
  action: string;
  /** The request as JSON. */
  arguments: JsonValue;
  traceId: string | null;
}

/** The audit parameters, appended after a query's own (see insertAuditSql). */
export function auditParams(a: AuditInfo): unknown[] {
  return [a.actor, a.action, JSON.stringify(a.arguments), a.traceId];
}

/**
 * INSERT of an audit event whose outcome and result are SQL expressions, for a CTE of the
 * change's own statement; the audit parameters (auditParams) start at $first.
 */
export function insertAuditSql(first: number, outcome: string, result: string, from = ""): string {
  return `INSERT INTO audit_events (actor, action, arguments, outcome, result, trace_id)
          SELECT $${first}::text, $${first + 1}::text, $${first + 2}::jsonb, ${outcome}, ${result}, $${first + 3}::text ${from}
          RETURNING id`;
}

/** The summary of a change kept in its audit event (undefined members are left out). */
export type AuditResult = { [key: string]: JsonValue | undefined };

/** Records an audit event on its own: for changes outside Postgres and for failed calls. */
export async function recordAudit(
  pool: pg.Pool,
  audit: AuditInfo,
  outcome: string,
  result: AuditResult,
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
