// CreateTimer validation (services/timer/src/validation.ts), rule by rule: each limit accepts a
// request at its edge and refuses one just past it, and the refusal names the field at fault.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { DurationSchema, durationFromMs, TimestampSchema, timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  type CreateTimerRequest,
  CreateTimerRequestSchema,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { loadTimerConfig } from "../../services/timer/src/config.js";
import { type NewTimer, ValidationError, validateCreate } from "../../services/timer/src/validation.js";

const NOW = Date.UTC(2026, 0, 1);
const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
const { limits } = loadTimerConfig({
  AUTH_DISABLED: "true",
  CALLBACK_ALLOWED_NETWORKS: "10.0.0.0/8",
  MAX_PAYLOAD_BYTES: "1024",
  MAX_TIMER_HORIZON: "30d",
});
const HORIZON_MS = 30 * DAY_MS;

// The plain-object form of a request (MessageInitShape also admits a built message).
type RequestInit = Exclude<MessageInitShape<typeof CreateTimerRequestSchema>, CreateTimerRequest>;
type Callback = NonNullable<RequestInit["callback"]>;
type Schedule = NonNullable<RequestInit["schedule"]>;

const HOOK = "http://10.1.2.3:9000/hook";
const httpCallback = (url: string, headers: Record<string, string> = {}): Callback => ({
  target: { case: "http", value: { url, headers } },
});
const natsCallback = (subject: string): Callback => ({
  target: { case: "nats", value: { subject, jetstream: false } },
});
const delay = (seconds: bigint, nanos = 0): Schedule => ({
  case: "delay",
  value: create(DurationSchema, { seconds, nanos }),
});
const fireAt = (seconds: bigint, nanos = 0): Schedule => ({
  case: "fireAt",
  value: create(TimestampSchema, { seconds, nanos }),
});
const secondsOf = (ms: number) => BigInt(ms / 1000);

/** A valid request with `change` applied. */
function request(change: RequestInit) {
  return create(CreateTimerRequestSchema, {
    groupId: "billing",
    timerId: "invoice-42",
    schedule: { case: "delay", value: durationFromMs(60_000) },
    callback: httpCallback(HOOK),
    ...change,
  });
}

function accepts(change: RequestInit): NewTimer {
  return validateCreate(request(change), limits, NOW);
}

/** Asserts the request is refused by a ValidationError for `field`, whose message starts with the field. */
function refuses(change: RequestInit, field: string, reason?: RegExp): void {
  refusesRequest(request(change), field, reason);
}

function refusesRequest(req: CreateTimerRequest, field: string, reason?: RegExp): void {
  assert.throws(
    () => validateCreate(req, limits, NOW),
    (e: unknown) => {
      assert.ok(e instanceof ValidationError, `a ValidationError, got ${String(e)}`);
      assert.equal(e.field, field);
      assert.ok(e.message.startsWith(`${field} `), `the message names ${field}: ${e.message}`);
      if (reason) assert.match(e.reason, reason);
      return true;
    },
  );
}

const labelsOf = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, "v"]));
const headersOf = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`x-h${i}`, "v"]));

describe("ids", () => {
  test("group_id: required, 128 characters at most, starting with a letter or digit", () => {
    assert.equal(accepts({ groupId: "g".repeat(128) }).groupId, "g".repeat(128));
    refuses({ groupId: "g".repeat(129) }, "group_id", /1-128 characters/);
    refuses({ groupId: "" }, "group_id", /is required/);
    refuses({ groupId: "-billing" }, "group_id");
    refuses({ groupId: "bill/ing" }, "group_id");
  });

  test("timer_id: optional (a UUID is made), 128 characters at most", () => {
    assert.equal(accepts({ timerId: "t".repeat(128) }).timerId, "t".repeat(128));
    refuses({ timerId: "t".repeat(129) }, "timer_id", /1-128 characters/);
    assert.match(accepts({ timerId: "" }).timerId, /^[0-9a-f-]{36}$/);
  });
});

describe("schedule", () => {
  test("delay: up to the maximum horizon, not a nanosecond more (rounded up)", () => {
    assert.equal(accepts({ schedule: delay(secondsOf(HORIZON_MS)) }).fireAtMs, NOW + HORIZON_MS);
    refuses({ schedule: delay(secondsOf(HORIZON_MS), 1) }, "delay", /maximum horizon of 30d/);
    refuses({ schedule: delay(secondsOf(HORIZON_MS) + 1n) }, "delay", /maximum horizon/);
  });

  test("delay: zero is now; negative is refused; nanos within a second", () => {
    assert.equal(accepts({ schedule: delay(0n) }).fireAtMs, NOW);
    refuses({ schedule: delay(-1n) }, "delay", /negative/);
    refuses({ schedule: delay(0n, -1) }, "delay", /negative/);
    assert.equal(accepts({ schedule: delay(0n, 999_999_999) }).fireAtMs, NOW + 1000);
    refuses({ schedule: delay(0n, 1_000_000_000) }, "delay", /nanos/);
  });

  test("fire_at: up to the maximum horizon from now, not a millisecond more", () => {
    const edge = NOW + HORIZON_MS;
    assert.equal(accepts({ schedule: fireAt(secondsOf(edge)) }).fireAtMs, edge);
    refuses({ schedule: fireAt(secondsOf(edge), 1) }, "fire_at", /maximum horizon/);
    refuses({ schedule: { case: "fireAt", value: timestampFromMs(edge + 1) } }, "fire_at", /maximum horizon/);
  });

  test("fire_at: a time in the past fires at once, but not before 2000-01-01 (seconds sent as a Timestamp)", () => {
    const y2k = Date.UTC(2000, 0, 1);
    assert.equal(accepts({ schedule: fireAt(secondsOf(y2k)) }).fireAtMs, y2k);
    refuses({ schedule: fireAt(secondsOf(y2k) - 1n, 999_000_000) }, "fire_at", /before 2000-01-01/);
  });

  test("fire_at: nanos within a second, rounded up to the millisecond", () => {
    assert.equal(accepts({ schedule: fireAt(secondsOf(NOW), 1) }).fireAtMs, NOW + 1);
    assert.equal(accepts({ schedule: fireAt(secondsOf(NOW), 999_999_999) }).fireAtMs, NOW + 1000);
    refuses({ schedule: fireAt(secondsOf(NOW), 1_000_000_000) }, "fire_at", /nanos/);
    refuses({ schedule: fireAt(secondsOf(NOW), -1) }, "fire_at", /nanos/);
  });

  test("one of fire_at and delay is required", () => {
    const req = request({});
    req.schedule = { case: undefined };
    refusesRequest(req, "schedule", /is required/);
  });
});

describe("callback", () => {
  test("is required, with a target", () => {
    const req = request({});
    req.callback = undefined;
    refusesRequest(req, "callback", /is required/);
    refuses({ callback: { target: { case: undefined } } }, "callback", /needs a target/);
  });

  test("http url: 2048 characters at most, http(s), a host, no credentials, allowed by the egress policy", () => {
    const base = `${HOOK}?q=`;
    const at = (n: number) => base + "x".repeat(n - base.length);
    assert.equal(accepts({ callback: httpCallback(at(2048)) }).callback.target.case, "http");
    refuses({ callback: httpCallback(at(2049)) }, "callback.http.url", /2048/);
    refuses({ callback: httpCallback("") }, "callback.http.url", /is required/);
    refuses({ callback: httpCallback("not a url") }, "callback.http.url", /absolute URL/);
    refuses({ callback: httpCallback("ftp://10.1.2.3/x") }, "callback.http.url", /http or https/);
    refuses({ callback: httpCallback("http://u:p@10.1.2.3/x") }, "callback.http.url", /credentials/);
    refuses({ callback: httpCallback("http://127.0.0.1:9000/hook") }, "callback.http.url");
  });

  test("http headers: 32 at most, values of 4096 characters at most, none the dispatcher sets", () => {
    assert.equal(accepts({ callback: httpCallback(HOOK, headersOf(32)) }).callback.target.case, "http");
    refuses({ callback: httpCallback(HOOK, headersOf(33)) }, "callback.http.headers", /more than 32/);
    accepts({ callback: httpCallback(HOOK, { "x-a": "v".repeat(4096) }) });
    refuses({ callback: httpCallback(HOOK, { "x-a": "v".repeat(4097) }) }, "callback.http.headers", /4096/);
    refuses({ callback: httpCallback(HOOK, { "x-a": "a\r\nb" }) }, "callback.http.headers", /line break/);
    refuses({ callback: httpCallback(HOOK, { "Idempotency-Key": "k" }) }, "callback.http.headers", /set by/);
    refuses({ callback: httpCallback(HOOK, { "bad name": "v" }) }, "callback.http.headers", /header name/);
  });

  test("nats subject: 255 characters at most, no wildcards, none of the mesh's", () => {
    const at = (n: number) => `tenant.${"s".repeat(n - "tenant.".length)}`;
    assert.equal(accepts({ callback: natsCallback(at(255)) }).callback.target.case, "nats");
    refuses({ callback: natsCallback(at(256)) }, "callback.nats.subject", /255/);
    refuses({ callback: natsCallback("") }, "callback.nats.subject", /is required/);
    refuses({ callback: natsCallback("tenant.*") }, "callback.nats.subject", /wildcards/);
    refuses({ callback: natsCallback("timers.shard.0") }, "callback.nats.subject", /reserved/);
  });

  test("grpc target: host:port, allowed by the egress policy", () => {
    const grpc = (target: string): Callback => ({
      target: { case: "grpc", value: { target } },
    });
    assert.equal(accepts({ callback: grpc("10.1.2.3:9090") }).callback.target.case, "grpc");
    refuses({ callback: grpc("") }, "callback.grpc.target", /is required/);
    refuses({ callback: grpc("10.1.2.3") }, "callback.grpc.target", /host:port/);
    refuses({ callback: grpc("127.0.0.1:9090") }, "callback.grpc.target");
  });
});

describe("payload and labels", () => {
  test("payload: MAX_PAYLOAD_BYTES at most", () => {
    assert.equal(accepts({ payload: new Uint8Array(1024) }).payload.length, 1024);
    refuses({ payload: new Uint8Array(1025) }, "payload", /1025 bytes; the limit is 1024/);
  });

  test("labels: 64 at most, keys of 63 characters at most, values of 256 at most", () => {
    assert.equal(Object.keys(accepts({ labels: labelsOf(64) }).labels).length, 64);
    refuses({ labels: labelsOf(65) }, "labels", /more than 64/);
    accepts({ labels: { ["k".repeat(63)]: "v" } });
    refuses({ labels: { ["k".repeat(64)]: "v" } }, "labels", /1-63 characters/);
    accepts({ labels: { k: "v".repeat(256) } });
    refuses({ labels: { k: "v".repeat(257) } }, "labels", /over 256/);
  });
});

describe("retry policy", () => {
  const retry = (p: NonNullable<RequestInit["retryPolicy"]>): RequestInit => ({ retryPolicy: p });

  test("max_attempts: up to RETRY_MAX_ATTEMPTS_LIMIT, 0 for the default", () => {
    const limit = limits.retryBounds.maxAttempts;
    assert.equal(accepts(retry({ maxAttempts: limit })).retry.maxAttempts, limit);
    refuses(retry({ maxAttempts: limit + 1 }), "retry_policy.max_attempts", /RETRY_MAX_ATTEMPTS_LIMIT/);
    refuses(retry({ maxAttempts: -1 }), "retry_policy.max_attempts");
    assert.equal(accepts(retry({ maxAttempts: 0 })).retry.maxAttempts, limits.retryDefaults.maxAttempts);
  });

  test("initial_backoff: at least RETRY_MIN_BACKOFF, at most 24h", () => {
    const min = limits.retryBounds.minBackoffMs;
    assert.equal(accepts(retry({ initialBackoff: durationFromMs(min) })).retry.initialBackoffMs, min);
    refuses(
      retry({ initialBackoff: durationFromMs(min - 1) }),
      "retry_policy.initial_backoff",
      /RETRY_MIN_BACKOFF/,
    );
    const day = { initialBackoff: durationFromMs(DAY_MS), maxBackoff: durationFromMs(DAY_MS) };
    assert.equal(accepts(retry(day)).retry.initialBackoffMs, DAY_MS);
    refuses(
      retry({ ...day, initialBackoff: durationFromMs(DAY_MS + 1) }),
      "retry_policy.initial_backoff",
      /24h/,
    );
  });

  test("max_backoff: at most 24h, not below initial_backoff", () => {
    assert.equal(accepts(retry({ maxBackoff: durationFromMs(DAY_MS) })).retry.maxBackoffMs, DAY_MS);
    refuses(retry({ maxBackoff: durationFromMs(DAY_MS + 1) }), "retry_policy.max_backoff", /24h/);
    const initial = durationFromMs(2_000);
    assert.equal(accepts(retry({ initialBackoff: initial, maxBackoff: initial })).retry.maxBackoffMs, 2_000);
    refuses(
      retry({ initialBackoff: initial, maxBackoff: durationFromMs(1_999) }),
      "retry_policy.max_backoff",
      /less than initial_backoff/,
    );
  });

  test("multiplier: 1 to 10, 0 for the default", () => {
    assert.equal(accepts(retry({ multiplier: 1 })).retry.multiplier, 1);
    assert.equal(accepts(retry({ multiplier: 10 })).retry.multiplier, 10);
    refuses(retry({ multiplier: 0.999 }), "retry_policy.multiplier");
    refuses(retry({ multiplier: 10.001 }), "retry_policy.multiplier");
    refuses(retry({ multiplier: Number.NaN }), "retry_policy.multiplier");
    assert.equal(accepts(retry({ multiplier: 0 })).retry.multiplier, limits.retryDefaults.multiplier);
  });
});
