import { readFile } from "node:fs/promises";
import http from "node:http";
import http2 from "node:http2";
import type { AddressInfo, Socket } from "node:net";
import { Code, ConnectError, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { databaseUnavailable } from "./db-errors.js";
import type { Logger } from "./logger.js";
import { within } from "./bounded-wait.js";

/**
 * Turns an unexpected error into INTERNAL without its text (which may carry SQL or hosts), or
 * into UNAVAILABLE when the database is unreachable or timed out (db-errors.ts: the caller should
 * retry), and logs it with its cause. ConnectErrors thrown on purpose pass through unchanged.
 */
export function errorInterceptor(log: Logger): Interceptor {
  return (next) => async (req) => {
    try {
      return await next(req);
    } catch (err) {
      if (err instanceof ConnectError) {
        if (err.code === Code.Internal || err.code === Code.Unknown) {
          log.error({ err, rpc: req.url }, "rpc failed");
        }
        throw err;
      }
      const unavailable = databaseUnavailable(err);
      if (unavailable) {
        // Expected while Postgres is down or slow; the caller is told to retry.
        log.warn({ err, rpc: req.url }, "rpc failed: database unavailable");
        throw unavailable;
      }
      log.error({ err, rpc: req.url }, "rpc failed");
      throw new ConnectError("internal error", Code.Internal);
    }
  };
}

/** PEM material of a TLS gRPC port; with clientCa, clients must present a certificate it signed. */
export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  clientCa?: Buffer;
}

/** Reads the PEM files named by TLS_CERT_FILE, TLS_KEY_FILE and TLS_CLIENT_CA_FILE. */
export async function readTlsMaterial(files: { certFile: string; keyFile: string; clientCaFile: string | undefined }): Promise<TlsMaterial> {
  const read = (variable: string, path: string) =>
    readFile(path).catch((err: Error) => {
      throw new Error(`${variable}: cannot read ${path}: ${err.message}`);
    });
  return {
    cert: await read("TLS_CERT_FILE", files.certFile),
    key: await read("TLS_KEY_FILE", files.keyFile),
    clientCa: files.clientCaFile ? await read("TLS_CLIENT_CA_FILE", files.clientCaFile) : undefined,
  };
}

/**
 * Serves gRPC, gRPC-Web and Connect on one HTTP/2 port: plaintext (h2c), or TLS when `tls` is
 * given (HTTP/1.1 allowed too, for gRPC-Web and Connect), with client certificates required
 * when it names a client CA (mTLS). Requests larger than `maxRequestBytes` are refused with
 * RESOURCE_EXHAUSTED before decoding. Node's own HTTP/2 limits stay at their defaults, which
 * are sane for this: at most 10 MB of buffered data per session (maxSessionMemory; beyond it new
 * streams are refused), 64 KiB of headers per request, and a 64 KiB flow-control window per
 * stream, so a client sending faster than a handler reads is held back by HTTP/2 itself.
 */
export async function startGrpcServer(opts: {
  host: string;
  port: number;
  routes: (router: ConnectRouter) => void;
  interceptors: Interceptor[];
  maxRequestBytes: number;
  tls?: TlsMaterial;
}): Promise<GrpcServer> {
  // readMaxBytes is checked against each message's length prefix (and a Connect unary call's
  // Content-Length) before the message is buffered or decoded: an oversized request costs a
  // few kilobytes of reading, then RESOURCE_EXHAUSTED naming the limit.
  const handler = connectNodeAdapter({ routes: opts.routes, interceptors: opts.interceptors, readMaxBytes: opts.maxRequestBytes });
  const tls = opts.tls;
  const server: http2.Http2Server | http2.Http2SecureServer = tls
    ? http2.createSecureServer(
        {
          cert: tls.cert,
          key: tls.key,
          allowHTTP1: true,
          ...(tls.clientCa ? { ca: tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
        },
        handler,
      )
    : http2.createServer(handler);
  // Sessions, to ask each to stop opening streams at shutdown; sockets, to cut what is left
  // (HTTP/1.1 connections of a TLS port too) when in-flight calls overrun.
  const sessions = new Set<http2.Http2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  const sockets = new Set<Socket>();
  server.on("connection", (sock: Socket) => {
    sockets.add(sock);
    sock.on("close", () => sockets.delete(sock));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  let closed: Promise<void> | undefined;
  /** Resolves once the server has closed (after its last connection). */
  const stopAccepting = (): Promise<void> => {
    closed ??= new Promise<void>((resolve) => server.close(() => resolve()));
    // GOAWAY: the client opens no new stream on the session, the streams in flight go on, and
    // the session ends after the last (at once when idle).
    for (const s of sessions) s.close();
    return closed;
  };
  return {
    server,
    port,
    stopAccepting,
    async close(deadlineMs) {
      const done = stopAccepting();
      await within(done, deadlineMs - Date.now());
      for (const s of sessions) s.destroy();
      for (const sock of sockets) sock.destroy();
      await done;
    },
  };
}

/** A running gRPC port (startGrpcServer). */
export interface GrpcServer {
  server: http2.Http2Server | http2.Http2SecureServer;
  port: number;
  /** Takes no new connection, and asks every client (HTTP/2 GOAWAY) to open no new call; calls in flight go on. */
  stopAccepting(): void;
  /** stopAccepting(), then waits for the calls in flight until `deadlineMs` (epoch ms), then cuts the connections left. */
  close(deadlineMs: number): Promise<void>;
}

/** A named readiness check; resolves true when the dependency is usable. */
export type Check = () => Promise<boolean>;

// A check that has not answered within this counts as failed: a probe must answer in time.
const CHECK_TIMEOUT_MS = 2_000;

/** Runs every check at once; one that fails, throws or takes longer than 2 s is false. */
export async function runChecks(checks: Record<string, Check>): Promise<Record<string, boolean>> {
  const entries = await Promise.all(
    Object.entries(checks).map(async ([name, check]) => {
      const ok = (await within(check().catch(() => false), CHECK_TIMEOUT_MS))?.value ?? false;
      return [name, ok] as const;
    }),
  );
  return Object.fromEntries(entries);
}

/** What the HTTP port serves besides health: /metrics, and anything a service adds. */
export type ExtraRoute = (req: http.IncomingMessage, res: http.ServerResponse) => boolean | Promise<boolean>;

/** The paths of the HTTP port's health answers; the /health/* aliases are the operations documents' names. */
const LIVE_PATHS = new Set(["/healthz", "/health/live"]);
const READY_PATHS = new Set(["/readyz", "/health/ready", "/health"]);

/**
 * Serves /healthz and /health/live (the process is alive), /readyz and /health/ready (every
 * check passes), /health (the same JSON summary), /health/db, and the extra routes (metrics) on
 * the plain HTTP port. `optional` checks are reported but do not make the service unready;
 * while `stopping()`, it is not ready.
 */
export async function startHttpServer(opts: {
  host: string;
  port: number;
  service: string;
  checks: Record<string, Check>;
  optional?: Record<string, Check>;
  stopping?: () => boolean;
  extra?: ExtraRoute[];
}): Promise<{ server: http.Server; port: number; close(deadlineMs: number): Promise<void> }> {
  const server = http.createServer(async (req, res) => {
    const path = (req.url ?? "/").split("?")[0]!;
    try {
      if (LIVE_PATHS.has(path)) return send(res, 200, { status: "alive" });
      if (READY_PATHS.has(path)) {
        const [required, optional] = await Promise.all([runChecks(opts.checks), runChecks(opts.optional ?? {})]);
        const stopping = opts.stopping?.() ?? false;
        const ok = !stopping && Object.values(required).every(Boolean);
        return send(res, ok ? 200 : 503, {
          status: stopping ? "stopping" : ok ? "ready" : "not ready",
          service: opts.service,
          checks: { ...required, ...optional },
          ...(opts.optional ? { optional: Object.keys(opts.optional) } : {}),
        });
      }
      if (path === "/health/db") {
        const db = opts.checks["postgres"];
        const ok = db ? await db().catch(() => false) : false;
        return send(res, ok ? 200 : 503, { status: ok ? "ok" : "unavailable" });
      }
      for (const route of opts.extra ?? []) if (await route(req, res)) return;
      send(res, 404, { error: "not found" });
    } catch {
      if (!res.headersSent) send(res, 500, { error: "internal error" });
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  return {
    server,
    port: (server.address() as AddressInfo).port,
    // Idle keep-alive connections close at once (Node 19+); a request in flight (a scrape) until the deadline.
    close: (deadlineMs) =>
      new Promise<void>((resolve) => {
        const cut = setTimeout(() => server.closeAllConnections(), Math.max(0, deadlineMs - Date.now()));
        server.close(() => {
          clearTimeout(cut);
          resolve();
        });
      }),
  };
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}
