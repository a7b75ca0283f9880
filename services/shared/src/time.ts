// Time conversions between epoch or elapsed milliseconds, protobuf Timestamps and Durations, and
// the seconds metrics are measured in. protobuf-es's own timestampFromMs, durationFromMs,
// timestampMs and durationMs round to the nearest millisecond and are used directly where that
// fits; the conversions here are the ones that must round otherwise.
import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";

/** Epoch milliseconds of a Timestamp, rounded up: a fire time moved earlier by a fraction would fire early. */
export function timestampToMsCeil(ts: Timestamp): number {
  return Number(ts.seconds) * 1000 + Math.ceil(ts.nanos / 1_000_000);
}

/** Epoch milliseconds of a Timestamp, rounded down: for bounds of a range of fire times. */
export function timestampToMsFloor(ts: Timestamp): number {
  return Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1_000_000);
}

/** Milliseconds of a Duration, rounded up (for non-negative durations): a delay never shortened. */
export function durationToMsCeil(d: Duration): number {
  return Number(d.seconds) * 1000 + Math.ceil(d.nanos / 1_000_000);
}

/** Milliseconds of a Duration, with its fraction of a millisecond. */
export function durationToMs(d: Duration): number {
  return Number(d.seconds) * 1000 + d.nanos / 1_000_000;
}

/** Seconds of a Duration, with its fraction of a second. */
export function durationToSeconds(d: Duration): number {
  return Number(d.seconds) + d.nanos / 1_000_000_000;
}

/** Seconds of a number of milliseconds: metrics are in seconds, the code counts in milliseconds. */
export function msToSeconds(ms: number): number {
  return ms / 1000;
}

/** Seconds elapsed since `startMs`, a reading of performance.now(). */
export function secondsSince(startMs: number): number {
  return msToSeconds(performance.now() - startMs);
}

/** SQL for the interval of `msParam` milliseconds (a query parameter such as "$2"), to add to now(). */
export function intervalOfMsSql(msParam: string): string {
  return `make_interval(secs => ${msParam}::float8 / 1000)`;
}
