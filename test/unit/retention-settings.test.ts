// The retention settings: the RETENTION_* variables of the dispatcher, and the one-shot command's
// flags, which go through the same parsing (so their defaults and bounds exist once).
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadDispatcherConfig, loadRetentionSettings } from "../../services/dispatcher/src/config.js";
import { ConfigError } from "../../services/shared/src/env.js";
import { parseOptions } from "../../scripts/ops/retention.js";

const DAY = 86_400_000;

test("retention defaults: 7 days of finished timers, 90 days of audit events, every 5 minutes, batches of 1000", () => {
  assert.deepEqual(loadRetentionSettings({}), {
    enabled: true,
    finishedTimersMs: 7 * DAY,
    auditEventsMs: 90 * DAY,
    intervalMs: 300_000,
    batchSize: 1000,
    batchPauseMs: 100,
  });
  assert.deepEqual(loadDispatcherConfig({ AUTH_DISABLED: "true" }).retention, loadRetentionSettings({}));
});

test("retention variables are read and bounded, naming the variable", () => {
  const s = loadRetentionSettings({
    RETENTION_ENABLED: "false",
    RETENTION_FINISHED_TIMERS: "30d",
    RETENTION_AUDIT_EVENTS: "365d",
    RETENTION_INTERVAL: "1m",
    RETENTION_BATCH_SIZE: "500",
    RETENTION_BATCH_PAUSE: "0",
  });
  assert.deepEqual(s, {
    enabled: false,
    finishedTimersMs: 30 * DAY,
    auditEventsMs: 365 * DAY,
    intervalMs: 60_000,
    batchSize: 500,
    batchPauseMs: 0,
  });
  for (const [name, value] of [
    ["RETENTION_FINISHED_TIMERS", "30m"],
    ["RETENTION_AUDIT_EVENTS", "forever"],
    ["RETENTION_BATCH_SIZE", "0"],
    ["RETENTION_BATCH_SIZE", "20000"],
    ["RETENTION_INTERVAL", "10ms"],
    ["RETENTION_ENABLED", "yes"],
  ] as const) {
    assert.throws(
      () => loadRetentionSettings({ [name]: value }),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.match(err.message, new RegExp(name));
        return true;
      },
    );
  }
});

test("the one-shot command's flags override the variables, and errors name the flag", () => {
  const env = { RETENTION_FINISHED_TIMERS: "14d", DATABASE_URL: "postgres://u@db:5432/timers" };
  const byEnv = parseOptions([], env);
  assert.ok(byEnv !== "help");
  assert.equal(byEnv.settings.finishedTimersMs, 14 * DAY);
  assert.equal(byEnv.settings.auditEventsMs, 90 * DAY);
  assert.equal(byEnv.dryRun, false);
  assert.equal(byEnv.databaseUrl, env.DATABASE_URL);

  const byFlags = parseOptions(
    [
      "--dry-run",
      "--finished-older-than",
      "2d",
      "--audit-older-than",
      "30d",
      "--batch-size",
      "50",
      "--pause",
      "1s",
    ],
    env,
  );
  assert.ok(byFlags !== "help");
  assert.deepEqual(
    [
      byFlags.dryRun,
      byFlags.settings.finishedTimersMs,
      byFlags.settings.auditEventsMs,
      byFlags.settings.batchSize,
    ],
    [true, 2 * DAY, 30 * DAY, 50],
  );
  assert.equal(byFlags.settings.batchPauseMs, 1000);
  assert.equal(parseOptions(["--help"], {}), "help");
  assert.throws(() => parseOptions(["--batch-size", "0"], {}), /--batch-size must be between 1 and 10000/);
  assert.throws(
    () => parseOptions(["--finished-older-than", "1m"], {}),
    /--finished-older-than must be between/,
  );
  assert.throws(() => parseOptions(["--nonsense"], {}), /Unknown option '--nonsense'/);
});
