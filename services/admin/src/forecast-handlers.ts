// ForecastLoad: the SCHEDULED timers due per bucket over a horizon, in all, by shard owner and
// for the top groups, with the backlog now and the mesh's recent firing peak to compare with.
// Read-only, so not audited. Group tokens may call it for a group of theirs (auth.ts lets them
// reach this method; the group is checked here); every group at once is for admins.
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { authorizeGroup, callerOf } from "../../shared/src/auth.js";
import { ForecastBucketSchema, ForecastSeriesSchema } from "../../shared/src/gen/admin/v1/admin_pb.js";
import { forecastPlan, peakBucket, type Series, sumSeries, toSeries } from "./forecast.js";
import { forecastCounts, overdueCount } from "./forecast-store.js";
import { type AdminDeps, type AdminHandlers, checked } from "./handler-support.js";
import type { RecentFiringPeak } from "./recent-firing-peak.js";

/** What ForecastLoad needs besides the admin's common dependencies. */
export interface ForecastDeps {
  /** FORECAST_ROW_BUDGET: index entries one forecast reads at most, over all shards. */
  rowBudget: number;
  recentPeak: RecentFiringPeak;
}

/** Index entries read per shard so that all shards together stay within the budget. */
export function perShardRows(rowBudget: number, shardCount: number): number {
  return Math.max(1, Math.floor(rowBudget / shardCount));
}

/** ForecastLoad. */
export function forecastHandlers(deps: AdminDeps, forecast: ForecastDeps): AdminHandlers<"forecastLoad"> {
  return {
    async forecastLoad(req, ctx) {
      const plan = checked(() => forecastPlan(req));
      if (plan.groupId === null) {
        const caller = callerOf(ctx);
        if (!caller.admin) {
          throw new ConnectError(
            `group_id is required: token "${caller.name}" may forecast its own groups only`,
            Code.InvalidArgument,
          );
        }
      } else {
        authorizeGroup(ctx, plan.groupId);
      }
      const [counts, overdue] = await Promise.all([
        forecastCounts(deps.pool, {
          shardCount: deps.shardCount,
          perShardRows: perShardRows(forecast.rowBudget, deps.shardCount),
          bucketMs: plan.bucketMs,
          buckets: plan.buckets,
          groupId: plan.groupId,
          topGroups: plan.topGroups,
        }),
        overdueCount(deps.pool, deps.shardCount, plan.groupId),
        forecast.recentPeak.refresh(),
      ]);
      const startMs = counts.startAt.getTime();
      const bucketStart = (i: number) => timestampFromMs(startMs + i * plan.bucketMs);
      const byOwner = toSeries(counts.byOwner, plan.buckets);
      const due = sumSeries(byOwner, plan.buckets);
      const peak = peakBucket(due);
      const series = (s: Series) =>
        create(ForecastSeriesSchema, { key: s.key, total: BigInt(s.total), due: s.due.map(BigInt) });
      return {
        startTime: timestampFromDate(counts.startAt),
        bucket: durationFromMs(plan.bucketMs),
        buckets: due.map((n, i) =>
          create(ForecastBucketSchema, { startTime: bucketStart(i), due: BigInt(n) }),
        ),
        byOwner: byOwner.map(series),
        topGroups: toSeries(counts.byGroup, plan.buckets).slice(0, plan.topGroups).map(series),
        total: BigInt(due.reduce((a, n) => a + n, 0)),
        peak: create(ForecastBucketSchema, { startTime: bucketStart(peak), due: BigInt(due[peak] ?? 0) }),
        overdue,
        maxFiredPerMinuteLastDay: BigInt(forecast.recentPeak.peak()),
        truncated: counts.completeUntil !== null,
        completeUntil: counts.completeUntil ? timestampFromDate(counts.completeUntil) : undefined,
      };
    },
  };
}
