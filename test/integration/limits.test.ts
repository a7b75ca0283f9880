// Limits and quotas against real timer and admin processes, Postgres and nats-server: the
// maximum request size (refused before decoding, the service stays up), pages bounded in bytes,
// retry-policy bounds, the per-group quota of active timers with an admin's override, and the
// per-token create rate with its retry delay in the error details.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { durationFromMs, durationMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { hashToken } from "../../services/shared/src/auth.js";
import { AdminService } from "../../services/shared/src/gen/admin/v1/admin_pb.js";
import { RetryInfoSchema } from "../../services/shared/src/gen/google/rpc/error_details_pb.js";
import { TimerService, type Timer } from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startService, type ServiceProcess } from "../support/service-process.js";
import { GrpcTimerClient, hourAhead } from "../support/timer-client.js";
import { waitFor } from "../support/wait.js";

const PAGE_MAX_BYTES = 65_536;
let mesh: TestMesh;
let admin: ServiceProcess;
let adminClient: Client<typeof AdminService>;

before(async () => {
  // No dispatcher: timers stay SCHEDULED (active) while the limits are examined.
  mesh = await startMesh({
    dispatchers: 0,
    timerEnv: { LIST_PAGE_MAX_BYTES: String(PAGE_MAX_BYTES), MAX_PAYLOAD_BYTES: "100000" },
  });
  admin = await startService("admin", {
    ...mesh.envFor("admin"),
    LIST_PAGE_MAX_BYTES: String(PAGE_MAX_BYTES),
  });
  adminClient = createClient(
    AdminService,
    createGrpcTransport({ baseUrl: `http://127.0.0.1:${admin.grpcPort}` }),
  );
});
after(async () => {
  await admin?.[Symbol.asyncDispose]();
  await mesh?.[Symbol.asyncDispose]();
});

async function refused(p: Promise<unknown>, code: grpc.status, ...mentions: string[]): Promise<string> {
  let details = "";
  await assert.rejects(p, (err: grpc.ServiceError) => {
    assert.equal(
      err.code,
      code,
      `expected ${grpc.status[code]}, got ${grpc.status[err.code]}: ${err.details}`,
    );
    for (const m of mentions) assert.ok(err.details.includes(m), `"${err.details}" should mention ${m}`);
    details = err.details;
    return true;
  });
  return details;
}

describe("maximum request size (GRPC_MAX_REQUEST_BYTES, 1 MiB by default)", () => {
  test("an 8 MiB CreateTimer is refused before it is decoded, and the service stays ready and serving", async () => {
    const big = hourAhead("size", "eight-mib", { payload: new Uint8Array(8 * 1024 * 1024) });
    const details = await refused(
      mesh.client.call("createTimer", big),
      grpc.status.RESOURCE_EXHAUSTED,
      "larger than max",
      "1048576",
    );
    // Decoded, it would have reached validation and been refused for its payload instead.
    assert.doesNotMatch(details, /payload/);
    const { rows } = await mesh.db.pool.query(
      "SELECT count(*)::int AS n FROM timers WHERE group_id = 'size'",
    );
    assert.equal(rows[0].n, 0);

    const ready = await fetch(`http://127.0.0.1:${mesh.timer.httpPort}/readyz`);
    assert.equal(ready.status, 200);
    assert.equal(mesh.timer.child.exitCode, null);
    // The same connection and a new one both still work.
    assert.equal((await mesh.client.call("createTimer", hourAhead("size", "small"))).created, true);
    const fresh = new GrpcTimerClient(`127.0.0.1:${mesh.timer.grpcPort}`);
    try {
      assert.equal((await fresh.call("createTimer", hourAhead("size", "small-2"))).created, true);
    } finally {
      fresh.close();
    }
  });

  test("a request just under the limit is read and validated as usual", async () => {
    // 1 MiB minus room for the other fields: decoded, then refused by MAX_PAYLOAD_BYTES.
    const nearly = hourAhead("size", "nearly", { payload: new Uint8Array(1024 * 1024 - 512) });
    await refused(mesh.client.call("createTimer", nearly), grpc.status.INVALID_ARGUMENT, "payload");
  });
});

describe("pages bounded in bytes (LIST_PAGE_MAX_BYTES)", () => {
  // 30 timers of 20 kB (three fit in 64 KiB), 2 of 90 kB (each over the limit alone), 8 small.
  const sizes = [...Array<number>(30).fill(20_000), 90_000, 90_000, ...Array<number>(8).fill(10)];

  /** Every page of a List call, following next_page_token (at most 100 pages). */
  async function allPages(
    list: (pageToken: string) => Promise<{ timers: Timer[]; nextPageToken: string }>,
  ): Promise<Timer[][]> {
    const pages: Timer[][] = [];
    let token = "";
    do {
      const res = await list(token);
      pages.push(res.timers);
      token = res.nextPageToken;
    } while (token !== "" && pages.length < 100);
    return pages;
  }

  function checkPages(pages: Timer[][], all: string[]): void {
    const seen = pages.flat().map((t) => t.timerId);
    assert.equal(seen.length, all.length, "every timer once, none repeated");
    assert.deepEqual([...seen].sort(), [...all].sort());
    for (const page of pages) {
      const bytes = page.reduce((n, t) => n + t.payload.length, 0);
      assert.ok(page.length >= 1, "a page holds at least one timer");
      assert.ok(
        bytes <= PAGE_MAX_BYTES || page.length === 1,
        `a page of ${page.length} timers holds ${bytes} payload bytes`,
      );
    }
    assert.ok(
      pages.length >= Math.ceil(sizes.reduce((a, b) => a + b, 0) / PAGE_MAX_BYTES),
      `only ${pages.length} pages`,
    );
  }

  test("ListTimers with big payloads returns every timer exactly once, in order, pages within the limit", async () => {
    const ids = sizes.map((_, i) => `p-${String(i).padStart(2, "0")}`);
    // Shuffled sizes over fire_at order, so big and small timers share pages.
    const order = ids.map((id, i) => ({ id, size: sizes[(i * 7) % sizes.length]! }));
    for (const [i, t] of order.entries()) {
      const r = hourAhead("pages", t.id, {
        payload: randomBytes(t.size),
        schedule: { case: "delay", value: durationFromMs(3_600_000 + i * 1000) },
      });
      assert.equal((await mesh.client.call("createTimer", r)).created, true);
    }
    const pages = await allPages((pageToken) =>
      mesh.client.call("listTimers", {
        $typeName: "timer.v1.ListTimersRequest",
        groupId: "pages",
        states: [],
        pageSize: 1000,
        pageToken,
      }),
    );
    checkPages(pages, ids);
    const flat = pages.flat();
    for (let i = 1; i < flat.length; i++)
      assert.ok(timestampMs(flat[i - 1]!.fireAt!) <= timestampMs(flat[i]!.fireAt!), "in fire_at order");
    assert.ok(
      pages.some((p) => p.length === 3),
      "pages are filled up to the limit",
    );
  });

  test("ListFailedTimers pages are bounded the same way", async () => {
    const ids = sizes.map((_, i) => `f-${String(i).padStart(2, "0")}`);
    for (const [i, id] of ids.entries()) {
      assert.equal(
        (
          await mesh.client.call(
            "createTimer",
            hourAhead("failed-pages", id, { payload: randomBytes(sizes[i]!) }),
          )
        ).created,
        true,
      );
    }
    // Failed for good, a second apart, as a dispatcher would leave them.
    await mesh.db.pool.query(
      `UPDATE timers SET state = 4, last_error = 'gave up', finish_time = now() - (substr(timer_id, 3)::int * interval '1 second')
        WHERE group_id = 'failed-pages'`,
    );
    const pages = await allPages((pageToken) =>
      adminClient.listFailedTimers({ groupId: "failed-pages", pageSize: 1000, pageToken }),
    );
    checkPages(pages, ids);
  });
});

describe("retry policy bounds", () => {
  test("100 attempts or a 1 ms initial backoff are refused, naming the field and the limit", async () => {
    const policy = (maxAttempts: number, initialBackoffMs: number) =>
      ({
        $typeName: "timer.v1.RetryPolicy",
        maxAttempts,
        initialBackoff: durationFromMs(initialBackoffMs),
        multiplier: 2,
      }) as const;
    await refused(
      mesh.client.call("createTimer", hourAhead("retry", "many", { retryPolicy: policy(100, 1000) })),
      grpc.status.INVALID_ARGUMENT,
      "retry_policy.max_attempts",
      "50",
      "RETRY_MAX_ATTEMPTS_LIMIT",
    );
    await refused(
      mesh.client.call("createTimer", hourAhead("retry", "fast", { retryPolicy: policy(5, 1) })),
      grpc.status.INVALID_ARGUMENT,
      "retry_policy.initial_backoff",
      "100ms",
      "RETRY_MIN_BACKOFF",
    );
    const ok = await mesh.client.call(
      "createTimer",
      hourAhead("retry", "bounded", { retryPolicy: policy(50, 100) }),
    );
    assert.equal(ok.timer!.retryPolicy!.maxAttempts, 50);
    const { rows } = await mesh.db.pool.query("SELECT timer_id FROM timers WHERE group_id = 'retry'");
    assert.deepEqual(
      rows.map((r) => r.timer_id),
      ["bounded"],
    );
  });
});

describe("active timers per group (GROUP_MAX_ACTIVE_TIMERS)", () => {
  test("the 11th active timer of a group is refused, replays are not, other groups go on; an admin's override raises the limit", async () => {
    await using timer = await startService("timer", {
      ...mesh.envFor("timer"),
      GROUP_MAX_ACTIVE_TIMERS: "10",
      ACTIVE_TIMERS_REFRESH: "500ms",
    });
    const client = new GrpcTimerClient(`127.0.0.1:${timer.grpcPort}`);
    try {
      // Concurrently: the limit holds for creates stored in the same batch.
      const results = await Promise.allSettled(
        Array.from({ length: 14 }, (_, i) => client.call("createTimer", hourAhead("quota-a", `q-${i}`))),
      );
      const created = results.filter((r) => r.status === "fulfilled");
      assert.equal(created.length, 10, "exactly 10 created");
      for (const r of results) {
        if (r.status === "rejected") {
          const e = r.reason as grpc.ServiceError;
          assert.equal(e.code, grpc.status.RESOURCE_EXHAUSTED, e.details);
          for (const m of ['"quota-a"', "10", "GROUP_MAX_ACTIVE_TIMERS"])
            assert.ok(e.details.includes(m), `"${e.details}" should mention ${m}`);
        }
      }
      const createdIds = results.flatMap((r) => (r.status === "fulfilled" ? [r.value.timer!.timerId] : []));
      const refusedIds = Array.from({ length: 14 }, (_, i) => `q-${i}`).filter(
        (id) => !createdIds.includes(id),
      );
      await refused(
        client.call("createTimer", hourAhead("quota-a", refusedIds[0]!)),
        grpc.status.RESOURCE_EXHAUSTED,
        "GROUP_MAX_ACTIVE_TIMERS",
      );

      // A replay of a stored timer is answered as one; a different request under its key is still a conflict.
      const replay = await client.call("createTimer", hourAhead("quota-a", createdIds[0]!));
      assert.equal(replay.created, false);
      assert.equal(replay.timer!.timerId, createdIds[0]);
      await refused(
        client.call("createTimer", hourAhead("quota-a", createdIds[0]!, { payload: new Uint8Array([1]) })),
        grpc.status.ALREADY_EXISTS,
      );

      // Another group is unaffected.
      assert.equal((await client.call("createTimer", hourAhead("quota-b", "b-1"))).created, true);

      // An admin raises quota-a's limit to 12; the timer service picks it up at its next recount.
      const set = await adminClient.setGroupQuota({ groupId: "quota-a", maxActiveTimers: 12n });
      assert.equal(set.quota!.maxActiveTimers, 12n);
      assert.equal(set.previous, undefined);
      const audit = await mesh.db.pool.query(
        "SELECT actor, outcome, arguments, result FROM audit_events WHERE action = 'admin.v1.AdminService/SetGroupQuota'",
      );
      assert.equal(audit.rows.length, 1);
      assert.equal(audit.rows[0].outcome, "OK");
      assert.equal(audit.rows[0].actor, "anonymous");
      assert.deepEqual(audit.rows[0].arguments, { groupId: "quota-a", maxActiveTimers: "12" });
      assert.equal(audit.rows[0].result.max_active_timers, "12");

      const createdNow = (timerId: string) => () =>
        client.call("createTimer", hourAhead("quota-a", timerId)).then(
          (r) => r.created,
          () => false,
        );
      await waitFor(createdNow(refusedIds[0]!), 15_000, "the override to reach the timer service", 100);
      // Until the next recount, a create that committed while one ran may be counted twice: never
      // too few, sometimes one too many for a moment.
      await waitFor(createdNow(refusedIds[1]!), 15_000, "the 12th timer to fit", 100);
      await refused(
        client.call("createTimer", hourAhead("quota-a", refusedIds[2]!)),
        grpc.status.RESOURCE_EXHAUSTED,
        "own limit of 12",
        "SetGroupQuota",
      );

      const listed = await adminClient.listGroupQuotas({});
      assert.deepEqual(
        listed.quotas.map((q) => [q.groupId, q.maxActiveTimers, q.activeTimers, q.setBy]),
        [["quota-a", 12n, 12n, "anonymous"]],
      );
      // 0 removes the override (audited too).
      const removed = await adminClient.setGroupQuota({ groupId: "quota-a", maxActiveTimers: 0n });
      assert.equal(removed.quota, undefined);
      assert.equal(removed.previous!.maxActiveTimers, 12n);
      assert.deepEqual((await adminClient.listGroupQuotas({})).quotas, []);
      const audited = await mesh.db.pool.query(
        "SELECT count(*)::int AS n FROM audit_events WHERE action = 'admin.v1.AdminService/SetGroupQuota'",
      );
      assert.equal(audited.rows[0].n, 2);
      await assert.rejects(
        adminClient.setGroupQuota({ groupId: "quota-a", maxActiveTimers: -1n }),
        (e: ConnectError) => e.code === Code.InvalidArgument,
      );
    } finally {
      client.close();
    }
  });
});

describe("creates per token (CREATE_RATE_PER_TOKEN, CREATE_BURST_PER_TOKEN)", () => {
  test("the burst+1-th create of a token is RESOURCE_EXHAUSTED with a RetryInfo delay; another token is unaffected", async () => {
    const A = "team-a-5b1c0e9d7f";
    const B = "team-b-2e8d4a6c1f";
    const tokens = JSON.stringify([
      { name: "team-a", sha256: hashToken(A), groups: ["*"] },
      { name: "team-b", sha256: hashToken(B), groups: ["*"] },
    ]);
    // One token every 1,000 s: nothing refills while the test runs, however slow the machine.
    await using timer = await startService("timer", {
      ...mesh.envFor("timer"),
      AUTH_TOKENS: tokens,
      CREATE_RATE_PER_TOKEN: "0.001",
      CREATE_BURST_PER_TOKEN: "3",
    });
    const client = createClient(
      TimerService,
      createGrpcTransport({ baseUrl: `http://127.0.0.1:${timer.grpcPort}` }),
    );
    const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });
    for (let i = 0; i < 3; i++)
      assert.equal((await client.createTimer(hourAhead("rate", `a-${i}`), as(A))).created, true);
    const err = await client.createTimer(hourAhead("rate", "a-3"), as(A)).then(
      () => assert.fail("the 4th create of team-a should be refused"),
      (e: unknown) => ConnectError.from(e),
    );
    assert.equal(err.code, Code.ResourceExhausted, err.message);
    for (const m of ['"team-a"', "CREATE_RATE_PER_TOKEN", "CREATE_BURST_PER_TOKEN"])
      assert.ok(err.rawMessage.includes(m), `"${err.rawMessage}" should mention ${m}`);
    const [retry] = err.findDetails(RetryInfoSchema);
    assert.ok(retry?.retryDelay, "RetryInfo with a retry_delay in the error details");
    assert.ok(durationMs(retry.retryDelay) > 0, `retry delay ${durationMs(retry.retryDelay)} ms`);
    assert.ok(durationMs(retry.retryDelay) <= 1_000_000);

    assert.equal((await client.createTimer(hourAhead("rate", "b-0"), as(B))).created, true);
    const { rows } = await mesh.db.pool.query(
      "SELECT timer_id FROM timers WHERE group_id = 'rate' ORDER BY timer_id",
    );
    assert.deepEqual(
      rows.map((r) => r.timer_id),
      ["a-0", "a-1", "a-2", "b-0"],
    );
  });
});
