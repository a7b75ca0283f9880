import http from "node:http";
import net, { type AddressInfo, type Socket } from "node:net";
import { Server as TlsServer, type TLSSocket } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  type Interceptor,
  type ServiceImplSpec,
} from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { recordingRouter, registerOnGrpcJs } from "./grpc-js-server.js";
import { databaseUnavailable } from "./db-errors.js";
import type { Logger } from "./logger.js";
import { within } from "./bounded-wait.js";
import type { TlsMaterial } from "./tls-files.js";

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
      // The cause stays on this side: it is logged above, never sent to the caller.
      throw new ConnectError("internal error", Code.Internal, undefined, undefined, err);
    }
  };
}

/** The first bytes of every HTTP/2 connection (RFC 9113 3.4); HTTP/1.1 never starts with them. */
const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/**
 * Serves on one port, plaintext or TLS when `tls` is given (client certificates required when it
 * names a client CA: mTLS):
 * - gRPC over HTTP/2 (h2c, or h2 by ALPN) from an @grpc/grpc-js server, through the same
 *   Connect interceptors and handler context as connect-node (grpc-js-server.ts): grpc-js costs
 *   a fraction of connect-node's CPU per call;
 * - HTTP/1.1 (what browsers speak) from connect-node: Connect and gRPC-Web.
 * The Connect protocol and gRPC-Web over HTTP/2 are not served (grpc-js answers them 415).
 * Each connection goes to one or the other by its first bytes (plaintext: the HTTP/2 preface)
 * or by its ALPN protocol (TLS).
 *
 * Requests larger than `maxRequestBytes` are refused with RESOURCE_EXHAUSTED by their length
 * prefix (and a Connect unary call's Content-Length), before they are buffered or decoded.
 */
export async function startGrpcServer(opts: {
  host: string;
  port: number;
  routes: (router: ConnectRouter) => void;
  interceptors: Interceptor[];
  maxRequestBytes: number;
  /** Absent or undefined: plaintext. */
  tls?: TlsMaterial | undefined;
}): Promise<GrpcServer> {
  const specs: ServiceImplSpec[] = [];
  const connectHandler = connectNodeAdapter({
    routes: (router) => opts.routes(recordingRouter(router, specs)),
    interceptors: opts.interceptors,
    readMaxBytes: opts.maxRequestBytes,
  });
  const grpcServer = new grpc.Server({
    "grpc.max_receive_message_length": opts.maxRequestBytes,
    // Node's own HTTP/2 default, which grpc-js lifts: at most 10 MB buffered per connection
    // (beyond it new streams are refused). With HTTP/2's 64 KiB flow-control window per stream,
    // a client sending faster than a handler reads is held back by HTTP/2 itself.
    "grpc-node.max_session_memory": 10,
  });
  registerOnGrpcJs(grpcServer, specs, opts.interceptors);
  const injector = grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  // Never listens: gets the HTTP/1.1 connections routed to it. A server that never listened
  // does not track its connections (closeIdleConnections does nothing), so its calls in flight
  // are counted here, per connection, for shutdown.
  const http1 = http.createServer(connectHandler);
  const http1Calls = new Map<Socket, number>();
  http1.on("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
    const sock = req.socket;
    http1Calls.set(sock, (http1Calls.get(sock) ?? 0) + 1);
    res.once("close", () => {
      const left = (http1Calls.get(sock) ?? 1) - 1;
      http1Calls.set(sock, left);
      if (left === 0 && stopping) sock.end();
    });
  });

  // Every connection, to cut what is left when in-flight calls overrun the shutdown deadline.
  const sockets = new Set<Socket>();
  // Plaintext connections that have not sent enough to be routed: no call of theirs is in
  // flight, so shutdown closes them at once.
  const unrouted = new Set<Socket>();
  let stopping = false;
  const route = (sock: Socket, h2: boolean) => {
    if (stopping) {
      sock.destroy();
      return;
    }
    if (h2) {
      injector.injectConnection(sock);
    } else {
      http1Calls.set(sock, 0);
      sock.once("close", () => http1Calls.delete(sock));
      http1.emit("connection", sock);
      // The peeked bytes wait in the paused socket's buffer: flowing again hands them to the parser.
      sock.resume();
    }
  };
  const track = (sock: Socket) => {
    sockets.add(sock);
    sock.on("close", () => {
      sockets.delete(sock);
      unrouted.delete(sock);
    });
    // A connection reset before it was routed must not crash the process.
    sock.on("error", () => {});
  };
  const tls = opts.tls;
  let server: net.Server;
  if (tls) {
    server = new TlsServer(
      {
        cert: tls.cert,
        key: tls.key,
        ALPNProtocols: ["h2", "http/1.1"],
        ...(tls.clientCa ? { ca: tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
      },
      (sock: TLSSocket) => route(sock, sock.alpnProtocol === "h2"),
    );
    server.on("connection", track);
    // A failed handshake (no or an untrusted client certificate) ends that connection only.
    server.on("tlsClientError", () => {});
  } else {
    server = net.createServer((sock) => {
      track(sock);
      unrouted.add(sock);
      peekProtocol(sock, (h2) => {
        unrouted.delete(sock);
        route(sock, h2);
      });
    });
  }
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  let closed: Promise<void> | undefined;
  /** Resolves once the listener has closed and its last connection with it (close() waits for it). */
  const closing = (): Promise<void> => {
    if (!closed) {
      stopping = true;
      // The listener's close callback runs after its last connection has closed.
      closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // GOAWAY on every HTTP/2 connection: the client opens no new call on it, the calls in
      // flight go on, and the connection ends after the last (at once when idle).
      injector.destroy();
      // HTTP/1.1: idle keep-alive connections close now, busy ones after their response.
      for (const [sock, calls] of http1Calls) if (calls === 0) sock.end();
      for (const sock of unrouted) sock.destroy();
    }
    return closed;
  };
  return {
    port,
    stopAccepting: () => {
      void closing(); // close() waits for it; the caller of stopAccepting() does not
    },
    async close(deadlineMs) {
      const done = closing();
      await within(done, deadlineMs - Date.now());
      grpcServer.forceShutdown();
      for (const sock of sockets) sock.destroy();
      await done;
    },
  };
}

/**
 * Calls `route(true)` once the socket's first bytes are the HTTP/2 preface, `route(false)` once
 * they cannot be; the bytes read are put back (unshift) for whoever reads the socket next.
 */
function peekProtocol(sock: Socket, route: (h2: boolean) => void): void {
  let seen: Buffer = Buffer.alloc(0);
  const onData = (chunk: Buffer) => {
    seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
    const n = Math.min(seen.length, H2_PREFACE.length);
    const h2 = seen.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
    if (h2 && n < H2_PREFACE.length) return; // could still be either: read on
    sock.off("data", onData);
    sock.pause();
    sock.unshift(seen);
    route(h2);
  };
  sock.on("data", onData);
}

/** A running gRPC port (startGrpcServer). */
export interface GrpcServer {
  port: number;
  /** Takes no new connection, and asks every client (HTTP/2 GOAWAY) to open no new call; calls in flight go on. */
  stopAccepting(): void;
  /** stopAccepting(), then waits for the calls in flight until `deadlineMs` (epoch ms), then cuts the connections left. */
  close(deadlineMs: number): Promise<void>;
}

/** Serves one HTTP request (connect-node's handler for a request of HTTP/1.1). */
export type RpcHandler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

/** A server a service runs besides its gRPC and HTTP ports (runService's extraServers). */
export interface ExtraServer {
  /** Takes no new connection; requests in flight go on. */
  stopAccepting(): void;
  /** stopAccepting(), then waits for the requests in flight until `deadlineMs` (epoch ms), then cuts what is left. */
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
      const ok =
        (
          await within(
            check().catch(() => false),
            CHECK_TIMEOUT_MS,
          )
        )?.value ?? false;
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
  // Never rejects: every failure is answered 500 below.
  const answer = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const path = (req.url ?? "/").split("?")[0]!;
    try {
      if (LIVE_PATHS.has(path)) return send(res, 200, { status: "alive" });
      if (READY_PATHS.has(path)) {
        const [required, optional] = await Promise.all([
          runChecks(opts.checks),
          runChecks(opts.optional ?? {}),
        ]);
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
        const db = opts.checks.postgres;
        const ok = db ? await db().catch(() => false) : false;
        return send(res, ok ? 200 : 503, { status: ok ? "ok" : "unavailable" });
      }
      for (const route of opts.extra ?? []) if (await route(req, res)) return;
      send(res, 404, { error: "not found" });
    } catch {
      if (!res.headersSent) send(res, 500, { error: "internal error" });
    }
  };
  const server = http.createServer((req, res) => void answer(req, res));
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
