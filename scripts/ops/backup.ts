// `npm run ops -- backup`: a consistent pg_dump (custom format) of the timer database, with a
// JSON manifest beside it, written atomically, then the retention of older backups.
//
// Consistency: the manifest's counts and the dump come from one snapshot. This command opens a
// REPEATABLE READ transaction, exports its snapshot (pg_export_snapshot) and hands it to pg_dump
// (--snapshot), so what the manifest says is exactly what the dump holds, whatever the mesh
// writes meanwhile. Nothing is locked beyond what pg_dump itself takes (ACCESS SHARE: writers go
// on; only a migration waits).
//
// Atomicity: the dump and the manifest are written under temporary names, flushed to disk, and
// linked to their final names (link fails rather than overwrite), the manifest last: a backup
// whose manifest exists is complete. A crash leaves only a `.partial` file, never a half backup
// under a backup's name.
import { link, mkdir, open, readdir, readFile, rm, stat, unlink, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import type pg from "pg";
import { TimerState } from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { redactUrl } from "../../services/shared/src/redact.js";
import type { Env } from "../child-process.js";
import {
  connect,
  connectionForChild,
  durationFlag,
  intFlag,
  resolveTool,
  runTool,
  serverVersion,
  sha256File,
  toolTooOld,
} from "./pg-tools.js";
import type { OpsCommand } from "./command.js";

export const summary = "pg_dump the timer database with a manifest, atomically; delete old backups";

/** Written in every manifest: retention deletes only files whose manifest says this. */
export const MANIFEST_TOOL = "timer-mesh ops backup";

const HELP = `usage: npm run ops -- backup [options]

A consistent pg_dump (custom format, -Fc) of DATABASE_URL into --dir, named
<database>_<UTC time>_<N>shards.dump, with <same name>.json beside it (the manifest: time,
server and pg_dump versions, shard count, migration, row counts, SHA-256 of the dump). Then
older backups of the same database made by this command are deleted (--keep, --max-age); no
other file is touched.

options:
  --database-url URL  the database to back up (default: $DATABASE_URL)
  --dir DIR           where backups go (default: ./backups)
  --keep N            keep the N newest backups of this database (default: 14)
  --max-age AGE       also delete backups older than AGE (e.g. 14d, 36h); default: none
  --help

pg_dump must be the server's major version or newer: set PG_BIN (its bin directory) or
PG_DUMP (the program) when the one on the PATH is older.`;

/** What a backup run does. */
export interface BackupOptions {
  databaseUrl: string;
  dir: string;
  keep: number;
  maxAgeMs: number | undefined;
}

/** The options of `backup`, or the help text when asked for. */
export function parseBackupArgs(args: string[], env: Env): BackupOptions | "help" {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: {
      "database-url": { type: "string" },
      dir: { type: "string" },
      keep: { type: "string" },
      "max-age": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return "help";
  if (positionals.length > 0) throw new Error(`unexpected argument "${positionals[0]}" (see --help)`);
  const databaseUrl = values["database-url"] ?? env.DATABASE_URL;
  if (!databaseUrl) throw new Error("no database: pass --database-url or set DATABASE_URL");
  return {
    databaseUrl,
    dir: values.dir ?? "backups",
    keep: intFlag("--keep", values.keep, 14, 1, 100_000),
    maxAgeMs: durationFlag("--max-age", values["max-age"]),
  };
}

/** What the manifest beside a dump records. */
export interface BackupManifest {
  tool: typeof MANIFEST_TOOL;
  /** The dump's file name (in the same directory). */
  file: string;
  database: string;
  /** The snapshot's time by the database's clock: what the dump shows is the database at this moment. */
  snapshotAt: string;
  finishedAt: string;
  server: { version: string; major: number };
  pgDump: { version: string; major: number };
  /** SHARD_COUNT recorded in the database (mesh_settings); null if no service ever started on it. */
  shardCount: number | null;
  /** The newest migration applied (schema_migrations). */
  migration: { version: number; name: string } | null;
  /** Exact row counts of every table, in the snapshot. */
  rows: Record<string, number>;
  /** Timers by state (SCHEDULED, FIRING, ...), in the snapshot. */
  timersByState: Record<string, number>;
  bytes: number;
  sha256: string;
}

/** What a database name becomes in file names: letters, digits and dashes only (so "_" can separate). */
function fileSafe(database: string): string {
  return database.replace(/[^A-Za-z0-9-]+/g, "-") || "db";
}

/** `<database>_<2026-12-02T09-15-00.123Z>_<N>shards`: the name of a backup, without extension. */
export function backupBaseName(database: string, snapshotAt: Date, shardCount: number | null): string {
  const stamp = snapshotAt.toISOString().replace(/:/g, "-");
  return `${fileSafe(database)}_${stamp}_${shardCount ?? "unknown"}shards`;
}

/** A backup recognised by its file name; undefined for any other file. */
export interface BackupName {
  base: string;
  database: string;
  snapshotAtMs: number;
}

/** Parses a `.dump` name that backupBaseName made; undefined for any other name. */
export function parseBackupName(fileName: string): BackupName | undefined {
  const m =
    /^([A-Za-z0-9-]+)_(\d{4}-\d{2}-\d{2}T\d{2})-(\d{2})-(\d{2}\.\d{3}Z)_(\d+|unknown)shards\.dump$/.exec(
      fileName,
    );
  if (!m) return undefined;
  const snapshotAtMs = Date.parse(`${m[2]}:${m[3]}:${m[4]}`);
  if (Number.isNaN(snapshotAtMs)) return undefined;
  return { base: fileName.slice(0, -".dump".length), database: m[1]!, snapshotAtMs };
}

/**
 * The backups to delete: beyond the `keep` newest, or older than `maxAgeMs`. Never `justMade`
 * (the newest is always kept, however old the clock says it is).
 */
export function chooseBackupsToDelete(
  backups: BackupName[],
  opts: { keep: number; maxAgeMs: number | undefined; nowMs: number; justMade: string },
): BackupName[] {
  const newestFirst = [...backups].sort((a, b) => b.snapshotAtMs - a.snapshotAtMs);
  return newestFirst.filter(
    (b, i) =>
      b.base !== opts.justMade &&
      (i >= opts.keep || (opts.maxAgeMs !== undefined && opts.nowMs - b.snapshotAtMs > opts.maxAgeMs)),
  );
}

/** Reads and checks a manifest; throws saying what is wrong with it. */
export async function readManifest(path: string): Promise<BackupManifest> {
  const parsed = JSON.parse(await readFile(path, "utf8")) as Partial<BackupManifest> | null;
  if (
    parsed?.tool !== MANIFEST_TOOL ||
    typeof parsed.file !== "string" ||
    typeof parsed.sha256 !== "string"
  ) {
    throw new Error(`${path} is not a manifest written by "${MANIFEST_TOOL}"`);
  }
  return parsed as BackupManifest;
}

/** What the snapshot shows, for the manifest. */
async function describeSnapshot(
  tx: pg.ClientBase,
): Promise<
  Pick<BackupManifest, "database" | "snapshotAt" | "shardCount" | "migration" | "rows" | "timersByState">
> {
  const head = await tx.query<{ database: string; now: Date; shard_count: string | null }>(
    `SELECT current_database() AS database, now() AS now,
            (SELECT value FROM mesh_settings WHERE key = 'shard_count') AS shard_count`,
  );
  const migration = await tx.query<{ version: number; name: string }>(
    "SELECT version, name FROM schema_migrations ORDER BY version DESC LIMIT 1",
  );
  const tables = await tx.query<{ name: string }>(
    `SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1`,
  );
  const rows: Record<string, number> = {};
  for (const { name } of tables.rows) {
    const { rows: r } = await tx.query<{ n: string }>(`SELECT count(*) AS n FROM public.${quoteIdent(name)}`);
    rows[name] = Number(r[0]!.n);
  }
  const { database, now, shard_count } = head.rows[0]!;
  return {
    database,
    snapshotAt: now.toISOString(),
    shardCount: shard_count === null ? null : Number(shard_count),
    migration: migration.rows[0] ?? null,
    rows,
    timersByState: await countTimersByState(tx),
  };
}

/** Timers by state name (SCHEDULED, FIRING, ...): what the manifest and the restore report show. */
export async function countTimersByState(client: pg.ClientBase): Promise<Record<string, number>> {
  const { rows } = await client.query<{ state: number; n: string }>(
    "SELECT state, count(*) AS n FROM timers GROUP BY state ORDER BY state",
  );
  return Object.fromEntries(rows.map((s) => [TimerState[s.state] ?? String(s.state), Number(s.n)]));
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** fsync of a file or directory: the data, or the directory entry, survives a power cut. */
async function syncPath(path: string): Promise<void> {
  const fh = await open(path, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Makes one backup; returns its manifest and where it is. */
export async function makeBackup(
  opts: BackupOptions,
  env: Env,
  log: (line: string) => void,
): Promise<{ manifest: BackupManifest; dumpPath: string; manifestPath: string }> {
  const pgDump = await resolveTool("pg_dump", env);
  const dir = resolve(opts.dir);
  await mkdir(dir, { recursive: true });
  const client = await connect(opts.databaseUrl, "ops-backup");
  try {
    const server = await serverVersion(client);
    const tooOld = toolTooOld(pgDump, server.major, `the server at ${redactUrl(opts.databaseUrl)}`);
    if (tooOld) throw new Error(tooOld);

    await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
    const { rows } = await client.query<{ snapshot: string }>("SELECT pg_export_snapshot() AS snapshot");
    const seen = await describeSnapshot(client).catch((err: unknown) => {
      // 42P01 undefined_table: no schema_migrations or mesh_settings, not a timer database.
      if ((err as { code?: string }).code !== "42P01") throw err;
      throw new Error(
        `${redactUrl(opts.databaseUrl)} is not a timer database (${(err as Error).message}): check DATABASE_URL`,
        { cause: err },
      );
    });
    const base = backupBaseName(seen.database, new Date(seen.snapshotAt), seen.shardCount);
    const dumpPath = join(dir, `${base}.dump`);
    const manifestPath = join(dir, `${base}.json`);
    const partial = join(dir, `.${base}.dump.${process.pid}.partial`);
    const partialManifest = join(dir, `.${base}.json.${process.pid}.partial`);
    try {
      log(`dumping ${seen.database} (snapshot at ${seen.snapshotAt}) with ${pgDump.path} ...`);
      const conn = connectionForChild(opts.databaseUrl);
      await runTool(
        pgDump.path,
        [
          "--format=custom",
          `--snapshot=${rows[0]!.snapshot}`,
          // Waiting behind a migration's exclusive lock would hold the snapshot (and vacuum) for as long.
          "--lock-wait-timeout=60000",
          "--no-password",
          `--file=${partial}`,
          `--dbname=${conn.dbname}`,
        ],
        { env: conn.env },
      );
      await client.query("COMMIT");
      await syncPath(partial);
      const manifest: BackupManifest = {
        tool: MANIFEST_TOOL,
        file: `${base}.dump`,
        ...seen,
        finishedAt: new Date().toISOString(),
        server,
        pgDump: { version: pgDump.version, major: pgDump.major },
        bytes: (await stat(partial)).size,
        sha256: await sha256File(partial),
      };
      await writeFile(partialManifest, `${JSON.stringify(manifest, null, 2)}\n`, { flush: true });
      await link(partial, dumpPath);
      await link(partialManifest, manifestPath);
      await syncPath(dir);
      return { manifest, dumpPath, manifestPath };
    } finally {
      await rm(partial, { force: true });
      await rm(partialManifest, { force: true });
    }
  } finally {
    await client.end().catch(() => {});
  }
}

/** Applies the retention to the backups of `database` in `dir`; returns the names deleted. */
export async function applyRetention(
  dir: string,
  database: string,
  opts: { keep: number; maxAgeMs: number | undefined; justMade: string },
  log: (line: string) => void,
): Promise<string[]> {
  const names = new Set(await readdir(dir));
  const ours: BackupName[] = [];
  for (const name of names) {
    const parsed = parseBackupName(name);
    if (!parsed || parsed.database !== fileSafe(database) || !names.has(`${parsed.base}.json`)) continue;
    // Only a dump whose manifest this command wrote, naming that very dump, is ours to delete.
    const manifest = await readManifest(join(dir, `${parsed.base}.json`)).catch(() => undefined);
    if (manifest?.file === name) ours.push(parsed);
  }
  const doomed = chooseBackupsToDelete(ours, { ...opts, nowMs: Date.now() });
  for (const b of doomed) {
    // The manifest first: a dump without its manifest is no longer counted as a backup.
    await unlink(join(dir, `${b.base}.json`));
    await unlink(join(dir, `${b.base}.dump`));
    log(`deleted old backup ${b.base}.dump`);
  }
  return doomed.map((b) => b.base);
}

async function execute(opts: BackupOptions): Promise<number> {
  try {
    const { manifest, dumpPath } = await makeBackup(opts, process.env, (l) => console.log(l));
    console.log(
      `backup written: ${dumpPath} (${manifest.bytes} bytes, sha256 ${manifest.sha256})\n` +
        `  snapshot at ${manifest.snapshotAt}, PostgreSQL ${manifest.server.version}, ${manifest.pgDump.version}\n` +
        `  shard count ${manifest.shardCount ?? "not recorded"}, migration ${manifest.migration?.name ?? "none"}\n` +
        `  timers by state: ${JSON.stringify(manifest.timersByState)}`,
    );
    const deleted = await applyRetention(
      resolve(opts.dir),
      manifest.database,
      { keep: opts.keep, maxAgeMs: opts.maxAgeMs, justMade: manifest.file.slice(0, -".dump".length) },
      (l) => console.log(l),
    );
    console.log(
      `retention: ${deleted.length} old backup(s) deleted, keeping the newest ${opts.keep}${opts.maxAgeMs ? ` not older than ${opts.maxAgeMs / 1000}s` : ""}`,
    );
    return 0;
  } catch (err) {
    console.error(`backup failed: ${(err as Error).message}`);
    return 1;
  }
}

export const command: OpsCommand<BackupOptions> = { summary, help: HELP, parse: parseBackupArgs, execute };
