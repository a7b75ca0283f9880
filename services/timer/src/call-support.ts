// What the TimerService handlers share about a call: the trace its timers link back to, and
// gRPC code names for metrics.
import { Code, type HandlerContext } from "@connectrpc/connect";
import { trace } from "@opentelemetry/api";
import { traceparentOf } from "../../shared/src/telemetry/trace-context.js";

// The trace a timer's firing links back to: our create span when tracing is on, else the
// caller's own traceparent, if it sent one.
export function createTraceparent(ctx: HandlerContext): string | undefined {
  const sc = trace.getActiveSpan()?.spanContext();
  if (sc && trace.isSpanContextValid(sc)) return traceparentOf(sc);
  return ctx.requestHeader.get("traceparent") ?? undefined;
}

/** INVALID_ARGUMENT for Code.InvalidArgument: the gRPC spelling operators know. */
export function grpcCodeName(code: Code): string {
  return (Code[code] ?? "Unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}
