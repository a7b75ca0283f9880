import {
  ConfigError,
  envDurationMs,
  envInt,
  envNumber,
  loadCommonConfig,
  type CommonConfig,
} from "../../shared/src/env.js";
import { loadListPageMaxBytes } from "../../shared/src/page-bytes.js";
import type { Limits, RetryBounds, RetrySettings } from "./validation.js";
import { loadEgressPolicy } from "../../shared/src/egress.js";
import { loadTenantSubjects } from "../../shared/src/tenant-subjects.js";

/** The timer service's settings, from the environment. */
export interface TimerConfig extends CommonConfig {
  limits: Limits;
  /** Timers due within this window are announced to their shard's owner over NATS. */
  announceWindowMs: number;
  /**
   * ACTIVE_TIMERS_REFRESH (default 30s, 500ms to 1h): how often active timers are recounted per
   * group from Postgres (active_timers_total, and the group quota) and group quota overrides are
   * read again. Each recount scans the timers table: shorter means a fresher quota at more load.
   */
  activeTimersRefreshMs: number;
  /**
   * CREATE_QUEUE_MAX: creates that may wait for a database batch (2 statements are in
   * flight at once); beyond it a create is refused with RESOURCE_EXHAUSTED instead of piling up
   * in memory while Postgres is slow or down.
   */
  createQueueMax: number;
  quotas: Quotas;
}

/** Limits on what one group or one token may use; see the README's Security section. */
export interface Quotas {
  /** LIST_PAGE_MAX_BYTES: a ListTimers page stops before this many bytes of timers (at least one timer). */
  listPageMaxBytes: number;
  /** GROUP_MAX_ACTIVE_TIMERS: SCHEDULED + FIRING + PAUSED timers a group may hold unless an admin set its own limit. */
  groupMaxActiveTimers: number;
  /** CREATE_RATE_PER_TOKEN: creates per second a token's bucket refills with. */
  createRatePerToken: number;
  /** CREATE_BURST_PER_TOKEN: creates a token may make at once (its bucket's size). */
  createBurstPerToken: number;
}

/** Reads and validates the timer service's environment. */
export function loadTimerConfig(env: Record<string, string | undefined>): TimerConfig {
  const retryBounds: RetryBounds = {
    maxAttempts: envInt(env, "RETRY_MAX_ATTEMPTS_LIMIT", 50, 1, 1000),
    minBackoffMs: envDurationMs(env, "RETRY_MIN_BACKOFF", 100, 1, 3_600_000),
  };
  const retryDefaults: RetrySettings = {
    maxAttempts: envInt(env, "RETRY_MAX_ATTEMPTS", 5, 1, 1000),
    initialBackoffMs: envDurationMs(env, "RETRY_INITIAL_BACKOFF", 1000, 1, 86_400_000),
    maxBackoffMs: envDurationMs(env, "RETRY_MAX_BACKOFF", 300_000, 1, 86_400_000),
    multiplier: 2,
  };
  checkRetryDefaults(retryDefaults, retryBounds);
  return {
    ...loadCommonConfig(env, { grpc: 50051, http: 8080 }),
    limits: {
      maxHorizonMs: envDurationMs(env, "MAX_TIMER_HORIZON", 365 * 86_400_000, 1000, 10 * 365 * 86_400_000),
      maxPayloadBytes: envInt(env, "MAX_PAYLOAD_BYTES", 64 * 1024, 0, 4 * 1024 * 1024),
      retryDefaults,
      retryBounds,
      egress: loadEgressPolicy(env),
      tenantSubjects: loadTenantSubjects(env),
    },
    announceWindowMs: envDurationMs(env, "ANNOUNCE_WINDOW", 60_000, 0, 86_400_000),
    // ACTIVE_TIMERS_REFRESH: see activeTimersRefreshMs.
    activeTimersRefreshMs: envDurationMs(env, "ACTIVE_TIMERS_REFRESH", 30_000, 500, 3_600_000),
    createQueueMax: envInt(env, "CREATE_QUEUE_MAX", 5_000, 1, 1_000_000),
    quotas: {
      listPageMaxBytes: loadListPageMaxBytes(env),
      groupMaxActiveTimers: envInt(env, "GROUP_MAX_ACTIVE_TIMERS", 1_000_000, 1, Number.MAX_SAFE_INTEGER),
      createRatePerToken: envNumber(env, "CREATE_RATE_PER_TOKEN", 1000, 0.000_001, 1_000_000),
      createBurstPerToken: envInt(env, "CREATE_BURST_PER_TOKEN", 2000, 1, 10_000_000),
    },
  };
}

// The server's own defaults are a retry policy like any other: they must respect the bounds
// requests are held to.
function checkRetryDefaults(d: RetrySettings, b: RetryBounds): void {
  if (d.maxAttempts > b.maxAttempts) {
    throw new ConfigError(
      `RETRY_MAX_ATTEMPTS (${d.maxAttempts}) must not exceed RETRY_MAX_ATTEMPTS_LIMIT (${b.maxAttempts})`,
    );
  }
  if (d.initialBackoffMs < b.minBackoffMs) {
    throw new ConfigError(
      `RETRY_INITIAL_BACKOFF (${d.initialBackoffMs}ms) must not be below RETRY_MIN_BACKOFF (${b.minBackoffMs}ms)`,
    );
  }
  if (d.maxBackoffMs < d.initialBackoffMs) {
    throw new ConfigError(
      `RETRY_MAX_BACKOFF (${d.maxBackoffMs}ms) must not be below RETRY_INITIAL_BACKOFF (${d.initialBackoffMs}ms)`,
    );
  }
}
