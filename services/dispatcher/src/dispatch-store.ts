// The dispatcher's SQL: find due timers, claim them, record what each delivery did, and take
// back claims whose holder died. Claims and completions are batched: one statement for many
// timers.
import { overlapClearSql } from "../../shared/src/schedule-rows.js";
import type pg from "pg";
import {
  CALLBACK_DESTINATION_COLUMNS,
  destinationOfParts,
  type CallbackDestinationParts,
} from "../../shared/src/callback-destination.js";
import { groupPausedSql, lagSecondsSql, oldestDueOfShardSql } from "../../shared/src/shard-lag.js";
import { FINISHED_STATES, State, type TimerRow } from "../../shared/src/timer-model.js";
import { intervalOfMsSql } from "../../shared/src/time.js";
import type { DueTimer } from "./due-queue.js";
import type { SchedulerStore } from "./scheduler-deps.js";

/** A timer claimed for delivery, with what the delivery needs. */
export type ClaimedTimer = Pick<
  TimerRow,
  | "group_id"
  | "timer_id"
  | "shard"
  | "fire_at"
  | "next_attempt_at"
  | "attempt"
  | "callback"
  | "payload"
  | "labels"
  | "max_attempts"
  | "initial_backoff_ms"
  | "max_backoff_ms"
  | "backoff_multiplier"
  | "version"
  | "max_lateness_ms"
  | "lateness_policy"
  | "schedule_id"
  | "fired_time"
> & { create_traceparent: string | null };

/** The outcome of one delivery attempt, to be written back. */
export interface Completion {
  groupId: string;
  timerId: string;
  shard: number;
  attempt: number;
  startedAt: Date;
  finishedAt: Date;
  /** expired: not delivered, its lateness contract (SKIP) was exceeded (lateness-contract.ts). */
  outcome: "succeeded" | "retry" | "failed" | "expired";
  nextAttemptAt: Date | null;
  error: string | null;
  /** Trace id of the traceparent sent to the receiver; null when nothing was sent (expired). */
  traceId: string | null;
}

/** Position in (next_attempt_at, group_id, timer_id) order: where the window loader stopped. */
export interface LoadCursor {
  atMs: number;
  groupId: string;
  timerId: string;
}

/** What a load reads of a due timer: its key, shard, due time and the parts of its callback that name its destination. */
interface DueRow {
  group_id: string;
  timer_id: string;
  shard: number;
  next_attempt_at: Date;
  /** bigint: pg returns it as a string. */
  version: string;
  http_url: string | null;
  grpc_target: string | null;
  nats: boolean;
}

/** The states an outcome may end a timer in for good: they get a finish_time. */
const FINISHED = FINISHED_STATES.join(", ");

const DUE_COLUMNS = `group_id, timer_id, shard, next_attempt_at, version, ${CALLBACK_DESTINATION_COLUMNS}`;

function toDue(r: DueRow): DueTimer {
  const parts: CallbackDestinationParts = { httpUrl: r.http_url, grpcTarget: r.grpc_target, nats: r.nats };
  return {
    groupId: r.group_id,
    timerId: r.timer_id,
    shard: r.shard,
    dueMs: r.next_attempt_at.getTime(),
    destination: destinationOfParts(parts),
    version: Number(r.version),
  };
}

// The due reads go shard by shard: a LATERAL join over the owned shards, each an index scan of
// that shard's range of timers_due_idx (shard, next_attempt_at) in due order that stops after
// `perShard` rows, merged by a sort. With "shard = ANY(owned)" Postgres would read every due row
// of the range in every owned shard and sort them all: under a backlog of a million, each page
// of 2,000 would read the million. Each shard's scan stops at its share instead (a little more
// than limit / shards), so a statement reads at most about 1.25 x limit + 16 x shards rows,
// whatever the size of the table or of the backlog (bench/scale.ts shows the plans).
//
// A shard that filled its share may have more rows after its last, so the merged rows are in
// order only up to the earliest such last row (the cut); the statement returns those, and
// `complete` says whether there was no cut. While there was one and the page is not full, the
// next statement goes on from the last row returned, at its exact time (next_attempt_at::text:
// a millisecond Date would read rows of the same millisecond again, or forever).

function dueSql(name: string, bound: string, filter = ""): string {
  return `-- ${name}
     WITH x AS MATERIALIZED (
       SELECT w.* FROM unnest($1::int[]) AS s(shard)
        CROSS JOIN LATERAL (
          SELECT ${DUE_COLUMNS}, next_attempt_at::text AS due_at FROM timers
           WHERE state = ${State.Scheduled} AND timers.shard = s.shard
             AND (next_attempt_at, group_id, timer_id) > ($2::timestamptz, $3::text, $4::text)
             AND ${bound} ${filter}
           ORDER BY next_attempt_at, group_id, timer_id
           LIMIT $5) w
     ), full_last AS (
       SELECT DISTINCT ON (shard) next_attempt_at, group_id, timer_id FROM x
        WHERE shard IN (SELECT shard FROM x GROUP BY shard HAVING count(*) >= $5)
        ORDER BY shard, next_attempt_at DESC, group_id DESC, timer_id DESC
     ), cut AS (
       SELECT next_attempt_at, group_id, timer_id FROM full_last ORDER BY 1, 2, 3 LIMIT 1
     )
     SELECT x.*, NOT EXISTS (SELECT 1 FROM cut) AS complete FROM x
      WHERE NOT EXISTS (SELECT 1 FROM cut)
         OR (x.next_attempt_at, x.group_id, x.timer_id) <= (SELECT next_attempt_at, group_id, timer_id FROM cut)
      ORDER BY x.next_attempt_at, x.group_id, x.timer_id
      LIMIT $6`;
}

/** Runs a dueSql statement until `limit` rows or the end of the range; `bound` is its $7. */
async function readDue(
  pool: pg.Pool,
  sql: string,
  shards: number[],
  after: LoadCursor,
  limit: number,
  bound: unknown,
): Promise<DueTimer[]> {
  if (shards.length === 0 || limit <= 0) return [];
  const perShard = Math.min(limit, Math.ceil((1.25 * limit) / shards.length) + 16);
  const out: DueTimer[] = [];
  let from: [string, string, string] = [new Date(after.atMs).toISOString(), after.groupId, after.timerId];
  for (;;) {
    const { rows } = await pool.query<DueRow & { due_at: string; complete: boolean }>(sql, [
      shards,
      ...from,
      perShard,
      limit - out.length,
      bound,
    ]);
    for (const r of rows) out.push(toDue(r));
    const last = rows.at(-1);
    if (!last || last.complete || out.length >= limit) return out;
    from = [last.due_at, last.group_id, last.timer_id];
  }
}

const LOAD_WINDOW_SQL = dueSql("load_window", "next_attempt_at <= $7::timestamptz");

const LOAD_OVERDUE_SQL = dueSql(
  "load_overdue",
  `next_attempt_at <= now() - ${intervalOfMsSql("$7")}`,
  `AND NOT ${groupPausedSql("timers.group_id")}`,
);

/**
 * Scheduled timers of the given shards due after `after` and at or before `untilMs`, in due
 * order, at most `limit`: the next slice of the lookahead window.
 */
export function loadWindow(
  pool: pg.Pool,
  shards: number[],
  after: LoadCursor,
  untilMs: number,
  limit: number,
): Promise<DueTimer[]> {
  return readDue(pool, LOAD_WINDOW_SQL, shards, after, limit, new Date(untilMs));
}

/**
 * Scheduled timers of the given shards that are overdue by more than `graceMs`, oldest first,
 * after `after` in (next_attempt_at, group_id, timer_id) order: the backlog after downtime, and
 * anything whose announcement was lost. The cursor lets a pass move past overdue timers the
 * dispatcher already holds unclaimed (parked by fair delivery) instead of reading them again.
 */
export function loadOverdue(
  pool: pg.Pool,
  shards: number[],
  graceMs: number,
  after: LoadCursor,
  limit: number,
): Promise<DueTimer[]> {
  return readDue(pool, LOAD_OVERDUE_SQL, shards, after, limit, graceMs);
}

/**
 * Atomically moves the given timers from SCHEDULED to FIRING for this dispatcher, if they are
 * still scheduled, due within `leadMs`, and their shard's lease is ours at the given epoch
 * (`epochs[i]` for `timers[i]`), and it is still at the version held (`DueTimer.version`; 0
 * claims any). A timer another dispatcher claimed, or that was cancelled, rescheduled or
 * updated since it was loaded or announced, or whose shard changed hands, is simply not
 * returned: that is what makes a firing happen once, and never at a time an update replaced.
 */
export async function claimTimers(
  pool: pg.Pool,
  owner: string,
  claimOwner: string,
  timers: DueTimer[],
  epochs: bigint[],
  leadMs: number,
  claimTtlMs: number,
): Promise<ClaimedTimer[]> {
  if (timers.length === 0) return [];
  const { rows } = await pool.query<ClaimedTimer>(
    `-- claim_timers
     UPDATE timers t
        SET state = ${State.Firing},
            attempt = t.attempt + 1,
            claim_owner = $7,
            claim_expires_at = now() + ${intervalOfMsSql("$5")},
            fired_time = coalesce(t.fired_time, greatest(now(), t.next_attempt_at))
       FROM unnest($2::text[], $3::text[], $6::bigint[], $8::int[], $9::bigint[]) AS k(g, id, epoch, shard, version),
            shard_leases l
      WHERE t.shard = k.shard AND t.group_id = k.g AND t.timer_id = k.id
        -- Joining the lease on k.shard (not only through t) gives the planner one lease row per
        -- timer whatever it estimates for owner/expiry; otherwise it may pair every timer with
        -- every lease and filter afterwards (batch x shard-count lookups per claim).
        AND l.shard = k.shard
        AND t.state = ${State.Scheduled}
        -- The version fence: an UpdateTimer that committed first raised it, so what we hold is
        -- the old fire time, payload or callback; the update's announcement brings the new one.
        -- 0 is an entry from an announcer that predates versions: whatever version is stored.
        AND (k.version = 0 OR t.version = k.version)
        -- "+ interval '0'" keeps this test out of timers_due_idx: combined with the primary-key
        -- lookup in a BitmapAnd, that index would be scanned over every due row once per key,
        -- which under a backlog turns a millisecond claim into a minute.
        AND t.next_attempt_at + interval '0' <= now() + ${intervalOfMsSql("$4")}
        -- The fence: only while we hold the shard's lease, at the epoch we believe we hold.
        AND l.owner = $1 AND l.epoch = k.epoch
        AND EXISTS (SELECT 1 FROM dispatcher_leases d WHERE d.owner = $1 AND d.expires_at > now())
        -- A paused group's timers wait (they fire, oldest first, once it is resumed).
        AND NOT ${groupPausedSql("t.group_id")}
        -- OVERLAP_POLICY_SKIP: a firing waits while an earlier one of its schedule is in progress.
        AND ${overlapClearSql("t")}
      RETURNING t.group_id, t.timer_id, t.shard, t.fire_at, t.next_attempt_at, t.attempt, t.callback, t.payload,
                t.labels, t.max_attempts, t.initial_backoff_ms, t.max_backoff_ms, t.backoff_multiplier,
                t.create_traceparent, t.version, t.max_lateness_ms, t.lateness_policy, t.schedule_id,
                t.fired_time`,
    [
      owner,
      timers.map((t) => t.groupId),
      timers.map((t) => t.timerId),
      leadMs,
      claimTtlMs,
      epochs.map(String),
      claimOwner,
      timers.map((t) => t.shard),
      timers.map((t) => String(t.version)),
    ],
  );
  return rows;
}

/**
 * Writes back a batch of delivery outcomes and records each attempt, in one statement. Only
 * claims still held by this process (`claimOwner`) for that attempt are changed, and only
 * those attempts are recorded: a claim taken back after its deadline (reclaimExpired) was
 * recorded as abandoned by the dispatcher that took it, and its late outcome is not history.
 * Returns how many outcomes were applied.
 */
export async function completeAttempts(
  pool: pg.Pool,
  dispatcherId: string,
  claimOwner: string,
  done: Completion[],
): Promise<number> {
  if (done.length === 0) return 0;
  const stateOf = {
    succeeded: State.Succeeded,
    retry: State.Scheduled,
    failed: State.Failed,
    expired: State.Expired,
  } as const;
  const { rows } = await pool.query<{ n: string }>(
    `-- complete_attempts
     WITH c AS (
       SELECT * FROM unnest($2::text[], $3::text[], $4::int[], $5::smallint[], $6::timestamptz[], $7::text[],
                            $8::timestamptz[], $9::timestamptz[], $10::text[], $12::int[], $13::text[])
         AS c(g, id, attempt, state, next_at, error, started_at, finished_at, outcome, shard, trace_id)
     ), u AS (
       UPDATE timers t
          SET state = c.state,
              next_attempt_at = coalesce(c.next_at, t.next_attempt_at),
              last_error = coalesce(c.error, t.last_error),
              finish_time = CASE WHEN c.state IN (${FINISHED}) THEN c.finished_at END,
              claim_owner = NULL,
              claim_expires_at = NULL
         FROM c
        WHERE t.shard = c.shard AND t.group_id = c.g AND t.timer_id = c.id AND t.attempt = c.attempt
          AND t.state = ${State.Firing} AND t.claim_owner = $11
       RETURNING t.shard, t.group_id, t.timer_id, t.attempt
     ), a AS (
       INSERT INTO timer_attempts (shard, group_id, timer_id, attempt, dispatcher_id, started_at, finished_at, outcome, error, trace_id)
       SELECT c.shard, c.g, c.id, c.attempt, $1, c.started_at, c.finished_at, c.outcome, c.error, c.trace_id
         FROM c JOIN u ON u.shard = c.shard AND u.group_id = c.g AND u.timer_id = c.id AND u.attempt = c.attempt
     )
     SELECT count(*) AS n FROM u`,
    [
      dispatcherId,
      done.map((d) => d.groupId),
      done.map((d) => d.timerId),
      done.map((d) => d.attempt),
      done.map((d) => stateOf[d.outcome]),
      done.map((d) => d.nextAttemptAt),
      done.map((d) => d.error),
      done.map((d) => d.startedAt),
      done.map((d) => d.finishedAt),
      done.map((d) => d.outcome),
      claimOwner,
      done.map((d) => d.shard),
      done.map((d) => d.traceId),
    ],
  );
  return Number(rows[0]!.n);
}

/**
 * Returns to SCHEDULED (due now) the timers of the given shards whose claim passed its delivery
 * deadline (claim_expires_at: claim time + callback timeout + a margin) while the process that
 * made it is gone. The interrupted attempt is recorded as abandoned.
 *
 * This is the only way a claim is taken back, also right after a takeover: the previous owner
 * may only have stalled (GC, CPU starvation, a slow Postgres) with its deliveries in flight.
 * If it wakes before the deadline it renews its dispatcher lease and records its outcomes
 * (its claims are still its own); re-delivering them at the takeover would deliver every one
 * of them twice. A process that really died has its claims delivered again once their
 * deadline passed, at least once, and the idempotency key lets the receiver see the repeat.
 */
export async function reclaimExpired(
  pool: pg.Pool,
  owner: string,
  shards: number[],
  limit: number,
): Promise<DueTimer[]> {
  const { rows } = await pool.query<DueRow>(
    `-- reclaim_expired
     WITH x AS (
       SELECT shard, group_id, timer_id FROM timers
        WHERE state = ${State.Firing} AND claim_expires_at < now() AND shard = ANY($1::int[])
          -- Taken back only when the claiming process is gone: its dispatcher's lease expired,
          -- or that dispatcher restarted since (another incarnation holds the lease). A live
          -- dispatcher under load may hold a claim past its deadline; taking it back would
          -- deliver that timer twice. A claim over five minutes past its deadline is taken back
          -- anyway, as a safety net.
          AND (NOT EXISTS (SELECT 1 FROM dispatcher_leases d
                            WHERE d.owner = split_part(timers.claim_owner, '#', 1) AND d.expires_at > now()
                              AND (d.incarnation IS NULL OR d.incarnation = timers.claim_owner))
               OR claim_expires_at < now() - interval '5 minutes')
          AND shard IN (SELECT shard FROM shard_leases WHERE owner = $3)
          AND EXISTS (SELECT 1 FROM dispatcher_leases d WHERE d.owner = $3 AND d.expires_at > now())
        ORDER BY claim_expires_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
     ), u AS (
       UPDATE timers t
          SET state = ${State.Scheduled}, next_attempt_at = now(),
              last_error = 'delivery abandoned: ' || coalesce(t.claim_owner, '?') || ' recorded no outcome by the claim''s deadline',
              claim_owner = NULL, claim_expires_at = NULL
         FROM x WHERE t.shard = x.shard AND t.group_id = x.group_id AND t.timer_id = x.timer_id
       RETURNING t.group_id, t.timer_id, t.shard, t.next_attempt_at, t.attempt, t.last_error, t.callback, t.version
     ), a AS (
       INSERT INTO timer_attempts (shard, group_id, timer_id, attempt, dispatcher_id, started_at, finished_at, outcome, error)
       SELECT shard, group_id, timer_id, attempt, $3, now(), now(), 'abandoned', last_error FROM u
     )
     SELECT ${DUE_COLUMNS} FROM u`,
    [shards, limit, owner],
  );
  return rows.map(toDue);
}

/**
 * Lag of each of the given shards in seconds: now minus its oldest due, unfired fire time
 * (paused groups left out, shard-lag.ts).
 */
export async function shardLag(pool: pg.Pool, shards: number[]): Promise<Map<number, number>> {
  const { rows } = await pool.query<{ shard: number; lag: number }>(
    `-- shard_lag_owned
     SELECT s.shard, ${lagSecondsSql("d.oldest")}::float8 AS lag
       FROM unnest($1::int[]) AS s(shard)
       -- The first entry of each shard's due range, not every due row.
       CROSS JOIN LATERAL (SELECT ${oldestDueOfShardSql("s.shard")} AS oldest) d
      WHERE d.oldest IS NOT NULL`,
    [shards],
  );
  return new Map(rows.map((r) => [r.shard, r.lag]));
}

/** The statements above bound to one pool and one dispatcher process: the scheduler's store. */
export function pgDispatchStore(pool: pg.Pool, dispatcherId: string, claimOwner: string): SchedulerStore {
  return {
    loadWindow: (shards, after, untilMs, limit) => loadWindow(pool, shards, after, untilMs, limit),
    loadOverdue: (shards, graceMs, after, limit) => loadOverdue(pool, shards, graceMs, after, limit),
    claim: (timers, epochs, leadMs, claimTtlMs) =>
      claimTimers(pool, dispatcherId, claimOwner, timers, epochs, leadMs, claimTtlMs),
    complete: (done) => completeAttempts(pool, dispatcherId, claimOwner, done),
    reclaimExpired: (shards, limit) => reclaimExpired(pool, dispatcherId, shards, limit),
  };
}
