// Starts a service the way an operator does (`node --import tsx services/<name>/src/main.ts`
// with its environment) and waits until its /readyz answers 200.
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { freePort, waitFor } from "./wait.js";

const root = fileURLToPath(new URL("../../", import.meta.url));

/** A service process under test. */
export interface ServiceProcess extends AsyncDisposable {
  name: string;
  grpcPort: number;
  httpPort: number;
  /** The admin's console port (CONSOLE_PORT), a free one unless the test set it; undefined for other services. */
  consolePort: number | undefined;
  child: ChildProcess;
  /** Everything the process printed so far. */
  output(): string;
  /** GET /readyz: its status code and JSON body (which checks pass, which are optional). */
  readiness(): Promise<{ status: number; body: Readiness }>;
  /** Waits until /readyz answers 200; throws with the output when the process exits first. */
  waitReady(timeoutMs?: number): Promise<void>;
  /** `p`, unless the process exits first: then a rejection with its exit code and output. */
  whileAlive<T>(p: Promise<T>): Promise<T>;
  /** Sends a signal and waits for exit; returns the exit code (null when killed by signal). */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
  exited: Promise<number | null>;
}

/** What /readyz and /health answer. */
export interface Readiness {
  status: string;
  service: string;
  checks: Record<string, boolean>;
  /** Checks shown but not needed for readiness. */
  optional?: string[];
}

/** Spawns services/<name>/src/main.ts on free ports and (unless `waitReady: false`) waits for readiness. */
export async function startService(
  name: "timer" | "dispatcher" | "admin",
  env: Record<string, string>,
  opts: { readyTimeoutMs?: number; waitReady?: boolean } = {},
): Promise<ServiceProcess> {
  const grpcPort = env.GRPC_PORT ? Number(env.GRPC_PORT) : await freePort();
  const httpPort = env.HTTP_PORT ? Number(env.HTTP_PORT) : await freePort();
  // Never the default 8083: admins of test files running side by side would share it.
  const consolePort =
    name !== "admin" ? undefined : env.CONSOLE_PORT ? Number(env.CONSOLE_PORT) : await freePort();
  const child = spawn(process.execPath, ["--import", "tsx", `services/${name}/src/main.ts`], {
    cwd: root,
    env: {
      PATH: process.env.PATH ?? "",
      LOG_LEVEL: "info",
      ...testDefaults(env),
      ...env,
      GRPC_PORT: String(grpcPort),
      HTTP_PORT: String(httpPort),
      ...(consolePort === undefined ? {} : { CONSOLE_PORT: String(consolePort) }),
      BIND_HOST: "127.0.0.1",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const proc: ServiceProcess = {
    name,
    grpcPort,
    httpPort,
    consolePort,
    child,
    output: () => out,
    exited,
    async stop(signal = "SIGTERM", timeoutMs = 30_000) {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
    async readiness() {
      const res = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
      return { status: res.status, body: (await res.json()) as Readiness };
    },
    whileAlive<T>(p: Promise<T>): Promise<T> {
      p.catch(() => {}); // settled after an exit: nobody waits for it any more
      const died = exited.then((code): never => {
        throw new Error(`${name} exited (code ${code}); output:\n${out}`);
      });
      return Promise.race([p, died]);
    },
    async waitReady(timeoutMs = 30_000) {
      try {
        await proc.whileAlive(
          waitFor(
            async () => (await fetch(`http://127.0.0.1:${httpPort}/readyz`)).status === 200,
            timeoutMs,
            `${name} to become ready`,
            50,
          ),
        );
      } catch (err) {
        throw new Error(`${name} did not become ready; output:\n${out}`, { cause: err });
      }
    },
    async [Symbol.asyncDispose]() {
      if (child.signalCode === "SIGSTOP") child.kill("SIGCONT");
      await proc.stop("SIGTERM");
    },
  };
  if (opts.waitReady !== false) {
    try {
      await proc.waitReady(opts.readyTimeoutMs);
    } catch (err) {
      await proc.stop("SIGKILL");
      throw err;
    }
  }
  return proc;
}

/**
 * What a test service gets unless the test says otherwise: no tokens (explicitly: a service
 * without token configuration refuses to start), and callbacks allowed to loopback receivers,
 * the only addresses tests send traffic to.
 */
function testDefaults(env: Record<string, string>): Record<string, string> {
  const hasTokens = env.AUTH_TOKENS !== undefined || env.AUTH_TOKENS_FILE !== undefined;
  return {
    ...(hasTokens ? {} : { AUTH_DISABLED: "true" }),
    CALLBACK_ALLOWED_NETWORKS: "127.0.0.0/8,::1/128",
  };
}
