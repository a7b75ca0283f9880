// ForecastLoad's request checks and the layout of its answer (services/admin/src/forecast.ts):
// pure logic, so no database here; the counts themselves are tested against Postgres in
// test/integration/forecast.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { ForecastLoadRequestSchema } from "../../services/shared/src/gen/admin/v1/admin_pb.js";
import { RequestError } from "../../services/admin/src/admin-requests.js";
import { loadAdminConfig } from "../../services/admin/src/config.js";
import { forecastPlan, peakBucket, sumSeries, toSeries } from "../../services/admin/src/forecast.js";
import { perShardRows } from "../../services/admin/src/forecast-handlers.js";

const H = 3_600_000;
const plan = (init: Parameters<typeof create<typeof ForecastLoadRequestSchema>>[1]) =>
  forecastPlan(create(ForecastLoadRequestSchema, init));

test("defaults: 6 hours of minutes, 10 groups, every group", () => {
  assert.deepEqual(plan({}), {
    groupId: null,
    horizonMs: 6 * H,
    bucketMs: 60_000,
    buckets: 360,
    topGroups: 10,
  });
  assert.equal(plan({ groupId: "billing" }).groupId, "billing");
});

test("the horizon in bucket widths, rounded up, at most 10,000", () => {
  assert.equal(plan({ horizon: durationFromMs(90_000), bucket: durationFromMs(60_000) }).buckets, 2);
  assert.equal(plan({ horizon: durationFromMs(10_000_000), bucket: durationFromMs(1000) }).buckets, 10_000);
  assert.equal(plan({ horizon: durationFromMs(7 * 24 * H), bucket: durationFromMs(24 * H) }).buckets, 7);
});

test("out of range: a RequestError naming the field", () => {
  const cases: [Parameters<typeof plan>[0], RegExp][] = [
    [{ horizon: durationFromMs(59_999) }, /^horizon must be between 1m and 7d/],
    [{ horizon: durationFromMs(7 * 24 * H + 1) }, /^horizon must be between 1m and 7d/],
    [{ horizon: { seconds: 60n, nanos: 500 } }, /^horizon must be a whole number of milliseconds/],
    [{ bucket: durationFromMs(999) }, /^bucket must be between 1s and 1d/],
    [{ bucket: durationFromMs(24 * H + 1000) }, /^bucket must be between 1s and 1d/],
    [
      { horizon: durationFromMs(10_001_000), bucket: durationFromMs(1000) },
      /^bucket is too narrow.*10001 buckets/,
    ],
    [{ topGroups: 101 }, /^top_groups must be between 1 and 100/],
    [{ topGroups: -1 }, /^top_groups must be between 0 and 100/],
  ];
  for (const [req, message] of cases)
    assert.throws(
      () => plan(req),
      (e) => e instanceof RequestError && message.test(e.message),
    );
});

test("series: zeros included, most timers first, ties by key; their sum and peak", () => {
  const series = toSeries(
    [
      { key: "b", bucket: 0, due: 2 },
      { key: "a", bucket: 2, due: 2 },
      { key: "c", bucket: 1, due: 5 },
    ],
    3,
  );
  assert.deepEqual(series, [
    { key: "c", total: 5, due: [0, 5, 0] },
    { key: "a", total: 2, due: [0, 0, 2] },
    { key: "b", total: 2, due: [2, 0, 0] },
  ]);
  const sum = sumSeries(series, 3);
  assert.deepEqual(sum, [2, 5, 2]);
  assert.equal(peakBucket(sum), 1);
  assert.equal(peakBucket([3, 1, 3]), 0, "the earliest of equal peaks");
  assert.equal(peakBucket([0, 0]), 0);
});

test("the row budget is shared by the shards, at least one row each", () => {
  assert.equal(perShardRows(200_000, 1024), 195);
  assert.equal(perShardRows(1000, 4096), 1);
});

test("FORECAST_REFRESH and FORECAST_ROW_BUDGET", () => {
  const noAuth = { AUTH_DISABLED: "true" }; // services refuse to start without token configuration
  const c = loadAdminConfig(noAuth);
  assert.equal(c.forecastRefreshMs, 30_000);
  assert.equal(c.forecastRowBudget, 200_000);
  const set = loadAdminConfig({ ...noAuth, FORECAST_REFRESH: "5s", FORECAST_ROW_BUDGET: "50000" });
  assert.equal(set.forecastRefreshMs, 5000);
  assert.equal(set.forecastRowBudget, 50_000);
  assert.throws(() => loadAdminConfig({ ...noAuth, FORECAST_REFRESH: "often" }), /FORECAST_REFRESH/);
  assert.throws(() => loadAdminConfig({ ...noAuth, FORECAST_ROW_BUDGET: "10" }), /FORECAST_ROW_BUDGET/);
});
