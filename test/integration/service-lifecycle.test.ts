// Services start whatever their dependencies are doing: each opens its ports at once, says it is
// not ready (and answers calls UNAVAILABLE) while Postgres is unreachable, and becomes ready when
// Postgres comes; the mesh started with NATS down works through NATS coming, going and coming
// back, with nothing lost and nothing early.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AdminService } from "../../services/shared/src/gen/admin/v1/admin_pb.js";
import { DispatcherService } from "../../services/shared/src/gen/dispatcher/v1/dispatcher_pb.js";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../../services/shared/src/gen/grpc/health/v1/health_pb.js";
import { TimerService } from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { createPool } from "../../services/shared/src/db.js";
import { createTestDatabase } from "../support/database.js";
import { startNats } from "../support/nats-server.js";
import { startPrivatePostgres } from "../support/private-postgres.js";
import { startHttpReceiver, type Received } from "../support/receivers.js";
import { startService, type ServiceProcess } from "../support/service-process.js";
import { httpTimerAt } from "../support/timer-client.js";
import { waitFor } from "../support/wait.js";

const grpc = (port: number) => createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` });

/** The service's /readyz once its HTTP port answers (it must open, and stay up, while a dependency is down). */
async function firstReadiness(s: ServiceProcess) {
  return s.whileAlive(
    waitFor(() => s.readiness().catch(() => undefined), 30_000, `${s.name}'s HTTP port to answer`),
  );
}

async function assertUnavailable(call: Promise<unknown>, mentions: RegExp, what: string): Promise<void> {
  await assert.rejects(call, (err: unknown) => {
    const e = ConnectError.from(err);
    assert.equal(e.code, Code.Unavailable, `${what}: ${Code[e.code]} ${e.rawMessage}`);
    assert.match(e.rawMessage, mentions, what);
    return true;
  });
}

/** Asserts every id was received exactly once and none before its fire time (receiver's clock). */
function assertOnceOnTime(received: Received[], ids: string[], what: string): void {
  const counts = new Map<string, number>();
  for (const r of received) counts.set(r.timerId, (counts.get(r.timerId) ?? 0) + 1);
  const missing = ids.filter((id) => !counts.has(id));
  const twice = [...counts].filter(([, n]) => n > 1).map(([id, n]) => `${id}x${n}`);
  assert.deepEqual(
    { missing, twice },
    { missing: [], twice: [] },
    `${what}: every timer delivered exactly once`,
  );
  const early = received
    .filter((r) => r.receivedAtMs < r.fireAtMs)
    .map((r) => `${r.timerId} ${r.fireAtMs - r.receivedAtMs}ms early`);
  assert.deepEqual(early, [], `${what}: none early`);
}

describe("Postgres down at start", () => {
  test("timer, dispatcher and admin open their ports, are not ready, and become ready when Postgres comes", async () => {
    // The test's own cluster, stopped: nothing listens on its port until start().
    await using pg = await startPrivatePostgres();
    await pg.stop();
    await using nats = await startNats();
    await using rx = await startHttpReceiver();
    const env = { DATABASE_URL: pg.url, SHARD_COUNT: "16" };
    await using timer = await startService(
      "timer",
      { ...env, ...nats.serviceEnv("timer") },
      { waitReady: false },
    );
    await using dispatcher = await startService(
      "dispatcher",
      { ...env, ...nats.serviceEnv("dispatcher"), DISPATCHER_ID: "d1" },
      { waitReady: false },
    );
    await using admin = await startService(
      "admin",
      { ...env, ...nats.serviceEnv("admin") },
      { waitReady: false },
    );
    const services = [timer, dispatcher, admin];

    for (const s of services) {
      const r = await firstReadiness(s);
      assert.equal(r.status, 503, `${s.name} /readyz while Postgres is down: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.checks.postgres, false, `${s.name} names Postgres as what is missing`);
      // The operations documents' names for the same answers.
      assert.equal(
        (await fetch(`http://127.0.0.1:${s.httpPort}/health/live`)).status,
        200,
        `${s.name} /health/live`,
      );
      assert.equal(
        (await fetch(`http://127.0.0.1:${s.httpPort}/health/ready`)).status,
        503,
        `${s.name} /health/ready`,
      );
      const health = createClient(Health, grpc(s.grpcPort));
      assert.equal(
        (await health.check({ service: "" })).status,
        ServingStatus.NOT_SERVING,
        `${s.name} gRPC health`,
      );
    }
    const timers = createClient(TimerService, grpc(timer.grpcPort));
    const admins = createClient(AdminService, grpc(admin.grpcPort));
    const dispatchers = createClient(DispatcherService, grpc(dispatcher.grpcPort));
    await assertUnavailable(
      timers.createTimer(httpTimerAt("lifecycle", "early", Date.now() + 60_000, rx.url)),
      /database not ready/,
      "CreateTimer",
    );
    await assertUnavailable(admins.listGroups({}), /database not ready/, "ListGroups");
    await assertUnavailable(dispatchers.getStatus({}), /database not ready/, "GetStatus");

    await pg.start();
    for (const s of services) await s.waitReady(60_000);
    for (const s of services)
      assert.equal(
        (await fetch(`http://127.0.0.1:${s.httpPort}/health/ready`)).status,
        200,
        `${s.name} /health/ready`,
      );
    for (const s of services) {
      const health = createClient(Health, grpc(s.grpcPort));
      await waitFor(
        async () => (await health.check({ service: "" })).status === ServingStatus.SERVING,
        30_000,
        `${s.name} gRPC health SERVING`,
      );
    }

    // A timer created through the timer service fires through the dispatcher, not early.
    const fireAtMs = Date.now() + 1_000;
    const created = await timers.createTimer(httpTimerAt("lifecycle", "after-start", fireAtMs, rx.url));
    assert.equal(created.created, true);
    await waitFor(() => rx.received.length >= 1, 30_000, "the timer to fire");
    assertOnceOnTime(rx.received, ["after-start"], "after Postgres came");
    assert.ok(
      (await admins.listGroups({})).groups.some((g) => g.groupId === "lifecycle"),
      "the admin service answers from Postgres",
    );

    // The outage is logged when it starts, not once per attempt.
    for (const s of services) {
      const lines = s
        .output()
        .split("\n")
        .filter((l) => l.includes("Postgres not reachable yet"));
      assert.ok(
        lines.length >= 1 && lines.length <= 2,
        `${s.name} logged the outage ${lines.length} times:\n${lines.join("\n")}`,
      );
    }
  });
});

describe("NATS down at start, then lost and back mid-run", () => {
  test("the timer service stays ready, dispatchers wait for NATS, and every timer fires once, never early", async () => {
    await using db = await createTestDatabase();
    // Port and users chosen; nothing listens there yet.
    await using nats = await startNats({ launch: false });
    await using rx = await startHttpReceiver();
    const env = { DATABASE_URL: db.url, SHARD_COUNT: "16" };

    // Ready on Postgres alone: creating a timer does not need NATS.
    await using timer = await startService("timer", { ...env, ...nats.serviceEnv("timer") });
    const t0 = await timer.readiness();
    assert.equal(
      t0.body.checks.nats,
      false,
      `the timer service reports NATS down: ${JSON.stringify(t0.body)}`,
    );
    // The operations documents' probes say the same, and NATS's state is a metric (NatsDisconnected).
    for (const path of ["/health/live", "/health/ready"])
      assert.equal(
        (await fetch(`http://127.0.0.1:${timer.httpPort}${path}`)).status,
        200,
        `timer ${path} without NATS`,
      );
    const natsConnected = async () =>
      /^nats_connected (\d)$/m.exec(
        await (await fetch(`http://127.0.0.1:${timer.httpPort}/metrics`)).text(),
      )?.[1];
    assert.equal(await natsConnected(), "0", "nats_connected while NATS has never been up");
    // The admin service too: most of its calls are Postgres alone; those through the dispatchers say NATS is missing.
    await using admin = await startService("admin", { ...env, ...nats.serviceEnv("admin") });
    const admins = createClient(AdminService, grpc(admin.grpcPort));
    await assertUnavailable(admins.listDispatchers({}), /NATS/, "ListDispatchers without NATS");
    await admins.listGroups({});
    const d = await Promise.all(
      ["d1", "d2"].map((id) =>
        startService(
          "dispatcher",
          { ...env, ...nats.serviceEnv("dispatcher"), DISPATCHER_ID: id },
          { waitReady: false },
        ),
      ),
    );
    await using d1 = d[0]!;
    await using d2 = d[1]!;
    for (const s of [d1, d2]) {
      const r = await firstReadiness(s);
      assert.equal(r.status, 503, `${s.name} must not be ready without NATS: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.checks.nats, false);
    }

    const timers = createClient(TimerService, grpc(timer.grpcPort));
    const ids: string[] = [];
    const createBatch = async (prefix: string, n: number, fromMs: number, spreadMs: number) => {
      for (let i = 0; i < n; i++) {
        const id = `${prefix}-${i}`;
        const res = await timers.createTimer(
          httpTimerAt("nats-outage", id, Date.now() + fromMs + Math.floor((i * spreadMs) / n), rx.url),
        );
        assert.equal(res.created, true);
        ids.push(id);
      }
    };
    // Created while NATS has never been up: no announcement; the dispatchers' poll finds them.
    await createBatch("before", 20, 3_000, 2_000);

    await nats.restart();
    await d1.waitReady(30_000);
    await d2.waitReady(30_000);
    await waitFor(
      async () => (await timer.readiness()).body.checks.nats === true,
      30_000,
      "the timer service to connect to NATS",
    );
    assert.equal(await natsConnected(), "1", "nats_connected once connected");
    await waitFor(
      async () =>
        (await admins.listDispatchers({}).catch(() => ({ dispatchers: [] }))).dispatchers.filter(
          (x) => x.live,
        ).length === 2,
      30_000,
      "the admin service to hear both dispatchers",
    );

    // Announced ones, due over the next seconds; NATS dies while they fire.
    await createBatch("during", 60, 1_000, 6_000);
    await waitFor(
      () => rx.received.filter((r) => r.timerId.startsWith("during-")).length >= 10,
      30_000,
      "the first announced timers to fire",
    );
    await nats.stop("SIGKILL");
    await waitFor(
      async () => (await timer.readiness()).body.checks.nats === false,
      30_000,
      "the timer service to notice NATS is gone",
    );
    const whileDown = await timer.readiness();
    assert.equal(
      whileDown.status,
      200,
      `the timer service stays ready while NATS is down: ${JSON.stringify(whileDown.body)}`,
    );
    // Creates go on without NATS.
    await createBatch("outage", 20, 1_000, 2_000);

    await nats.restart();
    await waitFor(
      () => ids.every((id) => rx.received.some((r) => r.timerId === id)),
      60_000,
      `all ${ids.length} timers to fire`,
    );
    await waitFor(
      async () => (await timer.readiness()).body.checks.nats === true,
      30_000,
      "the timer service to reconnect",
    );
    for (const s of [d1, d2]) await s.waitReady(30_000);
    assertOnceOnTime(rx.received, ids, "through the NATS outages");
  });
});

describe("every query has a timeout", () => {
  test("a pooled query running past DB_STATEMENT_TIMEOUT is cancelled by Postgres", async () => {
    await using db = await createTestDatabase();
    const pool = createPool(db.url, 1, "statement-timeout-test", 500);
    try {
      assert.equal(
        (await pool.query<{ statement_timeout: string }>("SHOW statement_timeout")).rows[0]!
          .statement_timeout,
        "500ms",
      );
      await assert.rejects(pool.query("SELECT pg_sleep(5)"), (err: { code?: string }) => {
        assert.equal(err.code, "57014", "query_canceled: statement timeout");
        return true;
      });
    } finally {
      await pool.end();
    }
  });
});
