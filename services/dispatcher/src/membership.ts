// Dispatcher membership over core NATS. Each dispatcher publishes a heartbeat every
// heartbeatMs on mesh.dispatchers.heartbeat and a goodbye on mesh.dispatchers.leave when it
// stops. A member whose last heartbeat is older than memberTtlMs is gone. Debian's
// nats-server 2.9 has no per-key TTL in KV, and plain subjects need no stream at all.
//
// While our own connection to NATS is down we hear no one, ourselves included; rather than
// conclude that everyone died, the view is frozen until our own heartbeats come back, so
// the shards we hold keep firing (their leases in Postgres still fence them).
//
// Listening, checking and the liveness rule are the admin's too (heartbeat-listener.ts); what is
// this file's own is heartbeating, knowing itself, the frozen view, and telling the shard
// assignment when the set of members that take shards changes.
import type { NatsConnection } from "@nats-io/transport-node";
import { within } from "../../shared/src/bounded-wait.js";
import { type HeardDispatcher, HeartbeatListener } from "../../shared/src/heartbeat-listener.js";
import type { Logger } from "../../shared/src/logger.js";
import type { MeshMessageDrops } from "../../shared/src/mesh-message-drops.js";
import {
  encodeHeartbeat,
  encodeLeave,
  HEARTBEAT_SUBJECT,
  type Heartbeat,
  LEAVE_SUBJECT,
} from "../../shared/src/mesh-messages.js";

// How long leave() waits for NATS to take the goodbye.
const LEAVE_FLUSH_TIMEOUT_MS = 1_000;

/** This dispatcher's view of the live members. */
export class Membership {
  private readonly listener: HeartbeatListener;
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
    drops: MeshMessageDrops,
  ) {
    this.listener = new HeartbeatListener({
      ttlMs: opts.memberTtlMs,
      drops,
      selfId: self.id,
      events: {
        selfHeard: (nowMs) => {
          this.lastSelfEchoMs = nowMs;
        },
        heard: (id, change) => {
          if (change === "joined") this.log.info({ member: id }, "member joined");
          if (change === "joined" || change === "draining_changed") this.changed();
        },
        left: (id, known) => {
          if (!known) return;
          this.log.info({ member: id }, "member left");
          this.changed();
        },
      },
    });
  }

  /** Starts listening and heartbeating. */
  start(): void {
    this.listener.start(this.nc);
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

  /** Live members, this dispatcher included, sorted by id. */
  list(): HeardDispatcher[] {
    const me: HeardDispatcher = {
      id: this.self.id,
      address: this.self.grpcAddress,
      version: this.self.version,
      startedAtMs: this.self.startedAtMs,
      draining: this.draining,
      lastSeenMs: this.lastSelfEchoMs,
    };
    return [me, ...this.listener.heard.list()].sort((a, b) => a.id.localeCompare(b.id));
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
    this.listener.stop();
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

  private expire(): void {
    if (!this.connected) return; // frozen: we cannot tell who is alive
    const now = Date.now();
    const gone = this.listener.heard.expire(now);
    for (const m of gone) this.log.warn({ member: m.id, silent_ms: now - m.lastSeenMs }, "member expired");
    if (gone.length > 0) this.changed();
  }

  private changed(): void {
    const active = this.activeIds().join(",");
    if (active === this.lastActive) return;
    this.lastActive = active;
    for (const cb of this.listeners) cb();
  }
}
