import { connect, type NatsConnection } from "@nats-io/transport-node";
import type { Meter } from "@opentelemetry/api";
import type { Logger } from "./logger.js";

/** A NATS user and its password (NATS_USER/NATS_PASSWORD); undefined for a server without authorization. */
export interface NatsCredentials {
  user: string;
  password: string;
}

/**
 * Connects to NATS as `credentials.user` and keeps reconnecting forever: a service keeps
 * working (on its Postgres paths) while NATS is away, and picks up again when it returns.
 * `meter`, when given, gets the nats_connected gauge (one per process: pass it for the
 * service's main connection only).
 */
export async function connectNats(
  url: string,
  credentials: NatsCredentials | undefined,
  name: string,
  log: Logger,
  meter?: Meter,
): Promise<NatsConnection> {
  let nc: NatsConnection;
  try {
    nc = await connect({
      servers: url.split(","),
      name,
      ...(credentials ? { user: credentials.user, pass: credentials.password } : {}),
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      waitOnFirstConnect: true,
      timeout: 5_000,
    });
  } catch (err) {
    // A refused user is a configuration mistake, not an outage: say which variables to check.
    if (err instanceof Error && /authoriz|authentication/i.test(`${err.name} ${err.message}`)) {
      const who = credentials ? `user "${credentials.user}"` : "a connection without credentials (NATS_USER is not set)";
      throw new Error(`NATS refused ${who} for ${name}: check NATS_USER/NATS_PASSWORD (CALLBACK_NATS_* for tenant callbacks) against the server's users`, { cause: err });
    }
    throw err;
  }
  let connected = 1;
  meter?.createObservableGauge("nats_connected", { description: "1 while connected to NATS" }).addCallback((r) => r.observe(connected));
  const where = { nats_connection: name, nats_user: credentials?.user ?? "(none)" };
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect") connected = 0;
      else if (s.type === "reconnect") connected = 1;
      if (s.type === "disconnect") log.warn({ ...where, nats: s.type }, "NATS disconnected");
      else if (s.type === "reconnect") log.info({ ...where, nats: s.type }, "NATS reconnected");
      // A permissions violation is the server refusing something this user may not do.
      else if (s.type === "error") log.warn({ ...where, nats: s.type, err: s.error }, "NATS error");
    }
  })();
  return nc;
}
