// ForecastLoad's request checked into a plan (horizon, bucket width, groups to show) and the
// counts the store read laid out as the response's buckets and series. No I/O; a RequestError
// names the field at fault.
import type { Duration } from "@bufbuild/protobuf/wkt";
import type { ForecastLoadRequest } from "../../shared/src/gen/admin/v1/admin_pb.js";
import { durationToMs } from "../../shared/src/time.js";
import { boundedLimit, RequestError } from "./admin-requests.js";

const MINUTE_MS = 60_000;
const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;

/** The horizon when the request leaves it unset. */
export const DEFAULT_HORIZON_MS = 6 * HOUR_MS;
/** The bucket width when the request leaves it unset. */
export const DEFAULT_BUCKET_MS = MINUTE_MS;
/** Most buckets one answer holds (the proto's contract). */
export const MAX_BUCKETS = 10_000;
/** Top groups shown when the request says 0. */
export const DEFAULT_TOP_GROUPS = 10;
/** Most top groups one answer holds. */
export const MAX_TOP_GROUPS = 100;

/** The shard owner of shards whose lease nobody holds. */
export const UNOWNED = "(unowned)";

/** What one ForecastLoad reads. */
export interface ForecastPlan {
  /** Only this group's timers; null for every group. */
  groupId: string | null;
  horizonMs: number;
  bucketMs: number;
  /** Buckets of the answer: the horizon in bucket widths, rounded up. */
  buckets: number;
  topGroups: number;
}

/** A duration field in whole milliseconds within [minMs, maxMs]; `fallbackMs` when unset. */
function durationField(
  d: Duration | undefined,
  field: string,
  fallbackMs: number,
  minMs: number,
  maxMs: number,
  range: string,
): number {
  if (!d) return fallbackMs;
  const ms = durationToMs(d);
  if (!Number.isInteger(ms)) throw new RequestError(`${field} must be a whole number of milliseconds`);
  if (ms < minMs || ms > maxMs)
    throw new RequestError(`${field} must be between ${range}, got ${ms / 1000}s`);
  return ms;
}

/** The plan of a ForecastLoad request; RequestError naming the field when it is out of range. */
export function forecastPlan(req: ForecastLoadRequest): ForecastPlan {
  const horizonMs = durationField(
    req.horizon,
    "horizon",
    DEFAULT_HORIZON_MS,
    MINUTE_MS,
    7 * DAY_MS,
    "1m and 7d",
  );
  const bucketMs = durationField(req.bucket, "bucket", DEFAULT_BUCKET_MS, 1000, DAY_MS, "1s and 1d");
  const buckets = Math.ceil(horizonMs / bucketMs);
  if (buckets > MAX_BUCKETS) {
    throw new RequestError(
      `bucket is too narrow for the horizon: ${buckets} buckets, at most ${MAX_BUCKETS} (widen bucket or shorten horizon)`,
    );
  }
  if (req.topGroups < 0) {
    throw new RequestError(`top_groups must be between 0 and ${MAX_TOP_GROUPS}, got ${req.topGroups}`);
  }
  return {
    groupId: req.groupId === "" ? null : req.groupId,
    horizonMs,
    bucketMs,
    buckets,
    topGroups: boundedLimit(req.topGroups, "top_groups", DEFAULT_TOP_GROUPS, MAX_TOP_GROUPS),
  };
}

/** Timers counted in one bucket for one key (an owner or a group). */
export interface BucketCount {
  key: string;
  bucket: number;
  due: number;
}

/** One series of the answer: a key, its total and its count per bucket. */
export interface Series {
  key: string;
  total: number;
  due: number[];
}

/**
 * The per-bucket counts of each key as series, each `buckets` long (zeros included), most
 * timers first (ties by key, so the order is stable).
 */
export function toSeries(counts: readonly BucketCount[], buckets: number): Series[] {
  const byKey = new Map<string, Series>();
  for (const c of counts) {
    let s = byKey.get(c.key);
    if (!s) {
      s = { key: c.key, total: 0, due: new Array<number>(buckets).fill(0) };
      byKey.set(c.key, s);
    }
    s.due[c.bucket] = (s.due[c.bucket] ?? 0) + c.due;
    s.total += c.due;
  }
  return [...byKey.values()].sort(
    (a, b) => b.total - a.total || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0),
  );
}

/** The sum of series bucket by bucket: the mesh's (or the group's) due timers per bucket. */
export function sumSeries(series: readonly Series[], buckets: number): number[] {
  const sum = new Array<number>(buckets).fill(0);
  for (const s of series) for (const [i, n] of s.due.entries()) sum[i]! += n;
  return sum;
}

/** The bucket with the most timers due (the earliest of equals); bucket 0 when all are empty. */
export function peakBucket(due: readonly number[]): number {
  let peak = 0;
  for (const [i, n] of due.entries()) if (n > due[peak]!) peak = i;
  return peak;
}
