import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError } from "../../services/shared/src/env.js";
import { loadTimerConfig } from "../../services/timer/src/config.js";
import { loadDispatcherConfig } from "../../services/dispatcher/src/config.js";

// Services refuse to start without token configuration; these checks are about other settings.
const base = { AUTH_DISABLED: "true" };

test("defaults follow the contract", () => {
  const t = loadTimerConfig(base);
  assert.equal(t.grpcPort, 50051);
  assert.equal(t.httpPort, 8080);
  assert.equal(t.shardCount, 1024);
  assert.equal(t.limits.maxHorizonMs, 365 * 86_400_000);
  assert.equal(t.limits.maxPayloadBytes, 65536);
  const d = loadDispatcherConfig(base);
  assert.equal(d.grpcPort, 50052);
  assert.equal(d.httpPort, 8081);
});

test("bad values are refused with the variable named", () => {
  const bad: Record<string, string>[] = [
    { GRPC_PORT: "http" },
    { GRPC_PORT: "70000" },
    { SHARD_COUNT: "0" },
    { DATABASE_URL: "mysql://x" },
    { NATS_URL: "not a url" },
    { LOG_LEVEL: "loud" },
    { MAX_TIMER_HORIZON: "forever" },
  ];
  for (const env of bad) {
    const name = Object.keys(env)[0]!;
    assert.throws(
      () => loadTimerConfig({ ...base, ...env }),
      (e: Error) => e instanceof ConfigError && e.message.includes(name),
      name,
    );
  }
  assert.throws(() => loadDispatcherConfig({ ...base, LOOKAHEAD: "10ms" }), /LOOKAHEAD/);
});

test("durations accept units", () => {
  assert.equal(loadTimerConfig({ ...base, MAX_TIMER_HORIZON: "30d" }).limits.maxHorizonMs, 30 * 86_400_000);
  assert.equal(loadDispatcherConfig({ ...base, LOOKAHEAD: "2m" }).lookaheadMs, 120_000);
  assert.equal(loadDispatcherConfig({ ...base, CLAIM_LEAD: "5ms" }).claimLeadMs, 5);
});

test("every service refuses to start without token configuration", () => {
  for (const load of [loadTimerConfig, loadDispatcherConfig]) {
    assert.throws(
      () => load({}),
      (e: Error) =>
        e instanceof ConfigError &&
        /AUTH_TOKENS_FILE/.test(e.message) &&
        /AUTH_DISABLED=true/.test(e.message),
    );
  }
});

test("a malformed DATABASE_URL or NATS_URL is refused without quoting its password or token", () => {
  const cases: [string, string, string][] = [
    ["DATABASE_URL", "postgres://timer:s3cr3t/pw@db:5432/timers", "s3cr3t"], // "/" in the password: not a URL
    ["DATABASE_URL", "postgres://timer:s3cr3t pw@db:99999/timers", "s3cr3t"], // bad port
    ["DATABASE_URL", "postgres://timer:p@ss@db:port/timers", "p@ss"],
    ["NATS_URL", "nats://t0ken-s3cr3t@nats:4222x", "t0ken-s3cr3t"], // a NATS token is user info alone
    ["NATS_URL", "nats://u:n4ts-s3cr3t@nats:4222,nats://u:n4ts-s3cr3t@other:bad", "n4ts-s3cr3t"],
  ];
  for (const [name, value, secret] of cases) {
    assert.throws(
      () => loadTimerConfig({ ...base, [name]: value }),
      (e: Error) =>
        e instanceof ConfigError &&
        e.message.includes(name) &&
        !e.message.includes(secret) &&
        e.message.includes("****"),
      value,
    );
  }
});
