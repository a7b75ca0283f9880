// The mesh's NATS subjects belong to the mesh: the server enforces who may publish what
// (infra/nats/nats.conf), every receiver drops what does not decode or validate, and the admin
// calls dispatchers with its own credential. Real nats-server, Postgres and service processes.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { hashToken } from "../../services/shared/src/auth.js";
import { TimerAnnouncementSchema } from "../../services/shared/src/gen/mesh/v1/mesh_pb.js";
import { CreateTimerRequestSchema } from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { HEARTBEAT_SUBJECT, LEAVE_SUBJECT, shardSubject } from "../../services/shared/src/mesh-messages.js";
import { shardOf } from "../../services/shared/src/shard.js";
import { bufCurl } from "../support/buf-curl.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startNats } from "../support/nats-server.js";
import { startHttpReceiver } from "../support/receivers.js";
import { startService, type ServiceProcess } from "../support/service-process.js";
import { waitFor } from "../support/wait.js";

const SHARDS = 64;
/** An operator's token: admin on the admin service, but only a group token on the dispatchers. */
const OPS = "ops-token-3f9d21c7a8";
/** The admin service's own token for dispatchers (DISPATCHER_TOKEN): admin there. */
const ADMIN_SERVICE = "admin-service-token-8e4b7a";
const tokenList = (entries: { name: string; token: string; admin?: boolean; groups?: string[] }[]) =>
  JSON.stringify(entries.map(({ token, ...e }) => ({ ...e, sha256: hashToken(token) })));
const DISPATCHER_TOKENS = tokenList([
  { name: "ops", token: OPS, groups: ["*"] },
  { name: "admin-service", token: ADMIN_SERVICE, admin: true },
]);
const ADMIN_TOKENS = tokenList([{ name: "ops", token: OPS, admin: true }]);

/** Waits for the server's permission errors on `nc` naming each of `subjects`. */
async function permissionViolations(nc: NatsConnection, subjects: string[]): Promise<string[]> {
  const seen: string[] = [];
  void (async () => {
    for await (const s of nc.status()) if (s.type === "error") seen.push(String(s.error));
  })();
  return waitFor(
    () =>
      subjects.every((subject) =>
        seen.some((e) => e.includes(`Permissions Violation for Publish to "${subject}"`)),
      )
        ? seen
        : undefined,
    10_000,
    `permission violations for ${subjects.join(", ")}`,
  );
}

/** The value of mesh_messages_dropped_total for a subject (all reasons, or one) in a service's /metrics. */
async function dropped(service: ServiceProcess, subject: string, reason?: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${service.httpPort}/metrics`)).text();
  let total = 0;
  for (const line of text.split("\n")) {
    const m = /^mesh_messages_dropped_total\{([^}]*)\} (\d+(?:\.\d+)?)/.exec(line);
    if (!m || !m[1]!.includes(`subject="${subject}"`)) continue;
    if (reason && !m[1]!.includes(`reason="${reason}"`)) continue;
    total += Number(m[2]);
  }
  return total;
}

describe("the server's permissions: a tenant-callback connection", () => {
  test("may not publish on the mesh's or the server's subjects, and its JetStream publishes still work", async () => {
    await using nats = await startNats();
    const operator = await nats.connectAs("operator");
    const tenant = await nats.connectAs("callbacks");
    try {
      const reserved = [
        shardSubject(0),
        HEARTBEAT_SUBJECT,
        LEAVE_SUBJECT,
        "mesh.dispatchers.rebalance",
        "$JS.API.STREAM.LIST",
        "_INBOX.x",
        "$KV.config.key",
        "$SYS.REQ.SERVER.PING",
      ];
      const heard: string[] = [];
      operator.subscribe(">", { callback: (_e, m) => void heard.push(m.subject) });
      operator.subscribe("$SYS.>", { callback: (_e, m) => void heard.push(m.subject) });
      await operator.flush();
      const violations = permissionViolations(tenant, reserved);
      for (const subject of reserved)
        tenant.publish(subject, new TextEncoder().encode('{"g":["a","b"],"t":"x","s":0,"at":0}'));
      await tenant.flush();
      await violations;
      await operator.flush();
      assert.deepEqual(
        heard.filter((s) => reserved.includes(s)),
        [],
        "nothing reached a reserved subject",
      );

      // JetStream publish acks arrive on the tenant connection's inbox, which it may subscribe to.
      await jetstreamManager(operator).then((jsm) =>
        jsm.streams.add({ name: "TENANT", subjects: ["tenant.>"] }),
      );
      const ack = await jetstream(tenant).publish("tenant.orders.expired", new TextEncoder().encode("x"), {
        msgID: "k-1",
      });
      assert.equal(ack.stream, "TENANT");
      assert.equal(ack.seq, 1);
      tenant.publish("tenant.orders.plain", new TextEncoder().encode("y"));
      await tenant.flush();
      await waitFor(
        () => heard.includes("tenant.orders.plain"),
        5_000,
        "a core publish outside the reserved subjects",
      );
    } finally {
      await tenant.close();
      await operator.close();
    }
  });
});

describe("a mesh that drops malformed mesh messages", () => {
  let mesh: TestMesh;
  let admin: ServiceProcess;
  let receiver: Awaited<ReturnType<typeof startHttpReceiver>>;

  before(async () => {
    receiver = await startHttpReceiver();
    mesh = await startMesh({
      dispatchers: 2,
      env: { SHARD_COUNT: String(SHARDS), MEMBER_TTL: "1500ms", HEARTBEAT_INTERVAL: "250ms" },
      dispatcherEnv: { AUTH_TOKENS: DISPATCHER_TOKENS },
    });
    admin = await startService("admin", {
      ...mesh.envFor("admin"),
      AUTH_TOKENS: ADMIN_TOKENS,
      DISPATCHER_TOKEN: ADMIN_SERVICE,
    });
    await waitFor(
      async () => {
        const { rows } = await mesh.db.pool.query(
          "SELECT count(DISTINCT owner)::int AS owners, count(*)::int AS n FROM shard_owners WHERE owner IS NOT NULL",
        );
        return rows[0].owners === 2 && rows[0].n === SHARDS;
      },
      20_000,
      "two dispatchers to share the shards",
    );
  });
  after(async () => {
    await admin?.[Symbol.asyncDispose]();
    await mesh?.[Symbol.asyncDispose]();
    await receiver?.close();
  });

  const httpTimer = (groupId: string, timerId: string, fireAtMs: number) =>
    create(CreateTimerRequestSchema, {
      groupId,
      timerId,
      schedule: { case: "fireAt", value: timestampFromMs(fireAtMs) },
      callback: { target: { case: "http", value: { url: receiver.url, headers: {} } } },
    });
  const firedOf = (group: string) =>
    new Set(receiver.received.filter((r) => r.groupId === group).map((r) => r.timerId));

  test("the issue's JSON announcement and a protobuf one with a bad group id, sent as the timer service, are dropped; 20 timers due at the same time all fire", async () => {
    const group = "after-bad-announcement";
    // Timers of one shard, so that the forged entries would share their owner's claim batches.
    const ids: string[] = [];
    for (let i = 0; ids.length < 20; i++) if (shardOf(group, `t-${i}`, SHARDS) === 0) ids.push(`t-${i}`);
    const { rows } = await mesh.db.pool.query("SELECT owner FROM shard_owners WHERE shard = 0");
    const owner = rows[0].owner === "d1" ? mesh.dispatchers[0]! : mesh.dispatchers[1]!;

    // The reproduction: forged entries and real timers due at the same T share a claim.
    const dueMs = Date.now() + 6_000;
    const asTimerService = await mesh.nats.connectAs("timer");
    try {
      asTimerService.publish(
        shardSubject(0),
        new TextEncoder().encode(JSON.stringify({ g: ["a", "b"], t: "x", s: 0, at: dueMs })),
      );
      asTimerService.publish(
        shardSubject(0),
        toBinary(
          TimerAnnouncementSchema,
          create(TimerAnnouncementSchema, {
            groupId: '{"a","b"}',
            timerId: "x",
            shard: 0,
            dueAtMs: BigInt(dueMs),
          }),
        ),
      );
      await asTimerService.flush();
    } finally {
      await asTimerService.close();
    }
    await waitFor(
      async () => (await dropped(owner, "timers.shard.*")) >= 2,
      10_000,
      "the shard's owner to count both as dropped",
    );
    assert.ok(
      (await dropped(owner, "timers.shard.*", "invalid_id")) >= 1,
      "the protobuf one is refused for its group id",
    );
    assert.match(owner.output(), /dropped \d+ malformed message\(s\) on timers\.shard\.\*/);

    await Promise.all(ids.map((id) => mesh.client.call("createTimer", httpTimer(group, id, dueMs))));
    assert.ok(
      Date.now() < dueMs - 500,
      "the timers were created well before T (else the test proves nothing)",
    );
    await waitFor(() => firedOf(group).size === ids.length, 20_000, `all ${ids.length} timers to fire`);
    assert.doesNotMatch(owner.output(), /malformed array literal/);
  });

  test("a JSON heartbeat of a ghost and bare-text goodbyes of a live member, sent as a dispatcher, hide no one and stop no firing", async () => {
    const asDispatcher = await mesh.nats.connectAs("dispatcher");
    const enc = new TextEncoder();
    // The forms of earlier versions, which a tenant's callback could once publish: sent all
    // through the test, so any effect they had would show.
    const forge = () => {
      asDispatcher.publish(
        HEARTBEAT_SUBJECT,
        enc.encode(
          JSON.stringify({
            id: "ghost",
            grpc: "127.0.0.1:1",
            version: "x",
            started: Date.now(),
            draining: false,
          }),
        ),
      );
      asDispatcher.publish(LEAVE_SUBJECT, enc.encode("d2"));
    };
    forge();
    const forging = setInterval(forge, 100);
    try {
      for (const d of [...mesh.dispatchers, admin]) {
        await waitFor(
          async () => (await dropped(d, HEARTBEAT_SUBJECT)) >= 5 && (await dropped(d, LEAVE_SUBJECT)) >= 5,
          10_000,
          `${d.name} to drop forged heartbeats and goodbyes`,
        );
      }
      // Longer than MEMBER_TTL with forgeries arriving: had one been believed, d2 would be gone
      // from d1's view (and "ghost" in it), and some shards unowned.
      const members = async (port: number) =>
        (
          await bufCurl<{ members?: string[] }>(
            port,
            "dispatcher.v1.DispatcherService/GetStatus",
            {},
            ADMIN_SERVICE,
          )
        ).json?.members;
      const deadline = Date.now() + 2_000;
      while (Date.now() < deadline) {
        assert.deepEqual(await members(mesh.dispatchers[0]!.grpcPort), ["d1", "d2"]);
        await new Promise((r) => setTimeout(r, 200));
      }
      const listed = await bufCurl<{ dispatchers: { id: string }[] }>(
        admin.grpcPort,
        "admin.v1.AdminService/ListDispatchers",
        {},
        OPS,
      );
      assert.deepEqual(
        listed.json?.dispatchers.map((d) => d.id),
        ["d1", "d2"],
      );
      const { rows } = await mesh.db.pool.query(
        "SELECT count(DISTINCT owner)::int AS owners, count(owner)::int AS n FROM shard_owners",
      );
      assert.deepEqual(rows[0], { owners: 2, n: SHARDS });

      const group = "during-forgeries";
      const dueMs = Date.now() + 1_000;
      const ids = Array.from({ length: 20 }, (_, i) => `f-${i}`);
      await Promise.all(
        ids.map((id, i) => mesh.client.call("createTimer", httpTimer(group, id, dueMs + i * 20))),
      );
      await waitFor(() => firedOf(group).size === ids.length, 20_000, "all 20 timers to fire");
    } finally {
      clearInterval(forging);
      await asDispatcher.close();
    }
  });

  test("DrainDispatcher presents the admin's own DISPATCHER_TOKEN, never the operator's", async () => {
    // The premise: the operator's token is not enough on the dispatcher itself.
    const direct = await bufCurl(
      mesh.dispatchers[1]!.grpcPort,
      "dispatcher.v1.DispatcherService/Drain",
      {},
      OPS,
    );
    assert.equal(direct.code, "permission_denied");

    // An admin without DISPATCHER_TOKEN cannot drain, and says what to set.
    await using bare = await startService("admin", { ...mesh.envFor("admin"), AUTH_TOKENS: ADMIN_TOKENS });
    await waitFor(
      async () =>
        (
          await bufCurl<{ dispatchers?: unknown[] }>(
            bare.grpcPort,
            "admin.v1.AdminService/ListDispatchers",
            {},
            OPS,
          )
        ).json?.dispatchers?.length === 2,
      10_000,
      "the second admin to hear both dispatchers",
    );
    const refused = await bufCurl(
      bare.grpcPort,
      "admin.v1.AdminService/DrainDispatcher",
      { dispatcherId: "d2" },
      OPS,
    );
    assert.equal(refused.code, "failed_precondition", refused.stderr);
    assert.match(refused.message ?? "", /DISPATCHER_TOKEN/);

    const drained = await bufCurl<{ releasedShards: number }>(
      admin.grpcPort,
      "admin.v1.AdminService/DrainDispatcher",
      { dispatcherId: "d2" },
      OPS,
    );
    assert.equal(drained.exitCode, 0, drained.stderr);
    assert.ok((drained.json?.releasedShards ?? 0) > 0);
    const { rows } = await mesh.db.pool.query(
      "SELECT count(*)::int AS n FROM shard_owners WHERE owner = 'd2'",
    );
    assert.equal(rows[0].n, 0, "d2 owns nothing after the drain");
  });
});
