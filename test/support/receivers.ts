// Real callback receivers: an HTTP server and a gRPC TimerCallbackService server that record
// every delivery with its arrival time.
import http from "node:http";
import * as grpc from "@grpc/grpc-js";
import { fromBinary, toBinary, create } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import {
  OnTimerFiredRequestSchema,
  OnTimerFiredResponseSchema,
  type OnTimerFiredRequest,
  type OnTimerFiredResponse,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { bufferingServer, listenOnLoopback } from "./http-server.js";

/** One callback as the receiver saw it. */
export interface Received {
  groupId: string;
  timerId: string;
  attempt: number;
  fireAtMs: number;
  receivedAtMs: number;
  idempotencyKey: string;
  traceparent: string;
  headers: Record<string, string>;
  labels: Record<string, string>;
  body: Buffer;
}

/**
 * An HTTP receiver; `respond` picks the status for each request (200 by default), and may take
 * its time (a slow receiver) by returning a promise.
 */
export async function startHttpReceiver(
  respond: (r: Received) => number | Promise<number> = () => 200,
): Promise<
  {
    url: string;
    received: Received[];
    close(): Promise<void>;
  } & AsyncDisposable
> {
  const received: Received[] = [];
  const server = bufferingServer((req, body, res) => {
    const h = req.headers as Record<string, string>;
    const r: Received = {
      groupId: h["x-timer-group"] ?? "",
      timerId: h["x-timer-id"] ?? "",
      attempt: Number(h["x-timer-attempt"]),
      fireAtMs: Date.parse(h["x-timer-fire-at"] ?? ""),
      receivedAtMs: Date.now(),
      idempotencyKey: h["idempotency-key"] ?? "",
      traceparent: h.traceparent ?? "",
      headers: h,
      labels: {},
      body,
    };
    received.push(r);
    void Promise.resolve(respond(r)).then((status) => {
      res.statusCode = status;
      res.end();
    });
  });
  server.keepAliveTimeout = 60_000;
  const { port, close } = await listenOnLoopback(server);
  return {
    url: `http://127.0.0.1:${port}/hook`,
    received,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** A gRPC server implementing timer.v1.TimerCallbackService with @grpc/grpc-js. */
export async function startGrpcReceiver(): Promise<
  { target: string; received: Received[] } & AsyncDisposable
> {
  const received: Received[] = [];
  const server = new grpc.Server();
  server.addService(
    {
      onTimerFired: {
        path: "/timer.v1.TimerCallbackService/OnTimerFired",
        requestStream: false,
        responseStream: false,
        requestDeserialize: (b: Buffer) => fromBinary(OnTimerFiredRequestSchema, b),
        requestSerialize: (m: OnTimerFiredRequest) => Buffer.from(toBinary(OnTimerFiredRequestSchema, m)),
        responseSerialize: (m: OnTimerFiredResponse) => Buffer.from(toBinary(OnTimerFiredResponseSchema, m)),
        responseDeserialize: (b: Buffer) => fromBinary(OnTimerFiredResponseSchema, b),
      },
    },
    {
      onTimerFired: (
        call: grpc.ServerUnaryCall<OnTimerFiredRequest, OnTimerFiredResponse>,
        cb: grpc.sendUnaryData<OnTimerFiredResponse>,
      ) => {
        const m = call.request;
        received.push({
          groupId: m.groupId,
          timerId: m.timerId,
          attempt: m.attempt,
          fireAtMs: m.fireAt ? timestampMs(m.fireAt) : NaN,
          receivedAtMs: Date.now(),
          idempotencyKey: m.idempotencyKey,
          traceparent: String(call.metadata.get("traceparent")[0] ?? ""),
          // The late mark of a FIRE_MARKED delivery, as metadata and as the request's field.
          headers: {
            ":authority": call.getHost(),
            "x-timer-late-ms": String(call.metadata.get("x-timer-late-ms")[0] ?? ""),
            late_ms: String(m.lateMs),
          },
          labels: { ...m.labels },
          body: Buffer.from(m.payload),
        });
        cb(null, create(OnTimerFiredResponseSchema, {}));
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return {
    target: `127.0.0.1:${port}`,
    received,
    async [Symbol.asyncDispose]() {
      await new Promise<void>((r) => server.tryShutdown(() => r()));
    },
  };
}

/**
 * An HTTP receiver that accepts every callback and never answers: each request holds the
 * caller's connection until the caller gives up (its timeout) or the receiver is closed.
 */
export async function startHangingHttpReceiver(): Promise<
  {
    url: string;
    /** Requests received so far, by x-timer-id, in arrival order. */
    received: { timerId: string; groupId: string; receivedAtMs: number }[];
    /** Requests whose connection is still open (the caller still waiting). */
    open(): number;
    close(): Promise<void>;
  } & AsyncDisposable
> {
  const received: { timerId: string; groupId: string; receivedAtMs: number }[] = [];
  let open = 0;
  const server = http.createServer((req) => {
    received.push({
      timerId: String(req.headers["x-timer-id"] ?? ""),
      groupId: String(req.headers["x-timer-group"] ?? ""),
      receivedAtMs: Date.now(),
    });
    open++;
    req.socket.once("close", () => open--);
    req.resume(); // read the body, answer nothing
  });
  server.requestTimeout = 0;
  server.headersTimeout = 0;
  const { port, close } = await listenOnLoopback(server);
  return {
    url: `http://127.0.0.1:${port}/hook`,
    received,
    open: () => open,
    close,
    [Symbol.asyncDispose]: close,
  };
}
