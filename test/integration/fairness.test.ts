// Fair delivery against the real processes: one group whose receiver accepts callbacks and
// never answers holds only its share of a dispatcher's delivery slots, and another group's
// timers due right behind it fire while those deliveries still hang. The assertions are about
// independence (B done while every A delivery is still open), not speed: CALLBACK_TIMEOUT is
// long enough that nothing of A can end before B is done unless B waited for A.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startHangingHttpReceiver, startHttpReceiver } from "../support/receivers.js";
import { createAll, httpTimerAt } from "../support/timer-client.js";
import { waitFor } from "../support/wait.js";

const MAX_IN_FLIGHT = 40;
const SHARE_PERCENT = 25;
const CAP = (MAX_IN_FLIGHT * SHARE_PERCENT) / 100; // 10 slots per group and per destination
const A_TIMERS = 60;
const B_TIMERS = 30;

let mesh: TestMesh;

before(async () => {
  mesh = await startMesh({
    dispatchers: 1,
    dispatcherEnv: {
      MAX_IN_FLIGHT: String(MAX_IN_FLIGHT),
      DELIVERY_GROUP_SHARE: String(SHARE_PERCENT),
      DELIVERY_DESTINATION_SHARE: String(SHARE_PERCENT),
      // Long, so that an A delivery ending before B is done can only mean B waited for A.
      CALLBACK_TIMEOUT: "120s",
      POLL_INTERVAL: "250ms",
      // The hanging deliveries must not hold up the teardown.
      SHUTDOWN_TIMEOUT: "1s",
    },
  });
});
after(async () => {
  await mesh?.[Symbol.asyncDispose]();
});

async function states(groupId: string): Promise<Record<string, number>> {
  const { rows } = await mesh.db.pool.query<{ state: number; n: number }>(
    "SELECT state, count(*)::int AS n FROM timers WHERE group_id = $1 GROUP BY state",
    [groupId],
  );
  return Object.fromEntries(
    rows.map((r) => [["", "scheduled", "firing", "succeeded", "failed", "cancelled"][r.state]!, r.n]),
  );
}

async function metric(name: string): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${mesh.dispatchers[0]!.httpPort}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(" ") + 1));
}

test("a group whose receiver hangs holds only its share of the slots; another group's timers fire meanwhile, exactly once", async () => {
  await using hanging = await startHangingHttpReceiver();
  await using healthy = await startHttpReceiver();
  const aDue = Date.now() + 4_000;
  const bDue = aDue + 200;
  await createAll(mesh.client, [
    ...Array.from({ length: A_TIMERS }, (_, i) => httpTimerAt("team-a", `a-${i}`, aDue, hanging.url)),
    ...Array.from({ length: B_TIMERS }, (_, i) => httpTimerAt("team-b", `b-${i}`, bDue, healthy.url)),
  ]);

  await waitFor(() => healthy.received.length >= B_TIMERS, 100_000, `${B_TIMERS} callbacks of team-b`);

  // B is done while every A delivery started is still hanging: none ended, none was retried.
  assert.equal(
    hanging.open(),
    CAP,
    "team-a holds exactly its share of the slots, still waiting on its receiver",
  );
  assert.equal(hanging.received.length, CAP, "no more than its share of team-a's callbacks left");
  const aAttempts = await mesh.db.pool.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM timer_attempts WHERE group_id = 'team-a'",
  );
  assert.equal(aAttempts.rows[0]!.n, 0, "no team-a delivery ended before team-b was done");
  // The rest of team-a waits unclaimed (parked), so no claim sits idle in Postgres.
  assert.deepEqual(await states("team-a"), { firing: CAP, scheduled: A_TIMERS - CAP });

  // Team B: every timer exactly once, first attempt, never early.
  const ids = healthy.received.map((r) => r.timerId);
  assert.equal(new Set(ids).size, B_TIMERS);
  assert.deepEqual([...ids].sort(), Array.from({ length: B_TIMERS }, (_, i) => `b-${i}`).sort());
  assert.ok(
    healthy.received.every((r) => r.groupId === "team-b" && r.attempt === 1 && r.receivedAtMs >= bDue),
  );
  await waitFor(
    async () => (await states("team-b")).succeeded === B_TIMERS,
    30_000,
    "team-b SUCCEEDED in Postgres",
  );

  // The parked timers are visible to operators.
  await waitFor(
    async () => (await metric("dispatcher_timers_parked")) === A_TIMERS - CAP,
    30_000,
    "dispatcher_timers_parked = parked team-a timers",
  );
  assert.ok(((await metric("dispatcher_timers_parked_total")) ?? 0) >= A_TIMERS - CAP);
});
