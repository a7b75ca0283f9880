// Dispatchers under stress and change: a restart after downtime (backlog drained oldest first,
// without starving timers due now), two dispatchers racing on one database (each timer fired
// once), and SIGTERM with deliveries in flight (they finish and are recorded before exit).
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  CallbackSchema,
  CreateTimerRequestSchema,
  type CreateTimerRequest,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { State } from "../../services/shared/src/timer-model.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startHttpReceiver, type Received } from "../support/receivers.js";
import { waitFor } from "../support/wait.js";
import { createAll, fireAtMsOf } from "../support/timer-client.js";

// ---------------------------------------------------------------------------------------------
// helpers

function req(
  groupId: string,
  timerId: string,
  url: string,
  schedule: { fireAtMs: number } | { delayMs: number },
): CreateTimerRequest {
  return create(CreateTimerRequestSchema, {
    groupId,
    timerId,
    schedule:
      "fireAtMs" in schedule
        ? { case: "fireAt", value: timestampFromMs(schedule.fireAtMs) }
        : { case: "delay", value: durationFromMs(schedule.delayMs) },
    callback: create(CallbackSchema, { target: { case: "http", value: { url, headers: {} } } }),
    payload: new TextEncoder().encode(timerId),
  });
}

async function stateCounts(mesh: TestMesh, groupId: string): Promise<Map<number, number>> {
  const { rows } = await mesh.db.pool.query<{ state: number; n: string }>(
    "SELECT state, count(*) AS n FROM timers WHERE group_id = $1 GROUP BY state",
    [groupId],
  );
  return new Map(rows.map((r) => [r.state, Number(r.n)]));
}

async function waitAllSucceeded(
  mesh: TestMesh,
  groupId: string,
  n: number,
  timeoutMs: number,
): Promise<void> {
  let last = new Map<number, number>();
  try {
    await waitFor(
      async () => {
        last = await stateCounts(mesh, groupId);
        return last.get(State.Succeeded) === n;
      },
      timeoutMs,
      `${n} timers of ${groupId} to be SUCCEEDED`,
      100,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}; states now: ${JSON.stringify(Object.fromEntries(last))}`, {
      cause: err,
    });
  }
}

function countBy<T>(items: T[], key: (t: T) => string): Map<string, number> {
  const m = new Map<string, number>();
  for (const it of items) m.set(key(it), (m.get(key(it)) ?? 0) + 1);
  return m;
}

/** Asserts each expected id was seen exactly once, reporting counts when not. */
function assertEachOnce(counts: Map<string, number>, expected: string[], what: string): void {
  const missing = expected.filter((id) => !counts.has(id));
  const dup = [...counts].filter(([, n]) => n > 1);
  const known = new Set(expected);
  const unknown = [...counts.keys()].filter((id) => !known.has(id));
  assert.ok(
    missing.length === 0 && dup.length === 0 && unknown.length === 0,
    `${what}: ${expected.length} expected, ${counts.size} distinct delivered, ${[...counts.values()].reduce((a, b) => a + b, 0)} deliveries in all; ` +
      `${missing.length} missing (${missing.slice(0, 5).join(",")}), ${dup.length} delivered more than once ` +
      `(${dup
        .slice(0, 5)
        .map(([id, n]) => `${id}x${n}`)
        .join(",")}), ${unknown.length} unexpected`,
  );
}

function shuffled<T>(xs: T[]): T[] {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/**
 * A slow receiver: an HTTP proxy in front of a recording receiver (startHttpReceiver). Each
 * request is forwarded at once, so the receiver records its true arrival time, and the answer
 * goes back to the dispatcher only after `hold`: a number of milliseconds (a receiver that is
 * merely slow), or a promise the test resolves (a receiver that answers when the test says).
 */
async function startSlowProxy(
  targetUrl: string,
  hold: number | Promise<void>,
): Promise<{ url: string; answered: () => number } & AsyncDisposable> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1024 });
  let answered = 0;
  const server = http.createServer((inReq, inRes) => {
    const chunks: Buffer[] = [];
    inReq.on("data", (c: Buffer) => chunks.push(c));
    inReq.on("end", () => {
      const up = http.request(targetUrl, { method: inReq.method, headers: inReq.headers, agent }, (upRes) => {
        upRes.resume();
        upRes.on("end", () => {
          const answer = () => {
            inRes.statusCode = upRes.statusCode ?? 502;
            answered++;
            inRes.end();
          };
          if (typeof hold === "number") setTimeout(answer, hold);
          else void hold.then(answer);
        });
      });
      up.on("error", () => {
        inRes.statusCode = 502;
        inRes.end();
      });
      up.end(Buffer.concat(chunks));
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`,
    answered: () => answered,
    async [Symbol.asyncDispose]() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      agent.destroy();
    },
  };
}

// ---------------------------------------------------------------------------------------------

describe("restart after downtime", () => {
  test("a backlog built while no dispatcher ran is delivered once each, oldest first, without starving timers due now", async () => {
    // A small delivery capacity and a slow receiver make the backlog take seconds to drain,
    // so timers due now really compete with it. (With the default capacity all 300 leave at
    // once over 300 new connections, and their arrival order says nothing about the dispatcher.)
    // One group at one receiver: fair delivery caps it at its share of the slots (5 of 10 here,
    // so the backlog drains in seconds, not half a minute); its own timers due now still go first.
    const dispatcherEnv = {
      POLL_INTERVAL: "250ms",
      OVERDUE_GRACE: "1s",
      MAX_IN_FLIGHT: "10",
      DELIVERY_GROUP_SHARE: "50",
      DELIVERY_DESTINATION_SHARE: "50",
    };
    await using mesh = await startMesh({ dispatchers: 1, dispatcherEnv });
    await using rx = await startHttpReceiver();
    await using slow = await startSlowProxy(rx.url, 200);
    const group = "backlog";

    const code = await mesh.dispatchers[0]!.stop("SIGTERM");
    assert.equal(
      code,
      0,
      `dispatcher d1 should exit 0 on SIGTERM; output:\n${mesh.dispatchers[0]!.output().slice(-2000)}`,
    );

    // 300 timers due within the next second, created in random order so that neither insertion
    // order nor physical row order gives away their due order.
    const n = 300;
    const base = Date.now() + 300;
    const backlogReqs = Array.from({ length: n }, (_, i) =>
      req(group, `b-${String(i).padStart(3, "0")}`, slow.url, { fireAtMs: base + i * 2 }),
    );
    const backlog = await createAll(mesh.client, shuffled(backlogReqs));
    const lastFire = Math.max(...[...backlog.values()].map(fireAtMsOf));
    // Overdue beyond OVERDUE_GRACE: downtime, not a timer that is merely a little late.
    await waitFor(() => Date.now() > lastFire + 1500, 30_000, "every backlog timer to be overdue");
    assert.equal(
      (await stateCounts(mesh, group)).get(State.Scheduled),
      n,
      "nothing may fire while no dispatcher runs",
    );
    assert.equal(rx.received.length, 0);

    await mesh.addDispatcher("d1", dispatcherEnv);
    const fresh = await createAll(
      mesh.client,
      Array.from({ length: 5 }, (_, i) => req(group, `now-${i}`, slow.url, { delayMs: 0 })),
    );

    await waitAllSucceeded(mesh, group, n + fresh.size, 60_000);
    const counts = countBy(rx.received, (r) => r.timerId);
    assertEachOnce(counts, [...backlog.keys(), ...fresh.keys()], "after the restart");
    for (const r of rx.received)
      assert.ok(r.receivedAtMs >= r.fireAtMs, `${r.timerId} arrived ${r.fireAtMs - r.receivedAtMs}ms early`);

    // Oldest first: the first 50 backlog timers delivered are among the 100 oldest.
    const rank = new Map(
      [...backlog.values()].sort((a, b) => fireAtMsOf(a) - fireAtMsOf(b)).map((t, i) => [t.timerId, i]),
    );
    const order = rx.received.filter((r) => rank.has(r.timerId)).map((r) => rank.get(r.timerId)!);
    const firstFifty = order.slice(0, 50);
    assert.ok(
      firstFifty.every((k) => k < 100),
      `the first 50 backlog deliveries should be among the oldest 100; their ranks: ${firstFifty.join(",")}`,
    );
    // Deliveries leave in due order, so concurrency can displace one only by about the number in
    // flight (MAX_IN_FLIGHT=10); allow twice that.
    const displaced = order.map((k, pos) => ({ k, pos })).filter(({ k, pos }) => Math.abs(k - pos) > 20);
    assert.equal(
      displaced.length,
      0,
      `backlog delivered out of due order (rank@position): ${displaced
        .slice(0, 10)
        .map(({ k, pos }) => `${k}@${pos}`)
        .join(" ")}`,
    );

    // Timers due now are not starved by the backlog: each goes out while most of the backlog is
    // still waiting. Counted in backlog deliveries rather than milliseconds, so a busy machine,
    // which slows both alike, cannot fail it: a starved timer would wait behind the whole backlog
    // (the backlog drains at about 25/s here, 5 slots x 200 ms, so half of it is some 6 s).
    const arrivalIndex = new Map(rx.received.map((r, i) => [r.timerId, i]));
    for (const [id, t] of fresh) {
      const at = arrivalIndex.get(id)!;
      const backlogBefore = rx.received.slice(0, at).filter((r) => rank.has(r.timerId)).length;
      const late = rx.received[at]!.receivedAtMs - fireAtMsOf(t);
      assert.ok(
        backlogBefore < n / 2,
        `${id} (due now) went out after ${backlogBefore} of the ${n} backlog timers (${late} ms late): it waited behind the backlog`,
      );
    }
  });
});

describe("two dispatchers on one database", () => {
  test("2,000 timers over ~4s: every timer delivered once, never early, and both dispatchers share the work", async () => {
    await using mesh = await startMesh({ dispatchers: 2, dispatcherEnv: { POLL_INTERVAL: "250ms" } });
    await using rx = await startHttpReceiver();
    const group = "pair";
    const n = 2000;
    // Creating 2,000 timers takes a few seconds on a small machine; starting the spread 5s out
    // keeps nearly all of them in the future when created, so the dispatchers race on timers
    // they both hold in memory rather than on a backlog.
    const base = Date.now() + 5000;
    const timers = await createAll(
      mesh.client,
      Array.from({ length: n }, (_, i) =>
        req(group, `p-${String(i).padStart(4, "0")}`, rx.url, { fireAtMs: base + i * 2 }),
      ),
      200,
    );
    await waitFor(() => new Set(rx.received.map((r) => r.timerId)).size >= n, 60_000, `${n} deliveries`, 100);
    await waitAllSucceeded(mesh, group, n, 30_000);

    assertEachOnce(
      countBy(rx.received, (r: Received) => r.timerId),
      [...timers.keys()],
      "two dispatchers",
    );
    const early = rx.received.filter((r) => r.receivedAtMs < fireAtMsOf(timers.get(r.timerId)!));
    assert.equal(
      early.length,
      0,
      `${early.length} timers arrived early, e.g. ${early
        .slice(0, 3)
        .map((r) => r.timerId)
        .join(",")}`,
    );
    for (const r of rx.received) assert.equal(r.fireAtMs, fireAtMsOf(timers.get(r.timerId)!));

    const { rows } = await mesh.db.pool.query<{ dispatcher_id: string; outcome: string; n: string }>(
      "SELECT dispatcher_id, outcome, count(*) AS n FROM timer_attempts WHERE group_id = $1 GROUP BY dispatcher_id, outcome ORDER BY dispatcher_id",
      [group],
    );
    const summary = rows.map((r) => `${r.dispatcher_id}:${r.outcome}=${r.n}`).join(" ");
    assert.equal(
      rows.reduce((a, r) => a + Number(r.n), 0),
      n,
      `one attempt row per timer; got ${summary}`,
    );
    assert.ok(
      rows.every((r) => r.outcome === "succeeded"),
      summary,
    );
    assert.deepEqual(
      new Set(rows.map((r) => r.dispatcher_id)),
      new Set(["d1", "d2"]),
      `both dispatchers should have fired timers; got ${summary}`,
    );
  });
});

describe("SIGTERM with deliveries in flight", () => {
  test("the dispatcher finishes and records in-flight deliveries, then exits 0", async () => {
    await using mesh = await startMesh({
      dispatchers: 1,
      dispatcherEnv: { POLL_INTERVAL: "250ms", SHUTDOWN_TIMEOUT: "30s" },
    });
    await using rx = await startHttpReceiver();
    // The receiver holds every answer until the test lets go, so the deliveries are surely in
    // flight when SIGTERM comes, however slowly this machine runs.
    let letGo!: () => void;
    const gate = new Promise<void>((r) => (letGo = r));
    await using slow = await startSlowProxy(rx.url, gate);
    const group = "inflight";
    const n = 20;
    const timers = await createAll(
      mesh.client,
      Array.from({ length: n }, (_, i) => req(group, `f-${i}`, slow.url, { delayMs: 0 })),
    );

    await waitFor(
      () => new Set(rx.received.map((r) => r.timerId)).size >= n,
      30_000,
      `the receiver to see all ${n} requests`,
    );
    const d1 = mesh.dispatchers[0]!;
    const stopping = d1.stop("SIGTERM", 60_000);
    try {
      // A dispatcher that has handed its shards back has nothing left to do but wait for the
      // deliveries in flight: it must still be running, waiting for them.
      await waitFor(
        async () =>
          (await mesh.db.pool.query("SELECT 1 FROM shard_owners WHERE owner = 'd1'")).rowCount === 0 ||
          d1.child.exitCode !== null,
        30_000,
        "d1 to hand its shards back",
      );
      assert.equal(
        d1.child.exitCode,
        null,
        `the dispatcher exited with ${n} deliveries unanswered; output:\n${d1.output().slice(-3000)}`,
      );
      assert.equal(slow.answered(), 0);
    } finally {
      letGo();
    }
    const code = await stopping;
    assert.equal(code, 0, `dispatcher should exit 0; output:\n${d1.output().slice(-3000)}`);
    assert.equal(slow.answered(), n, "every held request was answered before the dispatcher exited");

    const counts = await stateCounts(mesh, group);
    assert.equal(
      counts.get(State.Succeeded),
      n,
      `all ${n} timers should be SUCCEEDED; states: ${JSON.stringify(Object.fromEntries(counts))}`,
    );
    const { rows } = await mesh.db.pool.query<{ timer_id: string; outcome: string }>(
      "SELECT timer_id, outcome FROM timer_attempts WHERE group_id = $1",
      [group],
    );
    assertEachOnce(
      countBy(rows, (r) => r.timer_id),
      [...timers.keys()],
      "timer_attempts rows",
    );
    assert.ok(rows.every((r) => r.outcome === "succeeded"));
    assertEachOnce(
      countBy(rx.received, (r) => r.timerId),
      [...timers.keys()],
      "deliveries",
    );
  });
});
