import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError } from "../../services/shared/src/env.js";
import { loadDispatcherConfig } from "../../services/dispatcher/src/config.js";

const base = { AUTH_DISABLED: "true" };

test("the schedule advancer's settings default to a 60 s lead, polled every second", () => {
  assert.deepEqual(loadDispatcherConfig(base).schedules, {
    leadMs: 60_000,
    pollIntervalMs: 1_000,
    batch: 100,
  });
});

test("SCHEDULE_LEAD must outrun the firing window, since the advancer does not announce", () => {
  // Unset, it grows with LOOKAHEAD.
  assert.equal(loadDispatcherConfig({ ...base, LOOKAHEAD: "2m" }).schedules.leadMs, 122_000);
  assert.throws(
    () => loadDispatcherConfig({ ...base, SCHEDULE_LEAD: "20s" }),
    (err: unknown) => err instanceof ConfigError && /SCHEDULE_LEAD/.test(err.message),
  );
  assert.equal(loadDispatcherConfig({ ...base, SCHEDULE_LEAD: "5m" }).schedules.leadMs, 300_000);
});
