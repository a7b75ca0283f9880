// Dispatcher membership over core NATS. Each dispatcher publishes a heartbeat every
// heartbeatMs on mesh.dispatchers.heartbeat and a goodbye on mesh.dispatchers.leave when it
// stops. A member whose last heartbeat is older than memberTtlMs is gone. Debian's
// nats-server 2.9 has no per-key TTL in KV, and plain subjects need no stream at all.
//
// While our own connection to NATS is down we hear no one, ourselves included; rather than
// conclude that everyone died, the view is frozen until our own heartbeats come back, so
// the shards we hold keep firing (their leases in Postgres still fence them).
//
// Heartbeats and goodbyes are mesh.v1 messages, decoded and checked by mesh-messages.ts; one
// that does not fit is dropped and counted, never taken as a member or a departure.
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { within } from "../../shared/src/bounded-wait.js";
import type { Logger } from "../../shared/src/logger.js";
import type { MeshMessageDrops } from "../../shared/src/mesh-message-drops.js";
import {
  decodeHeartbeat,
  decodeLeave,
  encodeHeartbeat,
  encodeLeave,
  HEARTBEAT_SUBJECT,
  LEAVE_SUBJECT,
  type Heartbeat,
} from "../../shared/src/mesh-messages.js";

// How long leave() waits for NATS to take the goodbye.
const LEAVE_FLUSH_TIMEOUT_MS = 1_000;

/** A dispatcher as its heartbeats describe it. */
export interface Member {
  id: string;
  /** host:port of its DispatcherService. */
  grpcAddress: string;
  version: string;
  startedAtMs: number;
  /** A draining member is alive but owns no shards. */
  draining: boolean;
  lastSeenMs: number;
}

/** This dispatcher's view of the live members. */
export class Membership {
  private readonly members = new Map<string, Member>();
  private readonly leftAt = new Map<string, number>();
  private subs: Subscription[] = [];
  private timer: NodeJS.Timeout | undefined;
  private lastSelfEchoMs = Date.now();
  private lastActive = "";
  private readonly listeners: (() => void)[] = [];
  private draining = false;

  constructor(
    private readonly nc: NatsConnection,
    private readonly self: { id: string; grpcAddress: string; version: string; startedAtMs: number },
    private readonly opts: { heartbeatMs: number; memberTtlMs: number },
    private readonly log: Logger,
    private readonly drops: MeshMessageDrops,
  ) {
    this.members.set(self.id, { ...self, draining: false, lastSeenMs: Date.now() });
  }

  /** Starts listening and heartbeating. */
  start(): void {
    this.subs.push(
      this.nc.subscribe(HEARTBEAT_SUBJECT, {
        callback: (err, msg) => {
          if (err) return;
          const hb = decodeHeartbeat(msg.data);
          if (!hb.ok) return this.drops.drop(HEARTBEAT_SUBJECT, hb.reason);
          this.onHeartbeat(hb.value);
        },
      }),
      this.nc.subscribe(LEAVE_SUBJECT, {
        callback: (err, msg) => {
          if (err) return;
          const leave = decodeLeave(msg.data);
          if (!leave.ok) return this.drops.drop(LEAVE_SUBJECT, leave.reason);
          const id = leave.value;
          if (id === this.self.id) return;
          this.leftAt.set(id, Date.now());
          if (this.members.delete(id)) {
            this.log.info({ member: id }, "member left");
            this.changed();
          }
        },
      }),
    );
    this.beat();
    this.timer = setInterval(() => {
      this.beat();
      this.expire();
    }, this.opts.heartbeatMs);
  }

  /** Registers a callback for changes of the active (non-draining) member set. */
  onChange(cb: () => void): void {
    this.listeners.push(cb);
  }

  /** Live members, sorted by id. */
  list(): Member[] {
    return [...this.members.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  /** Ids of live members that take shards: the input of the shard assignment. */
  activeIds(): string[] {
    return this.list()
      .filter((m) => !m.draining)
      .map((m) => m.id);
  }

  /** Whether our own heartbeats are coming back, i.e. our view is current. */
  get connected(): boolean {
    return Date.now() - this.lastSelfEchoMs <= this.opts.memberTtlMs;
  }

  /** Marks this dispatcher draining (it keeps running, owning nothing) and tells the others now. */
  setDraining(draining: boolean): void {
    this.draining = draining;
    const me = this.members.get(this.self.id)!;
    me.draining = draining;
    this.beat();
    this.changed();
  }

  /**
   * Says goodbye and stops heartbeating. The goodbye waits for the server for a second at most:
   * with NATS away a flush would wait for its return, and the others expire this member anyway.
   */
  async leave(): Promise<void> {
    clearInterval(this.timer);
    try {
      this.nc.publish(LEAVE_SUBJECT, encodeLeave(this.self.id));
      if (!(await within(this.nc.flush(), LEAVE_FLUSH_TIMEOUT_MS)))
        throw new Error(`NATS did not confirm the goodbye within ${LEAVE_FLUSH_TIMEOUT_MS} ms`);
    } catch (err) {
      this.log.warn({ err }, "could not announce leave; the others will expire this member");
    }
    for (const s of this.subs) s.unsubscribe();
    this.subs = [];
  }

  private beat(): void {
    const hb: Heartbeat = {
      dispatcherId: this.self.id,
      grpcAddress: this.self.grpcAddress,
      version: this.self.version,
      startedAtMs: this.self.startedAtMs,
      draining: this.draining,
    };
    try {
      this.nc.publish(HEARTBEAT_SUBJECT, encodeHeartbeat(hb));
    } catch {
      // Closed or reconnecting: the view freezes (see connected) until NATS is back.
    }
  }

  private onHeartbeat(hb: Heartbeat): void {
    const now = Date.now();
    const id = hb.dispatcherId;
    if (id === this.self.id) {
      this.lastSelfEchoMs = now;
      this.members.get(this.self.id)!.lastSeenMs = now;
      return;
    }
    const left = this.leftAt.get(id);
    if (left !== undefined && now - left < this.opts.memberTtlMs) return; // a heartbeat overtaken by its goodbye
    const known = this.members.get(id);
    this.members.set(id, {
      id,
      grpcAddress: hb.grpcAddress,
      version: hb.version,
      startedAtMs: hb.startedAtMs,
      draining: hb.draining,
      lastSeenMs: now,
    });
    if (!known) this.log.info({ member: id }, "member joined");
    if (!known || known.draining !== hb.draining) this.changed();
  }

  private expire(): void {
    if (!this.connected) return; // frozen: we cannot tell who is alive
    const now = Date.now();
    let changed = false;
    for (const m of this.members.values()) {
      if (m.id !== this.self.id && now - m.lastSeenMs > this.opts.memberTtlMs) {
        this.members.delete(m.id);
        this.log.warn({ member: m.id, silent_ms: now - m.lastSeenMs }, "member expired");
        changed = true;
      }
    }
    if (changed) this.changed();
  }

  private changed(): void {
    const active = this.activeIds().join(",");
    if (active === this.lastActive) return;
    this.lastActive = active;
    for (const cb of this.listeners) cb();
  }
}
