// The SQL of UpdateTimer: one conditional UPDATE, so the check (still SCHEDULED or PAUSED, at
// the expected version) and the change are one step that a concurrent claim cannot slip into.
// The dispatcher's claim is fenced by the version this raises (dispatch-store.ts claimTimers):
// whichever of the two commits first wins, and the other finds the row changed.
import type pg from "pg";
import { callbackToJson, State, TIMER_COLUMNS, type TimerRow } from "../../shared/src/timer-model.js";
import { getTimer } from "./timer-store.js";
import type { TimerPatch } from "./update-timer.js";

/** What an update came to. */
export type UpdateOutcome =
  | { updated: true; row: TimerRow }
  | { updated: false; reason: "not_found" }
  /** Claimed for delivery (FIRING) or finished: `row` says its state. */
  | { updated: false; reason: "not_updatable"; row: TimerRow }
  /** Updatable, but at another version than the caller expected. */
  | { updated: false; reason: "stale_version"; row: TimerRow }
  /** It kept changing between the UPDATE and the read: the caller may retry. */
  | { updated: false; reason: "contended" };

// A fire time change moves the next attempt. For a timer that has not fired yet that is its
// fire time too; a timer waiting for a retry (attempt > 0) has fired already, so the change
// moves only its pending retry: fire_at stays the time it first fired for (what its deliveries
// carry and its lateness was judged against), and its attempts so far still count.
const UPDATE_TIMER_SQL = `-- update_timer
     UPDATE timers
        SET version = version + 1,
            fire_at = CASE WHEN $4::timestamptz IS NOT NULL AND attempt = 0 THEN $4::timestamptz ELSE fire_at END,
            next_attempt_at = coalesce($4::timestamptz, next_attempt_at),
            callback = coalesce($5::jsonb, callback),
            payload = coalesce($6::bytea, payload),
            labels = coalesce($7::jsonb, labels),
            max_attempts = coalesce($8::int, max_attempts),
            initial_backoff_ms = coalesce($9::int, initial_backoff_ms),
            max_backoff_ms = coalesce($10::int, max_backoff_ms),
            backoff_multiplier = coalesce($11::float8, backoff_multiplier),
            max_lateness_ms = CASE WHEN $12::boolean THEN $13::bigint ELSE max_lateness_ms END,
            lateness_policy = CASE WHEN $12::boolean THEN $14::smallint ELSE lateness_policy END
      WHERE shard = $3 AND group_id = $1 AND timer_id = $2
        AND state IN (${State.Scheduled}, ${State.Paused})
        AND ($15::bigint = 0 OR version = $15::bigint)
      RETURNING ${TIMER_COLUMNS}`;

// A row read after the UPDATE matched nothing may since have become updatable again (a retry
// recorded, a pause lifted): the UPDATE is tried again a few times before answering.
const ATTEMPTS = 3;

/**
 * Applies `patch` to the timer if it is SCHEDULED or PAUSED and (when expected) at the expected
 * version, raising its version by one; otherwise says why not.
 */
export async function updateTimer(pool: pg.Pool, patch: TimerPatch, shard: number): Promise<UpdateOutcome> {
  const params = [
    patch.groupId,
    patch.timerId,
    shard,
    patch.fireAtMs === undefined ? null : new Date(patch.fireAtMs),
    patch.callback ? JSON.stringify(callbackToJson(patch.callback)) : null,
    patch.payload ? Buffer.from(patch.payload) : null,
    patch.labels ? JSON.stringify(patch.labels) : null,
    patch.retry?.maxAttempts ?? null,
    patch.retry?.initialBackoffMs ?? null,
    patch.retry?.maxBackoffMs ?? null,
    patch.retry?.multiplier ?? null,
    patch.lateness !== undefined,
    patch.lateness?.maxLatenessMs ?? null,
    patch.lateness?.policy ?? null,
    patch.expectedVersion.toString(),
  ];
  for (let attempt = 1; ; attempt++) {
    const { rows } = await pool.query<TimerRow>(UPDATE_TIMER_SQL, params);
    if (rows[0]) return { updated: true, row: rows[0] };
    const row = await getTimer(pool, patch.groupId, patch.timerId, shard);
    if (!row) return { updated: false, reason: "not_found" };
    if (row.state !== State.Scheduled && row.state !== State.Paused)
      return { updated: false, reason: "not_updatable", row };
    if (patch.expectedVersion !== 0n && BigInt(row.version) !== patch.expectedVersion)
      return { updated: false, reason: "stale_version", row };
    if (attempt >= ATTEMPTS) return { updated: false, reason: "contended" };
  }
}
