// `npm run ops -- retention`: one retention run now, from the operator's shell (the runbook's
// cleanup-expired-timers.sh). The same deletion, batches and lock as the dispatchers' automatic
// retention (services/shared/src/retention.ts), with the same RETENTION_* variables as defaults;
// flags override them for this run. A dry run counts what would go and deletes nothing.
import { parseArgs } from "node:util";
import type pg from "pg";
import { loadRetentionSettings, type RetentionSettings } from "../../services/dispatcher/src/config.js";
import { createPool } from "../../services/shared/src/db.js";
import { ConfigError, envDurationMs } from "../../services/shared/src/env.js";
import { redactCredentials } from "../../services/shared/src/redact.js";
import {
  cutoffBefore,
  previewAuditEvents,
  previewFinishedTimers,
  RETENTION_LOCK_KEYS,
  type RetentionTable,
  releaseRetentionLock,
  runRetention,
  tryRetentionLock,
} from "../../services/shared/src/retention.js";
import { type OpsCommand, databaseUrlFrom } from "./command.js";

export const summary =
  "delete finished timers, their attempts and audit events past their retention (or count them)";

const HELP = `usage: npm run ops -- retention [--dry-run] [--finished-older-than 7d] [--audit-older-than 90d]
                                [--batch-size 1000] [--pause 100ms] [--timeout 60s]

Deletes, in batches of short transactions, the finished timers (SUCCEEDED, FAILED, CANCELLED,
EXPIRED) whose finish time is older than --finished-older-than, with their delivery attempts, and the
audit events older than --audit-older-than, from the database at DATABASE_URL; prints what it
deleted per table. Live timers (SCHEDULED, FIRING, PAUSED) are never deleted, whatever their age.
The dispatchers do the same every RETENTION_INTERVAL; this runs it now, under the same lock
(it refuses while a dispatcher's run holds it).

  --dry-run                     count what would be deleted, delete nothing
  --finished-older-than DURATION  default RETENTION_FINISHED_TIMERS, else 7d (at least 1h)
  --audit-older-than DURATION   default RETENTION_AUDIT_EVENTS, else 90d (at least 1h)
  --batch-size N                rows per batch; default RETENTION_BATCH_SIZE, else 1000
  --pause DURATION              pause between batches; default RETENTION_BATCH_PAUSE, else 100ms
  --timeout DURATION            longest one statement may run (default 60s)

Ctrl-C stops after the current batch; what was deleted until then is printed.
Exit codes: 0 done, 1 the lock is held by another run, 2 bad arguments or Postgres unreachable.`;

/** The flags that stand for a RETENTION_* variable, for this run. */
const FLAG_VARIABLES = {
  "finished-older-than": "RETENTION_FINISHED_TIMERS",
  "audit-older-than": "RETENTION_AUDIT_EVENTS",
  "batch-size": "RETENTION_BATCH_SIZE",
  pause: "RETENTION_BATCH_PAUSE",
} as const;

interface Options {
  dryRun: boolean;
  settings: RetentionSettings;
  timeoutMs: number;
  databaseUrl: string;
}

/** The options of a run, from the flags over the environment; "help" for --help. */
export function parseOptions(args: string[], env: Record<string, string | undefined>): Options | "help" {
  const { values } = parseArgs({
    args,
    options: {
      "dry-run": { type: "boolean" },
      "finished-older-than": { type: "string" },
      "audit-older-than": { type: "string" },
      "batch-size": { type: "string" },
      pause: { type: "string" },
      timeout: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return "help";
  // The flags go through the variables' own parsing (defaults and bounds written once, in
  // config.ts); an error names the flag when the flag was the one given.
  const merged = { ...env };
  for (const [flag, variable] of Object.entries(FLAG_VARIABLES)) {
    const v = values[flag as keyof typeof FLAG_VARIABLES];
    if (v !== undefined) merged[variable] = v;
  }
  let settings: RetentionSettings;
  try {
    settings = loadRetentionSettings(merged);
  } catch (err) {
    let message = err instanceof Error ? err.message : String(err);
    for (const [flag, variable] of Object.entries(FLAG_VARIABLES))
      if (values[flag as keyof typeof FLAG_VARIABLES] !== undefined)
        message = message.replace(variable, `--${flag}`);
    throw new ConfigError(message, { cause: err });
  }
  return {
    dryRun: values["dry-run"] ?? false,
    settings,
    timeoutMs: envDurationMs({ "--timeout": values.timeout }, "--timeout", 60_000, 1_000, 3_600_000),
    databaseUrl: databaseUrlFrom(env),
  };
}

/** "7d", "36h", "90m": a retention as an operator writes it. */
function age(ms: number): string {
  for (const [unit, size] of [
    ["d", 86_400_000],
    ["h", 3_600_000],
    ["m", 60_000],
  ] as const)
    if (ms % size === 0) return `${ms / size}${unit}`;
  return `${ms / 1000}s`;
}

/** One line per table: rows, and before which time they were recorded or finished. */
function table(rows: Record<RetentionTable, number>, cutoffs: { timers: Date; audit_events: Date }): string {
  const line = (name: string, n: number, before: Date) =>
    `  ${name.padEnd(15)} ${String(n).padStart(10)}   before ${before.toISOString()}`;
  return [
    line("timers", rows.timers, cutoffs.timers),
    line("timer_attempts", rows.timer_attempts, cutoffs.timers),
    line("audit_events", rows.audit_events, cutoffs.audit_events),
  ].join("\n");
}

/** Who holds the retention lock now (application_name, pid), for the refusal message. */
async function lockHolder(pool: pg.Pool): Promise<string> {
  const { rows } = await pool.query<{ who: string }>(
    `SELECT coalesce(nullif(a.application_name, ''), 'unnamed') || ' (pid ' || a.pid || ')' AS who
       FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::int::oid AND l.objid = $2::int::oid
        AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    [...RETENTION_LOCK_KEYS],
  );
  return rows[0]?.who ?? "another session";
}

async function retain(pool: pg.Pool, opts: Options, signal: AbortSignal): Promise<number> {
  const { settings } = opts;
  const ages = `finished timers older than ${age(settings.finishedTimersMs)}, audit events older than ${age(settings.auditEventsMs)}`;
  if (opts.dryRun) {
    const timers = await cutoffBefore(pool, settings.finishedTimersMs);
    const audit = await cutoffBefore(pool, settings.auditEventsMs);
    const t = await previewFinishedTimers(pool, timers.exact);
    const a = await previewAuditEvents(pool, audit.exact);
    console.log(`retention dry run (${ages}): would delete, nothing deleted`);
    console.log(
      table(
        { timers: t.timers, timer_attempts: t.attempts, audit_events: a },
        { timers: timers.cutoff, audit_events: audit.cutoff },
      ),
    );
    return 0;
  }
  const session = await pool.connect();
  try {
    if (!(await tryRetentionLock(session))) {
      console.error(
        `retention: the retention lock is held by ${await lockHolder(pool)} (a dispatcher's run, or another of these); nothing deleted. Try again when it is done.`,
      );
      return 1;
    }
    try {
      let batches = 0;
      const run = await runRetention(session, {
        ages: settings,
        batchSize: settings.batchSize,
        pauseMs: settings.batchPauseMs,
        signal,
        onBatch: () => {
          if (++batches % 100 === 0) console.error(`retention: ${batches} batches so far`);
        },
      });
      console.log(
        `retention (${ages}, batches of ${settings.batchSize}): deleted in ${run.batches} batches${run.stopped ? ", stopped early by Ctrl-C" : ""}`,
      );
      console.log(table(run.deleted, run.cutoffs));
      return 0;
    } finally {
      await releaseRetentionLock(session);
    }
  } finally {
    session.release();
  }
}

async function execute(opts: Options): Promise<number> {
  const pool = createPool(opts.databaseUrl, 2, "ops:retention", opts.timeoutMs);
  pool.on("error", () => {}); // an idle connection's failure surfaces on the next query
  const stop = new AbortController();
  const onSigint = () => stop.abort();
  process.once("SIGINT", onSigint);
  try {
    return await retain(pool, opts, stop.signal);
  } catch (err) {
    console.error(`retention: ${redactCredentials(err instanceof Error ? err.message : String(err))}`);
    return 2;
  } finally {
    process.off("SIGINT", onSigint);
    await pool.end();
  }
}

export const command: OpsCommand<Options> = { summary, help: HELP, parse: parseOptions, execute };
