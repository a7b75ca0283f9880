// Tracing of one delivery attempt. Each attempt is a trace of its own: a "fire timer" root span
// linked to the CreateTimer call that made the timer (even days later), with the delivery as a
// CLIENT span whose context travels to the receiver as traceparent. Without tracing, the
// receiver still gets a traceparent (a random one), so its contract does not depend on ours.
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, type Tracer, trace } from "@opentelemetry/api";
import { randomTraceparent, spanContextOf, traceparentOf } from "../../shared/src/telemetry/trace-context.js";
import type { DeliveryResult } from "./delivery.js";
import type { ClaimedTimer } from "./dispatch-store.js";

/**
 * The trace id of a traceparent this process sent ("00-<trace id>-<span id>-<flags>", made by
 * traceparentOf or randomTraceparent): kept with the attempt (timer_attempts.trace_id). A slice,
 * not a parse: it runs once per delivery and the format is our own.
 */
export function sentTraceId(traceparent: string): string {
  return traceparent.slice(3, 35);
}

/** Runs `deliver` with the traceparent to send, inside the attempt's spans when `tracer` is given. */
export async function tracedAttempt(
  tracer: Tracer | undefined,
  row: ClaimedTimer,
  transport: string,
  deliver: (traceparent: string) => Promise<DeliveryResult>,
): Promise<DeliveryResult> {
  if (!tracer) return deliver(randomTraceparent());
  const created = spanContextOf(row.create_traceparent);
  const attributes = {
    "timer.group_id": row.group_id,
    "timer.id": row.timer_id,
    "timer.shard": row.shard,
    "timer.attempt": row.attempt,
  };
  // Parents are passed explicitly (no implicit context on this hot path).
  const fire = tracer.startSpan("fire timer", {
    root: true,
    kind: SpanKind.INTERNAL,
    attributes,
    links: created ? [{ context: created, attributes: { "link.reason": "created by" } }] : [],
  });
  const delivery = tracer.startSpan(
    `deliver ${transport}`,
    { kind: SpanKind.CLIENT, attributes: { ...attributes, "timer.transport": transport } },
    trace.setSpan(ROOT_CONTEXT, fire),
  );
  try {
    const result = await deliver(traceparentOf(delivery.spanContext()));
    if (!result.ok) {
      delivery.setStatus({ code: SpanStatusCode.ERROR, message: result.error });
      delivery.setAttribute("timer.retryable", result.retryable);
    }
    return result;
  } finally {
    delivery.end();
    fire.end();
  }
}
