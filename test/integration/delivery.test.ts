// Callback delivery end to end: real timer service, one real dispatcher, Postgres, nats-server,
// and real HTTP / NATS / JetStream / gRPC receivers. Each timer must arrive once, never before
// its fire_at, with the contract's headers, and its outcome must be written back to Postgres.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { Msg, NatsConnection } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import {
  CallbackSchema,
  CreateTimerRequestSchema,
  RetryPolicySchema,
  type Callback,
  type CreateTimerRequest,
  type RetryPolicy,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { State } from "../../services/shared/src/timer-model.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startGrpcReceiver, startHttpReceiver, type Received } from "../support/receivers.js";
import { waitFor } from "../support/wait.js";
import { createAll, fireAtMsOf } from "../support/timer-client.js";

const TRACEPARENT_RE = /^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$/;

let mesh: TestMesh;

before(async () => {
  mesh = await startMesh({ dispatchers: 1, dispatcherEnv: { POLL_INTERVAL: "250ms" } });
});
after(async () => {
  await mesh?.[Symbol.asyncDispose]();
});

// ---------------------------------------------------------------------------------------------
// helpers

function httpCallback(url: string, headers: Record<string, string> = {}): Callback {
  return create(CallbackSchema, { target: { case: "http", value: { url, headers } } });
}

function natsCallback(subject: string, jetstream = false): Callback {
  return create(CallbackSchema, { target: { case: "nats", value: { subject, jetstream } } });
}

function grpcCallback(target: string): Callback {
  return create(CallbackSchema, { target: { case: "grpc", value: { target } } });
}

function retryPolicy(maxAttempts: number, initialBackoffMs: number, multiplier: number): RetryPolicy {
  return create(RetryPolicySchema, {
    maxAttempts,
    initialBackoff: durationFromMs(initialBackoffMs),
    multiplier,
  });
}

function timerReq(
  groupId: string,
  timerId: string,
  delayMs: number,
  callback: Callback,
  over: Partial<Omit<CreateTimerRequest, "$typeName" | "$unknown">> = {},
): CreateTimerRequest {
  return create(CreateTimerRequestSchema, {
    groupId,
    timerId,
    schedule: { case: "delay", value: durationFromMs(delayMs) },
    callback,
    payload: payloadOf(timerId),
    ...over,
  });
}

/** A payload unique to the timer, with bytes that are not valid UTF-8 to catch re-encoding. */
function payloadOf(timerId: string): Uint8Array {
  return new Uint8Array(
    Buffer.concat([Buffer.from(`payload:${timerId}:`), Buffer.from([0x00, 0xff, 0x80, 0x7f])]),
  );
}

interface Row {
  timer_id: string;
  state: number;
  attempt: number;
  last_error: string | null;
}

async function rows(groupId: string): Promise<Map<string, Row>> {
  const { rows } = await mesh.db.pool.query<Row>(
    "SELECT timer_id, state, attempt, last_error FROM timers WHERE group_id = $1",
    [groupId],
  );
  return new Map(rows.map((r) => [r.timer_id, r]));
}

/** Waits until every timer of the group is in a final state; returns the rows. */
async function waitFinal(groupId: string, n: number, timeoutMs = 30_000): Promise<Map<string, Row>> {
  return waitFor(
    async () => {
      const r = await rows(groupId);
      const final = [...r.values()].filter(
        (x) => x.state === State.Succeeded || x.state === State.Failed || x.state === State.Cancelled,
      );
      return r.size === n && final.length === n ? r : undefined;
    },
    timeoutMs,
    `${n} timers of ${groupId} to reach a final state`,
  );
}

async function attemptRows(
  groupId: string,
): Promise<
  { timer_id: string; attempt: number; outcome: string; error: string | null; dispatcher_id: string }[]
> {
  const { rows } = await mesh.db.pool.query(
    "SELECT timer_id, attempt, outcome, error, dispatcher_id FROM timer_attempts WHERE group_id = $1 ORDER BY timer_id, attempt",
    [groupId],
  );
  return rows;
}

function countBy<T>(items: T[], key: (t: T) => string): Map<string, number> {
  const m = new Map<string, number>();
  for (const it of items) m.set(key(it), (m.get(key(it)) ?? 0) + 1);
  return m;
}

function assertEachOnce(counts: Map<string, number>, ids: Iterable<string>, what: string): void {
  const expected = [...ids];
  const missing = expected.filter((id) => !counts.has(id));
  const dup = [...counts].filter(([, n]) => n > 1);
  const unknown = [...counts.keys()].filter((id) => !expected.includes(id));
  assert.deepEqual(
    { missing: missing.length, duplicated: dup.length, unknown: unknown.length },
    { missing: 0, duplicated: 0, unknown: 0 },
    `${what}: ${expected.length} expected, ${counts.size} distinct received; missing ${missing.slice(0, 5).join(",")}; duplicated ${dup
      .slice(0, 5)
      .map(([id, n]) => `${id}x${n}`)
      .join(",")}; unknown ${unknown.slice(0, 5).join(",")}`,
  );
}

function headerOf(msg: Msg, name: string): string {
  return msg.headers?.get(name) ?? "";
}

// ---------------------------------------------------------------------------------------------

describe("HTTP callbacks", () => {
  test("200 timers over ~3s each arrive exactly once, never early, with the contract's headers, and end SUCCEEDED", async () => {
    await using rx = await startHttpReceiver();
    const group = "http-bulk";
    const n = 200;
    const reqs = Array.from({ length: n }, (_, i) =>
      timerReq(
        group,
        `h-${String(i).padStart(3, "0")}`,
        300 + Math.round((i * 3000) / n),
        httpCallback(rx.url, { "x-tenant": "acme", "x-seq": String(i) }),
      ),
    );
    const timers = await createAll(mesh.client, reqs);

    await waitFor(() => new Set(rx.received.map((r) => r.timerId)).size >= n, 30_000, `${n} HTTP callbacks`);
    const final = await waitFinal(group, n);

    assertEachOnce(
      countBy(rx.received, (r) => r.timerId),
      timers.keys(),
      "HTTP deliveries",
    );
    for (const r of rx.received) {
      const t = timers.get(r.timerId)!;
      const i = Number(r.timerId.slice(2));
      const fireAtMs = fireAtMsOf(t);
      assert.equal(
        r.fireAtMs,
        fireAtMs,
        `${r.timerId}: x-timer-fire-at ${r.headers["x-timer-fire-at"]} must equal the timer's fire_at ${new Date(fireAtMs).toISOString()}`,
      );
      assert.ok(
        r.receivedAtMs >= fireAtMs,
        `${r.timerId} arrived ${fireAtMs - r.receivedAtMs}ms before its fire_at`,
      );
      assert.equal(r.groupId, group);
      assert.equal(r.headers["x-timer-group"], group);
      assert.equal(r.headers["x-timer-id"], r.timerId);
      assert.equal(r.headers["x-timer-attempt"], "1");
      assert.equal(r.attempt, 1);
      assert.equal(r.idempotencyKey, `${group}/${r.timerId}`);
      assert.match(r.traceparent, TRACEPARENT_RE);
      assert.equal(r.headers["x-tenant"], "acme", "the timer's own headers are passed through");
      assert.equal(r.headers["x-seq"], String(i));
      assert.deepEqual(
        r.body,
        Buffer.from(payloadOf(r.timerId)),
        `${r.timerId}: body must be the payload bytes`,
      );
    }
    assert.equal(
      new Set(rx.received.map((r) => r.traceparent)).size,
      n,
      "each delivery gets its own trace id",
    );

    for (const [id, row] of final) {
      assert.equal(
        row.state,
        State.Succeeded,
        `${id} should be SUCCEEDED, is ${row.state} (${row.last_error})`,
      );
      assert.equal(row.attempt, 1);
    }
    const attempts = await attemptRows(group);
    assertEachOnce(
      countBy(attempts, (a) => a.timer_id),
      timers.keys(),
      "timer_attempts rows",
    );
    for (const a of attempts) {
      assert.equal(a.outcome, "succeeded");
      assert.equal(a.attempt, 1);
      assert.equal(a.dispatcher_id, "d1");
    }
  });
});

describe("NATS callbacks", () => {
  let nc: NatsConnection;
  before(async () => {
    // The test's own subscriptions and streams: the operator user (full rights).
    nc = await mesh.nats.connectAs("operator");
  });
  after(async () => {
    await nc?.close();
  });

  test("core NATS: each timer is published once with the x-timer-* headers and the payload", async () => {
    const group = "nats-core";
    const subject = "test.timers.core";
    const got: Msg[] = [];
    const sub = nc.subscribe(subject, {
      callback: (err, msg) => {
        if (!err) got.push(msg);
      },
    });
    await nc.flush();
    try {
      const n = 30;
      const timers = await createAll(
        mesh.client,
        Array.from({ length: n }, (_, i) => timerReq(group, `n-${i}`, 200 + i * 30, natsCallback(subject))),
      );
      await waitFor(
        () => new Set(got.map((m) => headerOf(m, "x-timer-id"))).size >= n,
        30_000,
        `${n} NATS messages`,
      );
      const final = await waitFinal(group, n);
      await nc.flush();

      assertEachOnce(
        countBy(got, (m) => headerOf(m, "x-timer-id")),
        timers.keys(),
        "NATS messages",
      );
      for (const m of got) {
        const id = headerOf(m, "x-timer-id");
        const t = timers.get(id)!;
        assert.equal(m.subject, subject);
        assert.equal(headerOf(m, "x-timer-group"), group);
        assert.equal(headerOf(m, "x-timer-attempt"), "1");
        assert.equal(Date.parse(headerOf(m, "x-timer-fire-at")), fireAtMsOf(t));
        assert.equal(headerOf(m, "idempotency-key"), `${group}/${id}`);
        assert.match(headerOf(m, "traceparent"), TRACEPARENT_RE);
        assert.deepEqual(Buffer.from(m.data), Buffer.from(payloadOf(id)));
      }
      for (const [id, row] of final) assert.equal(row.state, State.Succeeded, `${id}: ${row.last_error}`);
    } finally {
      sub.unsubscribe();
    }
  });

  test("JetStream: the stream holds one message per timer with Nats-Msg-Id = the idempotency key", async () => {
    const group = "nats-js";
    const subject = "test.timers.js";
    const stream = "TIMERS_JS_TEST";
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: stream, subjects: [subject] });
    const n = 30;
    const timers = await createAll(
      mesh.client,
      Array.from({ length: n }, (_, i) =>
        timerReq(group, `j-${i}`, 200 + i * 30, natsCallback(subject, true)),
      ),
    );
    const final = await waitFinal(group, n);
    for (const [id, row] of final) assert.equal(row.state, State.Succeeded, `${id}: ${row.last_error}`);

    const info = await jsm.streams.info(stream);
    assert.equal(info.state.messages, n, `the stream should hold exactly ${n} messages`);
    const seen = new Map<string, number>();
    for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
      const m = await jsm.streams.getMessage(stream, { seq });
      assert.ok(m, `message ${seq} missing`);
      const id = m.header.get("x-timer-id");
      seen.set(id, (seen.get(id) ?? 0) + 1);
      assert.equal(m.header.get("Nats-Msg-Id"), `${group}/${id}`);
      assert.equal(m.header.get("idempotency-key"), `${group}/${id}`);
      assert.equal(m.header.get("x-timer-group"), group);
      assert.equal(m.header.get("x-timer-attempt"), "1");
      assert.equal(Date.parse(m.header.get("x-timer-fire-at")), fireAtMsOf(timers.get(id)!));
      assert.deepEqual(Buffer.from(m.data), Buffer.from(payloadOf(id)));
    }
    assertEachOnce(seen, timers.keys(), "JetStream messages");
  });
});

describe("gRPC callbacks", () => {
  test("OnTimerFired is called once per timer with payload, attempt and idempotency key, never early", async () => {
    await using rx = await startGrpcReceiver();
    const group = "grpc-cb";
    const n = 30;
    const timers = await createAll(
      mesh.client,
      Array.from({ length: n }, (_, i) =>
        timerReq(group, `g-${i}`, 200 + i * 30, grpcCallback(rx.target), {
          labels: { tenant: "acme", seq: String(i) },
        }),
      ),
    );
    await waitFor(() => new Set(rx.received.map((r) => r.timerId)).size >= n, 30_000, `${n} gRPC callbacks`);
    const final = await waitFinal(group, n);

    assertEachOnce(
      countBy(rx.received, (r) => r.timerId),
      timers.keys(),
      "gRPC callbacks",
    );
    for (const r of rx.received) {
      const t = timers.get(r.timerId)!;
      assert.equal(r.groupId, group);
      assert.equal(r.attempt, 1);
      assert.equal(r.idempotencyKey, `${group}/${r.timerId}`);
      assert.equal(r.fireAtMs, fireAtMsOf(t));
      assert.ok(r.receivedAtMs >= r.fireAtMs, `${r.timerId} arrived ${r.fireAtMs - r.receivedAtMs}ms early`);
      assert.match(r.traceparent, TRACEPARENT_RE, "traceparent travels as gRPC metadata");
      assert.deepEqual(r.body, Buffer.from(payloadOf(r.timerId)));
      assert.deepEqual(r.labels, { tenant: "acme", seq: r.timerId.slice(2) }, "labels reach the receiver");
    }
    for (const [id, row] of final) assert.equal(row.state, State.Succeeded, `${id}: ${row.last_error}`);
  });
});

describe("retries and failures", () => {
  test("a receiver answering 503 gets exactly max_attempts attempts with backoff; the timer ends FAILED", async () => {
    await using rx = await startHttpReceiver(() => 503);
    const group = "retry-503";
    const t = (
      await createAll(mesh.client, [
        timerReq(group, "r-1", 100, httpCallback(rx.url), { retryPolicy: retryPolicy(3, 100, 2) }),
      ])
    ).get("r-1")!;
    const final = await waitFinal(group, 1);
    const row = final.get("r-1")!;
    assert.equal(row.state, State.Failed);
    assert.equal(row.attempt, 3);
    assert.match(row.last_error ?? "", /503/);

    const got = rx.received.filter((r) => r.timerId === "r-1");
    assert.deepEqual(
      got.map((r) => r.attempt),
      [1, 2, 3],
    );
    assert.deepEqual(
      got.map((r) => r.headers["x-timer-attempt"]),
      ["1", "2", "3"],
    );
    assert.equal(
      new Set(got.map((r) => r.idempotencyKey)).size,
      1,
      "the idempotency key is stable across retries",
    );
    assert.equal(got[0]!.idempotencyKey, `${group}/r-1`);
    for (const r of got)
      assert.equal(r.fireAtMs, fireAtMsOf(t), "x-timer-fire-at stays the timer's fire_at on retries");
    assert.ok(got[0]!.receivedAtMs >= fireAtMsOf(t));
    // Backoff: 100ms then 200ms, each less up to 20% jitter, counted from the end of the attempt.
    const gap1 = got[1]!.receivedAtMs - got[0]!.receivedAtMs;
    const gap2 = got[2]!.receivedAtMs - got[1]!.receivedAtMs;
    assert.ok(gap1 >= 80, `first retry came ${gap1}ms after the first attempt; expected at least 80ms`);
    assert.ok(gap2 >= 160, `second retry came ${gap2}ms after the second attempt; expected at least 160ms`);

    const attempts = await attemptRows(group);
    assert.deepEqual(
      attempts.map((a) => [a.attempt, a.outcome]),
      [
        [1, "retry"],
        [2, "retry"],
        [3, "failed"],
      ],
    );
    assert.match(attempts[2]!.error ?? "", /503/);
  });

  test("a receiver answering 400 gets one attempt and the timer is FAILED at once", async () => {
    await using rx = await startHttpReceiver(() => 400);
    const group = "fail-400";
    await createAll(mesh.client, [
      timerReq(group, "b-1", 100, httpCallback(rx.url), { retryPolicy: retryPolicy(5, 100, 2) }),
    ]);
    const row = (await waitFinal(group, 1)).get("b-1")!;
    assert.equal(row.state, State.Failed);
    assert.equal(row.attempt, 1);
    assert.match(row.last_error ?? "", /400/);
    assert.equal(rx.received.filter((r) => r.timerId === "b-1").length, 1);
    const attempts = await attemptRows(group);
    assert.deepEqual(
      attempts.map((a) => [a.attempt, a.outcome]),
      [[1, "failed"]],
    );
  });

  test("a receiver answering 503 twice then 200 makes the timer SUCCEEDED on attempt 3", async () => {
    const seen = new Map<string, number>();
    await using rx = await startHttpReceiver((r: Received) => {
      const n = (seen.get(r.timerId) ?? 0) + 1;
      seen.set(r.timerId, n);
      return n <= 2 ? 503 : 200;
    });
    const group = "retry-then-ok";
    await createAll(mesh.client, [
      timerReq(group, "s-1", 100, httpCallback(rx.url), { retryPolicy: retryPolicy(5, 100, 2) }),
    ]);
    const row = (await waitFinal(group, 1)).get("s-1")!;
    assert.equal(row.state, State.Succeeded, `state ${row.state}, last error ${row.last_error}`);
    assert.equal(row.attempt, 3);
    assert.deepEqual(
      rx.received.filter((r) => r.timerId === "s-1").map((r) => r.attempt),
      [1, 2, 3],
    );
    const attempts = await attemptRows(group);
    assert.deepEqual(
      attempts.map((a) => [a.attempt, a.outcome]),
      [
        [1, "retry"],
        [2, "retry"],
        [3, "succeeded"],
      ],
    );
  });
});

describe("cancellation", () => {
  test("a timer cancelled before its fire time never arrives", async () => {
    await using rx = await startHttpReceiver();
    const group = "cancel";
    // Due in 3 s: the create and the cancel must both be done before the dispatcher claims it
    // (a claim makes the cancel FAILED_PRECONDITION). Two calls take milliseconds; 3 s leaves
    // room for a machine far busier than that.
    const cancelled = (
      await createAll(mesh.client, [timerReq(group, "c-cancelled", 3_000, httpCallback(rx.url))])
    ).get("c-cancelled")!;
    const c = await mesh.client.call("cancelTimer", {
      $typeName: "timer.v1.CancelTimerRequest",
      groupId: group,
      timerId: "c-cancelled",
    });
    assert.equal(c.timer!.state, State.Cancelled);
    // Created after the cancelled one and due after it: once it has arrived, the cancelled
    // timer's moment has passed with the dispatcher demonstrably working.
    const witness = (
      await createAll(mesh.client, [timerReq(group, "c-witness", 3_500, httpCallback(rx.url))])
    ).get("c-witness")!;
    assert.ok(fireAtMsOf(witness) > fireAtMsOf(cancelled));
    await waitFor(() => rx.received.some((r) => r.timerId === "c-witness"), 30_000, "the witness timer");
    await waitFor(
      () => Date.now() > fireAtMsOf(cancelled) + 1000,
      30_000,
      "well past the cancelled timer's fire time",
    );
    const final = await waitFinal(group, 2);
    assert.equal(final.get("c-cancelled")!.state, State.Cancelled);
    assert.equal(final.get("c-witness")!.state, State.Succeeded);
    assert.equal(
      rx.received.filter((r) => r.timerId === "c-cancelled").length,
      0,
      "the cancelled timer was delivered",
    );
    assert.deepEqual(
      (await attemptRows(group)).map((a) => a.timer_id),
      ["c-witness"],
    );
  });
});

describe("core NATS callbacks while NATS is down", () => {
  test("a callback due during an outage is retried, never recorded SUCCEEDED unsent, and published once NATS is back", async () => {
    const group = "nats-outage";
    const subject = "test.timers.outage";
    const stream = "TIMERS_OUTAGE_TEST";
    // The subscriber is a stream on the subject: its interest lives in the server (and its
    // store survives the restart), so it is in place the moment the restarted server lets the
    // dispatcher in, where a client's subscription would first have to reconnect (a race).
    {
      const nc = await mesh.nats.connectAs("operator");
      try {
        await (await jetstreamManager(nc)).streams.add({ name: stream, subjects: [subject] });
      } finally {
        await nc.close();
      }
    }
    // Backoff 200 ms growing to 2 s: dozens of attempts fit in any outage this test makes.
    const policy = create(RetryPolicySchema, {
      maxAttempts: 50,
      initialBackoff: durationFromMs(200),
      maxBackoff: durationFromMs(2_000),
      multiplier: 1.5,
    });
    await mesh.nats.stop();
    let restarted = false;
    try {
      // Stored while NATS is away (the timer service needs only Postgres for that); the
      // dispatcher's poll finds it.
      const t = (
        await createAll(mesh.client, [
          timerReq(group, "o-1", 300, natsCallback(subject), { retryPolicy: policy }),
        ])
      ).get("o-1")!;
      const during = await waitFor(
        async () => {
          const a = await attemptRows(group);
          const row = (await rows(group)).get("o-1");
          const final = row && row.state !== State.Scheduled && row.state !== State.Firing;
          return a.length >= 2 || final ? a : undefined;
        },
        30_000,
        "two attempts of o-1 while NATS is down",
      );
      assert.deepEqual(
        during.map((a) => a.outcome),
        during.map(() => "retry"),
        `with NATS down every attempt must be a retry, none "succeeded": ${JSON.stringify(during)}`,
      );
      for (const a of during)
        assert.match(a.error ?? "", /NATS/, `attempt ${a.attempt} should say why it was not sent`);
      assert.notEqual((await rows(group)).get("o-1")!.state, State.Succeeded);

      await mesh.nats.restart();
      restarted = true;
      const row = (await waitFinal(group, 1, 60_000)).get("o-1")!;
      assert.equal(
        row.state,
        State.Succeeded,
        `after NATS returned: state ${row.state}, last error ${row.last_error}`,
      );
      const attempts = await attemptRows(group);
      assert.deepEqual(
        attempts.map((a) => [a.attempt, a.outcome]),
        attempts.map((_, i) => [i + 1, i === attempts.length - 1 ? "succeeded" : "retry"]),
        "the history shows the retries, then the one attempt that was published",
      );
      assert.equal(row.attempt, attempts.length);

      // Exactly one message reached the server: the attempt recorded as succeeded, never early.
      const nc = await waitFor(
        () => mesh.nats.connectAs("operator"),
        15_000,
        "a connection to the restarted nats-server",
      );
      try {
        const jsm = await jetstreamManager(nc);
        const info = await waitFor(() => jsm.streams.info(stream), 15_000, "the stream after the restart");
        assert.equal(
          info.state.messages,
          1,
          "one message on the subject: nothing published during the outage arrived later as well",
        );
        const m = await jsm.streams.getMessage(stream, { seq: info.state.first_seq });
        assert.ok(m);
        assert.equal(m.header.get("x-timer-id"), "o-1");
        assert.equal(m.header.get("x-timer-attempt"), String(row.attempt));
        assert.equal(m.header.get("idempotency-key"), `${group}/o-1`);
        assert.deepEqual(Buffer.from(m.data), Buffer.from(payloadOf("o-1")));
        assert.ok(
          m.time.getTime() >= fireAtMsOf(t),
          `published ${fireAtMsOf(t) - m.time.getTime()}ms before fire_at`,
        );
      } finally {
        await nc.close();
      }
    } finally {
      if (!restarted) await mesh.nats.restart();
    }
  });
});
