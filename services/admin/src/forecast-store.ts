// The load ahead, read from Postgres: SCHEDULED timers per bucket of next_attempt_at (by shard
// owner and by group), the backlog now, the load-ahead gauges' two numbers, and the first
// attempts finished per minute (the mesh's recent firing rate).
//
// Cost: the future is read from timers_due_idx, (shard, next_attempt_at) WHERE state = 1, one
// shard at a time (a LATERAL per shard number), each read in time order and stopped after
// `perShardRows` entries. So a read costs at most shards x perShardRows index entries whatever
// the table holds. A shard stopped by its budget has read everything before its last entry
// only; the earliest such entry over all shards is `completeUntil`, and nothing at or after it
// is counted (from any shard), so the counts that are returned are exact up to it. The group
// filter is applied after the budgeted read, so a group's forecast costs what the mesh's does
// and no more, however many other groups' timers sit in its range.
import type pg from "pg";
import { dueTimersOfShardSql } from "../../shared/src/shard-lag.js";
import { State } from "../../shared/src/timer-model.js";
import { type BucketCount, UNOWNED } from "./forecast.js";

/** What one forecast read covers. */
export interface ForecastRead {
  shardCount: number;
  /** Index entries read per shard at most (the row budget over the shards). */
  perShardRows: number;
  bucketMs: number;
  buckets: number;
  /** Only this group's timers; null for all. */
  groupId: string | null;
  /** Groups with series in the answer (the most timers first). */
  topGroups: number;
}

/** What a forecast read found. */
export interface ForecastCounts {
  /** The first bucket's start: the database's now, rounded down to the bucket width. */
  startAt: Date;
  /** Per shard owner (UNOWNED for shards without an unexpired lease) and bucket. */
  byOwner: BucketCount[];
  /** Per group of the top ones and bucket. */
  byGroup: BucketCount[];
  /** Set when a shard's budget ran out: counts are complete before this time only. */
  completeUntil: Date | null;
}

/**
 * SQL of the budgeted read of the due index, as CTEs named `due_read` (shard, at, group_id when
 * `withGroup`) and `due_kept` (the same rows, cut at the earliest time a shard's budget ran
 * out), with `due_cut(until)`. `startAt` and `endAt` are SQL expressions of the window's bounds,
 * written out (functions of now() and parameters) rather than read from a CTE: the planner then
 * estimates how many entries the window holds and reads each shard's range in index order,
 * stopping at the budget; with bounds it cannot see it took a bitmap scan of the whole range and
 * sorted it, reading everything in the window. `shards` and `budget` are $-parameters.
 */
export function budgetedDueReadSql(
  startAt: string,
  endAt: string,
  shards: string,
  budget: string,
  withGroup: boolean,
): string {
  const group = withGroup ? ", group_id" : "";
  const tGroup = withGroup ? ", t.group_id" : "";
  return `due_read AS (
       SELECT s.shard, t.next_attempt_at AS at${tGroup}
         FROM generate_series(0, ${shards}::int - 1) AS s(shard)
        CROSS JOIN LATERAL (
              SELECT next_attempt_at${group} FROM timers
               WHERE state = ${State.Scheduled} AND timers.shard = s.shard
                 AND next_attempt_at >= ${startAt} AND next_attempt_at < ${endAt}
               ORDER BY next_attempt_at
               LIMIT ${budget}::int) t
     ), due_cut AS (
       SELECT min(f.last) AS until
         FROM (SELECT max(at) AS last FROM due_read GROUP BY shard HAVING count(*) >= ${budget}::int) f
     ), due_kept AS (
       SELECT d.* FROM due_read d CROSS JOIN due_cut c WHERE c.until IS NULL OR d.at < c.until
     )`;
}

/** SQL of the first bucket's start: now() rounded down to $1 milliseconds (from the Unix epoch). */
const FORECAST_START =
  "to_timestamp(floor(extract(epoch FROM now()) * 1000 / $1::bigint) * $1::bigint / 1000.0)";
/** SQL of the horizon's end: $2 buckets of $1 milliseconds after the start. */
const FORECAST_END = `(${FORECAST_START} + make_interval(secs => $1::bigint * $2::int / 1000.0))`;

/** SCHEDULED timers per bucket over the horizon, by owner and for the top groups, read within the budget. */
export async function forecastCounts(pool: pg.Pool, read: ForecastRead): Promise<ForecastCounts> {
  const { rows } = await pool.query<{
    start_at: Date;
    until: Date | null;
    counts: { kind: "owner" | "group"; key: string; bucket: number; due: number }[];
  }>(
    `-- forecast_load
     WITH win AS (SELECT ${FORECAST_START} AS start_at),
     ${budgetedDueReadSql(FORECAST_START, FORECAST_END, "$3", "$4", true)},
     bucketed AS (
       SELECT k.shard, k.group_id,
              floor(extract(epoch FROM k.at - w.start_at) * 1000 / $1::bigint)::int AS bucket
         FROM due_kept k CROSS JOIN win w
        WHERE $5::text IS NULL OR k.group_id = $5::text
     ), top AS (
       SELECT group_id FROM bucketed GROUP BY group_id ORDER BY count(*) DESC, group_id LIMIT $6::int
     ), counts AS (
       SELECT 'owner' AS kind, coalesce(o.owner, $7::text) AS key, b.bucket, count(*)::int AS due
         FROM bucketed b LEFT JOIN shard_owners o ON o.shard = b.shard
        GROUP BY 2, 3
       UNION ALL
       SELECT 'group', b.group_id, b.bucket, count(*)::int
         FROM bucketed b JOIN top USING (group_id)
        GROUP BY 2, 3
     )
     SELECT w.start_at, c.until,
            (SELECT coalesce(json_agg(counts), '[]'::json) FROM counts) AS counts
       FROM win w CROSS JOIN due_cut c`,
    [read.bucketMs, read.buckets, read.shardCount, read.perShardRows, read.groupId, read.topGroups, UNOWNED],
  );
  const row = rows[0]!;
  const pick = (kind: "owner" | "group") =>
    row.counts.filter((c) => c.kind === kind).map((c) => ({ key: c.key, bucket: c.bucket, due: c.due }));
  return { startAt: row.start_at, byOwner: pick("owner"), byGroup: pick("group"), completeUntil: row.until };
}

/**
 * The backlog now: SCHEDULED timers due now or earlier, paused groups' left out (shard-lag.ts's
 * definition, as ListShards and GetStats count it), optionally of one group.
 */
export async function overdueCount(
  pool: pg.Pool,
  shardCount: number,
  groupId: string | null,
): Promise<bigint> {
  const { rows } = await pool.query<{ overdue: string }>(
    `-- forecast_overdue
     SELECT coalesce(sum(d.n), 0)::text AS overdue
       FROM generate_series(0, $1::int - 1) AS s(shard)
      CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM ${dueTimersOfShardSql("s.shard")}
               AND ($2::text IS NULL OR timers.group_id = $2::text)) d`,
    [shardCount, groupId],
  );
  return BigInt(rows[0]!.overdue);
}

/** The load-ahead gauges' numbers. */
export interface LoadAhead {
  /** SCHEDULED timers due from now to 5 minutes from now. */
  dueNext5m: number;
  /** The most SCHEDULED timers due in one minute (whole minutes, the current one first) of the next hour. */
  peakPerMinute: number;
}

/**
 * The load-ahead gauges' numbers, from the due index alone (index-only where the visibility map
 * allows: no group is read), within the same per-shard budget as ForecastLoad.
 */
export async function loadAhead(pool: pg.Pool, shardCount: number, perShardRows: number): Promise<LoadAhead> {
  const { rows } = await pool.query<{ next_5m: number; peak: number }>(
    `-- load_ahead
     WITH ${budgetedDueReadSql("date_trunc('minute', now())", "date_trunc('minute', now()) + interval '1 hour'", "$1", "$2", false)}
     SELECT (SELECT count(*) FROM due_kept
              WHERE at >= now() AND at < now() + interval '5 minutes')::int AS next_5m,
            (SELECT coalesce(max(m.n), 0) FROM (SELECT count(*) AS n FROM due_kept
                                                  GROUP BY date_trunc('minute', at)) m)::int AS peak`,
    [shardCount, perShardRows],
  );
  return { dueNext5m: rows[0]!.next_5m, peakPerMinute: rows[0]!.peak };
}

/** The database's current minute, counted from the Unix epoch. */
export async function currentMinute(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ minute: string }>(
    `-- current_minute
     SELECT floor(extract(epoch FROM now()) / 60)::bigint::text AS minute`,
  );
  return Number(rows[0]!.minute);
}

/**
 * First delivery attempts (firings) per minute of their finish, for the minutes [from, until)
 * (minutes from the Unix epoch); minutes with none are absent. Read through the BRIN index on
 * finished_at (migration 000004), so it costs the attempts of those minutes only.
 */
export async function firedPerMinute(
  pool: pg.Pool,
  fromMinute: number,
  untilMinute: number,
): Promise<{ minute: number; fired: number }[]> {
  const { rows } = await pool.query<{ minute: string; fired: number }>(
    `-- fired_per_minute
     SELECT floor(extract(epoch FROM finished_at) / 60)::bigint::text AS minute, count(*)::int AS fired
       FROM timer_attempts
      WHERE attempt = 1
        AND finished_at >= to_timestamp($1::bigint * 60) AND finished_at < to_timestamp($2::bigint * 60)
      GROUP BY 1`,
    [fromMinute, untilMinute],
  );
  return rows.map((r) => ({ minute: Number(r.minute), fired: r.fired }));
}
