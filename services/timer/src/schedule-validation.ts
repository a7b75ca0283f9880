// Validation of ScheduleService requests: pure, no I/O. The spec by the shared rules
// (schedule-spec.ts); the template by the very checks a CreateTimer gets (validation.ts), since
// every firing is a timer; every rejection names the field ("spec.time_zone",
// "template.callback.http.url").

import { createHash } from "node:crypto";
import { clone, toJson, type JsonValue } from "@bufbuild/protobuf";
import {
  CreateScheduleRequestSchema,
  type CreateScheduleRequest,
  type FiringTemplate,
  FiringTemplateSchema,
  type ScheduleSpec,
  ScheduleSpecSchema,
} from "../../shared/src/gen/timer/v1/schedule_pb.js";
import type { FiringSettings } from "../../shared/src/schedule-rows.js";
import type { ScheduleRules } from "../../shared/src/schedule-instants.js";
import { SpecError, checkScheduleSpec } from "../../shared/src/schedule-spec.js";
import { SCHEDULE_ID_PATTERN } from "../../shared/src/timer-id.js";
import { callbackToJson } from "../../shared/src/timer-model.js";
import {
  type Limits,
  ValidationError,
  checkCallback,
  checkId,
  checkLabels,
  checkLateness,
  resolveRetry,
} from "./validation.js";

/** A validated schedule, ready to store. */
export interface NewSchedule {
  groupId: string;
  scheduleId: string;
  rules: ScheduleRules;
  /** The spec to store: as sent, with start_time filled in when it was unset. */
  specJson: JsonValue;
  templateJson: JsonValue;
  firing: FiringSettings;
  requestHash: Buffer;
}

/** Checks a schedule id: the timer id rule, at most 100 characters so firing ids fit. */
export function checkScheduleId(value: string): string {
  if (value === "") throw new ValidationError("schedule_id", "is required");
  if (!SCHEDULE_ID_PATTERN.test(value)) {
    throw new ValidationError(
      "schedule_id",
      "must be 1-100 characters of [A-Za-z0-9._:-], starting with a letter or digit",
    );
  }
  return value;
}

/** Checks a spec; SpecError becomes the timer service's ValidationError. */
export function checkSpec(spec: ScheduleSpec | undefined, field: string, nowMs: number): ScheduleRules {
  try {
    return checkScheduleSpec(spec, field, nowMs);
  } catch (err) {
    if (err instanceof SpecError) throw new ValidationError(err.field, err.reason, { cause: err });
    throw err;
  }
}

/** Runs a timer check with its field names put under "template.". */
function underTemplate<T>(check: () => T): T {
  try {
    return check();
  } catch (err) {
    if (err instanceof ValidationError && !err.field.startsWith("template.")) {
      throw new ValidationError(`template.${err.field}`, err.reason, { cause: err });
    }
    throw err;
  }
}

/** Checks a firing template and resolves what each firing's timer row gets. */
export function checkTemplate(
  template: FiringTemplate | undefined,
  groupId: string,
  scheduleId: string,
  limits: Limits,
): FiringSettings {
  if (template === undefined) throw new ValidationError("template", "is required");
  const callback = template.callback;
  if (callback === undefined) throw new ValidationError("template.callback", "is required");
  underTemplate(() => checkCallback(callback, groupId, limits, undefined));
  if (template.payload.length > limits.maxPayloadBytes) {
    throw new ValidationError(
      "template.payload",
      `is ${template.payload.length} bytes; the limit is ${limits.maxPayloadBytes}`,
    );
  }
  if ("schedule" in template.labels && template.labels.schedule !== scheduleId) {
    throw new ValidationError("template.labels", `"schedule" is set to the schedule's id by the service`);
  }
  const labels = underTemplate(() => checkLabels({ ...template.labels, schedule: scheduleId }));
  const retry = underTemplate(() =>
    resolveRetry(template.retryPolicy, limits.retryDefaults, limits.retryBounds),
  );
  const lateness = checkLateness(template.lateness, "template.lateness");
  return {
    callback: callbackToJson(callback),
    payloadBase64: Buffer.from(template.payload).toString("base64"),
    labels,
    maxAttempts: retry.maxAttempts,
    initialBackoffMs: retry.initialBackoffMs,
    maxBackoffMs: retry.maxBackoffMs,
    multiplier: retry.multiplier,
    maxLatenessMs: lateness.maxLatenessMs,
    latenessPolicy: lateness.policy,
  };
}

/** The spec as stored: start_time is the creation (or update) time when the caller left it unset. */
export function specToStore(spec: ScheduleSpec, nowMs: number): JsonValue {
  // A copy: the request itself stays as sent (its hash answers replays).
  const stored = clone(ScheduleSpecSchema, spec);
  stored.startTime ??= {
    $typeName: "google.protobuf.Timestamp",
    seconds: BigInt(Math.ceil(nowMs / 1000)),
    nanos: 0,
  };
  return toJson(ScheduleSpecSchema, stored);
}

/** Checks a CreateScheduleRequest; throws ValidationError naming the field. */
export function validateCreateSchedule(
  req: CreateScheduleRequest,
  limits: Limits,
  nowMs: number,
): NewSchedule {
  const groupId = checkId("group_id", req.groupId, true);
  const scheduleId = checkScheduleId(req.scheduleId);
  const rules = checkSpec(req.spec, "spec", nowMs);
  const firing = checkTemplate(req.template, groupId, scheduleId, limits);
  const spec = req.spec as ScheduleSpec;
  const template = req.template as FiringTemplate;
  return {
    groupId,
    scheduleId,
    rules: { ...rules, startMs: rules.startMs ?? Math.ceil(nowMs / 1000) * 1000 },
    specJson: specToStore(spec, nowMs),
    templateJson: toJson(FiringTemplateSchema, template),
    firing,
    requestHash: createHash("sha256")
      .update(stableStringify(toJson(CreateScheduleRequestSchema, req)))
      .digest(),
  };
}

function stableStringify(v: JsonValue): string {
  if (Array.isArray(v)) return `[${v.map(stableStringify).join(",")}]`;
  if (v !== null && typeof v === "object") {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${stableStringify(v[k] ?? null)}`)
      .join(",")}}`;
  }
  return JSON.stringify(v);
}
