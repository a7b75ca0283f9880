// What one delivery attempt means for its timer: it succeeded, it is retried at a later time, or
// it failed for good. A pure function of the attempt's result, the timer's retry policy and the
// time the attempt finished, so every rule can be checked without a database or a clock.
import { backoffMs, mayRetry, type RetryPolicy } from "./backoff.js";
import type { DeliveryResult } from "./delivery.js";
import type { ClaimedTimer, Completion } from "./dispatch-store.js";

/** The decision for one attempt: the state the timer goes to, when it is tried again, and why it did not succeed. */
export interface AttemptOutcome {
  outcome: Completion["outcome"];
  /** The next attempt's due time (epoch ms) for a retry; null otherwise. */
  nextAttemptAtMs: number | null;
  /** What went wrong (last_error), null on success. */
  error: string | null;
}

/** The retry policy stored with a claimed timer. */
export function retryPolicyOf(
  row: Pick<ClaimedTimer, "max_attempts" | "initial_backoff_ms" | "max_backoff_ms" | "backoff_multiplier">,
): RetryPolicy {
  return {
    maxAttempts: row.max_attempts,
    initialBackoffMs: row.initial_backoff_ms,
    maxBackoffMs: row.max_backoff_ms,
    multiplier: row.backoff_multiplier,
  };
}

/**
 * Decides what attempt number `attempt` (1-based) comes to: success is final; a retryable failure
 * is tried again a backoff after `finishedAtMs` while the policy allows more attempts; a
 * retryable failure with the attempts used up, or a permanent one, fails the timer.
 */
export function decideOutcome(
  result: DeliveryResult,
  attempt: number,
  policy: RetryPolicy,
  finishedAtMs: number,
  random: () => number = Math.random,
): AttemptOutcome {
  if (result.ok) return { outcome: "succeeded", nextAttemptAtMs: null, error: null };
  if (result.retryable && mayRetry(policy, attempt)) {
    return {
      outcome: "retry",
      nextAttemptAtMs: finishedAtMs + backoffMs(policy, attempt, random),
      error: result.error,
    };
  }
  // Giving up on a failure that might have passed later says so: the receiver was not the only cause.
  const error = result.retryable ? `gave up after ${attempt} attempts: ${result.error}` : result.error;
  return { outcome: "failed", nextAttemptAtMs: null, error };
}
