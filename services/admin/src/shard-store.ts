// The mesh as Postgres has it: who holds which shard lease, and each shard's backlog. The
// dispatchers' own view (heartbeats) is dispatcher-directory.ts.
import type pg from "pg";
import { State } from "../../shared/src/timer-model.js";
import { dueTimersOfShardSql, lagSecondsSql } from "../../shared/src/shard-lag.js";

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

/**
 * Deliveries in flight per dispatcher: FIRING timers by the dispatcher part of their claim owner
 * ("<dispatcher id>#<incarnation>"). Reads timers_claimed_idx (FIRING only), so its cost is the
 * number in flight, not the table.
 */
export async function inFlightCounts(pool: pg.Pool): Promise<Map<string, number>> {
  const { rows } = await pool.query<{ owner: string; n: number }>(
    `-- in_flight_counts
     SELECT split_part(claim_owner, '#', 1) AS owner, count(*)::int AS n FROM timers
      WHERE state = ${State.Firing} AND claim_owner IS NOT NULL
      GROUP BY 1`,
  );
  return new Map(rows.map((r) => [r.owner, r.n]));
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

/**
 * Shards with lease, lag and due count; optionally one owner's, optionally only those lagging
 * more than minLagSeconds. Lag and due count leave out paused groups' timers, like the
 * dispatchers' timer_shard_lag_seconds (shard-lag.ts).
 */
export async function listShards(
  pool: pg.Pool,
  owner: string | null,
  minLagSeconds: number | null,
): Promise<ShardRow[]> {
  const lag = `coalesce(${lagSecondsSql("d.oldest")}, 0)`;
  const { rows } = await pool.query<ShardRow>(
    `-- list_shards
     SELECT l.shard, l.last_owner AS owner, l.epoch::text AS epoch,
            l.lease_expires_at AS expires_at,
            (l.owner IS NOT NULL) AS leased,
            ${lag}::float8 AS lag,
            coalesce(d.due, 0)::text AS due
       FROM shard_owners l
       CROSS JOIN LATERAL (SELECT count(*) AS due, min(next_attempt_at) AS oldest FROM ${dueTimersOfShardSql("l.shard")}) d
      WHERE ($1::text IS NULL OR l.owner = $1::text)
        AND ($2::float8 IS NULL OR ${lag} > $2::float8)
      ORDER BY l.shard`,
    [owner, minLagSeconds],
  );
  return rows;
}
