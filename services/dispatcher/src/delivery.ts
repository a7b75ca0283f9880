// Callback delivery over HTTP, NATS (core and JetStream) and gRPC. Each attempt ends in
// success, a retryable failure, or a permanent one; the decision is made here, where the
// error is seen.
import http from "node:http";
import https from "node:https";
import { toBinary, fromBinary, create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { headers as natsHeaders, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, type JetStreamClient } from "@nats-io/jetstream";
import {
  OnTimerFiredRequestSchema,
  OnTimerFiredResponseSchema,
  type Callback,
  type OnTimerFiredResponse,
} from "../../shared/src/gen/timer/v1/timer_pb.js";

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

/** Delivers callbacks; one per dispatcher process, holding connection pools and clients. */
export class CallbackDeliverer {
  private readonly httpAgent: http.Agent;
  private readonly httpsAgent: https.Agent;
  private readonly grpcClients = new Map<string, grpc.Client>();
  private readonly js: JetStreamClient;

  constructor(
    private readonly nats: NatsConnection,
    private readonly timeoutMs: number,
    maxSockets: number,
  ) {
    this.httpAgent = new http.Agent({ keepAlive: true, maxSockets, maxFreeSockets: 256 });
    this.httpsAgent = new https.Agent({ keepAlive: true, maxSockets, maxFreeSockets: 256 });
    this.js = jetstream(nats, { timeout: timeoutMs });
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
      return { ok: false, retryable: true, error: describe(err) };
    }
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

  private deliverHttp(d: Delivery, url: string, own: Record<string, string>): Promise<DeliveryResult> {
    const target = new URL(url);
    const isHttps = target.protocol === "https:";
    const body = Buffer.from(d.payload.buffer, d.payload.byteOffset, d.payload.byteLength);
    return new Promise((resolve) => {
      const req = (isHttps ? https : http).request(
        target,
        {
          method: "POST",
          agent: isHttps ? this.httpsAgent : this.httpAgent,
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
      const deadline = setTimeout(() => req.destroy(new Error(`timed out after ${this.timeoutMs}ms`)), this.timeoutMs);
      req.on("close", () => clearTimeout(deadline));
      req.on("timeout", () => req.destroy(new Error(`timed out after ${this.timeoutMs}ms`)));
      req.on("error", (err) => resolve({ ok: false, retryable: true, error: describe(err) }));
      req.end(body);
    });
  }

  private async deliverNats(d: Delivery, subject: string, useJetStream: boolean): Promise<DeliveryResult> {
    const h = natsHeaders();
    for (const [k, v] of Object.entries(this.standardHeaders(d))) h.set(k, v);
    if (useJetStream) {
      await this.js.publish(subject, d.payload, { msgID: d.idempotencyKey, headers: h, timeout: this.timeoutMs });
      return { ok: true };
    }
    if (this.nats.isClosed()) return { ok: false, retryable: true, error: "NATS connection closed" };
    this.nats.publish(subject, d.payload, { headers: h });
    return { ok: true };
  }

  private deliverGrpc(d: Delivery, target: string): Promise<DeliveryResult> {
    const client = this.grpcClient(target);
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
        { deadline: Date.now() + this.timeoutMs },
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

  private grpcClient(target: string): grpc.Client {
    let c = this.grpcClients.get(target);
    if (!c) {
      c = new grpc.Client(target, grpc.credentials.createInsecure(), {
        "grpc.keepalive_time_ms": 30_000,
        "grpc.max_receive_message_length": 1024 * 1024,
      });
      this.grpcClients.set(target, c);
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

function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: string }).code;
    return code && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}
