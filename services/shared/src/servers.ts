import { readFile } from "node:fs/promises";
import http from "node:http";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Logger } from "./logger.js";

/**
 * Turns an unexpected error into INTERNAL without its text (which may carry SQL or hosts), and
 * logs it with its cause. ConnectErrors thrown on purpose pass through unchanged.
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
      log.error({ err, rpc: req.url }, "rpc failed");
      if (isUnavailable(err)) throw new ConnectError("database unavailable, retry later", Code.Unavailable);
      throw new ConnectError("internal error", Code.Internal);
    }
  };
}

function isUnavailable(err: unknown): boolean {
  const code = (err as { code?: string } | null)?.code;
  return code === "ECONNREFUSED" || code === "57P01" || code === "53300" || /timeout exceeded when trying to connect/i.test(String((err as Error)?.message));
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
}): Promise<{ server: http2.Http2Server | http2.Http2SecureServer; port: number; close(): Promise<void> }> {
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
  const sessions = new Set<http2.Http2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Let in-flight calls finish, then end idle sessions so close() can complete.
        for (const s of sessions) s.close();
      }),
  };
}

/** A named readiness check; resolves true when the dependency is usable. */
export type Check = () => Promise<boolean>;

/** What the HTTP port serves besides health: /metrics, and anything a service adds. */
export type ExtraRoute = (req: http.IncomingMessage, res: http.ServerResponse) => boolean | Promise<boolean>;

/**
 * Serves /healthz (the process is alive), /readyz (every check passes), /health (JSON summary),
 * /health/db, and the extra routes (metrics) on the plain HTTP port.
 */
export async function startHttpServer(opts: {
  host: string;
  port: number;
  service: string;
  checks: Record<string, Check>;
  extra?: ExtraRoute[];
}): Promise<{ server: http.Server; port: number; close(): Promise<void> }> {
  const runChecks = async (): Promise<Record<string, boolean>> => {
    const entries = await Promise.all(
      Object.entries(opts.checks).map(async ([name, check]) => {
        const ok = await Promise.race([
          check().catch(() => false),
          new Promise<boolean>((r) => setTimeout(() => r(false), 2_000).unref()),
        ]);
        return [name, ok] as const;
      }),
    );
    return Object.fromEntries(entries);
  };
  const server = http.createServer(async (req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    try {
      if (path === "/healthz") return send(res, 200, { status: "alive" });
      if (path === "/readyz" || path === "/health") {
        const checks = await runChecks();
        const ok = Object.values(checks).every(Boolean);
        return send(res, ok ? 200 : 503, { status: ok ? "ready" : "not ready", service: opts.service, checks });
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
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}
