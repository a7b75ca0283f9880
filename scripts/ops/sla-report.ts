// `npm run ops -- sla-report`: the runbook's SLA table ("SLA Monitoring") for a time range, from
// the delivery history in Postgres: timers due, fired within 30 s, lateness percentiles, failures
// by reason and the callback failure rate, overall and for the largest groups. The numbers are
// computed in one SQL statement (readSlaRows); judging and printing them is sla-summary.ts.
import { parseArgs } from "node:util";
import type pg from "pg";
import { createPool } from "../../services/shared/src/db.js";
import { ConfigError, envDurationMs, envInt } from "../../services/shared/src/env.js";
import { redactCredentials } from "../../services/shared/src/redact.js";
import { State } from "../../services/shared/src/timer-model.js";
import { buildSlaReport, formatSlaText, SLA_TARGETS, type SlaRow, slaExitCode } from "./sla-summary.js";
import { type OpsCommand, databaseUrlFrom } from "./command.js";

export const summary = "the SLA table (timers on time, lateness percentiles, failures) for a time range";

const HELP = `usage: npm run ops -- sla-report [--last 24h | --from TIME [--to TIME]] [--top 10] [--format text|json]

The operations runbook's SLA table for timers due in a time range, from Postgres (DATABASE_URL):
timers due, fired within ${SLA_TARGETS.onTimeWindowSeconds} s of fire_at (target ${SLA_TARGETS.onTimePercent} %), lateness p50/p95/p99/max
(first attempt start minus fire_at; a timer never attempted counts as late by now minus
fire_at), timers ended FAILED by reason, and the callback failure rate (target < ${SLA_TARGETS.callbackFailurePercent} %), overall
and for the top groups by timers due.

  --last DURATION   the range ending now (e.g. 1h, 24h, 7d); default 24h
  --from TIME       start of the range (ISO 8601, e.g. 2026-12-01T00:00:00Z)
  --to TIME         end of the range (default: now; a future end is cut at now)
  --top N           groups shown (default 10)
  --format FORMAT   text (default) or json
  --timeout DURATION  longest the query may run (default 60s)

Reads the attempts finished since the range began, and the scheduled timers due in it, so a
range far in the past reads everything finished since then (retention bounds that).
Exit codes: 0 targets met (or nothing due), 1 a target missed, 2 bad arguments or Postgres unreachable.`;

/** What to report on. */
export interface SlaRange {
  from: Date;
  /** Cut at Postgres's now() by the query. */
  to: Date | undefined;
}

/** Query rows as node-postgres returns them (bigint counts as text). */
interface RawRow {
  overall: boolean;
  group_id: string | null;
  due: string;
  on_time: string;
  never_attempted: string;
  failed_timers: string;
  expired_timers: string;
  p50: number | null;
  p95: number | null;
  p99: number | null;
  max: number | null;
  callback_attempts: string;
  callback_failures: string;
  abandoned: string;
  failures: { error: string; count: number }[];
  group_count: string;
  range_from: Date;
  range_to: Date;
  generated_at: Date;
}

/**
 * The SLA numbers of timers due in [from, to), overall and for the `top` groups with most timers
 * due, in one statement. Every read is a range: attempts finished since `from` (they include
 * every attempt of a timer due after it; the BRIN index on finished_at), timers still scheduled
 * with no attempt and due in the range (timers_due_idx, per shard), and timers in flight
 * (timers_claimed_idx); each of these timers is then read by its key, with its attempts.
 */
export async function readSlaRows(
  pool: Pick<pg.Pool, "query">,
  range: SlaRange,
  top: number,
): Promise<{ rows: SlaRow[]; groupCount: number; from: Date; to: Date; generatedAt: Date }> {
  const { rows } = await pool.query<RawRow>(
    `-- sla_report
     WITH b AS (
       SELECT $1::timestamptz AS lo, least(coalesce($2::timestamptz, now()), now()) AS hi, now() AS at
     ), candidates AS (
       SELECT x.shard, x.group_id, x.timer_id FROM timer_attempts x, b WHERE x.finished_at >= b.lo
       UNION
       SELECT d.shard, d.group_id, d.timer_id
         FROM shard_leases l CROSS JOIN b
        -- OFFSET 0 keeps this a read of each shard's own range of timers_due_idx: flattened
        -- into the join, the planner reads the whole index (every scheduled timer) instead.
        CROSS JOIN LATERAL (
          SELECT t.shard, t.group_id, t.timer_id FROM timers t
           WHERE t.state = ${State.Scheduled} AND t.shard = l.shard AND t.attempt = 0
             AND t.next_attempt_at >= b.lo AND t.next_attempt_at < b.hi OFFSET 0) d
       UNION
       SELECT t.shard, t.group_id, t.timer_id FROM timers t WHERE t.state = ${State.Firing}
     ), due AS (
       SELECT t.group_id, t.state, t.last_error,
              (a.first_start IS NULL AND t.fired_time IS NULL) AS never_attempted,
              -- A first attempt still in flight has no row yet: its claim's fired_time stands in.
              extract(epoch FROM coalesce(a.first_start, t.fired_time, b.at) - t.fire_at)::float8 AS lateness,
              a.answered, a.failed, a.abandoned
         FROM candidates c
        CROSS JOIN b
        -- Each candidate by its key: as a join, the planner may hash the candidates (it cannot
        -- know how few there are) and scan all of timers for them.
        CROSS JOIN LATERAL (
          SELECT t.shard, t.group_id, t.timer_id, t.state, t.fire_at, t.fired_time, t.last_error FROM timers t
           WHERE t.shard = c.shard AND t.group_id = c.group_id AND t.timer_id = c.timer_id LIMIT 1) t
        CROSS JOIN LATERAL (
          SELECT min(x.started_at) AS first_start,
                 -- An expired attempt (a lateness contract's SKIP) called no receiver: not a callback.
                 count(*) FILTER (WHERE x.outcome NOT IN ('abandoned', 'expired')) AS answered,
                 count(*) FILTER (WHERE x.outcome IN ('retry', 'failed')) AS failed,
                 count(*) FILTER (WHERE x.outcome = 'abandoned') AS abandoned
            FROM timer_attempts x
           WHERE x.shard = t.shard AND x.group_id = t.group_id AND x.timer_id = t.timer_id) a
        WHERE t.fire_at >= b.lo AND t.fire_at < b.hi
     ), failed AS MATERIALIZED ( -- once, not once per line of the report
       SELECT group_id, coalesce(last_error, '') AS error, count(*)::int AS n
         FROM due WHERE state = ${State.Failed} GROUP BY 1, 2
     ), per AS (
       SELECT grouping(group_id) = 1 AS overall, group_id,
              count(*) AS due,
              count(*) FILTER (WHERE lateness <= $4::float8) AS on_time,
              count(*) FILTER (WHERE never_attempted) AS never_attempted,
              count(*) FILTER (WHERE state = ${State.Failed}) AS failed_timers,
              count(*) FILTER (WHERE state = ${State.Expired}) AS expired_timers,
              percentile_cont(0.5) WITHIN GROUP (ORDER BY lateness) AS p50,
              percentile_cont(0.95) WITHIN GROUP (ORDER BY lateness) AS p95,
              percentile_cont(0.99) WITHIN GROUP (ORDER BY lateness) AS p99,
              max(lateness) AS max,
              coalesce(sum(answered), 0) AS callback_attempts,
              coalesce(sum(failed), 0) AS callback_failures,
              coalesce(sum(abandoned), 0) AS abandoned
         FROM due GROUP BY GROUPING SETS ((), (group_id))
     )
     SELECT per.overall, per.group_id, per.due::text, per.on_time::text, per.never_attempted::text,
            per.failed_timers::text, per.expired_timers::text, per.p50, per.p95, per.p99, per.max,
            per.callback_attempts::text, per.callback_failures::text, per.abandoned::text,
            (SELECT coalesce(json_agg(json_build_object('error', f.error, 'count', f.n) ORDER BY f.n DESC), '[]')
               FROM failed f WHERE per.overall OR f.group_id = per.group_id) AS failures,
            (count(*) OVER () - 1)::text AS group_count,
            b.lo AS range_from, b.hi AS range_to, b.at AS generated_at
       FROM per CROSS JOIN b
      ORDER BY per.overall DESC, per.due DESC, per.group_id
      LIMIT $3::int + 1`,
    [range.from, range.to ?? null, top, SLA_TARGETS.onTimeWindowSeconds],
  );
  const first = rows[0];
  if (!first) throw new Error("the SLA query returned no rows");
  return {
    rows: rows.map((r) => ({
      overall: r.overall,
      groupId: r.group_id,
      due: Number(r.due),
      onTime: Number(r.on_time),
      neverAttempted: Number(r.never_attempted),
      p50: r.p50,
      p95: r.p95,
      p99: r.p99,
      max: r.max,
      failedTimers: Number(r.failed_timers),
      expiredTimers: Number(r.expired_timers),
      failures: r.failures,
      callbackAttempts: Number(r.callback_attempts),
      callbackFailures: Number(r.callback_failures),
      abandoned: Number(r.abandoned),
    })),
    groupCount: Number(first.group_count),
    from: first.range_from,
    to: first.range_to,
    generatedAt: first.generated_at,
  };
}

interface Options {
  range: { from: Date | undefined; to: Date | undefined; lastMs: number };
  top: number;
  format: "text" | "json";
  timeoutMs: number;
  databaseUrl: string;
}

function parseTime(flag: string, raw: string | undefined): Date | undefined {
  if (raw === undefined) return undefined;
  const ms = Date.parse(raw);
  if (Number.isNaN(ms))
    throw new ConfigError(`${flag} must be a time like 2026-12-01T00:00:00Z, got "${raw}"`);
  return new Date(ms);
}

function parseOptions(args: string[], env: NodeJS.ProcessEnv): Options | "help" {
  const { values } = parseArgs({
    args,
    options: {
      from: { type: "string" },
      to: { type: "string" },
      last: { type: "string" },
      top: { type: "string" },
      format: { type: "string" },
      timeout: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return "help";
  const from = parseTime("--from", values.from);
  const to = parseTime("--to", values.to);
  if (values.last !== undefined && (from || to))
    throw new ConfigError("give either --last or --from/--to, not both");
  if (to && !from) throw new ConfigError("--to needs --from");
  if (from && to && to <= from) throw new ConfigError("--to must be after --from");
  const format = values.format ?? "text";
  if (format !== "text" && format !== "json")
    throw new ConfigError(`--format must be text or json, got "${format}"`);
  const flags = { "--last": values.last, "--top": values.top, "--timeout": values.timeout };
  return {
    range: { from, to, lastMs: envDurationMs(flags, "--last", 86_400_000, 1_000, 3_650 * 86_400_000) },
    top: envInt(flags, "--top", 10, 0, 10_000),
    format,
    timeoutMs: envDurationMs(flags, "--timeout", 60_000, 100, 3_600_000),
    databaseUrl: databaseUrlFrom(env),
  };
}

async function execute(opts: Options): Promise<number> {
  const pool = createPool(opts.databaseUrl, 1, "ops:sla-report", opts.timeoutMs);
  pool.on("error", () => {}); // an idle connection's failure surfaces on the next query
  try {
    const from = opts.range.from ?? (await dbNowMinus(pool, opts.range.lastMs));
    const result = await readSlaRows(pool, { from, to: opts.range.to }, opts.top);
    const report = buildSlaReport(
      result.rows,
      { from: result.from, to: result.to, generatedAt: result.generatedAt },
      result.groupCount,
    );
    console.log(opts.format === "json" ? JSON.stringify(report, null, 2) : formatSlaText(report));
    return slaExitCode(report);
  } catch (err) {
    console.error(`sla-report: could not read the SLA numbers from Postgres: ${describeError(err)}`);
    return 2;
  } finally {
    await pool.end();
  }
}

/** Postgres's now() minus `ms`: the range is judged by the database's clock, as firing is. */
async function dbNowMinus(pool: pg.Pool, ms: number): Promise<Date> {
  const { rows } = await pool.query<{ t: Date }>(
    "SELECT now() - $1::float8 * interval '1 millisecond' AS t",
    [ms],
  );
  return rows[0]!.t;
}

function describeError(err: unknown): string {
  const message = (err instanceof Error && err.message) || String((err as { code?: unknown }).code ?? err);
  return redactCredentials(message);
}

export const command: OpsCommand<Options> = { summary, help: HELP, parse: parseOptions, execute };
