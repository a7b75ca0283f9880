// Validation of CreateTimer requests: pure, no I/O. Every rejection names the field, and
// nothing is stored unless the whole request passes.
import { randomUUID, createHash, hash } from "node:crypto";
import { isIP } from "node:net";
import { create, toJson } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { durationToMsCeil, timestampToMsCeil } from "../../shared/src/time.js";
import {
  EgressRefused,
  parseCallbackHost,
  parseGrpcTarget,
  type EgressPolicy,
} from "../../shared/src/egress.js";
import type { TenantSubjects } from "../../shared/src/tenant-subjects.js";
import { ID_PATTERN } from "../../shared/src/timer-id.js";
import {
  CreateTimerRequestSchema,
  LatenessPolicy,
  type Callback,
  type CreateTimerRequest,
  type LatenessContract,
  type RetryPolicy,
} from "../../shared/src/gen/timer/v1/timer_pb.js";
import { Lateness } from "../../shared/src/timer-model.js";

/** A request field that failed validation, and why. */
export class ValidationError extends Error {
  override name = "ValidationError";
  constructor(
    readonly field: string,
    /** What is wrong with the field, without its name ("is required"). */
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(`${field} ${reason}`, options);
  }
}

/** Limits the timer service enforces; from its configuration. */
export interface Limits {
  maxHorizonMs: number;
  maxPayloadBytes: number;
  retryDefaults: RetrySettings;
  /** What a request's retry policy may ask for (RETRY_MAX_ATTEMPTS_LIMIT, RETRY_MIN_BACKOFF). */
  retryBounds: RetryBounds;
  /** Where HTTP and gRPC callbacks may point (CALLBACK_ALLOWED_NETWORKS, CALLBACK_ALLOWED_HOSTS). */
  egress: EgressPolicy;
  /** Which NATS subjects a tenant's callback may publish on (reserved ones, CALLBACK_NATS_SUBJECT_PREFIX). */
  tenantSubjects: TenantSubjects;
}

/**
 * Bounds of a retry policy, so one timer cannot keep a dispatcher busy with a receiver that
 * never answers: at most maxAttempts deliveries, at least minBackoffMs between the first two.
 */
export interface RetryBounds {
  maxAttempts: number;
  minBackoffMs: number;
}

/** A retry policy with the defaults applied. */
export interface RetrySettings {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
}

/** A validated timer, ready to store. */
export interface NewTimer {
  groupId: string;
  timerId: string;
  fireAtMs: number;
  callback: Callback;
  payload: Uint8Array;
  labels: Record<string, string>;
  retry: RetrySettings;
  lateness: LatenessSettings;
  requestHash: Buffer;
}

/** A timer's lateness contract as stored: maxLatenessMs null means none (always fire). */
export interface LatenessSettings {
  maxLatenessMs: number | null;
  /** timer.v1.LatenessPolicy, FIRE for UNSPECIFIED. */
  policy: number;
}

/** No lateness contract: fire however late. */
export const NO_LATENESS_CONTRACT: LatenessSettings = Object.freeze({
  maxLatenessMs: null,
  policy: Lateness.Fire,
});

const MAX_LATENESS_MS = 30 * 86_400_000;

/**
 * Checks a LatenessContract (`field` names it in errors, e.g. "lateness" or
 * "template.lateness"): max_lateness 1 ms to 30 days; a policy without max_lateness is refused,
 * since it could never apply.
 */
export function checkLateness(contract: LatenessContract | undefined, field: string): LatenessSettings {
  if (!contract) return NO_LATENESS_CONTRACT;
  const policy = contract.policy === LatenessPolicy.UNSPECIFIED ? Lateness.Fire : contract.policy;
  if (!Object.values(Lateness).includes(policy as (typeof Lateness)[keyof typeof Lateness]))
    throw new ValidationError(`${field}.policy`, `is not a LatenessPolicy (${contract.policy})`);
  const d = contract.maxLateness;
  if (!d) {
    if (policy !== Lateness.Fire)
      throw new ValidationError(`${field}.max_lateness`, "is required with a SKIP or FIRE_MARKED policy");
    return NO_LATENESS_CONTRACT;
  }
  if (d.seconds < 0n || d.nanos < 0 || d.nanos > 999_999_999)
    throw new ValidationError(`${field}.max_lateness`, "must be a positive duration");
  const ms = durationToMsCeil(d);
  if (ms < 1 || ms > MAX_LATENESS_MS)
    throw new ValidationError(`${field}.max_lateness`, `must be 1ms to ${formatMs(MAX_LATENESS_MS)}`);
  return { maxLatenessMs: ms, policy };
}

const ID_RE = ID_PATTERN; // shared with the mesh messages' checks (timer-id.ts)
const LABEL_KEY_RE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;
const HEADER_NAME_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$/;
const RESERVED_HEADERS = new Set([
  "x-timer-group",
  "x-timer-id",
  "x-timer-attempt",
  "x-timer-fire-at",
  "x-timer-late-ms",
  "idempotency-key",
  "traceparent",
  "tracestate",
  "content-length",
  "content-type",
  "host",
  "connection",
  "transfer-encoding",
]);
const MAX_LABELS = 64;
const MAX_BACKOFF_MS = 24 * 3_600_000;

/**
 * What the callback URLs checked within one call came to, by URL: a CreateTimers call of 1,000
 * creates usually names one URL 1,000 times, and parsing it and checking its host against the
 * egress policy is a good part of validating a create. Use one per call only (the policy may change).
 */
export type UrlVerdicts = Map<string, ValidationError | null>;

/**
 * Checks a CreateTimerRequest and resolves its defaults; throws ValidationError naming the field.
 * `urls` (a CreateTimers call's) remembers URL checks across the call's creates.
 */
export function validateCreate(
  req: CreateTimerRequest,
  limits: Limits,
  nowMs: number,
  urls?: UrlVerdicts,
): NewTimer {
  const groupId = checkId("group_id", req.groupId, true);
  const timerId = req.timerId === "" ? randomUUID() : checkId("timer_id", req.timerId, false);

  const fireAtMs = checkSchedule(req.schedule, limits.maxHorizonMs, nowMs);

  if (!req.callback) throw new ValidationError("callback", "is required");
  checkCallback(req.callback, groupId, limits, urls);

  if (req.payload.length > limits.maxPayloadBytes) {
    throw new ValidationError(
      "payload",
      `is ${req.payload.length} bytes; the limit is ${limits.maxPayloadBytes}`,
    );
  }

  const labels = checkLabels(req.labels);
  const retry = resolveRetry(req.retryPolicy, limits.retryDefaults, limits.retryBounds);
  const lateness = checkLateness(req.lateness, "lateness");

  return {
    groupId,
    timerId,
    fireAtMs,
    callback: req.callback,
    payload: req.payload,
    labels,
    retry,
    lateness,
    requestHash: requestHash(req, timerId),
  };
}

/** A request's `schedule` oneof (CreateTimerRequest's and UpdateTimerRequest's). */
export type ScheduleChoice = CreateTimerRequest["schedule"];

/**
 * The fire time (epoch ms) a fire_at or delay asks for, checked against the horizon; throws
 * ValidationError naming the field ("schedule" when neither is set).
 */
export function checkSchedule(schedule: ScheduleChoice, maxHorizonMs: number, nowMs: number): number {
  switch (schedule.case) {
    case "fireAt": {
      const ts = schedule.value;
      if (ts.nanos < 0 || ts.nanos > 999_999_999)
        throw new ValidationError("fire_at", "nanos must be in [0, 999999999]");
      const fireAtMs = timestampToMsCeil(ts);
      if (fireAtMs - nowMs > maxHorizonMs) {
        throw new ValidationError(
          "fire_at",
          `is beyond the maximum horizon of ${formatMs(maxHorizonMs)} from now`,
        );
      }
      if (fireAtMs < Date.UTC(2000, 0, 1))
        throw new ValidationError(
          "fire_at",
          "is before 2000-01-01; is it in seconds rather than a Timestamp?",
        );
      return fireAtMs;
    }
    case "delay": {
      const d = schedule.value;
      if (d.seconds < 0n || d.nanos < 0) throw new ValidationError("delay", "must not be negative");
      if (d.nanos > 999_999_999) throw new ValidationError("delay", "nanos must be in [0, 999999999]");
      const ms = durationToMsCeil(d);
      if (ms > maxHorizonMs) {
        throw new ValidationError("delay", `is beyond the maximum horizon of ${formatMs(maxHorizonMs)}`);
      }
      return nowMs + ms;
    }
    default:
      throw new ValidationError("schedule", "is required: set fire_at or delay");
  }
}

/** Checks a group or timer id by the API's rule; an empty one is refused only when `required`. */
export function checkId(field: string, value: string, required: boolean): string {
  if (value === "") {
    if (required) throw new ValidationError(field, "is required");
    return value;
  }
  if (!ID_RE.test(value)) {
    throw new ValidationError(
      field,
      "must be 1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit",
    );
  }
  return value;
}

/**
 * Checks a callback of a timer of `groupId` (its URL or target against the egress policy, its
 * NATS subject against the tenant's subjects); `urls` remembers URL verdicts within one call.
 */
export function checkCallback(
  cb: Callback,
  groupId: string,
  rules: Pick<Limits, "egress" | "tenantSubjects">,
  urls: UrlVerdicts | undefined,
): void {
  switch (cb.target.case) {
    case "http": {
      const { url, headers } = cb.target.value;
      let verdict = urls?.get(url);
      if (verdict === undefined) {
        verdict = null;
        try {
          checkHttpUrl(url, rules.egress);
        } catch (err) {
          if (!(err instanceof ValidationError)) throw err;
          verdict = err;
        }
        urls?.set(url, verdict);
      }
      if (verdict) throw new ValidationError(verdict.field, verdict.reason);
      const names = Object.keys(headers);
      if (names.length > 32) throw new ValidationError("callback.http.headers", "has more than 32 entries");
      for (const name of names) {
        if (!HEADER_NAME_RE.test(name))
          throw new ValidationError("callback.http.headers", `"${name}" is not a valid header name`);
        if (RESERVED_HEADERS.has(name.toLowerCase())) {
          throw new ValidationError(
            "callback.http.headers",
            `"${name}" is set by the dispatcher and cannot be overridden`,
          );
        }
        const value = headers[name]!;
        if (/[\r\n\0]/.test(value) || value.length > 4096) {
          throw new ValidationError(
            "callback.http.headers",
            `value of "${name}" has a line break or is over 4096 characters`,
          );
        }
      }
      return;
    }
    case "nats": {
      const { subject } = cb.target.value;
      if (subject === "") throw new ValidationError("callback.nats.subject", "is required");
      if (subject.length > 255 || !/^[^\s.*>]+(\.[^\s.*>]+)*$/.test(subject)) {
        throw new ValidationError(
          "callback.nats.subject",
          "must be dot-separated non-empty tokens with no spaces or wildcards (* >), at most 255 characters",
        );
      }
      const refused = rules.tenantSubjects.refusalOf(subject, groupId);
      if (refused) throw new ValidationError("callback.nats.subject", refused);
      return;
    }
    case "grpc": {
      const { target } = cb.target.value;
      if (target === "") throw new ValidationError("callback.grpc.target", "is required");
      const parsed = parseGrpcTarget(target);
      if (!parsed || (parsed.host.startsWith("[") && isIP(parsed.host.slice(1, -1)) !== 6)) {
        throw new ValidationError(
          "callback.grpc.target",
          "must be host:port (for example receiver.example.com:9090 or [2606:2800::1]:9090)",
        );
      }
      checkEgress("callback.grpc.target", parsed.host, rules.egress);
      return;
    }
    default:
      throw new ValidationError("callback", "needs a target: set http, nats or grpc");
  }
}

/** The checks of an HTTP callback's URL: a function of the URL and the egress policy alone. */
function checkHttpUrl(url: string, egress: EgressPolicy): void {
  if (url === "") throw new ValidationError("callback.http.url", "is required");
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (err) {
    throw new ValidationError("callback.http.url", "is not a valid absolute URL", { cause: err });
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new ValidationError("callback.http.url", "must use http or https");
  }
  if (parsed.hostname === "") throw new ValidationError("callback.http.url", "must name a host");
  if (parsed.username || parsed.password) {
    throw new ValidationError("callback.http.url", "must not carry credentials; use callback.http.headers");
  }
  if (url.length > 2048) throw new ValidationError("callback.http.url", "is longer than 2048 characters");
  checkEgress("callback.http.url", parsed.hostname, egress);
}

/**
 * Refuses a callback host the egress policy refuses without DNS (a literal address, in any
 * spelling, or an always-loopback name). Other names are checked at delivery, on what they resolve to.
 */
function checkEgress(field: string, host: string, egress: EgressPolicy): void {
  try {
    egress.checkStatic(parseCallbackHost(host));
  } catch (err) {
    if (err instanceof EgressRefused) throw new ValidationError(field, err.message, { cause: err });
    throw err;
  }
}

/** Checks a label map (at most 64, Kubernetes-like keys, values up to 256 characters); returns it with sorted keys. */
export function checkLabels(labels: Record<string, string>): Record<string, string> {
  const keys = Object.keys(labels);
  if (keys.length > MAX_LABELS) throw new ValidationError("labels", `has more than ${MAX_LABELS} entries`);
  const out: Record<string, string> = {};
  for (const key of keys.sort()) {
    if (!LABEL_KEY_RE.test(key))
      throw new ValidationError("labels", `key "${key}" must be 1-63 characters of [A-Za-z0-9._/-]`);
    const value = labels[key]!;
    if (value.length > 256) throw new ValidationError("labels", `value of "${key}" is over 256 characters`);
    out[key] = value;
  }
  return out;
}

/** A request's retry policy checked against `bounds`, with `defaults` for what it leaves unset. */
export function resolveRetry(
  p: RetryPolicy | undefined,
  defaults: RetrySettings,
  bounds: RetryBounds,
): RetrySettings {
  if (!p) return defaults;
  if (p.maxAttempts < 0 || p.maxAttempts > bounds.maxAttempts) {
    throw new ValidationError(
      "retry_policy.max_attempts",
      `must be between 1 and ${bounds.maxAttempts} (0 for the default); the limit is RETRY_MAX_ATTEMPTS_LIMIT`,
    );
  }
  for (const [field, d] of [
    ["retry_policy.initial_backoff", p.initialBackoff],
    ["retry_policy.max_backoff", p.maxBackoff],
  ] as const) {
    if (d && (d.seconds < 0n || d.nanos < 0 || durationMs(d) > MAX_BACKOFF_MS)) {
      throw new ValidationError(field, "must be between 0 and 24h (0 for the default)");
    }
  }
  if (
    !Number.isFinite(p.multiplier) ||
    p.multiplier < 0 ||
    (p.multiplier !== 0 && p.multiplier < 1) ||
    p.multiplier > 10
  ) {
    throw new ValidationError("retry_policy.multiplier", "must be between 1 and 10 (0 for the default)");
  }
  const initialBackoffMs = p.initialBackoff
    ? durationToMsCeil(p.initialBackoff) || defaults.initialBackoffMs
    : defaults.initialBackoffMs;
  if (initialBackoffMs < bounds.minBackoffMs) {
    throw new ValidationError(
      "retry_policy.initial_backoff",
      `must be at least ${formatMs(bounds.minBackoffMs)} (0 for the default); the limit is RETRY_MIN_BACKOFF`,
    );
  }
  const maxBackoffMs = p.maxBackoff
    ? durationToMsCeil(p.maxBackoff) || defaults.maxBackoffMs
    : defaults.maxBackoffMs;
  if (maxBackoffMs < initialBackoffMs) {
    throw new ValidationError(
      "retry_policy.max_backoff",
      `must not be less than initial_backoff (${initialBackoffMs}ms)`,
    );
  }
  return {
    maxAttempts: p.maxAttempts || defaults.maxAttempts,
    initialBackoffMs,
    maxBackoffMs,
    multiplier: p.multiplier || defaults.multiplier,
  };
}

/**
 * SHA-256 of the request as sent (schedule as given, so a replayed `delay` matches), over a
 * canonical JSON form with sorted keys, so map order on the wire does not matter.
 */
function requestHash(req: CreateTimerRequest, timerId: string): Buffer {
  const canonical = create(CreateTimerRequestSchema, { ...req, timerId });
  return sha256(stableStringify(toJson(CreateTimerRequestSchema, canonical)));
}

// crypto.hash (Node 20.12+) is the one-shot form: a third of createHash's cost per create.
const sha256: (s: string) => Buffer =
  typeof hash === "function"
    ? (s) => hash("sha256", s, "buffer")
    : (s) => createHash("sha256").update(s).digest();

function stableStringify(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableStringify).join(",")}]`;
  if (v !== null && typeof v === "object") {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${stableStringify(o[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(v);
}

function formatMs(ms: number): string {
  if (ms % 86_400_000 === 0) return `${ms / 86_400_000}d`;
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
