import {
  ConfigError,
  envBoolean,
  envDurationMs,
  envInt,
  envOptional,
  envString,
  envUrl,
  loadCommonConfig,
  type CommonConfig,
} from "../../shared/src/env.js";
import { loadListPageMaxBytes } from "../../shared/src/page-bytes.js";

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
  /**
   * The admin service's own bearer token for calls to dispatchers (an admin token in their
   * token list): DISPATCHER_TOKEN inline, or DISPATCHER_TOKEN_FILE (read at every call, so a
   * rotated secret is picked up). The operator's own token is never forwarded. Neither set:
   * dispatchers are called without a token, which only dispatchers with AUTH_DISABLED accept.
   */
  dispatcherToken: { inline: string } | { file: string } | undefined;
  /** LIST_PAGE_MAX_BYTES: a ListFailedTimers page stops before this many bytes (at least one timer). */
  listPageMaxBytes: number;
  /**
   * BULK_OPERATION_LEASE: how long an admin process holds a bulk operation between batches;
   * once it has expired (the process stopped or was killed), another admin process resumes it.
   */
  bulkOperationLeaseMs: number;
  /** BULK_OPERATION_POLL: how often an idle admin process looks for bulk operations to take over. */
  bulkOperationPollMs: number;
  /** FORECAST_REFRESH: how often the load-ahead gauges (timer_due_next_5m, ...) are recomputed. */
  forecastRefreshMs: number;
  /**
   * FORECAST_ROW_BUDGET: index entries of timers_due_idx one ForecastLoad (or gauge refresh)
   * reads at most, over all shards; past it the answer is truncated (complete_until).
   */
  forecastRowBudget: number;
  /** The browser console's port (console-server.ts); undefined when CONSOLE_ENABLED=false. */
  console: ConsoleConfig | undefined;
}

/** Where and how the admin process serves the operator console. */
export interface ConsoleConfig {
  /** CONSOLE_PORT: 0 is a free port, which the start log names. */
  port: number;
  /** CONSOLE_HOST: the service's BIND_HOST unless set. */
  host: string;
  /** TIMER_API_URL: where the console's timer.v1 calls are forwarded (the timer service's gRPC port). */
  timerApiUrl: string;
  /**
   * TIMER_API_CA_FILE: the CA an https TIMER_API_URL is checked against; unset, the one of
   * DISPATCHER_TLS_CA_FILE (the mesh's own CA), else the system's.
   */
  timerApiCaFile: string | undefined;
  /** JAEGER_UI_URL: the console links trace ids to `${jaegerUiUrl}/trace/<id>`; undefined hides the links. */
  jaegerUiUrl: string | undefined;
}

/**
 * The admin's Postgres pool when DB_POOL_MAX is unset: its calls are few and operator-driven, so
 * it needs fewer connections than the services on the firing path. A DB_POOL_MAX that is set
 * applies to the admin as it is.
 */
export const ADMIN_DEFAULT_DB_POOL_MAX = 5;

/** Reads and validates the admin service's environment. */
export function loadAdminConfig(env: Record<string, string | undefined>): AdminConfig {
  const common = loadCommonConfig(env, { grpc: 50053, http: 8082 });
  return {
    ...common,
    dbPoolMax: envOptional(env, "DB_POOL_MAX") === undefined ? ADMIN_DEFAULT_DB_POOL_MAX : common.dbPoolMax,
    memberTtlMs: envDurationMs(env, "MEMBER_TTL", 3_000, 100, 600_000),
    rebalanceWaitMs: envDurationMs(env, "REBALANCE_WAIT", 1_000, 50, 60_000),
    dispatcherCallTimeoutMs: envDurationMs(env, "DISPATCHER_CALL_TIMEOUT", 30_000, 100, 600_000),
    dispatcherTlsCaFile: envOptional(env, "DISPATCHER_TLS_CA_FILE"),
    dispatcherToken: loadDispatcherToken(env),
    listPageMaxBytes: loadListPageMaxBytes(env),
    bulkOperationLeaseMs: envDurationMs(env, "BULK_OPERATION_LEASE", 30_000, 1_000, 3_600_000),
    bulkOperationPollMs: envDurationMs(env, "BULK_OPERATION_POLL", 2_000, 50, 600_000),
    forecastRefreshMs: envDurationMs(env, "FORECAST_REFRESH", 30_000, 100, 600_000),
    forecastRowBudget: envInt(env, "FORECAST_ROW_BUDGET", 200_000, 1_000, 10_000_000),
    console: loadConsoleConfig(env, common.host),
  };
}

function loadConsoleConfig(env: Record<string, string | undefined>, host: string): ConsoleConfig | undefined {
  if (!envBoolean(env, "CONSOLE_ENABLED", true)) return undefined;
  const jaeger = envOptional(env, "JAEGER_UI_URL");
  return {
    port: envInt(env, "CONSOLE_PORT", 8083, 0, 65535),
    host: envString(env, "CONSOLE_HOST", host),
    timerApiUrl: envUrl(env, "TIMER_API_URL", "http://127.0.0.1:50051", ["http", "https"]).replace(
      /\/+$/,
      "",
    ),
    timerApiCaFile: envOptional(env, "TIMER_API_CA_FILE"),
    // The links are built as `${url}/trace/<id>`: a trailing slash would double.
    jaegerUiUrl:
      jaeger === undefined
        ? undefined
        : envUrl(env, "JAEGER_UI_URL", "", ["http", "https"]).replace(/\/+$/, ""),
  };
}

function loadDispatcherToken(env: Record<string, string | undefined>): AdminConfig["dispatcherToken"] {
  const inline = envOptional(env, "DISPATCHER_TOKEN");
  const file = envOptional(env, "DISPATCHER_TOKEN_FILE");
  if (inline && file) throw new ConfigError("set DISPATCHER_TOKEN or DISPATCHER_TOKEN_FILE, not both");
  if (inline !== undefined && /\s/.test(inline))
    throw new ConfigError("DISPATCHER_TOKEN must not contain white space");
  return inline ? { inline } : file ? { file } : undefined;
}
