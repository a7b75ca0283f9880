// Automatic retention, in every dispatcher, run by one at a time: every RETENTION_INTERVAL each
// dispatcher tries the retention advisory lock, and the one that gets it deletes the finished
// timers (with their attempts) and audit events older than their ages, in small batches with a
// pause between them (services/shared/src/retention.ts has the SQL, shared with PurgeTimers and
// `npm run ops -- retention`). Whatever the lock, each then refreshes the size and age gauges, so
// every dispatcher exports them and a dead one's last values do not linger alone.
//
// It never stands in the firing path's way: it has a connection of its own (a pool of one, outside
// the dispatcher's pool, so it takes no connection a claim could wait for), every statement is
// bounded by DB_STATEMENT_TIMEOUT, batches are short transactions that skip locked rows, and stop()
// ends a run between two batches.
import type { Meter } from "@opentelemetry/api";
import type pg from "pg";
import { createPool } from "../../shared/src/db.js";
import type { Logger } from "../../shared/src/logger.js";
import {
  databaseSizes,
  oldestRowAges,
  releaseRetentionLock,
  RETENTION_TABLES,
  type RetentionRun,
  type RetentionTable,
  runRetention,
  tryRetentionLock,
} from "../../shared/src/retention.js";
import { GaugeSeries } from "../../shared/src/telemetry/gauge-series.js";
import { counter, observableGauge } from "../../shared/src/telemetry/instruments.js";
import type { RetentionSettings } from "./config.js";

/** What one tick did: deleted (holding the lock), or skipped deleting and why. */
export type RetentionTick = { ran: RetentionRun } | { skipped: "locked" | "disabled" | "stopped" | "failed" };

/** What the loop needs. */
export interface RetentionLoopOptions {
  databaseUrl: string;
  /** application_name of its connection, as pg_stat_activity shows it. */
  applicationName: string;
  statementTimeoutMs: number;
  settings: RetentionSettings;
  meter: Meter;
  log: Logger;
}

/** The gauges' last reading, and when it was taken (performance.now()). */
interface Reading {
  atMs: number;
  ages: Record<RetentionTable, number>;
  databaseBytes: number;
  tables: { table: string; bytes: number }[];
}

/** The retention loop of one dispatcher (see the file comment). */
export class RetentionLoop {
  readonly #opts: RetentionLoopOptions;
  readonly #pool: pg.Pool;
  readonly #stopping = new AbortController();
  #timer: NodeJS.Timeout | undefined;
  #tick: Promise<RetentionTick> | undefined;
  #reading: Reading | undefined;
  #lastRunMs = 0;
  #stopped: Promise<void> | undefined;
  readonly #countDeleted: (rows: Partial<Record<RetentionTable, number>>) => void;

  constructor(opts: RetentionLoopOptions) {
    this.#opts = opts;
    this.#pool = createPool(opts.databaseUrl, 1, opts.applicationName, opts.statementTimeoutMs);
    this.#pool.on("error", (err) => opts.log.warn({ err }, "retention: idle Postgres connection failed"));
    const deleted = counter(opts.meter, "retention_rows_deleted_total");
    // Every table's series from the start, so a rate over it exists before the first deletion.
    for (const table of RETENTION_TABLES) deleted.add(0, { table });
    this.#countDeleted = (rows) => {
      for (const table of RETENTION_TABLES) {
        const n = rows[table];
        if (n) deleted.add(n, { table });
      }
    };
    observableGauge(opts.meter, "retention_last_run_timestamp_seconds").addCallback((r) =>
      r.observe(this.#lastRunMs / 1000),
    );
    // Ages go on growing between two readings: the reading's age plus the time since.
    observableGauge(opts.meter, "retention_oldest_row_age_seconds").addCallback((r) => {
      const reading = this.#reading;
      if (!reading) return;
      const since = (performance.now() - reading.atMs) / 1000;
      for (const table of RETENTION_TABLES) {
        const age = reading.ages[table];
        r.observe(age > 0 ? age + since : 0, { table });
      }
    });
    observableGauge(opts.meter, "database_size_bytes").addCallback((r) => {
      if (this.#reading) r.observe(this.#reading.databaseBytes);
    });
    const tableSeries = new GaugeSeries();
    observableGauge(opts.meter, "database_table_size_bytes").addCallback((r) => {
      if (this.#reading)
        tableSeries.observe(
          r,
          this.#reading.tables.map((t) => ({ attributes: { table: t.table }, value: t.bytes })),
        );
    });
  }

  /** Starts ticking: the first tick now, then RETENTION_INTERVAL after each tick ends. */
  start(): void {
    const next = (delayMs: number) => {
      if (this.#stopping.signal.aborted) return;
      this.#timer = setTimeout(() => {
        void this.tick().finally(() => next(this.#opts.settings.intervalMs));
      }, delayMs);
    };
    next(0);
  }

  /**
   * One tick: a retention run if enabled and no one else holds the lock, then the gauges. Never
   * rejects: a failure (Postgres away) is logged and the next tick tries again.
   */
  tick(): Promise<RetentionTick> {
    // One tick at a time, whoever asks (the timer, a test).
    this.#tick ??= this.#tickOnce().finally(() => (this.#tick = undefined));
    return this.#tick;
  }

  /** Stops ticking: a run in progress ends after its current batch, and the connection closes. */
  stop(): Promise<void> {
    this.#stopped ??= (async () => {
      this.#stopping.abort();
      clearTimeout(this.#timer);
      await this.#tick;
      await this.#pool.end();
    })();
    return this.#stopped;
  }

  async #tickOnce(): Promise<RetentionTick> {
    const { settings, log } = this.#opts;
    if (this.#stopping.signal.aborted) return { skipped: "stopped" };
    let session: pg.PoolClient;
    try {
      session = await this.#pool.connect();
    } catch (err) {
      log.warn({ err }, "retention: Postgres unreachable, trying again at the next interval");
      return { skipped: "failed" };
    }
    let broken: unknown;
    // A connection lost while checked out is emitted on the client (no listener outside the
    // pool: the process would crash); the statement fails with it anyway.
    const onError = (err: Error): void => {
      broken = err;
    };
    session.on("error", onError);
    try {
      const outcome = settings.enabled ? await this.#runLocked(session) : { skipped: "disabled" as const };
      if (!this.#stopping.signal.aborted) await this.#refreshGauges(session);
      return outcome;
    } catch (err) {
      broken = err;
      log.warn({ err }, "retention: run failed, trying again at the next interval");
      return { skipped: "failed" };
    } finally {
      // A connection whose statement failed may be mid-transaction or gone: never reused.
      session.off("error", onError);
      session.release(broken instanceof Error ? broken : undefined);
    }
  }

  async #runLocked(session: pg.PoolClient): Promise<RetentionTick> {
    const { settings, log } = this.#opts;
    if (!(await tryRetentionLock(session))) {
      log.debug("retention: another process holds the retention lock, skipping this run");
      return { skipped: "locked" };
    }
    try {
      const run = await runRetention(session, {
        ages: settings,
        batchSize: settings.batchSize,
        pauseMs: settings.batchPauseMs,
        signal: this.#stopping.signal,
        onBatch: this.#countDeleted,
      });
      if (!run.stopped) this.#lastRunMs = Date.now();
      const total = run.deleted.timers + run.deleted.timer_attempts + run.deleted.audit_events;
      if (total > 0 || run.stopped)
        log.info(
          {
            deleted: run.deleted,
            batches: run.batches,
            cutoffs: run.cutoffs,
            ...(run.stopped ? { stopped: true } : {}),
          },
          "retention: deleted finished timers, attempts and audit events past their retention",
        );
      return { ran: run };
    } finally {
      await releaseRetentionLock(session);
    }
  }

  async #refreshGauges(session: pg.PoolClient): Promise<void> {
    const ages = await oldestRowAges(session);
    const sizes = await databaseSizes(session);
    this.#reading = { atMs: performance.now(), ages, ...sizes };
  }
}
