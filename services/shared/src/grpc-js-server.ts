// Serves connect-style service implementations (the ones registered on a ConnectRouter) from an
// @grpc/grpc-js server, running the same Connect interceptors with the same HandlerContext, so
// that authentication, telemetry, error mapping and readiness gating behave as on connect-node.
// Why: grpc-js costs a fraction of connect-node's CPU per unary call (README, benchmarks), and
// gRPC over HTTP/2 is what our own clients, grpcurl and buf curl speak.
import * as grpc from "@grpc/grpc-js";
import { fromBinary, toBinary, type DescMessage, type DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextValues,
  createServiceImplSpec,
  decodeBinaryHeader,
  type ConnectRouter,
  type HandlerContext,
  type Interceptor,
  type MethodImplSpec,
  type ServiceImplSpec,
} from "@connectrpc/connect";
import {
  createAsyncIterable,
  invokeUnaryImplementation,
  transformInvokeImplementation,
} from "@connectrpc/connect/protocol";
import { setTrailerStatus } from "@connectrpc/connect/protocol-grpc";

/**
 * Wraps a ConnectRouter so that every implementation registered on it is also recorded, for
 * registerOnGrpcJs: the services' `routes` functions register once and are served by both.
 */
export function recordingRouter(router: ConnectRouter, specs: ServiceImplSpec[]): ConnectRouter {
  const recorder: ConnectRouter = {
    get handlers() {
      return router.handlers;
    },
    service(service, implementation, options) {
      specs.push(createServiceImplSpec(service, implementation));
      router.service(service, implementation, options);
      return recorder;
    },
    rpc(method, impl, options) {
      specs.push({
        service: method.parent,
        methods: { [method.localName]: { kind: method.methodKind, method, impl } as MethodImplSpec },
      });
      router.rpc(method, impl, options);
      return recorder;
    },
  };
  return recorder;
}

/** Registers every method of the recorded implementations on the grpc-js server, behind `interceptors`. */
export function registerOnGrpcJs(
  server: grpc.Server,
  specs: ServiceImplSpec[],
  interceptors: Interceptor[],
): void {
  for (const { methods } of specs) {
    for (const spec of Object.values(methods)) {
      const { method } = spec;
      const path = `/${method.parent.typeName}/${method.name}`;
      const serialize = (m: unknown) => Buffer.from(toBinary(method.output as DescMessage, m as never));
      const deserialize = (b: Buffer): unknown => fromBinary(method.input as DescMessage, b);
      switch (spec.kind) {
        case "unary":
          server.register(path, unaryHandler(spec, path, interceptors), serialize, deserialize, "unary");
          break;
        case "client_streaming":
          server.register(
            path,
            clientStreamHandler(spec, path, interceptors),
            serialize,
            deserialize,
            "clientStream",
          );
          break;
        default:
          server.register(
            path,
            streamHandler(spec, path, interceptors),
            serialize,
            deserialize,
            spec.kind === "server_streaming" ? "serverStream" : "bidi",
          );
      }
    }
  }
}

// Abort reasons, made once: a ConnectError (and abort()'s default DOMException) captures a
// stack trace, which is a measurable part of a call's CPU when made for every call.
const DEADLINE_EXCEEDED = new ConnectError("the operation timed out", Code.DeadlineExceeded);
const CANCELED = new ConnectError("operation was aborted via signal", Code.Canceled);
const CALL_OVER = new ConnectError("the call is over", Code.Canceled);

type AnyCall =
  | grpc.ServerUnaryCall<unknown, unknown>
  | grpc.ServerWritableStream<unknown, unknown>
  | grpc.ServerDuplexStream<unknown, unknown>
  | grpc.ServerReadableStream<unknown, unknown>;

/**
 * A HandlerContext like connect-node's: its signal aborts when the client cancels (reason
 * CANCELED) or the call's deadline (grpc-timeout) passes (reason DEADLINE_EXCEEDED, what the
 * create queue tells apart), and when the call is over. Built by hand, not with
 * createHandlerContext, which copies the headers twice and starts a deadline timer of its own
 * where grpc-js already runs one.
 */
function handlerContext(
  call: AnyCall,
  service: DescService,
  spec: MethodImplSpec,
  url: string,
): { ctx: HandlerContext; controller: AbortController } {
  const controller = new AbortController();
  const deadline = Number(call.getDeadline());
  // grpc-js emits this when the client cancels, when the deadline passes, and when the stream
  // closes after the answer (then the signal is already aborted).
  (call as grpc.ServerUnaryCall<unknown, unknown>).once("cancelled", () => {
    if (controller.signal.aborted) return;
    const expired = Number.isFinite(deadline) && Date.now() >= deadline - 1;
    controller.abort(expired ? DEADLINE_EXCEEDED : CANCELED);
  });
  const ctx: HandlerContext = {
    service,
    method: spec.method,
    signal: controller.signal,
    timeoutMs: () => (Number.isFinite(deadline) ? deadline - Date.now() : undefined),
    requestMethod: "POST",
    requestHeader: headersOf(call.metadata),
    responseHeader: new Headers(),
    responseTrailer: new Headers(),
    protocolName: "grpc",
    values: createContextValues(),
    url,
  };
  return { ctx, controller };
}

function unaryHandler(
  spec: MethodImplSpec,
  path: string,
  interceptors: Interceptor[],
): grpc.handleUnaryCall<unknown, unknown> {
  const service = spec.method.parent;
  const typed = spec as MethodImplSpec & { kind: "unary" };
  return (call, callback) => {
    const { ctx, controller } = handlerContext(call, service, spec, path);
    answerOnce(
      call,
      callback,
      ctx,
      controller,
      invokeUnaryImplementation(typed, ctx, call.request as never, interceptors),
    );
  };
}

/** Sends a single-answer call's headers, answer and trailers (or its error status), then ends its context. */
function answerOnce(
  call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerReadableStream<unknown, unknown>,
  callback: grpc.sendUnaryData<unknown>,
  ctx: HandlerContext,
  controller: AbortController,
  answer: Promise<unknown>,
): void {
  answer.then(
    (res) => {
      const header = metadataOf(ctx.responseHeader);
      if (header) call.sendMetadata(header);
      callback(null, res, metadataOf(ctx.responseTrailer));
      controller.abort(CALL_OVER);
    },
    (err: unknown) => {
      callback(statusOf(err, ctx));
      controller.abort(CALL_OVER);
    },
  );
}

/** Server streaming and bidi: every answer written as it comes, with backpressure; then the status. */
function streamHandler(spec: MethodImplSpec, path: string, interceptors: Interceptor[]) {
  const service = spec.method.parent;
  return (call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>) => {
    const { ctx, controller } = handlerContext(call, service, spec, path);
    const input = "request" in call ? createAsyncIterable([call.request]) : requestsOf(call);
    void (async () => {
      try {
        let headerSent = false;
        for await (const message of transformInvokeImplementation(
          spec,
          ctx,
          interceptors,
        )(input as AsyncIterable<never>)) {
          if (!headerSent) {
            headerSent = true;
            const header = metadataOf(ctx.responseHeader);
            if (header) call.sendMetadata(header);
          }
          if (!call.write(message)) await drained(call, ctx.signal);
        }
        call.end(metadataOf(ctx.responseTrailer));
      } catch (err) {
        call.emit("error", statusOf(err, ctx));
      } finally {
        controller.abort(CALL_OVER);
      }
    })();
  };
}

/** Client streaming: the requests in, one answer out. */
function clientStreamHandler(
  spec: MethodImplSpec,
  path: string,
  interceptors: Interceptor[],
): grpc.handleClientStreamingCall<unknown, unknown> {
  const service = spec.method.parent;
  return (call, callback) => {
    const { ctx, controller } = handlerContext(call, service, spec, path);
    const answer = (async () => {
      let last: unknown;
      for await (const message of transformInvokeImplementation(
        spec,
        ctx,
        interceptors,
      )(requestsOf(call) as AsyncIterable<never>))
        last = message;
      return last;
    })();
    answerOnce(call, callback, ctx, controller, answer);
  };
}

/**
 * The requests of a client or bidi stream. Not the stream's own async iterator: that destroys
 * the stream once the requests end, and a destroyed grpc-js call never sends its status. A
 * cancelled call is destroyed by grpc-js, which ends this iteration.
 */
function requestsOf(
  call: grpc.ServerDuplexStream<unknown, unknown> | grpc.ServerReadableStream<unknown, unknown>,
): AsyncIterable<unknown> {
  return { [Symbol.asyncIterator]: () => call.iterator({ destroyOnReturn: false }) };
}

/** Resolves when the stream can take more, or the call is over. */
function drained(
  call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>,
  signal: AbortSignal,
): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      call.off("drain", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    call.on("drain", done);
    signal.addEventListener("abort", done);
  });
}

/** grpc-js metadata as the Headers Connect interceptors and handlers read; binary values as base64, as on the wire. */
function headersOf(md: grpc.Metadata): Headers {
  const headers = new Headers();
  const map = md.toJSON();
  for (const key in map) {
    for (const v of map[key]!) headers.append(key, typeof v === "string" ? v : v.toString("base64"));
  }
  return headers;
}

/** Headers set by a handler or an error, as grpc-js metadata (undefined when there are none). */
function metadataOf(headers: Headers): grpc.Metadata | undefined {
  let md: grpc.Metadata | undefined;
  headers.forEach((value, key) => {
    md ??= new grpc.Metadata();
    if (key.endsWith("-bin")) {
      for (const v of value.split(/,\s*/)) md.add(key, Buffer.from(decodeBinaryHeader(v)));
    } else {
      md.add(key, value);
    }
  });
  return md;
}

/**
 * An error as a gRPC status, the way connect-node's gRPC protocol sends it: the ConnectError's
 * code and message, its metadata and the handler's trailers, and its details (RetryInfo...) as
 * grpc-status-details-bin. Anything else is UNKNOWN, as with connect-node.
 */
function statusOf(err: unknown, ctx: HandlerContext): Partial<grpc.StatusObject> {
  const e = ConnectError.from(err);
  const trailer = new Headers(ctx.responseTrailer);
  setTrailerStatus(trailer, e);
  // grpc-js writes these two itself, from code and details.
  trailer.delete("grpc-status");
  trailer.delete("grpc-message");
  return {
    code: e.code as number as grpc.status,
    details: e.rawMessage,
    metadata: metadataOf(trailer) ?? new grpc.Metadata(),
  };
}
