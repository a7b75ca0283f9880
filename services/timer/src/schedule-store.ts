// Postgres side of the ScheduleService: a schedule row and the firings it needs change in one
// transaction, so the "next firing exists" rule holds at every commit.

import type pg from "pg";
import type { ScheduleRules } from "../../shared/src/schedule-instants.js";
import { inTransaction } from "../../shared/src/db.js";
import { planFirings } from "../../shared/src/schedule-plan.js";
import {
  type FiringSettings,
  type InsertedFiring,
  SCHEDULE_COLUMNS,
  ScheduleRowState,
  type ScheduleRow,
  cancelWaitingFirings,
  insertFirings,
  recordPlan,
  rulesOfRow,
} from "../../shared/src/schedule-rows.js";
import { State } from "../../shared/src/timer-model.js";
import type { JsonValue } from "@bufbuild/protobuf";
import type { NewSchedule } from "./schedule-validation.js";

/** At most this many firings are created by one call (missed ones under ALL); the advancer goes on. */
const MAX_FIRINGS_PER_CALL = 1000;

export interface Placement {
  shardCount: number;
  nowMs: number;
  /**
   * Firings due within this of now are created at once (ANNOUNCE_WINDOW: the service announces
   * them to their owners), so the next firing exists however soon the first one is due; the
   * advancer creates the later ones.
   */
  leadMs: number;
}

export interface ScheduleChange {
  row: ScheduleRow;
  /** Firings stored by the change, to announce. */
  inserted: InsertedFiring[];
}

async function lockRow(
  client: pg.ClientBase,
  groupId: string,
  scheduleId: string,
): Promise<ScheduleRow | undefined> {
  const { rows } = await client.query<ScheduleRow>(
    `-- lock_schedule
     SELECT ${SCHEDULE_COLUMNS} FROM schedules WHERE group_id = $1 AND schedule_id = $2 FOR UPDATE`,
    [groupId, scheduleId],
  );
  return rows[0];
}

/**
 * Plans and stores the firings a schedule needs now (missed ones, those due within the lead and
 * advancer creates the rest ahead of time) and moves the row on. The row must be locked.
 */
async function planAndStore(
  client: pg.ClientBase,
  row: ScheduleRow,
  rules: ScheduleRules,
  lastInstantMs: number | null,
  firstFromMs: number,
  at: Placement,
): Promise<ScheduleChange> {
  const plan = planFirings({
    scheduleId: row.schedule_id,
    rules,
    lastInstantMs,
    firstFromMs,
    nowMs: at.nowMs,
    leadMs: at.leadMs,
    maxFirings: MAX_FIRINGS_PER_CALL,
  });
  const inserted = await insertFirings(
    client,
    { groupId: row.group_id, scheduleId: row.schedule_id, firing: row.firing },
    plan.firings,
    at.shardCount,
  );
  await recordPlan(
    client,
    { groupId: row.group_id, scheduleId: row.schedule_id, version: row.version },
    plan,
    false,
  );
  const after = await lockRow(client, row.group_id, row.schedule_id);
  if (after === undefined)
    throw new Error(`schedule ${row.group_id}/${row.schedule_id} vanished inside its transaction`);
  return { row: after, inserted };
}

export type CreateOutcome = ScheduleChange & { created: boolean; conflict: boolean };

/** Stores a new schedule with its first firing; a replay finds the stored one. */
export function createSchedule(pool: pg.Pool, s: NewSchedule, at: Placement): Promise<CreateOutcome> {
  return inTransaction(pool, async (client) => {
    const { rows } = await client.query<ScheduleRow>(
      `-- insert_schedule
       INSERT INTO schedules (group_id, schedule_id, state, spec, template, firing, request_hash, overlap_skip, advance_at)
       VALUES ($1, $2, ${ScheduleRowState.Active}, $3, $4, $5, $6, $7, now())
       ON CONFLICT (group_id, schedule_id) DO NOTHING
       RETURNING ${SCHEDULE_COLUMNS}`,
      [
        s.groupId,
        s.scheduleId,
        JSON.stringify(s.specJson),
        JSON.stringify(s.templateJson),
        JSON.stringify(s.firing),
        s.requestHash,
        s.rules.overlap === "skip",
      ],
    );
    const fresh = rows[0];
    if (fresh === undefined) {
      const existing = await lockRow(client, s.groupId, s.scheduleId);
      if (existing === undefined)
        throw new Error(`schedule ${s.groupId}/${s.scheduleId} conflicted but is not there`);
      return {
        row: existing,
        inserted: [],
        created: false,
        conflict: !existing.request_hash.equals(s.requestHash),
      };
    }
    const change = await planAndStore(client, fresh, s.rules, null, s.rules.startMs ?? at.nowMs, at);
    return { ...change, created: true, conflict: false };
  });
}

export async function getScheduleRow(
  pool: pg.Pool,
  groupId: string,
  scheduleId: string,
): Promise<ScheduleRow | undefined> {
  const { rows } = await pool.query<ScheduleRow>(
    `-- get_schedule
     SELECT ${SCHEDULE_COLUMNS} FROM schedules WHERE group_id = $1 AND schedule_id = $2`,
    [groupId, scheduleId],
  );
  return rows[0];
}

/** A schedule's firings not yet delivered, soonest first (timers_schedule_idx). */
export async function nextFirings(
  pool: pg.Pool,
  groupId: string,
  scheduleId: string,
  limit: number,
): Promise<{ timer_id: string; fire_at: Date }[]> {
  const { rows } = await pool.query<{ timer_id: string; fire_at: Date }>(
    `-- schedule_next_firings
     SELECT timer_id, fire_at FROM timers
      WHERE group_id = $1 AND schedule_id = $2 AND state IN (${State.Scheduled}, ${State.Firing}, ${State.Paused})
      ORDER BY fire_at, timer_id LIMIT $3`,
    [groupId, scheduleId, limit],
  );
  return rows;
}

/** A page of a group's schedules by id, after `afterId`. */
export async function listScheduleRows(
  pool: pg.Pool,
  groupId: string,
  afterId: string,
  limit: number,
): Promise<ScheduleRow[]> {
  const { rows } = await pool.query<ScheduleRow>(
    `-- list_schedules
     SELECT ${SCHEDULE_COLUMNS} FROM schedules WHERE group_id = $1 AND schedule_id > $2
      ORDER BY schedule_id LIMIT $3`,
    [groupId, afterId, limit],
  );
  return rows;
}

export interface Replacement {
  groupId: string;
  scheduleId: string;
  expectedVersion: bigint;
  rules: ScheduleRules;
  specJson: JsonValue;
  templateJson: JsonValue;
  firing: FiringSettings;
}

export type UpdateOutcome =
  | ScheduleChange
  | { kind: "not_found" }
  | { kind: "version_mismatch"; version: string };

/**
 * Replaces spec and template: firings not started are cancelled, and the new spec's next
 * firings (from now on) are created in the same transaction. A paused schedule stays paused.
 */
export function updateSchedule(pool: pg.Pool, r: Replacement, at: Placement): Promise<UpdateOutcome> {
  return inTransaction(pool, async (client) => {
    const row = await lockRow(client, r.groupId, r.scheduleId);
    if (row === undefined) return { kind: "not_found" };
    if (r.expectedVersion !== 0n && BigInt(row.version) !== r.expectedVersion) {
      return { kind: "version_mismatch", version: row.version };
    }
    await cancelWaitingFirings(client, r.groupId, r.scheduleId, "replaced by UpdateSchedule");
    const paused = row.state === ScheduleRowState.Paused;
    const { rows } = await client.query<ScheduleRow>(
      `-- replace_schedule
       UPDATE schedules
          SET spec = $3, template = $4, firing = $5, overlap_skip = $6, version = version + 1, update_time = now(),
              state = $7::smallint, advance_at = CASE WHEN $7::smallint = ${ScheduleRowState.Active} THEN now() ELSE NULL END
        WHERE group_id = $1 AND schedule_id = $2
        RETURNING ${SCHEDULE_COLUMNS}`,
      [
        r.groupId,
        r.scheduleId,
        JSON.stringify(r.specJson),
        JSON.stringify(r.templateJson),
        JSON.stringify(r.firing),
        r.rules.overlap === "skip",
        paused ? ScheduleRowState.Paused : ScheduleRowState.Active,
      ],
    );
    const replaced = rows[0];
    if (replaced === undefined) return { kind: "not_found" };
    if (paused) return { row: replaced, inserted: [] };
    // The new spec from now on: what already fired stays; no missed instants to catch up.
    const from = Math.max(at.nowMs, r.rules.startMs ?? at.nowMs);
    return planAndStore(client, replaced, r.rules, null, from, at);
  });
}

/** Pauses an active schedule: no more firings, those not started are cancelled. */
export function pauseSchedule(
  pool: pg.Pool,
  groupId: string,
  scheduleId: string,
): Promise<ScheduleRow | undefined> {
  return inTransaction(pool, async (client) => {
    const row = await lockRow(client, groupId, scheduleId);
    if (row === undefined || row.state !== ScheduleRowState.Active) return row;
    const cancelled = await cancelWaitingFirings(client, groupId, scheduleId, "schedule paused");
    // A resume plans again from the first instant cancelled here (the missed policy decides).
    const lastInstant =
      cancelled.earliestInstantMs === null ? row.last_instant : new Date(cancelled.earliestInstantMs - 1000);
    const { rows } = await client.query<ScheduleRow>(
      `-- pause_schedule
       UPDATE schedules SET state = ${ScheduleRowState.Paused}, advance_at = NULL, last_instant = $3,
              version = version + 1, update_time = now()
        WHERE group_id = $1 AND schedule_id = $2
        RETURNING ${SCHEDULE_COLUMNS}`,
      [groupId, scheduleId, lastInstant],
    );
    return rows[0];
  });
}

/** Resumes a paused schedule: the next firing from now, missed ones by the missed policy. */
export function resumeSchedule(
  pool: pg.Pool,
  groupId: string,
  scheduleId: string,
  at: Placement,
): Promise<ScheduleChange | undefined> {
  return inTransaction(pool, async (client) => {
    const row = await lockRow(client, groupId, scheduleId);
    if (row === undefined) return undefined;
    if (row.state !== ScheduleRowState.Paused) return { row, inserted: [] };
    const { rows } = await client.query<ScheduleRow>(
      `-- resume_schedule
       UPDATE schedules SET state = ${ScheduleRowState.Active}, advance_at = now(), version = version + 1, update_time = now()
        WHERE group_id = $1 AND schedule_id = $2
        RETURNING ${SCHEDULE_COLUMNS}`,
      [groupId, scheduleId],
    );
    const resumed = rows[0];
    if (resumed === undefined) return undefined;
    const rules = rulesOfRow(resumed);
    return planAndStore(
      client,
      resumed,
      rules,
      resumed.last_instant?.getTime() ?? null,
      rules.startMs ?? resumed.create_time.getTime(),
      at,
    );
  });
}

/** Deletes a schedule; its firings not started are cancelled. undefined when there was none. */
export function deleteSchedule(
  pool: pg.Pool,
  groupId: string,
  scheduleId: string,
): Promise<number | undefined> {
  return inTransaction(pool, async (client) => {
    const { rowCount } = await client.query(
      `-- delete_schedule
       DELETE FROM schedules WHERE group_id = $1 AND schedule_id = $2`,
      [groupId, scheduleId],
    );
    if (rowCount !== 1) return undefined;
    const cancelled = await cancelWaitingFirings(client, groupId, scheduleId, "schedule deleted");
    return cancelled.count;
  });
}
