import { envDurationMs, envInt, loadCommonConfig, type CommonConfig } from "../../shared/src/env.js";
import type { Limits } from "./validation.js";

/** The timer service's settings, from the environment. */
export interface TimerConfig extends CommonConfig {
  limits: Limits;
  /** Timers due within this window are announced to their shard's owner over NATS. */
  announceWindowMs: number;
  /** How often active_timers_total is recounted from Postgres. */
  activeTimersRefreshMs: number;
}

/** Reads and validates the timer service's environment. */
export function loadTimerConfig(env: Record<string, string | undefined>): TimerConfig {
  return {
    ...loadCommonConfig(env, { grpc: 50051, http: 8080 }),
    limits: {
      maxHorizonMs: envDurationMs(env, "MAX_TIMER_HORIZON", 365 * 86_400_000, 1000, 10 * 365 * 86_400_000),
      maxPayloadBytes: envInt(env, "MAX_PAYLOAD_BYTES", 64 * 1024, 0, 4 * 1024 * 1024),
      retryDefaults: {
        maxAttempts: envInt(env, "RETRY_MAX_ATTEMPTS", 5, 1, 100),
        initialBackoffMs: envDurationMs(env, "RETRY_INITIAL_BACKOFF", 1000, 1, 86_400_000),
        maxBackoffMs: envDurationMs(env, "RETRY_MAX_BACKOFF", 300_000, 1, 86_400_000),
        multiplier: 2,
      },
    },
    announceWindowMs: envDurationMs(env, "ANNOUNCE_WINDOW", 60_000, 0, 86_400_000),
    activeTimersRefreshMs: envDurationMs(env, "ACTIVE_TIMERS_REFRESH", 30_000, 500, 3_600_000),
  };
}
