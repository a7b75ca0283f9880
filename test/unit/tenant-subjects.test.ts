import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError } from "../../services/shared/src/env.js";
import { loadTenantSubjects } from "../../services/shared/src/tenant-subjects.js";

const open = loadTenantSubjects({});

test("the mesh's reserved subjects are refused, whatever the case of the first token, and every $ subject", () => {
  for (const subject of [
    "timers.shard.0",
    "timers",
    "TIMERS.shard.0",
    "mesh.dispatchers.heartbeat",
    "mesh.dispatchers.leave",
    "mesh.rebalance",
    "$JS.API.STREAM.LIST",
    "$js.api.STREAM.LIST",
    "$JS.ACK.stream.consumer.1.1.1.1.1",
    "$SYS.REQ.SERVER.PING",
    "$KV.bucket.key",
    "$O.bucket.C.x",
    "_INBOX.abc",
    "_inbox.abc",
  ]) {
    assert.match(open.refusalOf(subject, "g") ?? "allowed", /is reserved for the timer mesh/, subject);
  }
});

test("subjects outside the reserved ones are allowed without a prefix", () => {
  for (const subject of ["orders.fired", "timersx.a", "meshy", "billing.timers.shard.0", "inbox.x"]) {
    assert.equal(open.refusalOf(subject, "g"), undefined, subject);
  }
});

test("CALLBACK_NATS_SUBJECT_PREFIX narrows a group to its own prefix", () => {
  const narrowed = loadTenantSubjects({ CALLBACK_NATS_SUBJECT_PREFIX: "callbacks.{group}." });
  assert.equal(narrowed.refusalOf("callbacks.billing.invoice", "billing"), undefined);
  assert.match(
    narrowed.refusalOf("callbacks.billing.invoice", "shipping") ?? "allowed",
    /must start with "callbacks\.shipping\."/,
  );
  assert.match(narrowed.refusalOf("callbacks.billingx.a", "billing") ?? "allowed", /must start with/);
  assert.match(narrowed.refusalOf("callbacks.billing", "billing") ?? "allowed", /must start with/);
  assert.match(narrowed.refusalOf("orders.fired", "billing") ?? "allowed", /must start with/);
  assert.match(narrowed.refusalOf("timers.shard.0", "billing") ?? "allowed", /reserved/);
  // Group "a" would otherwise own callbacks.a.b.>, the space of group "a.b".
  assert.match(narrowed.refusalOf("callbacks.a.b.x", "a.b") ?? "allowed", /containing "\."/);
  const fixed = loadTenantSubjects({ CALLBACK_NATS_SUBJECT_PREFIX: "tenants." });
  assert.equal(fixed.refusalOf("tenants.x", "a.b"), undefined);
  assert.match(fixed.refusalOf("other.x", "a.b") ?? "allowed", /must start with "tenants\."/);
});

test("a malformed or reserved CALLBACK_NATS_SUBJECT_PREFIX is a ConfigError naming it", () => {
  for (const prefix of [
    "callbacks",
    "callbacks.*.",
    "callbacks..",
    ".x.",
    "timers.",
    "mesh.{group}.",
    "a b.",
  ]) {
    assert.throws(
      () => loadTenantSubjects({ CALLBACK_NATS_SUBJECT_PREFIX: prefix }),
      (e: Error) => e instanceof ConfigError && e.message.includes("CALLBACK_NATS_SUBJECT_PREFIX"),
      prefix,
    );
  }
});
