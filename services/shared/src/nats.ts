import { connect, type MsgHdrs, type NatsConnection } from "@nats-io/transport-node";
import type { Meter } from "@opentelemetry/api";
import type { Logger } from "./logger.js";

/** Subject on which new near-term timers of one shard are announced to its owner. */
export function shardSubject(shard: number): string {
  return `timers.shard.${shard}`;
}

/** Dispatcher heartbeats (JSON: id, grpc, version, started, draining). */
export const HEARTBEAT_SUBJECT = "mesh.dispatchers.heartbeat";

/** A dispatcher's goodbye (its id). */
export const LEAVE_SUBJECT = "mesh.dispatchers.leave";

/**
 * Request to every dispatcher to reconcile its shard leases with the assignment now (JSON
 * { undrain?: string[] }); each replies { id, draining, owned } when a reply subject is set.
 */
export const REBALANCE_SUBJECT = "mesh.dispatchers.rebalance";

/** Announcement of a timer due soon: enough for the owner to hold it in memory until it is due. */
export interface TimerAnnouncement {
  g: string; // group_id
  t: string; // timer_id
  s: number; // shard
  at: number; // next attempt, epoch ms
}

const announcementEncoder = new TextEncoder();

/**
 * Publishes a timer's announcement on its shard's subject (the one wire format for it).
 * Throws when the connection is closed; callers treat that as "the poll will find it".
 */
export function publishAnnouncement(nc: NatsConnection, a: TimerAnnouncement, headers?: MsgHdrs): void {
  nc.publish(shardSubject(a.s), announcementEncoder.encode(JSON.stringify(a)), headers ? { headers } : undefined);
}

/**
 * Connects to NATS and keeps reconnecting forever: a service keeps working (on its Postgres
 * paths) while NATS is away, and picks up again when it returns.
 */
export async function connectNats(url: string, name: string, log: Logger, meter?: Meter): Promise<NatsConnection> {
  const nc = await connect({
    servers: url.split(","),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    waitOnFirstConnect: true,
    timeout: 5_000,
  });
  let connected = 1;
  meter?.createObservableGauge("nats_connected", { description: "1 while connected to NATS" }).addCallback((r) => r.observe(connected));
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect") connected = 0;
      else if (s.type === "reconnect") connected = 1;
      if (s.type === "disconnect") log.warn({ nats: s.type }, "NATS disconnected");
      else if (s.type === "reconnect") log.info({ nats: s.type }, "NATS reconnected");
      else if (s.type === "error") log.warn({ nats: s.type, err: s.error }, "NATS error");
    }
  })();
  return nc;
}
