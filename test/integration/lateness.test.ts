// The lateness contract end to end, as the issue asks it tested: timers fall due while no
// dispatcher runs, and the first dispatcher starts only once their max_lateness has passed (by
// Postgres's clock). SKIP ends EXPIRED without calling the receiver, FIRE_MARKED is delivered
// with its lateness (HTTP and NATS header, gRPC metadata and late_ms), FIRE and a timer without
// a contract are delivered as usual, and timer_lateness_exceeded_total counts what was done. A
// timer with a contract that fires in time is delivered unmarked. The SLA report, ExplainTimer
// and GetStats then tell the EXPIRED timer apart from a delivered one.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, durationMs } from "@bufbuild/protobuf/wkt";
import type { Msg, NatsConnection } from "@nats-io/transport-node";
import {
  CallbackSchema,
  CreateTimerRequestSchema,
  GetTimerRequestSchema,
  ListTimersRequestSchema,
  LatenessContractSchema,
  LatenessPolicy,
  type Callback,
  type CreateTimerRequest,
  type Timer,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { State } from "../../services/shared/src/timer-model.js";
import type { SlaReport } from "../../scripts/ops/sla-summary.js";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AdminService } from "../../services/shared/src/gen/admin/v1/admin_pb.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startService } from "../support/service-process.js";
import { runOps } from "../support/ops-cli.js";
import { startGrpcReceiver, startHttpReceiver } from "../support/receivers.js";
import { createAll, fireAtMsOf } from "../support/timer-client.js";
import { waitFor } from "../support/wait.js";

const GROUP = "late";
/** The contracts' max_lateness: passed (by Postgres's clock) before any dispatcher starts. */
const MAX_LATENESS_MS = 2_000;
const SUBJECT = "test.lateness";

let mesh: TestMesh;
let http: Awaited<ReturnType<typeof startHttpReceiver>>;
let grpcRx: Awaited<ReturnType<typeof startGrpcReceiver>>;
let nc: NatsConnection;
const natsGot: Msg[] = [];
/** The timers created while no dispatcher ran, by id. */
let late: Map<string, Timer>;

function timer(
  id: string,
  callback: Callback,
  policy?: LatenessPolicy,
  maxLatenessMs = MAX_LATENESS_MS,
): CreateTimerRequest {
  return create(CreateTimerRequestSchema, {
    groupId: GROUP,
    timerId: id,
    schedule: { case: "delay", value: durationFromMs(100) },
    callback,
    payload: new TextEncoder().encode(id),
    ...(policy === undefined
      ? {}
      : { lateness: create(LatenessContractSchema, { maxLateness: durationFromMs(maxLatenessMs), policy }) }),
  });
}

const httpTo = (url: string) =>
  create(CallbackSchema, { target: { case: "http", value: { url, headers: {} } } });
const natsTo = (subject: string) =>
  create(CallbackSchema, { target: { case: "nats", value: { subject, jetstream: false } } });
const grpcTo = (target: string) => create(CallbackSchema, { target: { case: "grpc", value: { target } } });

async function getTimer(id: string): Promise<Timer> {
  const res = await mesh.client.call(
    "getTimer",
    create(GetTimerRequestSchema, { groupId: GROUP, timerId: id }),
  );
  return res.timer!;
}

async function scrapeDispatcher(): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${mesh.dispatchers[0]!.httpPort}/metrics`);
  return res.text();
}

before(async () => {
  http = await startHttpReceiver();
  grpcRx = await startGrpcReceiver();
  mesh = await startMesh({ dispatchers: 0, dispatcherEnv: { POLL_INTERVAL: "250ms" } });
  nc = await mesh.nats.connectAs("operator");
  nc.subscribe(SUBJECT, {
    callback: (err, msg) => {
      if (!err) natsGot.push(msg);
    },
  });
  await nc.flush();

  late = await createAll(mesh.client, [
    timer("skip", httpTo(http.url), LatenessPolicy.SKIP),
    timer("marked", httpTo(http.url), LatenessPolicy.FIRE_MARKED),
    timer("fire", httpTo(http.url), LatenessPolicy.FIRE),
    timer("none", httpTo(http.url)),
    timer("marked-nats", natsTo(SUBJECT), LatenessPolicy.FIRE_MARKED),
    timer("marked-grpc", grpcTo(grpcRx.target), LatenessPolicy.FIRE_MARKED),
  ]);
  // Every contract's limit passes by the database's clock (the one the dispatchers judge by).
  const limit = new Date(Math.max(...[...late.values()].map(fireAtMsOf)) + MAX_LATENESS_MS);
  await waitFor(
    async () =>
      (await mesh.db.pool.query<{ past: boolean }>("SELECT now() > $1 AS past", [limit])).rows[0]!.past,
    30_000,
    "the contracts' max_lateness to pass",
  );
  await mesh.addDispatcher("d1");
  await waitFor(
    async () => {
      const { rows } = await mesh.db.pool.query<{ n: string }>(
        "SELECT count(*) AS n FROM timers WHERE group_id = $1 AND state IN ($2, $3)",
        [GROUP, State.Succeeded, State.Expired],
      );
      return Number(rows[0]!.n) === late.size;
    },
    30_000,
    "the late timers to finish",
  );
});

after(async () => {
  await nc?.close();
  await mesh?.[Symbol.asyncDispose]();
  await http?.close();
  await grpcRx?.[Symbol.asyncDispose]();
});

test("SKIP beyond max_lateness: EXPIRED with its lateness, and the receiver is never called", async () => {
  const t = await getTimer("skip");
  assert.equal(t.state, State.Expired);
  assert.ok(t.fireLateness, "fire_lateness is set");
  assert.ok(durationMs(t.fireLateness) > MAX_LATENESS_MS, `fire_lateness ${durationMs(t.fireLateness)} ms`);
  assert.ok(t.finishTime, "finish_time is set");
  assert.match(
    t.lastError,
    /^expired: started \d+(\.\d+)?s after fire_at, beyond max_lateness 2s \(lateness policy SKIP\)$/,
  );
  assert.equal(durationMs(t.lateness!.maxLateness!), MAX_LATENESS_MS);
  assert.equal(t.lateness?.policy, LatenessPolicy.SKIP);
  assert.equal(http.received.filter((r) => r.timerId === "skip").length, 0, "the receiver was not called");
  const { rows } = await mesh.db.pool.query<{ attempt: number; outcome: string }>(
    "SELECT attempt, outcome FROM timer_attempts WHERE group_id = $1 AND timer_id = 'skip'",
    [GROUP],
  );
  assert.deepEqual(
    rows.map((r) => [r.attempt, r.outcome]),
    [[1, "expired"]],
  );
  const listed = await mesh.client.call(
    "listTimers",
    create(ListTimersRequestSchema, { groupId: GROUP, states: [State.Expired] }),
  );
  assert.deepEqual(
    listed.timers.map((x) => x.timerId),
    ["skip"],
    "ListTimers finds it by state EXPIRED",
  );
});

test("FIRE_MARKED beyond max_lateness: delivered once, marked with how late on every transport", async () => {
  const marked = http.received.filter((r) => r.timerId === "marked");
  assert.equal(marked.length, 1);
  const ms = Number(marked[0]!.headers["x-timer-late-ms"]);
  assert.ok(ms >= MAX_LATENESS_MS, `x-timer-late-ms ${marked[0]!.headers["x-timer-late-ms"]}`);
  assert.equal((await getTimer("marked")).state, State.Succeeded);

  const nats = natsGot.filter((m) => m.headers?.get("x-timer-id") === "marked-nats");
  assert.equal(nats.length, 1);
  assert.ok(
    Number(nats[0]!.headers?.get("x-timer-late-ms")) >= MAX_LATENESS_MS,
    "NATS header x-timer-late-ms",
  );

  const grpc = grpcRx.received.filter((r) => r.timerId === "marked-grpc");
  assert.equal(grpc.length, 1);
  assert.ok(Number(grpc[0]!.headers["x-timer-late-ms"]) >= MAX_LATENESS_MS, "gRPC metadata x-timer-late-ms");
  assert.equal(grpc[0]!.headers.late_ms, grpc[0]!.headers["x-timer-late-ms"], "late_ms matches the metadata");
});

test("FIRE beyond max_lateness, and a timer without a contract, are delivered unmarked", async () => {
  for (const id of ["fire", "none"]) {
    const got = http.received.filter((r) => r.timerId === id);
    assert.equal(got.length, 1, id);
    assert.equal(got[0]!.headers["x-timer-late-ms"], undefined, `${id} is not marked`);
    assert.equal((await getTimer(id)).state, State.Succeeded, id);
  }
});

test("timer_lateness_exceeded_total counts each exceeded contract by what was done", async () => {
  const text = await scrapeDispatcher();
  const value = (action: string) =>
    Number(new RegExp(`^timer_lateness_exceeded_total\\{action="${action}"\\} (\\S+)$`, "m").exec(text)?.[1]);
  assert.deepEqual(
    { expired: value("expired"), fired_marked: value("fired_marked"), fired: value("fired") },
    { expired: 1, fired_marked: 3, fired: 1 },
  );
});

test("a timer with a contract that starts in time is delivered unmarked", async () => {
  // A minute of max_lateness: in time on any machine, however busy.
  await createAll(mesh.client, [timer("in-time", httpTo(http.url), LatenessPolicy.FIRE_MARKED, 60_000)]);
  const got = await waitFor(
    () => http.received.find((r) => r.timerId === "in-time"),
    30_000,
    "the in-time delivery",
  );
  assert.equal(got.headers["x-timer-late-ms"], undefined);
  await waitFor(async () => (await getTimer("in-time")).state === State.Succeeded, 30_000, "SUCCEEDED");
});

test("the SLA report counts the EXPIRED timer, and no callback attempt for it", async () => {
  const from = new Date(Math.min(...[...late.values()].map(fireAtMsOf)) - 60_000).toISOString();
  const run = await runOps(["sla-report", "--from", from, "--format", "json"], { DATABASE_URL: mesh.db.url });
  assert.equal(run.stderr, "");
  const r = JSON.parse(run.stdout) as SlaReport;
  const g = r.groups.find((x) => x.group === GROUP);
  assert.ok(g, `a line for ${GROUP}`);
  assert.equal(g.expiredTimers, 1);
  assert.equal(g.due, 7);
  // Five late timers and the in-time one (the test before) were delivered once each: the
  // expired one called no receiver.
  assert.equal(g.callbackAttempts, 6);
  assert.ok(
    r.notes.some((n) => /^1 timer\(s\) were not delivered: their lateness contract \(SKIP\)/.test(n)),
  );
});

test("ExplainTimer says how the EXPIRED timer ended; GetStats counts no firing for it", async () => {
  await using admin = await startService("admin", { ...mesh.envFor("admin") });
  const client = createClient(
    AdminService,
    createGrpcTransport({ baseUrl: `http://127.0.0.1:${admin.grpcPort}` }),
  );
  const explained = await client.explainTimer({ groupId: GROUP, timerId: "skip" });
  assert.match(
    explained.next,
    /^finished: EXPIRED at \S+, \d+(\.\d+)?s late \(max_lateness 2s, SKIP\): not delivered; /,
  );
  assert.deepEqual(
    explained.attempts.map((a) => [a.attempt, a.outcome]),
    [[1, "expired"]],
  );
  // Six first attempts were delivered (five late ones and the in-time one); the expired one fired nothing.
  const stats = await client.getStats({});
  assert.equal(stats.firedLastHour, 6n);
  assert.equal(stats.attemptsLastHour, 6n);
});
