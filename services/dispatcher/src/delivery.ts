// Callback delivery over HTTP, NATS (core and JetStream) and gRPC. Each attempt ends in
// success, a retryable failure, or a permanent one; the decision is made here, where the
// error is seen.
//
// Egress: an HTTP or gRPC callback host is resolved here, every address it resolves to is
// checked against the egress policy, and the connection goes only to the addresses that were
// checked (the HTTP socket through a pinned `lookup`, the gRPC channel on an `ipv4:`/`ipv6:`
// target), so a second DNS answer cannot redirect it (DNS rebinding). A refused callback fails for good,
// before any packet is sent, so last_error never tells whether a refused address would answer.
// NATS callbacks on subjects reserved for the mesh fail for good too.
import http from "node:http";
import https from "node:https";
import type { LookupFunction } from "node:net";
import { toBinary, fromBinary, create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { within } from "../../shared/src/bounded-wait.js";
import type { NatsLink } from "../../shared/src/nats.js";
import { jetstream, type JetStreamClient } from "@nats-io/jetstream";
import {
  OnTimerFiredRequestSchema,
  OnTimerFiredResponseSchema,
  type Callback,
  type OnTimerFiredResponse,
} from "../../shared/src/gen/timer/v1/timer_pb.js";
import {
  EgressRefused,
  cachingResolver,
  parseCallbackHost,
  parseGrpcTarget,
  systemResolver,
  type EgressPolicy,
  type Resolver,
  type HostAddress,
} from "../../shared/src/egress.js";
import type { TenantSubjects } from "../../shared/src/tenant-subjects.js";

/** One delivery attempt of one timer. */
export interface Delivery {
  groupId: string;
  timerId: string;
  fireAtMs: number;
  attempt: number;
  payload: Uint8Array;
  labels: Record<string, string>;
  callback: Callback;
  idempotencyKey: string;
  traceparent: string;
}

/** What an attempt came to. */
export type DeliveryResult = { ok: true } | { ok: false; retryable: boolean; error: string };

/** What a CallbackDeliverer needs. */
export interface DelivererOptions {
  /**
   * The connection tenant NATS callbacks are published on (a NatsLink): `ifConnected()` gives it
   * only while it is connected.
   */
  nats: Pick<NatsLink, "ifConnected">;
  /** Bound on one attempt, name resolution included. */
  timeoutMs: number;
  maxSockets: number;
  egress: EgressPolicy;
  tenantSubjects: TenantSubjects;
  /** How callback host names are resolved; the system resolver (cached 1 s) unless a test injects a stub. */
  resolve?: Resolver;
}

/** Delivers callbacks; one per dispatcher process, holding connection pools and clients. */
export class CallbackDeliverer {
  private readonly httpAgent: http.Agent;
  private readonly httpsAgent: https.Agent;
  /** Keyed by vetted address and authority: a name that resolves elsewhere gets its own channel. */
  private readonly grpcClients = new Map<string, grpc.Client>();
  private readonly nats: Pick<NatsLink, "ifConnected">;
  /** JetStream over the callbacks connection, made at the first JetStream callback. */
  private js: JetStreamClient | undefined;
  private readonly timeoutMs: number;
  private readonly egress: EgressPolicy;
  private readonly tenantSubjects: TenantSubjects;
  private readonly resolve: Resolver;

  constructor(opts: DelivererOptions) {
    this.nats = opts.nats;
    this.timeoutMs = opts.timeoutMs;
    this.egress = opts.egress;
    this.tenantSubjects = opts.tenantSubjects;
    this.resolve = opts.resolve ?? cachingResolver(systemResolver, 1_000);
    this.httpAgent = new http.Agent({ keepAlive: true, maxSockets: opts.maxSockets, maxFreeSockets: 256 });
    this.httpsAgent = new https.Agent({ keepAlive: true, maxSockets: opts.maxSockets, maxFreeSockets: 256 });
  }

  /** Makes one delivery attempt. Never throws. */
  async deliver(d: Delivery): Promise<DeliveryResult> {
    try {
      switch (d.callback.target.case) {
        case "http":
          return await this.deliverHttp(d, d.callback.target.value.url, d.callback.target.value.headers);
        case "nats":
          return await this.deliverNats(d, d.callback.target.value.subject, d.callback.target.value.jetstream);
        case "grpc":
          return await this.deliverGrpc(d, d.callback.target.value.target);
        default:
          return { ok: false, retryable: false, error: "timer has no callback target" };
      }
    } catch (err) {
      if (err instanceof EgressRefused) return { ok: false, retryable: false, error: err.message };
      return { ok: false, retryable: true, error: describe(err) };
    }
  }

  /**
   * The addresses a callback host may be connected to for this attempt; throws EgressRefused.
   * Resolution counts against the attempt's time, like connecting does.
   */
  private async vet(host: string, deadlineMs: number): Promise<HostAddress[]> {
    const vetted = await within(this.egress.vet(parseCallbackHost(host), this.resolve), deadlineMs - Date.now());
    if (!vetted) throw new Error(`resolving ${host} timed out after ${this.timeoutMs}ms`);
    return vetted.value;
  }

  private standardHeaders(d: Delivery): Record<string, string> {
    return {
      "x-timer-group": d.groupId,
      "x-timer-id": d.timerId,
      "x-timer-attempt": String(d.attempt),
      "x-timer-fire-at": new Date(d.fireAtMs).toISOString(),
      "idempotency-key": d.idempotencyKey,
      traceparent: d.traceparent,
    };
  }

  private async deliverHttp(d: Delivery, url: string, own: Record<string, string>): Promise<DeliveryResult> {
    const deadlineMs = Date.now() + this.timeoutMs;
    const target = new URL(url);
    const isHttps = target.protocol === "https:";
    if (!isHttps && target.protocol !== "http:") return { ok: false, retryable: false, error: `callback URL scheme ${target.protocol} is not http or https` };
    const vetted = await this.vet(target.hostname, deadlineMs);
    const body = Buffer.from(d.payload.buffer, d.payload.byteOffset, d.payload.byteLength);
    return new Promise((resolve) => {
      // No redirect is ever followed (node's client does not): a 3xx is a failure like any 4xx.
      const req = (isHttps ? https : http).request(
        target,
        {
          method: "POST",
          agent: isHttps ? this.httpsAgent : this.httpAgent,
          // The socket goes to a vetted address; TLS still checks the certificate against the name.
          lookup: pinnedLookup(vetted),
          headers: {
            ...own,
            ...this.standardHeaders(d),
            "content-type": "application/octet-stream",
            "content-length": body.length,
          },
          timeout: this.timeoutMs,
        },
        (res) => {
          res.resume();
          const status = res.statusCode ?? 0;
          res.on("end", () => resolve(classifyHttp(status)));
          res.on("error", (err) => resolve({ ok: false, retryable: true, error: describe(err) }));
        },
      );
      // `timeout` only counts socket inactivity; this bounds the whole attempt, including time
      // spent queued for a pooled socket.
      const deadline = setTimeout(() => req.destroy(new Error(`timed out after ${this.timeoutMs}ms`)), Math.max(0, deadlineMs - Date.now()));
      req.on("close", () => clearTimeout(deadline));
      req.on("timeout", () => req.destroy(new Error(`timed out after ${this.timeoutMs}ms`)));
      req.on("error", (err) => resolve({ ok: false, retryable: true, error: describe(err) }));
      req.end(body);
    });
  }

  private async deliverNats(d: Delivery, subject: string, useJetStream: boolean): Promise<DeliveryResult> {
    // Timers stored before the rule existed (or before the operator narrowed it) are re-checked.
    const refused = this.tenantSubjects.refusalOf(subject, d.groupId);
    if (refused) return { ok: false, retryable: false, error: `callback.nats.subject "${subject}" ${refused}` };
    const h = natsHeaders();
    for (const [k, v] of Object.entries(this.standardHeaders(d))) h.set(k, v);
    // A publish made while the client reconnects is only buffered (and dropped at its next
    // dial), so nothing is published then: the attempt fails as retryable.
    const nc = this.nats.ifConnected();
    if (!nc) return { ok: false, retryable: true, error: "NATS not connected (reconnecting); not published" };
    if (useJetStream) {
      this.js ??= jetstream(nc, { timeout: this.timeoutMs });
      await this.js.publish(subject, d.payload, { msgID: d.idempotencyKey, headers: h, timeout: this.timeoutMs });
      return { ok: true };
    }
    // Core NATS has no acknowledgement: a publish counts as sent only once a PING written after
    // it has its PONG, which the server sends after reading the message: at most once per
    // attempt, and never "succeeded" into the void.
    nc.publish(subject, d.payload, { headers: h });
    try {
      if (!(await within(nc.flush(), this.timeoutMs))) {
        throw new Error(`NATS flush timed out after ${this.timeoutMs}ms; the message may not have reached the server`);
      }
    } catch (err) {
      return { ok: false, retryable: true, error: `NATS publish not confirmed: ${describe(err)}` };
    }
    return { ok: true };
  }

  private async deliverGrpc(d: Delivery, target: string): Promise<DeliveryResult> {
    const deadlineMs = Date.now() + this.timeoutMs;
    const parsed = parseGrpcTarget(target);
    if (!parsed) return { ok: false, retryable: false, error: `callback.grpc.target "${target}" is not host:port` };
    const client = this.grpcClient(await this.vet(parsed.host, deadlineMs), parsed.port, target);
    const request = create(OnTimerFiredRequestSchema, {
      groupId: d.groupId,
      timerId: d.timerId,
      fireAt: timestampFromMs(d.fireAtMs),
      attempt: d.attempt,
      payload: d.payload,
      labels: d.labels,
      idempotencyKey: d.idempotencyKey,
    });
    const metadata = new grpc.Metadata();
    for (const [k, v] of Object.entries(this.standardHeaders(d))) metadata.set(k, v);
    return new Promise((resolve) => {
      client.makeUnaryRequest<typeof request, OnTimerFiredResponse>(
        "/timer.v1.TimerCallbackService/OnTimerFired",
        (r) => Buffer.from(toBinary(OnTimerFiredRequestSchema, r)),
        (b: Buffer) => fromBinary(OnTimerFiredResponseSchema, b),
        request,
        metadata,
        { deadline: deadlineMs },
        (err) => {
          if (!err) return resolve({ ok: true });
          resolve({
            ok: false,
            retryable: !PERMANENT_GRPC_CODES.has(err.code),
            error: `gRPC ${grpc.status[err.code] ?? err.code}: ${err.details || err.message}`,
          });
        },
      );
    });
  }

  /**
   * A channel to vetted addresses only: an `ipv4:`/`ipv6:` target makes grpc-js connect there
   * without resolving anything itself; the :authority header still names the target as written.
   * Such a target holds one family, so a name with both gets its IPv4 addresses (where receivers
   * listening on 0.0.0.0 or 127.0.0.1 answer), tried in order.
   * (Callbacks are plaintext gRPC; a TLS channel would also need grpc.ssl_target_name_override.)
   */
  private grpcClient(vetted: HostAddress[], port: number, authority: string): grpc.Client {
    const v4 = vetted.filter((v) => v.family === 4);
    const pinned = v4.length > 0 ? `ipv4:${v4.map((v) => `${v.address}:${port}`).join(",")}` : `ipv6:${vetted.map((v) => `[${v.address}]:${port}`).join(",")}`;
    const key = `${pinned} ${authority}`;
    let c = this.grpcClients.get(key);
    if (!c) {
      c = new grpc.Client(pinned, grpc.credentials.createInsecure(), {
        "grpc.default_authority": authority,
        "grpc.keepalive_time_ms": 30_000,
        "grpc.max_receive_message_length": 1024 * 1024,
      });
      this.grpcClients.set(key, c);
    }
    return c;
  }

  /** Closes pooled connections. */
  close(): void {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
    for (const c of this.grpcClients.values()) c.close();
    this.grpcClients.clear();
  }
}

const PERMANENT_GRPC_CODES = new Set<number>([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.ALREADY_EXISTS,
  grpc.status.PERMISSION_DENIED,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.UNIMPLEMENTED,
  grpc.status.UNAUTHENTICATED,
]);

/** 2xx succeeds; 408, 429 and 5xx are retried; any other status fails the timer at once. */
export function classifyHttp(status: number): DeliveryResult {
  if (status >= 200 && status < 300) return { ok: true };
  const retryable = status === 408 || status === 429 || status >= 500;
  return { ok: false, retryable, error: `HTTP ${status}` };
}

/** A `lookup` that answers every query with the vetted addresses (all of them, for happy eyeballs). */
function pinnedLookup(vetted: HostAddress[]): LookupFunction {
  return (_hostname, options, callback) => {
    if (options.all) callback(null, vetted.map((v) => ({ address: v.address, family: v.family })));
    else callback(null, vetted[0]!.address, vetted[0]!.family);
  };
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: string }).code;
    return code && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}
