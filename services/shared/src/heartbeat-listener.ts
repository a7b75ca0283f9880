// Who is alive in the mesh, heard from the dispatchers' heartbeats and goodbyes. Every
// dispatcher (membership.ts) and the admin (dispatcher-directory.ts) listen to the same two
// subjects and must agree on who is alive, so the subscribing, the decoding and checking
// (mesh-messages.ts; a message that does not fit is dropped and counted) and the liveness rule
// exist only here: a dispatcher is alive while its last heartbeat is at most the TTL old, and a
// goodbye outranks heartbeats for one TTL, as one may still be on its way when the goodbye lands.
//
// What each side does with a change (the dispatcher reassigns shards, and ignores itself; the
// admin only reads) stays with that side, through HeartbeatEvents.
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { MeshMessageDrops } from "./mesh-message-drops.js";
import {
  decodeHeartbeat,
  decodeLeave,
  HEARTBEAT_SUBJECT,
  type Heartbeat,
  LEAVE_SUBJECT,
} from "./mesh-messages.js";

/** A dispatcher as its last heartbeat describes it. */
export interface HeardDispatcher {
  id: string;
  /** host:port of its DispatcherService. */
  address: string;
  version: string;
  startedAtMs: number;
  /** A draining dispatcher is alive but owns no shards. */
  draining: boolean;
  lastSeenMs: number;
}

/**
 * What a heartbeat did to the view: a dispatcher `joined`, a known one changed its `draining`
 * flag, was only `renewed`, or the heartbeat was `ignored` (it was overtaken by a goodbye).
 */
export type HeartbeatChange = "joined" | "draining_changed" | "renewed" | "ignored";

/** The dispatchers heard within ttlMs of nowMs, sorted by id. */
export function liveMembers(
  members: Iterable<HeardDispatcher>,
  nowMs: number,
  ttlMs: number,
): HeardDispatcher[] {
  return [...members].filter((m) => nowMs - m.lastSeenMs <= ttlMs).sort(byId);
}

/** The liveness view itself: heartbeats and goodbyes in, live dispatchers out; the clock is passed in. */
export class HeardDispatchers {
  private readonly members = new Map<string, HeardDispatcher>();
  /** When each dispatcher said goodbye: its later heartbeats are ignored for one TTL. */
  private readonly leftAt = new Map<string, number>();

  constructor(private readonly ttlMs: number) {}

  /** Takes a heartbeat heard at nowMs and says what it changed. */
  heartbeat(hb: Heartbeat, nowMs: number): HeartbeatChange {
    const id = hb.dispatcherId;
    const left = this.leftAt.get(id);
    if (left !== undefined && nowMs - left < this.ttlMs) return "ignored";
    const known = this.members.get(id);
    this.members.set(id, {
      id,
      address: hb.grpcAddress,
      version: hb.version,
      startedAtMs: hb.startedAtMs,
      draining: hb.draining,
      lastSeenMs: nowMs,
    });
    if (!known) return "joined";
    return known.draining === hb.draining ? "renewed" : "draining_changed";
  }

  /** Takes a goodbye heard at nowMs; returns the dispatcher it removed, if it was in the view. */
  leave(id: string, nowMs: number): HeardDispatcher | undefined {
    this.leftAt.set(id, nowMs);
    const known = this.members.get(id);
    this.members.delete(id);
    return known;
  }

  /** Forgets the dispatchers silent for longer than the TTL at nowMs, and returns them. */
  expire(nowMs: number): HeardDispatcher[] {
    const live = new Set(liveMembers(this.members.values(), nowMs, this.ttlMs));
    const gone = [...this.members.values()].filter((m) => !live.has(m));
    for (const m of gone) this.members.delete(m.id);
    // A goodbye older than the TTL outranks nothing any more.
    for (const [id, at] of this.leftAt) if (nowMs - at >= this.ttlMs) this.leftAt.delete(id);
    return gone;
  }

  /** The dispatchers in the view, sorted by id (call expire first for the live ones only). */
  list(): HeardDispatcher[] {
    return [...this.members.values()].sort(byId);
  }
}

/** What a side of the mesh does with what the listener hears. */
export interface HeartbeatEvents {
  /** A heartbeat of selfId came back: our own connection to NATS carries (not put in the view). */
  selfHeard?(nowMs: number): void;
  /** Another dispatcher's heartbeat was taken into the view. */
  heard?(id: string, change: HeartbeatChange): void;
  /** A dispatcher other than selfId said goodbye; `known` is the entry it removed, if any. */
  left?(id: string, known: HeardDispatcher | undefined): void;
}

/** Subscribes to heartbeats and goodbyes, checks each, and keeps a HeardDispatchers view. */
export class HeartbeatListener {
  /** The view the listener keeps. */
  readonly heard: HeardDispatchers;
  private subs: Subscription[] = [];

  constructor(
    private readonly opts: {
      ttlMs: number;
      drops: MeshMessageDrops;
      /** The listening dispatcher's own id: its heartbeats and goodbyes stay out of the view. */
      selfId?: string;
      events?: HeartbeatEvents;
    },
  ) {
    this.heard = new HeardDispatchers(opts.ttlMs);
  }

  /** Starts listening on `nc` (the subscriptions survive reconnects). */
  start(nc: NatsConnection): void {
    this.subs.push(
      nc.subscribe(HEARTBEAT_SUBJECT, {
        callback: (err, msg) => {
          if (!err) this.receiveHeartbeat(msg.data, Date.now());
        },
      }),
      nc.subscribe(LEAVE_SUBJECT, {
        callback: (err, msg) => {
          if (!err) this.receiveLeave(msg.data, Date.now());
        },
      }),
    );
  }

  /** Takes a message of HEARTBEAT_SUBJECT received at nowMs. */
  receiveHeartbeat(data: Uint8Array, nowMs: number): void {
    const { drops, selfId, events } = this.opts;
    const hb = decodeHeartbeat(data, nowMs);
    if (!hb.ok) {
      drops.drop(HEARTBEAT_SUBJECT, hb.reason, nowMs);
      return;
    }
    if (hb.value.dispatcherId === selfId) {
      events?.selfHeard?.(nowMs);
      return;
    }
    const change = this.heard.heartbeat(hb.value, nowMs);
    events?.heard?.(hb.value.dispatcherId, change);
  }

  /** Takes a message of LEAVE_SUBJECT received at nowMs. */
  receiveLeave(data: Uint8Array, nowMs: number): void {
    const { drops, selfId, events } = this.opts;
    const leave = decodeLeave(data);
    if (!leave.ok) {
      drops.drop(LEAVE_SUBJECT, leave.reason, nowMs);
      return;
    }
    if (leave.value === selfId) return;
    const known = this.heard.leave(leave.value, nowMs);
    events?.left?.(leave.value, known);
  }

  /** Stops listening. */
  stop(): void {
    for (const s of this.subs) s.unsubscribe();
    this.subs = [];
  }
}

function byId(a: HeardDispatcher, b: HeardDispatcher): number {
  return a.id.localeCompare(b.id);
}
