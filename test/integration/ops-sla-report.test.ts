// `npm run ops -- sla-report` against a database whose history is known: timers with attempts
// of known lateness and outcome, inserted directly, and timers that must not count (due before the
// range, in the future, cancelled unfired). The command, run as an operator runs it, must print
// exactly the expected counts and percentiles, in JSON and as a table. A second database with a
// month of history checks that the statement reads ranges (indexes), not the whole history.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import type pg from "pg";
import { readSlaRows } from "../../scripts/ops/sla-report.js";
import type { SlaReport } from "../../scripts/ops/sla-summary.js";
import { shardOf } from "../../services/shared/src/shard.js";
import { State } from "../../services/shared/src/timer-model.js";
import type { TestDatabase } from "../support/database.js";
import { createMigratedDatabase } from "../support/migrated-database.js";
import { runOps } from "../support/ops-cli.js";

const SHARDS = 64;

/** One delivery attempt: its outcome, when it started (seconds after fire_at) and its error. */
interface AttemptSpec {
  outcome: "succeeded" | "retry" | "failed" | "abandoned";
  at: number;
  error?: string;
}

/** Inserts a timer due at `fireAtMs` in `state` with these attempts (each 50 ms long). */
async function insertTimer(
  pool: pg.Pool,
  spec: {
    group: string;
    id: string;
    state: number;
    fireAtMs: number;
    attempts?: AttemptSpec[];
    /** A claim in flight: fired this many seconds after fire_at, no attempt recorded yet. */
    firedAfter?: number;
  },
): Promise<void> {
  const attempts = spec.attempts ?? [];
  const shard = shardOf(spec.group, spec.id, SHARDS);
  const last = attempts.at(-1);
  const finished = spec.state === State.Succeeded || spec.state === State.Failed;
  const firstAt = attempts[0]?.at ?? spec.firedAfter;
  await pool.query(
    `INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, attempt, callback, payload,
                         max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash,
                         fired_time, finish_time, last_error)
     VALUES ($1, $2, $3, $4, $5, $5, $6, '{"http":{"url":"http://127.0.0.1:9/hook"}}', '\\x', 5, 1000, 10000, 2, '\\x',
             $7, $8, $9)`,
    [
      spec.group,
      spec.id,
      shard,
      spec.state,
      new Date(spec.fireAtMs),
      spec.firedAfter !== undefined ? attempts.length + 1 : attempts.length,
      firstAt === undefined ? null : new Date(spec.fireAtMs + firstAt * 1000),
      finished && last
        ? new Date(spec.fireAtMs + last.at * 1000 + 50)
        : spec.state === State.Cancelled
          ? new Date()
          : null,
      last?.error ?? null,
    ],
  );
  for (const [i, a] of attempts.entries()) {
    const started = spec.fireAtMs + a.at * 1000;
    await pool.query(
      `INSERT INTO timer_attempts (shard, group_id, timer_id, attempt, dispatcher_id, started_at, finished_at, outcome, error)
       VALUES ($1, $2, $3, $4, 'd1', $5, $6, $7, $8)`,
      [
        shard,
        spec.group,
        spec.id,
        i + 1,
        new Date(started),
        new Date(started + 50),
        a.outcome,
        a.error ?? null,
      ],
    );
  }
}

/** percentile_cont over a sorted list, as Postgres computes it. */
function percentileCont(sorted: readonly number[], p: number): number {
  const pos = p * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

function near(actual: number | null, expected: number, tolerance: number, what: string): void {
  assert.ok(actual !== null && Math.abs(actual - expected) <= tolerance, `${what}: ${actual} vs ${expected}`);
}

describe("npm run ops -- sla-report on a known history", () => {
  let db: TestDatabase;
  let fromMs: number;
  /** fire_at of the one timer never attempted: its lateness is the report's now − this. */
  let neverAttemptedFireMs: number;
  const HTTP503 = "HTTP 503";

  before(async () => {
    db = await createMigratedDatabase(SHARDS);
    const { rows } = await db.pool.query<{ now: Date }>("SELECT now()");
    const base = rows[0]!.now.getTime() - 3_600_000; // an hour ago
    fromMs = base - 30 * 60_000;
    const at = (s: number) => base + s * 1000;
    const ok = (lateness: number): AttemptSpec[] => [{ outcome: "succeeded", at: lateness }];
    const timers = [
      // alpha: six due, one 40 s late, one failed after a retry, one first attempt in flight.
      { group: "alpha", id: "a1", state: State.Succeeded, fireAtMs: at(0), attempts: ok(0.1) },
      { group: "alpha", id: "a2", state: State.Succeeded, fireAtMs: at(60), attempts: ok(0.2) },
      { group: "alpha", id: "a3", state: State.Succeeded, fireAtMs: at(120), attempts: ok(0.3) },
      { group: "alpha", id: "a4", state: State.Succeeded, fireAtMs: at(180), attempts: ok(40) },
      {
        group: "alpha",
        id: "a5",
        state: State.Failed,
        fireAtMs: at(240),
        attempts: [
          { outcome: "retry" as const, at: 1, error: HTTP503 },
          { outcome: "failed" as const, at: 5, error: `gave up after 2 attempts: ${HTTP503}` },
        ],
      },
      { group: "alpha", id: "a6", state: State.Firing, fireAtMs: at(400), firedAfter: 0.7 },
      // beta: a retry before success (first attempt 0.5 s late), and one never attempted.
      {
        group: "beta",
        id: "b1",
        state: State.Succeeded,
        fireAtMs: at(10),
        attempts: [
          { outcome: "retry" as const, at: 0.5, error: "ECONNREFUSED: connect ECONNREFUSED 127.0.0.1:9" },
          { outcome: "succeeded" as const, at: 2.5 },
        ],
      },
      { group: "beta", id: "b2", state: State.Succeeded, fireAtMs: at(20), attempts: ok(2) },
      { group: "beta", id: "b3", state: State.Scheduled, fireAtMs: at(1800) },
      // gamma: a timeout that failed the timer, and a delivery abandoned by a crash then redone.
      {
        group: "gamma",
        id: "g1",
        state: State.Failed,
        fireAtMs: at(300),
        attempts: [{ outcome: "failed" as const, at: 3, error: "timed out after 10000ms" }],
      },
      {
        group: "gamma",
        id: "g2",
        state: State.Succeeded,
        fireAtMs: at(310),
        attempts: [
          { outcome: "abandoned" as const, at: 0.05, error: "delivery abandoned: d9#1 recorded no outcome" },
          { outcome: "succeeded" as const, at: 16 },
        ],
      },
      // Not in the range: due before it (one retried inside it), due in the future, cancelled unfired.
      { group: "alpha", id: "old1", state: State.Succeeded, fireAtMs: at(-3 * 3600), attempts: ok(0.1) },
      {
        group: "alpha",
        id: "old2",
        state: State.Succeeded,
        fireAtMs: at(-2 * 3600),
        attempts: [
          { outcome: "retry" as const, at: 1, error: HTTP503 },
          { outcome: "succeeded" as const, at: 2 * 3600 + 600 },
        ],
      },
      { group: "beta", id: "future", state: State.Scheduled, fireAtMs: at(7200) },
      { group: "beta", id: "cancelled", state: State.Cancelled, fireAtMs: at(500) },
    ];
    for (const t of timers) await insertTimer(db.pool, t);
    neverAttemptedFireMs = at(1800);
  });
  after(async () => {
    await db?.[Symbol.asyncDispose]();
  });

  const report = (...args: string[]) =>
    runOps(["sla-report", "--from", new Date(fromMs).toISOString(), ...args], { DATABASE_URL: db.url });

  test("JSON: counts, percentiles, failures by reason and verdicts, overall and per group", async () => {
    const run = await report("--format", "json", "--top", "2");
    assert.equal(run.stderr, "");
    assert.equal(run.code, 1, "a missed target exits 1");
    const r = JSON.parse(run.stdout) as SlaReport;
    assert.equal(r.range.from, new Date(fromMs).toISOString());
    const neverLate = (Date.parse(r.range.generatedAt) - neverAttemptedFireMs) / 1000;
    const lateness = [0.1, 0.2, 0.3, 40, 1, 0.7, 0.5, 2, neverLate, 3, 0.05].sort((a, b) => a - b);

    const o = r.overall;
    assert.deepEqual(
      {
        due: o.due,
        onTime: o.onTime,
        neverAttempted: o.neverAttempted,
        failedTimers: o.failedTimers,
        failuresByReason: o.failuresByReason,
        callbackAttempts: o.callbackAttempts,
        callbackFailures: o.callbackFailures,
        abandonedAttempts: o.abandonedAttempts,
        verdicts: o.verdicts,
      },
      {
        due: 11,
        onTime: 9,
        neverAttempted: 1,
        failedTimers: 2,
        failuresByReason: [
          { reason: "HTTP 503", count: 1 },
          { reason: "timeout", count: 1 },
        ],
        callbackAttempts: 11,
        callbackFailures: 4,
        abandonedAttempts: 1,
        verdicts: { onTime: "FAIL", callbackFailures: "FAIL", overall: "FAIL" },
      },
    );
    near(o.onTimePercent, (100 * 9) / 11, 1e-9, "on time %");
    near(o.callbackFailurePercent, (100 * 4) / 11, 1e-9, "callback failure %");
    // Postgres keeps microseconds, the JSON's generatedAt milliseconds: the never-attempted
    // timer's lateness is known to 1 ms, every other exactly.
    near(o.latenessSeconds.p50, 0.7, 1e-9, "p50");
    near(o.latenessSeconds.p95, percentileCont(lateness, 0.95), 2e-3, "p95");
    near(o.latenessSeconds.p99, percentileCont(lateness, 0.99), 2e-3, "p99");
    near(o.latenessSeconds.max, neverLate, 2e-3, "max");
    assert.ok(neverLate > 1800, "the never-attempted timer is late by now − fire_at");

    assert.equal(r.groupCount, 3);
    assert.deepEqual(
      r.groups.map((g) => [g.group, g.due, g.onTime, g.failedTimers, g.callbackAttempts, g.callbackFailures]),
      [
        ["alpha", 6, 5, 1, 6, 2],
        ["beta", 3, 2, 0, 3, 1],
      ],
      "the top 2 groups by timers due",
    );
    const alpha = r.groups[0]!;
    const alphaLateness = [0.1, 0.2, 0.3, 40, 1, 0.7].sort((a, b) => a - b);
    near(alpha.latenessSeconds.p50, percentileCont(alphaLateness, 0.5), 1e-9, "alpha p50");
    near(alpha.latenessSeconds.p95, percentileCont(alphaLateness, 0.95), 1e-9, "alpha p95");
    near(alpha.latenessSeconds.p99, percentileCont(alphaLateness, 0.99), 1e-9, "alpha p99");
    near(alpha.latenessSeconds.max, 40, 1e-9, "alpha max");
    assert.deepEqual(alpha.failuresByReason, [{ reason: "HTTP 503", count: 1 }]);
    assert.match(r.notes.join("\n"), /1 timer\(s\) due in the range were never attempted.*now − fire_at/);
  });

  test("text: the SLA table, failures by reason and the verdicts", async () => {
    const run = await report("--top", "3");
    assert.equal(run.code, 1, run.stderr);
    const out = run.stdout;
    assert.match(out, /^SLA report \S+ \.\. \S+ \(Postgres time, generated \S+\)$/m);
    assert.match(out, /^group +due +within 30s +p50 +p95 +p99 +max +failed +cb fail +verdict$/m);
    assert.match(out, /^\(all\) +11 +81\.81% +0\.700s +\S+ +\S+ +\S+ +2 +36\.36% +FAIL$/m);
    assert.match(out, /^alpha +6 +83\.33% +0\.500s +\S+ +\S+ +40\.000s +1 +33\.33% +FAIL$/m);
    assert.match(out, /^beta +3 +66\.66% +2\.000s +\S+ +\S+ +\S+ +0 +33\.33% +FAIL$/m);
    assert.match(out, /^gamma +2 +100\.00% +1\.525s +2\.853s +2\.97\ds +3\.000s +1 +50\.00% +FAIL$/m);
    assert.match(out, /^timer execution: FAIL \(81\.81% within 30s, target 99\.5%\)$/m);
    assert.match(out, /^callback failures: FAIL \(4 of 11 attempts, 36\.36%, target < 5%\)$/m);
    assert.match(out, /^ {2}alpha +HTTP 503 +1$/m);
    assert.match(out, /^ {2}gamma +timeout +1$/m);
    assert.doesNotMatch(out, /top \d+ of/, "all three groups shown");
  });

  test("a range with nothing due: NO DATA, exit 0", async () => {
    const run = await runOps(
      ["sla-report", "--from", "2001-01-01T00:00:00Z", "--to", "2001-01-02T00:00:00Z", "--format", "json"],
      { DATABASE_URL: db.url },
    );
    assert.equal(run.code, 0, run.stderr);
    const r = JSON.parse(run.stdout) as SlaReport;
    assert.equal(r.overall.due, 0);
    assert.equal(r.overall.verdicts.overall, "NO DATA");
    assert.deepEqual(r.groups, []);
  });

  test("bad arguments exit 2 with the usage", async () => {
    const run = await runOps(["sla-report", "--last", "soon"], { DATABASE_URL: db.url });
    assert.equal(run.code, 2);
    assert.match(run.stderr, /--last must be a duration/);
    assert.match(run.stderr, /usage: npm run ops -- sla-report/);
  });
});

interface PlanNode {
  "Node Type": string;
  "Relation Name"?: string;
  "Index Name"?: string;
  Plans?: PlanNode[];
}

function nodes(plan: PlanNode): PlanNode[] {
  return [plan, ...(plan.Plans ?? []).flatMap(nodes)];
}

describe("the SLA statement on a month of history", () => {
  let db: TestDatabase;
  before(async () => {
    db = await createMigratedDatabase(SHARDS);
    // 60,000 finished timers over the last 30 days, written in time order, one attempt each, and
    // 20,000 scheduled over the next 30 days: the last day is a thirtieth of the history.
    await db.pool.query(
      `INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, attempt, callback, payload,
                           max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash,
                           fired_time, finish_time)
       SELECT 'g' || (i % 50), 't' || i, i % ${SHARDS}, ${State.Succeeded}, f, f, 1, '{}', '\\x', 3, 1000, 10000, 2, '\\x',
              f, f + interval '50 ms'
         FROM generate_series(1, 60000) i,
              LATERAL (SELECT now() - interval '30 days' + (i / 60000.0) * interval '30 days' AS f) x`,
    );
    await db.pool.query(
      `INSERT INTO timer_attempts (shard, group_id, timer_id, attempt, dispatcher_id, started_at, finished_at, outcome)
       SELECT shard, group_id, timer_id, 1, 'd1', fire_at + interval '10 ms', finish_time, 'succeeded'
         FROM timers ORDER BY finish_time`,
    );
    await db.pool.query(
      `INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, attempt, callback, payload,
                           max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash)
       SELECT 'g' || (i % 50), 'f' || i, i % ${SHARDS}, ${State.Scheduled}, f, f, 0, '{}', '\\x', 3, 1000, 10000, 2, '\\x'
         FROM generate_series(1, 20000) i,
              LATERAL (SELECT now() + (i / 20000.0) * interval '30 days' AS f) x`,
    );
    await db.pool.query("ANALYZE timers");
    await db.pool.query("ANALYZE timer_attempts");
  });
  after(async () => {
    await db?.[Symbol.asyncDispose]();
  });

  test("reads the last day by index ranges and keys, never a whole table", async () => {
    let plan: PlanNode | undefined;
    const explaining = {
      query: async (sql: string, params: unknown[]) => {
        const { rows } = await db.pool.query(`EXPLAIN (FORMAT JSON) ${sql}`, params);
        plan = rows[0]["QUERY PLAN"][0].Plan as PlanNode;
        // What the statement would return for an empty range, so readSlaRows completes.
        return { rows: [{ overall: true, failures: [], group_count: "0", range_from: new Date() }] };
      },
    } as unknown as pg.Pool;
    await readSlaRows(explaining, { from: new Date(Date.now() - 86_400_000), to: undefined }, 10);
    const all = nodes(plan!);
    const scans = all.filter(
      (n) => n["Relation Name"] === "timers" || n["Relation Name"] === "timer_attempts",
    );
    assert.deepEqual(
      scans.filter((n) => n["Node Type"] === "Seq Scan").map((n) => n["Relation Name"]),
      [],
      "no sequential scan of timers or timer_attempts",
    );
    const indexes = new Set(all.map((n) => n["Index Name"]).filter(Boolean));
    for (const index of [
      "timer_attempts_finished_brin",
      "timers_due_idx",
      "timers_pkey",
      "timer_attempts_pkey",
    ])
      assert.ok(indexes.has(index), `${index} is used (plan uses ${[...indexes].join(", ")})`);

    // And the real statement agrees with the history: the last day's 2,000 timers, all on time.
    const real = await readSlaRows(db.pool, { from: new Date(Date.now() - 86_400_000), to: undefined }, 3);
    const overall = real.rows.find((r) => r.overall)!;
    assert.ok(Math.abs(overall.due - 2000) <= 2, `about 2000 due in the last day, got ${overall.due}`);
    assert.equal(overall.onTime, overall.due);
    assert.equal(real.groupCount, 50);
  });
});
