// The HTTP client of callback delivery: undici keep-alive pools, one per origin and set of
// vetted addresses, driven through undici's low-level dispatch API (no response stream, no
// AbortSignal, one handler object per attempt).
//
// Egress: a pool's connections are made only to the addresses its key names (a pinned
// `lookup`), and an attempt is sent only through the pool of the addresses vetted for it,
// so a connection opened for an earlier answer never carries a request whose own vetting
// did not include that address. TLS verifies the certificate against the host NAME of the URL
// (SNI and checkServerIdentity), never against the pinned address.
//
// Pipelining is off by default (one request at a time per connection, many connections): a
// POST is not idempotent, and with several requests in the pipe a connection that fails fails
// all of them, possibly after the receiver processed some (a retry it sees as a duplicate),
// and one slow answer holds back every request queued behind it on that connection (late
// timers for a healthy receiver). With `pipelining` > 1 requests are marked idempotent, which
// is what lets undici pipeline them: each carries an Idempotency-Key, and deliveries are
// at-least-once anyway, so this is an operator's choice for receivers known to handle it.
import type { LookupFunction } from "node:net";
import { Pool, type Dispatcher } from "undici";
import type { HostAddress } from "../../shared/src/egress.js";
import type { DeliveryResult } from "./delivery.js";

/** Settings of the HTTP callback client. */
export interface HttpCallbackOptions {
  /** Bound on one attempt, from dispatch to the status line (queueing for a connection included). */
  timeoutMs: number;
  /** Most connections to one origin (at one set of vetted addresses). */
  connectionsPerOrigin: number;
  /** Requests in flight on one connection; 1 (the default) turns pipelining off. */
  pipelining?: number;
  /** Certificate authorities trusted for https callbacks, replacing Node's bundled ones (tests, private PKI). */
  ca?: string | Buffer | (string | Buffer)[];
}

/** What one request sends; `headers` is a flat [name, value, name, value, ...] list. */
export interface HttpCallbackRequest {
  url: ParsedCallbackUrl;
  vetted: HostAddress[];
  headers: string[];
  body: Uint8Array;
}

/** A callback URL, parsed once and kept (callback URLs repeat: one per receiver, not per timer). */
export interface ParsedCallbackUrl {
  origin: string;
  /** Path and query, as sent in the request line. */
  path: string;
  hostname: string;
  https: boolean;
}

/** Response bytes read (and dropped) to keep a connection reusable; a longer body closes the connection instead. */
export const MAX_DRAINED_BODY_BYTES = 64 * 1024;
/** Pools kept at most: pools for addresses a name no longer resolves to are closed, oldest first. */
const MAX_POOLS = 1024;
const MAX_PARSED_URLS = 10_000;

/** Delivers HTTP callbacks over pooled keep-alive connections. */
export class HttpCallbackClient {
  private readonly pools = new Map<string, Pool>();
  private readonly urls = new Map<string, ParsedCallbackUrl | string>();

  constructor(private readonly opts: HttpCallbackOptions) {}

  /**
   * The URL parsed, or why it cannot be a callback URL (a string). Cached per URL text, so the
   * WHATWG parser runs once per receiver, not once per attempt.
   */
  parse(url: string): ParsedCallbackUrl | string {
    let parsed = this.urls.get(url);
    if (parsed === undefined) {
      const u = new URL(url);
      parsed =
        u.protocol === "https:" || u.protocol === "http:"
          ? {
              origin: u.origin,
              path: `${u.pathname}${u.search}`,
              hostname: u.hostname,
              https: u.protocol === "https:",
            }
          : `callback URL scheme ${u.protocol} is not http or https`;
      if (this.urls.size >= MAX_PARSED_URLS) this.urls.clear();
      this.urls.set(url, parsed);
    }
    return parsed;
  }

  /** Sends one POST; resolves with what it came to, never rejects. */
  post(req: HttpCallbackRequest, deadlineMs: number): Promise<DeliveryResult> {
    return new Promise<DeliveryResult>((resolve) => {
      const attempt = new HttpAttempt(resolve, this.opts.timeoutMs, deadlineMs);
      this.poolFor(req.url, req.vetted).dispatch(
        {
          path: req.url.path,
          method: "POST",
          headers: req.headers,
          body: req.body,
          // What allows undici to pipeline a POST (see the top of the file); off unless configured.
          idempotent: (this.opts.pipelining ?? 1) > 1,
          headersTimeout: this.opts.timeoutMs,
          bodyTimeout: this.opts.timeoutMs,
        },
        attempt,
      );
    });
  }

  private poolFor(url: ParsedCallbackUrl, vetted: HostAddress[]): Pool {
    const key =
      vetted.length === 1
        ? `${url.origin} ${vetted[0]!.address}`
        : `${url.origin} ${vetted.map((v) => v.address).join(",")}`;
    let pool = this.pools.get(key);
    if (pool) return pool;
    if (this.pools.size >= MAX_POOLS) {
      const [oldestKey, oldest] = this.pools.entries().next().value as [string, Pool];
      this.pools.delete(oldestKey);
      void oldest.close().catch(() => {});
    }
    pool = new Pool(url.origin, {
      connections: this.opts.connectionsPerOrigin,
      pipelining: this.opts.pipelining ?? 1,
      connect: {
        // The socket goes to a vetted address; TLS still checks the certificate against the name.
        lookup: pinnedLookup(vetted),
        autoSelectFamily: true,
        timeout: this.opts.timeoutMs,
        ...(this.opts.ca ? { ca: this.opts.ca } : {}),
      },
    });
    this.pools.set(key, pool);
    return pool;
  }

  /** Closes every pooled connection (attempts in flight fail). */
  async close(): Promise<void> {
    const pools = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(pools.map((p) => p.destroy().catch(() => {})));
  }
}

/**
 * One attempt, as undici's dispatch handler. The status decides the outcome as soon as the
 * status line and headers are in (redirects are not followed: a 3xx fails like a 4xx); the body
 * is then read and dropped, up to MAX_DRAINED_BODY_BYTES, so the connection can carry the next
 * request. A longer or slower body closes the connection instead, without changing the outcome.
 */
export class HttpAttempt implements Dispatcher.DispatchHandlers {
  private abortRequest: ((err?: Error) => void) | undefined;
  private settled = false;
  /** Whole-attempt bound: queueing for a connection, connecting, sending, and the headers. */
  private readonly deadline: NodeJS.Timeout;
  private drained = 0;

  constructor(
    private readonly resolve: (r: DeliveryResult) => void,
    private readonly timeoutMs: number,
    deadlineMs: number,
  ) {
    this.deadline = setTimeout(() => this.expire(), Math.max(0, deadlineMs - Date.now()));
  }

  private expire(): void {
    const err = new Error(`timed out after ${this.timeoutMs}ms`);
    this.finish({ ok: false, retryable: true, error: err.message });
    // Still queued for a connection: it is aborted when it gets one (onConnect), before a byte is sent.
    this.abortRequest?.(err);
  }

  private finish(r: DeliveryResult): void {
    if (this.settled) return;
    this.settled = true;
    this.resolve(r);
  }

  onConnect(abort: (err?: Error) => void): void {
    if (this.settled) {
      abort(new Error(`timed out after ${this.timeoutMs}ms`));
      return;
    }
    this.abortRequest = abort;
  }

  onHeaders(statusCode: number): boolean {
    if (statusCode < 200) return true; // 1xx informational: the final status follows
    this.finish(classifyHttp(statusCode));
    return true;
  }

  onData(chunk: Buffer): boolean {
    this.drained += chunk.length;
    if (this.drained > MAX_DRAINED_BODY_BYTES) {
      clearTimeout(this.deadline);
      this.abortRequest?.(new Error(`response body over ${MAX_DRAINED_BODY_BYTES} bytes; connection closed`));
    }
    return true;
  }

  onComplete(): void {
    clearTimeout(this.deadline);
    this.finish({ ok: false, retryable: true, error: "response ended without a status" });
  }

  onError(err: Error): void {
    clearTimeout(this.deadline);
    this.finish({ ok: false, retryable: true, error: describe(err) });
  }
}

/** 2xx succeeds; 408, 429 and 5xx are retried; any other status fails the timer at once. */
export function classifyHttp(status: number): DeliveryResult {
  if (status >= 200 && status < 300) return { ok: true };
  const retryable = status === 408 || status === 429 || status >= 500;
  return { ok: false, retryable, error: `HTTP ${status}` };
}

/** A `lookup` that answers every query with the vetted addresses (all of them, for happy eyeballs). */
export function pinnedLookup(vetted: HostAddress[]): LookupFunction {
  const all = vetted.map((v) => ({ address: v.address, family: v.family }));
  return (_hostname, options, callback) => {
    if (options.all) callback(null, all);
    else callback(null, vetted[0]!.address, vetted[0]!.family);
  };
}

/** An error as a one-line message for last_error: its code (ECONNRESET...) first when the message lacks it. */
export function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: string }).code;
    return code && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}
