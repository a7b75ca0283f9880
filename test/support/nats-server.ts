// A real nats-server on a free port with JetStream and the mesh's users and permissions
// (infra/nats/nats.conf, random passwords), for one test file: started the way `npm start` starts
// it (scripts/nats-child.ts), on a store of its own. Async-disposable.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { type NatsServer, startNatsServer } from "../../scripts/nats-child.js";
import {
  type NatsPasswords,
  type NatsUser,
  randomPasswords,
  serviceNatsEnv,
} from "../../scripts/nats-users.js";
import { freePort } from "./wait.js";

/** A running test nats-server. */
export interface TestNats extends AsyncDisposable {
  url: string;
  port: number;
  /** Every user's password. */
  passwords: NatsPasswords;
  /** NATS_URL plus the service's own user (and, for the dispatcher, the callbacks user). */
  serviceEnv(service: "timer" | "dispatcher" | "admin"): Record<string, string>;
  /** A client connection as `user` (the test closes it). */
  connectAs(user: NatsUser): Promise<NatsConnection>;
  /** Stops the server (SIGTERM; SIGKILL: a crash) and waits for it to exit. */
  stop(signal?: "SIGTERM" | "SIGKILL"): Promise<void>;
  /** Starts it (again) on the same port and store. */
  restart(): Promise<void>;
}

/**
 * Starts nats-server with JetStream on a free port; fails clearly when the binary is missing.
 * With `launch: false` the port and users are chosen but nothing listens until restart():
 * NATS down at the services' start.
 */
export async function startNats(opts: { launch?: boolean } = {}): Promise<TestNats> {
  const port = await freePort();
  const store = await mkdtemp(join(tmpdir(), "nats-test-"));
  const passwords = randomPasswords();
  let server: NatsServer | undefined;
  const launch = async () => {
    const started = await startNatsServer({ port, storeDir: store, passwords, readyTimeoutMs: 10_000 });
    if (started.port !== port) {
      // startNatsServer moves to a free port when its own is taken; the services' NATS_URL names this one.
      await started.stop();
      throw new Error(`nats-server could not have port ${port} again: it is taken`);
    }
    server = started;
  };
  const stop = async (signal: "SIGTERM" | "SIGKILL" = "SIGTERM") => {
    const s = server;
    if (!s) return;
    server = undefined;
    if (signal === "SIGTERM") return s.stop();
    s.child.kill("SIGKILL"); // a crash: no clean-up, the pid file stays
    await s.exited;
  };
  if (opts.launch !== false) await launch();
  const url = `nats://127.0.0.1:${port}`;
  return {
    url,
    port,
    passwords,
    serviceEnv: (service) => ({ NATS_URL: url, ...serviceNatsEnv(service, passwords) }),
    connectAs: (user) => connect({ servers: url, user, pass: passwords[user] }),
    stop,
    restart: launch,
    async [Symbol.asyncDispose]() {
      await stop();
      await rm(store, { recursive: true, force: true });
    },
  };
}
