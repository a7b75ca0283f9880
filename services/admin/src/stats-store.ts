// GetStats' numbers: active timers per group and mesh-wide counters, read from Postgres as it is
// now (timer_attempts for the recent firings).
import type pg from "pg";
import { dueTimersOfShardSql } from "../../shared/src/shard-lag.js";
import { State } from "../../shared/src/timer-model.js";

/** Active (SCHEDULED, FIRING, PAUSED) timers of one group, counts as text (bigint). */
export interface GroupActivityRow {
  group_id: string;
  scheduled: string;
  firing: string;
  /** Held by a bulk pause: active (they fire once resumed), not due. */
  paused: string;
}

/** Active (SCHEDULED, FIRING, PAUSED) timers per group. */
export async function activeByGroup(pool: pg.Pool): Promise<GroupActivityRow[]> {
  const { rows } = await pool.query<GroupActivityRow>(
    `-- active_by_group
     SELECT group_id,
            count(*) FILTER (WHERE state = ${State.Scheduled})::text AS scheduled,
            count(*) FILTER (WHERE state = ${State.Firing})::text AS firing,
            count(*) FILTER (WHERE state = ${State.Paused})::text AS paused
       FROM timers WHERE state IN (${State.Scheduled}, ${State.Firing}, ${State.Paused})
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

/**
 * Due timers (the backlog: paused groups' left out, the sum of ListShards' due counts), recent
 * firings (timer_attempts, by finish time) and paused groups.
 */
export async function meshCounters(pool: pg.Pool): Promise<StatsRow> {
  const { rows } = await pool.query<StatsRow>(
    `-- mesh_counters
     SELECT (SELECT sum(d.n) FROM shard_leases l
               CROSS JOIN LATERAL (SELECT count(*) AS n FROM ${dueTimersOfShardSql("l.shard")}) d)::text AS due_now,
            count(*) FILTER (WHERE attempt = 1 AND finished_at > now() - interval '1 minute')::text AS fired_minute,
            count(*) FILTER (WHERE attempt = 1)::text AS fired_hour,
            count(*) FILTER (WHERE finished_at > now() - interval '1 minute')::text AS attempts_minute,
            count(*)::text AS attempts_hour,
            count(*) FILTER (WHERE outcome = 'failed')::text AS failed_hour,
            (SELECT count(*) FROM paused_groups)::text AS paused_groups,
            now() AS db_now
       FROM timer_attempts
      -- An expired attempt (a lateness contract's SKIP) fired nothing and called no receiver.
      WHERE finished_at > now() - interval '1 hour' AND outcome <> 'expired'`,
  );
  return rows[0]!;
}
