// NATS for local runs: use the server NATS_URL names, or start `nats-server` with JetStream and
// the mesh's users and permissions (infra/nats/nats.conf) as a child process. The process and port
// helpers it uses are scripts/child-process.ts.
//
//   await using nats = await resolveNats({ log: console.log });   // nats.url, nats.serviceEnv("timer")
//   await using server = await startNatsServer({ port: 0, passwords: randomPasswords() });
import { type ChildProcess, spawn } from "node:child_process";
import { chmod, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { Socket } from "node:net";
import { join, resolve } from "node:path";
import { redactUrl } from "../services/shared/src/redact.js";
import {
  canConnect,
  type Env,
  type ExitInfo,
  findOnPath,
  getFreePort,
  isPortFree,
  type Log,
  leftoverProcess,
  stopChild,
  type StopSteps,
  stopPid,
  superviseServer,
} from "./child-process.js";
import {
  NATS_CONFIG_FILE,
  NATS_USERS,
  type NatsPasswords,
  passwordVariable,
  randomPasswords,
  type ServicePasswords,
  serverPasswordEnv,
  serviceNatsEnv,
} from "./nats-users.js";
import { REPO_ROOT } from "./repo-root.js";

/** How nats-server is stopped: SIGTERM (a clean shutdown), SIGKILL when that takes over 10 s. */
const NATS_STOP_STEPS: StopSteps = [
  ["SIGTERM", 10_000],
  ["SIGKILL", 5_000],
];

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
  log?: Log | undefined;
  /** Receives nats-server's log lines (default: discarded). */
  serverLog?: Log | undefined;
  /** Aborting stops the server if it is still starting. */
  signal?: AbortSignal | undefined;
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
  const leftover = leftoverProcess(pid, (info) => /nats-server/.test(info.argv[0] ?? ""));
  if (leftover?.managed) {
    throw new Error(
      `nats-server pid ${pid} (from ${pidFile}) is already running under process ${leftover.info.ppid}; ` +
        "is another `npm start` running?",
    );
  }
  if (leftover) {
    log(`stopping orphaned nats-server (pid ${pid}) left behind by an earlier run`);
    await stopPid(pid, NATS_STOP_STEPS);
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
  const watched = superviseServer(child, { what: "nats-server", bin, serverLog: opts.serverLog });
  const exited = watched.exited;

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      await stopChild(child, NATS_STOP_STEPS, true);
      await rm(pidFile, { force: true });
    })());

  const url = `nats://${host.includes(":") ? `[${host}]` : host}:${port}`;
  try {
    await watched.waitUntilServing(() => natsGreets(host, port), {
      address: url,
      timeoutMs: opts.readyTimeoutMs ?? 15_000,
      pollMs: 100,
      signal: opts.signal,
    });
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
  await writeFile(file, `${JSON.stringify(passwords, null, 2)}\n`, { mode: 0o600 });
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
