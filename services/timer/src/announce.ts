// Announcing new timers due soon to their shards' owners over NATS, for both create paths.
// Announcing only makes firing faster: the timers are stored, and their owners' poll finds them,
// so while NATS is away (or a publish fails) nothing is buffered or retried.
import { context, SpanKind, trace, type Tracer } from "@opentelemetry/api";
import { headers as natsHeaders, type MsgHdrs } from "@nats-io/transport-node";
import type { Logger } from "../../shared/src/logger.js";
import {
  ANNOUNCEMENT_SUBJECTS,
  MAX_DESTINATION_CHARS,
  publishAnnouncements,
  shardSubject,
  type Announcement,
} from "../../shared/src/mesh-messages.js";
import type { NatsLink } from "../../shared/src/nats.js";
import { injectInto } from "../../shared/src/telemetry/trace-context.js";
import { timerName } from "../../shared/src/timer-id.js";

/**
 * Announces `list`: one message per shard with all of that shard's timers (owners subscribe per
 * shard; a message per timer would cost NATS and the owners one each). With the default 1,024
 * shards a CreateTimers call of 1,000 timers still spans about 630 shards. One span covers the
 * call's announcements, named after the shard's subject when there is one shard.
 */
export function announceTimers(
  deps: { nats: NatsLink; tracer: Tracer; log: Logger },
  list: readonly Announcement[],
): void {
  const nc = deps.nats.ifConnected();
  if (!nc || list.length === 0) return;
  const byShard = new Map<number, Announcement[]>();
  for (const a of list) {
    // The receiver refuses a message with a destination this long, and with it the shard's
    // other timers: leave this one to the poll (only a host name over 280 characters does this).
    if (a.destination.length > MAX_DESTINATION_CHARS) continue;
    const same = byShard.get(a.shard);
    if (same) same.push(a);
    else byShard.set(a.shard, [a]);
  }
  if (byShard.size === 0) return;
  const [onlyShard] = byShard.size === 1 ? byShard.keys() : [undefined];
  const subject = onlyShard === undefined ? ANNOUNCEMENT_SUBJECTS : shardSubject(onlyShard);
  const span = deps.tracer.startSpan(`send ${subject}`, {
    kind: SpanKind.PRODUCER,
    attributes: {
      "messaging.system": "nats",
      "messaging.operation.type": "send",
      "messaging.destination.name": subject,
      ...(onlyShard === undefined
        ? { "messaging.batch.message_count": byShard.size }
        : { "timer.shard": onlyShard }),
    },
  });
  try {
    let h: MsgHdrs | undefined;
    injectInto(
      (k, v) => {
        h ??= natsHeaders();
        h.set(k, v);
      },
      trace.setSpan(context.active(), span),
    );
    for (const [shard, same] of byShard) publishAnnouncements(nc, shard, same, h);
  } catch (err) {
    deps.log.warn(
      { err, timers: list.length, first_timer: timerName(list[0]!.groupId, list[0]!.timerId) },
      "could not announce created timers over NATS",
    );
  } finally {
    span.end();
  }
}
