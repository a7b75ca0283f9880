// Which database failures callers are told to retry (services/shared/src/db-errors.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Code } from "@connectrpc/connect";
import { databaseUnavailable } from "../../services/shared/src/db-errors.js";

function withCode(code: string, message = "boom at 10.1.2.3:5432 in SELECT secret FROM t"): Error {
  return Object.assign(new Error(message), { code });
}

test("dropped, refused and timed-out connections, server shutdowns and timeouts are UNAVAILABLE", () => {
  const cases: [string, unknown][] = [
    ["ECONNREFUSED", withCode("ECONNREFUSED", "connect ECONNREFUSED 10.1.2.3:5432")],
    ["ECONNRESET", withCode("ECONNRESET", "read ECONNRESET")],
    ["EPIPE", withCode("EPIPE", "write EPIPE")],
    ["ETIMEDOUT", withCode("ETIMEDOUT", "connect ETIMEDOUT 10.1.2.3:5432")],
    ["class 08 (connection_failure)", withCode("08006")],
    ["class 08 (sqlclient_unable_to_establish_sqlconnection)", withCode("08001")],
    ["57P01 admin shutdown", withCode("57P01", "terminating connection due to administrator command")],
    ["57P02 crash shutdown", withCode("57P02")],
    ["57P03 starting up", withCode("57P03", "the database system is starting up")],
    ["53300 too many connections", withCode("53300", "sorry, too many clients already")],
    ["57014 statement timeout", withCode("57014", "canceling statement due to statement timeout")],
    ["pg: connection lost", new Error("Connection terminated unexpectedly")],
    ["pg: client broken", new Error("Client has encountered a connection error and is not queryable")],
    ["pg: query_timeout", new Error("Query read timeout")],
    ["pg-pool: connect timeout", new Error("timeout exceeded when trying to connect")],
    [
      "pg-pool: connection timeout wrapping the socket error",
      new Error("Connection terminated due to connection timeout", {
        cause: new Error("Connection terminated unexpectedly"),
      }),
    ],
    ["a wrapped cause", new Error("storing the batch failed", { cause: withCode("ECONNRESET") })],
    [
      "AggregateError of refused addresses",
      new AggregateError([withCode("ECONNREFUSED"), withCode("ECONNREFUSED")], "connect failed"),
    ],
  ];
  for (const [name, err] of cases) {
    const mapped = databaseUnavailable(err);
    assert.ok(mapped, `${name} should be UNAVAILABLE`);
    assert.equal(mapped.code, Code.Unavailable, name);
    assert.match(mapped.rawMessage, /^database unavailable \([a-z ]+\)\. Retry with backoff$/, name);
    // Nothing of the driver's text (hosts, SQL) reaches the caller.
    assert.doesNotMatch(mapped.rawMessage, /10\.1\.2\.3|SELECT|secret/, name);
  }
});

test("the reason names what happened", () => {
  assert.equal(
    databaseUnavailable(withCode("ECONNREFUSED"))?.rawMessage,
    "database unavailable (connection refused). Retry with backoff",
  );
  assert.equal(
    databaseUnavailable(withCode("57014"))?.rawMessage,
    "database unavailable (query timed out). Retry with backoff",
  );
  assert.equal(
    databaseUnavailable(withCode("53300"))?.rawMessage,
    "database unavailable (too many connections). Retry with backoff",
  );
});

test("errors a retry cannot fix are not UNAVAILABLE", () => {
  const cases: [string, unknown][] = [
    ["unique violation", withCode("23505")],
    ["syntax error", withCode("42601")],
    ["undefined table", withCode("42P01")],
    ["out of range", withCode("22003")],
    ["a bug", new TypeError("Cannot read properties of undefined (reading 'x')")],
    ["a message merely mentioning a timeout", new Error("the timeout exceeded the limit")],
    ["a string", "Connection terminated unexpectedly"],
    ["null", null],
    ["undefined", undefined],
  ];
  for (const [name, err] of cases) assert.equal(databaseUnavailable(err), undefined, name);
});

test("a cause cycle does not loop", () => {
  const a = new Error("a") as Error & { cause?: unknown };
  const b = new Error("b", { cause: a });
  a.cause = b;
  assert.equal(databaseUnavailable(a), undefined);
});
