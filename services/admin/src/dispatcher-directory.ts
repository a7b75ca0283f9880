// The admin's view of the live dispatchers: it listens to the same heartbeats and goodbyes the
// dispatchers exchange (services/dispatcher/src/membership.ts), without heartbeating itself,
// and forgets a dispatcher silent for longer than MEMBER_TTL, as the dispatchers do.
//
// Only the `dispatcher` NATS user may publish heartbeats (infra/nats/nats.conf), and each is
// decoded and checked (mesh-messages.ts) before its address is believed: the admin calls that
// address with its own credential (DrainDispatcher).
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { MeshMessageDrops } from "../../shared/src/mesh-message-drops.js";
import {
  decodeHeartbeat,
  decodeLeave,
  HEARTBEAT_SUBJECT,
  LEAVE_SUBJECT,
} from "../../shared/src/mesh-messages.js";

/** A dispatcher as its last heartbeat describes it. */
export interface HeardDispatcher {
  id: string;
  /** host:port of its DispatcherService. */
  address: string;
  version: string;
  startedAtMs: number;
  draining: boolean;
  lastSeenMs: number;
}

/** The members heard within ttlMs of nowMs, sorted by id. */
export function liveMembers(
  members: Iterable<HeardDispatcher>,
  nowMs: number,
  ttlMs: number,
): HeardDispatcher[] {
  return [...members].filter((m) => nowMs - m.lastSeenMs <= ttlMs).sort((a, b) => a.id.localeCompare(b.id));
}

/** Live dispatchers, from NATS heartbeats. */
export class DispatcherDirectory {
  private readonly members = new Map<string, HeardDispatcher>();
  private readonly leftAt = new Map<string, number>();
  private subs: Subscription[] = [];

  constructor(
    private readonly memberTtlMs: number,
    private readonly drops: MeshMessageDrops,
  ) {}

  /** Starts listening to heartbeats and goodbyes on `nc` (once NATS first connects; the subscriptions survive reconnects). */
  start(nc: NatsConnection): void {
    this.subs.push(
      nc.subscribe(HEARTBEAT_SUBJECT, {
        callback: (err, msg) => {
          if (err) return;
          const decoded = decodeHeartbeat(msg.data);
          if (!decoded.ok) return this.drops.drop(HEARTBEAT_SUBJECT, decoded.reason);
          const hb = decoded.value;
          const now = Date.now();
          const left = this.leftAt.get(hb.dispatcherId);
          if (left !== undefined && now - left < this.memberTtlMs) return; // a heartbeat overtaken by its goodbye
          this.members.set(hb.dispatcherId, {
            id: hb.dispatcherId,
            address: hb.grpcAddress,
            version: hb.version,
            startedAtMs: hb.startedAtMs,
            draining: hb.draining,
            lastSeenMs: now,
          });
        },
      }),
      nc.subscribe(LEAVE_SUBJECT, {
        callback: (err, msg) => {
          if (err) return;
          const leave = decodeLeave(msg.data);
          if (!leave.ok) return this.drops.drop(LEAVE_SUBJECT, leave.reason);
          this.leftAt.set(leave.value, Date.now());
          this.members.delete(leave.value);
        },
      }),
    );
  }

  /** Dispatchers heard within MEMBER_TTL, sorted by id. */
  live(nowMs = Date.now()): HeardDispatcher[] {
    const live = liveMembers(this.members.values(), nowMs, this.memberTtlMs);
    if (live.length !== this.members.size) {
      const keep = new Set(live.map((m) => m.id));
      for (const id of this.members.keys()) if (!keep.has(id)) this.members.delete(id);
    }
    return live;
  }

  /** One live dispatcher by id. */
  find(id: string): HeardDispatcher | undefined {
    return this.live().find((m) => m.id === id);
  }

  /** Stops listening. */
  stop(): void {
    for (const s of this.subs) s.unsubscribe();
    this.subs = [];
  }
}
