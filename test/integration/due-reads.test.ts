// The dispatcher's due reads (loadWindow, loadOverdue) read each owned shard's share and merge
// them (dispatch-store.ts): whatever the spread of timers over shards, a page must be exactly
// the first `limit` due timers in (next_attempt_at, group_id, timer_id) order, as one ordered
// scan of the table would give, and paging on from its last row must miss and repeat nothing,
// also among timers due at the same microsecond (a taken-back claim is due at now()).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { pino } from "pino";
import { loadOverdue, loadWindow, type LoadCursor } from "../../services/dispatcher/src/dispatch-store.js";
import type { DueTimer } from "../../services/dispatcher/src/due-queue.js";
import { migrate } from "../../services/shared/src/db.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";

const SHARDS = 64;
let db: TestDatabase;
const baseMs = Date.now() - 3_600_000;

before(async () => {
  db = await createTestDatabase();
  await migrate(db.pool, pino({ level: "silent" }));
  // Skewed on purpose: 2,000 timers in shard 5 (far more than its share of a page), 1,500
  // spread over the others, and 300 due at one exact microsecond over a few shards.
  const rows: [string, string, number, string][] = [];
  for (let i = 0; i < 2_000; i++) rows.push(["g1", `hot-${i}`, 5, new Date(baseMs + i * 10).toISOString()]);
  for (let i = 0; i < 1_500; i++)
    rows.push([`g${i % 7}`, `x-${i}`, i % SHARDS, new Date(baseMs + i * 13).toISOString()]);
  for (let i = 0; i < 300; i++)
    rows.push(["same", `s-${i}`, i % 3, new Date(baseMs + 5_000).toISOString().replace("Z", "123Z")]);
  await db.pool.query(
    `INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, callback, payload,
                         max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash)
     SELECT g, id, s, 1, f, f, '{"http":{"url":"http://127.0.0.1:9/hook"}}', '\\x', 3, 1000, 10000, 2, '\\x'
       FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[]) AS x(g, id, s, f)`,
    [rows.map((r) => r[0]), rows.map((r) => r[1]), rows.map((r) => r[2]), rows.map((r) => r[3])],
  );
  await db.pool.query("INSERT INTO paused_groups (group_id, paused_by) VALUES ('g3', 'test')");
  await db.pool.query("ANALYZE timers");
});
after(async () => {
  await db?.[Symbol.asyncDispose]();
});

const keyOf = (t: DueTimer) => `${t.groupId}/${t.timerId}`;

/** The owned shards' due timers in order, by one plain ordered query. */
async function expected(shards: number[], untilMs: number, skipPaused: boolean): Promise<string[]> {
  const { rows } = await db.pool.query<{ k: string }>(
    `SELECT group_id || '/' || timer_id AS k FROM timers
      WHERE state = 1 AND shard = ANY($1::int[]) AND next_attempt_at <= $2::timestamptz
        AND NOT ($3 AND group_id IN (SELECT group_id FROM paused_groups))
      ORDER BY next_attempt_at, group_id, timer_id`,
    [shards, new Date(untilMs), skipPaused],
  );
  return rows.map((r) => r.k);
}

/** Every page of `read` until a short one, each at most `limit`. */
async function pages(read: (after: LoadCursor) => Promise<DueTimer[]>, limit: number): Promise<string[]> {
  const out: string[] = [];
  let after: LoadCursor = { atMs: 0, groupId: "", timerId: "" };
  for (let n = 0; n < 100; n++) {
    const page = await read(after);
    assert.ok(page.length <= limit, `a page holds at most ${limit}`);
    out.push(...page.map(keyOf));
    if (page.length < limit) return out;
    const last = page.at(-1)!;
    after = { atMs: last.dueMs, groupId: last.groupId, timerId: last.timerId };
  }
  throw new Error("no end after 100 pages");
}

test("loadWindow pages are the first timers in due order, with none missed or repeated", async () => {
  const owned = Array.from({ length: SHARDS }, (_, s) => s).filter((s) => s % 2 === 1 || s === 0);
  const untilMs = baseMs + 60_000;
  const want = await expected(owned, untilMs, false);
  assert.ok(want.length > 2_500, "the skewed shard is owned");
  // The first page alone: exactly the first 1,000.
  const first = await loadWindow(db.pool, owned, { atMs: 0, groupId: "", timerId: "" }, untilMs, 1_000);
  assert.deepEqual(first.map(keyOf), want.slice(0, 1_000));
  // Pages at millisecond cursors (as the scheduler keeps them) may repeat timers of the
  // cursor's millisecond (held timers are not held twice) but miss none.
  const got = await pages((after) => loadWindow(db.pool, owned, after, untilMs, 1_000), 1_000);
  assert.deepEqual([...new Set(got)], want);
});

test("loadOverdue pages skip paused groups and are in due order", async () => {
  const owned = Array.from({ length: SHARDS }, (_, s) => s);
  const want = await expected(owned, Date.now() - 2_000, true);
  const first = await loadOverdue(db.pool, owned, 2_000, { atMs: 0, groupId: "", timerId: "" }, 500);
  assert.deepEqual(first.map(keyOf), want.slice(0, 500));
  const got = await pages((after) => loadOverdue(db.pool, owned, 2_000, after, 500), 500);
  assert.deepEqual([...new Set(got)], want);
});
