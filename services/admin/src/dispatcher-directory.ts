// The admin's view of the live dispatchers: it listens to the same heartbeats and goodbyes the
// dispatchers exchange (services/dispatcher/src/membership.ts), without heartbeating itself,
// and forgets a dispatcher silent for longer than MEMBER_TTL, as the dispatchers do.
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Logger } from "../../shared/src/logger.js";
import { HEARTBEAT_SUBJECT, LEAVE_SUBJECT } from "../../shared/src/nats.js";

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
export function liveMembers(members: Iterable<HeardDispatcher>, nowMs: number, ttlMs: number): HeardDispatcher[] {
  return [...members].filter((m) => nowMs - m.lastSeenMs <= ttlMs).sort((a, b) => a.id.localeCompare(b.id));
}

/** Live dispatchers, from NATS heartbeats. */
export class DispatcherDirectory {
  private readonly members = new Map<string, HeardDispatcher>();
  private readonly leftAt = new Map<string, number>();
  private subs: Subscription[] = [];
  private readonly decoder = new TextDecoder();

  constructor(
    private readonly nc: NatsConnection,
    private readonly memberTtlMs: number,
    private readonly log: Logger,
  ) {}

  /** Starts listening to heartbeats and goodbyes. */
  start(): void {
    this.subs.push(
      this.nc.subscribe(HEARTBEAT_SUBJECT, {
        callback: (err, msg) => {
          if (err) return;
          try {
            const hb = JSON.parse(this.decoder.decode(msg.data)) as { id: string; grpc: string; version: string; started: number; draining: boolean };
            if (typeof hb.id !== "string" || hb.id === "") return;
            const now = Date.now();
            const left = this.leftAt.get(hb.id);
            if (left !== undefined && now - left < this.memberTtlMs) return; // a heartbeat overtaken by its goodbye
            this.members.set(hb.id, {
              id: hb.id,
              address: String(hb.grpc ?? ""),
              version: String(hb.version ?? ""),
              startedAtMs: Number(hb.started) || 0,
              draining: hb.draining === true,
              lastSeenMs: now,
            });
          } catch (e) {
            this.log.warn({ err: e }, "ignoring malformed heartbeat");
          }
        },
      }),
      this.nc.subscribe(LEAVE_SUBJECT, {
        callback: (err, msg) => {
          if (err) return;
          const id = this.decoder.decode(msg.data);
          this.leftAt.set(id, Date.now());
          this.members.delete(id);
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
