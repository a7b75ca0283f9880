// The bulk_operations table and the SQL of a bulk operation: its dry run, its start, the batches
// that change timers, and how workers take over an operation whose worker stopped.
//
// A batch is one transaction: it locks the operation's row (so a worker whose lease was taken
// over finds out and stops; FOR NO KEY UPDATE, which lets CancelOperation's request through), walks the matching timers after the cursor in primary-key order
// (shard, group_id, timer_id), changes them, and writes the operation's progress, cursor and
// sample before committing. A restart therefore resumes right after the last committed batch,
// and the cursor never comes back to a timer it passed: no timer is changed twice.
import type { JsonValue } from "@bufbuild/protobuf";
import type pg from "pg";
import { inTransaction } from "../../shared/src/db.js";
import { SqlParams } from "../../shared/src/label-selector.js";
import { State } from "../../shared/src/timer-model.js";
import { intervalOfMsSql } from "../../shared/src/time.js";
import { timerSelectionSql } from "../../shared/src/timer-selector.js";
import { SAMPLE_SIZE } from "./admin-requests.js";
import { type AuditInfo, auditParams, insertAuditSql } from "./audit-store.js";
import type { SummaryRow } from "./bulk-store.js";
import type { BulkActionName, BulkPlan } from "./bulk-operation-plan.js";

/** admin.v1.OperationState as stored. */
export const OpState = { Running: 1, Succeeded: 2, Failed: 3, Cancelled: 4 } as const;

/** A row of bulk_operations as the API shows it. */
export interface OperationRow {
  id: string;
  group_id: string | null;
  request: JsonValue;
  action: BulkActionName;
  state: number;
  created_by: string;
  create_time: Date;
  update_time: Date;
  finish_time: Date | null;
  batch_size: number;
  matched_at_start: string;
  examined: string;
  changed: string;
  batches: number;
  error: string | null;
  /** admin.v1.TimerSummary as proto JSON. */
  sample: JsonValue[];
}

const OPERATION_COLUMNS = `id, group_id, request, action, state, created_by, create_time, update_time, finish_time,
  batch_size, matched_at_start::text, examined::text, changed::text, batches, error, sample`;

/** A timer as a bulk operation reports it (a TimerSummary), with what announcing it needs. */
export interface ChangedTimer extends Omit<SummaryRow, "callback"> {
  version: string;
  callback: JsonValue;
}

const CHANGED_COLUMNS =
  "group_id, timer_id, shard, fire_at, next_attempt_at, state, attempt, last_error, version::text, callback";

/**
 * The UPDATE's SET list of an action; every change raises the version by one (claims are fenced
 * by it, so a dispatcher holding the timer as it was never fires it). A time moved into the past
 * becomes "due now" rather than late.
 */
function setSql(plan: BulkPlan, params: SqlParams): string {
  switch (plan.action) {
    case "cancel":
      return `state = ${State.Cancelled}, finish_time = now()`;
    case "retry":
      return `state = ${State.Scheduled}, next_attempt_at = now(), attempt = 0, finish_time = NULL,
              claim_owner = NULL, claim_expires_at = NULL`;
    case "pause":
      return `state = ${State.Paused}`;
    case "resume":
      return `state = ${State.Scheduled}`;
    case "shift": {
      const s = plan.shift!;
      if (s.toMs !== null) {
        const to = params.add(new Date(s.toMs), "timestamptz");
        return `fire_at = greatest(${to}, now()), next_attempt_at = greatest(${to}, now())`;
      }
      const by = intervalOfMsSql(params.add(s.byMs, "bigint"));
      return `fire_at = greatest(fire_at + ${by}, now()), next_attempt_at = greatest(next_attempt_at + ${by}, now())`;
    }
  }
}

/** SQL true for the timers the plan would change (its selection, in the action's states). */
function matchesSql(plan: BulkPlan, params: SqlParams, alias = ""): string {
  return `${timerSelectionSql(plan.selection, params, alias)} AND ${alias}state = ANY(${params.add(plan.fromStates, "smallint[]")})`;
}

/** How many timers the plan would change now, and the first SAMPLE_SIZE of them by fire time. */
export async function previewOperation(
  pool: pg.Pool,
  plan: BulkPlan,
): Promise<{ matched: number; sample: ChangedTimer[] }> {
  const params = new SqlParams();
  const where = matchesSql(plan, params);
  const [count, sample] = await Promise.all([
    pool.query<{ n: string }>(
      `-- bulk_operation_count\n SELECT count(*)::text AS n FROM timers WHERE ${where}`,
      params.values,
    ),
    pool.query<ChangedTimer>(
      `-- bulk_operation_sample
       SELECT ${CHANGED_COLUMNS} FROM timers WHERE ${where}
        ORDER BY fire_at, group_id, timer_id LIMIT ${SAMPLE_SIZE}`,
      params.values,
    ),
  ]);
  return { matched: Number(count.rows[0]!.n), sample: sample.rows };
}

/** What starting an operation stores besides its plan. */
export interface NewOperation {
  id: string;
  groupId: string | null;
  /** The StartBulkOperationRequest as proto JSON. */
  request: JsonValue;
  createdBy: string;
}

/**
 * Stores a RUNNING operation with the number of timers it matches now, and its start in the
 * audit log, in one statement. Any worker may take it at once (its lease starts expired).
 */
export async function insertOperation(
  pool: pg.Pool,
  op: NewOperation,
  plan: BulkPlan,
  audit: AuditInfo,
): Promise<OperationRow> {
  const params = new SqlParams([
    op.id,
    op.groupId,
    JSON.stringify(op.request),
    plan.action,
    op.createdBy,
    JSON.stringify({
      actor: audit.actor,
      action: audit.action,
      arguments: audit.arguments,
      trace_id: audit.traceId,
    }),
    plan.batchSize,
    ...auditParams(audit),
  ]);
  const where = matchesSql(plan, params);
  const { rows } = await pool.query<OperationRow>(
    `-- start_bulk_operation
     WITH m AS (
       SELECT count(*) AS n FROM timers WHERE ${where}
     ), op AS (
       INSERT INTO bulk_operations (id, group_id, request, action, state, created_by, audit, batch_size, matched_at_start)
       SELECT $1::text, $2::text, $3::jsonb, $4::text, ${OpState.Running}, $5::text, $6::jsonb, $7::int, m.n FROM m
       RETURNING ${OPERATION_COLUMNS}
     ), audit AS (
       ${insertAuditSql(8, "'OK'", "jsonb_build_object('operation_id', op.id, 'phase', 'started', 'action', op.action, 'selector', $3::jsonb -> 'selector', 'matched_at_start', op.matched_at_start::bigint)", "FROM op")}
     )
     SELECT op.* FROM op, audit`,
    params.values,
  );
  return rows[0]!;
}

/** One operation, or undefined. */
export async function getOperation(pool: pg.Pool, id: string): Promise<OperationRow | undefined> {
  const { rows } = await pool.query<OperationRow>(
    `-- get_bulk_operation
     SELECT ${OPERATION_COLUMNS} FROM bulk_operations WHERE id = $1`,
    [id],
  );
  return rows[0];
}

/** Where a page of operations stopped: the last one's create_time (as Postgres wrote it) and id. */
export interface OperationCursor {
  createTime: string;
  id: string;
}

/**
 * Operations newest first, after `before`: one group's, or (visible not null) those whose group
 * matches one of the LIKE patterns (a group token's groups; operations over a group_pattern
 * have no group and are left out), in some states.
 */
export async function listOperations(
  pool: pg.Pool,
  filter: { groupId: string | null; visible: string[] | null; states: number[] },
  before: OperationCursor | null,
  limit: number,
): Promise<(OperationRow & { create_time_text: string })[]> {
  const { rows } = await pool.query<OperationRow & { create_time_text: string }>(
    `-- list_bulk_operations
     SELECT ${OPERATION_COLUMNS}, create_time::text AS create_time_text FROM bulk_operations
      WHERE ($1::text IS NULL OR group_id = $1::text)
        AND ($2::text[] IS NULL OR group_id LIKE ANY($2::text[]))
        AND (cardinality($3::smallint[]) = 0 OR state = ANY($3::smallint[]))
        AND ($4::timestamptz IS NULL OR (create_time, id) < ($4::timestamptz, $5::text))
      ORDER BY create_time DESC, id DESC
      LIMIT $6`,
    [filter.groupId, filter.visible, filter.states, before?.createTime ?? null, before?.id ?? "", limit],
  );
  return rows;
}

/**
 * Asks a running operation to stop after its batch in flight (without waiting for that batch);
 * returns the operation as it is now.
 */
export async function requestCancel(
  pool: pg.Pool,
  id: string,
  by: string,
): Promise<OperationRow | undefined> {
  await pool.query(
    `-- cancel_bulk_operation
     INSERT INTO bulk_operation_cancels (operation_id, requested_by)
     SELECT id, $2 FROM bulk_operations WHERE id = $1 AND state = ${OpState.Running}
     ON CONFLICT (operation_id) DO NOTHING`,
    [id, by],
  );
  return getOperation(pool, id);
}

/**
 * Takes the oldest running operation nobody works on (its worker's lease expired, or it was
 * never taken) for `worker`, for `leaseMs`. An operation whose batch is in flight is locked and
 * skipped.
 */
export async function takeOperation(
  pool: pg.Pool,
  worker: string,
  leaseMs: number,
): Promise<OperationRow | undefined> {
  const { rows } = await pool.query<OperationRow>(
    `-- take_bulk_operation
     UPDATE bulk_operations SET worker = $1, lease_expires_at = now() + ${intervalOfMsSql("$2")}
      WHERE id = (SELECT id FROM bulk_operations
                   WHERE state = ${OpState.Running} AND lease_expires_at < now()
                   ORDER BY create_time LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED)
      RETURNING ${OPERATION_COLUMNS}`,
    [worker, leaseMs],
  );
  return rows[0];
}

/** Gives up the operations `worker` holds (at shutdown), so another worker takes them at once. */
export async function releaseOperations(pool: pg.Pool, worker: string): Promise<void> {
  await pool.query(
    `-- release_bulk_operations
     UPDATE bulk_operations SET worker = NULL, lease_expires_at = '-infinity'
      WHERE worker = $1 AND state = ${OpState.Running}`,
    [worker],
  );
}

/** What one batch came to. */
export type BatchOutcome =
  /** Another worker holds the operation now, or it is no longer running: stop. */
  | { kind: "lost" }
  /** The operation ended (done, or cancelled); `changed` are this batch's timers. */
  | { kind: "finished"; state: number; changed: ChangedTimer[] }
  | { kind: "progress"; changed: ChangedTimer[] };

interface LockedOperation {
  state: number;
  worker: string | null;
  cancel_requested: boolean;
  cursor_shard: number | null;
  cursor_group: string;
  cursor_timer: string;
  sample_count: number;
}

/** The audit event of an operation's end, written in the transaction that ends it. */
const END_AUDIT_SQL = `INSERT INTO audit_events (actor, action, arguments, outcome, result, trace_id)
  SELECT audit ->> 'actor', audit ->> 'action', audit -> 'arguments', $2::text,
         jsonb_build_object('operation_id', id, 'phase', 'finished', 'state', $3::text, 'action', action,
                            'selector', request -> 'selector', 'matched_at_start', matched_at_start,
                            'examined', examined, 'changed', changed, 'batches', batches, 'error', error),
         audit ->> 'trace_id'
    FROM bulk_operations WHERE id = $1`;

const STATE_NAMES: Record<number, string> = {
  [OpState.Succeeded]: "SUCCEEDED",
  [OpState.Failed]: "FAILED",
  [OpState.Cancelled]: "CANCELLED",
};

/** Ends an operation (in the caller's transaction) and records its end with the counts. */
async function finishOperation(
  client: pg.PoolClient,
  id: string,
  state: number,
  error: string | null,
): Promise<void> {
  await client.query(
    `-- finish_bulk_operation
     UPDATE bulk_operations SET state = $2, finish_time = now(), update_time = now(), error = $3,
            worker = NULL, lease_expires_at = '-infinity'
      WHERE id = $1`,
    [id, state, error],
  );
  await client.query(`-- audit_bulk_operation_end\n ${END_AUDIT_SQL}`, [
    id,
    state === OpState.Failed ? "FAILED" : "OK",
    STATE_NAMES[state],
  ]);
}

/** Marks an operation FAILED (after repeated errors) if `worker` still holds it, and records it. */
export async function failOperation(pool: pg.Pool, id: string, worker: string, error: string): Promise<void> {
  await inTransaction(pool, async (client) => {
    const { rows } = await client.query<{ n: number }>(
      `SELECT 1 AS n FROM bulk_operations WHERE id = $1 AND worker = $2 AND state = ${OpState.Running} FOR NO KEY UPDATE`,
      [id, worker],
    );
    if (rows.length > 0) await finishOperation(client, id, OpState.Failed, error);
  });
}

/** A key of the walk: the last timer passed. */
interface Cursor {
  shard: number;
  groupId: string;
  timerId: string;
}

/**
 * Picks up to `limit` matching timers after the cursor in key order, locking them, shard by
 * shard (each shard's part is a range of the primary key, and for a group-scoped selector an
 * exact (shard, group_id) prefix). Returns them and where the walk stands after them; `done`
 * when no shard is left. Plain FOR UPDATE, not SKIP LOCKED: a timer skipped because a
 * dispatcher or UpdateTimer held it for a moment would be passed by the cursor for good.
 */
async function pickBatch(
  client: pg.PoolClient,
  plan: BulkPlan,
  from: Cursor,
  limit: number,
): Promise<{ keys: Cursor[]; cursor: Cursor; done: boolean }> {
  const keys: Cursor[] = [];
  let cursor = from;
  for (;;) {
    const params = new SqlParams([cursor.shard, cursor.groupId, cursor.timerId, limit - keys.length]);
    const { rows } = await client.query<{ shard: number; group_id: string; timer_id: string }>(
      `-- bulk_operation_pick
       SELECT shard, group_id, timer_id FROM timers
        WHERE shard = $1::int AND (group_id, timer_id) > ($2::text, $3::text) AND ${matchesSql(plan, params)}
        ORDER BY group_id, timer_id
        LIMIT $4::int
        FOR UPDATE`,
      params.values,
    );
    for (const r of rows) keys.push({ shard: r.shard, groupId: r.group_id, timerId: r.timer_id });
    const last = keys[keys.length - 1];
    if (keys.length >= limit && last) return { keys, cursor: last, done: false };
    // This shard has no more: on to the next shard holding any timer (an index seek).
    const next = await client.query<{ shard: number | null }>(
      `-- bulk_operation_next_shard
       SELECT min(shard) AS shard FROM timers WHERE shard > $1`,
      [cursor.shard],
    );
    const shard = next.rows[0]?.shard ?? null;
    if (shard === null)
      return { keys, cursor: { shard: cursor.shard + 1, groupId: "", timerId: "" }, done: true };
    cursor = { shard, groupId: "", timerId: "" };
  }
}

/**
 * Runs the next batch of an operation that `worker` holds: one transaction that changes the
 * timers and records the progress (and, for the last batch or a requested cancel, the end and
 * its audit event), renewing the lease for `leaseMs`.
 */
export async function runBatch(
  pool: pg.Pool,
  id: string,
  plan: BulkPlan,
  worker: string,
  leaseMs: number,
): Promise<BatchOutcome> {
  return inTransaction(pool, async (client): Promise<BatchOutcome> => {
    const { rows } = await client.query<LockedOperation>(
      `-- lock_bulk_operation
       SELECT state, worker, cursor_shard, cursor_group, cursor_timer,
              jsonb_array_length(sample) AS sample_count,
              EXISTS (SELECT 1 FROM bulk_operation_cancels c WHERE c.operation_id = o.id) AS cancel_requested
         FROM bulk_operations o WHERE id = $1 FOR NO KEY UPDATE`,
      [id],
    );
    const op = rows[0];
    if (!op || op.state !== OpState.Running || op.worker !== worker) return { kind: "lost" };
    if (op.cancel_requested) {
      await finishOperation(client, id, OpState.Cancelled, null);
      return { kind: "finished", state: OpState.Cancelled, changed: [] };
    }
    const from: Cursor =
      op.cursor_shard === null
        ? { shard: -1, groupId: "", timerId: "" }
        : { shard: op.cursor_shard, groupId: op.cursor_group, timerId: op.cursor_timer };
    // The walk starts in the first shard holding any timer.
    const start =
      from.shard >= 0 ? from : { shard: (await firstShard(client)) ?? 0, groupId: "", timerId: "" };
    const picked = await pickBatch(client, plan, start, plan.batchSize);

    let changed: ChangedTimer[] = [];
    if (picked.keys.length > 0) {
      const params = new SqlParams([
        picked.keys.map((k) => k.shard),
        picked.keys.map((k) => k.groupId),
        picked.keys.map((k) => k.timerId),
        plan.fromStates,
      ]);
      const set = setSql(plan, params);
      const u = await client.query<ChangedTimer>(
        `-- bulk_operation_apply
         UPDATE timers t SET ${set}, version = t.version + 1
           FROM unnest($1::int[], $2::text[], $3::text[]) AS k(shard, group_id, timer_id)
          WHERE t.shard = k.shard AND t.group_id = k.group_id AND t.timer_id = k.timer_id
            AND t.state = ANY($4::smallint[])
          RETURNING ${CHANGED_COLUMNS.split(", ")
            .map((c) => `t.${c}`)
            .join(", ")}`,
        params.values,
      );
      changed = u.rows.sort((a, b) => a.fire_at.getTime() - b.fire_at.getTime() || keyOrder(a, b));
    }
    const sampleRoom = Math.max(0, SAMPLE_SIZE - op.sample_count);
    await client.query(
      `-- bulk_operation_progress
       UPDATE bulk_operations
          SET cursor_shard = $2, cursor_group = $3, cursor_timer = $4,
              examined = examined + $5, changed = changed + $6, batches = batches + 1,
              sample = sample || $7::jsonb, update_time = now(),
              lease_expires_at = now() + ${intervalOfMsSql("$8")}
        WHERE id = $1`,
      [
        id,
        picked.cursor.shard,
        picked.cursor.groupId,
        picked.cursor.timerId,
        picked.keys.length,
        changed.length,
        JSON.stringify(changed.slice(0, sampleRoom).map(summaryJson)),
        leaseMs,
      ],
    );
    if (picked.done) {
      await finishOperation(client, id, OpState.Succeeded, null);
      return { kind: "finished", state: OpState.Succeeded, changed };
    }
    return { kind: "progress", changed };
  });
}

function keyOrder(a: ChangedTimer, b: ChangedTimer): number {
  return a.group_id < b.group_id ? -1 : a.group_id > b.group_id ? 1 : a.timer_id < b.timer_id ? -1 : 1;
}

async function firstShard(client: pg.PoolClient): Promise<number | null> {
  const { rows } = await client.query<{ shard: number | null }>(
    `-- bulk_operation_first_shard
     SELECT min(shard) AS shard FROM timers`,
  );
  return rows[0]?.shard ?? null;
}

/** admin.v1.TimerSummary as proto JSON, for the stored sample. */
export function summaryJson(t: ChangedTimer): JsonValue {
  return {
    groupId: t.group_id,
    timerId: t.timer_id,
    fireAt: t.fire_at.toISOString(),
    shard: t.shard,
    state: t.state,
    attempt: t.attempt,
    lastError: t.last_error ?? "",
  };
}
