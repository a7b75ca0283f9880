// NATS for local runs: use the server NATS_URL names, or start `nats-server` with JetStream and
// the mesh's users and permissions (infra/nats/nats.conf) as a child process. Also holds the
// small process and port helpers that scripts/embedded-postgres.ts and scripts/start.ts share.
//
//   await using nats = await resolveNats({ log: console.log });   // nats.url, nats.serviceEnv("timer")
//   await using server = await startNatsServer({ port: 0, passwords: randomPasswords() });
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { chmod, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, Socket } from "node:net";
import { delimiter, dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { redactUrl } from "../services/shared/src/redact.js";
import {
  NATS_CONFIG_FILE,
  NATS_USERS,
  passwordVariable,
  randomPasswords,
  serverPasswordEnv,
  serviceNatsEnv,
  type NatsPasswords,
  type ServicePasswords,
} from "./nats-users.js";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");

export type Log = (line: string) => void;
type Env = Record<string, string | undefined>;

// ---------------------------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------------------------

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

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
export async function stopChild(
  child: ChildProcess,
  steps: Array<[NodeJS.Signals, number]>,
  group = false,
): Promise<ExitInfo> {
  const exited = exitOf(child);
  const pid = child.pid;
  if (pid !== undefined) {
    for (const [signal, timeoutMs] of steps) {
      if (child.exitCode !== null || child.signalCode !== null) break;
      signalProcess(pid, signal, group);
      const done = await Promise.race([exited.then(() => true), sleep(timeoutMs).then(() => false)]);
      if (done) break;
    }
  }
  const info = await exited;
  if (group && pid !== undefined) signalProcess(pid, "SIGKILL", true);
  return info;
}

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

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

export interface ProcessInfo {
  pid: number;
  ppid: number;
  argv: string[];
}

/** Parent pid and argv of a live process (Linux /proc), or undefined if unknown / gone. */
export function processInfo(pid: number): ProcessInfo | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // "pid (comm) state ppid ..." — comm may contain spaces and parentheses.
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
    return { pid, ppid, argv };
  } catch {
    return undefined;
  }
}

/** True when the parent of `info` is a live Node process (i.e. someone still manages it). */
export function hasLiveNodeParent(info: ProcessInfo): boolean {
  if (info.ppid <= 1) return false;
  const parent = processInfo(info.ppid);
  return !!parent?.argv[0] && /(^|\/)node[^/]*$/.test(parent.argv[0]);
}

/** Forwards each line of a child's output stream to `onLine`. */
export function forwardLines(stream: NodeJS.ReadableStream | null, onLine: (line: string) => void): void {
  if (!stream) return;
  createInterface({ input: stream, crlfDelay: Infinity }).on("line", onLine);
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

// ---------------------------------------------------------------------------------------------
// Port helpers
// ---------------------------------------------------------------------------------------------

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

/** A port the OS currently considers free on `host`. */
export function getFreePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((res, rej) => {
    const server = createServer();
    server.once("error", rej);
    server.listen({ port: 0, host, exclusive: true }, () => {
      const addr = server.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      server.close(() => res(port));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// NATS
// ---------------------------------------------------------------------------------------------

/** How to get NATS, for when it is needed and nats-server is not on PATH. */
export function natsInstallHint(): string {
  return [
    "NATS is required (nats-server with JetStream): NATS_URL is not set and `nats-server` is not on PATH. Either:",
    "  - install it:  apt-get install nats-server   (Debian/Ubuntu)",
    "                 brew install nats-server      (macOS)",
    "                 or a release from https://github.com/nats-io/nats-server/releases",
    "    and run `npm start` again (it then starts nats-server for you, with infra/nats/nats.conf), or",
    "  - point at a running server:  NATS_URL=nats://host:4222 npm start  (with NATS_TIMER_PASSWORD,",
    "    NATS_DISPATCHER_PASSWORD, NATS_ADMIN_PASSWORD and NATS_CALLBACKS_PASSWORD when it runs infra/nats/nats.conf)",
  ].join("\n");
}

export class NatsServerNotFoundError extends Error {
  override name = "NatsServerNotFoundError";
  constructor() {
    super(natsInstallHint());
  }
}

/** The host:port pairs in a NATS_URL ("nats://a:4222,nats://b:4222", "host:4222", ...). */
export function natsHostPorts(natsUrl: string): Array<{ host: string; port: number }> {
  return natsUrl
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => {
      const u = new URL(/^[a-z]+:\/\//i.test(s) ? s : `nats://${s}`);
      return { host: u.hostname.replace(/^\[|\]$/g, ""), port: u.port ? Number(u.port) : 4222 };
    });
}

export interface NatsServerOptions {
  /** Passwords of the users of infra/nats/nats.conf, which the server runs with. */
  passwords: NatsPasswords;
  /** nats-server executable; default: `nats-server` found on PATH. */
  bin?: string;
  /** Listen address; default 127.0.0.1. */
  host?: string;
  /** Client port; 0 picks a free one. Default 4222, or a free port if 4222 is taken. */
  port?: number;
  /** JetStream store directory; default <repo>/.data/nats. */
  storeDir?: string;
  /** How long to wait for the server to accept connections; default 15 s. */
  readyTimeoutMs?: number;
  /** Receives our own notes (default: discarded). */
  log?: Log;
  /** Receives nats-server's log lines (default: discarded). */
  serverLog?: Log;
  /** Aborting stops the server if it is still starting. */
  signal?: AbortSignal;
}

export interface NatsServer extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  readonly child: ChildProcess;
  /** Resolves when the server process exits (for whatever reason). */
  readonly exited: Promise<ExitInfo>;
  /** SIGTERM, then SIGKILL after 10 s. Idempotent. */
  stop(): Promise<void>;
}

/** Stops a nats-server left running (orphaned) by an earlier run that was killed, found through
 *  the pid file in the store directory. */
async function reapOrphanNats(pidFile: string, log: Log): Promise<void> {
  let pid: number;
  try {
    pid = Number((await readFile(pidFile, "utf8")).trim());
  } catch {
    return;
  }
  const info = Number.isInteger(pid) && pid > 0 && isAlive(pid) ? processInfo(pid) : undefined;
  const isNats = !!info && /nats-server/.test(info.argv[0] ?? "");
  if (info && isNats && hasLiveNodeParent(info)) {
    throw new Error(
      `nats-server pid ${pid} (from ${pidFile}) is already running under process ${info.ppid}; ` +
        "is another `npm start` running?",
    );
  }
  if (info && isNats) {
    log(`stopping orphaned nats-server (pid ${pid}) left behind by an earlier run`);
    signalProcess(pid, "SIGTERM");
    for (let i = 0; i < 100 && isAlive(pid); i++) await sleep(100);
    if (isAlive(pid)) signalProcess(pid, "SIGKILL");
    for (let i = 0; i < 50 && isAlive(pid); i++) await sleep(100);
  }
  await rm(pidFile, { force: true });
}

/** Reads the server's INFO greeting: proves it is a NATS server that accepts clients. */
function natsGreets(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((res) => {
    const socket = new Socket();
    let buf = "";
    const finish = (ok: boolean) => {
      socket.destroy();
      res(ok);
    };
    socket.setTimeout(timeoutMs, () => finish(false));
    socket.once("error", () => finish(false));
    socket.on("data", (d) => {
      buf += d.toString("utf8");
      if (buf.includes("\n")) finish(buf.startsWith("INFO "));
    });
    socket.connect(port, host);
  });
}

/** Starts nats-server with JetStream and infra/nats/nats.conf as a child process and waits until it accepts clients. */
export async function startNatsServer(opts: NatsServerOptions): Promise<NatsServer> {
  const log = opts.log ?? (() => {});
  const host = opts.host ?? "127.0.0.1";
  const bin = opts.bin ?? findOnPath("nats-server");
  if (!bin) throw new NatsServerNotFoundError();
  const storeDir = resolve(opts.storeDir ?? join(REPO_ROOT, ".data", "nats"));
  await mkdir(storeDir, { recursive: true });
  const pidFile = join(storeDir, "nats-server.pid");
  await reapOrphanNats(pidFile, log);

  let port = opts.port ?? 4222;
  if (port === 0) {
    port = await getFreePort(host);
  } else if (!(await isPortFree(port, host))) {
    const wanted = port;
    port = await getFreePort(host);
    log(`port ${wanted} is taken; starting nats-server on ${port} instead`);
  }

  const args = [
    "-c",
    NATS_CONFIG_FILE,
    "-js",
    "-sd",
    storeDir,
    "-a",
    host,
    "-p",
    String(port),
    "-P",
    pidFile,
  ];
  // Own process group: a Ctrl-C in the terminal reaches only the supervisor, which stops the
  // services first and NATS after them. The passwords reach nats.conf through its environment.
  const child = spawn(bin, args, {
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
    env: { PATH: process.env.PATH ?? "", ...serverPasswordEnv(opts.passwords) },
  });
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
  child.once("error", (err) => (spawnError = err));

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      await stopChild(
        child,
        [
          ["SIGTERM", 10_000],
          ["SIGKILL", 5_000],
        ],
        true,
      );
      await rm(pidFile, { force: true });
    })());

  const url = `nats://${host.includes(":") ? `[${host}]` : host}:${port}`;
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 15_000);
  let hasExited = false;
  void exited.then(() => (hasExited = true));
  try {
    for (;;) {
      if (spawnError) throw new Error(`could not start ${bin}: ${spawnError.message}`);
      if (hasExited) {
        throw new Error(
          `nats-server exited during start-up (${describeExit(await exited)}):\n${recent.text()}`,
        );
      }
      if (opts.signal?.aborted) throw new Error("aborted while starting nats-server");
      if (await natsGreets(host, port)) break;
      if (Date.now() > deadline) {
        throw new Error(
          `nats-server did not accept connections on ${url} within ${opts.readyTimeoutMs ?? 15_000} ms:\n${recent.text()}`,
        );
      }
      await sleep(100, opts.signal);
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { url, port, child, exited, stop, [Symbol.asyncDispose]: stop };
}

export interface NatsHandle extends AsyncDisposable {
  /** What services should use as NATS_URL. */
  readonly url: string;
  /** Set when we started nats-server ourselves. */
  readonly server?: NatsServer;
  /** How the services authenticate, for the banner. */
  readonly credentials: string;
  /** NATS_URL, and NATS_USER/NATS_PASSWORD (plus CALLBACK_NATS_* for the dispatcher) when there are users. */
  serviceEnv(service: "timer" | "dispatcher" | "admin"): Record<string, string>;
  /** Stops the child server, if we started one. */
  stop(): Promise<void>;
}

/** The services' users that npm start hands out (the operator's password is the operator's own). */
const SERVICE_USERS = NATS_USERS.filter((u) => u !== "operator");

/**
 * The passwords of nats-server children of `npm start`: made on the first run and kept in
 * <dataDir>/nats-passwords.json (mode 0600), so a restarted child and its JetStream data keep
 * working with the same users.
 */
export async function ensureNatsPasswords(dataDir: string): Promise<NatsPasswords> {
  const file = join(dataDir, "nats-passwords.json");
  try {
    const stored = JSON.parse(await readFile(file, "utf8")) as Partial<NatsPasswords>;
    if (NATS_USERS.every((u) => typeof stored[u] === "string" && stored[u] !== "")) {
      await chmod(file, 0o600);
      return stored as NatsPasswords;
    }
  } catch {
    // first run, or the file was removed or edited: make new ones
  }
  const passwords = randomPasswords();
  await mkdir(dataDir, { recursive: true });
  await writeFile(file, JSON.stringify(passwords, null, 2) + "\n", { mode: 0o600 });
  await chmod(file, 0o600);
  return passwords;
}

/**
 * Finds NATS the way `npm start` does:
 *   1. NATS_URL set: use it (fails unless one of its servers accepts TCP connections). When it
 *      runs infra/nats/nats.conf, NATS_TIMER_PASSWORD, NATS_DISPATCHER_PASSWORD,
 *      NATS_ADMIN_PASSWORD and NATS_CALLBACKS_PASSWORD give each service its own user; with none
 *      of them the services connect without credentials (a server without authorization).
 *   2. otherwise start `nats-server -js -c infra/nats/nats.conf` as a child on NATS_PORT
 *      (default 4222, or a free port when that is taken), storing JetStream data in .data/nats,
 *      with passwords made on the first run (.data/nats-passwords.json). A server already on
 *      4222 is not used: it would not enforce the mesh's permissions.
 * Throws NatsServerNotFoundError when it would need nats-server and there is none.
 */
export async function resolveNats(
  opts: {
    env?: Env;
    log?: Log;
    storeDir?: string;
    dataDir?: string;
    signal?: AbortSignal;
    serverLog?: Log;
  } = {},
): Promise<NatsHandle> {
  const env = opts.env ?? process.env;
  const log = opts.log ?? (() => {});
  const noop = async () => {};

  if (env.NATS_URL) {
    const url = env.NATS_URL;
    let targets: Array<{ host: string; port: number }>;
    try {
      targets = natsHostPorts(url);
    } catch {
      throw new Error(`NATS_URL is not a valid URL: ${redactUrl(url)}`);
    }
    const given = SERVICE_USERS.filter((u) => env[passwordVariable(u)]);
    if (given.length > 0 && given.length < SERVICE_USERS.length) {
      const missing = SERVICE_USERS.filter((u) => !env[passwordVariable(u)]).map(passwordVariable);
      throw new Error(
        `NATS_URL is set with some service passwords but not ${missing.join(", ")}: set all four, or none for a server without authorization`,
      );
    }
    const passwords =
      given.length > 0
        ? (Object.fromEntries(SERVICE_USERS.map((u) => [u, env[passwordVariable(u)]!])) as ServicePasswords)
        : undefined;
    for (const t of targets) {
      if (await canConnect(t.host, t.port, 3000)) {
        return {
          url,
          credentials: passwords
            ? "users timer, dispatcher, admin, callbacks (passwords from NATS_*_PASSWORD)"
            : "no credentials (NATS_*_PASSWORD not set): the server must run without authorization, and tenant callbacks share the mesh's connection",
          serviceEnv: (service) => ({
            NATS_URL: url,
            ...(passwords ? serviceNatsEnv(service, passwords) : {}),
          }),
          stop: noop,
          [Symbol.asyncDispose]: noop,
        };
      }
    }
    throw new Error(
      `NATS_URL=${redactUrl(url)} is not reachable (no TCP connection to ` +
        `${targets.map((t) => `${t.host}:${t.port}`).join(", ")}). Start that server or unset NATS_URL.`,
    );
  }

  const storeDir = resolve(opts.storeDir ?? join(REPO_ROOT, ".data", "nats"));
  const bin = env.NATS_SERVER_BIN || findOnPath("nats-server", env);
  if (!bin) throw new NatsServerNotFoundError();
  let port = 4222;
  if (env.NATS_PORT) {
    port = Number(env.NATS_PORT);
    if (!Number.isInteger(port) || port < 0 || port > 65535)
      throw new Error(`NATS_PORT must be a port number, got "${env.NATS_PORT}"`);
  }
  const passwords = await ensureNatsPasswords(resolve(opts.dataDir ?? join(REPO_ROOT, ".data")));
  log(`starting ${bin} with JetStream and infra/nats/nats.conf (store ${storeDir})`);
  const server = await startNatsServer({
    bin,
    port,
    storeDir,
    passwords,
    log,
    serverLog: opts.serverLog,
    signal: opts.signal,
  });
  return {
    url: server.url,
    server,
    credentials: "users of infra/nats/nats.conf (passwords in .data/nats-passwords.json)",
    serviceEnv: (service) => ({ NATS_URL: server.url, ...serviceNatsEnv(service, passwords) }),
    stop: server.stop,
    [Symbol.asyncDispose]: server.stop,
  };
}
