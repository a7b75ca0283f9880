import { hostname } from "node:os";
import { ConfigError, envDurationMs, envInt, envString, loadCommonConfig, type CommonConfig } from "../../shared/src/env.js";

/** The dispatcher's settings, from the environment. */
export interface DispatcherConfig extends CommonConfig {
  dispatcherId: string;
  /** Timers due within this window are held in memory. */
  lookaheadMs: number;
  /** How often Postgres is asked for the next slice of the window and for overdue timers. */
  pollIntervalMs: number;
  /** A scheduled timer this late is assumed missed (lost announcement, downtime) and loaded. */
  overdueGraceMs: number;
  /** Timers are claimed this long before they are due, so the callback leaves on time. */
  claimLeadMs: number;
  claimBatch: number;
  maxInFlight: number;
  maxHeld: number;
  callbackTimeoutMs: number;
  /** Share of delivery capacity a backlog of overdue timers may use while current ones wait. */
  catchUpShare: number;
  shutdownTimeoutMs: number;
  /** How often this dispatcher announces itself. */
  heartbeatMs: number;
  /** A member silent for longer is gone, and its shards are reassigned. */
  memberTtlMs: number;
  /** Validity of a shard lease; renewed every leaseTickMs. A crashed owner's shards move after this. */
  leaseTtlMs: number;
  leaseTickMs: number;
  /** host:port others use to reach this dispatcher's gRPC port (shown in the member list). */
  advertiseAddress: string;
}

/** Reads and validates the dispatcher's environment. */
export function loadDispatcherConfig(env: Record<string, string | undefined>): DispatcherConfig {
  const common = loadCommonConfig(env, { grpc: 50052, http: 8081 });
  const callbackTimeoutMs = envDurationMs(env, "CALLBACK_TIMEOUT", 10_000, 100, 300_000);
  const heartbeatMs = envDurationMs(env, "HEARTBEAT_INTERVAL", 500, 50, 60_000);
  const memberTtlMs = envDurationMs(env, "MEMBER_TTL", 3_000, 100, 600_000);
  const leaseTtlMs = envDurationMs(env, "LEASE_TTL", 3_000, 200, 600_000);
  if (memberTtlMs < 2 * heartbeatMs) {
    throw new ConfigError(`MEMBER_TTL (${memberTtlMs}ms) must be at least twice HEARTBEAT_INTERVAL (${heartbeatMs}ms)`);
  }
  return {
    ...common,
    dispatcherId: envString(env, "DISPATCHER_ID", `${hostname()}-${process.pid}`),
    lookaheadMs: envDurationMs(env, "LOOKAHEAD", 30_000, 1_000, 3_600_000),
    pollIntervalMs: envDurationMs(env, "POLL_INTERVAL", 1_000, 50, 60_000),
    overdueGraceMs: envDurationMs(env, "OVERDUE_GRACE", 2_000, 0, 600_000),
    claimLeadMs: envDurationMs(env, "CLAIM_LEAD", 25, 0, 1_000),
    claimBatch: envInt(env, "CLAIM_BATCH", 500, 1, 10_000),
    maxInFlight: envInt(env, "MAX_IN_FLIGHT", 512, 1, 100_000),
    maxHeld: envInt(env, "MAX_HELD_TIMERS", 200_000, 100, 10_000_000),
    callbackTimeoutMs,
    catchUpShare: envInt(env, "CATCH_UP_PERCENT", 25, 1, 100) / 100,
    shutdownTimeoutMs: envDurationMs(env, "SHUTDOWN_TIMEOUT", 15_000, 0, 300_000),
    heartbeatMs,
    memberTtlMs,
    leaseTtlMs,
    leaseTickMs: Math.max(50, Math.min(500, Math.floor(leaseTtlMs / 4))),
    advertiseAddress: envString(env, "ADVERTISE_ADDRESS", `${common.host === "0.0.0.0" || common.host === "::" ? hostname() : common.host}:${common.grpcPort}`),
  };
}
