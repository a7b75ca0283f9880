// The messages the mesh's processes exchange over NATS (proto/mesh/v1/mesh.proto): their
// subjects, how each is published, and how each is decoded and checked on arrival.
//
// NATS permissions (infra/nats/nats.conf) decide who may publish on a mesh subject; they say
// nothing about what was published. A message that does not decode, or decodes to values the
// receiver could not act on safely (an id Postgres would reject in a claim batch, a shard the
// sender cannot have meant, an address that is not host:port), is refused here, with a reason,
// and never reaches the scheduler, the membership view or the admin's directory.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import ipaddr from "ipaddr.js";
import type { MsgHdrs, NatsConnection } from "@nats-io/transport-node";
import {
  DispatcherHeartbeatSchema,
  DispatcherLeaveSchema,
  RebalanceReplySchema,
  RebalanceRequestSchema,
  TimerAnnouncementSchema,
  type TimerAnnouncement,
} from "./gen/mesh/v1/mesh_pb.js";
import { shardOf } from "./shard.js";
import { isValidId, isValidTimerId, timerName } from "./timer-id.js";

/** Subject on which timers due soon are announced to the owner of `shard`. */
export function shardSubject(shard: number): string {
  return `timers.shard.${shard}`;
}

/** Every shard's announcement subject: the name drops are counted under (one series, not one per shard). */
export const ANNOUNCEMENT_SUBJECTS = "timers.shard.*";

/** Dispatcher heartbeats (DispatcherHeartbeat), every HEARTBEAT_INTERVAL. */
export const HEARTBEAT_SUBJECT = "mesh.dispatchers.heartbeat";

/** A dispatcher's goodbye (DispatcherLeave). */
export const LEAVE_SUBJECT = "mesh.dispatchers.leave";

/** The admin's request to every dispatcher to reconcile its leases now (RebalanceRequest; replies are RebalanceReply). */
export const REBALANCE_SUBJECT = "mesh.dispatchers.rebalance";

/** What replies to a rebalance request are counted under when dropped (they arrive on an inbox). */
export const REBALANCE_REPLIES = "mesh.dispatchers.rebalance (reply)";

/** Largest mesh message accepted, in bytes: ids are at most 128 characters, so real ones are far smaller. */
export const MAX_MESH_MESSAGE_BYTES = 4096;
/** Most timers one announcement carries: a CreateTimers call's (at most 1,000) of one shard. */
export const MAX_ANNOUNCED_PER_MESSAGE = 1000;
/**
 * Largest announcement accepted, in bytes: MAX_ANNOUNCED_PER_MESSAGE timers of the largest
 * valid size (two 128-character ids, a 300-character destination, a shard and a time, with
 * their tags and lengths: under 600 bytes each). Checked before decoding, like every bound here.
 */
export const MAX_ANNOUNCEMENT_BYTES = MAX_ANNOUNCED_PER_MESSAGE * 600;
/** Largest rebalance request: it may name many dispatchers to undrain. */
export const MAX_REBALANCE_REQUEST_BYTES = 64 * 1024;
const MAX_UNDRAIN = 256;
/** Longest destination an announcement may carry. */
export const MAX_DESTINATION_CHARS = 300;
const MAX_VERSION_CHARS = 64;
/** Timestamps further than this from our clock are nonsense, whatever the sender meant. */
const MAX_CLOCK_DISTANCE_MS = 400 * 86_400_000;

/** A timer due soon, as its shard's owner needs it. */
export interface Announcement {
  groupId: string;
  timerId: string;
  shard: number;
  dueMs: number;
  /** Fair-delivery key of its callback (callback-destination.ts). */
  destination: string;
  /**
   * The timer version (timer.v1.Timer.version) announced: its owner claims only that version.
   * 0 from a sender that predates versions (or knows none): any version may be claimed.
   */
  version: number;
}

/** A dispatcher as one of its heartbeats describes it. */
export interface Heartbeat {
  dispatcherId: string;
  /** host:port of its DispatcherService. */
  grpcAddress: string;
  version: string;
  startedAtMs: number;
  draining: boolean;
}

/** A dispatcher's answer to a rebalance request. */
export interface RebalanceAnswer {
  dispatcherId: string;
  draining: boolean;
  ownedShards: number;
}

/** What decoding a mesh message came to: the value, or why it was refused. */
export type Decoded<T> = { ok: true; value: T } | { ok: false; reason: DropReason };

/** Why a message was refused (the `reason` label of mesh_messages_dropped_total). */
export type DropReason =
  | "too_large"
  | "undecodable"
  | "invalid_id"
  | "invalid_shard"
  | "invalid_time"
  | "invalid_address"
  | "invalid_field";

const refuse = (reason: DropReason): { ok: false; reason: DropReason } => ({ ok: false, reason });

// ---------------------------------------------------------------------------------------------
// Announcements: timer and admin services publish, the shard's owner consumes.

/** The wire form of one announcement. */
export function encodeAnnouncement(a: Announcement): Uint8Array {
  return encodeAnnouncements([a]);
}

/**
 * The wire form of announcements of one shard (1 to MAX_ANNOUNCED_PER_MESSAGE): the first in
 * the message's own fields, the others in `more` (see proto/mesh/v1/mesh.proto).
 */
export function encodeAnnouncements(list: readonly Announcement[]): Uint8Array {
  const [first, ...rest] = list;
  if (!first || list.length > MAX_ANNOUNCED_PER_MESSAGE)
    throw new RangeError(
      `an announcement carries 1 to ${MAX_ANNOUNCED_PER_MESSAGE} timers, not ${list.length}`,
    );
  const entry = (a: Announcement) => ({
    groupId: a.groupId,
    timerId: a.timerId,
    shard: a.shard,
    dueAtMs: BigInt(a.dueMs),
    destination: a.destination,
    version: BigInt(a.version),
  });
  return toBinary(
    TimerAnnouncementSchema,
    create(TimerAnnouncementSchema, { ...entry(first), more: rest.map(entry) }),
  );
}

/**
 * Publishes a timer's announcement on its shard's subject. Throws when the connection is
 * closed; callers treat that as "the owner's poll will find it".
 */
export function publishAnnouncement(nc: NatsConnection, a: Announcement, headers?: MsgHdrs): void {
  nc.publish(shardSubject(a.shard), encodeAnnouncement(a), headers ? { headers } : undefined);
}

/**
 * Publishes announcements of timers of one shard on its subject, MAX_ANNOUNCED_PER_MESSAGE to
 * a message: one message where there used to be one per timer. Throws as publishAnnouncement.
 */
export function publishAnnouncements(
  nc: NatsConnection,
  shard: number,
  list: readonly Announcement[],
  headers?: MsgHdrs,
): void {
  for (const a of list)
    if (a.shard !== shard)
      throw new RangeError(`timer ${timerName(a.groupId, a.timerId)} is of shard ${a.shard}, not ${shard}`);
  for (let i = 0; i < list.length; i += MAX_ANNOUNCED_PER_MESSAGE) {
    nc.publish(
      shardSubject(shard),
      encodeAnnouncements(list.slice(i, i + MAX_ANNOUNCED_PER_MESSAGE)),
      headers ? { headers } : undefined,
    );
  }
}

/**
 * Decodes an announcement received on the subject of `subjectShard`: every timer it carries,
 * each checked (ids by the API's rule, the shard both the subject's and the one (group, timer)
 * hashes to, the due time near now, the destination). One bad entry refuses the whole message:
 * our own services never send one, so its other entries are not trusted either (their owner's
 * poll still finds real timers).
 */
export function decodeAnnouncements(
  data: Uint8Array,
  subjectShard: number,
  shardCount: number,
  nowMs = Date.now(),
): Decoded<Announcement[]> {
  if (data.length > MAX_ANNOUNCEMENT_BYTES) return refuse("too_large");
  const m = parse(() => fromBinary(TimerAnnouncementSchema, data));
  if (!m) return refuse("undecodable");
  if (m.more.length >= MAX_ANNOUNCED_PER_MESSAGE) return refuse("too_large");
  const out: Announcement[] = [];
  for (const entry of [m, ...m.more]) {
    // Entries of `more` are flat: nesting would let a message hide timers from the count above.
    if (entry !== m && entry.more.length > 0) return refuse("invalid_field");
    const a = checkAnnouncement(entry, subjectShard, shardCount, nowMs);
    if (!a.ok) return a;
    out.push(a.value);
  }
  return { ok: true, value: out };
}

function checkAnnouncement(
  m: TimerAnnouncement,
  subjectShard: number,
  shardCount: number,
  nowMs: number,
): Decoded<Announcement> {
  if (!isValidId(m.groupId) || !isValidTimerId(m.timerId)) return refuse("invalid_id");
  if (
    m.shard !== subjectShard ||
    m.shard < 0 ||
    m.shard >= shardCount ||
    shardOf(m.groupId, m.timerId, shardCount) !== m.shard
  ) {
    return refuse("invalid_shard");
  }
  const dueMs = saneTime(m.dueAtMs, nowMs);
  if (dueMs === undefined) return refuse("invalid_time");
  if (m.destination.length > MAX_DESTINATION_CHARS || hasControlCharacters(m.destination))
    return refuse("invalid_field");
  if (m.version < 0n || m.version > BigInt(Number.MAX_SAFE_INTEGER)) return refuse("invalid_field");
  return {
    ok: true,
    value: {
      groupId: m.groupId,
      timerId: m.timerId,
      shard: m.shard,
      dueMs,
      destination: m.destination,
      version: Number(m.version),
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Membership: dispatchers publish, dispatchers and the admin consume.

/** The wire form of a heartbeat. */
export function encodeHeartbeat(hb: Heartbeat): Uint8Array {
  return toBinary(
    DispatcherHeartbeatSchema,
    create(DispatcherHeartbeatSchema, {
      dispatcherId: hb.dispatcherId,
      grpcAddress: hb.grpcAddress,
      version: hb.version,
      startedAtMs: BigInt(hb.startedAtMs),
      draining: hb.draining,
    }),
  );
}

/** Decodes a heartbeat: a well-formed id, a host:port address, a sane start time. */
export function decodeHeartbeat(data: Uint8Array, nowMs = Date.now()): Decoded<Heartbeat> {
  if (data.length > MAX_MESH_MESSAGE_BYTES) return refuse("too_large");
  const m = parse(() => fromBinary(DispatcherHeartbeatSchema, data));
  if (!m) return refuse("undecodable");
  if (!isValidId(m.dispatcherId)) return refuse("invalid_id");
  if (!isHostPort(m.grpcAddress)) return refuse("invalid_address");
  const startedAtMs = saneTime(m.startedAtMs, nowMs);
  if (startedAtMs === undefined || startedAtMs > nowMs + 60_000) return refuse("invalid_time");
  if (m.version.length > MAX_VERSION_CHARS || hasControlCharacters(m.version)) return refuse("invalid_field");
  return {
    ok: true,
    value: {
      dispatcherId: m.dispatcherId,
      grpcAddress: m.grpcAddress,
      version: m.version,
      startedAtMs,
      draining: m.draining,
    },
  };
}

/** The wire form of a goodbye. */
export function encodeLeave(dispatcherId: string): Uint8Array {
  return toBinary(DispatcherLeaveSchema, create(DispatcherLeaveSchema, { dispatcherId }));
}

/** Decodes a goodbye: the id of the dispatcher that leaves. */
export function decodeLeave(data: Uint8Array): Decoded<string> {
  if (data.length > MAX_MESH_MESSAGE_BYTES) return refuse("too_large");
  const m = parse(() => fromBinary(DispatcherLeaveSchema, data));
  if (!m) return refuse("undecodable");
  if (!isValidId(m.dispatcherId)) return refuse("invalid_id");
  return { ok: true, value: m.dispatcherId };
}

// ---------------------------------------------------------------------------------------------
// Rebalance: the admin requests, every dispatcher replies.

/** The wire form of a rebalance request. */
export function encodeRebalanceRequest(undrain: string[]): Uint8Array {
  return toBinary(RebalanceRequestSchema, create(RebalanceRequestSchema, { undrain }));
}

/** Decodes a rebalance request: the ids of the dispatchers to undrain. */
export function decodeRebalanceRequest(data: Uint8Array): Decoded<{ undrain: string[] }> {
  if (data.length > MAX_REBALANCE_REQUEST_BYTES) return refuse("too_large");
  const m = parse(() => fromBinary(RebalanceRequestSchema, data));
  if (!m) return refuse("undecodable");
  if (m.undrain.length > MAX_UNDRAIN) return refuse("too_large");
  if (!m.undrain.every(isValidId)) return refuse("invalid_id");
  return { ok: true, value: { undrain: m.undrain } };
}

/** The wire form of a rebalance reply. */
export function encodeRebalanceReply(a: RebalanceAnswer): Uint8Array {
  return toBinary(RebalanceReplySchema, create(RebalanceReplySchema, a));
}

/** Decodes a rebalance reply: who answered, and how many shards it holds (at most shardCount). */
export function decodeRebalanceReply(data: Uint8Array, shardCount: number): Decoded<RebalanceAnswer> {
  if (data.length > MAX_MESH_MESSAGE_BYTES) return refuse("too_large");
  const m = parse(() => fromBinary(RebalanceReplySchema, data));
  if (!m) return refuse("undecodable");
  if (!isValidId(m.dispatcherId)) return refuse("invalid_id");
  if (m.ownedShards < 0 || m.ownedShards > shardCount) return refuse("invalid_shard");
  return {
    ok: true,
    value: { dispatcherId: m.dispatcherId, draining: m.draining, ownedShards: m.ownedShards },
  };
}

// ---------------------------------------------------------------------------------------------

function parse<T>(decode: () => T): T | undefined {
  try {
    return decode();
  } catch {
    return undefined;
  }
}

/** Epoch ms from an int64 field, when within MAX_CLOCK_DISTANCE_MS of now. */
function saneTime(ms: bigint, nowMs: number): number | undefined {
  const n = Number(ms);
  return Math.abs(n - nowMs) <= MAX_CLOCK_DISTANCE_MS ? n : undefined;
}

/** Whether `s` holds a C0 control character or DEL (they would forge log lines and terminal output). */
function hasControlCharacters(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
}

const DNS_NAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

/** host:port with a DNS name, an IPv4 address or a bracketed IPv6 address, and a port 1-65535. */
export function isHostPort(address: string): boolean {
  const m = /^(\[[^\]]+\]|[^:[\]]+):(\d{1,5})$/.exec(address);
  if (!m) return false;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return false;
  const host = m[1]!;
  if (host.startsWith("[")) return ipaddr.IPv6.isValid(host.slice(1, -1));
  return ipaddr.IPv4.isValidFourPartDecimal(host) || (DNS_NAME.test(host) && !/^[\d.]+$/.test(host));
}
