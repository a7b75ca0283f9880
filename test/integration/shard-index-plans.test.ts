// The dispatcher's statements read by shard-led keys (migration 000007): the claim finds each
// timer by its primary key (shard, group_id, timer_id), and the due reads scan each owned
// shard's range of timers_due_idx (shard, next_attempt_at), never a whole table or index. The
// plans come from EXPLAIN (no ANALYZE) of the exact statements dispatch-store.ts sends, on a
// real Postgres with enough timers spread over 64 shards for the planner to choose by cost.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import type pg from "pg";
import {
  claimTimers,
  loadOverdue,
  loadWindow,
  shardLag,
} from "../../services/dispatcher/src/dispatch-store.js";
import { listShards } from "../../services/admin/src/shard-store.js";
import { pausedDueTimersSql } from "../../services/shared/src/shard-lag.js";
import type { DueTimer } from "../../services/dispatcher/src/due-queue.js";
import { shardOf } from "../../services/shared/src/shard.js";
import type { TestDatabase } from "../support/database.js";
import { createMigratedDatabase } from "../support/migrated-database.js";

const SHARDS = 64;
const TIMERS = 50_000;
const OWNER = "d-plans";

interface PlanNode {
  "Node Type": string;
  "Relation Name"?: string;
  "Index Name"?: string;
  "Index Cond"?: string;
  Plans?: PlanNode[];
}

let db: TestDatabase;
const startMs = Date.now();

before(async () => {
  db = await createMigratedDatabase(SHARDS);
  await db.pool.query("UPDATE shard_leases SET owner = $1, epoch = 1", [OWNER]);
  await db.pool.query(
    "INSERT INTO dispatcher_leases (owner, expires_at) VALUES ($1, now() + interval '1 hour')",
    [OWNER],
  );
  // Timers over the next 30 days, a tenth of them overdue, in 20 groups.
  const ids = Array.from({ length: TIMERS }, (_, i) => `t${i}`);
  const groups = ids.map((_, i) => `g${i % 20}`);
  await db.pool.query(
    `INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, callback, payload,
                         max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash)
     SELECT g, id, s, 1, f, f, '{"http":{"url":"http://127.0.0.1:9/hook"}}', '\\x', 3, 1000, 10000, 2, '\\x'
       FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[]) AS x(g, id, s, f)`,
    [
      groups,
      ids,
      ids.map((id, i) => shardOf(groups[i]!, id, SHARDS)),
      ids.map((_, i) => new Date(startMs + ((i % 10) - 1) * 3 * 86_400_000 + i)),
    ],
  );
  // Two of the groups paused: lag and backlog leave their timers out (shard-lag.ts).
  await db.pool.query(
    "INSERT INTO paused_groups (group_id, paused_by, reason) VALUES ('g3', 't', ''), ('g7', 't', '')",
  );
  await db.pool.query("ANALYZE timers");
  await db.pool.query("ANALYZE paused_groups");
});
after(async () => {
  await db?.[Symbol.asyncDispose]();
});

/** The plan of the one statement `call` sends, EXPLAINed with its parameters. */
async function planOf(call: (pool: pg.Pool) => Promise<unknown>): Promise<PlanNode> {
  let plan: PlanNode | undefined;
  const standIn = {
    query: async (sql: string, params: unknown[]) => {
      const { rows } = await db.pool.query(`EXPLAIN (FORMAT JSON) ${sql}`, params);
      plan = rows[0]["QUERY PLAN"][0].Plan;
      return { rows: [], rowCount: 0 };
    },
  } as unknown as pg.Pool;
  await call(standIn);
  return plan!;
}

function nodes(n: PlanNode): PlanNode[] {
  return [n, ...(n.Plans ?? []).flatMap(nodes)];
}

/** The scans of `timers` in the plan: "<node> <index>: <index cond>". */
function timerScans(plan: PlanNode): string[] {
  return nodes(plan)
    .filter((n) => n["Relation Name"] === "timers" || n["Index Name"]?.startsWith("timers_"))
    .filter((n) => n["Node Type"] !== "ModifyTable" && n["Node Type"] !== "Bitmap Heap Scan")
    .map((n) => `${n["Node Type"]} ${n["Index Name"] ?? ""}: ${n["Index Cond"] ?? ""}`);
}

test("a claim finds each timer by the shard-led primary key", async () => {
  const { rows } = await db.pool.query<{ group_id: string; timer_id: string; shard: number }>(
    "SELECT group_id, timer_id, shard FROM timers ORDER BY timer_id LIMIT 500",
  );
  const due: DueTimer[] = rows.map((r) => ({
    groupId: r.group_id,
    timerId: r.timer_id,
    shard: r.shard,
    dueMs: startMs,
    destination: "",
    version: 0,
  }));
  const plan = await planOf((p) =>
    claimTimers(
      p,
      OWNER,
      `${OWNER}#1`,
      due,
      due.map(() => 1n),
      25,
      60_000,
    ),
  );
  // The overlap check of schedule firings (schedule-rows.ts overlapClearSql) is a subplan that
  // runs only for a firing of an overlap-SKIP schedule, by the index of unfinished firings.
  const overlap = /^Index Scan timers_schedule_active_idx: /;
  const scans = timerScans(plan);
  const keyScans = scans.filter((s) => !overlap.test(s));
  assert.equal(keyScans.length, 1, `one scan of timers by key: ${scans.join(" | ")}`);
  assert.match(
    keyScans[0]!,
    /^Index Scan timers_pkey: \(\(shard = k\.shard\) AND \(group_id = k\.g\) AND \(timer_id = k\.id\)\)$/,
  );
  assert.ok(scans.length - keyScans.length <= 1, `at most one overlap check: ${scans.join(" | ")}`);
});

test("the lookahead and catch-up reads scan each owned shard's range of the due index", async () => {
  const owned = Array.from({ length: SHARDS }, (_, s) => s).filter((s) => s % 4 === 0);
  const window = await planOf((p) =>
    loadWindow(p, owned, { atMs: startMs, groupId: "", timerId: "" }, startMs + 86_400_000, 5_000),
  );
  const overdue = await planOf((p) =>
    loadOverdue(p, owned, 2_000, { atMs: 0, groupId: "", timerId: "" }, 2_000),
  );
  for (const [name, plan] of [
    ["load_window", window],
    ["load_overdue", overdue],
  ] as const) {
    const scans = timerScans(plan);
    assert.ok(scans.length > 0, `${name} scans timers`);
    for (const s of scans)
      assert.match(
        s,
        /^(Index Scan|Bitmap Index Scan) timers_due_idx: \(\(shard = s\.shard\) AND \(next_attempt_at /,
        `${name}: ${s}`,
      );
  }
});

test("shard lag and backlog read each shard's range of the due index, paused groups left out", async () => {
  const owned = Array.from({ length: SHARDS }, (_, s) => s);
  const lag = await planOf((p) => shardLag(p, owned));
  const shards = await planOf((p) => listShards(p, null, null));
  for (const [name, plan] of [
    ["shard_lag_owned", lag],
    ["list_shards", shards],
  ] as const) {
    const scans = timerScans(plan);
    assert.ok(scans.length > 0, `${name} scans timers`);
    for (const s of scans)
      assert.match(
        s,
        /^(Index Scan|Index Only Scan|Bitmap Index Scan) timers_due_idx: \(\(shard = [sl]\.shard\) AND \(next_attempt_at <= now\(\)\)\)$/,
        `${name}: ${s}`,
      );
  }
  // The paused groups' own count goes through the group index, not every due timer.
  const { rows } = await db.pool.query(`EXPLAIN (FORMAT JSON) ${pausedDueTimersSql()}`);
  const paused = timerScans(rows[0]["QUERY PLAN"][0].Plan);
  assert.ok(paused.length > 0 && paused.every((s) => s.includes("timers_group_idx")), paused.join(" | "));
});
