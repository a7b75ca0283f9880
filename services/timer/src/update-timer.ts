// Validation of UpdateTimer requests: pure, no I/O. A request becomes a patch naming only what
// changes, checked by the same rules as a create (validation.ts), so an updated timer could
// have been created as it now is. Every rejection names the field.
import type { Callback, UpdateTimerRequest } from "../../shared/src/gen/timer/v1/timer_pb.js";
import { isValidTimerId } from "../../shared/src/timer-id.js";
import {
  checkCallback,
  checkId,
  checkLabels,
  checkLateness,
  checkSchedule,
  resolveRetry,
  ValidationError,
  type LatenessSettings,
  type Limits,
  type RetrySettings,
} from "./validation.js";

/** A validated update: the timer's key, the version it expects, and the fields that change (unset: unchanged). */
export interface TimerPatch {
  groupId: string;
  timerId: string;
  /** The version the caller read; 0 updates whatever version is stored. */
  expectedVersion: bigint;
  /** The new fire time (from fire_at, or now + delay). */
  fireAtMs?: number;
  callback?: Callback;
  payload?: Uint8Array;
  /** The retry policy with the defaults applied (an unset policy named in the mask: the defaults). */
  retry?: RetrySettings;
  /** Replaces the labels whole. */
  labels?: Record<string, string>;
  /** The lateness contract (an unset contract named in the mask: none). */
  lateness?: LatenessSettings;
}

/** What an update may change, by update_mask path (snake_case), and the camelCase spellings accepted. */
const FIELDS = ["fire_at", "delay", "callback", "payload", "retry_policy", "labels", "lateness"] as const;
type Field = (typeof FIELDS)[number];
const CAMEL: Record<string, Field> = { fireAt: "fire_at", retryPolicy: "retry_policy" };

/**
 * Checks an UpdateTimerRequest against the same limits as a create, and says what changes:
 * with an update_mask, exactly the fields it names (an empty payload or label map clears it,
 * an unset retry_policy restores the defaults, an unset lateness removes the contract); without
 * one, every field the request sets. A set field the mask leaves out is refused rather than
 * silently ignored. Throws ValidationError naming the field.
 */
export function validateUpdate(req: UpdateTimerRequest, limits: Limits, nowMs: number): TimerPatch {
  const groupId = checkId("group_id", req.groupId, true);
  if (req.timerId === "") throw new ValidationError("timer_id", "is required");
  if (!isValidTimerId(req.timerId)) {
    throw new ValidationError(
      "timer_id",
      "must be 1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit (or a schedule firing's id)",
    );
  }
  if (req.expectedVersion < 0n) throw new ValidationError("expected_version", "must not be negative");

  const named = maskFields(req);
  const scheduleField: Field | undefined =
    req.schedule.case === "fireAt" ? "fire_at" : req.schedule.case === "delay" ? "delay" : undefined;
  const isSet: Record<Field, boolean> = {
    fire_at: req.schedule.case === "fireAt",
    delay: req.schedule.case === "delay",
    callback: req.callback !== undefined,
    payload: req.payload.length > 0,
    retry_policy: req.retryPolicy !== undefined,
    labels: Object.keys(req.labels).length > 0,
    lateness: req.lateness !== undefined,
  };
  let changes: Set<Field>;
  if (named === undefined) {
    changes = new Set(FIELDS.filter((f) => isSet[f]));
    if (changes.size === 0) {
      throw new ValidationError(
        "update_mask",
        "is empty and the request sets nothing to change: set a field, or name it in update_mask",
      );
    }
  } else {
    changes = named;
    for (const f of FIELDS) {
      if (!isSet[f] || changes.has(f)) continue;
      // fire_at and delay are one choice: naming either covers the schedule set.
      if ((f === "fire_at" || f === "delay") && (changes.has("fire_at") || changes.has("delay"))) continue;
      throw new ValidationError(f, "is set but update_mask does not name it");
    }
  }

  const patch: TimerPatch = { groupId, timerId: req.timerId, expectedVersion: req.expectedVersion };
  if (changes.has("fire_at") || changes.has("delay")) {
    if (scheduleField === undefined) {
      const f = changes.has("fire_at") ? "fire_at" : "delay";
      throw new ValidationError(f, "is named in update_mask but not set: set fire_at or delay");
    }
    patch.fireAtMs = checkSchedule(req.schedule, limits.maxHorizonMs, nowMs);
  }
  if (changes.has("callback")) {
    if (!req.callback)
      throw new ValidationError("callback", "is named in update_mask but not set; a timer needs one");
    checkCallback(req.callback, groupId, limits, undefined);
    patch.callback = req.callback;
  }
  if (changes.has("payload")) {
    if (req.payload.length > limits.maxPayloadBytes) {
      throw new ValidationError(
        "payload",
        `is ${req.payload.length} bytes; the limit is ${limits.maxPayloadBytes}`,
      );
    }
    patch.payload = req.payload;
  }
  if (changes.has("retry_policy"))
    patch.retry = resolveRetry(req.retryPolicy, limits.retryDefaults, limits.retryBounds);
  if (changes.has("labels")) patch.labels = checkLabels(req.labels);
  if (changes.has("lateness")) patch.lateness = checkLateness(req.lateness, "lateness");
  return patch;
}

/** The fields update_mask names, normalized to snake_case; undefined when it names none. */
function maskFields(req: UpdateTimerRequest): Set<Field> | undefined {
  const paths = req.updateMask?.paths ?? [];
  if (paths.length === 0) return undefined;
  const out = new Set<Field>();
  for (const p of paths) {
    const f = CAMEL[p] ?? (FIELDS as readonly string[]).find((x) => x === p);
    if (f === undefined) {
      throw new ValidationError(
        "update_mask",
        `names "${p.slice(0, 64)}", which UpdateTimer does not change (it changes ${FIELDS.join(", ")})`,
      );
    }
    out.add(f as Field);
  }
  return out;
}
