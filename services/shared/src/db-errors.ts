// Which database failures a caller should retry. A dropped or refused connection, a pool that
// could not connect in time, a server shutting down or out of connections, or a query cut off by
// a timeout says nothing about the request: the same call may well succeed a moment later, which
// gRPC spells UNAVAILABLE. Everything else stays INTERNAL (errorInterceptor in servers.ts).
//
// The caller is told only a fixed reason from the tables below: the driver's own text may quote
// SQL, a host or a user, none of which belongs in an answer to a client.
import { Code, ConnectError } from "@connectrpc/connect";

// Socket errors (Node's err.code) that mean Postgres could not be reached or the connection broke.
const NETWORK_CODES: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  EPIPE: "connection broken",
  ETIMEDOUT: "connection timed out",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  // A name that cannot be resolved right now (a Kubernetes Service during a DNS hiccup).
  EAI_AGAIN: "name resolution failed",
};

// SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html) besides class 08
// (connection exception), which is matched as a class.
const SQLSTATES: Record<string, string> = {
  "57P01": "server shutting down", // admin_shutdown: terminating connection due to administrator command
  "57P02": "server restarting", // crash_shutdown: another backend crashed
  "57P03": "server starting", // cannot_connect_now: the database system is starting up
  "53300": "too many connections",
  "57014": "query timed out", // query_canceled: statement_timeout, or a cancel on our own deadline
};

// What pg and pg-pool throw without a code, by message.
const DRIVER_MESSAGES: [RegExp, string][] = [
  [/^Connection terminated unexpectedly$/, "connection lost"],
  [/^Connection terminated due to connection timeout$/, "connection timed out"],
  [/^timeout exceeded when trying to connect$/, "no connection available in time"],
  [/^Query read timeout$/, "query timed out"],
  [/^Client has encountered a connection error and is not queryable$/, "connection lost"],
];

/**
 * The gRPC error to answer with when `err` (from pg or pg-pool, possibly wrapped as a cause or
 * inside an AggregateError) means the database is unreachable or timed out: UNAVAILABLE with a
 * fixed, retry-inviting message. Undefined for any other error.
 */
export function databaseUnavailable(err: unknown): ConnectError | undefined {
  const reason = unavailableReason(err, 0);
  if (reason === undefined) return undefined;
  // Only ". ( )" between words: grpc-js decodes grpc-message with decodeURI, which leaves an
  // escaped ";", ",", ":" as "%3B", "%2C", "%3A".
  return new ConnectError(
    `database unavailable (${reason}). Retry with backoff`,
    Code.Unavailable,
    undefined,
    undefined,
    err,
  );
}

function unavailableReason(err: unknown, depth: number): string | undefined {
  // Causes nest a few levels at most (pg-pool wraps the socket error once); the bound only
  // protects against a cycle.
  if (err === null || typeof err !== "object" || depth > 5) return undefined;
  const e = err as { code?: unknown; message?: unknown; cause?: unknown; errors?: unknown };
  if (typeof e.code === "string") {
    const reason =
      NETWORK_CODES[e.code] ??
      SQLSTATES[e.code] ??
      (/^08[0-9A-Z]{3}$/.test(e.code) ? "connection failure" : undefined);
    if (reason) return reason;
  }
  if (typeof e.message === "string") {
    for (const [pattern, reason] of DRIVER_MESSAGES) if (pattern.test(e.message)) return reason;
  }
  // Node reports a refused connection to a host with several addresses as an AggregateError.
  if (Array.isArray(e.errors)) {
    for (const inner of e.errors) {
      const r = unavailableReason(inner, depth + 1);
      if (r) return r;
    }
  }
  return unavailableReason(e.cause, depth + 1);
}
