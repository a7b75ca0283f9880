// A real nats-server on a free port with JetStream, for one test file. Async-disposable.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, waitFor, canConnect } from "./wait.js";

/** A running test nats-server. */
export interface TestNats extends AsyncDisposable {
  url: string;
  port: number;
  /** Stops the server (SIGTERM) and waits for it to exit. */
  stop(): Promise<void>;
  /** Starts it again on the same port and store. */
  restart(): Promise<void>;
}

/** Starts nats-server with JetStream on a free port; fails clearly when the binary is missing. */
export async function startNats(): Promise<TestNats> {
  const port = await freePort();
  const store = await mkdtemp(join(tmpdir(), "nats-test-"));
  let child: ChildProcess | undefined;
  const launch = async () => {
    const c = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", store], { stdio: "ignore" });
    const spawnError = new Promise<never>((_, reject) =>
      c.once("error", (err) => reject(new Error("nats-server is not on PATH: apt-get install nats-server", { cause: err }))),
    );
    child = c;
    await Promise.race([waitFor(() => canConnect(port), 10_000, `nats-server on port ${port}`), spawnError]);
  };
  const stop = async () => {
    const c = child;
    if (!c || c.exitCode !== null) return;
    const exited = new Promise((r) => c.once("exit", r));
    c.kill("SIGTERM");
    await exited;
  };
  await launch();
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    stop,
    restart: launch,
    async [Symbol.asyncDispose]() {
      await stop();
      await rm(store, { recursive: true, force: true });
    },
  };
}
