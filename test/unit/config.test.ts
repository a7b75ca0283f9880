import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError } from "../../services/shared/src/env.js";
import { loadTimerConfig } from "../../services/timer/src/config.js";
import { loadDispatcherConfig } from "../../services/dispatcher/src/config.js";

test("defaults follow the contract", () => {
  const t = loadTimerConfig({});
  assert.equal(t.grpcPort, 50051);
  assert.equal(t.httpPort, 8080);
  assert.equal(t.shardCount, 1024);
  assert.equal(t.limits.maxHorizonMs, 365 * 86_400_000);
  assert.equal(t.limits.maxPayloadBytes, 65536);
  const d = loadDispatcherConfig({});
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
    assert.throws(() => loadTimerConfig(env), (e: Error) => e instanceof ConfigError && e.message.includes(name), name);
  }
  assert.throws(() => loadDispatcherConfig({ LOOKAHEAD: "10ms" }), /LOOKAHEAD/);
});

test("durations accept units", () => {
  assert.equal(loadTimerConfig({ MAX_TIMER_HORIZON: "30d" }).limits.maxHorizonMs, 30 * 86_400_000);
  assert.equal(loadDispatcherConfig({ LOOKAHEAD: "2m" }).lookaheadMs, 120_000);
  assert.equal(loadDispatcherConfig({ CLAIM_LEAD: "5ms" }).claimLeadMs, 5);
});
