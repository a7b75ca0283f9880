// ForecastLoad and the load-ahead gauges against a running mesh (timer service, two
// dispatchers, admin; real Postgres and nats-server): timers created at known times in known
// groups come back in the right buckets, owners and groups, exactly; a group token sees its
// group only; the gauges on the admin's /metrics agree with the forecast; and the read is
// bounded (EXPLAIN ANALYZE of the statement on a database holding more than the budget).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import type pg from "pg";
import { forecastCounts, loadAhead } from "../../services/admin/src/forecast-store.js";
import { hashToken } from "../../services/shared/src/auth.js";
import {
  AdminService,
  type ForecastLoadResponse,
  type ForecastSeries,
} from "../../services/shared/src/gen/admin/v1/admin_pb.js";
import { CreateTimerRequestSchema } from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { shardOf } from "../../services/shared/src/shard.js";
import { bufCurl } from "../support/buf-curl.js";
import type { TestDatabase } from "../support/database.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { createMigratedDatabase } from "../support/migrated-database.js";
import { startService, type ServiceProcess } from "../support/service-process.js";
import { waitForShardOwners } from "../support/shard-owners.js";
import { waitFor } from "../support/wait.js";

const SHARDS = 16;
const MINUTE = 60_000;
const OPS = "ops-4d1b8e0a7c2f59";
const TEAM = "team-alpha-93c0e6b1a4";
const TOKENS = JSON.stringify([
  { name: "ops", sha256: hashToken(OPS), admin: true },
  { name: "team-alpha", sha256: hashToken(TEAM), groups: ["fc-alpha"] },
]);

let mesh: TestMesh;
let admin: ServiceProcess;

/** A timer the test made: where and when it is due. */
interface Made {
  groupId: string;
  timerId: string;
  fireAtMs: number;
}
const made: Made[] = [];

const headers = (token: string) => ({ authorization: `Bearer ${token}` });
const adminClient = () =>
  createClient(AdminService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${admin.grpcPort}` }));

async function dbNowMs(): Promise<number> {
  const { rows } = await mesh.db.pool.query<{ now: Date }>("SELECT now()");
  return rows[0]!.now.getTime();
}

async function createAt(groupId: string, timerId: string, fireAtMs: number): Promise<void> {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${OPS}`);
  await mesh.client.call(
    "createTimer",
    create(CreateTimerRequestSchema, {
      groupId,
      timerId,
      schedule: { case: "fireAt", value: timestampFromMs(fireAtMs) },
      callback: { target: { case: "http", value: { url: "http://127.0.0.1:9/hook", headers: {} } } },
    }),
    md,
  );
  made.push({ groupId, timerId, fireAtMs });
}

/** Inserts `n` attempt rows `attempt` finished in the minute that starts at minuteMs (+10 s). */
async function insertAttempts(pool: pg.Pool, minuteMs: number, n: number, attempt: number, tag: string) {
  await pool.query(
    `INSERT INTO timer_attempts (shard, group_id, timer_id, attempt, dispatcher_id, started_at, finished_at, outcome)
     SELECT 0, 'fc-history', $1 || i, $2, 'd-old', $3::timestamptz, $3::timestamptz, 'succeeded'
       FROM generate_series(1, $4::int) AS i`,
    [tag, attempt, new Date(minuteMs + 10_000), n],
  );
}

/** What the forecast must say of `timers`, computed from their fire times and shard owners. */
async function expected(
  timers: readonly Made[],
  startMs: number,
  bucketMs: number,
  buckets: number,
): Promise<{ due: number[]; byOwner: Map<string, number[]>; byGroup: Map<string, number[]> }> {
  const { rows } = await mesh.db.pool.query<{ shard: number; owner: string | null }>(
    "SELECT shard, owner FROM shard_owners",
  );
  const ownerOf = new Map(rows.map((r) => [r.shard, r.owner ?? "(unowned)"]));
  const due = new Array<number>(buckets).fill(0);
  const byOwner = new Map<string, number[]>();
  const byGroup = new Map<string, number[]>();
  const add = (m: Map<string, number[]>, key: string, i: number) => {
    const s = m.get(key) ?? new Array<number>(buckets).fill(0);
    s[i]!++;
    m.set(key, s);
  };
  for (const t of timers) {
    const i = Math.floor((t.fireAtMs - startMs) / bucketMs);
    if (i < 0 || i >= buckets) continue;
    due[i]!++;
    add(byOwner, ownerOf.get(shardOf(t.groupId, t.timerId, SHARDS))!, i);
    add(byGroup, t.groupId, i);
  }
  return { due, byOwner, byGroup };
}

const asMap = (series: ForecastSeries[]) => new Map(series.map((s) => [s.key, s.due.map(Number)]));
const totals = (series: ForecastSeries[]) => series.map((s) => [s.key, Number(s.total)]);
const sortedTotals = (m: Map<string, number[]>) =>
  [...m]
    .map(([k, d]) => [k, d.reduce((a, n) => a + n, 0)] as [string, number])
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));

before(async () => {
  mesh = await startMesh({ dispatchers: 2, env: { SHARD_COUNT: String(SHARDS), AUTH_TOKENS: TOKENS } });
  await waitForShardOwners(mesh.db.pool, 2, SHARDS);
  // The mesh's firing history, before the admin counts it: 7 first attempts in one minute half
  // an hour ago (and 3 retries in it, which are not firings), 4 two hours ago, 20 a day and an
  // hour ago (out of the day).
  const minute = Math.floor((await dbNowMs()) / MINUTE) * MINUTE;
  await insertAttempts(mesh.db.pool, minute - 30 * MINUTE, 7, 1, "a");
  await insertAttempts(mesh.db.pool, minute - 30 * MINUTE, 3, 2, "b");
  await insertAttempts(mesh.db.pool, minute - 120 * MINUTE, 4, 1, "c");
  await insertAttempts(mesh.db.pool, minute - 25 * 60 * MINUTE, 20, 1, "d");
  admin = await startService("admin", { ...mesh.envFor("admin"), FORECAST_REFRESH: "200ms" });
  const now = await dbNowMs();
  // Nothing here fires while the test looks: alpha and beta are due 10 minutes out or later,
  // held's timers (due within 5 minutes, for timer_due_next_5m) are in a paused group.
  await adminClient().pauseGroup({ groupId: "fc-held", reason: "forecast test" }, { headers: headers(OPS) });
  for (const [i, offset] of [10.5, 10.5, 20.5, 40.5, 50.5].entries())
    await createAt("fc-alpha", `a${i}`, now + offset * MINUTE);
  for (const [i, offset] of [10.5, 30.5, 90].entries())
    await createAt("fc-beta", `b${i}`, now + offset * MINUTE);
  for (const [i, offset] of [3, 3.5].entries()) await createAt("fc-held", `h${i}`, now + offset * MINUTE);
});
after(async () => {
  await admin?.[Symbol.asyncDispose]();
  await mesh?.[Symbol.asyncDispose]();
});

describe("ForecastLoad", () => {
  test("counts per bucket, in all, by owner and for the top groups, exactly", async () => {
    for (const [horizonMs, bucketMs] of [
      [3_600_000, MINUTE],
      [6 * 3_600_000, 15 * MINUTE],
    ] as const) {
      const res = await adminClient().forecastLoad(
        { horizon: durationFromMs(horizonMs), bucket: durationFromMs(bucketMs) },
        { headers: headers(OPS) },
      );
      const startMs = timestampMs(res.startTime!);
      const buckets = horizonMs / bucketMs;
      assert.equal(startMs % bucketMs, 0, "the first bucket starts on a multiple of the width");
      assert.equal(res.buckets.length, buckets);
      for (const [i, b] of res.buckets.entries())
        assert.equal(timestampMs(b.startTime!), startMs + i * bucketMs);
      const want = await expected(made, startMs, bucketMs, buckets);
      assert.deepEqual(
        res.buckets.map((b) => Number(b.due)),
        want.due,
      );
      assert.equal(
        Number(res.total),
        want.due.reduce((a, n) => a + n, 0),
      );
      const peak = want.due.indexOf(Math.max(...want.due));
      assert.equal(timestampMs(res.peak!.startTime!), startMs + peak * bucketMs);
      assert.equal(Number(res.peak!.due), want.due[peak]);
      assert.deepEqual(asMap(res.byOwner), want.byOwner);
      assert.deepEqual(totals(res.byOwner), sortedTotals(want.byOwner), "owners, most timers first");
      assert.equal(res.byOwner.length, 2, "both dispatchers own some of the timers");
      assert.deepEqual(asMap(res.topGroups), want.byGroup);
      assert.deepEqual(totals(res.topGroups), sortedTotals(want.byGroup), "groups, most timers first");
      assert.equal(res.truncated, false);
      assert.equal(res.completeUntil, undefined);
      assert.equal(res.overdue, 0n);
      assert.equal(res.maxFiredPerMinuteLastDay, 7n);
    }
    // 6 h of 15 minutes: beta's timer 90 minutes out is in; 1 h: it is not.
    const oneGroup = await adminClient().forecastLoad(
      { topGroups: 1, horizon: durationFromMs(3_600_000) },
      { headers: headers(OPS) },
    );
    assert.deepEqual(
      oneGroup.topGroups.map((g) => [g.key, g.total]),
      [["fc-alpha", 5n]],
    );
  });

  test("a group token sees its group only, and must name it", async () => {
    const res = await adminClient().forecastLoad(
      { groupId: "fc-alpha", horizon: durationFromMs(3_600_000) },
      { headers: headers(TEAM) },
    );
    const startMs = timestampMs(res.startTime!);
    const want = await expected(
      made.filter((t) => t.groupId === "fc-alpha"),
      startMs,
      MINUTE,
      60,
    );
    assert.deepEqual(
      res.buckets.map((b) => Number(b.due)),
      want.due,
    );
    assert.equal(res.total, 5n);
    assert.deepEqual(asMap(res.topGroups), want.byGroup);
    assert.deepEqual(asMap(res.byOwner), want.byOwner);
    const refused = async (groupId: string, code: Code, message: RegExp) => {
      await assert.rejects(
        adminClient().forecastLoad({ groupId }, { headers: headers(TEAM) }),
        (err: unknown) => err instanceof ConnectError && err.code === code && message.test(err.rawMessage),
      );
    };
    await refused("", Code.InvalidArgument, /group_id is required/);
    await refused("fc-beta", Code.PermissionDenied, /fc-beta/);
  });

  test("out-of-range requests are refused naming the field", async () => {
    const cases: [Parameters<ReturnType<typeof adminClient>["forecastLoad"]>[0], RegExp][] = [
      [{ horizon: durationFromMs(30_000) }, /^horizon must be between 1m and 7d/],
      [{ horizon: durationFromMs(8 * 86_400_000) }, /^horizon must be between/],
      [{ bucket: durationFromMs(500) }, /^bucket must be between 1s and 1d/],
      [
        { bucket: durationFromMs(2 * 86_400_000), horizon: durationFromMs(7 * 86_400_000) },
        /^bucket must be/,
      ],
      [
        { horizon: durationFromMs(7 * 86_400_000), bucket: durationFromMs(1000) },
        /^bucket is too narrow.*10000/,
      ],
      [{ topGroups: 101 }, /^top_groups must be between 1 and 100/],
      [{ topGroups: -1 }, /^top_groups must be between 0 and 100/],
    ];
    for (const [req, message] of cases) {
      await assert.rejects(
        adminClient().forecastLoad(req, { headers: headers(OPS) }),
        (err: unknown) =>
          err instanceof ConnectError && err.code === Code.InvalidArgument && message.test(err.rawMessage),
        JSON.stringify(req, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v)),
      );
    }
  });

  test("buf curl calls it through reflection, as the README shows", async () => {
    const r = await bufCurl<{
      startTime: string;
      buckets: unknown[];
      total?: string;
      maxFiredPerMinuteLastDay?: string;
    }>(
      admin.grpcPort,
      "admin.v1.AdminService/ForecastLoad",
      { horizon: "3600s", bucket: "300s", topGroups: 3 },
      OPS,
    );
    assert.equal(r.exitCode, 0, r.stderr);
    assert.equal(r.json!.buckets.length, 12);
    const want = await expected(made, Date.parse(r.json!.startTime), 5 * MINUTE, 12);
    assert.equal(r.json!.total, String(want.due.reduce((a, n) => a + n, 0)));
    assert.equal(r.json!.maxFiredPerMinuteLastDay, "7");
  });

  test("the gauges on /metrics agree with the forecast", async () => {
    const metrics = async () => (await fetch(`http://127.0.0.1:${admin.httpPort}/metrics`)).text();
    const res: ForecastLoadResponse = await adminClient().forecastLoad(
      { horizon: durationFromMs(3_600_000) },
      { headers: headers(OPS) },
    );
    // held's two timers are the only ones within 5 minutes; the busiest minute holds 3.
    assert.equal(res.peak!.due, 3n);
    await waitFor(
      async () => {
        const text = await metrics();
        return /^timer_due_next_5m 2$/m.test(text) && /^timer_load_ahead_peak_per_minute 3$/m.test(text);
      },
      15_000,
      "timer_due_next_5m 2 and timer_load_ahead_peak_per_minute 3",
    );
  });

  test("overdue is the backlog now, paused groups left out", async () => {
    // Stopped dispatchers fire nothing: what is due stays due.
    for (const d of mesh.dispatchers) await d.stop();
    const now = await dbNowMs();
    await createAt("fc-late", "l0", now - 5_000);
    await createAt("fc-late", "l1", now - 1_000);
    await createAt("fc-held", "h-late", now - 1_000);
    const all = await adminClient().forecastLoad({}, { headers: headers(OPS) });
    assert.equal(all.overdue, 2n);
    const late = await adminClient().forecastLoad({ groupId: "fc-late" }, { headers: headers(OPS) });
    assert.equal(late.overdue, 2n);
    const held = await adminClient().forecastLoad({ groupId: "fc-held" }, { headers: headers(OPS) });
    assert.equal(held.overdue, 0n);
  });
});

describe("the forecast's read is bounded", () => {
  const SHARD_COUNT = 32;
  const TIMERS = 40_000;
  let db: TestDatabase;

  before(async () => {
    db = await createMigratedDatabase(SHARD_COUNT);
    // 40,000 timers over the next 10 hours in 8 groups, spread over the shards like real ones.
    const ids = Array.from({ length: TIMERS }, (_, i) => `t${i}`);
    const groups = ids.map((_, i) => `g${i % 8}`);
    const { rows } = await db.pool.query<{ now: Date }>("SELECT now()");
    const nowMs = rows[0]!.now.getTime();
    await db.pool.query(
      `INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, callback, payload,
                           max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash)
       SELECT g, id, s, 1, f, f, '{"http":{"url":"http://127.0.0.1:9/hook"}}', '\\x', 3, 1000, 10000, 2, '\\x'
         FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[]) AS x(g, id, s, f)`,
      [
        groups,
        ids,
        ids.map((id, i) => shardOf(groups[i]!, id, SHARD_COUNT)),
        ids.map((_, i) => new Date(nowMs + 60_000 + (i * 36_000_000) / TIMERS)),
      ],
    );
    await db.pool.query("VACUUM ANALYZE timers");
  });
  after(async () => {
    await db?.[Symbol.asyncDispose]();
  });

  /** EXPLAIN (ANALYZE, BUFFERS) of the one statement `call` sends, and its rows. */
  async function analyzed(call: (pool: pg.Pool) => Promise<unknown>): Promise<PlanNode> {
    let plan: PlanNode | undefined;
    const standIn = {
      query: async (sql: string, params: unknown[]) => {
        const { rows } = await db.pool.query(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${sql}`, params);
        plan = rows[0]["QUERY PLAN"][0].Plan;
        return {
          rows: [{ start_at: new Date(), until: null, counts: [], next_5m: 0, peak: 0 }],
          rowCount: 1,
        };
      },
    } as unknown as pg.Pool;
    await call(standIn);
    assert.ok(plan, "no statement sent");
    return plan;
  }

  test("each shard's range of timers_due_idx is read up to the budget, never the table", async () => {
    const perShard = 100;
    for (const [what, call] of [
      [
        "ForecastLoad",
        (pool: pg.Pool) =>
          forecastCounts(pool, {
            shardCount: SHARD_COUNT,
            perShardRows: perShard,
            bucketMs: MINUTE,
            buckets: 360,
            groupId: "g3",
            topGroups: 10,
          }),
      ],
      ["the gauges", (pool: pg.Pool) => loadAhead(pool, SHARD_COUNT, perShard)],
    ] as const) {
      const plan = await analyzed(call);
      const nodes = flatten(plan);
      assert.ok(!nodes.some((n) => n["Node Type"] === "Seq Scan" && n["Relation Name"] === "timers"), what);
      const reads = nodes.filter((n) => n["Index Name"] === "timers_due_idx");
      assert.ok(reads.length > 0, `${what} reads timers_due_idx`);
      const rowsRead = reads.reduce((a, n) => a + n["Actual Rows"]! * n["Actual Loops"]!, 0);
      // At most the budget of every shard (a shard with fewer due in the window reads fewer).
      assert.ok(rowsRead > 0 && rowsRead <= SHARD_COUNT * perShard, `${what} read ${rowsRead} of ${TIMERS}`);
    }
  });

  test("past the budget the counts stop at complete_until, exact before it", async () => {
    const perShard = 100;
    const counts = await forecastCounts(db.pool, {
      shardCount: SHARD_COUNT,
      perShardRows: perShard,
      bucketMs: MINUTE,
      buckets: 600,
      groupId: null,
      topGroups: 8,
    });
    assert.ok(counts.completeUntil, "truncated");
    const { rows } = await db.pool.query<{ bucket: number; n: number }>(
      `SELECT floor(extract(epoch FROM next_attempt_at - $1::timestamptz) / 60)::int AS bucket, count(*)::int AS n
         FROM timers WHERE state = 1 AND next_attempt_at >= $1 AND next_attempt_at < $2 GROUP BY 1`,
      [counts.startAt, counts.completeUntil],
    );
    const got = new Map<number, number>();
    for (const c of counts.byOwner) got.set(c.bucket, (got.get(c.bucket) ?? 0) + c.due);
    assert.deepEqual(got, new Map(rows.map((r) => [r.bucket, r.n])));
    const counted = [...got.values()].reduce((a, n) => a + n, 0);
    assert.ok(counted <= SHARD_COUNT * perShard && counted > 0, `${counted} counted`);
  });
});

interface PlanNode {
  "Node Type": string;
  "Relation Name"?: string;
  "Index Name"?: string;
  "Actual Rows"?: number;
  "Actual Loops"?: number;
  Plans?: PlanNode[];
}

function flatten(n: PlanNode): PlanNode[] {
  return [n, ...(n.Plans ?? []).flatMap(flatten)];
}
