// How times, durations and states read on every page: UTC, as the logs and the API spell them.
import {
  type Duration,
  durationMs as protoDurationMs,
  type Timestamp,
  timestampDate,
} from "@bufbuild/protobuf/wkt";
import { TimerState } from "../../../shared/src/gen/timer/v1/timer_pb.js";

export function dateOf(t: Timestamp | undefined): Date | undefined {
  return t ? timestampDate(t) : undefined;
}

/** "2026-12-02 15:04:05Z" (milliseconds when they are not zero), "–" when unset. */
export function utc(t: Timestamp | Date | undefined): string {
  const d = t instanceof Date ? t : dateOf(t);
  if (!d) return "–";
  return d
    .toISOString()
    .replace("T", " ")
    .replace(/\.000Z$/, "Z");
}

/** "140 ms", "3.2 s", "4 min 10 s", "2 h 5 min", "3 d 4 h" */
export function span(ms: number): string {
  if (Math.abs(ms) < 1000) return `${Math.round(Math.abs(ms))} ms`;
  const s = Math.abs(ms) / 1000;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

/** "12 s ago" or "in 5 min 0 s", relative to now. */
export function relative(t: Timestamp | Date | undefined, now = Date.now()): string {
  const d = t instanceof Date ? t : dateOf(t);
  if (!d) return "";
  const ms = d.getTime() - now;
  return ms > 0 ? `in ${span(ms)}` : `${span(ms)} ago`;
}

export function durationMs(d: Duration | undefined): number | undefined {
  return d ? protoDurationMs(d) : undefined;
}

/** "FAILED", as TimerState names it without its prefix. */
export function stateName(s: TimerState): string {
  return TimerState[s] ?? String(s);
}

/** 12345 -> "12,345" (bigint counts from the API, too). */
export function count(n: number | bigint): string {
  return n.toLocaleString("en-US");
}
