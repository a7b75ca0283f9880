// A real nats-server on a free port with JetStream and the mesh's users and permissions
// (infra/nats/nats.conf, random passwords), for one test file. Async-disposable.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import {
  NATS_CONFIG_FILE,
  randomPasswords,
  serverPasswordEnv,
  serviceNatsEnv,
  type NatsPasswords,
  type NatsUser,
} from "../../scripts/nats-users.js";
import { freePort, waitFor, canConnect } from "./wait.js";

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
  let child: ChildProcess | undefined;
  let log = "";
  const launch = async () => {
    log = "";
    const c = spawn(
      "nats-server",
      ["-c", NATS_CONFIG_FILE, "-a", "127.0.0.1", "-p", String(port), "-js", "-sd", store],
      {
        env: { PATH: process.env["PATH"] ?? "", ...serverPasswordEnv(passwords) },
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    c.stderr!.on("data", (d: Buffer) => (log = (log + d.toString()).slice(-4000)));
    const spawnError = new Promise<never>((_, reject) =>
      c.once("error", (err) =>
        reject(new Error("nats-server is not on PATH: apt-get install nats-server", { cause: err })),
      ),
    );
    const exited = new Promise<never>((_, reject) =>
      c.once("exit", (code) => reject(new Error(`nats-server exited (${code}):\n${log}`))),
    );
    child = c;
    await Promise.race([
      waitFor(() => canConnect(port), 10_000, `nats-server on port ${port}`),
      spawnError,
      exited,
    ]);
  };
  const stop = async (signal: "SIGTERM" | "SIGKILL" = "SIGTERM") => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once("exit", r));
    c.kill(signal);
    await exited;
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
