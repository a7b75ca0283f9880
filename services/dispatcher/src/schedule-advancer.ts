// The schedule advancer, in every dispatcher: keeps "while a schedule is active, its next firing
// exists in Postgres". Every SCHEDULE_POLL_INTERVAL it takes active schedules whose latest firing
// is due within SCHEDULE_LEAD (FOR UPDATE SKIP LOCKED, so the dispatchers share the work without
// waiting on each other) and, in the same transaction, creates their following firings (missed
// ones by the missed-firing policy) and moves each schedule on. Nothing is announced: the
// dispatchers' NATS user may not publish on the shard subjects (infra/nats/nats.conf), and need
// not, since SCHEDULE_LEAD is longer than LOOKAHEAD plus the polls (config.ts checks it), so a
// firing is stored before its owner's window poll reaches its fire time. Missed firings created
// after downtime are overdue, which the owner's poll loads too.
//
// It also ends firings that OVERLAP_POLICY_SKIP holds back (the claim refuses to start them while
// an earlier firing of their schedule is in progress: dispatch-store.ts) as CANCELLED, naming
// the firing in progress, and counts them as skipped.

import type pg from "pg";
import type { Logger } from "../../shared/src/logger.js";
import { inTransaction } from "../../shared/src/db.js";
import { planFirings } from "../../shared/src/schedule-plan.js";
import {
  SCHEDULE_COLUMNS,
  ScheduleRowState,
  type ScheduleRow,
  insertFirings,
  recordPlan,
  rulesOfRow,
} from "../../shared/src/schedule-rows.js";
import { State } from "../../shared/src/timer-model.js";
import type { ScheduleAdvanceSettings } from "./config.js";

/** At most this many firings per schedule per transaction; the next tick goes on. */
const MAX_FIRINGS_PER_SCHEDULE = 1000;
/** How long a schedule whose stored spec no longer validates waits before it is tried again. */
const BROKEN_RETRY_MS = 3_600_000;

export interface AdvancerOptions {
  pool: pg.Pool;
  shardCount: number;
  settings: ScheduleAdvanceSettings;
  log: Logger;
}

/** What one tick did. */
export interface AdvanceTick {
  schedules: number;
  firings: number;
  overlapCancelled: number;
}

export class ScheduleAdvancer {
  readonly #opts: AdvancerOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #stopped = false;

  constructor(opts: AdvancerOptions) {
    this.#opts = opts;
  }

  start(): void {
    this.#schedule(0);
  }

  /** Stops after the current tick. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    await this.#running;
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#running = this.tick()
        .then(() => undefined)
        .catch((err: unknown) =>
          this.#opts.log.warn({ err }, "schedule advancer: tick failed; retrying next poll"),
        )
        .finally(() => this.#schedule(this.#opts.settings.pollIntervalMs));
    }, delayMs);
    this.#timer.unref();
  }

  /** Advances every schedule due within the lead (batch by batch) and ends overlapping firings. */
  async tick(): Promise<AdvanceTick> {
    const total: AdvanceTick = { schedules: 0, firings: 0, overlapCancelled: 0 };
    for (;;) {
      if (this.#stopped) break;
      const batch = await this.#advanceBatch();
      total.schedules += batch.schedules;
      total.firings += batch.firings;
      if (batch.schedules < this.#opts.settings.batch) break;
    }
    total.overlapCancelled = await this.#cancelOverlapping();
    return total;
  }

  async #advanceBatch(): Promise<{ schedules: number; firings: number }> {
    const { pool, shardCount, settings, log } = this.#opts;
    return inTransaction(pool, async (client) => {
      // Postgres's clock, as the claims judge "due" by it.
      const { rows } = await client.query<ScheduleRow & { now_ms: string }>(
        `-- advance_schedules
         SELECT ${SCHEDULE_COLUMNS}, (extract(epoch FROM now()) * 1000)::bigint AS now_ms FROM schedules
          WHERE state = ${ScheduleRowState.Active} AND advance_at <= now() + make_interval(secs => $1::float8 / 1000)
          ORDER BY advance_at
          LIMIT $2
          FOR UPDATE SKIP LOCKED`,
        [settings.leadMs, settings.batch],
      );
      let firings = 0;
      for (const row of rows) {
        const nowMs = Number(row.now_ms);
        let rules: ReturnType<typeof rulesOfRow>;
        try {
          rules = rulesOfRow(row);
        } catch (err) {
          log.error(
            { err, group: row.group_id, schedule: row.schedule_id },
            "schedule advancer: stored spec does not validate",
          );
          await client.query(
            "UPDATE schedules SET advance_at = now() + make_interval(secs => $3::float8 / 1000) WHERE group_id = $1 AND schedule_id = $2",
            [row.group_id, row.schedule_id, BROKEN_RETRY_MS],
          );
          continue;
        }
        const plan = planFirings({
          scheduleId: row.schedule_id,
          rules,
          lastInstantMs: row.last_instant?.getTime() ?? null,
          firstFromMs: rules.startMs ?? row.create_time.getTime(),
          nowMs,
          leadMs: settings.leadMs,
          maxFirings: MAX_FIRINGS_PER_SCHEDULE,
        });
        const inserted = await insertFirings(
          client,
          { groupId: row.group_id, scheduleId: row.schedule_id, firing: row.firing },
          plan.firings,
          shardCount,
        );
        await recordPlan(
          client,
          { groupId: row.group_id, scheduleId: row.schedule_id, version: row.version },
          plan,
          false,
        );
        firings += inserted.length;
      }
      return { schedules: rows.length, firings };
    });
  }

  /**
   * Ends as CANCELLED the due firings of OVERLAP_POLICY_SKIP schedules that an earlier firing
   * still in progress (FIRING, or SCHEDULED for a retry) holds back, and counts them skipped.
   */
  async #cancelOverlapping(): Promise<number> {
    const { rows } = await this.#opts.pool.query<{ n: string }>(
      `-- cancel_overlapping_firings
       WITH blocked AS (
         SELECT t.shard, t.group_id, t.timer_id, t.schedule_id,
                (SELECT p.timer_id FROM timers p
                  WHERE p.group_id = t.group_id AND p.schedule_id = t.schedule_id
                    AND p.fire_at <= t.fire_at AND p.timer_id < t.timer_id
                    AND (p.state = ${State.Firing} OR (p.state = ${State.Scheduled} AND p.attempt > 0))
                  ORDER BY p.fire_at DESC LIMIT 1) AS busy
           FROM schedules s
           JOIN timers t ON t.group_id = s.group_id AND t.schedule_id = s.schedule_id
          WHERE s.overlap_skip AND t.state = ${State.Scheduled} AND t.attempt = 0 AND t.next_attempt_at <= now()
          LIMIT 1000
       ),
       cancelled AS (
         UPDATE timers x
            SET state = ${State.Cancelled}, finish_time = now(),
                last_error = 'overlap_policy SKIP: firing ' || b.busy || ' is still in progress'
           FROM blocked b
          WHERE b.busy IS NOT NULL AND x.shard = b.shard AND x.group_id = b.group_id AND x.timer_id = b.timer_id
            AND x.state = ${State.Scheduled} AND x.attempt = 0
          RETURNING x.group_id, x.schedule_id
       ),
       counted AS (
         UPDATE schedules s SET skipped_firings = s.skipped_firings + c.n
           FROM (SELECT group_id, schedule_id, count(*) AS n FROM cancelled GROUP BY 1, 2) c
          WHERE s.group_id = c.group_id AND s.schedule_id = c.schedule_id
          RETURNING c.n
       )
       SELECT coalesce(sum(n), 0)::bigint AS n FROM counted`,
    );
    const n = Number(rows[0]?.n ?? 0);
    if (n > 0)
      this.#opts.log.info({ firings: n }, "schedule advancer: cancelled firings held back by an overlap");
    return n;
  }
}
