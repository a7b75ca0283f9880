// The console's way to timer.v1: its TimerService and ScheduleService calls, made by the browser
// to the console's own origin (the CSP allows no other), are forwarded to the timer service
// (TIMER_API_URL) as they are, with the operator's bearer token. The timer service authorizes
// and audits them like any caller's: a group token sees only its groups there too. Only what a
// Connect unary call needs goes either way; no cookie, no other header, no other service.
import type http from "node:http";
import { Agent, request } from "undici";
import type { Logger } from "../../shared/src/logger.js";
import { readPemFile } from "../../shared/src/tls-files.js";
import type { AdminConfig } from "./config.js";

/** The services of timer.v1 the console calls; TimerCallbackService (what receivers serve) is not one. */
export const FORWARDED_SERVICES = new Set(["timer.v1.TimerService", "timer.v1.ScheduleService"]);

/** Request headers a Connect unary call needs; every other one (cookies above all) stays here. */
const REQUEST_HEADERS = [
  "content-type",
  "connect-protocol-version",
  "connect-timeout-ms",
  "authorization",
  "traceparent",
] as const;

/** Response headers passed back besides the Connect ones (connect-*, trailer-*, grpc-*). */
const RESPONSE_HEADERS = new Set(["content-type", "content-length", "content-encoding"]);
const CONNECT_RESPONSE_HEADER = /^(connect-|trailer-|grpc-)/;

/** TLS towards an https TIMER_API_URL. */
export interface TimerApiTls {
  /** TIMER_API_CA_FILE (or DISPATCHER_TLS_CA_FILE); undefined: the system's CAs. */
  ca?: Buffer;
  /** TLS_CERT_FILE and TLS_KEY_FILE, presented to a timer service that requires mTLS. */
  cert?: Buffer;
  key?: Buffer;
}

/** The TLS material for an https TIMER_API_URL; undefined for http. */
export async function timerApiTls(config: AdminConfig): Promise<TimerApiTls | undefined> {
  const settings = config.console;
  if (!settings?.timerApiUrl.startsWith("https:")) return undefined;
  const tls: TimerApiTls = {};
  // The mesh's own CA unless the timer service's certificate comes from another one.
  if (settings.timerApiCaFile) tls.ca = await readPemFile("TIMER_API_CA_FILE", settings.timerApiCaFile);
  else if (config.dispatcherTlsCaFile)
    tls.ca = await readPemFile("DISPATCHER_TLS_CA_FILE", config.dispatcherTlsCaFile);
  const own = config.security.tls;
  if (own) {
    tls.cert = await readPemFile("TLS_CERT_FILE", own.certFile);
    tls.key = await readPemFile("TLS_KEY_FILE", own.keyFile);
  }
  return tls;
}

/** Forwards the console's timer.v1 calls to the timer service. */
export class TimerApiProxy {
  private readonly agent: Agent;

  constructor(
    private readonly opts: {
      /** TIMER_API_URL, without a trailing slash. */
      url: string;
      tls: TimerApiTls | undefined;
      /** GRPC_MAX_REQUEST_BYTES: larger request bodies are refused here, before they are forwarded. */
      maxRequestBytes: number;
      log: Logger;
    },
  ) {
    // HTTP/1.1 (undici's default): the timer service's port serves the Connect protocol over it.
    this.agent = new Agent({ connect: { ...opts.tls } });
  }

  /** Forwards one call, `path` being /<service>/<method>; never rejects (failures are answered). */
  async forward(req: http.IncomingMessage, res: http.ServerResponse, path: string): Promise<void> {
    const declared = Number(req.headers["content-length"] ?? 0);
    if (declared > this.opts.maxRequestBytes) return this.tooLarge(req, res);
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of req as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > this.opts.maxRequestBytes) return this.tooLarge(req, res);
        chunks.push(chunk);
      }
    } catch {
      res.destroy(); // the browser went away mid-request: nobody to answer
      return;
    }
    const headers: Record<string, string> = {};
    for (const name of REQUEST_HEADERS) {
      const value = req.headers[name];
      if (typeof value === "string") headers[name] = value;
    }
    // The call ends when the browser goes away: the timer service stops working on it too.
    const gone = new AbortController();
    res.once("close", () => gone.abort());
    try {
      const answer = await request(`${this.opts.url}${path}`, {
        dispatcher: this.agent,
        method: "POST",
        headers,
        body: Buffer.concat(chunks),
        signal: gone.signal,
      });
      const passed: Record<string, string | string[]> = {};
      for (const [name, value] of Object.entries(answer.headers)) {
        if (value !== undefined && (RESPONSE_HEADERS.has(name) || CONNECT_RESPONSE_HEADER.test(name)))
          passed[name] = value;
      }
      res.writeHead(answer.statusCode, passed);
      for await (const chunk of answer.body as AsyncIterable<Buffer>) res.write(chunk);
      res.end();
    } catch (err) {
      if (gone.signal.aborted) return;
      this.opts.log.warn(
        { err, rpc: path, timer_api: this.opts.url },
        "console: forwarding to the timer service failed",
      );
      if (res.headersSent) {
        res.destroy();
        return;
      }
      // A Connect error the console shows as it is; the cause stays in the log.
      sendConnectError(
        res,
        503,
        "unavailable",
        "the timer service (TIMER_API_URL) cannot be reached; retry later",
      );
    }
  }

  /** Closes the connections to the timer service. */
  async close(): Promise<void> {
    await this.agent.close();
  }

  private tooLarge(req: http.IncomingMessage, res: http.ServerResponse): void {
    sendConnectError(
      res,
      429,
      "resource_exhausted",
      `request larger than ${this.opts.maxRequestBytes} bytes`,
    );
    // What is left of the body is not read: the connection goes with the answer.
    res.once("finish", () => req.destroy());
  }
}

/** A Connect protocol error (the JSON body and HTTP status of a unary call's error). */
export function sendConnectError(
  res: http.ServerResponse,
  status: number,
  code: string,
  message: string,
): void {
  const body = JSON.stringify({ code, message });
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}
