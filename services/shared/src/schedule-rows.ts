// The schedules table and the firing timers it creates: the SQL shared by the timer service
// (create, update, pause, resume, delete) and the dispatchers' advancer, which both create
// firings and move a schedule on in one transaction.

import { createHash } from "node:crypto";
import { fromJson, type JsonValue } from "@bufbuild/protobuf";
import type pg from "pg";
import { ScheduleSpecSchema } from "./gen/timer/v1/schedule_pb.js";
import type { ScheduleRules } from "./schedule-instants.js";
import type { FiringPlan, PlannedFiring } from "./schedule-plan.js";
import { checkScheduleSpec } from "./schedule-spec.js";
import { shardOf } from "./shard.js";
import { firingId, instantOfFiringId } from "./timer-id.js";
import { State } from "./timer-model.js";

/** schedules.state (timer.v1.ScheduleState). */
export const ScheduleRowState = { Active: 1, Paused: 2, Completed: 3 } as const;

/** What every firing's timer row gets (schedules.firing), resolved when the schedule was stored. */
export interface FiringSettings {
  /** timer.v1.Callback as proto JSON, as timers.callback stores it. */
  callback: JsonValue;
  payloadBase64: string;
  labels: Record<string, string>;
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
  maxLatenessMs: number | null;
  latenessPolicy: number;
}

export interface ScheduleRow {
  group_id: string;
  schedule_id: string;
  state: number;
  version: string;
  spec: JsonValue;
  template: JsonValue;
  firing: FiringSettings;
  request_hash: Buffer;
  last_instant: Date | null;
  advance_at: Date | null;
  overlap_skip: boolean;
  skipped_firings: string;
  create_time: Date;
  update_time: Date;
}

export const SCHEDULE_COLUMNS =
  "group_id, schedule_id, state, version, spec, template, firing, request_hash, last_instant, advance_at, overlap_skip, skipped_firings, create_time, update_time";

/** The rules of a stored spec (validated when it was stored; checked again, the zone database may have changed). */
export function rulesOfRow(row: Pick<ScheduleRow, "spec">): ScheduleRules {
  return checkScheduleSpec(fromJson(ScheduleSpecSchema, row.spec), "spec", Date.now());
}

/** A firing stored by insertFirings, enough to announce it. */
export interface InsertedFiring {
  groupId: string;
  timerId: string;
  shard: number;
  fireAtMs: number;
  version: number;
}

/**
 * Inserts the planned firings of a schedule as SCHEDULED timers. ON CONFLICT DO NOTHING: a
 * replayed plan (another dispatcher, a retried transaction) finds the firing already there.
 * Returns the rows inserted now.
 */
export async function insertFirings(
  client: pg.ClientBase,
  schedule: { groupId: string; scheduleId: string; firing: FiringSettings },
  planned: readonly PlannedFiring[],
  shardCount: number,
): Promise<InsertedFiring[]> {
  if (planned.length === 0) return [];
  const { groupId, scheduleId, firing } = schedule;
  const ids = planned.map((p) => firingId(scheduleId, p.instantMs));
  const { rows } = await client.query<{ timer_id: string; shard: number; fire_at: Date; version: string }>(
    `-- insert_schedule_firings
     INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, callback, payload, labels,
                         max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash,
                         max_lateness_ms, lateness_policy, schedule_id, version)
     SELECT $1, t, s, ${State.Scheduled}, f, f, $5::jsonb, decode($6, 'base64'), $7::jsonb, $8, $9, $10, $11, h, $12, $13, $14, 1
       FROM unnest($2::text[], $3::int[], $4::timestamptz[], $15::bytea[]) AS x(t, s, f, h)
     -- A firing cancelled before it started (by a pause or an update) that is planned again comes
     -- back with what the schedule says now, at a new version (dispatchers holding the old one
     -- do not claim it); any other existing firing stays as it is.
     ON CONFLICT (shard, group_id, timer_id) DO UPDATE
        SET state = ${State.Scheduled}, fire_at = EXCLUDED.fire_at, next_attempt_at = EXCLUDED.next_attempt_at,
            callback = EXCLUDED.callback, payload = EXCLUDED.payload, labels = EXCLUDED.labels,
            max_attempts = EXCLUDED.max_attempts, initial_backoff_ms = EXCLUDED.initial_backoff_ms,
            max_backoff_ms = EXCLUDED.max_backoff_ms, backoff_multiplier = EXCLUDED.backoff_multiplier,
            max_lateness_ms = EXCLUDED.max_lateness_ms, lateness_policy = EXCLUDED.lateness_policy,
            version = timers.version + 1, finish_time = NULL, last_error = NULL
        WHERE timers.state = ${State.Cancelled} AND timers.attempt = 0 AND timers.schedule_id = EXCLUDED.schedule_id
     RETURNING timer_id, shard, fire_at, version`,
    [
      groupId,
      ids,
      ids.map((id) => shardOf(groupId, id, shardCount)),
      planned.map((p) => new Date(p.fireAtMs)),
      JSON.stringify(firing.callback),
      firing.payloadBase64,
      JSON.stringify(firing.labels),
      firing.maxAttempts,
      firing.initialBackoffMs,
      firing.maxBackoffMs,
      firing.multiplier,
      firing.maxLatenessMs,
      firing.latenessPolicy,
      scheduleId,
      ids.map((id) => createHash("sha256").update(`schedule-firing:${groupId}/${id}`).digest()),
    ],
  );
  return rows.map((r) => ({
    groupId,
    timerId: r.timer_id,
    shard: r.shard,
    fireAtMs: r.fire_at.getTime(),
    version: Number(r.version),
  }));
}

/**
 * Moves the schedule on by a plan: last_instant, skipped count, when the advancer looks next
 * (the fire time of the latest firing; now when the plan stopped early), COMPLETED when no
 * instant follows. `version` fences a concurrent change: false when the row changed meanwhile.
 */
export async function recordPlan(
  client: pg.ClientBase,
  key: { groupId: string; scheduleId: string; version: string },
  plan: FiringPlan,
  raiseVersion: boolean,
): Promise<boolean> {
  const lastFire = plan.firings[plan.firings.length - 1]?.fireAtMs ?? null;
  const { rowCount } = await client.query(
    `-- record_schedule_plan
     UPDATE schedules
        SET last_instant = coalesce($4, last_instant),
            skipped_firings = skipped_firings + $5,
            state = CASE WHEN $6 THEN ${ScheduleRowState.Completed} ELSE state END,
            advance_at = CASE WHEN $6 THEN NULL ELSE coalesce($7, now()) END,
            version = version + $8,
            update_time = CASE WHEN $8 = 1 OR $6 THEN now() ELSE update_time END
      WHERE group_id = $1 AND schedule_id = $2 AND version = $3`,
    [
      key.groupId,
      key.scheduleId,
      key.version,
      plan.lastInstantMs === null ? null : new Date(plan.lastInstantMs),
      plan.skipped,
      plan.completed,
      lastFire === null ? null : new Date(lastFire),
      raiseVersion ? 1 : 0,
    ],
  );
  return rowCount === 1;
}

/**
 * Cancels a schedule's firings that have not started (no attempt yet). Returns how many, and
 * the earliest instant cancelled (null when none), from which a resume plans again.
 */
export async function cancelWaitingFirings(
  client: pg.ClientBase,
  groupId: string,
  scheduleId: string,
  reason: string,
): Promise<{ count: number; earliestInstantMs: number | null }> {
  const { rows } = await client.query<{ timer_id: string }>(
    `-- cancel_waiting_firings
     UPDATE timers SET state = ${State.Cancelled}, finish_time = now(), last_error = $3
      WHERE group_id = $1 AND schedule_id = $2 AND state IN (${State.Scheduled}, ${State.Paused}) AND attempt = 0
      RETURNING timer_id`,
    [groupId, scheduleId, reason],
  );
  const instants = rows.map((r) => instantOfFiringId(r.timer_id));
  return { count: rows.length, earliestInstantMs: instants.length === 0 ? null : Math.min(...instants) };
}

/**
 * SQL true when the timer `t` (an alias of timers) may start as far as its schedule's overlap
 * policy goes: it is no firing, or a retry, or its schedule allows overlap, or no earlier firing
 * of its schedule is FIRING or waiting for a retry. One-shot timers stop at the first test.
 */
export function overlapClearSql(t: string): string {
  return `(${t}.schedule_id IS NULL OR ${t}.attempt > 0 OR NOT EXISTS (
            SELECT 1 FROM schedules s JOIN timers p ON p.group_id = s.group_id AND p.schedule_id = s.schedule_id
             WHERE s.group_id = ${t}.group_id AND s.schedule_id = ${t}.schedule_id AND s.overlap_skip
               AND p.fire_at <= ${t}.fire_at AND p.timer_id < ${t}.timer_id
               -- Spelled out for timers_schedule_active_idx (migration 000010): the check reads
               -- the schedule's unfinished firings only, not its whole history.
               AND p.state IN (${State.Scheduled}, ${State.Firing})
               AND (p.state = ${State.Firing} OR (p.state = ${State.Scheduled} AND p.attempt > 0))))`;
}
