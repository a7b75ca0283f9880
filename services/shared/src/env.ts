// The parsers of settings from the environment. Each service's main.ts hands process.env (read
// nowhere else in services/) to its config.ts, which describes its settings with these parsers;
// a bad value stops the process at start with a message naming the variable.
import { redactUrl } from "./redact.js";

/** Raised when an environment variable is missing or malformed. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

type Env = Record<string, string | undefined>;

/** A string setting, with a default when unset or empty. */
export function envString(env: Env, name: string, fallback: string): string {
  const v = env[name];
  return v === undefined || v === "" ? fallback : v;
}

/** An optional string setting: undefined when unset or empty. */
export function envOptional(env: Env, name: string): string | undefined {
  const v = env[name];
  return v === undefined || v === "" ? undefined : v;
}

/** An integer setting within [min, max]. */
export function envInt(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!/^-?\d+$/.test(raw.trim())) throw new ConfigError(`${name} must be an integer, got "${raw}"`);
  const n = Number(raw);
  if (n < min || n > max) throw new ConfigError(`${name} must be between ${min} and ${max}, got ${n}`);
  return n;
}

/** A decimal number setting within [min, max] ("1000", "0.5", "1e-3"). */
export function envNumber(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw.trim());
  if (raw.trim() === "" || !Number.isFinite(n))
    throw new ConfigError(`${name} must be a number, got "${raw}"`);
  if (n < min || n > max) throw new ConfigError(`${name} must be between ${min} and ${max}, got ${n}`);
  return n;
}

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A duration setting in milliseconds: "250ms", "5s", "2m", "1h", "365d", or a bare number of ms. */
export function envDurationMs(
  env: Env,
  name: string,
  fallbackMs: number,
  minMs: number,
  maxMs: number,
): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallbackMs;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(raw.trim());
  if (!m) throw new ConfigError(`${name} must be a duration like 500ms, 5s, 2m, 1h or 365d, got "${raw}"`);
  const ms = Number(m[1]) * durationUnits[m[2] ?? "ms"]!;
  if (ms < minMs || ms > maxMs) {
    throw new ConfigError(`${name} must be between ${minMs}ms and ${maxMs}ms, got ${ms}ms`);
  }
  return Math.round(ms);
}

/** A boolean setting: "true" or "false" (any case), the fallback when unset or empty. */
export function envBoolean(env: Env, name: string, fallback: boolean): boolean {
  const raw = envOptional(env, name);
  if (raw === undefined) return fallback;
  const v = raw.trim().toLowerCase();
  if (v !== "true" && v !== "false") throw new ConfigError(`${name} must be true or false, got "${raw}"`);
  return v === "true";
}

/** A URL setting whose scheme is one of `schemes`. */
export function envUrl(env: Env, name: string, fallback: string, schemes: string[]): string {
  const raw = envString(env, name, fallback);
  let url: URL;
  try {
    url = new URL(raw);
  } catch (err) {
    // The value may hold a password (DATABASE_URL) or a token (NATS_URL): never quote it whole.
    throw new ConfigError(`${name} must be a URL, got "${redactUrl(raw)}"`, { cause: err });
  }
  if (!schemes.includes(url.protocol.replace(/:$/, ""))) {
    throw new ConfigError(`${name} must use ${schemes.join(" or ")}, got "${url.protocol}"`);
  }
  return raw;
}

/** A NATS user and password from two variables, set together (undefined when neither is). */
export function envNatsCredentials(
  env: Env,
  userVar: string,
  passwordVar: string,
): { user: string; password: string } | undefined {
  const user = envOptional(env, userVar);
  const password = envOptional(env, passwordVar);
  if (user === undefined && password === undefined) return undefined;
  if (user === undefined)
    throw new ConfigError(
      `${passwordVar} is set but ${userVar} is not: set both, or neither for a NATS server without authorization`,
    );
  if (password === undefined) throw new ConfigError(`${userVar} is set but ${passwordVar} is not`);
  return { user, password };
}

/** A log level pino understands. */
export function envLogLevel(env: Env, name: string, fallback: string): string {
  const v = envString(env, name, fallback).toLowerCase();
  const levels = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];
  if (!levels.includes(v)) throw new ConfigError(`${name} must be one of ${levels.join(", ")}, got "${v}"`);
  return v;
}

/** Settings every service shares. */
export interface CommonConfig {
  databaseUrl: string;
  natsUrl: string;
  /** NATS_USER and NATS_PASSWORD: this service's own NATS user; undefined for a server without authorization. */
  natsCredentials: { user: string; password: string } | undefined;
  grpcPort: number;
  /** GRPC_MAX_REQUEST_BYTES: the largest request message the gRPC port reads; larger ones are refused before decoding. */
  grpcMaxRequestBytes: number;
  httpPort: number;
  host: string;
  shardCount: number;
  logLevel: string;
  dbPoolMax: number;
  /**
   * DB_STATEMENT_TIMEOUT: the longest any query of the service pools may run, enforced by Postgres
   * (statement_timeout) and, a little later, by the driver (query_timeout) for a server that no
   * longer answers at all. Migrations run on their own connection without it.
   */
  dbStatementTimeoutMs: number;
  /**
   * SHUTDOWN_TIMEOUT: how long SIGTERM waits for work in flight (calls, and a dispatcher's
   * deliveries) before closing what is left.
   */
  shutdownTimeoutMs: number;
  /** OTLP endpoint for traces (…/v1/traces); undefined when tracing is off. */
  tracesEndpoint: string | undefined;
  tracesProtocol: "http/protobuf" | "http/json";
  /** OTEL_SERVICE_NAME, when set. */
  otelServiceName: string | undefined;
  /** Bearer tokens and TLS of the gRPC port. */
  security: SecurityConfig;
}

/** Authentication and TLS settings of a gRPC port. */
export interface SecurityConfig {
  /** AUTH_TOKENS_FILE: JSON token list, reloaded when it changes and on SIGHUP. */
  authTokensFile: string | undefined;
  /** AUTH_TOKENS: the same JSON inline. */
  authTokens: string | undefined;
  /**
   * AUTH_DISABLED=true: no tokens, every caller is an anonymous admin (said loudly at every
   * start). The only way to run without tokens: with none configured and this unset, the
   * service refuses to start.
   */
  authDisabled: boolean;
  /** AUTH_RELOAD_INTERVAL: how often the token file's mtime is checked. */
  authReloadMs: number;
  /** TLS_CERT_FILE and TLS_KEY_FILE (PEM); TLS_CLIENT_CA_FILE turns on mTLS. Undefined: plaintext. */
  tls: { certFile: string; keyFile: string; clientCaFile: string | undefined } | undefined;
}

/** Reads the settings every service shares; ports default per service. */
export function loadCommonConfig(env: Env, ports: { grpc: number; http: number }): CommonConfig {
  return {
    databaseUrl: envUrl(env, "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/timers", [
      "postgres",
      "postgresql",
    ]),
    natsUrl: envUrl(env, "NATS_URL", "nats://127.0.0.1:4222", ["nats", "tls", "ws", "wss"]),
    natsCredentials: envNatsCredentials(env, "NATS_USER", "NATS_PASSWORD"),
    grpcPort: envInt(env, "GRPC_PORT", ports.grpc, 0, 65535),
    grpcMaxRequestBytes: envInt(env, "GRPC_MAX_REQUEST_BYTES", 1024 * 1024, 1024, 64 * 1024 * 1024),
    httpPort: envInt(env, "HTTP_PORT", ports.http, 0, 65535),
    host: envString(env, "BIND_HOST", "0.0.0.0"),
    shardCount: envInt(env, "SHARD_COUNT", 1024, 1, 65536),
    logLevel: envLogLevel(env, "LOG_LEVEL", "info"),
    dbPoolMax: envInt(env, "DB_POOL_MAX", 20, 1, 1000),
    dbStatementTimeoutMs: envDurationMs(env, "DB_STATEMENT_TIMEOUT", 10_000, 100, 3_600_000),
    shutdownTimeoutMs: envDurationMs(env, "SHUTDOWN_TIMEOUT", 15_000, 0, 300_000),
    ...loadOtelConfig(env),
    security: loadSecurityConfig(env),
  };
}

/** Why a service without token configuration does not start, and how to configure it. */
export const MISSING_TOKENS_MESSAGE =
  "no token configuration: set AUTH_TOKENS_FILE to a JSON file of tokens (or AUTH_TOKENS to the same JSON inline), " +
  'e.g. [{"name":"ops","sha256":"<hex SHA-256 of the token>","admin":true},{"name":"billing-ci","sha256":"<hex>","groups":["billing","orders-*"]}]. ' +
  'Only the hash is stored; make one with  printf %s "$TOKEN" | sha256sum  or  ' +
  'node -e \'console.log(require("crypto").createHash("sha256").update(process.argv[1]).digest("hex"))\' "$TOKEN"  ' +
  "(infra/generate-secrets.sh writes a token file and its tokens). " +
  "To run without authentication, where every caller is an anonymous admin (local development only), set AUTH_DISABLED=true.";

/** Reads AUTH_* and TLS_* (the token list itself is parsed and checked by auth.ts at start). */
export function loadSecurityConfig(env: Env): SecurityConfig {
  const authTokensFile = envOptional(env, "AUTH_TOKENS_FILE");
  const authTokens = envOptional(env, "AUTH_TOKENS");
  const authDisabled = envBoolean(env, "AUTH_DISABLED", false);
  if (authTokensFile && authTokens) throw new ConfigError("set AUTH_TOKENS_FILE or AUTH_TOKENS, not both");
  if (authDisabled && (authTokensFile || authTokens)) {
    throw new ConfigError(
      `AUTH_DISABLED=true and ${authTokensFile ? "AUTH_TOKENS_FILE" : "AUTH_TOKENS"} are both set: ` +
        "unset AUTH_DISABLED to require tokens, or unset the tokens to run without authentication",
    );
  }
  if (!authDisabled && !authTokensFile && !authTokens) throw new ConfigError(MISSING_TOKENS_MESSAGE);
  const certFile = envOptional(env, "TLS_CERT_FILE");
  const keyFile = envOptional(env, "TLS_KEY_FILE");
  const clientCaFile = envOptional(env, "TLS_CLIENT_CA_FILE");
  if (!certFile !== !keyFile) throw new ConfigError("TLS_CERT_FILE and TLS_KEY_FILE must be set together");
  if (clientCaFile && !certFile)
    throw new ConfigError("TLS_CLIENT_CA_FILE (mTLS) needs TLS_CERT_FILE and TLS_KEY_FILE");
  return {
    authTokensFile,
    authTokens,
    authDisabled,
    authReloadMs: envDurationMs(env, "AUTH_RELOAD_INTERVAL", 5_000, 100, 3_600_000),
    tls: certFile && keyFile ? { certFile, keyFile, clientCaFile } : undefined,
  };
}

/** The standard OTEL_* variables this project honours for traces. */
function loadOtelConfig(
  env: Env,
): Pick<CommonConfig, "tracesEndpoint" | "tracesProtocol" | "otelServiceName"> {
  const off =
    envOptional(env, "OTEL_SDK_DISABLED") === "true" || envOptional(env, "OTEL_TRACES_EXPORTER") === "none";
  const specific = envOptional(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
  const generic = envOptional(env, "OTEL_EXPORTER_OTLP_ENDPOINT");
  let tracesEndpoint: string | undefined;
  if (!off && (specific || generic)) {
    tracesEndpoint = specific ?? `${generic!.replace(/\/+$/, "")}/v1/traces`;
    const name = specific ? "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" : "OTEL_EXPORTER_OTLP_ENDPOINT";
    envUrl({ [name]: tracesEndpoint }, name, "", ["http", "https"]);
  }
  const protocol =
    envOptional(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") ??
    envOptional(env, "OTEL_EXPORTER_OTLP_PROTOCOL") ??
    "http/protobuf";
  if (protocol !== "http/protobuf" && protocol !== "http/json") {
    throw new ConfigError(
      `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL must be http/protobuf or http/json, got "${protocol}"`,
    );
  }
  return { tracesEndpoint, tracesProtocol: protocol, otelServiceName: envOptional(env, "OTEL_SERVICE_NAME") };
}
