// `npm run ops -- doctor`: the runbook's health-check.sh and performance-check.sh as one command.
// It asks every service's readiness and metrics, Postgres and NATS, and reads the mesh's state
// from Postgres (shard owners, lag, the oldest overdue timer, paused groups, recent failures);
// doctor-checks.ts judges what it found. Every probe runs at once, each under --timeout, so one
// hanging service costs that much and no more.
import { connect } from "@nats-io/transport-node";
import { parseArgs } from "node:util";
import type pg from "pg";
import { estimateClock, type ClockSample } from "../../services/dispatcher/src/db-clock.js";
import { within } from "../../services/shared/src/bounded-wait.js";
import { createPool } from "../../services/shared/src/db.js";
import {
  ConfigError,
  envDurationMs,
  envNatsCredentials,
  envOptional,
  envUrl,
} from "../../services/shared/src/env.js";
import { redactCredentials, redactUrl } from "../../services/shared/src/redact.js";
import {
  dueTimersOfShardSql,
  lagSecondsSql,
  pausedDueTimersSql,
} from "../../services/shared/src/shard-lag.js";
import { State } from "../../services/shared/src/timer-model.js";
import {
  type CheckResult,
  doctorExitCode,
  formatDoctorText,
  instanceOf,
  judgeClockOffsets,
  judgeDispatcherCoverage,
  judgeNats,
  judgeOldestOverdue,
  judgePausedGroups,
  judgePoolUse,
  judgePostgres,
  judgeReadiness,
  judgeRecentFailures,
  judgeShardLag,
  judgeShardOwners,
  notChecked,
  parsePrometheusText,
  type ReadinessProbe,
  type Sample,
  sampleValue,
  type ShardBacklog,
  type UnownedShards,
  timedOut,
} from "./doctor-checks.js";
import { type OpsCommand, databaseUrlFrom } from "./command.js";

export const summary =
  "check the whole mesh (services, Postgres, NATS, shards, lag, clocks) and say what to do";

const HELP = `usage: npm run ops -- doctor [--timer URL] [--admin URL] [--dispatcher URL]... [--format text|json] [--strict] [--timeout 5s]

Checks, each bounded by --timeout: the readiness (/health/ready) of the timer, admin and each
dispatcher service; that every dispatcher alive in Postgres was checked; Postgres (version,
connections against max_connections); NATS (connect and round trip); that every shard has a live
owner; shard lag and the oldest overdue timer (paused groups left out); clock offsets against
Postgres (this machine, and each dispatcher's dispatcher_clock_offset_seconds); each service's
Postgres pool use; paused groups with due timers; timers ended FAILED in the last hour.
Each prints OK, WARN or FAIL, and what to do when not OK.

  --timer URL        timer service HTTP port (env DOCTOR_TIMER_URL; default http://localhost:8080)
  --admin URL        admin service HTTP port (env DOCTOR_ADMIN_URL; default http://localhost:8082)
  --dispatcher URL   a dispatcher's HTTP port, repeated for each (env DOCTOR_DISPATCHER_URLS,
                     comma-separated; default http://localhost:8081)
  --format FORMAT    text (default) or json
  --strict           exit 1 on WARN too
  --timeout DURATION each check's time limit (default 5s)

Postgres from DATABASE_URL, NATS from NATS_URL with NATS_USER/NATS_PASSWORD (as the services).
Exit codes: 0 every check OK (WARN allowed unless --strict), 1 a check FAILed, 2 bad arguments.`;

interface Options {
  timerUrl: string;
  adminUrl: string;
  dispatcherUrls: string[];
  format: "text" | "json";
  strict: boolean;
  timeoutMs: number;
  databaseUrl: string;
  natsUrl: string;
  natsCredentials: { user: string; password: string } | undefined;
}

function httpUrl(flag: string, raw: string): string {
  try {
    const url = new URL(raw);
    if (url.protocol !== "http:" && url.protocol !== "https:") throw new Error("not http(s)");
    return raw.replace(/\/+$/, "");
  } catch (err) {
    throw new ConfigError(`${flag} must be an http(s) URL like http://localhost:8081, got "${raw}"`, {
      cause: err,
    });
  }
}

function parseOptions(args: string[], env: NodeJS.ProcessEnv): Options | "help" {
  const { values } = parseArgs({
    args,
    options: {
      timer: { type: "string" },
      admin: { type: "string" },
      dispatcher: { type: "string", multiple: true },
      format: { type: "string" },
      strict: { type: "boolean" },
      timeout: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return "help";
  const format = values.format ?? "text";
  if (format !== "text" && format !== "json")
    throw new ConfigError(`--format must be text or json, got "${format}"`);
  const dispatchers =
    values.dispatcher ??
    (envOptional(env, "DOCTOR_DISPATCHER_URLS") ?? "http://localhost:8081").split(",").filter(Boolean);
  return {
    timerUrl: httpUrl(
      "--timer",
      values.timer ?? envOptional(env, "DOCTOR_TIMER_URL") ?? "http://localhost:8080",
    ),
    adminUrl: httpUrl(
      "--admin",
      values.admin ?? envOptional(env, "DOCTOR_ADMIN_URL") ?? "http://localhost:8082",
    ),
    dispatcherUrls: dispatchers.map((u) => httpUrl("--dispatcher", u.trim())),
    format,
    strict: values.strict ?? false,
    timeoutMs: envDurationMs({ "--timeout": values.timeout }, "--timeout", 5_000, 100, 120_000),
    databaseUrl: databaseUrlFrom(env),
    natsUrl: envUrl(env, "NATS_URL", "nats://127.0.0.1:4222", ["nats", "tls", "ws", "wss"]),
    natsCredentials: envNatsCredentials(env, "NATS_USER", "NATS_PASSWORD"),
  };
}

function describeError(err: unknown): string {
  const base =
    (err instanceof Error && (err.message || (err as { code?: string }).code)) ||
    String((err as { code?: unknown }).code ?? err);
  const cause = err instanceof Error && err.cause instanceof Error ? `: ${err.cause.message}` : "";
  return redactCredentials(`${base}${cause}`);
}

/** `p`'s value, or `undefined` after `ms` (its late result or failure is dropped). */
async function bounded<T>(p: Promise<T>, ms: number): Promise<{ value: T } | undefined> {
  return within(p, ms);
}

/** One service's HTTP port: what /health/ready answered and what /metrics holds. */
interface ServiceProbe {
  url: string;
  ready: ReadinessProbe;
  metrics: Sample[] | undefined;
}

async function probeService(url: string, timeoutMs: number): Promise<ServiceProbe> {
  const get = async (path: string) => {
    const res = await fetch(`${url}${path}`, { signal: AbortSignal.timeout(timeoutMs) });
    return { status: res.status, text: await res.text() };
  };
  const [ready, metrics] = await Promise.allSettled([get("/health/ready"), get("/metrics")]);
  let readiness: ReadinessProbe;
  if (ready.status === "rejected")
    readiness = {
      error:
        ready.reason instanceof Error && ready.reason.name === "TimeoutError"
          ? `no answer within ${timeoutMs} ms`
          : describeError(ready.reason),
    };
  else {
    try {
      readiness = { status: ready.value.status, body: JSON.parse(ready.value.text) as never };
    } catch {
      readiness = { error: `HTTP ${ready.value.status} with a body that is not the health JSON` };
    }
  }
  return {
    url,
    ready: readiness,
    metrics:
      metrics.status === "fulfilled" && metrics.value.status === 200
        ? parsePrometheusText(metrics.value.text)
        : undefined,
  };
}

async function probeNats(opts: Options): Promise<{ rttMs: number } | { error: string }> {
  try {
    const nc = await connect({
      servers: opts.natsUrl.split(","),
      name: "ops:doctor",
      ...(opts.natsCredentials
        ? { user: opts.natsCredentials.user, pass: opts.natsCredentials.password }
        : {}),
      reconnect: false,
      timeout: opts.timeoutMs,
    });
    try {
      return { rttMs: await nc.rtt() };
    } finally {
      await nc.close();
    }
  } catch (err) {
    return { error: describeError(err) };
  }
}

/** This machine's wall clock against Postgres's clock_timestamp(), as a dispatcher measures it. */
async function probeClock(pool: pg.Pool): Promise<{ offsetMs: number; uncertaintyMs: number }> {
  const client = await pool.connect();
  try {
    const samples: ClockSample[] = [];
    for (let i = 0; i < 5; i++) {
      const wallBeforeMs = Date.now();
      const monoBeforeMs = performance.now();
      const { rows } = await client.query<{ ms: number }>(
        "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS ms",
      );
      samples.push({
        monoBeforeMs,
        monoAfterMs: performance.now(),
        wallBeforeMs,
        wallAfterMs: Date.now(),
        dbMs: rows[0]!.ms,
      });
    }
    const e = estimateClock(samples);
    return { offsetMs: e.wallOffsetMs, uncertaintyMs: e.uncertaintyMs };
  } finally {
    client.release();
  }
}

/** Postgres's own facts: version and connections. */
async function probePostgres(
  pool: pg.Pool,
): Promise<{ version: string; used: number; maxConnections: number; reserved: number; now: Date }> {
  const { rows } = await pool.query<{
    version: string;
    used: number;
    max_connections: number;
    reserved: number;
    now: Date;
  }>(
    `SELECT current_setting('server_version') AS version,
            (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int AS used,
            current_setting('max_connections')::int AS max_connections,
            current_setting('superuser_reserved_connections')::int AS reserved,
            now() AS now`,
  );
  const r = rows[0]!;
  return {
    version: r.version,
    used: r.used,
    maxConnections: r.max_connections,
    reserved: r.reserved,
    now: r.now,
  };
}

async function liveDispatchers(pool: pg.Pool): Promise<string[]> {
  const { rows } = await pool.query<{ owner: string }>(
    "SELECT owner FROM dispatcher_leases WHERE expires_at > now() ORDER BY owner",
  );
  return rows.map((r) => r.owner);
}

async function shardOwnership(pool: pg.Pool): Promise<Parameters<typeof judgeShardOwners>[0]> {
  const { rows } = await pool.query<{
    shard_count: number;
    owners: { owner: string; shards: number }[];
    unowned: UnownedShards[];
  }>(
    `SELECT (SELECT value::int FROM mesh_settings WHERE key = 'shard_count') AS shard_count,
            (SELECT coalesce(json_agg(json_build_object('owner', owner, 'shards', n) ORDER BY owner), '[]')
               FROM (SELECT owner, count(*)::int AS n FROM shard_owners WHERE owner IS NOT NULL GROUP BY owner) o) AS owners,
            (SELECT coalesce(json_agg(json_build_object('lastOwner', last_owner, 'count', n, 'firstShards', first)
                                      ORDER BY n DESC, last_owner), '[]')
               FROM (SELECT last_owner, count(*)::int AS n, (array_agg(shard ORDER BY shard))[1:5] AS first
                       FROM shard_owners WHERE owner IS NULL GROUP BY last_owner) u) AS unowned`,
  );
  const r = rows[0]!;
  return { shardCount: r.shard_count, owners: r.owners, unowned: r.unowned };
}

/** Each shard's oldest due timer outside paused groups (one index range per shard, shard-lag.ts). */
async function shardBacklogs(pool: pg.Pool): Promise<ShardBacklog[]> {
  const { rows } = await pool.query<{
    shard: number;
    owner: string | null;
    lag: number;
    group_id: string;
    timer_id: string;
  }>(
    `SELECT l.shard, l.owner, ${lagSecondsSql("d.next_attempt_at")}::float8 AS lag, d.group_id, d.timer_id
       FROM shard_owners l
       CROSS JOIN LATERAL (SELECT group_id, timer_id, next_attempt_at FROM ${dueTimersOfShardSql("l.shard")}
                            ORDER BY next_attempt_at LIMIT 1) d`,
  );
  return rows.map((r) => ({
    shard: r.shard,
    owner: r.owner,
    lagSeconds: r.lag,
    groupId: r.group_id,
    timerId: r.timer_id,
  }));
}

async function pausedGroups(pool: pg.Pool): Promise<Parameters<typeof judgePausedGroups>[0]> {
  const { rows } = await pool.query<{
    group_id: string;
    paused_at: Date;
    paused_by: string;
    reason: string;
    due: string | null;
  }>(
    `SELECT p.group_id, p.paused_at, p.paused_by, p.reason, d.due
       FROM paused_groups p LEFT JOIN (${pausedDueTimersSql()}) d ON d.group_id = p.group_id
      ORDER BY p.group_id`,
  );
  return rows.map((r) => ({
    groupId: r.group_id,
    pausedAt: r.paused_at,
    pausedBy: r.paused_by,
    reason: r.reason,
    due: Number(r.due ?? 0),
  }));
}

async function recentFailures(pool: pg.Pool): Promise<{ groupId: string; count: number }[]> {
  // timers_finished_idx: only the last hour's finished timers are read.
  const { rows } = await pool.query<{ group_id: string; n: number }>(
    `SELECT group_id, count(*)::int AS n FROM timers
      WHERE finish_time > now() - interval '1 hour' AND state = ${State.Failed}
      GROUP BY group_id ORDER BY n DESC, group_id`,
  );
  return rows.map((r) => ({ groupId: r.group_id, count: r.n }));
}

/** Runs every check, each under the time limit, and returns their results in a fixed order. */
export async function runChecks(opts: Options): Promise<{ results: CheckResult[]; at: Date }> {
  const t = opts.timeoutMs;
  const pool = createPool(opts.databaseUrl, 4, "ops:doctor", t);
  pool.on("error", () => {}); // an idle connection's failure surfaces on the next query
  try {
    const services = [
      { service: "timer" as const, label: "timer", url: opts.timerUrl },
      { service: "admin" as const, label: "admin", url: opts.adminUrl },
      ...opts.dispatcherUrls.map((url) => ({ service: "dispatcher" as const, label: "dispatcher", url })),
    ];
    // Everything at once: a service that hangs costs its own time limit, not everyone's.
    const serviceProbes = Promise.all(
      services.map(async (s) => ({ ...s, probe: await bounded(probeService(s.url, t), t + 500) })),
    );
    const nats = bounded(probeNats(opts), t + 500);
    const postgres = bounded(probePostgres(pool), t).catch((err: unknown) => ({ error: describeError(err) }));
    const pg0 = await postgres;
    const pgUp = pg0 !== undefined && !("error" in pg0) ? pg0.value : undefined;
    const fromDb = <T>(name: string, read: () => Promise<T>, judge: (v: T) => CheckResult) =>
      pgUp === undefined
        ? Promise.resolve(notChecked(name, "Postgres unreachable"))
        : bounded(read(), t).then(
            (r) => (r ? judge(r.value) : timedOut(name, t)),
            (err: unknown): CheckResult => ({
              name,
              status: "FAIL",
              summary: `query failed: ${describeError(err)}`,
              action: "is this database migrated (the services migrate it at start)? check DATABASE_URL",
            }),
          );
    const [probes, natsFacts, live, owners, backlogs, paused, failed, clock] = await Promise.all([
      serviceProbes,
      nats,
      pgUp ? bounded(liveDispatchers(pool), t).catch(() => undefined) : Promise.resolve(undefined),
      fromDb("shard owners", () => shardOwnership(pool), judgeShardOwners),
      pgUp
        ? bounded(shardBacklogs(pool), t).catch((err: unknown) => ({ error: describeError(err) }))
        : undefined,
      fromDb(
        "paused groups",
        () => pausedGroups(pool),
        (p) => judgePausedGroups(p, pgUp?.now ?? new Date()),
      ),
      fromDb("failed timers (1 h)", () => recentFailures(pool), judgeRecentFailures),
      pgUp
        ? bounded(probeClock(pool), t).then(
            (r) => r?.value ?? { error: `no answer within ${t} ms` },
            (err: unknown) => ({ error: describeError(err) }),
          )
        : Promise.resolve({ error: "Postgres unreachable" }),
    ]);

    const results: CheckResult[] = [];
    const checked: { url: string; id: string | undefined }[] = [];
    for (const s of probes) {
      const id = s.probe?.value.metrics ? instanceOf(s.probe.value.metrics) : undefined;
      if (s.service === "dispatcher") checked.push({ url: s.url, id });
      const label = s.service === "dispatcher" ? `dispatcher ${id ?? s.url}` : s.label;
      results.push(
        s.probe
          ? judgeReadiness(s.service, label, s.url, s.probe.value.ready)
          : timedOut(`${label} ready`, t),
      );
    }
    results.push(
      live?.value
        ? judgeDispatcherCoverage(live.value, checked)
        : notChecked("dispatchers", pgUp ? "could not read dispatcher_leases" : "Postgres unreachable"),
    );
    results.push(
      judgePostgres(
        pg0 === undefined ? { error: `no answer within ${t} ms` } : "error" in pg0 ? pg0 : pg0.value,
      ),
    );
    results.push(
      judgeNats(redactUrl(opts.natsUrl), natsFacts ? natsFacts.value : { error: `no answer within ${t} ms` }),
    );
    results.push(owners);
    if (backlogs === undefined) {
      results.push(
        notChecked("shard lag", "Postgres unreachable"),
        notChecked("oldest overdue timer", "Postgres unreachable"),
      );
    } else if ("error" in backlogs) {
      results.push(
        notChecked("shard lag", backlogs.error),
        notChecked("oldest overdue timer", backlogs.error),
      );
    } else if (!backlogs) {
      results.push(timedOut("shard lag", t), timedOut("oldest overdue timer", t));
    } else {
      results.push(judgeShardLag(backlogs.value));
      results.push(judgeOldestOverdue([...backlogs.value].sort((a, b) => b.lagSeconds - a.lagSeconds)[0]));
    }
    const dispatcherProbes = probes.filter((s) => s.service === "dispatcher");
    results.push(
      judgeClockOffsets(
        clock,
        dispatcherProbes.map((s) => {
          const m = s.probe?.value.metrics;
          return {
            label: (m && instanceOf(m)) ?? s.url,
            offsetSeconds: m ? sampleValue(m, "dispatcher_clock_offset_seconds") : undefined,
          };
        }),
      ),
    );
    results.push(
      judgePoolUse(
        probes.map((s) => {
          const m = s.probe?.value.metrics;
          const label = s.service === "dispatcher" ? ((m && instanceOf(m)) ?? s.url) : s.label;
          return {
            label,
            active: m ? sampleValue(m, "database_connections_active") : undefined,
            max: m ? sampleValue(m, "database_connections_max") : undefined,
            waiting: m ? sampleValue(m, "database_connections_waiting") : undefined,
          };
        }),
      ),
    );
    results.push(paused, failed);
    return { results, at: pgUp?.now ?? new Date() };
  } finally {
    // A pool whose connection hangs must not hold the command open.
    await within(pool.end(), 1_000);
  }
}

async function execute(opts: Options): Promise<number> {
  const { results, at } = await runChecks(opts);
  const code = doctorExitCode(results, opts.strict);
  console.log(
    opts.format === "json"
      ? JSON.stringify({ at: at.toISOString(), exitCode: code, checks: results }, null, 2)
      : formatDoctorText(results, at),
  );
  return code;
}

export const command: OpsCommand<Options> = { summary, help: HELP, parse: parseOptions, execute };
