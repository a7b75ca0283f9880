import { hostname } from "node:os";
import { loadEgressPolicy, type EgressPolicy } from "../../shared/src/egress.js";
import { loadTenantSubjects, type TenantSubjects } from "../../shared/src/tenant-subjects.js";
import {
  ConfigError,
  envBoolean,
  envDurationMs,
  envInt,
  envNatsCredentials,
  envString,
  loadCommonConfig,
  type CommonConfig,
} from "../../shared/src/env.js";
import { isValidId } from "../../shared/src/timer-id.js";

/**
 * The firing loop's tuning: its meanings and defaults live here, and the scheduler takes them as
 * they are (SchedulerOptions extends this), so each exists once.
 */
export interface FiringTuning {
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
  /** Share of delivery capacity a backlog of overdue timers may use while current ones wait. */
  catchUpShare: number;
  /**
   * Fair delivery: the share of MAX_IN_FLIGHT one group (DELIVERY_GROUP_SHARE) and one callback
   * destination, scheme://host:port (DELIVERY_DESTINATION_SHARE), may hold, as a fraction (0..1]. The
   * rest of a group's due timers wait unclaimed, so a hanging receiver slows only its own team.
   */
  groupShare: number;
  destinationShare: number;
}

/**
 * Automatic retention (retention-loop.ts), one dispatcher at a time. Also the defaults of
 * `npm run ops -- retention`, which reads the same variables.
 */
export interface RetentionSettings {
  /** RETENTION_ENABLED: delete; when false only the size and age gauges are refreshed. */
  enabled: boolean;
  /** RETENTION_FINISHED_TIMERS: finished timers, with their attempts, go this long after finishing. */
  finishedTimersMs: number;
  /** RETENTION_AUDIT_EVENTS: audit events go this long after they were recorded. */
  auditEventsMs: number;
  /** RETENTION_INTERVAL: how often a run starts (and the gauges are refreshed). */
  intervalMs: number;
  /** RETENTION_BATCH_SIZE: rows per delete statement. */
  batchSize: number;
  /** RETENTION_BATCH_PAUSE: the pause between two batches. */
  batchPauseMs: number;
}

/** Reads the RETENTION_* variables. */
export function loadRetentionSettings(env: Record<string, string | undefined>): RetentionSettings {
  const day = 86_400_000;
  return {
    enabled: envBoolean(env, "RETENTION_ENABLED", true),
    // A finished timer is also what answers a replayed create: below an hour a late retry could
    // create (and fire) the timer a second time.
    finishedTimersMs: envDurationMs(env, "RETENTION_FINISHED_TIMERS", 7 * day, 3_600_000, 3650 * day),
    auditEventsMs: envDurationMs(env, "RETENTION_AUDIT_EVENTS", 90 * day, 3_600_000, 3650 * day),
    intervalMs: envDurationMs(env, "RETENTION_INTERVAL", 300_000, 1_000, 86_400_000),
    batchSize: envInt(env, "RETENTION_BATCH_SIZE", 1000, 1, 10_000),
    batchPauseMs: envDurationMs(env, "RETENTION_BATCH_PAUSE", 100, 0, 60_000),
  };
}

/** The schedule advancer (schedule-advancer.ts): creates schedules' next firings ahead of time. */
export interface ScheduleAdvanceSettings {
  /** SCHEDULE_LEAD: a schedule whose latest firing is due within this gets its following ones. */
  leadMs: number;
  /** SCHEDULE_POLL_INTERVAL: how often the advancer looks for such schedules. */
  pollIntervalMs: number;
  /** SCHEDULE_BATCH: schedules advanced per transaction. */
  batch: number;
}

/**
 * Reads the SCHEDULE_* variables. SCHEDULE_LEAD defaults to 60 s, or to the least the firing
 * window allows when LOOKAHEAD is longer (see loadDispatcherConfig).
 */
export function loadScheduleAdvanceSettings(
  env: Record<string, string | undefined>,
  minLeadMs = 0,
): ScheduleAdvanceSettings {
  return {
    leadMs: envDurationMs(env, "SCHEDULE_LEAD", Math.max(60_000, minLeadMs), 1_000, 3_600_000),
    pollIntervalMs: envDurationMs(env, "SCHEDULE_POLL_INTERVAL", 1_000, 50, 60_000),
    batch: envInt(env, "SCHEDULE_BATCH", 100, 1, 1_000),
  };
}

/** The dispatcher's settings, from the environment. */
export interface DispatcherConfig extends CommonConfig, FiringTuning {
  retention: RetentionSettings;
  schedules: ScheduleAdvanceSettings;
  dispatcherId: string;
  callbackTimeoutMs: number;
  /** Where HTTP and gRPC callbacks may connect (CALLBACK_ALLOWED_NETWORKS, CALLBACK_ALLOWED_HOSTS). */
  egress: EgressPolicy;
  /** Which NATS subjects tenant callbacks may publish on (re-checked for timers stored before the rule). */
  tenantSubjects: TenantSubjects;
  /** How often this dispatcher announces itself. */
  heartbeatMs: number;
  /** A member silent for longer is gone, and its shards are reassigned. */
  memberTtlMs: number;
  /** Validity of a shard lease; renewed every leaseTickMs. A crashed owner's shards move after this. */
  leaseTtlMs: number;
  leaseTickMs: number;
  /** host:port others use to reach this dispatcher's gRPC port (shown in the member list). */
  advertiseAddress: string;
  /**
   * CALLBACK_NATS_USER and CALLBACK_NATS_PASSWORD: the NATS user tenant callbacks are published
   * as (infra/nats/nats.conf: `callbacks`, barred from the mesh's subjects). Undefined only when
   * NATS_USER is unset too (a server without authorization).
   */
  callbackNatsCredentials: { user: string; password: string } | undefined;
}

/** Reads and validates the dispatcher's environment. */
export function loadDispatcherConfig(env: Record<string, string | undefined>): DispatcherConfig {
  const common = loadCommonConfig(env, { grpc: 50052, http: 8081 });
  const callbackTimeoutMs = envDurationMs(env, "CALLBACK_TIMEOUT", 10_000, 100, 300_000);
  const heartbeatMs = envDurationMs(env, "HEARTBEAT_INTERVAL", 500, 50, 60_000);
  const memberTtlMs = envDurationMs(env, "MEMBER_TTL", 3_000, 100, 600_000);
  const leaseTtlMs = envDurationMs(env, "LEASE_TTL", 3_000, 200, 600_000);
  if (memberTtlMs < 2 * heartbeatMs) {
    throw new ConfigError(
      `MEMBER_TTL (${memberTtlMs}ms) must be at least twice HEARTBEAT_INTERVAL (${heartbeatMs}ms)`,
    );
  }
  // Heartbeats carry the id and every receiver refuses one that breaks the id rule.
  const dispatcherId = envString(env, "DISPATCHER_ID", `${hostname()}-${process.pid}`);
  if (!isValidId(dispatcherId)) {
    throw new ConfigError(
      `DISPATCHER_ID must be 1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit, got "${dispatcherId}"`,
    );
  }
  const callbackNatsCredentials = envNatsCredentials(env, "CALLBACK_NATS_USER", "CALLBACK_NATS_PASSWORD");
  if (common.natsCredentials && !callbackNatsCredentials) {
    // Publishing tenant payloads as the dispatcher's own user would let a tenant's callback
    // subject speak for the mesh (heartbeats, goodbyes).
    throw new ConfigError(
      "NATS_USER is set but CALLBACK_NATS_USER is not: tenant callbacks need their own NATS user " +
        "(`callbacks` in infra/nats/nats.conf); set CALLBACK_NATS_USER and CALLBACK_NATS_PASSWORD",
    );
  }
  const lookaheadMs = envDurationMs(env, "LOOKAHEAD", 30_000, 1_000, 3_600_000);
  const pollIntervalMs = envDurationMs(env, "POLL_INTERVAL", 1_000, 50, 60_000);
  const schedulePollMs = envDurationMs(env, "SCHEDULE_POLL_INTERVAL", 1_000, 50, 60_000);
  const schedules = loadScheduleAdvanceSettings(env, lookaheadMs + pollIntervalMs + schedulePollMs);
  if (schedules.leadMs < lookaheadMs + pollIntervalMs + schedules.pollIntervalMs) {
    // The advancer does not announce: a firing must be stored before its owner's window poll
    // passes its fire time (schedule-advancer.ts).
    throw new ConfigError(
      `SCHEDULE_LEAD (${schedules.leadMs}ms) must be at least LOOKAHEAD + POLL_INTERVAL + SCHEDULE_POLL_INTERVAL (${lookaheadMs + pollIntervalMs + schedules.pollIntervalMs}ms)`,
    );
  }
  return {
    ...common,
    dispatcherId,
    callbackNatsCredentials,
    retention: loadRetentionSettings(env),
    schedules,
    lookaheadMs,
    pollIntervalMs,
    overdueGraceMs: envDurationMs(env, "OVERDUE_GRACE", 2_000, 0, 600_000),
    claimLeadMs: envDurationMs(env, "CLAIM_LEAD", 25, 0, 1_000),
    claimBatch: envInt(env, "CLAIM_BATCH", 500, 1, 10_000),
    // A destination may hold DELIVERY_DESTINATION_SHARE of these, and a timer holds its slot
    // from CLAIM_LEAD before its time to the receiver's answer (~40 ms on one machine): 512
    // slots capped one receiver near 3,300 fires/s; 2,048 (512 per destination) allow ~12,000.
    maxInFlight: envInt(env, "MAX_IN_FLIGHT", 2048, 1, 100_000),
    maxHeld: envInt(env, "MAX_HELD_TIMERS", 200_000, 100, 10_000_000),
    callbackTimeoutMs,
    egress: loadEgressPolicy(env),
    tenantSubjects: loadTenantSubjects(env),
    catchUpShare: envInt(env, "CATCH_UP_PERCENT", 25, 1, 100) / 100,
    groupShare: envInt(env, "DELIVERY_GROUP_SHARE", 25, 1, 100) / 100,
    destinationShare: envInt(env, "DELIVERY_DESTINATION_SHARE", 25, 1, 100) / 100,
    heartbeatMs,
    memberTtlMs,
    leaseTtlMs,
    leaseTickMs: Math.max(50, Math.min(500, Math.floor(leaseTtlMs / 4))),
    advertiseAddress: envString(
      env,
      "ADVERTISE_ADDRESS",
      `${common.host === "0.0.0.0" || common.host === "::" ? hostname() : common.host}:${common.grpcPort}`,
    ),
  };
}
