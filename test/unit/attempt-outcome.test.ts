import assert from "node:assert/strict";
import { test } from "node:test";
import { decideOutcome, retryPolicyOf } from "../../services/dispatcher/src/attempt-outcome.js";
import type { RetryPolicy } from "../../services/dispatcher/src/backoff.js";
import type { DeliveryResult } from "../../services/dispatcher/src/delivery.js";

const policy = { maxAttempts: 3, initialBackoffMs: 1000, maxBackoffMs: 10_000, multiplier: 2 };
const FINISHED = 1_000_000;
/** No jitter: the backoff is exactly initial * multiplier^(attempt-1), capped. */
const noJitter = () => 0;
const retryable = { ok: false, retryable: true, error: "HTTP 503" } as const;

/** The decision for `attempt` finished at FINISHED, without jitter. */
function decide(result: DeliveryResult, attempt: number, p: RetryPolicy = policy) {
  return decideOutcome(result, attempt, p, FINISHED, noJitter);
}

test("a delivered attempt succeeds, whatever attempt it was", () => {
  for (const attempt of [1, 3, 7]) {
    assert.deepEqual(decide({ ok: true }, attempt), {
      outcome: "succeeded",
      nextAttemptAtMs: null,
      error: null,
    });
  }
});

test("a retryable failure with attempts left is retried a backoff after it finished, with its error", () => {
  assert.deepEqual(decide(retryable, 1), {
    outcome: "retry",
    nextAttemptAtMs: FINISHED + 1000,
    error: "HTTP 503",
  });
  // The second attempt's backoff is twice the first's.
  assert.equal(decide(retryable, 2).nextAttemptAtMs, FINISHED + 2000);
  // Jitter only shortens the wait (at most 20%).
  assert.equal(decideOutcome(retryable, 1, policy, FINISHED, () => 1).nextAttemptAtMs, FINISHED + 800);
});

test("the backoff is capped by the policy's maximum", () => {
  const many = { ...policy, maxAttempts: 20 };
  assert.equal(decide(retryable, 10, many).nextAttemptAtMs, FINISHED + 10_000);
});

test("a retryable failure of the last allowed attempt fails the timer, saying it gave up", () => {
  const gaveUp = { outcome: "failed", nextAttemptAtMs: null, error: "gave up after 3 attempts: HTTP 503" };
  assert.deepEqual(decide(retryable, 3), gaveUp);
  // A policy of one attempt never retries.
  assert.equal(decide(retryable, 1, { ...policy, maxAttempts: 1 }).outcome, "failed");
});

test("a permanent failure fails the timer at once, with the receiver's error as it is", () => {
  const notFound = { ok: false, retryable: false, error: "HTTP 404" } as const;
  assert.deepEqual(decide(notFound, 1), { outcome: "failed", nextAttemptAtMs: null, error: "HTTP 404" });
});

test("the retry policy is read from the claimed row's columns", () => {
  const row = { max_attempts: 4, initial_backoff_ms: 250, max_backoff_ms: 9000, backoff_multiplier: 3 };
  assert.deepEqual(retryPolicyOf(row), {
    maxAttempts: 4,
    initialBackoffMs: 250,
    maxBackoffMs: 9000,
    multiplier: 3,
  });
});
