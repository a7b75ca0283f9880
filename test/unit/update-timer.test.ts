// UpdateTimer validation (services/timer/src/update-timer.ts): what a request changes (the
// update_mask, or the fields it sets), and that every change is checked by the create's rules,
// refusals naming the field.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, FieldMaskSchema, timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  LatenessPolicy,
  UpdateTimerRequestSchema,
  type UpdateTimerRequest,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { firingId } from "../../services/shared/src/timer-id.js";
import { loadTimerConfig } from "../../services/timer/src/config.js";
import { validateUpdate, type TimerPatch } from "../../services/timer/src/update-timer.js";
import { ValidationError } from "../../services/timer/src/validation.js";

const NOW = Date.UTC(2026, 0, 1);
const DAY_MS = 86_400_000;
const { limits } = loadTimerConfig({
  AUTH_DISABLED: "true",
  CALLBACK_ALLOWED_NETWORKS: "10.0.0.0/8",
  MAX_PAYLOAD_BYTES: "1024",
  MAX_TIMER_HORIZON: "30d",
});
const HOOK = "http://10.1.2.3:9000/hook";

type RequestInit = Exclude<MessageInitShape<typeof UpdateTimerRequestSchema>, UpdateTimerRequest>;

function request(change: RequestInit, mask?: string[]): UpdateTimerRequest {
  return create(UpdateTimerRequestSchema, {
    groupId: "billing",
    timerId: "invoice-42",
    ...(mask ? { updateMask: create(FieldMaskSchema, { paths: mask }) } : {}),
    ...change,
  });
}

function accepts(change: RequestInit, mask?: string[]): TimerPatch {
  return validateUpdate(request(change, mask), limits, NOW);
}

function refuses(change: RequestInit, field: string, mask?: string[]): void {
  assert.throws(
    () => validateUpdate(request(change, mask), limits, NOW),
    (err: unknown) => {
      assert.ok(err instanceof ValidationError, String(err));
      assert.equal(err.field, field, err.message);
      return true;
    },
  );
}

/** The fields a patch changes, by name. */
const changed = (p: TimerPatch) =>
  Object.keys(p)
    .filter((k) => !["groupId", "timerId", "expectedVersion"].includes(k))
    .sort();

test("without update_mask, exactly the fields the request sets change", () => {
  const p = accepts({ schedule: { case: "delay", value: durationFromMs(60_000) } });
  assert.deepEqual(changed(p), ["fireAtMs"]);
  assert.equal(p.fireAtMs, NOW + 60_000);
  assert.equal(p.expectedVersion, 0n);

  const all = accepts({
    expectedVersion: 4n,
    schedule: { case: "fireAt", value: timestampFromMs(NOW + DAY_MS) },
    callback: { target: { case: "http", value: { url: HOOK, headers: {} } } },
    payload: new TextEncoder().encode("new"),
    retryPolicy: { maxAttempts: 2 },
    labels: { tier: "gold" },
    lateness: { maxLateness: durationFromMs(5_000), policy: LatenessPolicy.SKIP },
  });
  assert.deepEqual(changed(all), ["callback", "fireAtMs", "labels", "lateness", "payload", "retry"]);
  assert.equal(all.expectedVersion, 4n);
  assert.equal(all.fireAtMs, NOW + DAY_MS);
  assert.equal(all.retry!.maxAttempts, 2);
  assert.equal(all.retry!.initialBackoffMs, limits.retryDefaults.initialBackoffMs, "defaults fill the rest");
  assert.deepEqual(all.lateness, { maxLatenessMs: 5_000, policy: LatenessPolicy.SKIP });
});

test("a request that changes nothing is refused, naming update_mask", () => {
  refuses({}, "update_mask");
  refuses({ expectedVersion: 3n }, "update_mask");
});

test("with update_mask, the named fields change: an empty payload or label map clears it, unset retry_policy or lateness restores the default", () => {
  const p = accepts({}, ["payload", "labels", "retry_policy", "lateness"]);
  assert.deepEqual(changed(p), ["labels", "lateness", "payload", "retry"]);
  assert.equal(p.payload!.length, 0);
  assert.deepEqual(p.labels, {});
  assert.deepEqual(p.retry, limits.retryDefaults);
  assert.deepEqual(p.lateness, { maxLatenessMs: null, policy: LatenessPolicy.FIRE });
});

test("update_mask paths may be camelCase; fire_at and delay name the one schedule", () => {
  assert.deepEqual(changed(accepts({ retryPolicy: { maxAttempts: 3 } }, ["retryPolicy"])), ["retry"]);
  const viaDelay = accepts({ schedule: { case: "fireAt", value: timestampFromMs(NOW + 5_000) } }, ["delay"]);
  assert.equal(viaDelay.fireAtMs, NOW + 5_000);
  const camel = accepts({ schedule: { case: "fireAt", value: timestampFromMs(NOW + 5_000) } }, ["fireAt"]);
  assert.equal(camel.fireAtMs, NOW + 5_000);
});

test("update_mask: an unknown path, a named schedule or callback left unset, or a set field it leaves out is refused", () => {
  refuses({}, "update_mask", ["state"]);
  refuses({}, "update_mask", ["group_id"]);
  refuses({}, "fire_at", ["fire_at"]);
  refuses({}, "callback", ["callback"]);
  refuses({ payload: new Uint8Array([1]) }, "payload", ["labels"]);
});

test("every field is checked by the create's rules, and the refusal names it", () => {
  refuses({ groupId: "" }, "group_id");
  refuses({ timerId: "" }, "timer_id");
  refuses({ timerId: "bad id" }, "timer_id");
  refuses({ expectedVersion: -1n, payload: new Uint8Array([1]) }, "expected_version");
  refuses({ schedule: { case: "fireAt", value: timestampFromMs(NOW + 31 * DAY_MS) } }, "fire_at");
  refuses({ schedule: { case: "delay", value: durationFromMs(31 * DAY_MS) } }, "delay");
  refuses({ schedule: { case: "fireAt", value: timestampFromMs(1_000) } }, "fire_at");
  refuses(
    { callback: { target: { case: "http", value: { url: "ftp://x", headers: {} } } } },
    "callback.http.url",
  );
  refuses(
    { callback: { target: { case: "http", value: { url: "http://192.168.1.1/hook", headers: {} } } } },
    "callback.http.url",
  );
  refuses({ payload: new Uint8Array(1025) }, "payload");
  refuses({ labels: { "bad key!": "x" } }, "labels");
  refuses({ retryPolicy: { maxAttempts: -1 } }, "retry_policy.max_attempts");
  refuses({ lateness: { policy: LatenessPolicy.SKIP } }, "lateness.max_lateness");
});

test("a schedule firing's id (<schedule>@<instant>) may be updated", () => {
  const timerId = firingId("daily-report", Date.UTC(2026, 2, 29, 0, 30));
  assert.equal(accepts({ timerId, payload: new Uint8Array([1]) }).timerId, timerId);
});
