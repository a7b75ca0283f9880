// The dispatcher's subscriptions to timer announcements: one NATS subject per shard it owns
// (timers.shard.<n>), opened when a shard is gained and closed when it is released or lost, so
// a dispatcher hears exactly the timers it may fire. Each message is decoded and checked here
// (mesh-messages.ts), so nothing malformed ever reaches a claim batch, and, with tracing on, is
// processed under a consumer span continuing the publisher's trace.
import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import { SpanKind } from "@opentelemetry/api";
import type { Logger } from "../../shared/src/logger.js";
import type { MeshMessageDrops } from "../../shared/src/mesh-message-drops.js";
import {
  ANNOUNCEMENT_SUBJECTS,
  type Announcement,
  decodeAnnouncements,
  shardSubject,
} from "../../shared/src/mesh-messages.js";
import type { Telemetry } from "../../shared/src/telemetry/telemetry.js";
import { extractFrom } from "../../shared/src/telemetry/trace-context.js";

/** The announcement subscriptions of the shards this dispatcher owns. */
export class AnnouncementSubscriptions {
  private readonly subs = new Map<number, Subscription>();

  constructor(
    private readonly deps: {
      nats: NatsConnection;
      shardCount: number;
      telemetry: Pick<Telemetry, "tracer" | "tracingEnabled">;
      drops: MeshMessageDrops;
      log: Logger;
      /** Takes a checked announcement (the scheduler holds the timer until it is due). */
      announce: (a: Announcement) => void;
    },
  ) {}

  /** Starts hearing announcements of `shard` (no-op when already subscribed). */
  subscribe(shard: number): void {
    if (this.subs.has(shard)) return;
    this.subs.set(
      shard,
      this.deps.nats.subscribe(shardSubject(shard), {
        callback: (err, msg) => {
          if (err) return this.deps.log.warn({ err, shard }, "announcement subscription error");
          this.receive(msg, shard);
        },
      }),
    );
  }

  /** Stops hearing announcements of `shard`. */
  unsubscribe(shard: number): void {
    this.subs.get(shard)?.unsubscribe();
    this.subs.delete(shard);
  }

  /** Stops hearing announcements of every shard (shutdown). */
  unsubscribeAll(): void {
    for (const shard of [...this.subs.keys()]) this.unsubscribe(shard);
  }

  private receive(msg: Msg, shard: number): void {
    const { telemetry } = this.deps;
    if (!telemetry.tracingEnabled) {
      this.take(msg, shard);
      return;
    }
    const parent = extractFrom((k) => msg.headers?.get(k) || undefined);
    telemetry.tracer.startActiveSpan(
      `process ${msg.subject}`,
      {
        kind: SpanKind.CONSUMER,
        attributes: {
          "messaging.system": "nats",
          "messaging.operation.type": "process",
          "messaging.destination.name": msg.subject,
          "timer.shard": shard,
        },
      },
      parent,
      (span) => {
        this.take(msg, shard);
        span.end();
      },
    );
  }

  private take(msg: Msg, shard: number): void {
    const a = decodeAnnouncements(msg.data, shard, this.deps.shardCount);
    if (!a.ok) {
      this.deps.drops.drop(ANNOUNCEMENT_SUBJECTS, a.reason);
      return;
    }
    for (const t of a.value) this.deps.announce(t);
  }
}
