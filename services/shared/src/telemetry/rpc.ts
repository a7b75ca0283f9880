// Connect has no auto-instrumentation: this interceptor follows the OpenTelemetry RPC
// semantic conventions for RPCs served: a SERVER span continuing the caller's traceparent
// (when tracing is on) and an rpc_server_call_duration_seconds histogram (always).
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { context, propagation, SpanKind, SpanStatusCode, type Meter, type Tracer } from "@opentelemetry/api";

const headerGetter = {
  get: (h: Headers, key: string) => h.get(key) ?? undefined,
  keys: (h: Headers) => [...h.keys()],
};

/** The gRPC status code name of an error, as the semantic conventions want it. */
function codeOf(err: unknown): number {
  return err instanceof ConnectError ? err.code : Code.Unknown;
}

/** Server-side RPC telemetry for a Connect router. */
export function rpcServerInterceptor(meter: Meter, tracer: Tracer, tracing: boolean): Interceptor {
  const duration = meter.createHistogram("rpc_server_call_duration_seconds", {
    description: "Duration of RPCs served",
    unit: "s",
    advice: {
      explicitBucketBoundaries: [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
      ],
    },
  });
  return (next) => async (req) => {
    const service = req.service.typeName;
    const method = req.method.name;
    const start = performance.now();
    const attrs = { rpc_system: "grpc", rpc_service: service, rpc_method: method };
    const finish = (code: number) =>
      duration.record((performance.now() - start) / 1000, { ...attrs, rpc_grpc_status_code: code });
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
