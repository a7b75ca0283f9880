// What the TimerService handlers share about a call: the trace its timers link back to.
import type { HandlerContext } from "@connectrpc/connect";
import { trace } from "@opentelemetry/api";
import { traceparentOf } from "../../shared/src/telemetry/trace-context.js";

// The trace a timer's firing links back to: our create span when tracing is on, else the
// caller's own traceparent, if it sent one.
export function createTraceparent(ctx: HandlerContext): string | undefined {
  const sc = trace.getActiveSpan()?.spanContext();
  if (sc && trace.isSpanContextValid(sc)) return traceparentOf(sc);
  return ctx.requestHeader.get("traceparent") ?? undefined;
}
