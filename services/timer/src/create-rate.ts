// The create rate of each token (CREATE_RATE_PER_TOKEN, CREATE_BURST_PER_TOKEN): a token bucket
// per principal name, in this process. Pure: the caller passes the time. Keys are token names
// from the token configuration ("anonymous" when authentication is off), so the map stays as
// small as the token list.

/** The outcome of taking creates from a bucket. */
export type RateDecision = { allowed: true } | { allowed: false; retryAfterMs: number };

/** A token bucket per key: `burst` creates at once, refilled at `ratePerSecond`. */
export class TokenBuckets {
  private readonly buckets = new Map<string, { tokens: number; atMs: number }>();

  constructor(
    readonly ratePerSecond: number,
    readonly burst: number,
  ) {
    if (!(ratePerSecond > 0) || !(burst >= 1))
      throw new RangeError("ratePerSecond must be > 0 and burst >= 1");
  }

  /**
   * Takes `count` tokens from `key`'s bucket (all or none: a CreateTimers call takes one per
   * create), or says how long until that many are there. More than `burst` are never there.
   */
  take(key: string, nowMs: number, count = 1): RateDecision {
    const b = this.buckets.get(key);
    // A clock stepping back refills nothing (and takes nothing away).
    const elapsedMs = b ? Math.max(0, nowMs - b.atMs) : 0;
    const tokens = b ? Math.min(this.burst, b.tokens + (elapsedMs * this.ratePerSecond) / 1000) : this.burst;
    if (tokens >= count) {
      this.buckets.set(key, { tokens: tokens - count, atMs: nowMs });
      return { allowed: true };
    }
    this.buckets.set(key, { tokens, atMs: nowMs });
    return {
      allowed: false,
      retryAfterMs: Math.max(1, Math.ceil(((count - tokens) * 1000) / this.ratePerSecond)),
    };
  }
}
