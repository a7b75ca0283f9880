// protobuf-es has timestampFromMs/durationFromMs; these round UP instead of truncating, because
// a fire time moved earlier by a sub-millisecond fraction would fire early.
import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";

/** Epoch milliseconds of a Timestamp, rounded up. */
export function timestampToMsCeil(ts: Timestamp): number {
  return Number(ts.seconds) * 1000 + Math.ceil(ts.nanos / 1_000_000);
}

/** Milliseconds of a Duration, rounded up (for non-negative durations). */
export function durationToMsCeil(d: Duration): number {
  return Number(d.seconds) * 1000 + Math.ceil(d.nanos / 1_000_000);
}
