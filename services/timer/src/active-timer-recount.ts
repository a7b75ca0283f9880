// Recounts the active (SCHEDULED + FIRING + PAUSED) timers of every group, and reads the groups' own
// limits, every ACTIVE_TIMERS_REFRESH: one scan that feeds both active_timers_total and the
// group quota, so the table is counted once per interval whatever uses the counts.
import type pg from "pg";
import type { Logger } from "../../shared/src/logger.js";
import { State } from "../../shared/src/timer-model.js";
import type { Recount } from "./group-quota.js";

/** Something fed by the recount: told when a recount starts, and given its result (undefined when it failed). */
export interface RecountListener {
  recountStarting(): (result: Recount | undefined) => void;
}

/** Counts once now (so the first creates are checked against real counts), then every `everyMs`; returns how to stop. */
export async function startActiveTimerRecount(
  pool: pg.Pool,
  log: Logger,
  everyMs: number,
  listeners: RecountListener[],
): Promise<{ stop(): void }> {
  let running = false;
  const recount = async () => {
    if (running) return; // a slow count is not stacked on itself
    running = true;
    const done = listeners.map((l) => l.recountStarting());
    let result: Recount | undefined;
    try {
      const [active, overrides] = await Promise.all([
        pool.query<{ group_id: string; n: string }>(
          `-- active_timers_by_group
           SELECT group_id, count(*)::bigint AS n FROM timers WHERE state IN (${State.Scheduled}, ${State.Firing}, ${State.Paused}) GROUP BY group_id`,
        ),
        pool.query<{ group_id: string; max_active_timers: string }>(
          `-- group_quota_overrides
           SELECT group_id, max_active_timers FROM group_quotas`,
        ),
      ]);
      result = {
        activeByGroup: new Map(active.rows.map((r) => [r.group_id, Number(r.n)])),
        overrides: new Map(overrides.rows.map((r) => [r.group_id, Number(r.max_active_timers)])),
      };
    } catch (err) {
      log.warn({ err }, "could not recount active timers per group");
    } finally {
      for (const d of done) d(result);
      running = false;
    }
  };
  await recount();
  const timer = setInterval(() => void recount(), everyMs);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
