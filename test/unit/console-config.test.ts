// The admin's console settings (services/admin/src/config.ts): defaults, and bad values refused
// at start with the variable named.
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadAdminConfig } from "../../services/admin/src/config.js";
import { ConfigError } from "../../services/shared/src/env.js";

const base = { AUTH_DISABLED: "true" };

test("the console is on by default: port 8083 on the service's host, timer service on localhost", () => {
  assert.deepEqual(loadAdminConfig(base).console, {
    port: 8083,
    host: "0.0.0.0",
    timerApiUrl: "http://127.0.0.1:50051",
    timerApiCaFile: undefined,
    jaegerUiUrl: undefined,
  });
  const set = loadAdminConfig({
    ...base,
    BIND_HOST: "127.0.0.1",
    CONSOLE_PORT: "0",
    TIMER_API_URL: "https://timer.example:50051/",
    TIMER_API_CA_FILE: "/etc/ca.pem",
    JAEGER_UI_URL: "http://localhost:16686/",
  }).console;
  assert.deepEqual(set, {
    port: 0,
    host: "127.0.0.1",
    timerApiUrl: "https://timer.example:50051",
    timerApiCaFile: "/etc/ca.pem",
    jaegerUiUrl: "http://localhost:16686",
  });
  assert.equal(loadAdminConfig({ ...base, CONSOLE_HOST: "::1" }).console?.host, "::1");
  assert.equal(loadAdminConfig({ ...base, CONSOLE_ENABLED: "false" }).console, undefined);
});

test("bad console settings are refused with the variable named", () => {
  for (const env of [
    { CONSOLE_PORT: "console" },
    { CONSOLE_PORT: "65536" },
    { TIMER_API_URL: "timer:50051" },
    { TIMER_API_URL: "grpc://timer:50051" },
    { JAEGER_UI_URL: "javascript:alert(1)" },
    { JAEGER_UI_URL: "not a url" },
    { CONSOLE_ENABLED: "maybe" },
  ]) {
    const name = Object.keys(env)[0]!;
    assert.throws(
      () => loadAdminConfig({ ...base, ...env }),
      (e: Error) => e instanceof ConfigError && e.message.includes(name),
      JSON.stringify(env),
    );
  }
});
