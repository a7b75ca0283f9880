// Automatic retention against a real Postgres: the loop (retention-loop.ts) deletes what is past
// its retention and nothing else, in bounded batches, one process at a time (the advisory lock),
// and its metrics say so; the statements read by index, whatever the table size; a real
// dispatcher process runs it on its own; and the operators' one-shot command does the same run
// (or counts it) as a process, the way an operator types it.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import type { Attributes } from "@opentelemetry/api";
import { MeterProvider, MetricReader } from "@opentelemetry/sdk-metrics";
import type pg from "pg";
import { loadRetentionSettings, type RetentionSettings } from "../../services/dispatcher/src/config.js";
import { RetentionLoop } from "../../services/dispatcher/src/retention-loop.js";
import { createLogger } from "../../services/shared/src/logger.js";
import {
  deleteAuditEventsBatch,
  deleteFinishedTimersBatch,
  releaseRetentionLock,
  tryRetentionLock,
} from "../../services/shared/src/retention.js";
import { shardOf } from "../../services/shared/src/shard.js";
import type { TestDatabase } from "../support/database.js";
import { createMigratedDatabase } from "../support/migrated-database.js";
import { runOps } from "../support/ops-cli.js";
import { startMesh } from "../support/mesh.js";
import { waitFor } from "../support/wait.js";

const SHARDS = 64;
const DAY = 86_400_000;

/** A reader that only collects on demand. */
class CollectingReader extends MetricReader {
  protected override async onShutdown(): Promise<void> {}
  protected override async onForceFlush(): Promise<void> {}
}

/** A metric's data points as (attributes, value), read now. */
async function pointsOf(
  reader: MetricReader,
  name: string,
): Promise<{ attributes: Attributes; value: number }[]> {
  const { resourceMetrics } = await reader.collect();
  return resourceMetrics.scopeMetrics
    .flatMap((s) => s.metrics)
    .filter((m) => m.descriptor.name === name)
    .flatMap((m) => m.dataPoints.map((p) => ({ attributes: p.attributes, value: p.value as number })));
}

/** A metric's value for one `table`. */
async function tableValue(reader: MetricReader, name: string, table: string): Promise<number | undefined> {
  return (await pointsOf(reader, name)).find((p) => p.attributes.table === table)?.value;
}

/** A fresh database as the services leave it at start. */
const migratedDatabase = () => createMigratedDatabase(SHARDS, "ret");

/**
 * Timers of `group` in `state`, finished `finishedAgoMs` ago (null: never), each with `attempts`
 * attempts finished `attemptAgoMs` ago (default: when the timer finished). Returns their ids.
 */
async function insertTimers(
  db: pg.Pool,
  group: string,
  count: number,
  state: number,
  finishedAgoMs: number | null,
  attempts = 1,
  attemptAgoMs = finishedAgoMs ?? 0,
): Promise<string[]> {
  const ids = Array.from({ length: count }, (_, i) => `${group}-${i}`);
  await db.query(
    `INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, callback, payload,
                         max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash,
                         finish_time, claim_owner, claim_expires_at)
     SELECT $1, id, s, $4::smallint, now() - interval '30 days', now() - interval '30 days',
            '{"http":{"url":"http://127.0.0.1:9/hook"}}', '\\x', 3, 1000, 10000, 2, '\\x',
            CASE WHEN $5::float8 IS NULL THEN NULL ELSE now() - make_interval(secs => $5::float8 / 1000) END,
            CASE WHEN $4 = 2 THEN 'd-elsewhere#1' END,
            CASE WHEN $4 = 2 THEN now() + interval '1 minute' END
       FROM unnest($2::text[], $3::int[]) AS x(id, s)`,
    [group, ids, ids.map((id) => shardOf(group, id, SHARDS)), state, finishedAgoMs],
  );
  if (attempts > 0)
    await db.query(
      `INSERT INTO timer_attempts (shard, group_id, timer_id, attempt, dispatcher_id, started_at, finished_at, outcome)
       SELECT t.shard, t.group_id, t.timer_id, n, 'd1', now() - make_interval(secs => $3::float8 / 1000),
              now() - make_interval(secs => $3::float8 / 1000), CASE WHEN n = $2 THEN 'succeeded' ELSE 'retry' END
         FROM timers t, generate_series(1, $2::int) n WHERE t.group_id = $1`,
      [group, attempts, attemptAgoMs],
    );
  return ids;
}

/** `count` audit events recorded `agoMs` ago. */
async function insertAuditEvents(db: pg.Pool, actor: string, count: number, agoMs: number): Promise<void> {
  await db.query(
    `INSERT INTO audit_events (at, actor, action, arguments, outcome)
     SELECT now() - make_interval(secs => $3::float8 / 1000), $1, 'admin.v1.AdminService/PauseGroup', '{}', 'OK'
       FROM generate_series(1, $2::int)`,
    [actor, count, agoMs],
  );
}

async function countOf(db: pg.Pool, sql: string, params: unknown[] = []): Promise<number> {
  return (await db.query<{ n: number }>(sql, params)).rows[0]!.n;
}

const groupCount = (db: pg.Pool, table: string, group: string) =>
  countOf(db, `SELECT count(*)::int AS n FROM ${table} WHERE group_id = $1`, [group]);

/** Settings for a loop under test: the defaults' ages, small batches. */
function settings(over: Partial<RetentionSettings> = {}): RetentionSettings {
  return { ...loadRetentionSettings({}), batchSize: 10, batchPauseMs: 0, ...over };
}

describe("the retention loop against a real Postgres", () => {
  let db: TestDatabase;
  const loops: RetentionLoop[] = [];
  const newLoop = (s: RetentionSettings, reader?: MetricReader) => {
    const provider = new MeterProvider({ readers: reader ? [reader] : [] });
    const loop = new RetentionLoop({
      databaseUrl: db.url,
      applicationName: "test:retention",
      statementTimeoutMs: 10_000,
      settings: s,
      meter: provider.getMeter("test"),
      log: createLogger("test", "silent"),
    });
    loops.push(loop);
    return loop;
  };

  before(async () => {
    db = await migratedDatabase();
  });
  after(async () => {
    for (const l of loops) await l.stop();
    await db?.[Symbol.asyncDispose]();
  });

  test("deletes old finished timers with their attempts and old audit events; keeps young and live rows", async () => {
    // Past the defaults (7 d, 90 d): 25 finished timers of each final state mixed, 2 attempts each.
    await insertTimers(db.pool, "old-ok", 5, 3, 10 * DAY, 2);
    await insertTimers(db.pool, "old-expired", 5, 6, 9 * DAY, 2);
    await insertTimers(db.pool, "old-failed", 8, 4, 10 * DAY, 2);
    await insertTimers(db.pool, "old-cancelled", 7, 5, 8 * DAY, 2);
    // Young finished timers, and live ones far older than any retention: none may go.
    await insertTimers(db.pool, "young", 5, 3, 1 * DAY, 1);
    await insertTimers(db.pool, "live-scheduled", 4, 1, null, 2, 20 * DAY);
    await insertTimers(db.pool, "live-claimed", 3, 2, null, 1, 20 * DAY);
    // A timer an operator retried: SCHEDULED again (finish_time cleared), its old attempts kept.
    await insertTimers(db.pool, "retried", 2, 1, null, 3, 40 * DAY);
    await insertAuditEvents(db.pool, "old-actor", 7, 100 * DAY);
    await insertAuditEvents(db.pool, "young-actor", 3, 10 * DAY);

    const reader = new CollectingReader();
    const loop = newLoop(settings(), reader);
    const tick = await loop.tick();
    assert.ok("ran" in tick, `ran: ${JSON.stringify(tick)}`);
    const run = tick.ran;
    assert.deepEqual(run.deleted, { timers: 25, timer_attempts: 50, audit_events: 7 });
    // Batches of 10: 10 + 10 + 5 timers (the short one ends it), then one of 7 audit events.
    assert.equal(run.batches, 4);
    assert.ok(Math.abs(run.cutoffs.timers.getTime() - (Date.now() - 7 * DAY)) < 60_000);
    assert.ok(Math.abs(run.cutoffs.audit_events.getTime() - (Date.now() - 90 * DAY)) < 60_000);

    for (const g of ["old-ok", "old-expired", "old-failed", "old-cancelled"]) {
      assert.equal(await groupCount(db.pool, "timers", g), 0, `${g} timers deleted`);
      assert.equal(await groupCount(db.pool, "timer_attempts", g), 0, `${g} attempts deleted`);
    }
    for (const [g, timers, attempts] of [
      ["young", 5, 5],
      ["live-scheduled", 4, 8],
      ["live-claimed", 3, 3],
      ["retried", 2, 6],
    ] as const) {
      assert.equal(await groupCount(db.pool, "timers", g), timers, `${g} timers kept`);
      assert.equal(await groupCount(db.pool, "timer_attempts", g), attempts, `${g} attempts kept`);
    }
    assert.equal(
      await countOf(db.pool, "SELECT count(*)::int AS n FROM audit_events WHERE actor = 'old-actor'"),
      0,
    );
    assert.equal(
      await countOf(db.pool, "SELECT count(*)::int AS n FROM audit_events WHERE actor = 'young-actor'"),
      3,
    );

    // Metrics: what was deleted, the oldest rows kept (the young finished timers, 1 day; the
    // young audit events, 10 days), the sizes, and the run's time.
    assert.equal(await tableValue(reader, "retention_rows_deleted_total", "timers"), 25);
    assert.equal(await tableValue(reader, "retention_rows_deleted_total", "timer_attempts"), 50);
    assert.equal(await tableValue(reader, "retention_rows_deleted_total", "audit_events"), 7);
    const ageOf = async (table: string) =>
      (await tableValue(reader, "retention_oldest_row_age_seconds", table)) ?? NaN;
    assert.ok(Math.abs((await ageOf("timers")) - DAY / 1000) < 120, `timers age ${await ageOf("timers")}`);
    assert.ok(Math.abs((await ageOf("timer_attempts")) - DAY / 1000) < 120);
    assert.ok(Math.abs((await ageOf("audit_events")) - (10 * DAY) / 1000) < 120);
    const [size] = await pointsOf(reader, "database_size_bytes");
    const actual = await countOf(db.pool, "SELECT pg_database_size(current_database())::float8 AS n");
    assert.ok(
      size && size.value > 0 && Math.abs(size.value - actual) / actual < 0.5,
      `database size ${size?.value}`,
    );
    const tables = await pointsOf(reader, "database_table_size_bytes");
    assert.ok(tables.length > 0 && tables.length <= 10, "at most 10 tables");
    assert.ok(
      tables.some((t) => t.attributes.table === "timers" && t.value > 0),
      "timers is among them",
    );
    const [lastRun] = await pointsOf(reader, "retention_last_run_timestamp_seconds");
    assert.ok(lastRun && Math.abs(lastRun.value - Date.now() / 1000) < 60, "last run just now");

    // Nothing left to delete: the next run deletes nothing and counts nothing more.
    const again = await loop.tick();
    assert.ok("ran" in again);
    assert.deepEqual(again.ran.deleted, { timers: 0, timer_attempts: 0, audit_events: 0 });
    assert.equal(await tableValue(reader, "retention_rows_deleted_total", "timers"), 25);
  });

  test("a batch deletes at most the batch size, oldest first, and its timers' attempts with them", async () => {
    await insertTimers(db.pool, "batch", 12, 3, 30 * DAY, 2);
    await db.pool.query(
      "UPDATE timers SET finish_time = finish_time + make_interval(secs => substr(timer_id, 7)::int) WHERE group_id = 'batch'",
    );
    const cutoff = new Date(Date.now() - 7 * DAY).toISOString();
    assert.deepEqual(await deleteFinishedTimersBatch(db.pool, cutoff, 5), { timers: 5, attempts: 10 });
    const left = await db.pool.query<{ timer_id: string }>(
      "SELECT timer_id FROM timers WHERE group_id = 'batch' ORDER BY finish_time",
    );
    assert.deepEqual(
      left.rows.map((r) => r.timer_id),
      ["batch-5", "batch-6", "batch-7", "batch-8", "batch-9", "batch-10", "batch-11"],
      "the five oldest went first",
    );
    assert.equal(await groupCount(db.pool, "timer_attempts", "batch"), 14);
    await insertAuditEvents(db.pool, "batch-actor", 12, 200 * DAY);
    assert.equal(await deleteAuditEventsBatch(db.pool, new Date(Date.now() - 90 * DAY).toISOString(), 5), 5);
    assert.equal(
      await countOf(db.pool, "SELECT count(*)::int AS n FROM audit_events WHERE actor = 'batch-actor'"),
      7,
    );
    await db.pool.query("DELETE FROM timers WHERE group_id = 'batch'");
    await db.pool.query("DELETE FROM timer_attempts WHERE group_id = 'batch'");
    await db.pool.query("DELETE FROM audit_events WHERE actor = 'batch-actor'");
  });

  test("one run at a time: a loop that finds the lock held skips, and deletes nothing", async () => {
    await insertTimers(db.pool, "locked", 30, 3, 10 * DAY, 1);
    // Loop A deletes one timer per batch, 40 ms apart: a run of about a second.
    const readerA = new CollectingReader();
    const readerB = new CollectingReader();
    const a = newLoop(settings({ batchSize: 1, batchPauseMs: 40 }), readerA);
    const b = newLoop(settings({ batchSize: 1, batchPauseMs: 0 }), readerB);
    const runA = a.tick();
    await waitFor(
      async () => (await groupCount(db.pool, "timers", "locked")) < 30,
      10_000,
      "loop A's first batch",
    );
    const whileA = await b.tick();
    assert.deepEqual(whileA, { skipped: "locked" });
    const doneA = await runA;
    assert.ok("ran" in doneA);
    assert.equal(doneA.ran.deleted.timers, 30, "A deleted them all");
    assert.equal(await tableValue(readerB, "retention_rows_deleted_total", "timers"), 0, "B deleted nothing");
    const [bLastRun] = await pointsOf(readerB, "retention_last_run_timestamp_seconds");
    assert.equal(bLastRun?.value, 0, "B never ran");
    // B refreshed its gauges all the same.
    assert.ok((await pointsOf(readerB, "database_size_bytes")).length === 1);

    // The same with the lock held by another session (the one-shot command, say).
    await insertTimers(db.pool, "held", 3, 3, 10 * DAY, 1);
    const holder = await db.pool.connect();
    try {
      assert.equal(await tryRetentionLock(holder), true);
      assert.deepEqual(await b.tick(), { skipped: "locked" });
      assert.equal(await groupCount(db.pool, "timers", "held"), 3, "nothing deleted while the lock is held");
      await releaseRetentionLock(holder);
    } finally {
      holder.release();
    }
    const after = await b.tick();
    assert.ok("ran" in after && after.ran.deleted.timers === 3, "B runs once the lock is free");
  });

  test("RETENTION_ENABLED=false deletes nothing but still refreshes the gauges", async () => {
    await insertTimers(db.pool, "disabled", 2, 3, 10 * DAY, 1);
    const reader = new CollectingReader();
    const loop = newLoop(settings({ enabled: false }), reader);
    assert.deepEqual(await loop.tick(), { skipped: "disabled" });
    assert.equal(await groupCount(db.pool, "timers", "disabled"), 2);
    const age = await tableValue(reader, "retention_oldest_row_age_seconds", "timers");
    assert.ok(age !== undefined && Math.abs(age - (10 * DAY) / 1000) < 120, `age ${age}`);
    await db.pool.query("DELETE FROM timers WHERE group_id = 'disabled'");
  });

  test("stop() ends a run between two batches", async () => {
    await insertTimers(db.pool, "stopping", 50, 3, 10 * DAY, 0);
    const loop = newLoop(settings({ batchSize: 1, batchPauseMs: 50 }));
    const run = loop.tick();
    await waitFor(
      async () => (await groupCount(db.pool, "timers", "stopping")) < 50,
      10_000,
      "the first batch",
    );
    await loop.stop();
    const done = await run;
    assert.ok("ran" in done && done.ran.stopped, JSON.stringify(done));
    const left = await groupCount(db.pool, "timers", "stopping");
    assert.ok(left > 0 && left === 50 - done.ran.deleted.timers, `${left} left`);
    await db.pool.query("DELETE FROM timers WHERE group_id = 'stopping'");
  });
});

/** A node of EXPLAIN (FORMAT JSON). */
interface PlanNode {
  "Node Type": string;
  "Relation Name"?: string;
  "Index Name"?: string;
  Plans?: PlanNode[];
}

const nodes = (n: PlanNode): PlanNode[] => [n, ...(n.Plans ?? []).flatMap(nodes)];

describe("the retention statements read by index on large tables", () => {
  let db: TestDatabase;
  before(async () => {
    db = await migratedDatabase();
    // 40,000 live timers and 10,000 finished ones over 20 days, one attempt each.
    await insertTimers(db.pool, "live", 40_000, 1, null, 1, DAY);
    await insertTimers(db.pool, "done", 10_000, 3, 20 * DAY, 1);
    await db.pool.query(
      "UPDATE timers SET finish_time = finish_time + make_interval(secs => substr(timer_id, 6)::int * 170) WHERE group_id = 'done'",
    );
    await insertAuditEvents(db.pool, "ops", 20_000, 50 * DAY);
    await db.pool.query("ANALYZE timers; ANALYZE timer_attempts; ANALYZE audit_events");
  });
  after(async () => {
    await db?.[Symbol.asyncDispose]();
  });

  /** The plan of the one statement `call` sends. */
  async function planOf(call: (db: Pick<pg.Pool, "query">) => Promise<unknown>): Promise<PlanNode> {
    let plan: PlanNode | undefined;
    const standIn = {
      query: async (sql: string, params: unknown[]) => {
        const { rows } = await db.pool.query(`EXPLAIN (FORMAT JSON) ${sql}`, params);
        plan = rows[0]["QUERY PLAN"][0].Plan;
        return { rows: [{ timers: "0", attempts: "0" }], rowCount: 0 };
      },
    } as unknown as pg.Pool;
    await call(standIn);
    return plan!;
  }

  test("a batch of finished timers: the finished index, then each timer's attempts by their key", async () => {
    const cutoff = new Date(Date.now() - 7 * DAY).toISOString();
    const plan = await planOf((p) => deleteFinishedTimersBatch(p, cutoff, 1000));
    const all = nodes(plan);
    const seq = all.filter((n) => n["Node Type"] === "Seq Scan").map((n) => n["Relation Name"]);
    assert.deepEqual(seq, [], "no sequential scan");
    const indexes = new Set(all.map((n) => n["Index Name"]).filter((i) => i !== undefined));
    for (const index of ["timers_finished_idx", "timer_attempts_pkey"])
      assert.ok(indexes.has(index), `${index} is used: ${[...indexes].join(", ")}`);
    // The rows found are then deleted where they lie (their ctid), not looked for again.
    const tidScans = all.filter((n) => n["Node Type"] === "Tid Scan").map((n) => n["Relation Name"]);
    assert.deepEqual(tidScans.sort(), ["timer_attempts", "timers"]);
  });

  test("a batch of audit events: the index on their time", async () => {
    const plan = await planOf((p) =>
      deleteAuditEventsBatch(p, new Date(Date.now() - 90 * DAY).toISOString(), 1000),
    );
    const all = nodes(plan);
    assert.deepEqual(
      all.filter((n) => n["Node Type"] === "Seq Scan").map((n) => n["Relation Name"]),
      [],
      "no sequential scan",
    );
    assert.ok(all.some((n) => n["Index Name"] === "audit_events_at_idx"));
  });
});

describe("a dispatcher runs retention on its own", () => {
  test("old finished timers go, metrics on /metrics say so, and it stops cleanly", async () => {
    await using mesh = await startMesh({
      dispatchers: 1,
      dispatcherEnv: { RETENTION_INTERVAL: "1s", RETENTION_BATCH_SIZE: "4" },
    });
    await insertTimers(mesh.db.pool, "proc-old", 10, 3, 8 * DAY, 1);
    await insertTimers(mesh.db.pool, "proc-young", 2, 3, 6 * DAY, 1);
    await waitFor(
      async () => (await groupCount(mesh.db.pool, "timers", "proc-old")) === 0,
      20_000,
      "the dispatcher to delete the old finished timers",
    );
    assert.equal(await groupCount(mesh.db.pool, "timers", "proc-young"), 2);
    assert.equal(await groupCount(mesh.db.pool, "timer_attempts", "proc-old"), 0);
    const port = mesh.dispatchers[0]!.httpPort;
    const valueIn = (text: string, series: string) =>
      Number(
        text
          .split("\n")
          .find((l) => l.startsWith(`${series} `))
          ?.split(" ")[1] ?? NaN,
      );
    // The gauges are read at the end of the run that deleted (the counter moves batch by batch).
    const text = await waitFor(
      async () => {
        const t = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
        const age = valueIn(t, 'retention_oldest_row_age_seconds{table="timers"}');
        return Math.abs(age - (6 * DAY) / 1000) < 120 ? t : undefined;
      },
      10_000,
      "retention_oldest_row_age_seconds of the young timers (6 days) on /metrics",
    );
    assert.equal(valueIn(text, 'retention_rows_deleted_total{table="timers"}'), 10);
    assert.equal(valueIn(text, 'retention_rows_deleted_total{table="timer_attempts"}'), 10);
    assert.ok(valueIn(text, "database_size_bytes") > 0);
    assert.ok(valueIn(text, 'database_table_size_bytes{table="timers"}') > 0);
    const lastRun = valueIn(text, "retention_last_run_timestamp_seconds");
    assert.ok(Math.abs(lastRun - Date.now() / 1000) < 60, `last run ${lastRun}`);
    assert.equal(await mesh.dispatchers[0]!.stop("SIGTERM"), 0, mesh.dispatchers[0]!.output());
  });
});

describe("npm run ops -- retention", () => {
  let db: TestDatabase;
  before(async () => {
    db = await migratedDatabase();
  });
  after(async () => {
    await db?.[Symbol.asyncDispose]();
  });

  /** Runs the command as an operator does, with DATABASE_URL; its exit code and output. */
  async function ops(...args: string[]): Promise<{ code: number | null; out: string; err: string }> {
    const r = await runOps(["retention", ...args], { DATABASE_URL: db.url });
    return { code: r.code, out: r.stdout, err: r.stderr };
  }

  test("a dry run counts per table and deletes nothing; a run deletes and prints the same", async () => {
    await insertTimers(db.pool, "cli-old", 6, 4, 3 * DAY, 2);
    await insertTimers(db.pool, "cli-live", 2, 1, null, 1, 30 * DAY);
    await insertAuditEvents(db.pool, "cli-actor", 4, 40 * DAY);

    const dry = await ops("--dry-run", "--finished-older-than", "2d", "--audit-older-than", "30d");
    assert.equal(dry.code, 0, dry.err);
    assert.match(dry.out, /dry run/);
    assert.match(dry.out, /^ {2}timers +6 +before /m);
    assert.match(dry.out, /^ {2}timer_attempts +12 +before /m);
    assert.match(dry.out, /^ {2}audit_events +4 +before /m);
    assert.equal(await groupCount(db.pool, "timers", "cli-old"), 6, "a dry run deletes nothing");

    // The defaults (7 d, 90 d) keep all of these.
    const byDefault = await ops();
    assert.equal(byDefault.code, 0, byDefault.err);
    assert.match(byDefault.out, /^ {2}timers +0 +before /m);
    assert.equal(await groupCount(db.pool, "timers", "cli-old"), 6);

    const done = await ops("--finished-older-than", "2d", "--audit-older-than", "30d", "--batch-size", "4");
    assert.equal(done.code, 0, done.err);
    assert.match(done.out, /batches of 4\): deleted in 4 batches/);
    assert.match(done.out, /^ {2}timers +6 +before /m);
    assert.match(done.out, /^ {2}timer_attempts +12 +before /m);
    assert.match(done.out, /^ {2}audit_events +4 +before /m);
    assert.equal(await groupCount(db.pool, "timers", "cli-old"), 0);
    assert.equal(await groupCount(db.pool, "timer_attempts", "cli-old"), 0);
    assert.equal(await groupCount(db.pool, "timers", "cli-live"), 2, "live timers stay");
    assert.equal(await groupCount(db.pool, "timer_attempts", "cli-live"), 2);
  });

  test("it refuses while another run holds the lock, and names bad flags", async () => {
    await insertTimers(db.pool, "cli-held", 2, 3, 10 * DAY, 0);
    const holder = await db.pool.connect();
    try {
      await holder.query("SET application_name = 'dispatcher:d7:retention'");
      assert.equal(await tryRetentionLock(holder), true);
      const refused = await ops();
      assert.equal(refused.code, 1);
      assert.match(refused.err, /retention lock is held by dispatcher:d7:retention \(pid \d+\)/);
      assert.equal(await groupCount(db.pool, "timers", "cli-held"), 2);
      await releaseRetentionLock(holder);
    } finally {
      holder.release();
    }
    const bad = await ops("--finished-older-than", "10m");
    assert.equal(bad.code, 2);
    assert.match(bad.err, /--finished-older-than must be between/);
    const help = await ops("--help");
    assert.equal(help.code, 0);
    assert.match(help.out, /--dry-run/);
  });
});
