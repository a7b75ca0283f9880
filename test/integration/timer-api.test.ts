// TimerService over real gRPC (a @grpc/grpc-js client from the same protos, and buf curl
// through reflection) against a real timer service process, Postgres and NATS.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import {
  CreateTimerRequestSchema,
  TimerState,
  type CreateTimerRequest,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { shardOf } from "../../services/shared/src/shard.js";
import { startMesh, type TestMesh } from "../support/mesh.js";

const run = promisify(execFile);
let mesh: TestMesh;

before(async () => {
  // No dispatcher: these timers must stay SCHEDULED while the API is examined.
  mesh = await startMesh({ dispatchers: 0, timerEnv: { MAX_PAYLOAD_BYTES: "1024" } });
});
after(async () => {
  await mesh?.[Symbol.asyncDispose]();
});

function req(over: Partial<Omit<CreateTimerRequest, "$typeName">> = {}): CreateTimerRequest {
  return create(CreateTimerRequestSchema, {
    groupId: "billing",
    timerId: `t-${Math.random().toString(36).slice(2)}`,
    schedule: { case: "delay", value: durationFromMs(3_600_000) },
    callback: { target: { case: "http", value: { url: "http://127.0.0.1:9/hook", headers: {} } } },
    payload: new TextEncoder().encode("hello"),
    ...over,
  });
}

async function rowCount(): Promise<number> {
  return Number((await mesh.db.pool.query("SELECT count(*) FROM timers")).rows[0].count);
}

async function expectCode(p: Promise<unknown>, code: grpc.status, field?: string): Promise<void> {
  await assert.rejects(p, (err: grpc.ServiceError) => {
    assert.equal(
      err.code,
      code,
      `expected ${grpc.status[code]}, got ${grpc.status[err.code]}: ${err.details}`,
    );
    if (field)
      assert.match(
        err.details,
        new RegExp(`\\b${field.replace(/\./g, "\\.")}\\b`),
        `message should name ${field}: ${err.details}`,
      );
    return true;
  });
}

describe("CreateTimer and GetTimer", () => {
  test("creates a timer, stores it in Postgres, and reads it back", async () => {
    const r = req({ labels: { tenant: "acme" } });
    const before = Date.now();
    const res = await mesh.client.call("createTimer", r);
    assert.equal(res.created, true);
    const t = res.timer!;
    assert.equal(t.groupId, "billing");
    assert.equal(t.timerId, r.timerId);
    assert.equal(t.state, TimerState.SCHEDULED);
    assert.equal(t.shard, shardOf("billing", r.timerId, 64));
    assert.deepEqual(t.labels, { tenant: "acme" });
    const fireAt = timestampMs(t.fireAt!);
    assert.ok(fireAt >= before + 3_600_000 && fireAt <= Date.now() + 3_600_000);
    assert.equal(t.retryPolicy!.maxAttempts, 5);

    const { rows } = await mesh.db.pool.query(
      "SELECT state, shard, payload FROM timers WHERE group_id = $1 AND timer_id = $2",
      ["billing", r.timerId],
    );
    assert.equal(rows.length, 1);
    assert.equal(rows[0].state, 1);
    assert.equal(rows[0].payload.toString(), "hello");

    const got = await mesh.client.call("getTimer", {
      $typeName: "timer.v1.GetTimerRequest",
      groupId: "billing",
      timerId: r.timerId,
    });
    assert.equal(got.timer!.timerId, r.timerId);
    assert.equal(new TextDecoder().decode(got.timer!.payload), "hello");
  });

  test("generates a timer id when none is given", async () => {
    const res = await mesh.client.call("createTimer", req({ timerId: "" }));
    assert.match(res.timer!.timerId, /^[0-9a-f-]{36}$/);
  });

  test("a replayed create returns the stored timer with created=false; a different one under the key is ALREADY_EXISTS", async () => {
    const r = req({ labels: { a: "1", b: "2" } });
    const first = await mesh.client.call("createTimer", r);
    const replay = await mesh.client.call(
      "createTimer",
      req({ timerId: r.timerId, labels: { b: "2", a: "1" } }),
    );
    assert.equal(replay.created, false);
    assert.deepEqual(replay.timer!.fireAt, first.timer!.fireAt);
    await expectCode(
      mesh.client.call(
        "createTimer",
        req({ timerId: r.timerId, payload: new TextEncoder().encode("other") }),
      ),
      grpc.status.ALREADY_EXISTS,
    );
    const { rows } = await mesh.db.pool.query("SELECT payload FROM timers WHERE timer_id = $1", [r.timerId]);
    assert.equal(rows[0].payload.toString(), "hello");
  });

  test("concurrent identical creates store one timer and exactly one caller sees created=true", async () => {
    const r = req();
    const results = await Promise.all(
      Array.from({ length: 20 }, () => mesh.client.call("createTimer", req({ timerId: r.timerId }))),
    );
    assert.equal(results.filter((x) => x.created).length, 1);
    const { rows } = await mesh.db.pool.query("SELECT count(*) FROM timers WHERE timer_id = $1", [r.timerId]);
    assert.equal(Number(rows[0].count), 1);
  });
});

describe("bad input is INVALID_ARGUMENT naming the field, and stores nothing", () => {
  const big = new Uint8Array(1025);
  const cases: [string, string, Partial<Omit<CreateTimerRequest, "$typeName">>][] = [
    ["missing group_id", "group_id", { groupId: "" }],
    ["malformed group_id", "group_id", { groupId: "has space" }],
    ["malformed timer_id", "timer_id", { timerId: "x/y" }],
    ["too long timer_id", "timer_id", { timerId: "a".repeat(129) }],
    ["no schedule", "schedule", { schedule: { case: undefined } }],
    ["negative delay", "delay", { schedule: { case: "delay", value: durationFromMs(-5000) } }],
    [
      "delay beyond the horizon",
      "delay",
      { schedule: { case: "delay", value: durationFromMs(366 * 86_400_000) } },
    ],
    [
      "fire_at beyond the horizon",
      "fire_at",
      { schedule: { case: "fireAt", value: timestampFromMs(Date.now() + 400 * 86_400_000) } },
    ],
    ["no callback", "callback", { callback: undefined }],
    [
      "callback without target",
      "callback",
      { callback: { $typeName: "timer.v1.Callback", target: { case: undefined } } },
    ],
    [
      "malformed URL",
      "callback.http.url",
      {
        callback: {
          $typeName: "timer.v1.Callback",
          target: {
            case: "http",
            value: { $typeName: "timer.v1.HttpCallback", url: "not a url", headers: {} },
          },
        },
      },
    ],
    [
      "non-http URL",
      "callback.http.url",
      {
        callback: {
          $typeName: "timer.v1.Callback",
          target: {
            case: "http",
            value: { $typeName: "timer.v1.HttpCallback", url: "ftp://x/y", headers: {} },
          },
        },
      },
    ],
    [
      "reserved header",
      "callback.http.headers",
      {
        callback: {
          $typeName: "timer.v1.Callback",
          target: {
            case: "http",
            value: {
              $typeName: "timer.v1.HttpCallback",
              url: "http://x/y",
              headers: { "Idempotency-Key": "x" },
            },
          },
        },
      },
    ],
    [
      "NATS subject with wildcard",
      "callback.nats.subject",
      {
        callback: {
          $typeName: "timer.v1.Callback",
          target: {
            case: "nats",
            value: { $typeName: "timer.v1.NatsCallback", subject: "orders.*", jetstream: false },
          },
        },
      },
    ],
    [
      "NATS subject with empty token",
      "callback.nats.subject",
      {
        callback: {
          $typeName: "timer.v1.Callback",
          target: {
            case: "nats",
            value: { $typeName: "timer.v1.NatsCallback", subject: "orders..due", jetstream: false },
          },
        },
      },
    ],
    [
      "gRPC target without port",
      "callback.grpc.target",
      {
        callback: {
          $typeName: "timer.v1.Callback",
          target: { case: "grpc", value: { $typeName: "timer.v1.GrpcCallback", target: "receiver" } },
        },
      },
    ],
    ["payload over the limit", "payload", { payload: big }],
    [
      "negative max_attempts",
      "retry_policy.max_attempts",
      { retryPolicy: { $typeName: "timer.v1.RetryPolicy", maxAttempts: -1, multiplier: 0 } },
    ],
    [
      "multiplier below 1",
      "retry_policy.multiplier",
      { retryPolicy: { $typeName: "timer.v1.RetryPolicy", maxAttempts: 3, multiplier: 0.5 } },
    ],
    [
      "max_backoff below initial_backoff",
      "retry_policy.max_backoff",
      {
        retryPolicy: {
          $typeName: "timer.v1.RetryPolicy",
          maxAttempts: 3,
          multiplier: 2,
          initialBackoff: durationFromMs(10_000),
          maxBackoff: durationFromMs(1_000),
        },
      },
    ],
  ];
  for (const [name, field, over] of cases) {
    test(name, async () => {
      const n = await rowCount();
      await expectCode(mesh.client.call("createTimer", req(over)), grpc.status.INVALID_ARGUMENT, field);
      assert.equal(await rowCount(), n, "nothing may be stored");
    });
  }
  test("the service keeps serving after bad input", async () => {
    const res = await mesh.client.call("createTimer", req());
    assert.equal(res.created, true);
  });
});

describe("CancelTimer", () => {
  test("cancels a scheduled timer; cancelling again returns it unchanged", async () => {
    const r = req();
    await mesh.client.call("createTimer", r);
    const c = await mesh.client.call("cancelTimer", {
      $typeName: "timer.v1.CancelTimerRequest",
      groupId: "billing",
      timerId: r.timerId,
    });
    assert.equal(c.timer!.state, TimerState.CANCELLED);
    const again = await mesh.client.call("cancelTimer", {
      $typeName: "timer.v1.CancelTimerRequest",
      groupId: "billing",
      timerId: r.timerId,
    });
    assert.equal(again.timer!.state, TimerState.CANCELLED);
  });

  test("an unknown timer is NOT_FOUND", async () => {
    const unknown = { groupId: "billing", timerId: "nope" };
    await expectCode(
      mesh.client.call("cancelTimer", { $typeName: "timer.v1.CancelTimerRequest", ...unknown }),
      grpc.status.NOT_FOUND,
    );
    await expectCode(
      mesh.client.call("getTimer", { $typeName: "timer.v1.GetTimerRequest", ...unknown }),
      grpc.status.NOT_FOUND,
    );
  });

  test("a timer that already fired is FAILED_PRECONDITION", async () => {
    const r = req();
    await mesh.client.call("createTimer", r);
    await mesh.db.pool.query("UPDATE timers SET state = 3, finish_time = now() WHERE timer_id = $1", [
      r.timerId,
    ]);
    await expectCode(
      mesh.client.call("cancelTimer", {
        $typeName: "timer.v1.CancelTimerRequest",
        groupId: "billing",
        timerId: r.timerId,
      }),
      grpc.status.FAILED_PRECONDITION,
    );
  });
});

describe("ListTimers", () => {
  test("pages through a group in fire-time order with an opaque token", async () => {
    const base = Date.now() + 7_200_000;
    for (let i = 0; i < 25; i++) {
      await mesh.client.call(
        "createTimer",
        req({
          groupId: "listing",
          timerId: `l-${String(i).padStart(2, "0")}`,
          schedule: { case: "fireAt", value: timestampFromMs(base + i * 1000) },
        }),
      );
    }
    const seen: string[] = [];
    let token = "";
    let pages = 0;
    do {
      const page = await mesh.client.call("listTimers", {
        $typeName: "timer.v1.ListTimersRequest",
        groupId: "listing",
        states: [],
        pageSize: 10,
        pageToken: token,
      });
      seen.push(...page.timers.map((t) => t.timerId));
      token = page.nextPageToken;
      pages++;
    } while (token !== "");
    assert.equal(pages, 3);
    assert.deepEqual(
      seen,
      Array.from({ length: 25 }, (_, i) => `l-${String(i).padStart(2, "0")}`),
    );

    const filtered = await mesh.client.call("listTimers", {
      $typeName: "timer.v1.ListTimersRequest",
      groupId: "listing",
      states: [TimerState.CANCELLED],
      pageSize: 0,
      pageToken: "",
    });
    assert.equal(filtered.timers.length, 0);
  });

  test("a malformed or foreign page token is INVALID_ARGUMENT", async () => {
    const list = (groupId: string, pageSize: number, pageToken: string) =>
      mesh.client.call("listTimers", {
        $typeName: "timer.v1.ListTimersRequest",
        groupId,
        states: [],
        pageSize,
        pageToken,
      });
    await expectCode(list("listing", 10, "garbage"), grpc.status.INVALID_ARGUMENT, "page_token");
    const page = await list("listing", 1, "");
    await expectCode(list("billing", 1, page.nextPageToken), grpc.status.INVALID_ARGUMENT, "page_token");
  });
});

describe("buf curl through server reflection", () => {
  const buf = "node_modules/.bin/buf";
  test("lists the services and creates a timer with the JSON from the contract", async () => {
    const base = `http://127.0.0.1:${mesh.timer.grpcPort}`;
    const list = await run(buf, [
      "curl",
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      "--list-services",
      base,
    ]);
    for (const s of [
      "timer.v1.TimerService",
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
    ]) {
      assert.match(list.stdout, new RegExp(s.replace(/\./g, "\\.")));
    }
    const body = JSON.stringify({
      groupId: "billing",
      timerId: "invoice-42",
      delay: "30s",
      callback: { http: { url: "http://127.0.0.1:9000/hook" } },
      payload: "aGVsbG8=",
    });
    const res = await run(buf, [
      "curl",
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      "-d",
      body,
      `${base}/timer.v1.TimerService/CreateTimer`,
    ]);
    const out = JSON.parse(res.stdout);
    assert.equal(out.created, true);
    assert.equal(out.timer.timerId, "invoice-42");
    assert.equal(out.timer.state, "TIMER_STATE_SCHEDULED");
    const health = await run(buf, [
      "curl",
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      "-d",
      '{"service":"timer.v1.TimerService"}',
      `${base}/grpc.health.v1.Health/Check`,
    ]);
    assert.equal(JSON.parse(health.stdout).status, "SERVING");
  });
});
