import { envDurationMs, envOptional, loadCommonConfig, type CommonConfig } from "../../shared/src/env.js";

/** The admin service's settings, from the environment. */
export interface AdminConfig extends CommonConfig {
  /** A dispatcher whose last heartbeat is older than this is no longer listed as live. */
  memberTtlMs: number;
  /** How long RebalanceShards collects the dispatchers' replies (less when all live ones answered). */
  rebalanceWaitMs: number;
  /** Deadline of a call to a dispatcher (DrainDispatcher). */
  dispatcherCallTimeoutMs: number;
  /**
   * DISPATCHER_TLS_CA_FILE: call dispatchers over TLS, trusting this CA (and presenting
   * TLS_CERT_FILE/TLS_KEY_FILE as client certificate, for dispatchers that require mTLS).
   * Unset: dispatchers are called in plaintext.
   */
  dispatcherTlsCaFile: string | undefined;
}

/** Reads and validates the admin service's environment. */
export function loadAdminConfig(env: Record<string, string | undefined>): AdminConfig {
  return {
    ...loadCommonConfig(env, { grpc: 50053, http: 8082 }),
    memberTtlMs: envDurationMs(env, "MEMBER_TTL", 3_000, 100, 600_000),
    rebalanceWaitMs: envDurationMs(env, "REBALANCE_WAIT", 1_000, 50, 60_000),
    dispatcherCallTimeoutMs: envDurationMs(env, "DISPATCHER_CALL_TIMEOUT", 30_000, 100, 600_000),
    dispatcherTlsCaFile: envOptional(env, "DISPATCHER_TLS_CA_FILE"),
  };
}
