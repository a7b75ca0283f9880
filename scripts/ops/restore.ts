// `npm run ops -- restore`: a backup made by `ops backup` into a target database, made ready for
// a mesh to start on. What restoring a timer database means, and the runbook, are in the
// README ("Backup and restore"). In order:
//
// 1. Checks, changing nothing: the dump's checksum against its manifest; the dump's shard count
//    against the mesh's SHARD_COUNT (with the very check a service runs at start); the target is
//    empty, or --clean --yes allow emptying it.
// 2. pg_restore in one transaction (a failed restore leaves the target as it was before it).
// 3. In one transaction: the schema migrated to this release's (as a service would at start);
//    every shard lease released with its epoch raised past any a live dispatcher may hold;
//    dispatcher leases removed; deliveries in flight at backup time returned to SCHEDULED;
//    overdue timers left to fire, or expired before a given time; an audit event.
import { access } from "node:fs/promises";
import { userInfo } from "node:os";
import { basename, resolve } from "node:path";
import { parseArgs } from "node:util";
import type pg from "pg";
import { checkShardCount, migrate, seedShardLeases } from "../../services/shared/src/db.js";
import { envInt } from "../../services/shared/src/env.js";
import { createLogger } from "../../services/shared/src/logger.js";
import { redactUrl } from "../../services/shared/src/redact.js";
import { State } from "../../services/shared/src/timer-model.js";
import type { Env } from "../child-process.js";
import { type BackupManifest, countTimersByState, readManifest } from "./backup.js";
import {
  connect,
  connectionForChild,
  type PgTool,
  resolveTool,
  runTool,
  sha256File,
  toolTooOld,
} from "./pg-tools.js";
import type { OpsCommand } from "./command.js";

export const summary =
  "restore a backup into an empty database: check shard count, reset leases, handle overdue timers";

/** Who the audit trail names for a restore. */
const AUDIT_ACTION = "ops/restore";

const HELP = `usage: npm run ops -- restore --file BACKUP.dump --database-url URL [options]
       npm run ops -- restore --in-place --database-url URL --yes [options]

Restores a backup made by \`ops backup\` into the database at URL (never read from
DATABASE_URL: name the target explicitly), then prepares it for the mesh: shard leases released
with raised epochs, dispatcher leases removed, deliveries in flight at backup time scheduled
again, overdue timers fired or expired. Stop the mesh's dispatchers first (README, "Backup and
restore").

options:
  --file PATH          the .dump (its .json manifest beside it is checked when present)
  --in-place           no dump: prepare a database restored by other means (pgBackRest
                       point-in-time recovery) for the mesh, every step but pg_restore (needs --yes)
  --database-url URL   the target database (required)
  --shard-count N      the mesh's SHARD_COUNT (default: $SHARD_COUNT, else 1024, as the services)
  --clean              allow a non-empty target: everything in its public schema is dropped
                       first (needs --yes). --force is the same.
  --yes                confirm the destructive step (--clean); nothing is ever asked
  --overdue fire       timers that came due while the database was away fire at once (default)
  --overdue expire --expire-before TIME
                       SCHEDULED timers due before TIME (RFC 3339, e.g. 2026-12-02T09:00:00Z)
                       are not delivered: they end EXPIRED with last_error "expired at
                       restore: ..."
  --help

Delivery across a restore is at least once: timers that fired after the backup was taken fire
again. Receivers must be idempotent (idempotency-key, x-timer-id).`;

/** What a restore does. */
export interface RestoreOptions {
  /** The dump to restore; null with --in-place (the target already holds the restored data). */
  file: string | null;
  databaseUrl: string;
  shardCount: number;
  clean: boolean;
  yes: boolean;
  overdue: { mode: "fire" } | { mode: "expire"; beforeMs: number };
}

/** The options of `restore`, or the help text when asked for. */
export function parseRestoreArgs(args: string[], env: Env): RestoreOptions | "help" {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: {
      file: { type: "string" },
      "in-place": { type: "boolean" },
      "database-url": { type: "string" },
      "shard-count": { type: "string" },
      clean: { type: "boolean" },
      force: { type: "boolean" },
      yes: { type: "boolean", short: "y" },
      overdue: { type: "string" },
      "expire-before": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return "help";
  if (positionals.length > 0) throw new Error(`unexpected argument "${positionals[0]}" (see --help)`);
  const inPlace = values["in-place"] === true;
  if (inPlace === (values.file !== undefined)) {
    throw new Error("give --file (the .dump written by `ops backup`) or --in-place, one of them");
  }
  if (inPlace && (values.clean || values.force)) throw new Error("--clean has no meaning with --in-place");
  if (inPlace && !values.yes) {
    throw new Error(
      "--in-place changes the data in the target (leases, claims, overdue timers): add --yes to confirm",
    );
  }
  const databaseUrl = values["database-url"];
  if (!databaseUrl) {
    throw new Error(
      "--database-url is required: the target is never taken from DATABASE_URL, so that a restore cannot overwrite a live database by accident",
    );
  }
  const shardCount =
    values["shard-count"] === undefined
      ? envInt(env, "SHARD_COUNT", 1024, 1, 65536)
      : envInt({ "--shard-count": values["shard-count"] }, "--shard-count", 1024, 1, 65536);
  const mode = values.overdue ?? "fire";
  let overdue: RestoreOptions["overdue"];
  if (mode === "fire") {
    if (values["expire-before"] !== undefined) throw new Error("--expire-before goes with --overdue expire");
    overdue = { mode: "fire" };
  } else if (mode === "expire") {
    const raw = values["expire-before"];
    if (raw === undefined) throw new Error("--overdue expire needs --expire-before TIME (RFC 3339)");
    overdue = { mode: "expire", beforeMs: parseRfc3339("--expire-before", raw) };
  } else {
    throw new Error(`--overdue must be fire or expire, got "${mode}"`);
  }
  return {
    file: values.file ?? null,
    databaseUrl,
    shardCount,
    clean: values.clean === true || values.force === true,
    yes: values.yes === true,
    overdue,
  };
}

/** A time with an explicit zone: a local time would mean different instants on different hosts. */
function parseRfc3339(flag: string, raw: string): number {
  const ms = Date.parse(raw);
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/i.test(raw) || Number.isNaN(ms)) {
    throw new Error(
      `${flag} must be an RFC 3339 time with its zone, e.g. 2026-12-02T09:00:00Z, got "${raw}"`,
    );
  }
  return ms;
}

/**
 * The rows of one table in pg_restore's plain output (`COPY ... FROM stdin;` up to `\.`), as
 * arrays of column values, with COPY's text escapes undone.
 */
export function parseCopyRows(sql: string, table: string): string[][] {
  const lines = sql.split("\n");
  const start = lines.findIndex(
    (l) => l.startsWith(`COPY public.${table} `) || l.startsWith(`COPY ${table} `),
  );
  if (start < 0) return [];
  const out: string[][] = [];
  for (const line of lines.slice(start + 1)) {
    if (line === "\\.") break;
    out.push(line.split("\t").map(unescapeCopy));
  }
  return out;
}

function unescapeCopy(v: string): string {
  const named: Record<string, string> = { t: "\t", n: "\n", r: "\r", b: "\b", f: "\f", v: "\v", "\\": "\\" };
  return v.replace(/\\(.)/g, (_m, c: string) => named[c] ?? c);
}

/** The shard count recorded in the dump's mesh_settings (undefined: no service ever started on it). */
async function dumpShardCount(pgRestore: string, file: string): Promise<number | undefined> {
  const { stdout } = await runTool(pgRestore, ["--data-only", "--table=mesh_settings", "--file=-", file], {});
  const row = parseCopyRows(stdout, "mesh_settings").find((r) => r[0] === "shard_count");
  return row?.[1] === undefined ? undefined : Number(row[1]);
}

/**
 * Runs checkShardCount, the check every service makes at start, against the dump's recorded
 * shard count without touching the target: in a transaction that is rolled back, on a temporary
 * mesh_settings (temporary tables come first in the search path) holding the dump's value.
 */
async function checkDumpShardCount(
  client: pg.ClientBase,
  dumpCount: number,
  shardCount: number,
): Promise<void> {
  await client.query("BEGIN");
  try {
    await client.query(
      "CREATE TEMPORARY TABLE mesh_settings (key text PRIMARY KEY, value text NOT NULL) ON COMMIT DROP",
    );
    await client.query("INSERT INTO pg_temp.mesh_settings VALUES ('shard_count', $1)", [String(dumpCount)]);
    await checkShardCount(client, shardCount);
  } finally {
    await client.query("ROLLBACK");
  }
}

/** Relations in the target's public schema: a non-empty target is not restored into by default. */
async function publicRelations(client: pg.ClientBase): Promise<number> {
  const { rows } = await client.query<{ n: string }>(
    `SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')`,
  );
  return Number(rows[0]!.n);
}

/** The highest shard lease epoch in the target before it is emptied (0 when it has none). */
async function targetMaxEpoch(client: pg.ClientBase): Promise<bigint> {
  const table = await client.query<{ present: boolean }>(
    "SELECT to_regclass('public.shard_leases') IS NOT NULL AS present",
  );
  if (!table.rows[0]!.present) return 0n;
  const { rows } = await client.query<{ max: string }>(
    "SELECT coalesce(max(epoch), 0)::text AS max FROM public.shard_leases",
  );
  return BigInt(rows[0]!.max);
}

/**
 * Drops everything in the target's public schema that is not an extension's: tables, views,
 * sequences, routines and types, so that the restored schema is the dump's alone (a table left
 * from a newer migration would make that migration fail when a service applies it again).
 */
async function emptyPublicSchema(client: pg.ClientBase): Promise<void> {
  const notExtension = (cls: string) =>
    `NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '${cls}'::regclass AND d.objid = o.oid AND d.deptype = 'e')`;
  await client.query("BEGIN");
  try {
    const relations = await client.query<{ kind: string; name: string }>(
      `SELECT o.relkind AS kind, format('public.%I', o.relname) AS name FROM pg_class o
        WHERE o.relnamespace = 'public'::regnamespace AND o.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND ${notExtension("pg_class")}`,
    );
    const dropKind: Record<string, string> = {
      r: "TABLE",
      p: "TABLE",
      v: "VIEW",
      m: "MATERIALIZED VIEW",
      S: "SEQUENCE",
      f: "FOREIGN TABLE",
    };
    for (const r of relations.rows)
      await client.query(`DROP ${dropKind[r.kind]} IF EXISTS ${r.name} CASCADE`);
    const routines = await client.query<{ sig: string }>(
      `SELECT o.oid::regprocedure::text AS sig FROM pg_proc o
        WHERE o.pronamespace = 'public'::regnamespace AND ${notExtension("pg_proc")}`,
    );
    for (const r of routines.rows) await client.query(`DROP ROUTINE IF EXISTS ${r.sig} CASCADE`);
    const types = await client.query<{ name: string }>(
      `SELECT o.oid::regtype::text AS name FROM pg_type o
        WHERE o.typnamespace = 'public'::regnamespace AND o.typtype IN ('e', 'd', 'r', 'm', 'c')
          AND (o.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = o.typrelid) = 'c')
          AND ${notExtension("pg_type")}`,
    );
    for (const t of types.rows) await client.query(`DROP TYPE IF EXISTS ${t.name} CASCADE`);
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK");
    throw err;
  }
}

/** What the restore did to the restored data, and the state it left. */
export interface RestoreReport {
  snapshotAt: string | null;
  shardCount: number;
  migration: { before: number; applied: number };
  leases: { released: number; epochAtLeast: string; dispatcherLeasesRemoved: number };
  claimsReturned: number;
  overdue:
    | { mode: "fire"; due: number; oldest: string | null }
    | { mode: "expire"; before: string; expired: number };
  pausedGroups: string[];
  timersByState: Record<string, number>;
}

/**
 * Prepares the restored database for a mesh to start on, in one transaction; see the file's
 * comment. `epochFloor` is an epoch no dispatcher may hold: leases get at least it.
 */
async function prepareForMesh(
  client: pg.ClientBase,
  opts: RestoreOptions,
  epochFloor: bigint,
  audit: { actor: string; file: string },
): Promise<Omit<RestoreReport, "snapshotAt">> {
  const before = await client.query<{ v: number | null }>("SELECT max(version) AS v FROM schema_migrations");
  // Quiet: the CLI reports what it did; pino's lines would only interleave with it.
  const applied = await migrate(client, createLogger("ops-restore", "warn"));
  await client.query("BEGIN");
  try {
    await checkShardCount(client, opts.shardCount);
    await seedShardLeases(client, opts.shardCount);
    await client.query("LOCK TABLE shard_leases, dispatcher_leases, timers IN EXCLUSIVE MODE");

    // Epochs must never go backwards for a dispatcher that may still hold one: the snapshot's
    // are older than the live database's. They count owner changes from 0, so raising each to
    // the restore time in milliseconds (and past the target's old epochs) puts every lease
    // beyond any epoch handed out before, including by an earlier restore plus the changes
    // since (fewer than one a millisecond). Owners are cleared: the mesh acquires anew.
    const leases = await client.query<{ n: string; min: string | null }>(
      `WITH u AS (
         UPDATE shard_leases
            SET owner = NULL,
                epoch = greatest(epoch + 1, $1::bigint, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
         RETURNING epoch)
       SELECT count(*) AS n, min(epoch)::text AS min FROM u`,
      [epochFloor.toString()],
    );
    const dispatchers = await client.query("DELETE FROM dispatcher_leases");

    // A claim in the snapshot was a delivery in flight: whether the receiver got it is unknown,
    // and its dispatcher will never record it here. Scheduled again (at least once), the
    // interrupted attempt recorded as abandoned, as a dispatcher does when it takes back a claim.
    const claims = await client.query<{ n: string }>(
      `WITH u AS (
         UPDATE timers t
            SET state = ${State.Scheduled}, claim_owner = NULL, claim_expires_at = NULL,
                last_error = 'delivery in flight when the backup was taken (claimed by ' || coalesce(t.claim_owner, '?') ||
                             '): outcome unknown, delivered again after the restore'
          WHERE t.state = ${State.Firing}
         RETURNING t.shard, t.group_id, t.timer_id, t.attempt, t.last_error
       ), a AS (
         INSERT INTO timer_attempts (shard, group_id, timer_id, attempt, dispatcher_id, started_at, finished_at, outcome, error)
         SELECT shard, group_id, timer_id, attempt, 'ops restore', now(), now(), 'abandoned', last_error FROM u
       )
       SELECT count(*) AS n FROM u`,
    );

    let overdue: RestoreReport["overdue"];
    if (opts.overdue.mode === "expire") {
      const cutoff = new Date(opts.overdue.beforeMs);
      // EXPIRED, as a lateness contract's SKIP ends a timer: finished, never delivered, and
      // fire_lateness (finish_time - fire_at) says how late it was when it was given up.
      const expired = await client.query<{ n: string }>(
        `WITH u AS (
           UPDATE timers
              SET state = ${State.Expired}, finish_time = now(),
                  last_error = 'expired at restore: due ' || to_char(fire_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') ||
                               ', before ' || $1::text || ' (ops restore --overdue expire); not delivered'
            WHERE state = ${State.Scheduled} AND fire_at < $2::timestamptz
           RETURNING 1)
         SELECT count(*) AS n FROM u`,
        [cutoff.toISOString(), cutoff],
      );
      overdue = { mode: "expire", before: cutoff.toISOString(), expired: Number(expired.rows[0]!.n) };
    } else {
      const due = await client.query<{ n: string; oldest: Date | null }>(
        `SELECT count(*) AS n, min(next_attempt_at) AS oldest FROM timers
          WHERE state = ${State.Scheduled} AND next_attempt_at <= now()`,
      );
      overdue = {
        mode: "fire",
        due: Number(due.rows[0]!.n),
        oldest: due.rows[0]!.oldest?.toISOString() ?? null,
      };
    }

    const paused = await client.query<{ group_id: string }>("SELECT group_id FROM paused_groups ORDER BY 1");
    const report: Omit<RestoreReport, "snapshotAt"> = {
      shardCount: opts.shardCount,
      migration: { before: before.rows[0]?.v ?? 0, applied },
      leases: {
        released: Number(leases.rows[0]!.n),
        epochAtLeast: leases.rows[0]!.min ?? "0",
        dispatcherLeasesRemoved: dispatchers.rowCount ?? 0,
      },
      claimsReturned: Number(claims.rows[0]!.n),
      overdue,
      pausedGroups: paused.rows.map((r) => r.group_id),
      timersByState: await countTimersByState(client),
    };
    await client.query(
      `INSERT INTO audit_events (actor, action, arguments, outcome, result) VALUES ($1, $2, $3::jsonb, 'OK', $4::jsonb)`,
      [
        audit.actor,
        AUDIT_ACTION,
        JSON.stringify({
          file: audit.file,
          shardCount: opts.shardCount,
          overdue: opts.overdue,
          clean: opts.clean,
        }),
        JSON.stringify(report),
      ],
    );
    await client.query("COMMIT");
    return report;
  } catch (err) {
    await client.query("ROLLBACK");
    throw err;
  }
}

/** The report as the operator reads it. */
export function formatReport(r: RestoreReport): string {
  const overdue =
    r.overdue.mode === "fire"
      ? `${r.overdue.due} SCHEDULED timer(s) already due${r.overdue.oldest ? ` (oldest due ${r.overdue.oldest})` : ""}: they fire as soon as the mesh starts, oldest first (--overdue fire)`
      : `${r.overdue.expired} SCHEDULED timer(s) due before ${r.overdue.before} expired: EXPIRED, last_error "expired at restore: ...", not delivered`;
  return [
    `restored: snapshot of ${r.snapshotAt ?? "unknown time (no manifest, or in place)"}, SHARD_COUNT ${r.shardCount}`,
    `  schema: migration ${r.migration.before} in the dump, ${r.migration.applied} newer applied`,
    `  timers by state: ${
      Object.entries(r.timersByState)
        .map(([s, n]) => `${s} ${n}`)
        .join(", ") || "none"
    }`,
    `  leases: ${r.leases.released} shard leases released (epoch now >= ${r.leases.epochAtLeast}), ${r.leases.dispatcherLeasesRemoved} dispatcher leases removed`,
    `  deliveries in flight at backup time: ${r.claimsReturned} returned to SCHEDULED (delivered again: at least once)`,
    `  overdue: ${overdue}`,
    `  paused groups (still paused, as in the backup): ${r.pausedGroups.length ? r.pausedGroups.join(", ") : "none"}`,
    "  timers that fired after the backup was taken fire again; timers created after it are gone.",
    "next: start the dispatchers (and the timer and admin services) with this DATABASE_URL and SHARD_COUNT.",
  ].join("\n");
}

/** Refuses an --expire-before later than the database's now: it would expire timers not due yet. */
async function refuseFutureCutoff(client: pg.ClientBase, beforeMs: number): Promise<void> {
  const { rows } = await client.query<{ now: Date }>("SELECT now() AS now");
  const now = rows[0]!.now;
  if (beforeMs > now.getTime()) {
    throw new Error(
      `refused: --expire-before ${new Date(beforeMs).toISOString()} is later than the database's now (${now.toISOString()}): ` +
        "it would expire timers that are not due yet. Nothing was changed.",
    );
  }
}

/** The refusal of a shard count that differs from the one the timers were stored with. */
function shardCountRefused(err: unknown, stored: number | undefined, opts: RestoreOptions): Error {
  const count = stored === undefined ? "the recorded one" : String(stored);
  return new Error(
    `refused: ${stored === undefined ? "" : `the backup was taken with SHARD_COUNT=${stored} and the mesh runs SHARD_COUNT=${opts.shardCount} `}` +
      `(check: "${(err as Error).message}"). Every stored timer's shard was computed from ${count}, so the mesh ` +
      `must run with it: pass --shard-count ${count} and set SHARD_COUNT=${count} on every service. ` +
      `Nothing was changed in ${redactUrl(opts.databaseUrl)}.`,
    { cause: err },
  );
}

/** Checks a dump against its manifest (when it has one) and reads the shard count it recorded. */
async function inspectDump(
  file: string,
  pgRestore: PgTool,
  log: (line: string) => void,
): Promise<{ manifest: BackupManifest | undefined; shardCount?: number }> {
  const manifestPath = file.replace(/\.dump$/, ".json");
  let manifest: BackupManifest | undefined;
  const hasManifest =
    manifestPath !== file &&
    (await access(manifestPath).then(
      () => true,
      () => false,
    ));
  if (hasManifest) {
    manifest = await readManifest(manifestPath);
    const tooOld = toolTooOld(pgRestore, manifest.pgDump.major, `the pg_dump that wrote ${basename(file)}`);
    if (tooOld) throw new Error(tooOld);
    const sum = await sha256File(file);
    if (sum !== manifest.sha256) {
      throw new Error(
        `${file} does not match its manifest (sha256 ${sum}, manifest ${manifest.sha256}): damaged or not that backup`,
      );
    }
    log(`checked ${basename(file)} against its manifest (sha256 ${sum}, snapshot at ${manifest.snapshotAt})`);
  } else {
    log(`no manifest beside ${basename(file)}: its checksum cannot be verified`);
  }
  const shardCount = await dumpShardCount(pgRestore.path, file);
  return shardCount === undefined ? { manifest } : { manifest, shardCount };
}

/** Restores `opts.file` into the target (or prepares it in place); throws saying why when it refuses or fails. */
export async function restoreBackup(
  opts: RestoreOptions,
  env: Env,
  log: (line: string) => void,
): Promise<RestoreReport> {
  let source:
    | { file: string; pgRestore: PgTool; manifest: BackupManifest | undefined; shardCount?: number }
    | undefined;
  if (opts.file !== null) {
    const file = resolve(opts.file);
    const pgRestore = await resolveTool("pg_restore", env);
    source = { file, pgRestore, ...(await inspectDump(file, pgRestore, log)) };
  }

  const client = await connect(opts.databaseUrl, "ops-restore");
  try {
    if (opts.overdue.mode === "expire") await refuseFutureCutoff(client, opts.overdue.beforeMs);
    let epochFloor = 0n;
    if (source === undefined) {
      // In place: the very check a service makes at start, on the restored data itself.
      try {
        await client.query("BEGIN");
        await checkShardCount(client, opts.shardCount);
        await client.query("COMMIT");
      } catch (err) {
        await client.query("ROLLBACK");
        throw shardCountRefused(err, undefined, opts);
      }
      epochFloor = (await targetMaxEpoch(client)) + 1n;
    } else {
      const { file, pgRestore, shardCount } = source;
      if (shardCount !== undefined) {
        try {
          await checkDumpShardCount(client, shardCount, opts.shardCount);
        } catch (err) {
          throw shardCountRefused(err, shardCount, opts);
        }
      }
      const relations = await publicRelations(client);
      if (relations > 0) {
        if (!opts.clean) {
          throw new Error(
            `refused: ${redactUrl(opts.databaseUrl)} is not empty (${relations} tables, views or sequences in schema public). ` +
              "Restore into a new database (CREATE DATABASE ...), or pass --clean --yes to drop everything in its public schema first. Nothing was changed.",
          );
        }
        if (!opts.yes) {
          throw new Error(
            `refused: --clean would drop the ${relations} tables, views and sequences of ${redactUrl(opts.databaseUrl)}; add --yes to confirm. Nothing was changed.`,
          );
        }
        // Dispatchers still connected to this database hold epochs up to its current ones.
        epochFloor = (await targetMaxEpoch(client)) + 1n;
        log(`emptying the public schema of ${redactUrl(opts.databaseUrl)} (--clean --yes)`);
        await emptyPublicSchema(client);
      }

      log(`restoring ${basename(file)} with ${pgRestore.path} ...`);
      const conn = connectionForChild(opts.databaseUrl);
      await runTool(
        pgRestore.path,
        // --no-owner: objects belong to the role restoring (the services' role), whichever role
        // owned them where the backup was made.
        [
          "--exit-on-error",
          "--single-transaction",
          "--no-owner",
          "--no-password",
          `--dbname=${conn.dbname}`,
          file,
        ],
        { env: conn.env },
      );
    }
    const actor = `ops:${userInfo().username}`;
    const report = await prepareForMesh(client, opts, epochFloor, {
      actor,
      file: source === undefined ? "(in place)" : basename(source.file),
    });
    // pg_restore loads rows but leaves the planner without statistics until autovacuum comes.
    await client.query("ANALYZE");
    return { snapshotAt: source?.manifest?.snapshotAt ?? null, ...report };
  } finally {
    await client.end().catch(() => {});
  }
}

async function execute(opts: RestoreOptions): Promise<number> {
  try {
    const report = await restoreBackup(opts, process.env, (l) => console.log(l));
    console.log(formatReport(report));
    return 0;
  } catch (err) {
    console.error(
      `restore ${(err as Error).message.startsWith("refused") ? "" : "failed: "}${(err as Error).message}`,
    );
    return 1;
  }
}

export const command: OpsCommand<RestoreOptions> = { summary, help: HELP, parse: parseRestoreArgs, execute };
