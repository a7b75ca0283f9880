// The timer service's SQL. Creates from concurrent callers are gathered into one multi-row
// INSERT while the previous one is in flight, so throughput grows with load instead of
// every call paying its own commit; create-queue.ts bounds what waits for a batch.
import type pg from "pg";
import { boundedPageSql, timerColumnsOf, TIMER_BYTES_SQL } from "../../shared/src/page-bytes.js";
import { callbackToJson, State, TIMER_COLUMNS, type TimerRow } from "../../shared/src/timer-model.js";
import { CreateQueue } from "./create-queue.js";
import type { NewTimer } from "./validation.js";
import { timerKey, timerName } from "../../shared/src/timer-id.js";
import { SqlParams } from "../../shared/src/label-selector.js";
import { type TimerSelection, timerSelectionSql } from "../../shared/src/timer-selector.js";

/** A validated timer and the shard it belongs to: what is stored. */
export type ShardedTimer = NewTimer & { shard: number };

/** The key of a stored timer. */
export interface TimerKey {
  groupId: string;
  timerId: string;
  shard: number;
}

/** The outcome of storing a create: the stored row, and whether this call inserted it. */
export interface StoredCreate {
  row: TimerRow;
  created: boolean;
  /** The stored row was made by a different request under the same key. */
  conflict: boolean;
}

/** What a CreateTimers call's statements found: the keys they wrote, and what was there before. */
export interface StoredBatch {
  /** timerKey()s of the timers this call's INSERT wrote. */
  created: Set<string>;
  /** What is stored under the other keys asked about, by timerKey(): replays, conflicts. */
  existing: Map<string, { fireAtMs: number; requestHash: Buffer }>;
}

interface PendingCreate {
  timer: ShardedTimer;
  traceparent: string | undefined;
}

/**
 * Stores new timers in batches; one instance per process. Unary creates are gathered into
 * batches; a CreateTimers call is a batch already and goes in whole, in turn with them, so both
 * share one bound on the statements in flight and on what waits (create-queue.ts).
 */
export class CreateBatcher {
  private readonly queue: CreateQueue<PendingCreate, StoredCreate>;

  constructor(
    private readonly pool: pg.Pool,
    opts: { maxQueued: number; maxBatch?: number; maxConcurrentBatches?: number },
  ) {
    this.queue = new CreateQueue((batch) => insertBatch(pool, batch), {
      maxQueued: opts.maxQueued,
      maxBatch: opts.maxBatch ?? 500,
      // Two statements in flight, not more: each statement has a fixed cost (a commit, a round
      // trip, the event-loop turns to send it and read its answer), so fewer, larger batches
      // store more. Measured with 64 concurrent unary callers: 4 in flight made batches of ~8
      // creates and 1,330 creates/s; 2 made batches of ~13 and 1,930/s (1 was no faster, and
      // two keep one slow statement from holding every create back).
      maxConcurrentBatches: opts.maxConcurrentBatches ?? 2,
    });
  }

  /**
   * Stores one timer (or finds the one already stored under its key). `signal` is the caller's
   * (deadline or cancel): when it aborts before the timer's INSERT starts, it is never stored.
   */
  store(timer: ShardedTimer, traceparent: string | undefined, signal?: AbortSignal): Promise<StoredCreate> {
    return this.queue.add({ timer, traceparent }, signal);
  }

  /**
   * Stores a CreateTimers call's timers (distinct keys) with one INSERT, then reads, with one
   * more statement and only when there are any, what is stored under the keys it did not write
   * and under `alsoFind` (creates the group quota refused: a replay of one is still answered).
   * It waits for a slot like a batch of unary creates, and `signal` works as for store(): when
   * it aborts before the INSERT starts, nothing is stored.
   */
  storeBatch(
    timers: ShardedTimer[],
    traceparent: string | undefined,
    alsoFind: TimerKey[],
    signal?: AbortSignal,
  ): Promise<StoredBatch> {
    return this.queue.runWhole(
      timers.length + alsoFind.length,
      () => storeBatch(this.pool, timers, traceparent, alsoFind),
      signal,
    );
  }
}

/**
 * The INSERT of new timers, shared by unary creates and CreateTimers: every row in one
 * statement; a key stored before is left as it is. For a key that appears twice, the first row
 * is written and the later one left out (ON CONFLICT DO NOTHING sees the row written by the same
 * statement). `returning` names the columns to return of the rows written.
 */
async function insertTimers<R extends pg.QueryResultRow>(
  pool: pg.Pool,
  t: readonly ShardedTimer[],
  traceparents: readonly (string | null)[],
  returning: string,
): Promise<R[]> {
  const { rows } = await pool.query<R>(
    `-- create_timers
     INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, callback, payload, labels,
                         max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash, create_traceparent,
                         max_lateness_ms, lateness_policy)
     SELECT g, t, s, ${State.Scheduled}, f, f, c, p, l, ma, ib, mb, mu, h, tp, ml, lp
       FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[], $5::jsonb[], $6::bytea[], $7::jsonb[],
                   $8::int[], $9::int[], $10::int[], $11::float8[], $12::bytea[], $13::text[], $14::bigint[], $15::smallint[])
            AS x(g, t, s, f, c, p, l, ma, ib, mb, mu, h, tp, ml, lp)
     ON CONFLICT (shard, group_id, timer_id) DO NOTHING
     RETURNING ${returning}`,
    [
      t.map((x) => x.groupId),
      t.map((x) => x.timerId),
      t.map((x) => x.shard),
      t.map((x) => new Date(x.fireAtMs)),
      t.map((x) => JSON.stringify(callbackToJson(x.callback))),
      t.map((x) => Buffer.from(x.payload)),
      t.map((x) => JSON.stringify(x.labels)),
      t.map((x) => x.retry.maxAttempts),
      t.map((x) => x.retry.initialBackoffMs),
      t.map((x) => x.retry.maxBackoffMs),
      t.map((x) => x.retry.multiplier),
      t.map((x) => x.requestHash),
      traceparents,
      t.map((x) => x.lateness.maxLatenessMs),
      t.map((x) => x.lateness.policy),
    ],
  );
  return rows;
}

/** `columns` of the timers stored under `keys` (those that exist). */
async function findTimers<R extends pg.QueryResultRow>(
  pool: pg.Pool,
  keys: readonly TimerKey[],
  columns: string,
): Promise<R[]> {
  const { rows } = await pool.query<R>(
    `-- find_existing_timers
     SELECT ${columns} FROM timers
        WHERE (shard, group_id, timer_id) IN (SELECT * FROM unnest($3::int[], $1::text[], $2::text[]))`,
    [keys.map((k) => k.groupId), keys.map((k) => k.timerId), keys.map((k) => k.shard)],
  );
  return rows;
}

async function insertBatch(
  pool: pg.Pool,
  batch: PendingCreate[],
): Promise<PromiseSettledResult<StoredCreate>[]> {
  type StoredRow = TimerRow & { request_hash: Buffer };
  const columns = `${TIMER_COLUMNS}, request_hash`;
  const rows = await insertTimers<StoredRow>(
    pool,
    batch.map((p) => p.timer),
    batch.map((p) => p.traceparent ?? null),
    columns,
  );
  const stored = new Map<string, StoredRow>();
  for (const r of rows) stored.set(timerKey(r.group_id, r.timer_id), r);

  // Keys this INSERT did not write were stored before (a replay or a conflict): read them.
  const before = batch
    .filter((p) => !stored.has(timerKey(p.timer.groupId, p.timer.timerId)))
    .map((p) => p.timer);
  if (before.length > 0) {
    for (const r of await findTimers<StoredRow>(pool, before, columns))
      stored.set(timerKey(r.group_id, r.timer_id), r);
  }

  // The first request for a key that this INSERT wrote created it; any later one in the same
  // batch, and every request for a key stored before, is compared with the stored row.
  const createdHere = new Set(rows.map((r) => timerKey(r.group_id, r.timer_id)));
  return batch.map((p): PromiseSettledResult<StoredCreate> => {
    const k = timerKey(p.timer.groupId, p.timer.timerId);
    const row = stored.get(k);
    if (!row) {
      // Stored a moment ago and purged since: vanishingly rare; the caller may retry.
      return {
        status: "rejected",
        reason: new Error(
          `timer ${timerName(p.timer.groupId, p.timer.timerId)} vanished between insert and read`,
        ),
      };
    }
    if (createdHere.delete(k)) return { status: "fulfilled", value: { row, created: true, conflict: false } };
    return {
      status: "fulfilled",
      value: { row, created: false, conflict: !row.request_hash.equals(p.timer.requestHash) },
    };
  });
}

// A CreateTimers result needs no more than the key of each timer written (its fire time and
// shard are the request's) and, for the others, the stored fire time and request hash: full
// rows would be read back and parsed for nothing.
async function storeBatch(
  pool: pg.Pool,
  timers: ShardedTimer[],
  traceparent: string | undefined,
  alsoFind: TimerKey[],
): Promise<StoredBatch> {
  const created = new Set<string>();
  if (timers.length > 0) {
    const rows = await insertTimers<{ group_id: string; timer_id: string }>(
      pool,
      timers,
      new Array<string | null>(timers.length).fill(traceparent ?? null),
      "group_id, timer_id",
    );
    for (const r of rows) created.add(timerKey(r.group_id, r.timer_id));
  }
  const existing: StoredBatch["existing"] = new Map();
  const find =
    created.size === timers.length
      ? alsoFind
      : [...timers.filter((t) => !created.has(timerKey(t.groupId, t.timerId))), ...alsoFind];
  if (find.length > 0) {
    const rows = await findTimers<{
      group_id: string;
      timer_id: string;
      fire_at: Date;
      request_hash: Buffer;
    }>(pool, find, "group_id, timer_id, fire_at, request_hash");
    for (const r of rows)
      existing.set(timerKey(r.group_id, r.timer_id), {
        fireAtMs: r.fire_at.getTime(),
        requestHash: r.request_hash,
      });
  }
  return { created, existing };
}

// Every lookup by key names the timer's shard (shardOf(group_id, timer_id, SHARD_COUNT)): it
// leads the primary key (migration 000007).

/** One timer by key with the hash of the request that made it (to tell a replay from a conflict). */
export function findStoredCreate(
  pool: pg.Pool,
  groupId: string,
  timerId: string,
  shard: number,
): Promise<(TimerRow & { request_hash: Buffer }) | undefined> {
  return selectByKey(pool, "find_stored_create", `${TIMER_COLUMNS}, request_hash`, [groupId, timerId, shard]);
}

/** One timer by key. */
export function getTimer(
  pool: pg.Pool,
  groupId: string,
  timerId: string,
  shard: number,
): Promise<TimerRow | undefined> {
  return selectByKey(pool, "get_timer", TIMER_COLUMNS, [groupId, timerId, shard]);
}

// `operation` names the query in database_query_duration_seconds (db-metrics.ts).
async function selectByKey<R extends pg.QueryResultRow>(
  pool: pg.Pool,
  operation: string,
  columns: string,
  key: [groupId: string, timerId: string, shard: number],
): Promise<R | undefined> {
  const { rows } = await pool.query<R>(
    `-- ${operation}
     SELECT ${columns} FROM timers WHERE shard = $3 AND group_id = $1 AND timer_id = $2`,
    key,
  );
  return rows[0];
}

/**
 * Cancels a SCHEDULED or PAUSED (held by a bulk pause) timer. Returns the row after the attempt: CANCELLED if it was cancelled
 * now or before; another state when it could not be; undefined when there is no such timer.
 */
export async function cancelTimer(
  pool: pg.Pool,
  groupId: string,
  timerId: string,
  shard: number,
): Promise<TimerRow | undefined> {
  const { rows } = await pool.query<TimerRow>(
    `-- cancel_timer
     UPDATE timers SET state = ${State.Cancelled}, finish_time = now()
      WHERE shard = $3 AND group_id = $1 AND timer_id = $2 AND state IN (${State.Scheduled}, ${State.Paused})
      RETURNING ${TIMER_COLUMNS}`,
    [groupId, timerId, shard],
  );
  return rows[0] ?? (await getTimer(pool, groupId, timerId, shard));
}

/**
 * A page of a group's timers in (fire_at, timer_id) order, after the given position: at most
 * `limit` rows, cut where their estimated size passes `maxBytes` (the first row always comes).
 * `window_rows` of each row counts the rows found before the byte cut.
 */
export async function listTimers(
  pool: pg.Pool,
  groupId: string,
  states: number[],
  after: { fireAtMs: number; timerId: string } | undefined,
  limit: number,
  maxBytes: number,
  selection?: TimerSelection,
): Promise<(TimerRow & { window_rows: number })[]> {
  // A selector's terms are ANDed on; its values follow the six parameters below.
  const params = new SqlParams([
    groupId,
    states,
    after ? new Date(after.fireAtMs) : null,
    after?.timerId ?? "",
    limit,
    maxBytes,
  ]);
  const selected = selection ? timerSelectionSql(selection, params) : "true";
  const { rows } = await pool.query<TimerRow & { window_rows: number }>(
    `-- list_timers
     ${boundedPageSql({
       keysetQuery: `SELECT shard, group_id, timer_id, fire_at, ${TIMER_BYTES_SQL} AS bytes FROM timers
                      WHERE group_id = $1
                        AND (cardinality($2::smallint[]) = 0 OR state = ANY($2::smallint[]))
                        AND ($3::timestamptz IS NULL OR (fire_at, timer_id) > ($3::timestamptz, $4::text))
                        AND ${selected}
                      ORDER BY fire_at, timer_id
                      LIMIT $5`,
       orderBy: "fire_at, timer_id",
       columns: timerColumnsOf(TIMER_COLUMNS),
       maxBytesParam: "$6::bigint",
     })}`,
    params.values,
  );
  return rows;
}
