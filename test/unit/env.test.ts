// The environment parsers of services/shared/src/env.ts, one by one: a valid value is read, an
// invalid one is refused by a ConfigError naming the variable, and unset or empty gives the
// default. (test/unit/config.test.ts checks the services' settings built on them.)
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  ConfigError,
  envBoolean,
  envDurationMs,
  envInt,
  envLogLevel,
  envNatsCredentials,
  envNumber,
  envOptional,
  envString,
  envUrl,
  loadCommonConfig,
  loadSecurityConfig,
} from "../../services/shared/src/env.js";

/** Asserts `read` throws a ConfigError whose message names `variable` (and matches `detail`). */
function refused(read: () => unknown, variable: string, detail?: RegExp): void {
  assert.throws(read, (e: unknown) => {
    assert.ok(e instanceof ConfigError, `a ConfigError, got ${String(e)}`);
    assert.ok(e.message.includes(variable), `the message names ${variable}: ${e.message}`);
    if (detail) assert.match(e.message, detail);
    return true;
  });
}

describe("strings", () => {
  test("envString: the value, or the default when unset or empty", () => {
    assert.equal(envString({ HOST: "db" }, "HOST", "localhost"), "db");
    assert.equal(envString({}, "HOST", "localhost"), "localhost");
    assert.equal(envString({ HOST: "" }, "HOST", "localhost"), "localhost");
  });

  test("envOptional: undefined when unset or empty", () => {
    assert.equal(envOptional({ NAME: "x" }, "NAME"), "x");
    assert.equal(envOptional({}, "NAME"), undefined);
    assert.equal(envOptional({ NAME: "" }, "NAME"), undefined);
  });
});

describe("numbers", () => {
  test("envInt: an integer within its bounds, the bounds included", () => {
    assert.equal(envInt({ N: "7" }, "N", 1, 1, 10), 7);
    assert.equal(envInt({ N: " -3 " }, "N", 1, -5, 10), -3);
    assert.equal(envInt({ N: "1" }, "N", 5, 1, 10), 1);
    assert.equal(envInt({ N: "10" }, "N", 5, 1, 10), 10);
    assert.equal(envInt({}, "N", 5, 1, 10), 5);
    assert.equal(envInt({ N: "" }, "N", 5, 1, 10), 5);
  });

  test("envInt: not an integer, or out of bounds, is refused naming the variable", () => {
    refused(() => envInt({ N: "1.5" }, "N", 1, 0, 10), "N", /must be an integer, got "1.5"/);
    refused(() => envInt({ N: "ten" }, "N", 1, 0, 10), "N", /integer/);
    refused(() => envInt({ N: "0" }, "N", 1, 1, 10), "N", /between 1 and 10, got 0/);
    refused(() => envInt({ N: "11" }, "N", 1, 1, 10), "N", /between 1 and 10, got 11/);
  });

  test("envNumber: decimals and exponents within bounds", () => {
    assert.equal(envNumber({ R: "0.5" }, "R", 1, 0, 10), 0.5);
    assert.equal(envNumber({ R: "1e-3" }, "R", 1, 0, 10), 0.001);
    assert.equal(envNumber({}, "R", 1, 0, 10), 1);
    refused(() => envNumber({ R: "fast" }, "R", 1, 0, 10), "R", /must be a number, got "fast"/);
    refused(() => envNumber({ R: "Infinity" }, "R", 1, 0, 10), "R", /number/);
    refused(() => envNumber({ R: "   " }, "R", 1, 0, 10), "R", /number/);
    refused(() => envNumber({ R: "10.5" }, "R", 1, 0, 10), "R", /between 0 and 10/);
  });
});

describe("durations", () => {
  test("envDurationMs: each unit, a bare number of ms, and the default", () => {
    const read = (raw: string) => envDurationMs({ D: raw }, "D", 1, 0, 400 * 86_400_000);
    assert.equal(read("250ms"), 250);
    assert.equal(read("5s"), 5_000);
    assert.equal(read("1.5s"), 1_500);
    assert.equal(read("2m"), 120_000);
    assert.equal(read("1h"), 3_600_000);
    assert.equal(read("365d"), 365 * 86_400_000);
    assert.equal(read("750"), 750);
    assert.equal(envDurationMs({}, "D", 30_000, 0, 60_000), 30_000);
    assert.equal(envDurationMs({ D: "" }, "D", 30_000, 0, 60_000), 30_000);
  });

  test("envDurationMs: no unit it knows, or out of bounds, is refused naming the variable", () => {
    refused(() => envDurationMs({ D: "5 minutes" }, "D", 1, 0, 60_000), "D", /duration like/);
    refused(() => envDurationMs({ D: "-5s" }, "D", 1, 0, 60_000), "D", /duration like/);
    refused(() => envDurationMs({ D: "5w" }, "D", 1, 0, 60_000), "D", /duration like/);
    assert.equal(envDurationMs({ D: "500ms" }, "D", 1, 500, 60_000), 500);
    refused(() => envDurationMs({ D: "499ms" }, "D", 1, 500, 60_000), "D", /between 500ms and 60000ms/);
    assert.equal(envDurationMs({ D: "1m" }, "D", 1, 500, 60_000), 60_000);
    refused(() => envDurationMs({ D: "61s" }, "D", 1, 500, 60_000), "D", /got 61000ms/);
  });
});

describe("booleans, URLs, log levels", () => {
  test("envBoolean: true or false in any case, the default when unset", () => {
    assert.equal(envBoolean({ B: "TRUE" }, "B", false), true);
    assert.equal(envBoolean({ B: "false" }, "B", true), false);
    assert.equal(envBoolean({}, "B", true), true);
    refused(() => envBoolean({ B: "yes" }, "B", false), "B", /true or false, got "yes"/);
    refused(() => envBoolean({ B: "1" }, "B", false), "B");
  });

  test("envUrl: a URL of one of the schemes, the default when unset", () => {
    assert.equal(envUrl({ U: "nats://n:4222" }, "U", "nats://x", ["nats"]), "nats://n:4222");
    assert.equal(envUrl({}, "U", "nats://default:4222", ["nats"]), "nats://default:4222");
    refused(
      () => envUrl({ U: "http://n" }, "U", "nats://x", ["nats", "tls"]),
      "U",
      /nats or tls, got "http:"/,
    );
    refused(() => envUrl({ U: "not a url" }, "U", "nats://x", ["nats"]), "U", /must be a URL/);
  });

  test("envUrl: a refused URL keeps its cause, and its password out of the message", () => {
    assert.throws(
      () => envUrl({ U: "postgres://me:s3cret@db:port/x" }, "U", "", ["postgres"]),
      (e: unknown) =>
        e instanceof ConfigError && !e.message.includes("s3cret") && e.cause instanceof TypeError,
    );
  });

  test("envLogLevel: one of pino's levels, any case", () => {
    assert.equal(envLogLevel({ L: "DEBUG" }, "L", "info"), "debug");
    assert.equal(envLogLevel({}, "L", "info"), "info");
    refused(() => envLogLevel({ L: "loud" }, "L", "info"), "L", /one of fatal, error/);
  });
});

describe("credentials and security", () => {
  test("envNatsCredentials: both or neither", () => {
    assert.deepEqual(envNatsCredentials({ U: "timer", P: "pw" }, "U", "P"), {
      user: "timer",
      password: "pw",
    });
    assert.equal(envNatsCredentials({}, "U", "P"), undefined);
    refused(() => envNatsCredentials({ P: "pw" }, "U", "P"), "U", /P is set but U is not/);
    refused(() => envNatsCredentials({ U: "timer" }, "U", "P"), "P", /U is set but P is not/);
  });

  test("loadSecurityConfig: tokens, or AUTH_DISABLED, never both; TLS files set together", () => {
    assert.equal(loadSecurityConfig({ AUTH_DISABLED: "true" }).authDisabled, true);
    assert.equal(loadSecurityConfig({ AUTH_TOKENS: "[]" }).authTokens, "[]");
    refused(() => loadSecurityConfig({}), "AUTH_TOKENS_FILE", /AUTH_DISABLED=true/);
    refused(() => loadSecurityConfig({ AUTH_TOKENS: "[]", AUTH_TOKENS_FILE: "/t" }), "AUTH_TOKENS_FILE");
    refused(() => loadSecurityConfig({ AUTH_DISABLED: "true", AUTH_TOKENS: "[]" }), "AUTH_TOKENS");
    const tls = { AUTH_DISABLED: "true", TLS_CERT_FILE: "/c.pem", TLS_KEY_FILE: "/k.pem" };
    assert.deepEqual(loadSecurityConfig(tls).tls, {
      certFile: "/c.pem",
      keyFile: "/k.pem",
      clientCaFile: undefined,
    });
    refused(() => loadSecurityConfig({ AUTH_DISABLED: "true", TLS_CERT_FILE: "/c.pem" }), "TLS_KEY_FILE");
    refused(
      () => loadSecurityConfig({ AUTH_DISABLED: "true", TLS_CLIENT_CA_FILE: "/ca.pem" }),
      "TLS_CLIENT_CA_FILE",
    );
  });
});

describe("loadCommonConfig", () => {
  test("defaults, with the ports each service passes", () => {
    const c = loadCommonConfig({ AUTH_DISABLED: "true" }, { grpc: 1, http: 2 });
    assert.equal(c.databaseUrl, "postgres://postgres@127.0.0.1:5432/timers");
    assert.equal(c.natsUrl, "nats://127.0.0.1:4222");
    assert.equal(c.natsCredentials, undefined);
    assert.equal(c.grpcPort, 1);
    assert.equal(c.httpPort, 2);
    assert.equal(c.host, "0.0.0.0");
    assert.equal(c.shardCount, 1024);
    assert.equal(c.logLevel, "info");
    assert.equal(c.dbPoolMax, 20);
    assert.equal(c.dbStatementTimeoutMs, 10_000);
    assert.equal(c.shutdownTimeoutMs, 15_000);
    assert.equal(c.grpcMaxRequestBytes, 1024 * 1024);
    assert.equal(c.tracesEndpoint, undefined);
    assert.equal(c.tracesProtocol, "http/protobuf");
  });

  test("OTLP: the traces endpoint from the specific or the generic variable, unless tracing is off", () => {
    const base = { AUTH_DISABLED: "true" };
    const ports = { grpc: 1, http: 2 };
    const generic = { ...base, OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318/" };
    assert.equal(loadCommonConfig(generic, ports).tracesEndpoint, "http://collector:4318/v1/traces");
    assert.equal(
      loadCommonConfig({ ...generic, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://t:4318/x" }, ports)
        .tracesEndpoint,
      "http://t:4318/x",
    );
    assert.equal(
      loadCommonConfig({ ...generic, OTEL_TRACES_EXPORTER: "none" }, ports).tracesEndpoint,
      undefined,
    );
    refused(
      () => loadCommonConfig({ ...base, OTEL_EXPORTER_OTLP_ENDPOINT: "grpc://collector" }, ports),
      "OTEL_EXPORTER_OTLP_ENDPOINT",
    );
    refused(
      () => loadCommonConfig({ ...base, OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" }, ports),
      "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    );
  });
});
