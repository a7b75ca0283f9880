// The timer service's SQL. Creates from concurrent callers are gathered into one multi-row
// INSERT while the previous one is in flight, so throughput grows with load instead of
// every call paying its own commit; create-queue.ts bounds what waits for a batch.
import type pg from "pg";
import { boundedPageSql, timerColumnsOf, TIMER_BYTES_SQL } from "../../shared/src/page-bytes.js";
import { callbackToJson, State, TIMER_COLUMNS, type TimerRow } from "../../shared/src/timer-model.js";
import { CreateQueue } from "./create-queue.js";
import type { NewTimer } from "./validation.js";

/** The outcome of storing a create: the stored row, and whether this call inserted it. */
export interface StoredCreate {
  row: TimerRow;
  created: boolean;
  /** The stored row was made by a different request under the same key. */
  conflict: boolean;
}

interface PendingCreate {
  timer: NewTimer & { shard: number };
  traceparent: string | undefined;
}

/** Stores new timers in batches; one instance per process. */
export class CreateBatcher {
  private readonly queue: CreateQueue<PendingCreate, StoredCreate>;

  constructor(
    pool: pg.Pool,
    opts: { maxQueued: number; maxBatch?: number; maxConcurrentBatches?: number },
  ) {
    this.queue = new CreateQueue((batch) => insertBatch(pool, batch), {
      maxQueued: opts.maxQueued,
      maxBatch: opts.maxBatch ?? 500,
      maxConcurrentBatches: opts.maxConcurrentBatches ?? 4,
    });
  }

  /**
   * Stores one timer (or finds the one already stored under its key). `signal` is the caller's
   * (deadline or cancel): when it aborts before the timer's INSERT starts, it is never stored.
   */
  store(timer: NewTimer & { shard: number }, traceparent: string | undefined, signal?: AbortSignal): Promise<StoredCreate> {
    return this.queue.add({ timer, traceparent }, signal);
  }
}

async function insertBatch(pool: pg.Pool, batch: PendingCreate[]): Promise<PromiseSettledResult<StoredCreate>[]> {
  const t = batch.map((p) => p.timer);
  const { rows } = await pool.query<TimerRow>(
    `-- create_timers
     INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, callback, payload, labels,
                         max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash, create_traceparent)
     SELECT g, t, s, ${State.Scheduled}, f, f, c, p, l, ma, ib, mb, mu, h, tp
       FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[], $5::jsonb[], $6::bytea[], $7::jsonb[],
                   $8::int[], $9::int[], $10::int[], $11::float8[], $12::bytea[], $13::text[])
            AS x(g, t, s, f, c, p, l, ma, ib, mb, mu, h, tp)
     ON CONFLICT (group_id, timer_id) DO NOTHING
     RETURNING ${TIMER_COLUMNS}, request_hash`,
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
      batch.map((p) => p.traceparent ?? null),
    ],
  );
  type StoredRow = TimerRow & { request_hash: Buffer };
  const stored = new Map<string, StoredRow>();
  for (const r of rows as StoredRow[]) stored.set(key(r.group_id, r.timer_id), r);

  // Keys this INSERT did not write were stored before (a replay or a conflict): read them.
  const before = batch.filter((p) => !stored.has(key(p.timer.groupId, p.timer.timerId)));
  if (before.length > 0) {
    const found = await pool.query<StoredRow>(
      `-- find_existing_timers
     SELECT ${TIMER_COLUMNS}, request_hash FROM timers
        WHERE (group_id, timer_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))`,
      [before.map((p) => p.timer.groupId), before.map((p) => p.timer.timerId)],
    );
    for (const r of found.rows) stored.set(key(r.group_id, r.timer_id), r);
  }

  // The first request for a key that this INSERT wrote created it; any later one in the same
  // batch, and every request for a key stored before, is compared with the stored row.
  const createdHere = new Set(rows.map((r) => key(r.group_id, r.timer_id)));
  return batch.map((p): PromiseSettledResult<StoredCreate> => {
    const k = key(p.timer.groupId, p.timer.timerId);
    const row = stored.get(k);
    if (!row) {
      // Stored a moment ago and purged since: vanishingly rare; the caller may retry.
      return { status: "rejected", reason: new Error(`timer ${k} vanished between insert and read`) };
    }
    if (createdHere.delete(k)) return { status: "fulfilled", value: { row, created: true, conflict: false } };
    return { status: "fulfilled", value: { row, created: false, conflict: !row.request_hash.equals(p.timer.requestHash) } };
  });
}

function key(g: string, t: string): string {
  return `${g}\u0000${t}`;
}

/** One timer by key with the hash of the request that made it (to tell a replay from a conflict). */
export async function findStoredCreate(pool: pg.Pool, groupId: string, timerId: string): Promise<(TimerRow & { request_hash: Buffer }) | undefined> {
  const { rows } = await pool.query<TimerRow & { request_hash: Buffer }>(
    `-- find_stored_create
     SELECT ${TIMER_COLUMNS}, request_hash FROM timers WHERE group_id = $1 AND timer_id = $2`,
    [groupId, timerId],
  );
  return rows[0];
}

/** One timer by key. */
export async function getTimer(pool: pg.Pool, groupId: string, timerId: string): Promise<TimerRow | undefined> {
  const { rows } = await pool.query<TimerRow>(
    `-- get_timer
     SELECT ${TIMER_COLUMNS} FROM timers WHERE group_id = $1 AND timer_id = $2`,
    [groupId, timerId],
  );
  return rows[0];
}

/**
 * Cancels a SCHEDULED timer. Returns the row after the attempt: CANCELLED if it was cancelled
 * now or before; another state when it could not be; undefined when there is no such timer.
 */
export async function cancelTimer(pool: pg.Pool, groupId: string, timerId: string): Promise<TimerRow | undefined> {
  const { rows } = await pool.query<TimerRow>(
    `-- cancel_timer
     UPDATE timers SET state = ${State.Cancelled}, finish_time = now()
      WHERE group_id = $1 AND timer_id = $2 AND state = ${State.Scheduled}
      RETURNING ${TIMER_COLUMNS}`,
    [groupId, timerId],
  );
  return rows[0] ?? (await getTimer(pool, groupId, timerId));
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
): Promise<(TimerRow & { window_rows: number })[]> {
  const { rows } = await pool.query<TimerRow & { window_rows: number }>(
    `-- list_timers
     ${boundedPageSql({
       keysetQuery: `SELECT group_id, timer_id, fire_at, ${TIMER_BYTES_SQL} AS bytes FROM timers
                      WHERE group_id = $1
                        AND (cardinality($2::smallint[]) = 0 OR state = ANY($2::smallint[]))
                        AND ($3::timestamptz IS NULL OR (fire_at, timer_id) > ($3::timestamptz, $4::text))
                      ORDER BY fire_at, timer_id
                      LIMIT $5`,
       orderBy: "fire_at, timer_id",
       columns: timerColumnsOf(TIMER_COLUMNS),
       maxBytesParam: "$6::bigint",
     })}`,
    [groupId, states, after ? new Date(after.fireAtMs) : null, after?.timerId ?? "", limit, maxBytes],
  );
  return rows;
}
