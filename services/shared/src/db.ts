import { readdir, readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import pg from "pg";
import type { Logger } from "./logger.js";
import { instrumentPool } from "./telemetry/db-metrics.js";
import type { Telemetry } from "./telemetry/telemetry.js";

const migrationsDir = fileURLToPath(new URL("../migrations/", import.meta.url));

// Any constant works; it only has to be the same in every process that migrates.
const MIGRATION_LOCK_KEY = 0x74696d72; // "timr"

/** A pg pool with the settings every service uses. */
export function createPool(databaseUrl: string, max: number, applicationName: string): pg.Pool {
  const pool = new pg.Pool({
    connectionString: databaseUrl,
    max,
    application_name: applicationName,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
  });
  return pool;
}

/**
 * Applies the numbered SQL files in services/shared/migrations that the database lacks, each in
 * its own transaction. An advisory lock makes concurrent starts wait for one another.
 */
export async function migrate(pool: pg.Pool, log: Logger): Promise<number> {
  const files = (await readdir(migrationsDir)).filter((f) => /^\d{6}_.+\.sql$/.test(f)).sort();
  const versions = files.map((f) => f.slice(0, 6));
  const clash = versions.find((v, i) => versions.indexOf(v) !== i);
  if (clash) throw new Error(`two migrations are numbered ${clash}: renumber the newer one`);
  const client = await pool.connect();
  let applied = 0;
  try {
    await client.query("SELECT pg_advisory_lock($1)", [MIGRATION_LOCK_KEY]);
    try {
      await client.query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
      );
      const done = new Set(
        (await client.query<{ version: number }>("SELECT version FROM schema_migrations")).rows.map((r) => r.version),
      );
      for (const file of files) {
        const version = Number(file.slice(0, 6));
        if (done.has(version)) continue;
        const sql = await readFile(migrationsDir + file, "utf8");
        await client.query("BEGIN");
        try {
          await client.query(sql);
          await client.query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [version, file]);
          await client.query("COMMIT");
        } catch (err) {
          await client.query("ROLLBACK");
          throw new Error(`migration ${file} failed`, { cause: err });
        }
        applied++;
        log.info({ migration: file }, "applied migration");
      }
    } finally {
      await client.query("SELECT pg_advisory_unlock($1)", [MIGRATION_LOCK_KEY]);
    }
  } finally {
    client.release();
  }
  return applied;
}

/**
 * Records the shard count on first start and refuses a different one later: every stored
 * timer's shard was computed from it.
 */
export async function checkShardCount(pool: pg.Pool, shardCount: number): Promise<void> {
  await pool.query(
    "INSERT INTO mesh_settings (key, value) VALUES ('shard_count', $1) ON CONFLICT (key) DO NOTHING",
    [String(shardCount)],
  );
  const { rows } = await pool.query<{ value: string }>("SELECT value FROM mesh_settings WHERE key = 'shard_count'");
  const stored = Number(rows[0]!.value);
  if (stored !== shardCount) {
    throw new Error(
      `SHARD_COUNT is ${shardCount} but this database was created with ${stored}; set SHARD_COUNT=${stored}`,
    );
  }
  await pool.query(
    "INSERT INTO shard_leases (shard) SELECT s FROM generate_series(0, $1::int - 1) s ON CONFLICT (shard) DO NOTHING",
    [shardCount],
  );
}

/** Opens a pool, migrates, and checks the shard count: what every service does at start. */
export async function openDatabase(
  databaseUrl: string,
  max: number,
  service: string,
  shardCount: number,
  log: Logger,
  telemetry?: Telemetry,
): Promise<pg.Pool> {
  const pool = createPool(databaseUrl, max, service);
  if (telemetry) instrumentPool(pool, telemetry.meter, telemetry.tracer, telemetry.tracingEnabled, max);
  pool.on("error", (err) => log.error({ err }, "idle Postgres client failed"));
  try {
    await migrate(pool, log);
    await checkShardCount(pool, shardCount);
  } catch (err) {
    await pool.end();
    throw err;
  }
  return pool;
}
