// The operator console's port (CONSOLE_PORT): the built console (services/admin/console/dist,
// scripts/build-console.mjs), its /config.json, admin.v1.AdminService through the admin's own
// Connect handler (the same interceptors as the gRPC port: authentication, audit, errors,
// telemetry), and timer.v1 forwarded to the timer service (console-proxy.ts). HTTP/1.1 only,
// TLS with the service's own material when it has any.
//
// The browser authenticates every call with the operator's bearer header, kept in session
// storage: nothing here sets a cookie, so a request another site makes the browser send carries
// no credentials (no CSRF by construction). The strict Content-Security-Policy lets the page run
// only its own script and talk only to this origin.
import { readdir, readFile, stat } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { extname, join } from "node:path";
import type { Logger } from "../../shared/src/logger.js";
import type { ExtraServer } from "../../shared/src/servers.js";
import type { RpcMount } from "../../shared/src/service-runtime.js";
import { FORWARDED_SERVICES, sendConnectError, type TimerApiProxy } from "./console-proxy.js";

/** What the console must be built with when dist/ is missing. */
export const NOT_BUILT_MESSAGE = "console not built: run npm run build:console";

/** Sent with every answer. */
const SECURITY_HEADERS: Record<string, string> = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-resource-policy": "same-origin",
};

const CONTENT_TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json",
  ".json": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".woff2": "font/woff2",
};

/** /admin.v1.AdminService/<Method>: served here, by the admin's own handler. */
const ADMIN_PATH = /^\/admin\.v1\.AdminService\/[A-Za-z]+$/;
/** /<package>.<Service>/<Method>: forwarded when the service is one of FORWARDED_SERVICES. */
const RPC_PATH = /^\/([a-z0-9]+\.v1\.[A-Za-z]+)\/[A-Za-z]+$/;

/** A running console port. */
export interface ConsoleServer extends ExtraServer {
  port: number;
  url: string;
}

/** Starts the console's port; a missing dist/ is logged and answered 503 until it is built. */
export async function startConsoleServer(opts: {
  host: string;
  port: number;
  /** services/admin/console/dist */
  distDir: string;
  rpc: RpcMount;
  proxy: TimerApiProxy;
  /** What GET /config.json answers: nothing secret. */
  publicConfig: { jaegerUiUrl: string | null; version: string };
  log: Logger;
}): Promise<ConsoleServer> {
  const { log } = opts;
  const scheme = opts.rpc.tls ? "https" : "http";
  if (!(await builtFiles(opts.distDir))) {
    log.warn({ dist: opts.distDir }, `${NOT_BUILT_MESSAGE} (the console answers 503 until then)`);
  }
  const configBody = JSON.stringify(opts.publicConfig);

  const answer = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) res.setHeader(name, value);
    // Static files below may be cached (and revalidated); nothing else.
    res.setHeader("cache-control", "no-store");
    const method = req.method ?? "GET";
    // The path as sent, never decoded or normalized: "/%2e%2e/x" and "/../x" match no route or file.
    const path = (req.url ?? "/").split("?")[0]!;

    const admin = ADMIN_PATH.test(path);
    const service = RPC_PATH.exec(path)?.[1];
    const forwarded = !admin && service !== undefined && FORWARDED_SERVICES.has(service);
    if (admin || forwarded) {
      if (method !== "POST") return refuseMethod(res, "POST");
      if (!sameOrigin(req, scheme)) {
        return sendConnectError(res, 403, "permission_denied", "cross-origin requests are refused");
      }
      if (admin) return opts.rpc.handler(req, res);
      return opts.proxy.forward(req, res, path);
    }
    if (path === "/config.json") {
      if (method !== "GET" && method !== "HEAD") return refuseMethod(res, "GET, HEAD");
      res.writeHead(200, {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(configBody),
      });
      res.end(method === "HEAD" ? undefined : configBody);
      return;
    }
    const files = await builtFiles(opts.distDir);
    const name = path === "/" ? "index.html" : path.slice(1);
    if (!files) return sendText(res, 503, NOT_BUILT_MESSAGE);
    // Only names of the directory listing: nothing outside dist/ can be named.
    if (!files.has(name)) return sendText(res, 404, "not found");
    if (method !== "GET" && method !== "HEAD") return refuseMethod(res, "GET, HEAD");
    return sendFile(req, res, join(opts.distDir, name), method === "HEAD");
  };

  const handle = (req: http.IncomingMessage, res: http.ServerResponse) => {
    answer(req, res).catch((err: unknown) => {
      log.error({ err, path: req.url }, "console: request failed");
      if (!res.headersSent) sendText(res, 500, "internal error");
      else res.destroy();
    });
  };
  const tls = opts.rpc.tls;
  // ALPN offers only http/1.1: a browser never negotiates HTTP/2, which this port does not serve.
  const server = tls
    ? https.createServer(
        {
          cert: tls.cert,
          key: tls.key,
          ALPNProtocols: ["http/1.1"],
          // As on the gRPC port: with mTLS, the browser presents a client certificate too.
          ...(tls.clientCa ? { ca: tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
        },
        handle,
      )
    : http.createServer(handle);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(opts.port, opts.host, () => resolve());
    });
  } catch (err) {
    throw new Error(
      `the console cannot listen on ${displayHost(opts.host)}:${opts.port} (CONSOLE_PORT, CONSOLE_HOST; CONSOLE_ENABLED=false turns it off): ${(err as Error).message}`,
      { cause: err },
    );
  }
  server.on("error", (err) => log.error({ err }, "console: server error"));
  const port = (server.address() as AddressInfo).port;
  const url = `${scheme}://${displayHost(opts.host)}:${port}/`;
  log.info({ console_port: port, dist: opts.distDir }, `console at ${url}`);

  let closed: Promise<void> | undefined;
  const closing = (): Promise<void> => {
    // The close callback runs once the last connection has closed; idle keep-alive ones go now,
    // busy ones after their answer (Node closes a connection whose server is closing).
    closed ??= new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeIdleConnections();
    });
    return closed;
  };
  return {
    port,
    url,
    stopAccepting: () => void closing(),
    async close(deadlineMs) {
      const done = closing();
      const cut = setTimeout(() => server.closeAllConnections(), Math.max(0, deadlineMs - Date.now()));
      await done;
      clearTimeout(cut);
      await opts.proxy.close();
    },
  };
}

/** The names of the files in dist/, or undefined when it does not exist (not built). */
async function builtFiles(dir: string): Promise<Set<string> | undefined> {
  try {
    const entries = await readdir(dir, { withFileTypes: true });
    const names = new Set(entries.filter((e) => e.isFile()).map((e) => e.name));
    return names.has("index.html") ? names : undefined;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new Error(`cannot list the console's files in ${dir}`, { cause: err });
  }
}

/**
 * Whether a request is this server's own page's: no Origin header (not a browser's cross-origin
 * request), or one equal to scheme://Host. The bearer header already rules out CSRF; this keeps
 * other sites' pages from even trying with a token they somehow hold.
 */
function sameOrigin(req: http.IncomingMessage, scheme: string): boolean {
  const origin = req.headers.origin;
  if (origin === undefined) return true;
  return req.headers.host !== undefined && origin === `${scheme}://${req.headers.host}`;
}

async function sendFile(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  file: string,
  headOnly: boolean,
): Promise<void> {
  const info = await stat(file);
  const etag = `"${info.size.toString(16)}-${Math.trunc(info.mtimeMs).toString(16)}"`;
  const type = CONTENT_TYPES[extname(file)] ?? "application/octet-stream";
  // The page is never stored: it names the script, which a new build replaces. The assets may
  // be kept, but are checked again each time (their names carry no content hash).
  res.setHeader("cache-control", type.startsWith("text/html") ? "no-store" : "no-cache");
  res.setHeader("etag", etag);
  if (req.headers["if-none-match"] === etag) {
    res.writeHead(304);
    res.end();
    return;
  }
  const body = headOnly ? undefined : await readFile(file);
  res.writeHead(200, { "content-type": type, "content-length": info.size });
  res.end(body);
}

function refuseMethod(res: http.ServerResponse, allow: string): void {
  res.setHeader("allow", allow);
  sendText(res, 405, "method not allowed");
}

function sendText(res: http.ServerResponse, status: number, text: string): void {
  res.writeHead(status, {
    "content-type": "text/plain; charset=utf-8",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

/** The host part of the console's URL as the log shows it ([::1] for IPv6). */
function displayHost(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}
