// Connect has no auto-instrumentation: this interceptor follows the OpenTelemetry RPC
// semantic conventions for RPCs served: a SERVER span continuing the caller's traceparent
// (when tracing is on) and an rpc_server_call_duration_seconds histogram (always).
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { context, propagation, SpanKind, SpanStatusCode, type Meter, type Tracer } from "@opentelemetry/api";
import { secondsSince } from "../time.js";
import { histogram } from "./instruments.js";

const headerGetter = {
  get: (h: Headers, key: string) => h.get(key) ?? undefined,
  keys: (h: Headers) => [...h.keys()],
};

/** The gRPC status code of an error: a number, as the semantic conventions record it; UNKNOWN if not a ConnectError. */
function codeOf(err: unknown): number {
  return err instanceof ConnectError ? err.code : Code.Unknown;
}

/** Server-side RPC telemetry for a Connect router. */
export function rpcServerInterceptor(meter: Meter, tracer: Tracer, tracing: boolean): Interceptor {
  const duration = histogram(meter, "rpc_server_call_duration_seconds");
  return (next) => async (req) => {
    const service = req.service.typeName;
    const method = req.method.name;
    const start = performance.now();
    const attrs = { rpc_system: "grpc", rpc_service: service, rpc_method: method };
    const finish = (code: number) =>
      duration.record(secondsSince(start), { ...attrs, rpc_grpc_status_code: code });
    if (!tracing) {
      try {
        const res = await next(req);
        finish(0);
        return res;
      } catch (err) {
        finish(codeOf(err));
        throw err;
      }
    }
    const parent = propagation.extract(context.active(), req.header, headerGetter);
    return tracer.startActiveSpan(
      `${service}/${method}`,
      {
        kind: SpanKind.SERVER,
        attributes: { "rpc.system": "grpc", "rpc.service": service, "rpc.method": method },
      },
      parent,
      async (span) => {
        try {
          const res = await next(req);
          span.setAttribute("rpc.grpc.status_code", 0);
          finish(0);
          return res;
        } catch (err) {
          const code = codeOf(err);
          span.setAttribute("rpc.grpc.status_code", code);
          if (
            code === Code.Unknown ||
            code === Code.Internal ||
            code === Code.Unavailable ||
            code === Code.DataLoss
          ) {
            span.setStatus({
              code: SpanStatusCode.ERROR,
              message: err instanceof ConnectError ? err.rawMessage : "error",
            });
          }
          finish(code);
          throw err;
        } finally {
          span.end();
        }
      },
    );
  };
}
