// Limits and quotas as pure logic: the token bucket of creates per token, the per-group quota
// estimate, page cutting, retry-policy bounds and
// the configuration that sets them.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { ConfigError } from "../../services/shared/src/env.js";
import {
  CreateTimerRequestSchema,
  type CreateTimerRequest,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { pageOf } from "../../services/shared/src/page-bytes.js";
import { loadTimerConfig } from "../../services/timer/src/config.js";
import { TokenBuckets } from "../../services/timer/src/create-rate.js";
import { GroupQuota, isRefusal, type Admission } from "../../services/timer/src/group-quota.js";
import { largestGroups } from "../../services/timer/src/timer-metrics.js";
import { ValidationError, validateCreate } from "../../services/timer/src/validation.js";

const base = { AUTH_DISABLED: "true" };

describe("TokenBuckets", () => {
  test("allows a burst, then refuses with the time until the next token", () => {
    const b = new TokenBuckets(10, 3); // a token every 100 ms
    for (let i = 0; i < 3; i++) assert.deepEqual(b.take("ci", 1_000), { allowed: true });
    assert.deepEqual(b.take("ci", 1_000), { allowed: false, retryAfterMs: 100 });
    assert.deepEqual(b.take("ci", 1_040), { allowed: false, retryAfterMs: 60 });
    assert.deepEqual(b.take("ci", 1_100), { allowed: true });
    assert.equal(b.take("ci", 1_100).allowed, false);
  });

  test("each key has its own bucket", () => {
    const b = new TokenBuckets(1, 1);
    assert.equal(b.take("a", 0).allowed, true);
    assert.equal(b.take("a", 0).allowed, false);
    assert.equal(b.take("b", 0).allowed, true);
  });

  test("refills up to the burst only, and a clock stepping back refills nothing", () => {
    const b = new TokenBuckets(1000, 2);
    b.take("k", 0);
    b.take("k", 0);
    // An hour later the bucket holds 2, not 3.6 million.
    assert.equal(b.take("k", 3_600_000).allowed, true);
    assert.equal(b.take("k", 3_600_000).allowed, true);
    assert.equal(b.take("k", 3_600_000).allowed, false);
    assert.equal(b.take("k", 1_000).allowed, false);
  });

  test("a CreateTimers call takes one token per create, all or none", () => {
    const b = new TokenBuckets(100, 1000); // a token every 10 ms
    assert.deepEqual(b.take("ci", 0, 600), { allowed: true });
    // 400 left: 500 more are refused and take nothing; the delay is until 500 are there.
    assert.deepEqual(b.take("ci", 0, 500), { allowed: false, retryAfterMs: 1_000 });
    assert.deepEqual(b.take("ci", 0, 400), { allowed: true });
    assert.equal(b.take("ci", 0, 1).allowed, false);
    // More than the burst is never there.
    assert.equal(b.take("other", 0, 1001).allowed, false);
  });

  test("a tiny rate gives a long but finite retry delay", () => {
    const b = new TokenBuckets(0.001, 1);
    b.take("k", 0);
    const d = b.take("k", 0);
    assert.deepEqual(d, { allowed: false, retryAfterMs: 1_000_000 });
  });
});

describe("GroupQuota", () => {
  const admitted = (a: ReturnType<GroupQuota["admit"]>): Admission => {
    assert.ok(!isRefusal(a), `expected admission, got ${JSON.stringify(a)}`);
    return a;
  };

  test("counts creates being stored, so concurrent creates cannot all pass the limit", () => {
    const q = new GroupQuota(3);
    const a = [admitted(q.admit("g")), admitted(q.admit("g")), admitted(q.admit("g"))];
    const refused = q.admit("g");
    assert.ok(isRefusal(refused));
    assert.deepEqual(refused, { groupId: "g", limit: 3, active: 3, overridden: false });
    // Another group is unaffected.
    admitted(q.admit("other"));
    // A replay (nothing created) frees its place; a created timer keeps it.
    a[0]!.released();
    a[1]!.created();
    a[1]!.created(); // said twice: counted once
    assert.equal(q.activeOf("g"), 2);
    admitted(q.admit("g"));
    assert.ok(isRefusal(q.admit("g")));
  });

  test("a recount replaces the estimate; creates during the recount stay counted on top", () => {
    const q = new GroupQuota(10);
    admitted(q.admit("g")).created();
    admitted(q.admit("g")).created();
    const done = q.recountStarting();
    admitted(q.admit("g")).created(); // committed while the recount ran: maybe in it, maybe not
    done({ activeByGroup: new Map([["g", 3]]), overrides: new Map() });
    assert.equal(q.activeOf("g"), 4); // never below the truth
    q.recountStarting()({ activeByGroup: new Map([["g", 1]]), overrides: new Map() });
    assert.equal(q.activeOf("g"), 1); // timers that finished are forgotten at the next recount
  });

  test("a failed recount keeps the creates it would have counted", () => {
    const q = new GroupQuota(10);
    admitted(q.admit("g")).created();
    q.recountStarting()(undefined);
    assert.equal(q.activeOf("g"), 1);
  });

  test("an admin's override replaces the default for its group", () => {
    const q = new GroupQuota(1);
    admitted(q.admit("big")).created();
    assert.ok(isRefusal(q.admit("big")));
    q.recountStarting()({ activeByGroup: new Map([["big", 1]]), overrides: new Map([["big", 5]]) });
    assert.equal(q.limitOf("big"), 5);
    assert.equal(q.limitOf("small"), 1);
    for (let i = 0; i < 4; i++) admitted(q.admit("big")).created();
    const r = q.admit("big");
    assert.ok(isRefusal(r));
    assert.equal(r.overridden, true);
    assert.equal(r.limit, 5);
  });
});

describe("pages bounded in bytes", () => {
  test("more is true when rows were cut by bytes or by count, false on the last page", () => {
    const rows = (n: number, found: number) =>
      Array.from({ length: n }, (_, i) => ({ i, window_rows: found }));
    assert.deepEqual(pageOf(rows(3, 11), 10), { page: rows(3, 11), more: true }); // cut by bytes
    assert.deepEqual(pageOf(rows(11, 11), 10).more, true); // cut by count
    assert.equal(pageOf(rows(11, 11), 10).page.length, 10);
    assert.deepEqual(pageOf(rows(4, 4), 10), { page: rows(4, 4), more: false });
    assert.deepEqual(pageOf([], 10), { page: [], more: false });
  });
});

test("active_timers_total keeps the 50 largest groups and sums the rest as _other", () => {
  const m = new Map(Array.from({ length: 53 }, (_, i) => [`g${String(i).padStart(2, "0")}`, i + 1] as const));
  const out = largestGroups(m, 50);
  assert.equal(out.length, 51);
  assert.deepEqual(out[0], { group_id: "g52", n: 53 });
  assert.deepEqual(out[50], { group_id: "_other", n: 1 + 2 + 3 });
  assert.deepEqual(largestGroups(new Map([["a", 1]]), 50), [{ group_id: "a", n: 1 }]);
});

describe("retry policy bounds", () => {
  const config = loadTimerConfig(base);
  const req = (retry: { maxAttempts?: number; initialBackoffMs?: number }): CreateTimerRequest =>
    create(CreateTimerRequestSchema, {
      groupId: "g",
      timerId: "t",
      schedule: { case: "delay", value: durationFromMs(1000) },
      callback: { target: { case: "nats", value: { subject: "tenant.hook", jetstream: false } } },
      retryPolicy: {
        maxAttempts: retry.maxAttempts ?? 0,
        initialBackoff:
          retry.initialBackoffMs === undefined ? undefined : durationFromMs(retry.initialBackoffMs),
        multiplier: 0,
      },
    });
  const refused = (field: string, variable: string) => (e: unknown) =>
    e instanceof ValidationError && e.field === field && e.message.includes(variable);

  test("defaults: at most 50 attempts, initial backoff at least 100 ms", () => {
    assert.deepEqual(config.limits.retryBounds, { maxAttempts: 50, minBackoffMs: 100 });
    assert.equal(
      validateCreate(req({ maxAttempts: 50, initialBackoffMs: 100 }), config.limits, Date.now()).retry
        .maxAttempts,
      50,
    );
    assert.throws(
      () => validateCreate(req({ maxAttempts: 100 }), config.limits, Date.now()),
      refused("retry_policy.max_attempts", "RETRY_MAX_ATTEMPTS_LIMIT"),
    );
    assert.throws(
      () => validateCreate(req({ initialBackoffMs: 1 }), config.limits, Date.now()),
      refused("retry_policy.initial_backoff", "RETRY_MIN_BACKOFF"),
    );
    assert.throws(
      () => validateCreate(req({ maxAttempts: 100, initialBackoffMs: 1 }), config.limits, Date.now()),
      /retry_policy\./,
    );
  });

  test("the bounds follow their variables", () => {
    const c = loadTimerConfig({ ...base, RETRY_MAX_ATTEMPTS_LIMIT: "200", RETRY_MIN_BACKOFF: "1ms" });
    const t = validateCreate(req({ maxAttempts: 100, initialBackoffMs: 1 }), c.limits, Date.now());
    assert.equal(t.retry.maxAttempts, 100);
    assert.equal(t.retry.initialBackoffMs, 1);
  });

  test("the server's own defaults must respect the bounds", () => {
    const bad: [Record<string, string>, RegExp][] = [
      [{ RETRY_MAX_ATTEMPTS: "60" }, /RETRY_MAX_ATTEMPTS \(60\).*RETRY_MAX_ATTEMPTS_LIMIT \(50\)/],
      [{ RETRY_INITIAL_BACKOFF: "10ms" }, /RETRY_INITIAL_BACKOFF \(10ms\).*RETRY_MIN_BACKOFF \(100ms\)/],
      [{ RETRY_MAX_ATTEMPTS_LIMIT: "3" }, /RETRY_MAX_ATTEMPTS_LIMIT/],
      [{ RETRY_MIN_BACKOFF: "2s" }, /RETRY_MIN_BACKOFF/],
    ];
    for (const [env, message] of bad) {
      assert.throws(
        () => loadTimerConfig({ ...base, ...env }),
        (e: Error) => e instanceof ConfigError && message.test(e.message),
        JSON.stringify(env),
      );
    }
  });
});

describe("validation shared by CreateTimer and CreateTimers", () => {
  const config = loadTimerConfig({ ...base, CALLBACK_ALLOWED_NETWORKS: "10.0.0.0/8" });
  const http = (url: string, headers: Record<string, string> = {}): CreateTimerRequest =>
    create(CreateTimerRequestSchema, {
      groupId: "billing",
      timerId: "invoice-42",
      schedule: { case: "delay", value: durationFromMs(30_000) },
      callback: { target: { case: "http", value: { url, headers } } },
      payload: new Uint8Array([104, 105]),
      labels: { tenant: "acme", env: "prod" },
    });

  test("URL checks remembered across a call's creates answer as fresh ones, for allowed and refused URLs alike", () => {
    const urls = new Map();
    for (let i = 0; i < 2; i++) {
      assert.equal(
        validateCreate(http("http://10.1.2.3:9000/hook"), config.limits, 0, urls).callback.target.case,
        "http",
      );
      for (const [url, reason] of [
        ["http://127.0.0.1:9000/hook", /loopback|not allowed|CALLBACK_ALLOWED/],
        ["ftp://10.1.2.3/x", /must use http or https/],
      ] as const) {
        assert.throws(
          () => validateCreate(http(url), config.limits, 0, urls),
          (e: unknown) =>
            e instanceof ValidationError && e.field === "callback.http.url" && reason.test(e.reason),
        );
        assert.throws(
          () => validateCreate(http(url), config.limits, 0),
          (e: unknown) =>
            e instanceof ValidationError && e.field === "callback.http.url" && reason.test(e.reason),
        );
      }
    }
    assert.equal(urls.size, 3);
    // Headers are checked per create, whatever the URL's verdict.
    assert.throws(
      () => validateCreate(http("http://10.1.2.3:9000/hook", { host: "x" }), config.limits, 0, urls),
      (e: unknown) => e instanceof ValidationError && e.field === "callback.http.headers",
    );
  });

  test("the request hash is unchanged: a replay of a timer stored by an earlier version is still a replay", () => {
    // Computed by the version before CreateTimers (createHash over the canonical JSON).
    assert.equal(
      validateCreate(
        http("http://10.1.2.3:9000/hook", { "x-b": "2", "x-a": "1" }),
        config.limits,
        0,
      ).requestHash.toString("hex"),
      "507fea2ff0dd43c67f82db74ab60fcc8472ed8ca0c901bc2b3a7651bfab41f6f",
    );
  });
});

test("quota settings: defaults and variables", () => {
  const d = loadTimerConfig(base);
  assert.deepEqual(d.quotas, {
    listPageMaxBytes: 2 * 1024 * 1024,
    groupMaxActiveTimers: 1_000_000,
    createRatePerToken: 1000,
    createBurstPerToken: 2000,
  });
  assert.equal(d.grpcMaxRequestBytes, 1024 * 1024);
  const c = loadTimerConfig({
    ...base,
    LIST_PAGE_MAX_BYTES: "65536",
    GROUP_MAX_ACTIVE_TIMERS: "10",
    CREATE_RATE_PER_TOKEN: "0.001",
    CREATE_BURST_PER_TOKEN: "5",
    GRPC_MAX_REQUEST_BYTES: "4096",
  });
  assert.deepEqual(c.quotas, {
    listPageMaxBytes: 65536,
    groupMaxActiveTimers: 10,
    createRatePerToken: 0.001,
    createBurstPerToken: 5,
  });
  assert.equal(c.grpcMaxRequestBytes, 4096);
  for (const [name, value] of [
    ["CREATE_RATE_PER_TOKEN", "0"],
    ["CREATE_RATE_PER_TOKEN", "fast"],
    ["GROUP_MAX_ACTIVE_TIMERS", "0"],
    ["GRPC_MAX_REQUEST_BYTES", "1"],
    ["LIST_PAGE_MAX_BYTES", "-1"],
  ] as const) {
    assert.throws(
      () => loadTimerConfig({ ...base, [name]: value }),
      (e: Error) => e instanceof ConfigError && e.message.includes(name),
      `${name}=${value}`,
    );
  }
});
