// NATS users and the admin's own dispatcher credential, as the services read them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { ConfigError } from "../../services/shared/src/env.js";
import { loadAdminConfig } from "../../services/admin/src/config.js";
import { loadDispatcherConfig } from "../../services/dispatcher/src/config.js";
import { loadTimerConfig } from "../../services/timer/src/config.js";
import { RESERVED_SUBJECTS } from "../../services/shared/src/tenant-subjects.js";

const base = { AUTH_DISABLED: "true" };
const configError = (variable: string) => (e: Error) =>
  e instanceof ConfigError && e.message.includes(variable);

test("each service reads its own NATS user; a user without a password, or a password without a user, is refused", () => {
  assert.deepEqual(loadTimerConfig({ ...base, NATS_USER: "timer", NATS_PASSWORD: "pw" }).natsCredentials, {
    user: "timer",
    password: "pw",
  });
  assert.equal(loadTimerConfig(base).natsCredentials, undefined, "no user: a server without authorization");
  assert.throws(() => loadTimerConfig({ ...base, NATS_USER: "timer" }), configError("NATS_PASSWORD"));
  assert.throws(() => loadAdminConfig({ ...base, NATS_PASSWORD: "pw" }), configError("NATS_USER"));
});

test("a dispatcher with a NATS user refuses to start without a separate user for tenant callbacks", () => {
  const mesh = { ...base, NATS_USER: "dispatcher", NATS_PASSWORD: "pw" };
  assert.throws(() => loadDispatcherConfig(mesh), configError("CALLBACK_NATS_USER"));
  assert.throws(
    () => loadDispatcherConfig({ ...mesh, CALLBACK_NATS_USER: "callbacks" }),
    configError("CALLBACK_NATS_PASSWORD"),
  );
  const d = loadDispatcherConfig({ ...mesh, CALLBACK_NATS_USER: "callbacks", CALLBACK_NATS_PASSWORD: "cb" });
  assert.deepEqual(d.natsCredentials, { user: "dispatcher", password: "pw" });
  assert.deepEqual(d.callbackNatsCredentials, { user: "callbacks", password: "cb" });
  // Without any NATS user (a server without authorization) it starts, and warns at start.
  assert.equal(loadDispatcherConfig(base).callbackNatsCredentials, undefined);
});

test("DISPATCHER_ID follows the id rule, since every heartbeat carries it", () => {
  assert.equal(
    loadDispatcherConfig({ ...base, DISPATCHER_ID: "dispatcher-0.zone-a" }).dispatcherId,
    "dispatcher-0.zone-a",
  );
  assert.throws(
    () => loadDispatcherConfig({ ...base, DISPATCHER_ID: "dispatcher 1" }),
    configError("DISPATCHER_ID"),
  );
});

test("the admin's own dispatcher token comes from DISPATCHER_TOKEN or DISPATCHER_TOKEN_FILE, not both", () => {
  assert.deepEqual(loadAdminConfig({ ...base, DISPATCHER_TOKEN: "secret" }).dispatcherToken, {
    inline: "secret",
  });
  assert.deepEqual(loadAdminConfig({ ...base, DISPATCHER_TOKEN_FILE: "/run/secrets/t" }).dispatcherToken, {
    file: "/run/secrets/t",
  });
  assert.equal(loadAdminConfig(base).dispatcherToken, undefined);
  assert.throws(
    () => loadAdminConfig({ ...base, DISPATCHER_TOKEN: "a", DISPATCHER_TOKEN_FILE: "/f" }),
    configError("DISPATCHER_TOKEN"),
  );
  assert.throws(() => loadAdminConfig({ ...base, DISPATCHER_TOKEN: "a b" }), configError("DISPATCHER_TOKEN"));
});

test("the callbacks user of infra/nats/nats.conf is denied exactly the subjects the timer service reserves", () => {
  const conf = readFileSync(fileURLToPath(new URL("../../infra/nats/nats.conf", import.meta.url)), "utf8");
  const block = /user:\s*callbacks\b[\s\S]*?deny:\s*\[([^\]]*)\]/.exec(conf);
  assert.ok(block, "nats.conf has a callbacks user with a publish deny list");
  const denied = [...block[1]!.matchAll(/"([^"]+)"/g)].map((m) => m[1]);
  assert.deepEqual(denied.sort(), [...RESERVED_SUBJECTS].sort());
});
