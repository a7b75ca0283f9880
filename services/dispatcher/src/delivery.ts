// Callback delivery over HTTP, NATS (core and JetStream) and gRPC. Each attempt ends in
// success, a retryable failure, or a permanent one; the decision is made here, where the
// error is seen.
//
// Egress: an HTTP or gRPC callback host is resolved here, every address it resolves to is
// checked against the egress policy, and the connection goes only to the addresses that were
// checked (the HTTP socket through a pinned `lookup`, in a pool per vetted address set:
// http-callbacks.ts; the gRPC channel on an `ipv4:`/`ipv6:`
// target), so a second DNS answer cannot redirect it (DNS rebinding). A refused callback fails for good,
// before any packet is sent, so last_error never tells whether a refused address would answer.
// NATS callbacks on subjects reserved for the mesh fail for good too.
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
  type OnTimerFiredRequest,
  type OnTimerFiredResponse,
} from "../../shared/src/gen/timer/v1/timer_pb.js";
import {
  EgressRefused,
  cachingResolver,
  parseCallbackHost,
  parseGrpcTarget,
  systemResolver,
  type CallbackHost,
  type EgressPolicy,
  type Resolver,
  type HostAddress,
} from "../../shared/src/egress.js";
import type { TenantSubjects } from "../../shared/src/tenant-subjects.js";
import { HttpCallbackClient, classifyHttp, describe } from "./http-callbacks.js";

export { classifyHttp };

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
  /**
   * Set for a FIRE_MARKED timer whose first attempt started beyond its max_lateness: how late,
   * in ms (lateness-contract.ts). Sent as LATE_MS_HEADER and OnTimerFiredRequest.late_ms.
   */
  lateMs?: number;
}

/** The header (HTTP, NATS) and metadata key (gRPC) of a marked late delivery, named like the others. */
export const LATE_MS_HEADER = "x-timer-late-ms";

/**
 * The contract's headers of a delivery, handed to `set` one by one (no intermediate object): the
 * same names on every transport (HTTP and NATS headers, gRPC metadata).
 */
export function standardHeaders(d: Delivery, set: (name: string, value: string) => void): void {
  set("x-timer-group", d.groupId);
  set("x-timer-id", d.timerId);
  set("x-timer-attempt", String(d.attempt));
  set("x-timer-fire-at", new Date(d.fireAtMs).toISOString());
  set("idempotency-key", d.idempotencyKey);
  set("traceparent", d.traceparent);
  if (d.lateMs !== undefined) set(LATE_MS_HEADER, String(d.lateMs));
}

/** The OnTimerFired request of a gRPC delivery. */
export function onTimerFiredRequest(d: Delivery): OnTimerFiredRequest {
  return create(OnTimerFiredRequestSchema, {
    groupId: d.groupId,
    timerId: d.timerId,
    fireAt: timestampFromMs(d.fireAtMs),
    attempt: d.attempt,
    payload: d.payload,
    labels: d.labels,
    idempotencyKey: d.idempotencyKey,
    lateMs: BigInt(d.lateMs ?? 0),
  });
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
  /** Most connections to one HTTP origin. */
  maxSockets: number;
  /** Requests in flight on one HTTP connection (1: no pipelining; see http-callbacks.ts). */
  httpPipelining?: number;
  /** Certificate authorities trusted for https callbacks instead of Node's bundled ones (tests, private PKI). */
  httpsCa?: string | Buffer | (string | Buffer)[];
  egress: EgressPolicy;
  tenantSubjects: TenantSubjects;
  /** How callback host names are resolved; the system resolver (cached 1 s) unless a test injects a stub. */
  resolve?: Resolver;
}

/** Delivers callbacks; one per dispatcher process, holding connection pools and clients. */
export class CallbackDeliverer {
  private readonly http: HttpCallbackClient;
  /**
   * Vetting results per callback host, with the resolver answer they were made from: while the
   * resolver hands out the same answer (its cache), the check is not made again; a new answer is
   * checked anew. Literal addresses are checked once.
   */
  private readonly vetted = new Map<string, VetEntry>();
  /** The flush that will confirm the core NATS publishes made until it is sent (see confirmPublished). */
  private pendingFlush:
    | { nc: NatsConnectionOf<DelivererOptions["nats"]>; confirmed: Promise<void> }
    | undefined;
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
    this.http = new HttpCallbackClient({
      timeoutMs: opts.timeoutMs,
      connectionsPerOrigin: opts.maxSockets,
      ...(opts.httpPipelining !== undefined ? { pipelining: opts.httpPipelining } : {}),
      ...(opts.httpsCa !== undefined ? { ca: opts.httpsCa } : {}),
    });
  }

  /** Makes one delivery attempt. Never throws. */
  async deliver(d: Delivery): Promise<DeliveryResult> {
    try {
      switch (d.callback.target.case) {
        case "http":
          return await this.deliverHttp(d, d.callback.target.value.url, d.callback.target.value.headers);
        case "nats":
          return await this.deliverNats(
            d,
            d.callback.target.value.subject,
            d.callback.target.value.jetstream,
          );
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
    const entry = this.vetEntry(host);
    if (entry.value) return entry.value; // checked already, for this very answer
    const vetted = await within(entry.vetted, deadlineMs - Date.now());
    if (!vetted) throw new Error(`resolving ${host} timed out after ${this.timeoutMs}ms`);
    return vetted.value;
  }

  /** egress.vet for a callback host, made again only when the resolver gives a different answer. */
  private vetEntry(host: string): VetEntry {
    const hit = this.vetted.get(host);
    if (hit && hit.answer === undefined) return hit; // a literal address (or an invalid host): the same every time
    let parsed: CallbackHost;
    try {
      parsed = parseCallbackHost(host);
    } catch (err) {
      return this.remember(host, undefined, Promise.reject(err));
    }
    if (parsed.kind === "address")
      return this.remember(host, undefined, this.egress.vet(parsed, this.resolve));
    const answer = this.resolve(parsed.name);
    if (hit && hit.answer === answer) return hit;
    return this.remember(
      host,
      answer,
      this.egress.vet(parsed, () => answer),
    );
  }

  private remember(
    host: string,
    answer: Promise<HostAddress[]> | undefined,
    vetted: Promise<HostAddress[]>,
  ): VetEntry {
    const entry: VetEntry = { answer, vetted, value: undefined };
    vetted.then(
      (v) => (entry.value = v),
      () => {},
    ); // a refusal is handled by each caller, not here
    if (this.vetted.size >= MAX_VETTED_HOSTS) this.vetted.clear();
    this.vetted.set(host, entry);
    return entry;
  }

  private async deliverHttp(d: Delivery, url: string, own: Record<string, string>): Promise<DeliveryResult> {
    const deadlineMs = Date.now() + this.timeoutMs;
    const target = this.http.parse(url);
    if (typeof target === "string") return { ok: false, retryable: false, error: target };
    const vetted = await this.vet(target.hostname, deadlineMs);
    const headers: string[] = [];
    for (const k in own) headers.push(k, own[k]!);
    standardHeaders(d, (k, v) => headers.push(k, v));
    headers.push("content-type", "application/octet-stream");
    // No redirect is ever followed (undici's dispatch does not): a 3xx is a failure like any 4xx.
    return this.http.post({ url: target, vetted, headers, body: d.payload }, deadlineMs);
  }

  private async deliverNats(d: Delivery, subject: string, useJetStream: boolean): Promise<DeliveryResult> {
    // Timers stored before the rule existed (or before the operator narrowed it) are re-checked.
    const refused = this.tenantSubjects.refusalOf(subject, d.groupId);
    if (refused)
      return { ok: false, retryable: false, error: `callback.nats.subject "${subject}" ${refused}` };
    const h = natsHeaders();
    standardHeaders(d, (k, v) => h.set(k, v));
    // A publish made while the client reconnects is only buffered (and dropped at its next
    // dial), so nothing is published then: the attempt fails as retryable.
    const nc = this.nats.ifConnected();
    if (!nc) return { ok: false, retryable: true, error: "NATS not connected (reconnecting); not published" };
    if (useJetStream) {
      this.js ??= jetstream(nc, { timeout: this.timeoutMs });
      await this.js.publish(subject, d.payload, {
        msgID: d.idempotencyKey,
        headers: h,
        timeout: this.timeoutMs,
      });
      return { ok: true };
    }
    // Core NATS has no acknowledgement: a publish counts as sent only once a PING written after
    // it has its PONG, which the server sends after reading the message: at most once per
    // attempt, and never "succeeded" into the void.
    nc.publish(subject, d.payload, { headers: h });
    try {
      await this.confirmPublished(nc);
    } catch (err) {
      return { ok: false, retryable: true, error: `NATS publish not confirmed: ${describe(err)}` };
    }
    return { ok: true };
  }

  /**
   * Resolves once the server has read everything published on `nc` before this call: one
   * PING/PONG (a flush) confirms all the publishes made in the same turn of the event loop,
   * instead of one round trip per message. The flush is sent at the next turn (setImmediate),
   * after every publish that shares it; a publish made later waits for the next flush.
   */
  private confirmPublished(nc: NatsConnectionOf<DelivererOptions["nats"]>): Promise<void> {
    if (this.pendingFlush?.nc === nc) return this.pendingFlush.confirmed;
    const pending = {
      nc,
      confirmed: new Promise<void>((resolve, reject) => {
        setImmediate(() => {
          if (this.pendingFlush === pending) this.pendingFlush = undefined;
          within(nc.flush(), this.timeoutMs).then((done) => {
            if (done) resolve();
            else
              reject(
                new Error(
                  `NATS flush timed out after ${this.timeoutMs}ms; the message may not have reached the server`,
                ),
              );
          }, reject);
        });
      }),
    };
    this.pendingFlush = pending;
    return pending.confirmed;
  }

  private async deliverGrpc(d: Delivery, target: string): Promise<DeliveryResult> {
    const deadlineMs = Date.now() + this.timeoutMs;
    const parsed = parseGrpcTarget(target);
    if (!parsed)
      return { ok: false, retryable: false, error: `callback.grpc.target "${target}" is not host:port` };
    const client = this.grpcClient(await this.vet(parsed.host, deadlineMs), parsed.port, target);
    const request = onTimerFiredRequest(d);
    const metadata = new grpc.Metadata();
    standardHeaders(d, (k, v) => metadata.set(k, v));
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
    const pinned =
      v4.length > 0
        ? `ipv4:${v4.map((v) => `${v.address}:${port}`).join(",")}`
        : `ipv6:${vetted.map((v) => `[${v.address}]:${port}`).join(",")}`;
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
    void this.http.close();
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

/** The egress check of one callback host for one resolver answer (undefined for a literal address). */
interface VetEntry {
  answer: Promise<HostAddress[]> | undefined;
  vetted: Promise<HostAddress[]>;
  /** The vetted addresses, once the check passed. */
  value: HostAddress[] | undefined;
}

/** Hosts whose vetting is kept (see CallbackDeliverer.vetted); the map starts over beyond it. */
const MAX_VETTED_HOSTS = 10_000;

type NatsConnectionOf<T> = T extends { ifConnected(): infer C } ? NonNullable<C> : never;
