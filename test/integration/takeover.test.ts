// Takeover without needless duplicates. A dispatcher whose lease lapses while its deliveries
// are in flight may only have stalled: its claims are delivered again only once their own
// deadline (claim time + CALLBACK_TIMEOUT + a margin) has passed without an outcome. A stalled
// dispatcher that wakes in time records its outcomes; one that really died has its claims
// delivered again after their deadline. Real processes, real Postgres, real NATS.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { CreateTimerRequestSchema } from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { State } from "../../services/shared/src/timer-model.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startHttpReceiver, type Received } from "../support/receivers.js";
import { waitFor } from "../support/wait.js";

// Slower than the 3 s lease, well inside the 10 s callback timeout.
const RECEIVER_DELAY_MS = 4_000;

let mesh: TestMesh;
let receiver: Awaited<ReturnType<typeof startHttpReceiver>>;
// Timers (by id) the receiver should answer at once: their first delivery was cut off by a
// SIGKILL, the test is about when the repeat comes, not about its speed.
const answerAtOnce = new Set<string>();

before(async () => {
  receiver = await startHttpReceiver(async (r) => {
    if (!answerAtOnce.has(r.timerId)) await new Promise((resolve) => setTimeout(resolve, RECEIVER_DELAY_MS));
    return 200;
  });
  mesh = await startMesh({
    dispatchers: 2,
    dispatcherEnv: {
      LEASE_TTL: "3000",
      CALLBACK_TIMEOUT: "10000",
      // All of a test's timers go to one group and one receiver: let them all be in flight.
      DELIVERY_GROUP_SHARE: "100",
      DELIVERY_DESTINATION_SHARE: "100",
    },
  });
});

after(async () => {
  await mesh?.[Symbol.asyncDispose]();
  await receiver?.close();
});

async function createDueAt(group: string, count: number, fireAtMs: number): Promise<string[]> {
  const ids = Array.from({ length: count }, (_, i) => `${group}-${i}`);
  for (let i = 0; i < ids.length; i += 50) {
    await Promise.all(
      ids.slice(i, i + 50).map((id) =>
        mesh.client.call(
          "createTimer",
          create(CreateTimerRequestSchema, {
            groupId: group,
            timerId: id,
            schedule: { case: "fireAt", value: timestampFromMs(fireAtMs) },
            callback: { target: { case: "http", value: { url: receiver.url, headers: {} } } },
          }),
        ),
      ),
    );
  }
  return ids;
}

function arrivals(group: string): Map<string, Received[]> {
  const byId = new Map<string, Received[]>();
  for (const r of receiver.received) {
    if (r.groupId !== group) continue;
    byId.set(r.timerId, [...(byId.get(r.timerId) ?? []), r]);
  }
  return byId;
}

/** Timers of `group` claimed by dispatcher `id` and not finished: its deliveries in flight. */
async function inFlightOf(
  group: string,
  id: string,
): Promise<{ timer_id: string; claim_expires_at: Date }[]> {
  const { rows } = await mesh.db.pool.query<{ timer_id: string; claim_expires_at: Date }>(
    "SELECT timer_id, claim_expires_at FROM timers WHERE group_id = $1 AND state = $2 AND split_part(claim_owner, '#', 1) = $3",
    [group, State.Firing, id],
  );
  return rows;
}

async function ownersOfAllShards(): Promise<string[]> {
  const { rows } = await mesh.db.pool.query<{ owner: string | null }>(
    "SELECT DISTINCT owner FROM shard_owners",
  );
  return rows.map((r) => r.owner ?? "none").sort();
}

async function countInState(group: string, state: number): Promise<number> {
  const { rows } = await mesh.db.pool.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM timers WHERE group_id = $1 AND state = $2",
    [group, state],
  );
  return rows[0]!.n;
}

describe("a dispatcher that loses its lease mid-delivery", () => {
  test("stalled (SIGSTOP) past its lease and resumed: every timer delivered once, one attempt each, its outcomes recorded", async () => {
    const group = "stall";
    const d1 = mesh.dispatchers[0]!; // startMesh names them d1, d2
    await waitFor(
      async () => (await ownersOfAllShards()).join() === "d1,d2",
      20_000,
      "both dispatchers to own shards",
    );
    const ids = await createDueAt(group, 200, Date.now() + 2_000);
    // Every delivery is in flight at the receiver (which answers after 4 s): stop d1 now.
    await waitFor(() => arrivals(group).size === ids.length, 20_000, "every timer's delivery to start");
    d1.child.kill("SIGSTOP");
    let stalledClaims: number;
    try {
      stalledClaims = (await inFlightOf(group, "d1")).length;
      assert.ok(stalledClaims > 0, "d1 had deliveries in flight when it stopped");
      // Its lease lapses and d2 takes every shard while d1 is stopped: a real takeover.
      await waitFor(
        async () => (await ownersOfAllShards()).join() === "d2",
        20_000,
        "d2 to take over d1's shards",
      );
    } finally {
      d1.child.kill("SIGCONT");
    }
    await waitFor(
      async () => (await countInState(group, State.Succeeded)) === ids.length,
      30_000,
      "every timer to be SUCCEEDED",
    );

    const repeated = [...arrivals(group)].filter(([, rs]) => rs.length > 1).map(([id]) => id);
    assert.deepEqual(repeated, [], `timers delivered twice (d1 had ${stalledClaims} in flight)`);
    const { rows } = await mesh.db.pool.query<{ timer_id: string; n: number; outcomes: string }>(
      `SELECT timer_id, count(*)::int AS n, string_agg(outcome || ' by ' || dispatcher_id, ', ') AS outcomes
         FROM timer_attempts WHERE group_id = $1 GROUP BY timer_id HAVING count(*) <> 1 OR bool_or(outcome <> 'succeeded')`,
      [group],
    );
    assert.deepEqual(rows, [], "one succeeded attempt per timer in history");
    const { rows: byD1 } = await mesh.db.pool.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM timer_attempts WHERE group_id = $1 AND dispatcher_id = 'd1'",
      [group],
    );
    assert.equal(byD1[0]!.n, stalledClaims, "d1 recorded the outcome of every delivery it had in flight");
    for (const rs of arrivals(group).values())
      assert.ok(rs[0]!.receivedAtMs >= rs[0]!.fireAtMs, "never early");
  });

  test("killed (SIGKILL) mid-delivery: its claims are delivered again once their deadline passed, not before", async () => {
    const group = "killed";
    const d1 = mesh.dispatchers[0]!;
    await waitFor(
      async () => (await ownersOfAllShards()).join() === "d1,d2",
      30_000,
      "d1 to own shards again after the stall",
    );
    const ids = await createDueAt(group, 200, Date.now() + 2_000);
    await waitFor(() => arrivals(group).size === ids.length, 20_000, "every timer's delivery to start");
    // Only the repeats are answered at once: every first delivery is already waiting out its 4 s.
    for (const id of ids) answerAtOnce.add(id);
    d1.child.kill("SIGKILL");
    await d1.exited;
    const orphaned = await inFlightOf(group, "d1");
    assert.ok(orphaned.length > 0, "d1 had deliveries in flight when it was killed");
    await waitFor(
      async () => (await countInState(group, State.Succeeded)) === ids.length,
      40_000,
      "every timer to be SUCCEEDED",
    );

    const got = arrivals(group);
    for (const { timer_id, claim_expires_at } of orphaned) {
      const rs = got.get(timer_id)!;
      assert.equal(rs.length, 2, `${timer_id}: delivered again after the kill`);
      assert.ok(
        rs[1]!.receivedAtMs >= claim_expires_at.getTime(),
        `${timer_id}: delivered again ${claim_expires_at.getTime() - rs[1]!.receivedAtMs} ms before its claim's deadline`,
      );
    }
    const orphanIds = new Set(orphaned.map((o) => o.timer_id));
    const othersRepeated = [...got]
      .filter(([id, rs]) => !orphanIds.has(id) && rs.length !== 1)
      .map(([id]) => id);
    assert.deepEqual(othersRepeated, [], "timers d1 was not delivering arrived once");
    const { rows } = await mesh.db.pool.query<{ outcomes: string }>(
      `SELECT string_agg(outcome, ',' ORDER BY attempt) AS outcomes FROM timer_attempts
        WHERE group_id = $1 AND timer_id = ANY($2::text[]) GROUP BY timer_id`,
      [group, [...orphanIds]],
    );
    assert.deepEqual(
      new Set(rows.map((r) => r.outcomes)),
      new Set(["abandoned,succeeded"]),
      "history: the cut-off attempt, then the repeat",
    );
  });
});
