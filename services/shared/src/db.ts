import { readdir, readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { databaseUnavailable } from "./db-errors.js";
import type { Dependency } from "./dependency.js";
import type { CommonConfig } from "./env.js";
import type { Logger } from "./logger.js";
import { redactCredentials } from "./redact.js";
import { instrumentPool } from "./telemetry/db-metrics.js";
import type { Telemetry } from "./telemetry/telemetry.js";

const migrationsDir = fileURLToPath(new URL("../migrations/", import.meta.url));

// Any constant works; it only has to be the same in every process that migrates.
const MIGRATION_LOCK_KEY = 0x74696d72; // "timr"

// How long pool.query waits for a connection, and how long one start attempt waits to connect.
const CONNECT_TIMEOUT_MS = 5_000;

// The driver's query_timeout is the statement timeout plus this: a live server cancels first
// (57014, a clear "statement timeout"), the driver only for a server that stopped answering.
const QUERY_TIMEOUT_MARGIN_MS = 2_000;

// Backoff between attempts to reach Postgres at start: quick at first (a database starting at
// the same moment), then every 5 s at most while it stays away.
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 5_000;

/**
 * A pg pool with the settings every service uses: every query bounded by `statementTimeoutMs`
 * on the server (statement_timeout) and, for a server that no longer answers, on the client
 * (query_timeout); TCP keepalive so that a connection to a vanished host is noticed.
 */
export function createPool(
  databaseUrl: string,
  max: number,
  applicationName: string,
  statementTimeoutMs: number,
): pg.Pool {
  return new pg.Pool({
    connectionString: databaseUrl,
    max,
    application_name: applicationName,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    idleTimeoutMillis: 30_000,
    statement_timeout: statementTimeoutMs,
    query_timeout: statementTimeoutMs + QUERY_TIMEOUT_MARGIN_MS,
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
    // No JIT compilation: every query here is short, and the dispatchers' per-shard due reads
    // (a LATERAL join over up to SHARD_COUNT shards) are estimated above jit_above_cost with a
    // large shard count, which would compile each of them (tens of ms) to run it in one.
    options: "-c jit=off",
  });
}

/**
 * Applies the numbered SQL files in services/shared/migrations that the database lacks, each in
 * its own transaction. An advisory lock makes concurrent starts wait for one another. `upTo`
 * stops after that version: a database as an earlier release left it, for upgrade tests.
 */
export async function migrate(
  target: pg.Pool | pg.ClientBase,
  log: Logger,
  upTo = Infinity,
): Promise<number> {
  const files = (await readdir(migrationsDir))
    .filter((f) => /^\d{6}_.+\.sql$/.test(f) && Number(f.slice(0, 6)) <= upTo)
    .sort();
  const versions = files.map((f) => f.slice(0, 6));
  const clash = versions.find((v, i) => versions.indexOf(v) !== i);
  if (clash) throw new Error(`two migrations are numbered ${clash}: renumber the newer one`);
  const pooled = target instanceof pg.Pool ? await target.connect() : undefined;
  const client = pooled ?? (target as pg.ClientBase);
  let applied = 0;
  try {
    await client.query("SELECT pg_advisory_lock($1)", [MIGRATION_LOCK_KEY]);
    try {
      await client.query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
      );
      const done = new Set(
        (await client.query<{ version: number }>("SELECT version FROM schema_migrations")).rows.map(
          (r) => r.version,
        ),
      );
      for (const file of files) {
        const version = Number(file.slice(0, 6));
        if (done.has(version)) continue;
        const sql = await readFile(migrationsDir + file, "utf8");
        await client.query("BEGIN");
        try {
          await client.query(sql);
          await client.query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [
            version,
            file,
          ]);
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
    pooled?.release();
  }
  return applied;
}

/**
 * Runs `work` in one transaction on a client of `pool`: committed when it resolves, rolled back
 * when it throws (the work's error is what the caller gets). A connection that cannot even roll
 * back is discarded instead of going back to the pool.
 */
export async function inTransaction<T>(
  pool: pg.Pool,
  work: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  // A connection lost while checked out (Postgres restarted) is emitted as 'error' on the client,
  // which has no listener outside the pool: the process would crash. The statement in flight,
  // or the next one, fails with it anyway; here the client is only marked for discarding.
  const onError = (err: Error): void => {
    broken = err;
  };
  client.on("error", onError);
  try {
    await client.query("BEGIN");
    const out = await work(client);
    await client.query("COMMIT");
    return out;
  } catch (err) {
    await client.query("ROLLBACK").catch((rollbackErr: unknown) => {
      broken = new Error("ROLLBACK failed; connection discarded", { cause: rollbackErr });
    });
    throw err;
  } finally {
    client.off("error", onError);
    client.release(broken);
  }
}

/**
 * Records the shard count on first start and refuses a different one later: every stored
 * timer's shard was computed from it. Writes nothing else (the lease rows: seedShardLeases).
 */
export async function checkShardCount(client: pg.ClientBase, shardCount: number): Promise<void> {
  await client.query(
    "INSERT INTO mesh_settings (key, value) VALUES ('shard_count', $1) ON CONFLICT (key) DO NOTHING",
    [String(shardCount)],
  );
  const { rows } = await client.query<{ value: string }>(
    "SELECT value FROM mesh_settings WHERE key = 'shard_count'",
  );
  const stored = Number(rows[0]!.value);
  if (stored !== shardCount) {
    throw new Error(
      `SHARD_COUNT is ${shardCount} but this database was created with ${stored}; set SHARD_COUNT=${stored}`,
    );
  }
}

/**
 * Creates the lease row of each shard that has none (shard_leases), so that a dispatcher can
 * acquire it: idempotent, and meant for a shard count checkShardCount has agreed to.
 */
export async function seedShardLeases(client: pg.ClientBase, shardCount: number): Promise<void> {
  await client.query(
    "INSERT INTO shard_leases (shard) SELECT s FROM generate_series(0, $1::int - 1) s ON CONFLICT (shard) DO NOTHING",
    [shardCount],
  );
}

/** What openDatabase needs: CommonConfig's database settings and who is asking. */
export interface DatabaseOptions {
  url: string;
  /** Pool size. */
  max: number;
  /** application_name, as pg_stat_activity shows it. */
  applicationName: string;
  shardCount: number;
  /** DB_STATEMENT_TIMEOUT. */
  statementTimeoutMs: number;
  log: Logger;
  telemetry?: Telemetry;
}

/**
 * Postgres for a service: the pool exists at once (queries fail until Postgres answers); in the
 * background the database is reached, migrated and its shard count checked, retried with
 * backoff while Postgres is unreachable, starting up or out of connections, so that a service
 * starts whatever Postgres is doing and becomes ready when it comes. A failure retrying cannot
 * fix (a migration's SQL error, SHARD_COUNT mismatch, a refused password) rejects `ready`.
 */
export class Database implements Dependency {
  readonly name = "database";
  readonly pool: pg.Pool;
  readonly ready: Promise<void>;
  #isReady = false;
  readonly #closed = new AbortController();

  constructor(private readonly opts: DatabaseOptions) {
    this.pool = createPool(opts.url, opts.max, opts.applicationName, opts.statementTimeoutMs);
    if (opts.telemetry)
      instrumentPool(
        this.pool,
        opts.telemetry.meter,
        opts.telemetry.tracer,
        opts.telemetry.tracingEnabled,
        opts.max,
      );
    this.pool.on("error", (err) => opts.log.error({ err }, "idle Postgres client failed"));
    this.ready = new Promise<void>((resolve, reject) => void this.#prepare(resolve, reject));
  }

  get isReady(): boolean {
    return this.#isReady;
  }

  async check(): Promise<boolean> {
    return this.#isReady && (await this.pool.query("SELECT 1")).rowCount === 1;
  }

  async close(): Promise<void> {
    this.#closed.abort();
    await this.pool.end();
  }

  async #prepare(resolve: () => void, reject: (err: unknown) => void): Promise<void> {
    const { log } = this.opts;
    const startedAt = Date.now();
    let waitMs = RETRY_MIN_MS;
    let lastReason: string | undefined;
    for (;;) {
      try {
        await this.#migrateOnce();
      } catch (err) {
        if (this.#closed.signal.aborted) return;
        const unavailable = databaseUnavailable(err);
        if (!unavailable) return reject(err);
        // Once per kind of failure (refused, then "starting up"...), not once per attempt.
        if (unavailable.rawMessage !== lastReason) {
          lastReason = unavailable.rawMessage;
          // Node's AggregateError (a host with several addresses, all refused) has no message, only a code.
          const detail = redactCredentials(
            (err instanceof Error && err.message) || String((err as { code?: unknown }).code ?? err),
          );
          log.warn(
            { retry_max_ms: RETRY_MAX_MS },
            `Postgres not reachable yet (${detail}): not ready, retrying with backoff`,
          );
        }
        try {
          await sleep(waitMs, undefined, { signal: this.#closed.signal });
        } catch {
          return; // closed while waiting
        }
        waitMs = Math.min(2 * waitMs, RETRY_MAX_MS);
        continue;
      }
      this.#isReady = true;
      log.info(
        lastReason ? { waited_ms: Date.now() - startedAt } : {},
        "Postgres reachable and migrated: database ready",
      );
      return resolve();
    }
  }

  /**
   * One attempt: migrate and check the shard count on a connection of its own, without the
   * pools' statement timeout, which a long migration, or the wait for another process's
   * migration (the advisory lock), must not be cut off by.
   */
  async #migrateOnce(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.opts.url,
      application_name: `${this.opts.applicationName}:migrate`,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    });
    // A connection lost mid-migration surfaces as the failing query's error; this only keeps
    // the emitter from throwing it a second time.
    client.on("error", () => {});
    await client.connect();
    try {
      await migrate(client, this.opts.log);
      // Lease rows only once the count is known to be the database's: seeding first would add
      // rows for shards the stored timers were never hashed to.
      await checkShardCount(client, this.opts.shardCount);
      await seedShardLeases(client, this.opts.shardCount);
    } finally {
      await client.end().catch(() => {});
    }
  }
}

/** Opens Postgres for a service with the common settings (see Database); `max` defaults to DB_POOL_MAX. */
export function openDatabase(
  config: Pick<CommonConfig, "databaseUrl" | "dbPoolMax" | "shardCount" | "dbStatementTimeoutMs">,
  applicationName: string,
  log: Logger,
  telemetry: Telemetry,
  max = config.dbPoolMax,
): Database {
  return new Database({
    url: config.databaseUrl,
    max,
    applicationName,
    shardCount: config.shardCount,
    statementTimeoutMs: config.dbStatementTimeoutMs,
    log,
    telemetry,
  });
}
