// Migration 000007 (the shard leads the keys of timers and timer_attempts) upgrades a database
// that has rows: a database migrated to 000006 gets timers and delivery history as the previous
// release wrote them, is migrated, and the mesh (real timer service and dispatcher processes)
// then gets, lists, fires and cancels those timers, and keeps their keys unique.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import { migrate } from "../../services/shared/src/db.js";
import {
  CancelTimerRequestSchema,
  CreateTimerRequestSchema,
  GetTimerRequestSchema,
  ListTimersRequestSchema,
  TimerState,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { shardOf } from "../../services/shared/src/shard.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startHttpReceiver } from "../support/receivers.js";
import { waitFor } from "../support/wait.js";

const SHARDS = 64; // startMesh's SHARD_COUNT
const silent = pino({ level: "silent" });

let db: TestDatabase;
let receiver: Awaited<ReturnType<typeof startHttpReceiver>>;
let mesh: TestMesh | undefined;

before(async () => {
  db = await createTestDatabase();
  receiver = await startHttpReceiver();
});
after(async () => {
  await mesh?.[Symbol.asyncDispose]();
  await receiver?.close();
  await db?.[Symbol.asyncDispose]();
});

/** A timer row as the previous release stored it (its primary key was (group_id, timer_id)). */
async function insertOldTimer(groupId: string, timerId: string, state: number, fireAt: Date): Promise<void> {
  await db.pool.query(
    `INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, attempt, callback, payload,
                         max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash, finish_time)
     VALUES ($1, $2, $3, $4::smallint, $5, $5, CASE WHEN $4::smallint = 4 THEN 2 ELSE 0 END, $6::jsonb, '\\x6f6c64', 2, 100, 1000, 2, '\\x00',
             CASE WHEN $4::smallint = 4 THEN now() END)`,
    [
      groupId,
      timerId,
      shardOf(groupId, timerId, SHARDS),
      state,
      fireAt,
      JSON.stringify({ http: { url: receiver.url } }),
    ],
  );
}

async function insertOldAttempt(groupId: string, timerId: string, attempt: number): Promise<void> {
  await db.pool.query(
    `INSERT INTO timer_attempts (group_id, timer_id, attempt, dispatcher_id, started_at, finished_at, outcome, error)
     VALUES ($1, $2, $3, 'd-old', now(), now(), 'retry', 'HTTP 503')`,
    [groupId, timerId, attempt],
  );
}

test("a database with timers and attempts is upgraded, and its timers are got, listed, fired and cancelled", async () => {
  assert.equal(await migrate(db.pool, silent, 6), 6);
  await db.pool.query("INSERT INTO mesh_settings (key, value) VALUES ('shard_count', $1)", [String(SHARDS)]);
  const soonMs = Date.now() + 4_000;
  await insertOldTimer("old", "soon", 1, new Date(soonMs));
  await insertOldTimer("old", "later", 1, new Date(Date.now() + 3_600_000));
  await insertOldTimer("old", "failed", 4, new Date(Date.now() - 60_000));
  await insertOldAttempt("old", "failed", 1);
  await insertOldAttempt("old", "failed", 2);
  // History whose timer was deleted by hand: its shard is computed from its key.
  await insertOldAttempt("gone", "orphan", 1);

  assert.equal(await migrate(db.pool, silent, 7), 1, "000007 applied");
  const { rows: keys } = await db.pool.query<{ tbl: string; def: string }>(
    "SELECT indrelid::regclass::text AS tbl, pg_get_indexdef(indexrelid) AS def FROM pg_index WHERE indrelid IN ('timers'::regclass, 'timer_attempts'::regclass) AND indisprimary",
  );
  assert.deepEqual(Object.fromEntries(keys.map((k) => [k.tbl, k.def.replace(/^.* USING btree /, "")])), {
    timers: "(shard, group_id, timer_id)",
    timer_attempts: "(shard, group_id, timer_id, id)",
  });
  const { rows: attempts } = await db.pool.query<{ group_id: string; timer_id: string; shard: number }>(
    "SELECT group_id, timer_id, shard FROM timer_attempts ORDER BY id",
  );
  assert.deepEqual(
    attempts.map((a) => [a.group_id, a.timer_id, a.shard]),
    [
      ["old", "failed", shardOf("old", "failed", SHARDS)],
      ["old", "failed", shardOf("old", "failed", SHARDS)],
      ["gone", "orphan", shardOf("gone", "orphan", SHARDS)],
    ],
  );

  mesh = await startMesh({ databaseUrl: db.url, dispatchers: 1 });
  const client = mesh.client;

  const later = (
    await client.call("getTimer", create(GetTimerRequestSchema, { groupId: "old", timerId: "later" }))
  ).timer!;
  assert.equal(later.state, TimerState.SCHEDULED);
  assert.equal(Buffer.from(later.payload).toString(), "old");
  const failed = (
    await client.call("getTimer", create(GetTimerRequestSchema, { groupId: "old", timerId: "failed" }))
  ).timer!;
  assert.equal(failed.state, TimerState.FAILED);
  assert.equal(failed.attempt, 2);

  const listed = await client.call(
    "listTimers",
    create(ListTimersRequestSchema, { groupId: "old", pageSize: 2 }),
  );
  assert.deepEqual(
    listed.timers.map((t) => t.timerId),
    ["failed", "soon"],
  );
  const rest = await client.call(
    "listTimers",
    create(ListTimersRequestSchema, { groupId: "old", pageSize: 2, pageToken: listed.nextPageToken }),
  );
  assert.deepEqual(
    rest.timers.map((t) => t.timerId),
    ["later"],
  );

  // The timer stored before the upgrade fires, once, and its attempt is recorded under its shard.
  await waitFor(() => receiver.received.some((r) => r.timerId === "soon"), 30_000, "the old timer to fire");
  await waitFor(
    async () => {
      const t = (
        await client.call("getTimer", create(GetTimerRequestSchema, { groupId: "old", timerId: "soon" }))
      ).timer!;
      return t.state === TimerState.SUCCEEDED;
    },
    10_000,
    "the old timer's outcome to be written back",
  );
  const { rows: soonAttempts } = await db.pool.query(
    "SELECT shard, attempt, outcome FROM timer_attempts WHERE group_id = 'old' AND timer_id = 'soon'",
  );
  assert.deepEqual(soonAttempts, [
    { shard: shardOf("old", "soon", SHARDS), attempt: 1, outcome: "succeeded" },
  ]);
  assert.equal(receiver.received.filter((r) => r.timerId === "soon").length, 1);
  assert.ok(receiver.received[0]!.receivedAtMs >= soonMs, "not before its fire time");

  // Its key is still unique: a different create under it is refused, not stored twice.
  await assert.rejects(
    client.call(
      "createTimer",
      create(CreateTimerRequestSchema, {
        groupId: "old",
        timerId: "later",
        schedule: { case: "delay", value: durationFromMs(60_000) },
        callback: { target: { case: "http", value: { url: receiver.url, headers: {} } } },
      }),
    ),
    (err: grpc.ServiceError) => err.code === grpc.status.ALREADY_EXISTS,
  );
  const cancelled = (
    await client.call("cancelTimer", create(CancelTimerRequestSchema, { groupId: "old", timerId: "later" }))
  ).timer!;
  assert.equal(cancelled.state, TimerState.CANCELLED);
  const { rows: count } = await db.pool.query("SELECT count(*)::int AS n FROM timers WHERE group_id = 'old'");
  assert.equal(count[0].n, 3);
});
