// Callback egress and tenant NATS subjects with real processes: timer services with and without
// a loopback allowance, dispatchers with and without one, loopback receivers. Internal and
// disguised addresses are only offered to the timer service's validator, never connected to.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import {
  CallbackSchema,
  CreateTimerRequestSchema,
  type Callback,
  type CreateTimerRequest,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { State } from "../../services/shared/src/timer-model.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startGrpcReceiver, startHttpReceiver } from "../support/receivers.js";
import { RESERVED_SUBJECT_EXAMPLES } from "../support/reserved-subjects.js";
import { startService, type ServiceProcess } from "../support/service-process.js";
import { GrpcTimerClient } from "../support/timer-client.js";
import { waitFor } from "../support/wait.js";

// mesh.timer: loopback allowed (the test default) and tenant subjects narrowed to callbacks.{group}.
// strict: a timer service with the shipped default policy (public unicast only).
// The dispatcher starts WITHOUT a loopback allowance.
let mesh: TestMesh;
let strict: ServiceProcess;
let strictClient: GrpcTimerClient;

before(async () => {
  mesh = await startMesh({
    dispatchers: 1,
    timerEnv: { CALLBACK_NATS_SUBJECT_PREFIX: "callbacks.{group}." },
    dispatcherEnv: { CALLBACK_ALLOWED_NETWORKS: "", POLL_INTERVAL: "250ms" },
  });
  strict = await startService("timer", { ...mesh.envFor("timer"), CALLBACK_ALLOWED_NETWORKS: "" });
  strictClient = new GrpcTimerClient(`127.0.0.1:${strict.grpcPort}`);
});
after(async () => {
  strictClient?.close();
  await strict?.[Symbol.asyncDispose]();
  await mesh?.[Symbol.asyncDispose]();
});

const http = (url: string): Callback =>
  create(CallbackSchema, { target: { case: "http", value: { url, headers: {} } } });
const grpcTarget = (target: string): Callback =>
  create(CallbackSchema, { target: { case: "grpc", value: { target } } });
const nats = (subject: string): Callback =>
  create(CallbackSchema, { target: { case: "nats", value: { subject, jetstream: false } } });

let seq = 0;
function timerReq(groupId: string, callback: Callback, delayMs = 3_600_000): CreateTimerRequest {
  return create(CreateTimerRequestSchema, {
    groupId,
    timerId: `e-${++seq}`,
    schedule: { case: "delay", value: durationFromMs(delayMs) },
    callback,
    retryPolicy: { maxAttempts: 5, initialBackoff: durationFromMs(200), multiplier: 2 },
  });
}

async function expectRefused(
  client: GrpcTimerClient,
  req: CreateTimerRequest,
  field: string,
  reason: RegExp,
): Promise<void> {
  await assert.rejects(client.call("createTimer", req), (err: grpc.ServiceError) => {
    // grpc-js decodes grpc-message with decodeURI, which leaves "," and ";" percent-encoded.
    const details = decodeURIComponent(err.details);
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT, `${grpc.status[err.code]}: ${details}`);
    assert.ok(details.startsWith(`${field} `), `names ${field}: ${details}`);
    assert.match(details, reason);
    return true;
  });
  await assert.rejects(
    client.call("getTimer", {
      $typeName: "timer.v1.GetTimerRequest",
      groupId: req.groupId,
      timerId: req.timerId,
    }),
    (err: grpc.ServiceError) => err.code === grpc.status.NOT_FOUND,
    "nothing was stored",
  );
}

describe("internal and disguised callback addresses are refused at create, naming the field", () => {
  const urls = [
    "http://127.0.0.1:9/hook",
    "http://localhost:9/hook",
    "http://localhost.:9/hook",
    "http://hooks.localhost/x",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.5/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://0.0.0.0:9090/",
    "http://[::1]:9/",
    "http://[fd00::1]/",
    "http://[fe80::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://127.1/",
    "https://0xa9.0xfe.0xa9.0xfe/",
  ];
  for (const url of urls) {
    test(`HTTP ${url}`, async () => {
      await expectRefused(
        strictClient,
        timerReq("egress", http(url)),
        "callback.http.url",
        /which callbacks may not reach; an operator can allow it with CALLBACK_ALLOWED_NETWORKS/,
      );
    });
  }
  const targets = [
    "127.0.0.1:9",
    "localhost:9",
    "[::1]:9",
    "169.254.169.254:80",
    "10.0.0.5:9090",
    "0.0.0.0:9090",
    "2130706433:80",
    "0x7f.1:80",
    "127.1:80",
    "[::ffff:127.0.0.1]:80",
  ];
  for (const target of targets) {
    test(`gRPC ${target}`, async () => {
      await expectRefused(
        strictClient,
        timerReq("egress", grpcTarget(target)),
        "callback.grpc.target",
        /which callbacks may not reach/,
      );
    });
  }

  test("a loopback URL names the reason plainly", async () => {
    await expectRefused(
      strictClient,
      timerReq("egress", http("http://localhost:8080/")),
      "callback.http.url",
      /^callback\.http\.url resolves to a loopback address, which callbacks may not reach; an operator can allow it with CALLBACK_ALLOWED_NETWORKS/,
    );
  });

  test("other names pass create (they are checked at delivery)", async () => {
    // An hour away: no dispatcher loads it, so the name is never resolved; cancelled at once.
    const req = timerReq("egress", http("http://receiver.example.com/hook"));
    assert.equal((await strictClient.call("createTimer", req)).created, true);
    await strictClient.call("cancelTimer", {
      $typeName: "timer.v1.CancelTimerRequest",
      groupId: req.groupId,
      timerId: req.timerId,
    });
  });
});

describe("tenant NATS subjects", () => {
  for (const subject of RESERVED_SUBJECT_EXAMPLES) {
    test(`${subject} is refused at create`, async () => {
      await expectRefused(
        strictClient,
        timerReq("tenant", nats(subject)),
        "callback.nats.subject",
        /is reserved for the timer mesh/,
      );
    });
  }

  test("CALLBACK_NATS_SUBJECT_PREFIX keeps a group under its own prefix", async () => {
    await expectRefused(
      mesh.client,
      timerReq("billing", nats("orders.fired")),
      "callback.nats.subject",
      /must start with "callbacks\.billing\."/,
    );
    await expectRefused(
      mesh.client,
      timerReq("billing", nats("callbacks.shipping.fired")),
      "callback.nats.subject",
      /must start with "callbacks\.billing\."/,
    );
    const ok = timerReq("billing", nats("callbacks.billing.fired"));
    assert.equal((await mesh.client.call("createTimer", ok)).created, true);
    await mesh.client.call("cancelTimer", {
      $typeName: "timer.v1.CancelTimerRequest",
      groupId: ok.groupId,
      timerId: ok.timerId,
    });
  });
});

interface Row {
  state: number;
  attempt: number;
  last_error: string | null;
}

async function waitFinal(groupId: string, timerId: string): Promise<Row> {
  return waitFor(
    async () => {
      const { rows } = await mesh.db.pool.query<Row>(
        "SELECT state, attempt, last_error FROM timers WHERE group_id = $1 AND timer_id = $2",
        [groupId, timerId],
      );
      const r = rows[0];
      return r && (r.state === State.Succeeded || r.state === State.Failed) ? r : undefined;
    },
    30_000,
    `${groupId}/${timerId} to reach a final state`,
  );
}

describe("names are checked at delivery on the addresses they resolve to", () => {
  test("a dispatcher without a loopback allowance refuses localhost after resolving it; one with it delivers", async () => {
    await using rx = await startHttpReceiver();
    await using grx = await startGrpcReceiver();
    const port = new URL(rx.url).port;
    const grpcPort = grx.target.split(":")[1];

    // The timer service allows loopback, so it stores these; the dispatcher does not.
    const refusedHttp = timerReq("deliver", http(`http://localhost:${port}/hook`), 200);
    const refusedGrpc = timerReq("deliver", grpcTarget(`localhost:${grpcPort}`), 200);
    await mesh.client.call("createTimer", refusedHttp);
    await mesh.client.call("createTimer", refusedGrpc);
    for (const req of [refusedHttp, refusedGrpc]) {
      const row = await waitFinal(req.groupId, req.timerId);
      assert.equal(row.state, State.Failed, `${req.timerId}: ${row.last_error}`);
      assert.equal(row.attempt, 1, "a refused delivery is not retried");
      assert.match(
        row.last_error ?? "",
        /^callback host localhost resolves to (127\.0\.0\.1|::1), which is not allowed \(loopback\): callbacks may reach public addresses only; an operator can allow it with CALLBACK_ALLOWED_NETWORKS or CALLBACK_ALLOWED_HOSTS$/,
      );
    }
    assert.equal(rx.received.length + grx.received.length, 0, "the receivers got nothing");

    // The same callbacks through a dispatcher with the test default (loopback allowed).
    await mesh.dispatchers[0]!.stop();
    await mesh.addDispatcher("d2", { CALLBACK_ALLOWED_NETWORKS: "127.0.0.0/8,::1/128" });
    const allowedHttp = timerReq("deliver", http(`http://localhost:${port}/hook`), 200);
    const allowedGrpc = timerReq("deliver", grpcTarget(`localhost:${grpcPort}`), 200);
    await mesh.client.call("createTimer", allowedHttp);
    await mesh.client.call("createTimer", allowedGrpc);
    for (const req of [allowedHttp, allowedGrpc]) {
      const row = await waitFinal(req.groupId, req.timerId);
      assert.equal(row.state, State.Succeeded, `${req.timerId}: ${row.last_error}`);
    }
    assert.deepEqual(
      rx.received.map((r) => r.timerId),
      [allowedHttp.timerId],
    );
    assert.deepEqual(
      grx.received.map((r) => r.timerId),
      [allowedGrpc.timerId],
    );
    assert.equal(rx.received[0]!.headers.host, `localhost:${port}`);
    assert.equal(grx.received[0]!.headers[":authority"], `localhost:${grpcPort}`);
  });
});
