// PostgreSQL's own client programs (pg_dump, pg_restore) for the backup and restore commands:
// finding them, checking that they can handle the server, and running them without putting the
// connection password on their command line. Also the small pieces both commands share: a
// connection, the operator's flags read with the services' own parsers, file hashing.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import { ConfigError, envDurationMs, envInt } from "../../services/shared/src/env.js";
import { redactCredentials, redactUrl } from "../../services/shared/src/redact.js";
import { type Env, findOnPath } from "../child-process.js";

/** The two programs the commands run. */
export type PgToolName = "pg_dump" | "pg_restore";

/** A program found, with the version it reports. */
export interface PgTool {
  name: PgToolName;
  path: string;
  /** `pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)`, as the program printed it. */
  version: string;
  major: number;
}

/** Which PostgreSQL client packages to point an operator at, by what we have seen on machines. */
const INSTALL_HINT =
  "install the PostgreSQL client of the server's major version (Debian and Ubuntu: apt-get install postgresql-client-<major>; versions newer than the distribution's come from the PGDG repository, apt.postgresql.org), then set PG_BIN to its bin directory (e.g. /usr/lib/postgresql/18/bin) or PG_DUMP / PG_RESTORE to the program itself";

/**
 * Where `name` is: $PG_DUMP / $PG_RESTORE (the program), else $PG_BIN/<name>, else the PATH.
 * Debian's wrapper in /usr/bin picks the newest installed version, which may still be older
 * than the server: resolveTool checks the version.
 */
export function locateTool(name: PgToolName, env: Env): string {
  const own = env[name.toUpperCase()];
  if (own) {
    const found = findOnPath(own, env);
    if (!found) throw new ConfigError(`${name.toUpperCase()}=${own}: no such program`);
    return found;
  }
  if (env.PG_BIN) {
    const found = findOnPath(join(env.PG_BIN, name), env);
    if (!found) throw new ConfigError(`PG_BIN=${env.PG_BIN} has no ${name}; ${INSTALL_HINT}`);
    return found;
  }
  const found = findOnPath(name, env);
  if (!found) throw new ConfigError(`${name} not found on the PATH: ${INSTALL_HINT}`);
  return found;
}

/** The major version in a `--version` line: "pg_dump (PostgreSQL) 15.20 (Debian ...)" is 15. */
export function parseToolVersion(text: string): number | undefined {
  // (Before 10 a major version was two numbers, 9.6: nothing that old can dump this schema.)
  const m = /\(PostgreSQL\)\s+(\d+)/.exec(text);
  return m ? Number(m[1]) : undefined;
}

/**
 * Why `tool` cannot work against a server of `serverMajor`, or undefined when it can: pg_dump
 * refuses a server newer than itself ("aborting because of server version mismatch"), and a dump
 * is only readable by a pg_restore at least as new as the pg_dump that wrote it.
 */
export function toolTooOld(
  tool: Pick<PgTool, "name" | "major" | "path">,
  serverMajor: number,
  what: string,
): string | undefined {
  if (tool.major >= serverMajor) return undefined;
  return (
    `${tool.name} ${tool.major} (${tool.path}) is older than ${what} (PostgreSQL ${serverMajor}): ` +
    `${tool.name} must be version ${serverMajor} or newer. The embedded Postgres of \`npm start\` is 18 while ` +
    `Debian 12's client is 15: ${INSTALL_HINT}`
  );
}

/** Finds `name` and asks it its version. */
export async function resolveTool(name: PgToolName, env: Env): Promise<PgTool> {
  const path = locateTool(name, env);
  const { stdout } = await runTool(path, ["--version"], {});
  const version = stdout.trim();
  const major = parseToolVersion(version);
  if (major === undefined)
    throw new Error(`${path} --version printed "${version}": not a PostgreSQL ${name}`);
  return { name, path, version, major };
}

/**
 * The libpq connection of `databaseUrl` for a child program: the URL without its password, and
 * the password in PGPASSWORD, so that it does not show in `ps` (a command line is public on the
 * host, a process's environment is not).
 */
export function connectionForChild(databaseUrl: string): { dbname: string; env: Env } {
  let url: URL;
  try {
    url = new URL(databaseUrl);
  } catch (err) {
    throw new ConfigError(`not a postgres:// URL: "${redactUrl(databaseUrl)}"`, { cause: err });
  }
  const password = url.password ? decodeURIComponent(url.password) : url.searchParams.get("password");
  url.password = "";
  url.searchParams.delete("password");
  return { dbname: url.toString(), env: password ? { PGPASSWORD: password } : {} };
}

/** Runs a program to its end; rejects with its (redacted) stderr when it fails. */
export function runTool(
  path: string,
  args: string[],
  opts: { env?: Env; onStderr?: (text: string) => void },
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(path, args, {
      env: { ...process.env, ...opts.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
      opts.onStderr?.(d.toString());
    });
    child.once("error", (err) => reject(new Error(`could not run ${path}`, { cause: err })));
    child.once("close", (code, signal) => {
      if (code === 0) return resolve({ stdout, stderr });
      const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
      reject(new Error(`${path} ${how}: ${redactCredentials(stderr.trim()) || "(no output)"}`));
    });
  });
}

/** The server's major version and its full version string. */
export async function serverVersion(client: pg.ClientBase): Promise<{ major: number; version: string }> {
  const { rows } = await client.query<{ num: string; version: string }>(
    "SELECT current_setting('server_version_num') AS num, current_setting('server_version') AS version",
  );
  return { major: Math.floor(Number(rows[0]!.num) / 10_000), version: rows[0]!.version };
}

/** A connected client on `databaseUrl`; connection errors name the (redacted) URL. */
export async function connect(databaseUrl: string, applicationName: string): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: databaseUrl,
    application_name: applicationName,
    connectionTimeoutMillis: 10_000,
  });
  // A connection lost mid-command surfaces as the failing query's error; this only keeps the
  // emitter from throwing it a second time.
  client.on("error", () => {});
  try {
    await client.connect();
  } catch (err) {
    throw new Error(`cannot connect to ${redactUrl(databaseUrl)}: ${redactCredentials(String(err))}`, {
      cause: err,
    });
  }
  return client;
}

/** SHA-256 of a file, hex. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** An integer flag's value, checked as the services check their settings (`--keep must be...`). */
export function intFlag(
  flag: string,
  value: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  return envInt({ [flag]: value }, flag, fallback, min, max);
}

/** A duration flag ("14d", "12h") in milliseconds, undefined when not given. */
export function durationFlag(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  return envDurationMs({ [flag]: value }, flag, 0, 1, 100 * 365 * 86_400_000);
}
