// One bad entry can never wedge a claim batch. The scheduler runs in this process against a
// real Postgres (a fresh database with the migrations), holding the leases of shard 0; a
// recording deliverer stands in for the transport, which is not what is under test here.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import pg from "pg";
import { pino } from "pino";
import { migrate } from "../../services/shared/src/db.js";
import type { Delivery, DeliveryResult } from "../../services/dispatcher/src/delivery.js";
import { pgDispatchStore } from "../../services/dispatcher/src/dispatch-store.js";
import { Scheduler, type SchedulerOptions } from "../../services/dispatcher/src/scheduler.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { waitFor } from "../support/wait.js";

const OWNER = "d-claim-test";
const CALLBACK = { http: { url: "http://127.0.0.1:9/hook" } };
const DESTINATION = "http://127.0.0.1:9";

let db: TestDatabase;

before(async () => {
  db = await createTestDatabase();
  // The outage test cuts idle connections; a pool without this listener would crash the file.
  db.pool.on("error", () => undefined);
  await migrate(db.pool, pino({ level: "silent" }));
  await db.pool.query(`INSERT INTO shard_leases (shard, owner, epoch) VALUES (0, $1, 1)`, [OWNER]);
  await db.pool.query(
    `INSERT INTO dispatcher_leases (owner, expires_at) VALUES ($1, now() + interval '1 hour')`,
    [OWNER],
  );
});

after(async () => {
  await db?.[Symbol.asyncDispose]();
});

/** Inserts `n` scheduled timers of shard 0 due at `dueMs`. */
async function insertTimers(groupId: string, n: number, dueMs: number): Promise<string[]> {
  const ids = Array.from({ length: n }, (_, i) => `t${i}`);
  await db.pool.query(
    `INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, callback, payload,
                         max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash)
     SELECT $1, id, 0, 1, $3, $3, $4::jsonb, '\\x', 3, 1000, 10000, 2, '\\x' FROM unnest($2::text[]) AS id`,
    [groupId, ids, new Date(dueMs), JSON.stringify(CALLBACK)],
  );
  return ids;
}

/** A scheduler owning shard 0, with its log lines and what it delivered. */
function startScheduler() {
  const lines: Record<string, unknown>[] = [];
  const log = pino(
    { level: "info" },
    new Writable({
      write: (c, _e, cb) => {
        lines.push(JSON.parse(String(c)));
        cb();
      },
    }),
  );
  const delivered: Delivery[] = [];
  let dropped = 0;
  const opts: SchedulerOptions = {
    announcementsFlowing: () => true,
    lookaheadMs: 30_000,
    pollIntervalMs: 200,
    overdueGraceMs: 2_000,
    claimLeadMs: 25,
    claimBatch: 500,
    maxInFlight: 512,
    maxHeld: 10_000,
    claimTtlMs: 60_000,
    catchUpShare: 0.25,
    groupShare: 0.25,
    destinationShare: 0.25,
  };
  const scheduler = new Scheduler(
    {
      store: pgDispatchStore(db.pool, OWNER, `${OWNER}#1`),
      // The test's Postgres runs on this machine: its clock is ours.
      clock: {
        now: () => Date.now(),
        after: (ms, fn) => {
          const timer = setTimeout(fn, ms);
          return () => clearTimeout(timer);
        },
      },
      deliver: async (d: Delivery): Promise<DeliveryResult> => {
        delivered.push(d);
        return { ok: true };
      },
      ownership: { owned: () => [0], owns: (s) => s === 0, epochOf: () => 1n },
      log,
      events: {
        claimDropped: () => {
          dropped++;
        },
      },
    },
    opts,
  );
  scheduler.start();
  return { scheduler, lines, delivered, dropped: () => dropped };
}

test("a timer Postgres refuses in a claim is dropped and the 20 good timers of its batch fire", async () => {
  const dueMs = Date.now() + 2_000;
  const ids = await insertTimers("good", 20, dueMs);
  const s = startScheduler();
  try {
    // The window load holds the 20; the bad entries come in by announcement, due at the same
    // time, so all of them are in one claim batch. A NUL byte cannot be sent in a text[]
    // parameter (invalid byte sequence, SQLSTATE 22021); an array where a group id belongs
    // is the issue's own payload ({"g":["a","b"],...}: malformed array literal, 22P02).
    await waitFor(() => s.scheduler.held === 20, 10_000, "the 20 timers loaded");
    s.scheduler.announce({
      groupId: "bad\u0000group",
      timerId: "x",
      shard: 0,
      dueMs,
      destination: DESTINATION,
      version: 0,
    });
    s.scheduler.announce({
      groupId: ["a", "b"] as unknown as string,
      timerId: "x",
      shard: 0,
      dueMs,
      destination: DESTINATION,
      version: 0,
    });
    await waitFor(() => s.delivered.length >= 20, 15_000, "the 20 good timers delivered");
    assert.deepEqual(s.delivered.map((d) => d.timerId).sort(), [...ids].sort());
    assert.ok(s.delivered.every((d) => d.groupId === "good"));
    assert.ok(s.delivered.every((d) => d.fireAtMs === dueMs && Date.now() >= dueMs));
    await waitFor(
      async () =>
        (await db.pool.query(`SELECT count(*)::int AS n FROM timers WHERE group_id = 'good' AND state = 3`))
          .rows[0].n === 20,
      10_000,
      "20 SUCCEEDED rows",
    );
    // The refused entry is dropped (counted, logged with its key), never retried.
    assert.equal(s.dropped(), 1);
    const drop = s.lines.filter((l) => String(l.msg).startsWith("dropped a timer"));
    assert.equal(drop.length, 1);
    assert.equal(drop[0]!.group_id, "bad\u0000group");
    assert.equal(drop[0]!.timer_id, "x");
    assert.equal(s.scheduler.held, 0, "nothing left behind to retry");
    assert.equal(s.lines.filter((l) => String(l.msg).startsWith("claiming due timers failed")).length, 0);
  } finally {
    await s.scheduler.stop(5_000);
  }
});

test("a database outage drops nothing: every timer waits and fires once Postgres is back", async () => {
  const dueMs = Date.now() + 2_500;
  const ids = await insertTimers("outage", 20, dueMs);
  const s = startScheduler();
  const name = new URL(db.url).pathname.slice(1);
  // From the server's maintenance database: a database cannot close itself to connections.
  const admin = new pg.Client({
    connectionString: process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres",
  });
  await admin.connect();
  try {
    await waitFor(() => s.scheduler.held === 20, 10_000, "the 20 timers loaded");
    // Shut the database to new connections and cut the pool's idle ones, over the due time.
    await admin.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS false`);
    await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, [name]);
    await waitFor(
      () => s.lines.some((l) => String(l.msg).startsWith("claiming due timers failed")),
      15_000,
      "a failed claim",
    );
    assert.equal(s.delivered.length, 0);
    await admin.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`);
    await waitFor(() => s.delivered.length >= 20, 20_000, "the 20 timers delivered after the outage");
    assert.deepEqual(s.delivered.map((d) => d.timerId).sort(), [...ids].sort());
    assert.equal(s.dropped(), 0, "an outage is no reason to drop a timer");
  } finally {
    await admin.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`).catch(() => undefined);
    await admin.end();
    await s.scheduler.stop(5_000);
  }
});
