// How a stored timer row maps to the timer.v1 messages. Shared by every service that reads
// timers, so the API shows one shape whoever answers.
import { create, fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { timerName } from "./timer-id.js";
import {
  CallbackSchema,
  LatenessContractSchema,
  LatenessPolicy,
  RetryPolicySchema,
  TimerSchema,
  TimerState,
  type Callback,
  type Timer,
} from "./gen/timer/v1/timer_pb.js";

/** Stored state codes: the numbers of timer.v1.TimerState. */
export const State = {
  Scheduled: TimerState.SCHEDULED,
  Firing: TimerState.FIRING,
  Succeeded: TimerState.SUCCEEDED,
  Failed: TimerState.FAILED,
  Cancelled: TimerState.CANCELLED,
  Expired: TimerState.EXPIRED,
  Paused: TimerState.PAUSED,
} as const;

/** States a timer never leaves (retention deletes them after a while; finish_time is set). */
export const FINISHED_STATES: readonly number[] = [
  State.Succeeded,
  State.Failed,
  State.Cancelled,
  State.Expired,
];

/** Stored lateness_policy codes: the numbers of timer.v1.LatenessPolicy (0 is stored as FIRE). */
export const Lateness = {
  Fire: LatenessPolicy.FIRE,
  Skip: LatenessPolicy.SKIP,
  FireMarked: LatenessPolicy.FIRE_MARKED,
} as const;

/** A row of the timers table as pg returns it. */
export interface TimerRow {
  group_id: string;
  timer_id: string;
  shard: number;
  state: number;
  fire_at: Date;
  next_attempt_at: Date;
  attempt: number;
  callback: JsonValue;
  payload: Buffer;
  labels: Record<string, string>;
  max_attempts: number;
  initial_backoff_ms: number;
  max_backoff_ms: number;
  backoff_multiplier: number;
  create_time: Date;
  fired_time: Date | null;
  finish_time: Date | null;
  last_error: string | null;
  version: string;
  /** NULL: no lateness contract. bigint columns arrive as strings from pg. */
  max_lateness_ms: string | null;
  lateness_policy: number;
  schedule_id: string | null;
}

/** Columns selected for a TimerRow. */
export const TIMER_COLUMNS =
  "group_id, timer_id, shard, state, fire_at, next_attempt_at, attempt, callback, payload, labels, max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, create_time, fired_time, finish_time, last_error, version, max_lateness_ms, lateness_policy, schedule_id";

/** The JSON stored in timers.callback for a Callback message (proto JSON, readable in psql). */
export function callbackToJson(callback: Callback): JsonValue {
  return toJson(CallbackSchema, callback);
}

/** The Callback message stored as JSON in timers.callback. */
export function callbackFromJson(json: JsonValue): Callback {
  return fromJson(CallbackSchema, json);
}

/** The timer.v1.Timer message for a stored row. */
export function rowToTimer(row: TimerRow): Timer {
  return create(TimerSchema, {
    groupId: row.group_id,
    timerId: row.timer_id,
    fireAt: timestampFromMs(row.fire_at.getTime()),
    state: row.state as TimerState,
    attempt: row.attempt,
    shard: row.shard,
    callback: callbackFromJson(row.callback),
    payload: new Uint8Array(row.payload),
    labels: row.labels,
    createTime: timestampFromMs(row.create_time.getTime()),
    firedTime: row.fired_time ? timestampFromMs(row.fired_time.getTime()) : undefined,
    lastError: row.last_error ?? "",
    retryPolicy: create(RetryPolicySchema, {
      maxAttempts: row.max_attempts,
      initialBackoff: durationFromMs(row.initial_backoff_ms),
      maxBackoff: durationFromMs(row.max_backoff_ms),
      multiplier: row.backoff_multiplier,
    }),
    nextAttemptTime:
      row.state === State.Scheduled || row.state === State.Firing || row.state === State.Paused
        ? timestampFromMs(row.next_attempt_at.getTime())
        : undefined,
    finishTime: row.finish_time ? timestampFromMs(row.finish_time.getTime()) : undefined,
    version: BigInt(row.version),
    lateness:
      row.max_lateness_ms === null
        ? undefined
        : create(LatenessContractSchema, {
            maxLateness: durationFromMs(Number(row.max_lateness_ms)),
            policy: row.lateness_policy as LatenessPolicy,
          }),
    scheduleId: row.schedule_id ?? "",
    fireLateness: fireLatenessOf(row),
  });
}

/**
 * How late the timer's first attempt started, or (EXPIRED) how late it was when skipped; never
 * negative (a timer never fires early: a sub-millisecond difference is rounding).
 */
function fireLatenessOf(row: TimerRow): ReturnType<typeof durationFromMs> | undefined {
  const at = row.state === State.Expired ? row.finish_time : row.fired_time;
  return at ? durationFromMs(Math.max(0, at.getTime() - row.fire_at.getTime())) : undefined;
}

/** The idempotency key sent with every delivery of a timer: stable across its retries. */
export function idempotencyKey(groupId: string, timerId: string): string {
  return timerName(groupId, timerId);
}
