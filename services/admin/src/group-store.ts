// Groups as operators manage them: pausing and resuming one, listing them with their timers
// counted per state, and a group's own limit of active timers. Every change records its audit
// event in the same statement (audit-store.ts).
import type pg from "pg";
import { State } from "../../shared/src/timer-model.js";
import { dueTimersOfGroupSql } from "../../shared/src/shard-lag.js";
import { type AuditInfo, auditParams, insertAuditSql } from "./audit-store.js";

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
       ${insertAuditSql(3, "'OK'", "jsonb_build_object('newly_paused', p.newly, 'paused_at', p.paused_at, 'paused_by', p.paused_by)", "FROM p")}
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
              (SELECT count(*) FROM ${dueTimersOfGroupSql("$1")}) AS overdue
     ), audit AS (
       ${insertAuditSql(2, "'OK'", "jsonb_build_object('was_paused', o.was_paused, 'overdue_timers', o.overdue)", "FROM o")}
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
  expired: string;
  /** Timers held by a bulk pause (state PAUSED). */
  paused_timers: string;
  /** SCHEDULED timers due now or earlier. */
  due: string;
  /** FAILED timers that finished within the last hour. */
  failed_last_hour: string;
  /** SCHEDULED timers waiting for a retry (attempt > 0). */
  retrying: string;
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
            coalesce(c.cancelled, 0)::text AS cancelled, coalesce(c.expired, 0)::text AS expired,
            coalesce(c.paused_timers, 0)::text AS paused_timers, coalesce(c.due, 0)::text AS due,
            coalesce(c.failed_last_hour, 0)::text AS failed_last_hour,
            coalesce(c.retrying, 0)::text AS retrying,
            p.paused_at, p.paused_by, p.reason
       FROM (SELECT group_id,
                    count(*) FILTER (WHERE state = ${State.Scheduled}) AS scheduled,
                    count(*) FILTER (WHERE state = ${State.Firing}) AS firing,
                    count(*) FILTER (WHERE state = ${State.Succeeded}) AS succeeded,
                    count(*) FILTER (WHERE state = ${State.Failed}) AS failed,
                    count(*) FILTER (WHERE state = ${State.Cancelled}) AS cancelled,
                    count(*) FILTER (WHERE state = ${State.Expired}) AS expired,
                    count(*) FILTER (WHERE state = ${State.Paused}) AS paused_timers,
                    count(*) FILTER (WHERE state = ${State.Scheduled} AND next_attempt_at <= now()) AS due,
                    count(*) FILTER (WHERE state = ${State.Failed} AND finish_time > now() - interval '1 hour')
                      AS failed_last_hour,
                    count(*) FILTER (WHERE state = ${State.Scheduled} AND attempt > 0) AS retrying
               FROM timers GROUP BY group_id) c
       FULL JOIN paused_groups p USING (group_id)
      ORDER BY group_id`,
  );
  return rows;
}

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
       ${insertAuditSql(
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

/** Groups with their own limit, by group id, with their active (SCHEDULED + FIRING + PAUSED) timers counted now. */
export async function listGroupQuotas(
  pool: pg.Pool,
  groupId: string | null,
): Promise<(GroupQuotaRow & { active: string })[]> {
  const { rows } = await pool.query<GroupQuotaRow & { active: string }>(
    `-- list_group_quotas
     SELECT q.group_id, q.max_active_timers::text, q.set_by, q.set_at,
            (SELECT count(*) FROM timers t WHERE t.group_id = q.group_id AND t.state IN (${State.Scheduled}, ${State.Firing}, ${State.Paused}))::text AS active
       FROM group_quotas q
      WHERE ($1::text IS NULL OR q.group_id = $1::text)
      ORDER BY q.group_id`,
    [groupId],
  );
  return rows;
}
