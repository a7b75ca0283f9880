// CreateTimers against a real mesh (Postgres, nats-server, the timer service and a dispatcher,
// each its own process) called with @grpc/grpc-js: a batch of 1,000 stored with one result per
// create and fired once each; item errors naming requests[i] and the field; replays, conflicts
// and duplicate keys within a call; the 1,000 limit; per-item authorization; the token's create
// rate for the whole call; the group quota per item. The dispatcher polls Postgres only once a
// minute here, so timers due within seconds fire on time only if their batch announced them.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { durationFromMs, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { hashToken } from "../../services/shared/src/auth.js";
import { RetryInfoSchema } from "../../services/shared/src/gen/google/rpc/error_details_pb.js";
import {
  TimerService,
  type CreateTimerRequest,
  type CreateTimersResult,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { shardOf } from "../../services/shared/src/shard.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { bufCurl } from "../support/buf-curl.js";
import { startHttpReceiver } from "../support/receivers.js";
import { startService } from "../support/service-process.js";
import { createTimers, GrpcTimerClient, hourAhead, httpTimerAt } from "../support/timer-client.js";
import { waitFor } from "../support/wait.js";

const SHARDS = 64; // startMesh's SHARD_COUNT
let mesh: TestMesh;
let rx: Awaited<ReturnType<typeof startHttpReceiver>>;

before(async () => {
  rx = await startHttpReceiver();
  // Polling once a minute: a timer created after a poll and due before the next one fires in
  // time only when announced over NATS.
  mesh = await startMesh({ dispatchers: 1, dispatcherEnv: { POLL_INTERVAL: "60s" } });
  // The dispatcher owns its shards and has loaded its window: a CreateTimer (announced) fires.
  const probe = await mesh.client.call("createTimer", httpTimerAt("probe", "p-1", Date.now() + 500, rx.url));
  assert.equal(probe.created, true);
  await waitFor(() => rx.received.some((r) => r.groupId === "probe"), 30_000, "the probe timer to fire");
});
after(async () => {
  await mesh?.[Symbol.asyncDispose]();
  await rx?.close();
});

const bearer = (token: string) => {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  return md;
};

async function storedIds(groupId: string): Promise<string[]> {
  const { rows } = await mesh.db.pool.query(
    "SELECT timer_id FROM timers WHERE group_id = $1 ORDER BY timer_id",
    [groupId],
  );
  return rows.map((r) => r.timer_id as string);
}

function assertCreated(r: CreateTimersResult | undefined, timerId: string | undefined, what: string): void {
  assert.ok(r, what);
  assert.equal(r.error, undefined, `${what}: ${r.error?.message}`);
  assert.equal(r.created, true, what);
  if (timerId !== undefined) assert.equal(r.timerId, timerId, what);
}

function assertItemError(
  r: CreateTimersResult | undefined,
  code: grpc.status,
  message: RegExp,
  what: string,
): void {
  assert.ok(r?.error, `${what}: expected an error, got ${JSON.stringify(r)}`);
  assert.equal(r.error.code, code, `${what}: ${grpc.status[r.error.code]} ${r.error.message}`);
  assert.match(r.error.message, message, what);
  assert.equal(r.created, false, what);
  assert.equal(r.timerId, "", what);
}

async function callError(p: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (err) {
    return err as grpc.ServiceError;
  }
  assert.fail("expected the call to fail");
}

describe("a batch of 1,000", () => {
  test("is stored with one result per create, in order, and every timer fires once, on time: announced per shard", async () => {
    const start = Date.now();
    // Half with the caller's ids, half with ids the service makes; due over 2 seconds from 3 s out.
    const fireAtMs = (i: number) => start + 3_000 + (i % 200) * 10;
    const reqs = Array.from({ length: 1000 }, (_, i) =>
      httpTimerAt("bulk", i % 2 === 0 ? `b-${i}` : "", fireAtMs(i), rx.url),
    );
    const results = await createTimers(mesh.client, reqs);
    results.forEach((r, i) => {
      assertCreated(r, i % 2 === 0 ? `b-${i}` : undefined, `requests[${i}]`);
      assert.equal(timestampMs(r.fireAt!), fireAtMs(i), `fire_at of ${i}`);
      assert.equal(r.shard, shardOf("bulk", r.timerId, SHARDS), `shard of ${i}`);
    });
    const ids = results.map((r) => r.timerId);
    assert.equal(new Set(ids).size, 1000, "distinct ids");
    assert.equal((await storedIds("bulk")).length, 1000);

    await waitFor(
      () => rx.received.filter((r) => r.groupId === "bulk").length >= 1000,
      30_000,
      "all 1,000 to fire (the poll alone would take a minute)",
    );
    const byId = new Map<string, number>();
    for (const r of rx.received)
      if (r.groupId === "bulk") byId.set(r.timerId, (byId.get(r.timerId) ?? 0) + 1);
    assert.deepEqual([...byId.keys()].sort(), [...ids].sort(), "every timer fired");
    assert.ok(
      [...byId.values()].every((n) => n === 1),
      "each once",
    );
    for (const r of rx.received.filter((x) => x.groupId === "bulk")) {
      assert.ok(r.receivedAtMs >= r.fireAtMs, `${r.timerId} never early`);
    }
  });
});

describe("item by item", () => {
  test("invalid creates get their own INVALID_ARGUMENT naming requests[i] and the field; the valid ones are stored", async () => {
    const metricsBefore = await creationMetrics();
    const reqs = [
      hourAhead("mixed", "ok-0"),
      hourAhead("", "no-group"),
      hourAhead("mixed", "bad id!"),
      hourAhead("mixed", "no-callback", { callback: undefined }),
      hourAhead("mixed", "bad-url", {
        callback: { target: { case: "http", value: { url: "ftp://x/y", headers: {} } } },
      } as Partial<CreateTimerRequest>),
      hourAhead("mixed", "ok-5"),
      hourAhead("mixed", "too-far", { schedule: { case: "delay", value: durationFromMs(400 * 86_400_000) } }),
      hourAhead("mixed", "no-schedule", { schedule: { case: undefined } }),
      hourAhead("mixed", "ok-8", {
        schedule: { case: "fireAt", value: timestampFromMs(Date.now() + 3_600_000) },
      }),
    ];
    const results = await createTimers(mesh.client, reqs);
    assertCreated(results[0], "ok-0", "requests[0]");
    assertItemError(
      results[1],
      grpc.status.INVALID_ARGUMENT,
      /^requests\[1\]\.group_id: is required$/,
      "requests[1]",
    );
    assertItemError(
      results[2],
      grpc.status.INVALID_ARGUMENT,
      /^requests\[2\]\.timer_id: must be 1-128 characters/,
      "requests[2]",
    );
    assertItemError(
      results[3],
      grpc.status.INVALID_ARGUMENT,
      /^requests\[3\]\.callback: is required$/,
      "requests[3]",
    );
    assertItemError(
      results[4],
      grpc.status.INVALID_ARGUMENT,
      /^requests\[4\]\.callback\.http\.url: must use http or https$/,
      "requests[4]",
    );
    assertCreated(results[5], "ok-5", "requests[5]");
    assertItemError(
      results[6],
      grpc.status.INVALID_ARGUMENT,
      /^requests\[6\]\.delay: is beyond the maximum horizon/,
      "requests[6]",
    );
    assertItemError(
      results[7],
      grpc.status.INVALID_ARGUMENT,
      /^requests\[7\]\.schedule: is required/,
      "requests[7]",
    );
    assertCreated(results[8], "ok-8", "requests[8]");
    assert.deepEqual(await storedIds("mixed"), ["ok-0", "ok-5", "ok-8"]);

    // The metrics count creates, not calls: 9 attempts, 3 created, 6 INVALID_ARGUMENT.
    const metricsAfter = await creationMetrics();
    assert.equal(metricsAfter.attempts - metricsBefore.attempts, 9);
    assert.equal(metricsAfter.created - metricsBefore.created, 3);
    assert.equal(metricsAfter.invalid - metricsBefore.invalid, 6);
  });

  test("the same batch again is a replay: created=false with the same ids and fire times; a changed create is ALREADY_EXISTS alone", async () => {
    const reqs = Array.from({ length: 50 }, (_, i) =>
      hourAhead("replay", `r-${i}`, { payload: new Uint8Array([i]) }),
    );
    const first = await createTimers(mesh.client, reqs);
    first.forEach((r, i) => {
      assertCreated(r, `r-${i}`, `first call, requests[${i}]`);
    });
    const again = await createTimers(mesh.client, reqs);
    again.forEach((r, i) => {
      assert.equal(r.error, undefined, r.error?.message);
      assert.equal(r.created, false, `requests[${i}] is a replay`);
      assert.equal(r.timerId, `r-${i}`);
      assert.equal(
        timestampMs(r.fireAt!),
        timestampMs(first[i]!.fireAt!),
        "the fire time stored by the first call (the delay is not resolved again)",
      );
      assert.equal(r.shard, first[i]!.shard);
    });
    const changed = [...reqs];
    changed[17] = hourAhead("replay", "r-17", { payload: new Uint8Array([99]) });
    const third = await createTimers(mesh.client, changed);
    assertItemError(
      third[17],
      grpc.status.ALREADY_EXISTS,
      /^requests\[17\]\.timer_id: timer replay\/r-17 already exists with a different/,
      "requests[17]",
    );
    third.forEach((r, i) => {
      if (i !== 17)
        assert.equal(r.created === false && r.error === undefined, true, `requests[${i}] is still a replay`);
    });
    assert.equal((await storedIds("replay")).length, 50);
    const { rows } = await mesh.db.pool.query(
      "SELECT payload FROM timers WHERE group_id = 'replay' AND timer_id = 'r-17'",
    );
    assert.deepEqual([...rows[0].payload], [17], "the stored timer is the first call's");
  });

  test("a key twice in one call is handled as two concurrent CreateTimer calls: the first creates, an identical one replays, a different one is ALREADY_EXISTS", async () => {
    const a = hourAhead("dup", "a", { payload: new Uint8Array([1]) });
    const aChanged = hourAhead("dup", "a", { payload: new Uint8Array([2]) });
    const results = await createTimers(mesh.client, [
      a,
      hourAhead("dup", "b"),
      a,
      aChanged,
      hourAhead("dup", "c"),
    ]);
    assertCreated(results[0], "a", "requests[0]");
    assertCreated(results[1], "b", "requests[1]");
    assert.equal(results[2]!.error, undefined, results[2]!.error?.message);
    assert.deepEqual(
      [results[2]!.timerId, results[2]!.created, timestampMs(results[2]!.fireAt!)],
      ["a", false, timestampMs(results[0]!.fireAt!)],
      "requests[2] replays requests[0]",
    );
    assertItemError(
      results[3],
      grpc.status.ALREADY_EXISTS,
      /^requests\[3\]\.timer_id: timer dup\/a already exists/,
      "requests[3]",
    );
    assertCreated(results[4], "c", "requests[4]");
    assert.deepEqual(await storedIds("dup"), ["a", "b", "c"]);
    const { rows } = await mesh.db.pool.query(
      "SELECT payload FROM timers WHERE group_id = 'dup' AND timer_id = 'a'",
    );
    assert.deepEqual([...rows[0].payload], [1]);
  });

  test("the README's buf curl example: JSON in, one result per create, the refused one with its code and message", async () => {
    const body = {
      requests: [
        {
          groupId: "readme",
          timerId: "invoice-43",
          delay: "30s",
          callback: { http: { url: "http://127.0.0.1:9000/hook" } },
        },
        {
          groupId: "readme",
          timerId: "invoice-44",
          delay: "60s",
          callback: { http: { url: "ftp://127.0.0.1/hook" } },
        },
      ],
    };
    const res = await bufCurl<{
      results: [{ timerId: string; created: boolean; shard: number; fireAt: string }, unknown];
    }>(mesh.timer.grpcPort, "timer.v1.TimerService/CreateTimers", body);
    assert.equal(res.exitCode, 0, res.stderr);
    const [first, second] = res.json!.results;
    assert.deepEqual(
      [first.timerId, first.created, first.shard],
      ["invoice-43", true, shardOf("readme", "invoice-43", SHARDS)],
    );
    assert.match(first.fireAt, /^\d{4}-\d\d-\d\dT/);
    assert.deepEqual(second, {
      error: { code: 3, message: "requests[1].callback.http.url: must use http or https" },
    });
  });

  test("1,001 creates, or none, are refused as a whole with INVALID_ARGUMENT naming the limit; nothing is stored", async () => {
    const reqs = Array.from({ length: 1001 }, (_, i) => hourAhead("too-many", `t-${i}`));
    const err = await callError(createTimers(mesh.client, reqs));
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT, err.details);
    assert.match(err.details, /requests has 1001 creates\. A CreateTimers call takes at most 1000/);
    assert.deepEqual(await storedIds("too-many"), []);
    const empty = await callError(createTimers(mesh.client, []));
    assert.equal(empty.code, grpc.status.INVALID_ARGUMENT, empty.details);
    assert.match(empty.details, /requests is empty/);
    // 1,000 is allowed.
    const max = await createTimers(mesh.client, reqs.slice(0, 1000));
    assert.ok(max.every((r) => r.created));
  });
});

describe("tokens: authorization per create, the create rate per call", () => {
  const BILLING = "billing-token-7d2c";
  const RATE = "rate-token-4b9e";

  test("a create in a group the token does not cover is PERMISSION_DENIED alone; no token fails the call", async () => {
    const tokens = JSON.stringify([
      { name: "billing-only", sha256: hashToken(BILLING), groups: ["billing"] },
    ]);
    await using timer = await startService("timer", { ...mesh.envFor("timer"), AUTH_TOKENS: tokens });
    const client = new GrpcTimerClient(`127.0.0.1:${timer.grpcPort}`);
    try {
      const results = await createTimers(
        client,
        [hourAhead("billing", "inv-1"), hourAhead("payroll", "p-1"), hourAhead("billing", "inv-2")],
        bearer(BILLING),
      );
      assertCreated(results[0], "inv-1", "requests[0]");
      assertItemError(
        results[1],
        grpc.status.PERMISSION_DENIED,
        /^requests\[1\]\.group_id: token "billing-only" may not use group "payroll"$/,
        "requests[1]",
      );
      assertCreated(results[2], "inv-2", "requests[2]");
      assert.deepEqual(await storedIds("payroll"), []);
      const err = await callError(createTimers(client, [hourAhead("billing", "inv-3")]));
      assert.equal(err.code, grpc.status.UNAUTHENTICATED, err.details);
      assert.deepEqual(await storedIds("billing"), ["inv-1", "inv-2"]);
    } finally {
      client.close();
    }
  });

  test("a call takes one token per create: over the rate the whole call is RESOURCE_EXHAUSTED with a retry delay, and nothing of it is stored", async () => {
    const tokens = JSON.stringify([{ name: "rate", sha256: hashToken(RATE), groups: ["*"] }]);
    // One token every 1,000 s: nothing refills while the test runs.
    await using timer = await startService("timer", {
      ...mesh.envFor("timer"),
      AUTH_TOKENS: tokens,
      CREATE_RATE_PER_TOKEN: "0.001",
      CREATE_BURST_PER_TOKEN: "10",
    });
    const client = new GrpcTimerClient(`127.0.0.1:${timer.grpcPort}`);
    try {
      const big = await callError(
        createTimers(
          client,
          Array.from({ length: 11 }, (_, i) => hourAhead("rate", `big-${i}`)),
          bearer(RATE),
        ),
      );
      assert.equal(big.code, grpc.status.RESOURCE_EXHAUSTED, big.details);
      assert.match(big.details, /at most 10 creates at once \(CREATE_BURST_PER_TOKEN\) and this call has 11/);

      const first = await createTimers(
        client,
        Array.from({ length: 7 }, (_, i) => hourAhead("rate", `a-${i}`)),
        bearer(RATE),
      );
      assert.ok(first.every((r) => r.created));
      // 3 tokens left: a call of 4 is refused whole, not 3 stored and 1 refused.
      const err = await callError(
        createTimers(
          client,
          Array.from({ length: 4 }, (_, i) => hourAhead("rate", `b-${i}`)),
          bearer(RATE),
        ),
      );
      assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED, err.details);
      for (const m of ['"rate"', "CREATE_RATE_PER_TOKEN", "CREATE_BURST_PER_TOKEN"])
        assert.ok(err.details.includes(m), `"${err.details}" should mention ${m}`);
      // The delay, in the error details (read with a connect client, which decodes them).
      const connect = createClient(
        TimerService,
        createGrpcTransport({ baseUrl: `http://127.0.0.1:${timer.grpcPort}` }),
      );
      const detailed = await connect
        .createTimers(
          {
            requests: [
              hourAhead("rate", "d-0"),
              hourAhead("rate", "d-1"),
              hourAhead("rate", "d-2"),
              hourAhead("rate", "d-3"),
            ],
          },
          { headers: { authorization: `Bearer ${RATE}` } },
        )
        .then(
          () => assert.fail("the call of 4 should be refused"),
          (e: unknown) => ConnectError.from(e),
        );
      const [retry] = detailed.findDetails(RetryInfoSchema);
      assert.ok(retry?.retryDelay, "RetryInfo with a retry_delay in the error details");
      assert.deepEqual(
        (await storedIds("rate")).filter((id) => !id.startsWith("a-")),
        [],
      );
      // The 3 left are still there.
      const last = await createTimers(
        client,
        Array.from({ length: 3 }, (_, i) => hourAhead("rate", `c-${i}`)),
        bearer(RATE),
      );
      assert.ok(last.every((r) => r.created));
    } finally {
      client.close();
    }
  });
});

describe("the group quota (GROUP_MAX_ACTIVE_TIMERS) per create", () => {
  test("creates beyond the group's limit are RESOURCE_EXHAUSTED alone; stored ones still replay; other groups go on", async () => {
    await using timer = await startService("timer", {
      ...mesh.envFor("timer"),
      GROUP_MAX_ACTIVE_TIMERS: "5",
    });
    const client = new GrpcTimerClient(`127.0.0.1:${timer.grpcPort}`);
    try {
      const reqs = [
        ...Array.from({ length: 8 }, (_, i) => hourAhead("quota", `q-${i}`)),
        hourAhead("quota-other", "o-1"),
      ];
      const results = await createTimers(client, reqs);
      for (let i = 0; i < 5; i++) assertCreated(results[i], `q-${i}`, `requests[${i}]`);
      for (let i = 5; i < 8; i++) {
        assertItemError(
          results[i],
          grpc.status.RESOURCE_EXHAUSTED,
          new RegExp(`^requests\\[${i}\\]\\.group_id: group "quota" has 5 active .*GROUP_MAX_ACTIVE_TIMERS`),
          `requests[${i}]`,
        );
      }
      assertCreated(results[8], "o-1", "requests[8]");
      assert.deepEqual(await storedIds("quota"), ["q-0", "q-1", "q-2", "q-3", "q-4"]);

      // Over the limit, the stored ones replay (and a changed one is a conflict); the others are refused again.
      const again = await createTimers(client, [
        ...reqs.slice(0, 8),
        hourAhead("quota", "q-0", { payload: new Uint8Array([5]) }),
      ]);
      for (let i = 0; i < 5; i++) {
        assert.equal(again[i]!.error, undefined, again[i]!.error?.message);
        assert.deepEqual([again[i]!.timerId, again[i]!.created], [`q-${i}`, false], `requests[${i}] replays`);
        assert.equal(timestampMs(again[i]!.fireAt!), timestampMs(results[i]!.fireAt!));
      }
      for (let i = 5; i < 8; i++)
        assertItemError(
          again[i],
          grpc.status.RESOURCE_EXHAUSTED,
          /GROUP_MAX_ACTIVE_TIMERS/,
          `requests[${i}]`,
        );
      assertItemError(again[8], grpc.status.ALREADY_EXISTS, /^requests\[8\]\.timer_id: /, "requests[8]");
    } finally {
      client.close();
    }
  });
});

/** The timer service's create counters, from its /metrics. */
async function creationMetrics(): Promise<{ attempts: number; created: number; invalid: number }> {
  const text = await (await fetch(`http://127.0.0.1:${mesh.timer.httpPort}/metrics`)).text();
  const sum = (re: RegExp) =>
    text.split("\n").reduce((n, line) => n + (re.test(line) ? Number(line.split(" ").at(-1)) : 0), 0);
  return {
    attempts: sum(/^timer_creation_attempts_total\b/),
    created: sum(/^timer_creations_total\b/),
    invalid: sum(/^timer_creation_failures_total\{[^}]*code="INVALID_ARGUMENT"/),
  };
}
