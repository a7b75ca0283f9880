/** A retry policy as stored with the timer. */
export interface RetryPolicy {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
}

/**
 * Delay before the attempt after `attempt` (1-based) failed: initial * multiplier^(attempt-1),
 * capped at max, minus up to 20% random jitter so that timers which failed together do not
 * retry in lockstep against a receiver that is recovering.
 */
export function backoffMs(policy: RetryPolicy, attempt: number, random: () => number = Math.random): number {
  const exp = policy.initialBackoffMs * policy.multiplier ** Math.max(0, attempt - 1);
  const capped = Math.min(policy.maxBackoffMs, exp);
  return Math.max(1, Math.round(capped * (1 - 0.2 * random())));
}

/** Whether another attempt is allowed after `attempt` attempts have been made. */
export function mayRetry(policy: RetryPolicy, attempt: number): boolean {
  return attempt < policy.maxAttempts;
}
