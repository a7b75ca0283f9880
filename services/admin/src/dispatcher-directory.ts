// The admin's view of the live dispatchers: it listens to the same heartbeats and goodbyes the
// dispatchers exchange (heartbeat-listener.ts, the one listener both use), without heartbeating
// itself, and forgets a dispatcher silent for longer than MEMBER_TTL, as the dispatchers do.
//
// Only the `dispatcher` NATS user may publish heartbeats (infra/nats/nats.conf), and each is
// decoded and checked (mesh-messages.ts) before its address is believed: the admin calls that
// address with its own credential (DrainDispatcher).
import type { NatsConnection } from "@nats-io/transport-node";
import { type HeardDispatcher, HeartbeatListener } from "../../shared/src/heartbeat-listener.js";
import type { MeshMessageDrops } from "../../shared/src/mesh-message-drops.js";

/** Live dispatchers, from NATS heartbeats. */
export class DispatcherDirectory {
  private readonly listener: HeartbeatListener;

  constructor(memberTtlMs: number, drops: MeshMessageDrops) {
    this.listener = new HeartbeatListener({ ttlMs: memberTtlMs, drops });
  }

  /** Starts listening to heartbeats and goodbyes on `nc` (once NATS first connects; the subscriptions survive reconnects). */
  start(nc: NatsConnection): void {
    this.listener.start(nc);
  }

  /** Dispatchers heard within MEMBER_TTL, sorted by id; the others are forgotten. */
  live(nowMs = Date.now()): HeardDispatcher[] {
    this.listener.heard.expire(nowMs);
    return this.listener.heard.list();
  }

  /** One live dispatcher by id. */
  find(id: string): HeardDispatcher | undefined {
    return this.live().find((m) => m.id === id);
  }

  /** Stops listening. */
  stop(): void {
    this.listener.stop();
  }
}
