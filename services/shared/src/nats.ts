// Each service's NATS connection (NatsLink): connecting in the background, reconnecting
// forever, telling a refused user from an outage, and draining at shutdown. What travels over
// it is mesh-messages.ts's.
import { connect, type NatsConnection } from "@nats-io/transport-node";
import type { Meter } from "@opentelemetry/api";
import type { Dependency } from "./dependency.js";
import type { Logger } from "./logger.js";
import { within } from "./bounded-wait.js";
import { observableGauge } from "./telemetry/instruments.js";

/** A NATS user and its password (NATS_USER/NATS_PASSWORD); undefined for a server without authorization. */
export interface NatsCredentials {
  user: string;
  password: string;
}

// How long a drain at shutdown may take before the connection is simply closed.
const DRAIN_TIMEOUT_MS = 3_000;

/**
 * A service's NATS connection: it connects in the background from the start and keeps
 * reconnecting forever, so the service opens its ports and works on its Postgres paths while
 * NATS is away (at start too), and picks up again when it returns. Subscriptions made on the
 * connection survive reconnects.
 *
 * A refused user is a configuration mistake, not an outage: `ready` rejects naming the
 * variables to check, and the service exits 1.
 */
export class NatsLink implements Dependency {
  readonly name = "NATS";
  /** Resolves with the connection once it first connects. */
  readonly ready: Promise<NatsConnection>;
  #nc: NatsConnection | undefined;
  #connected = false;
  #closed = false;

  /**
   * `meter`, when given, gets the nats_connected gauge (one per process: pass it for the
   * service's main connection only); it reads 0 until the first connect.
   */
  constructor(
    url: string,
    private readonly credentials: NatsCredentials | undefined,
    private readonly connectionName: string,
    private readonly log: Logger,
    meter?: Meter,
  ) {
    if (meter)
      observableGauge(meter, "nats_connected").addCallback((r) => r.observe(this.#connected ? 1 : 0));
    this.ready = this.#connect(url);
    // The service handles a rejection (service-runtime.ts); this only keeps an early one from
    // counting as unhandled before anyone awaits it.
    this.ready.catch(() => {});
  }

  /** Whether the connection has connected at least once (it may be reconnecting now). */
  get isReady(): boolean {
    return this.#nc !== undefined;
  }

  /**
   * The connection while it is connected; undefined before the first connect, while
   * reconnecting, and after close. Whoever may skip a publish while NATS is away (an
   * announcement, which the dispatchers' poll makes up for) asks here rather than have it
   * buffered or thrown.
   */
  ifConnected(): NatsConnection | undefined {
    return this.#connected ? this.#nc : undefined;
  }

  /** The health check: connected, and the server answers a round trip. */
  async check(): Promise<boolean> {
    const nc = this.ifConnected();
    return nc !== undefined && (await nc.rtt()) >= 0;
  }

  /** Drains the connection when it is up (a few seconds at most), closes it otherwise. */
  async close(): Promise<void> {
    this.#closed = true;
    const nc = this.#nc;
    if (!nc || nc.isClosed()) return;
    if (this.#connected) {
      // A drain flushes through the server: it can wait forever for one that went away.
      const drained = await within(
        nc.drain().then(
          () => true,
          () => false,
        ),
        DRAIN_TIMEOUT_MS,
      );
      if (drained?.value) return;
    }
    await nc.close();
  }

  async #connect(url: string): Promise<NatsConnection> {
    const where = { nats_connection: this.connectionName, nats_user: this.credentials?.user ?? "(none)" };
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers: url.split(","),
        name: this.connectionName,
        ...(this.credentials ? { user: this.credentials.user, pass: this.credentials.password } : {}),
        maxReconnectAttempts: -1,
        reconnectTimeWait: 500,
        // The first connection is retried like a reconnect, forever, instead of failing.
        waitOnFirstConnect: true,
        timeout: 5_000,
      });
    } catch (err) {
      // nats.js gives up (even with waitOnFirstConnect) only when the server refuses the user twice.
      if (err instanceof Error && /authoriz|authentication/i.test(`${err.name} ${err.message}`)) {
        const who = this.credentials
          ? `user "${this.credentials.user}"`
          : "a connection without credentials (NATS_USER is not set)";
        throw new Error(
          `NATS refused ${who} for ${this.connectionName}: check NATS_USER/NATS_PASSWORD (CALLBACK_NATS_* for tenant callbacks) against the server's users`,
          { cause: err },
        );
      }
      throw err;
    }
    if (this.#closed) {
      // The service stopped while this was connecting.
      await nc.close();
      return new Promise<never>(() => {});
    }
    this.#nc = nc;
    this.#connected = true;
    this.log.info(where, "NATS connected");
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === "disconnect") {
          this.#connected = false;
          this.log.warn({ ...where, nats: s.type }, "NATS disconnected");
        } else if (s.type === "reconnect") {
          this.#connected = true;
          this.log.info({ ...where, nats: s.type }, "NATS reconnected");
        }
        // A permissions violation is the server refusing something this user may not do.
        else if (s.type === "error") this.log.warn({ ...where, nats: s.type, err: s.error }, "NATS error");
      }
    })();
    void nc.closed().then((err) => {
      this.#connected = false;
      if (err && !this.#closed) this.log.error({ ...where, err }, "NATS connection closed for good");
    });
    return nc;
  }
}

/** Starts connecting to NATS as `credentials.user` in the background; see NatsLink. */
export function connectNats(
  url: string,
  credentials: NatsCredentials | undefined,
  name: string,
  log: Logger,
  meter?: Meter,
): NatsLink {
  return new NatsLink(url, credentials, name, log, meter);
}
