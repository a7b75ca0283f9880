// W3C trace context helpers shared by the services: carrying traceparent in NATS headers and
// HTTP/gRPC callbacks, and putting trace ids on log lines.
import { randomFillSync } from "node:crypto";
import { context, propagation, trace, type Context, type SpanContext } from "@opentelemetry/api";

/** The traceparent header value of a span context. */
export function traceparentOf(sc: SpanContext): string {
  return `00-${sc.traceId}-${sc.spanId}-0${(sc.traceFlags & 1).toString(16)}`;
}

/**
 * A random traceparent, for a delivery when tracing is off (the contract always sends one).
 * Every delivery needs one, so the random bytes are drawn for 256 at a time: one call into the
 * CSPRNG instead of two per delivery.
 */
export function randomTraceparent(): string {
  if (randomAt + 24 > randomPool.length) {
    randomFillSync(randomPool);
    randomAt = 0;
  }
  const hex = randomPool.toString("hex", randomAt, randomAt + 24);
  randomAt += 24;
  return `00-${hex.slice(0, 32)}-${hex.slice(32)}-01`;
}

const randomPool = Buffer.allocUnsafe(24 * 256);
let randomAt = randomPool.length;

/** The span context a traceparent names, or undefined when it is malformed. */
export function spanContextOf(traceparent: string | null | undefined): SpanContext | undefined {
  const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(traceparent ?? "");
  if (!m || /^0+$/.test(m[1]!) || /^0+$/.test(m[2]!)) return undefined;
  return { traceId: m[1]!, spanId: m[2]!, traceFlags: parseInt(m[3]!, 16), isRemote: true };
}

/** Writes the active context (traceparent, tracestate) into a header-setting function. */
export function injectInto(set: (key: string, value: string) => void, ctx: Context = context.active()): void {
  propagation.inject(ctx, {}, { set: (_carrier, key, value) => set(key, value) });
}

/** The context carried by headers read through `get`. */
export function extractFrom(get: (key: string) => string | undefined): Context {
  return propagation.extract(
    context.active(),
    {},
    {
      get: (_c, key) => get(key),
      keys: () => ["traceparent", "tracestate"],
    },
  );
}

/** trace_id and span_id of the active span, for log lines (pino mixin). */
export function logTraceFields(): Record<string, string> {
  const sc = trace.getActiveSpan()?.spanContext();
  return sc && trace.isSpanContextValid(sc) ? { trace_id: sc.traceId, span_id: sc.spanId } : {};
}
