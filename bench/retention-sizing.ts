// Sizing for retention (README, Operations, Retention): how many bytes of WAL a create and a fire
// write, how much table space a finished timer with its attempt takes, and what deleting it by
// retention writes. On a private Postgres cluster (test/support/private-postgres.ts), so that
// nothing else writes WAL while it measures, with the real timer service (CreateTimers batches of
// 500, as the service's own create batching writes them) and a real dispatcher firing HTTP
// callbacks to the bench receiver at about 1,000 fires/s.
//
//   npx tsx bench/retention-sizing.ts
//   (SIZING_TIMERS, default 20000; SIZING_PAYLOAD_BYTES, default 64; SIZING_PRELOAD, default 500000)
//
// WAL is read from pg_current_wal_lsn() and pg_stat_wal (records, full-page images) before and
// after each phase, less the background WAL of an idle minute's share (lease renewals). A
// CHECKPOINT precedes each phase, so the first change of every page after it writes a full-page
// image, as it does in production after every checkpoint: the figures are the costly case.
import { setTimeout as sleep } from "node:timers/promises";
import { runRetention } from "../services/shared/src/retention.js";
import { startMesh } from "../test/support/mesh.js";
import { startPrivatePostgres } from "../test/support/private-postgres.js";
import { envInt } from "./bench-env.js";
import { createBatches, failureNote } from "./creates.js";
import { timerRequest } from "./fire-run.js";
import { startReceiver } from "./receiver.js";
import { fmt, fmtInt } from "./stats.js";

const N = envInt("SIZING_TIMERS", 20_000);
const PAYLOAD = envInt("SIZING_PAYLOAD_BYTES", 64);
// Rows already there, so that inserts land in index pages that exist (and cost a full-page image
// after a checkpoint) as on a database in service, not in an empty table's few new pages.
const PRELOAD = envInt("SIZING_PRELOAD", 500_000);
const GROUP = "sizing";
const log = (m: string) => console.log(m);

const pg = await startPrivatePostgres();
const rx = await startReceiver();
try {
  await using mesh = await startMesh({
    dispatchers: 1,
    databaseUrl: pg.url,
    env: { SHARD_COUNT: "1024", LOG_LEVEL: "warn", RETENTION_ENABLED: "false" },
    timerEnv: { CREATE_RATE_PER_TOKEN: "1000000", CREATE_BURST_PER_TOKEN: "10000000" },
  });
  const db = mesh.db.pool;
  const one = async <T extends object>(sql: string): Promise<T> => (await db.query<T>(sql)).rows[0]!;
  interface Wal {
    lsn: string;
    records: number;
    fpi: number;
  }
  const wal = () =>
    one<Wal>(
      "SELECT pg_current_wal_lsn()::text AS lsn, wal_records::float8 AS records, wal_fpi::float8 AS fpi FROM pg_stat_wal",
    );
  // pg_stat_wal counts a backend's WAL when it reports its statistics (at most once a second,
  // when idle): wait that long before reading the end of a phase.
  const settled = async () => {
    await sleep(1_500);
    return wal();
  };
  const walBytes = async (from: Wal, to: Wal) =>
    (await one<{ n: number }>(`SELECT pg_wal_lsn_diff('${to.lsn}', '${from.lsn}')::float8 AS n`)).n;
  const tableBytes = async () =>
    (
      await one<{ n: number }>(
        "SELECT (pg_total_relation_size('timers') + pg_total_relation_size('timer_attempts'))::float8 AS n",
      )
    ).n;
  const version = (await one<{ v: string }>("SELECT current_setting($$server_version$$) AS v")).v;
  const settings = await db.query<{ name: string; setting: string }>(
    "SELECT name, setting FROM pg_settings WHERE name IN ('full_page_writes', 'wal_level', 'wal_compression', 'checkpoint_timeout', 'max_wal_size')",
  );

  // The preload: half scheduled a year out, half finished with one attempt each, their finish
  // time a day ahead so that the measured deletion (a cutoff an hour ahead) leaves them alone.
  await db.query(
    `INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, callback, payload,
                         max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash,
                         finish_time, fired_time, attempt)
     SELECT 'preload-' || (i % 50), 'p' || i, i % 1024, CASE WHEN i % 2 = 0 THEN 1 ELSE 3 END,
            now() + interval '365 days', now() + interval '365 days',
            '{"http":{"url":"http://127.0.0.1:9/hook"}}', decode(repeat('78', ${PAYLOAD}), 'hex'), 5, 1000, 300000, 2,
            sha256(i::text::bytea), CASE WHEN i % 2 = 1 THEN now() + interval '1 day' END,
            CASE WHEN i % 2 = 1 THEN now() + interval '1 day' END, i % 2
       FROM generate_series(1, ${PRELOAD}) i`,
  );
  await db.query(
    `INSERT INTO timer_attempts (shard, group_id, timer_id, attempt, dispatcher_id, started_at, finished_at, outcome)
     SELECT shard, group_id, timer_id, 1, 'd0', finish_time, finish_time, 'succeeded' FROM timers WHERE state = 3`,
  );
  await db.query("VACUUM FULL ANALYZE timers");
  await db.query("VACUUM FULL ANALYZE timer_attempts");
  const preloadBytes = await tableBytes();

  // Background: what the idle mesh writes (the dispatcher's lease renewals).
  await db.query("CHECKPOINT");
  const idle0 = await wal();
  const idleStart = Date.now();
  await sleep(10_000);
  const idle1 = await wal();
  const backgroundPerMs = (await walBytes(idle0, idle1)) / (Date.now() - idleStart);

  // Creates, due far enough ahead that none fires while they are made, then about 1,000 a second.
  const payload = new Uint8Array(PAYLOAD).fill(120);
  const firstDueMs = Date.now() + 15_000 + N / 2;
  const dueOf = (i: number) => firstDueMs + i;
  const bytes0 = await tableBytes();
  await db.query("CHECKPOINT");
  const c0 = await wal();
  const createStart = Date.now();
  const made = await createBatches(mesh.client, 500, 4, { count: N }, (i) =>
    timerRequest(GROUP, `${GROUP}-${i}`, dueOf(i), "http", rx.url, payload),
  );
  const c1 = await settled();
  const createMs = Date.now() - createStart;
  if (made.acknowledged !== N) throw new Error(`creates failed: ${failureNote(made)}`);
  if (Date.now() > firstDueMs) throw new Error("creation overlapped firing: lower SIZING_TIMERS");
  const bytesCreated = await tableBytes();
  const createWal = (await walBytes(c0, c1)) - backgroundPerMs * createMs;

  // Fires: the CHECKPOINT before the first one, then wait until every timer SUCCEEDED.
  await sleep(Math.max(0, firstDueMs - 2_000 - Date.now()));
  await db.query("CHECKPOINT");
  const f0 = await wal();
  const fireStart = Date.now();
  for (;;) {
    const { n } = await one<{ n: number }>(
      `SELECT count(*)::int AS n FROM timers WHERE group_id = '${GROUP}' AND state = 3`,
    );
    if (n === N) break;
    if (Date.now() > firstDueMs + N + 120_000) throw new Error(`only ${n} of ${N} fired`);
    await sleep(250);
  }
  const f1 = await settled();
  const fireMs = Date.now() - fireStart;
  const fireWal = (await walBytes(f0, f1)) - backgroundPerMs * fireMs;
  const attempts = (
    await one<{ n: number }>(`SELECT count(*)::int AS n FROM timer_attempts WHERE group_id = '${GROUP}'`)
  ).n;
  const bytesFired = await tableBytes();
  await db.query("VACUUM FULL timers");
  await db.query("VACUUM FULL timer_attempts");
  const bytesCompact = (await tableBytes()) - preloadBytes;

  // Retention deleting them all (a cutoff an hour ahead), in the loop's batches of 1,000.
  await db.query("CHECKPOINT");
  const d0 = await wal();
  const deleteStart = Date.now();
  const session = await db.connect();
  let deleted: { timers: number; timer_attempts: number };
  try {
    const run = await runRetention(session, {
      ages: { finishedTimersMs: -3_600_000, auditEventsMs: 3_600_000 },
      batchSize: 1000,
      pauseMs: 0,
    });
    deleted = run.deleted;
  } finally {
    session.release();
  }
  const d1 = await settled();
  const deleteMs = Date.now() - deleteStart;
  const deleteWal = (await walBytes(d0, d1)) - backgroundPerMs * deleteMs;

  const per = (bytes: number) => fmtInt(Math.round(bytes / N));
  const fpiShare = (a: Wal, b: Wal) =>
    `${fmtInt(b.fpi - a.fpi)} FPI / ${fmtInt(b.records - a.records)} records`;
  log(
    `\nretention sizing: ${fmtInt(N)} timers, ${PAYLOAD}-byte payload, HTTP callback, 1 attempt each, over ${fmtInt(PRELOAD)} timers already stored`,
  );
  log(`Postgres ${version}; ${settings.rows.map((r) => `${r.name}=${r.setting}`).join(", ")}`);
  log(`background WAL (idle mesh): ${fmt(backgroundPerMs * 1000, 0)} B/s, subtracted from each phase\n`);
  log("| measure | per timer | total | WAL records |");
  log("| --- | --: | --: | --- |");
  log(
    `| WAL of a create (CreateTimers, ${fmt(createMs / 1000, 1)} s) | ${per(createWal)} B | ${fmtInt(Math.round(createWal))} B | ${fpiShare(c0, c1)} |`,
  );
  log(
    `| WAL of a fire (claim, attempt, outcome; ${fmt(fireMs / 1000, 1)} s) | ${per(fireWal)} B | ${fmtInt(Math.round(fireWal))} B | ${fpiShare(f0, f1)} |`,
  );
  log(
    `| WAL of its deletion by retention | ${per(deleteWal)} B | ${fmtInt(Math.round(deleteWal))} B | ${fpiShare(d0, d1)} |`,
  );
  log(
    `| table + index bytes, scheduled (after creates) | ${per(bytesCreated - bytes0)} B | ${fmtInt(bytesCreated - bytes0)} B | |`,
  );
  log(
    `| table + index bytes, finished with ${fmt(attempts / N, 2)} attempt, before vacuum | ${per(bytesFired - bytes0)} B | ${fmtInt(bytesFired - bytes0)} B | |`,
  );
  log(
    `| table + index bytes, finished, live rows only (VACUUM FULL) | ${per(bytesCompact)} B | ${fmtInt(bytesCompact)} B | |`,
  );
  log(`\ndeleted by retention: ${fmtInt(deleted.timers)} timers, ${fmtInt(deleted.timer_attempts)} attempts`);
} finally {
  await rx.close();
  await pg[Symbol.asyncDispose]();
}
