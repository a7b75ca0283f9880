// Supervising child processes and the ports they listen on, for whatever runs servers of its own
// (`npm start`, the embedded Postgres, nats-server, the tests' private servers): waiting for a
// child to exit or to serve, stopping it in signal steps, recognising processes an earlier run left
// behind, and the port checks done before starting one.
//
//   const server = superviseServer(spawn(bin, args), { what: "nats-server", bin, serverLog });
//   await server.waitUntilServing(() => canConnect(host, port), { address: url, timeoutMs, pollMs: 100 });
//   await stopChild(child, [["SIGTERM", 10_000], ["SIGKILL", 5_000]], true);
import type { ChildProcess } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { createServer, Socket } from "node:net";
import { delimiter, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { within } from "../services/shared/src/bounded-wait.js";

/** A process environment: process.env, or one a caller made up. */
export type Env = Record<string, string | undefined>;

/** Where a line of log output goes. */
export type Log = (line: string) => void;

/** How a process ended: its exit code, or the signal that killed it. */
export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Signals to send in turn, each with how long (ms) to wait for the process to exit after it. */
export type StopSteps = ReadonlyArray<readonly [NodeJS.Signals, number]>;

/** Resolves once `child` has exited (immediately if it already has). Never rejects. */
export function exitOf(child: ChildProcess): Promise<ExitInfo> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((res) => {
    child.once("exit", (code, signal) => res({ code, signal }));
    // A spawn failure (ENOENT, EACCES) emits "error" and possibly never "exit".
    child.once("error", () => res({ code: child.exitCode ?? -1, signal: child.signalCode }));
  });
}

/** "killed by SIGTERM" or "exit code 1", for messages. */
export function describeExit(e: ExitInfo): string {
  return e.signal ? `killed by ${e.signal}` : `exit code ${e.code ?? "unknown"}`;
}

/** Sends `signal` to a process, or to its whole process group when `group` (the child must have
 *  been spawned with `detached: true`). Ignores processes that are already gone. */
export function signalProcess(pid: number, signal: NodeJS.Signals, group = false): void {
  try {
    process.kill(group ? -pid : pid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ESRCH") throw err;
  }
}

/**
 * Stops a child: sends each signal in turn and waits up to its timeout for the child to exit;
 * the last step should be SIGKILL. With `group`, signals go to the child's process group, and
 * anything left in the group is SIGKILLed once the child has exited.
 */
export async function stopChild(child: ChildProcess, steps: StopSteps, group = false): Promise<ExitInfo> {
  const exited = exitOf(child);
  const pid = child.pid;
  if (pid !== undefined) {
    for (const [signal, timeoutMs] of steps) {
      if (child.exitCode !== null || child.signalCode !== null) break;
      signalProcess(pid, signal, group);
      // within() clears its timer: a child that exits at once leaves no timer holding the process.
      if (await within(exited, timeoutMs)) break;
    }
  }
  const info = await exited;
  if (group && pid !== undefined) signalProcess(pid, "SIGKILL", true);
  return info;
}

/**
 * stopChild for a process that is not our child (one an earlier run left behind), whose exit we
 * can only poll for. Returns whether it is gone.
 */
export async function stopPid(pid: number, steps: StopSteps, group = false): Promise<boolean> {
  for (const [signal, timeoutMs] of steps) {
    if (!isAlive(pid)) break;
    signalProcess(pid, signal, group);
    for (let waited = 0; waited < timeoutMs && isAlive(pid); waited += 100) await sleep(100);
  }
  if (group) signalProcess(pid, "SIGKILL", true);
  return !isAlive(pid);
}

/** Resolves after `ms`, or as soon as `signal` is aborted. Never rejects. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((res) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      res();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Whether a process with this pid exists (ours to signal or not). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** A live process as /proc describes it. */
export interface ProcessInfo {
  pid: number;
  ppid: number;
  argv: string[];
}

/** The parent pid of a live process (Linux /proc), or undefined if unknown / gone. */
export function parentPid(pid: number | string): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // "pid (comm) state ppid ..." — comm may contain spaces and parentheses.
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return undefined;
  }
}

/** Parent pid and argv of a live process (Linux /proc), or undefined if unknown / gone. */
export function processInfo(pid: number): ProcessInfo | undefined {
  const ppid = parentPid(pid);
  if (ppid === undefined) return undefined;
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
    return { pid, ppid, argv };
  } catch {
    return undefined;
  }
}

/** Pids whose parent is `pid` (Linux /proc). */
export function childrenOf(pid: number): number[] {
  return readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry) && parentPid(entry) === pid)
    .map(Number);
}

/** True when the parent of `info` is a live Node process (i.e. someone still manages it). */
export function hasLiveNodeParent(info: ProcessInfo): boolean {
  if (info.ppid <= 1) return false;
  const parent = processInfo(info.ppid);
  return !!parent?.argv[0] && /(^|\/)node[^/]*$/.test(parent.argv[0]);
}

/**
 * A process an earlier run recorded (in a pid file) that is still running: undefined when the pid
 * is gone or now belongs to something `isOurs` does not recognise; `managed` when a live Node
 * process (another supervisor) is its parent, so it must be left alone.
 */
export function leftoverProcess(
  pid: number,
  isOurs: (info: ProcessInfo) => boolean,
): { info: ProcessInfo; managed: boolean } | undefined {
  const info = Number.isInteger(pid) && pid > 0 && isAlive(pid) ? processInfo(pid) : undefined;
  if (!info || !isOurs(info)) return undefined;
  return { info, managed: hasLiveNodeParent(info) };
}

/** Forwards each line of a child's output stream to `onLine`. */
export function forwardLines(stream: NodeJS.ReadableStream | null, onLine: Log): void {
  if (!stream) return;
  createInterface({ input: stream, crlfDelay: Number.POSITIVE_INFINITY }).on("line", onLine);
}

/** Keeps the last `max` lines written to it, for error messages. */
export function lineBuffer(max = 30): { push(line: string): void; text(): string } {
  const lines: string[] = [];
  return {
    push(line) {
      lines.push(line);
      if (lines.length > max) lines.shift();
    },
    text: () => lines.join("\n"),
  };
}

/** Absolute path of an executable found on PATH, or undefined. */
export function findOnPath(command: string, env: Env = process.env): string | undefined {
  if (command.includes("/")) return existsSync(command) ? resolve(command) : undefined;
  for (const dir of (env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, command);
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}

/** A server child watched through its start-up. */
export interface ServerChild {
  /** Resolves when the process exits (for whatever reason). */
  readonly exited: Promise<ExitInfo>;
  /**
   * Polls `serving` every `pollMs` until it is true. Throws, quoting the child's last output lines,
   * when the child could not be spawned, exits, `signal` is aborted or `timeoutMs` passes; the
   * caller then stops the child.
   */
  waitUntilServing(
    serving: () => Promise<boolean>,
    opts: { address: string; timeoutMs: number; pollMs: number; signal?: AbortSignal | undefined },
  ): Promise<void>;
}

/**
 * Watches a server child just spawned (stdout and stderr piped) under the name `what`: forwards its
 * output lines to `serverLog`, keeping the last few for error messages.
 */
export function superviseServer(
  child: ChildProcess,
  opts: { what: string; bin: string; serverLog?: Log | undefined },
): ServerChild {
  const { what, bin } = opts;
  const exited = exitOf(child);
  const recent = lineBuffer();
  const serverLog = opts.serverLog ?? (() => {});
  const onLine = (line: string) => {
    recent.push(line);
    serverLog(line);
  };
  forwardLines(child.stdout, onLine);
  forwardLines(child.stderr, onLine);
  let spawnError: Error | undefined;
  child.once("error", (err) => {
    spawnError = err;
  });
  let hasExited = false;
  void exited.then(() => {
    hasExited = true;
  });

  return {
    exited,
    async waitUntilServing(serving, { address, timeoutMs, pollMs, signal }) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        if (spawnError) {
          throw new Error(`could not start ${bin}: ${spawnError.message}`, { cause: spawnError });
        }
        if (hasExited) {
          throw new Error(
            `${what} exited during start-up (${describeExit(await exited)}):\n${recent.text()}`,
          );
        }
        if (signal?.aborted) throw new Error(`aborted while starting ${what}`);
        if (await serving()) return;
        if (Date.now() > deadline) {
          throw new Error(
            `${what} did not accept connections on ${address} within ${timeoutMs} ms:\n${recent.text()}`,
          );
        }
        await sleep(pollMs, signal);
      }
    },
  };
}

/** True when a TCP connection to host:port is accepted within timeoutMs. */
export function canConnect(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((res) => {
    const socket = new Socket();
    const finish = (ok: boolean) => {
      socket.destroy();
      res(ok);
    };
    socket.setTimeout(timeoutMs, () => finish(false));
    socket.once("connect", () => finish(true));
    socket.once("error", () => finish(false));
    socket.connect(port, host);
  });
}

/** True when nothing listens on `port` (tested by binding it on all interfaces, or on `host`). */
export function isPortFree(port: number, host?: string): Promise<boolean> {
  return new Promise((res) => {
    const server = createServer();
    server.once("error", () => res(false));
    server.listen({ port, host, exclusive: true }, () => server.close(() => res(true)));
  });
}

// Where getFreePort looks: below Linux's ephemeral range (ip_local_port_range, 32768-60999 by
// default), from which the kernel picks the local port of every outgoing connection. A port the
// kernel hands out as "free" (listen on 0) comes from that range, and between our check and the
// child's bind an outgoing connection (to Postgres, to NATS) may take it: the child then fails
// with EADDRINUSE. Ports below the range are taken only by listeners.
const FREE_PORT_MIN = 20_000;
const FREE_PORT_SPAN = 12_000;
// Ports this process handed out, so two calls before either port is bound never return the same.
const handedOut = new Set<number>();

/** A port free on `host` now, outside the ephemeral range, not handed out before by this process. */
export async function getFreePort(host = "127.0.0.1"): Promise<number> {
  for (let tries = 0; tries < 500; tries++) {
    const port = FREE_PORT_MIN + Math.floor(Math.random() * FREE_PORT_SPAN);
    if (handedOut.has(port) || !(await isPortFree(port, host))) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error(
    `no free port on ${host} between ${FREE_PORT_MIN} and ${FREE_PORT_MIN + FREE_PORT_SPAN - 1}`,
  );
}
