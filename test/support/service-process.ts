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
  child: ChildProcess;
  /** Everything the process printed so far. */
  output(): string;
  /** Sends a signal and waits for exit; returns the exit code (null when killed by signal). */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
  exited: Promise<number | null>;
}

/** Spawns services/<name>/src/main.ts on free ports and waits for readiness. */
export async function startService(
  name: "timer" | "dispatcher" | "admin",
  env: Record<string, string>,
  opts: { readyTimeoutMs?: number; waitReady?: boolean } = {},
): Promise<ServiceProcess> {
  const grpcPort = env["GRPC_PORT"] ? Number(env["GRPC_PORT"]) : await freePort();
  const httpPort = env["HTTP_PORT"] ? Number(env["HTTP_PORT"]) : await freePort();
  const child = spawn(process.execPath, ["--import", "tsx", `services/${name}/src/main.ts`], {
    cwd: root,
    env: { PATH: process.env["PATH"] ?? "", LOG_LEVEL: "info", ...testDefaults(env), ...env, GRPC_PORT: String(grpcPort), HTTP_PORT: String(httpPort), BIND_HOST: "127.0.0.1" },
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
    async [Symbol.asyncDispose]() {
      if (child.signalCode === "SIGSTOP") child.kill("SIGCONT");
      await proc.stop("SIGTERM");
    },
  };
  if (opts.waitReady !== false) {
    let dead = false;
    void exited.then(() => (dead = true));
    try {
      await waitFor(
        async () => {
          if (dead) throw new Error(`${name} exited during start:\n${out}`);
          const res = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
          return res.status === 200;
        },
        opts.readyTimeoutMs ?? 30_000,
        `${name} to become ready`,
        50,
      );
    } catch (err) {
      await proc.stop("SIGKILL");
      throw new Error(`${name} did not become ready; output:\n${out}`, { cause: err });
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
  const hasTokens = env["AUTH_TOKENS"] !== undefined || env["AUTH_TOKENS_FILE"] !== undefined;
  return {
    ...(hasTokens ? {} : { AUTH_DISABLED: "true" }),
    CALLBACK_ALLOWED_NETWORKS: "127.0.0.0/8,::1/128",
  };
}
