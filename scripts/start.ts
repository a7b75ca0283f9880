// `npm start`: runs the whole system locally.
//
//   1. NATS (looked for first, so that a missing nats-server fails fast): NATS_URL if set (must
//      be reachable; NATS_TIMER_PASSWORD, NATS_DISPATCHER_PASSWORD, NATS_ADMIN_PASSWORD and
//      NATS_CALLBACKS_PASSWORD give each service its own user there, none of them means a server
//      without authorization), else `nats-server -js -c infra/nats/nats.conf` as a child on
//      NATS_PORT (default 4222, or a free port when taken; data in .data/nats, passwords made on
//      the first run in .data/nats-passwords.json). Each service connects as its own user.
//   2. Postgres: DATABASE_URL if set (must connect), else an embedded server (cluster in
//      .data/postgres, port EMBEDDED_PG_PORT=54329) with database "timers".
//   3. Builds the operator console (scripts/build-console.mjs; a failed build is reported, and the
//      admin serves the last build or "console not built"). Spawns timer, dispatcher and admin (`node --import tsx services/<name>/src/main.ts`) with
//      DATABASE_URL, NATS_URL, GRPC_PORT, HTTP_PORT, LOG_LEVEL (default info) and, for the
//      dispatcher, DISPATCHER_ID (default dispatcher-1), for the admin CONSOLE_PORT and TIMER_API_URL
//      (the timer service started here; JAEGER_UI_URL passes through when set); prefixes their output with the service
//      name, and waits for each GET /readyz (60 s). Callbacks may reach this machine's loopback
//      receivers: CALLBACK_ALLOWED_NETWORKS defaults to 127.0.0.0/8,::1/128 here (a deployment
//      refuses loopback, private and link-local callback addresses unless it opens them).
//   4. Prints the endpoints, the console's address and ready-to-paste grpcurl / buf curl commands. The services run
//      with bearer-token authentication: unless AUTH_TOKENS_FILE or AUTH_TOKENS is set, a
//      development admin token is made on the first run (.data/dev-admin-token, its SHA-256 in
//      .data/dev-auth-tokens.json, passed to every service as AUTH_TOKENS_FILE) and printed.
//   5. Ctrl-C / SIGTERM / SIGHUP: SIGTERM to the services (SIGKILL after 10 s; a second Ctrl-C
//      kills them at once), then stops Postgres (fast shutdown) and nats-server, exit code 0.
//      A service, Postgres or nats-server dying on its own stops everything with exit code 1.
//
// Ports: TIMER_GRPC_PORT=50051 TIMER_HTTP_PORT=8080, DISPATCHER_GRPC_PORT=50052
// DISPATCHER_HTTP_PORT=8081, ADMIN_GRPC_PORT=50053 ADMIN_HTTP_PORT=8082 ADMIN_CONSOLE_PORT=8083;
// NATS_SERVER_BIN overrides
// the nats-server found on PATH.
//
// Children run in their own process groups, so a Ctrl-C in the terminal reaches only this
// supervisor, which then stops things in order (services before what they use). Postgres,
// nats-server and services orphaned by a supervisor that was SIGKILLed are found (pid files in
// .data) and stopped by the next run.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { redactUrl } from "../services/shared/src/redact.js";
import {
  describeExit,
  type ExitInfo,
  exitOf,
  forwardLines,
  isPortFree,
  leftoverProcess,
  signalProcess,
  sleep,
  stopChild,
  type StopSteps,
  stopPid,
} from "./child-process.js";
import { type DevAuth, ensureDevAuth } from "./dev-auth.js";
import { resolvePostgres } from "./embedded-postgres.js";
import { NatsServerNotFoundError, type NatsHandle, resolveNats } from "./nats-child.js";
import { REPO_ROOT } from "./repo-root.js";

const READY_TIMEOUT_MS = 60_000;
const SERVICE_STOP_TIMEOUT_MS = 10_000;
/** A service drains on SIGTERM; SIGKILL when it takes longer than SERVICE_STOP_TIMEOUT_MS. */
const SERVICE_STOP_STEPS: StopSteps = [
  ["SIGTERM", SERVICE_STOP_TIMEOUT_MS],
  ["SIGKILL", 5_000],
];
const PIDS_FILE = join(REPO_ROOT, ".data", "services.pids");
/** Local development sends callbacks to receivers on this machine. */
const DEV_CALLBACK_NETWORKS = "127.0.0.0/8,::1/128";

interface ServiceSpec {
  name: "timer" | "dispatcher" | "admin";
  grpcPort: number;
  httpPort: number;
  /** The admin's console port (CONSOLE_PORT). */
  consolePort?: number;
}

interface ServiceChild extends ServiceSpec {
  child: ChildProcess;
  exited: Promise<ExitInfo>;
  ready: boolean;
  stopping: boolean;
}

// ---------------------------------------------------------------------------------------------
// Output: every line is prefixed with where it came from.

const env = process.env;
const color = !!process.stdout.isTTY && !env.NO_COLOR;
const COLORS: Record<string, string> = {
  start: "1",
  postgres: "34",
  nats: "35",
  timer: "36",
  dispatcher: "33",
  admin: "32",
};
const paint = (code: string, s: string) => (color ? `\x1b[${code}m${s}\x1b[0m` : s);
const prefix = (name: string) => `${paint(COLORS[name] ?? "0", `${name.padEnd(10)} |`)} `;
const out = (name: string) => (line: string) => void process.stdout.write(`${prefix(name) + line}\n`);
const errOut = (name: string) => (line: string) => void process.stderr.write(`${prefix(name) + line}\n`);
const say = out("start");
const complain = errOut("start");
process.stdout.on("error", () => {}); // e.g. `npm start | head`: keep shutting down cleanly
process.stderr.on("error", () => {});

// ---------------------------------------------------------------------------------------------
// Shutdown state

let shutdown: { reason: string; code: number } | undefined;
const shutdownCtl = new AbortController();
const services: ServiceChild[] = [];
const resources: Array<{ name: string; stop: () => Promise<void> }> = []; // stopped in reverse

function requestShutdown(reason: string, code: number): void {
  if (shutdown) {
    shutdown.code = Math.max(shutdown.code, code);
    return;
  }
  shutdown = { reason, code };
  shutdownCtl.abort();
}

let firstSignalAt = 0;
let forced = false;
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(sig, () => {
    if (!shutdown) {
      firstSignalAt = Date.now();
      say(`${sig} received; shutting down (send it again to kill the services at once)`);
      requestShutdown(sig, 0);
      return;
    }
    // npm and tsx relay the terminal's Ctrl-C that we also got directly: ignore the echo.
    if (Date.now() - firstSignalAt < 1500 || forced) return;
    forced = true;
    say(`${sig} received again; killing the services`);
    for (const s of services) if (s.child.pid !== undefined) signalProcess(s.child.pid, "SIGKILL", true);
  });
}
process.on("uncaughtException", (err) => {
  complain(`internal error: ${err.stack ?? err.message}`);
  requestShutdown("internal error", 1);
});
process.on("unhandledRejection", (err) => {
  complain(`internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  requestShutdown("internal error", 1);
});

/** Shuts everything down (exit code 1) when a dependency we started dies on its own. */
function watchExit(name: string, exited: Promise<ExitInfo>): void {
  void exited.then((info) => {
    if (shutdown) return;
    complain(`${name} exited unexpectedly (${describeExit(info)}); shutting everything down`);
    requestShutdown(`${name} exited`, 1);
  });
}

// ---------------------------------------------------------------------------------------------

function portFromEnv(name: string, fallback: number): number {
  const raw = env[name];
  if (!raw) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 65535)
    throw new Error(`${name} must be a port number, got "${raw}"`);
  return n;
}

function serviceSpecs(): ServiceSpec[] {
  return [
    {
      name: "timer",
      grpcPort: portFromEnv("TIMER_GRPC_PORT", 50051),
      httpPort: portFromEnv("TIMER_HTTP_PORT", 8080),
    },
    {
      name: "dispatcher",
      grpcPort: portFromEnv("DISPATCHER_GRPC_PORT", 50052),
      httpPort: portFromEnv("DISPATCHER_HTTP_PORT", 8081),
    },
    {
      name: "admin",
      grpcPort: portFromEnv("ADMIN_GRPC_PORT", 50053),
      httpPort: portFromEnv("ADMIN_HTTP_PORT", 8082),
      consolePort: portFromEnv("ADMIN_CONSOLE_PORT", 8083),
    },
  ];
}

const entryOf = (name: string) => `services/${name}/src/main.ts`;

/** Services orphaned by an earlier run that was killed (SIGKILL) would hold our ports. */
async function reapOrphanServices(): Promise<void> {
  let pids: number[];
  try {
    pids = JSON.parse(await readFile(PIDS_FILE, "utf8")) as number[];
  } catch {
    return;
  }
  for (const pid of pids) {
    const leftover = leftoverProcess(pid, (info) =>
      info.argv.some((a) => /^services\/(timer|dispatcher|admin)\/src\/main\.ts$/.test(a)),
    );
    if (!leftover || leftover.managed) continue; // gone, someone else's, or managed by a live supervisor
    say(`stopping orphaned ${leftover.info.argv.at(-1)} (pid ${pid}) left running by an earlier run`);
    await stopPid(pid, SERVICE_STOP_STEPS, true);
  }
  await rm(PIDS_FILE, { force: true });
}

async function checkPorts(specs: ServiceSpec[]): Promise<void> {
  const busy: string[] = [];
  for (const s of specs) {
    const ports: Array<readonly ["GRPC" | "HTTP" | "CONSOLE", number]> = [
      ["GRPC", s.grpcPort],
      ["HTTP", s.httpPort],
    ];
    if (s.consolePort !== undefined) ports.push(["CONSOLE", s.consolePort]);
    for (const [kind, port] of ports) {
      const what = kind === "GRPC" ? "gRPC" : kind === "CONSOLE" ? "console" : kind;
      if (!(await isPortFree(port)))
        busy.push(`${port} (${s.name} ${what}; set ${s.name.toUpperCase()}_${kind}_PORT)`);
    }
  }
  if (busy.length) throw new Error(`port(s) already in use: ${busy.join(", ")}`);
}

function spawnService(spec: ServiceSpec, childEnv: NodeJS.ProcessEnv): ServiceChild {
  const child = spawn(process.execPath, ["--import", "tsx", entryOf(spec.name)], {
    cwd: REPO_ROOT,
    env: {
      ...childEnv,
      GRPC_PORT: String(spec.grpcPort),
      HTTP_PORT: String(spec.httpPort),
      ...(spec.consolePort === undefined ? {} : { CONSOLE_PORT: String(spec.consolePort) }),
      ...(spec.name === "dispatcher" ? { DISPATCHER_ID: env.DISPATCHER_ID || "dispatcher-1" } : {}),
    },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  forwardLines(child.stdout, out(spec.name));
  forwardLines(child.stderr, errOut(spec.name));
  child.on("error", (err) => complain(`${spec.name}: ${err.message}`));
  const svc: ServiceChild = { ...spec, child, exited: exitOf(child), ready: false, stopping: false };
  void svc.exited.then((info) => {
    if (shutdown || svc.stopping) return;
    const what = svc.ready ? "exited unexpectedly" : "exited before it was ready";
    complain(`${spec.name} ${what} (${describeExit(info)}); shutting everything down`);
    requestShutdown(`${spec.name} exited`, 1);
  });
  return svc;
}

/** Polls GET /readyz until 200; on timeout asks for shutdown. Returns early on shutdown. */
async function waitReady(svc: ServiceChild): Promise<void> {
  const url = `http://127.0.0.1:${svc.httpPort}/readyz`;
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let last = "no answer yet";
  while (!shutdown) {
    try {
      const res = await fetch(url, {
        signal: AbortSignal.any([AbortSignal.timeout(2_000), shutdownCtl.signal]),
      });
      const body = (await res.text()).slice(0, 300).replace(/\s+/g, " ");
      if (res.status === 200) {
        svc.ready = true;
        say(`${svc.name} is ready`);
        return;
      }
      last = `HTTP ${res.status} ${body}`;
    } catch (err) {
      last = (err as Error & { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
    }
    if (Date.now() > deadline) {
      complain(
        `${svc.name} did not become ready within ${READY_TIMEOUT_MS / 1000} s (GET ${url}: ${last}); shutting everything down`,
      );
      requestShutdown(`${svc.name} not ready`, 1);
      return;
    }
    await sleep(250, shutdownCtl.signal);
  }
}

async function stopServices(): Promise<void> {
  await Promise.all(
    services.map(async (svc) => {
      if (svc.child.exitCode !== null || svc.child.signalCode !== null) return;
      svc.stopping = true;
      const started = Date.now();
      const info = await stopChild(svc.child, SERVICE_STOP_STEPS, true);
      const late = info.signal === "SIGKILL" && Date.now() - started >= SERVICE_STOP_TIMEOUT_MS;
      say(
        late
          ? `${svc.name} did not stop within ${SERVICE_STOP_TIMEOUT_MS / 1000} s; killed`
          : `${svc.name} stopped (${describeExit(info)})`,
      );
    }),
  );
  await rm(PIDS_FILE, { force: true });
}

/**
 * Builds the console the admin serves (a few hundred ms). A failure is reported and the mesh
 * starts anyway: the admin serves the last build, or says the console is not built.
 */
async function buildConsole(): Promise<void> {
  const child = spawn(process.execPath, [join(REPO_ROOT, "scripts/build-console.mjs")], {
    cwd: REPO_ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  forwardLines(child.stdout, say);
  forwardLines(child.stderr, complain);
  const info = await exitOf(child);
  if (info.code !== 0)
    complain(`the console was not built (${describeExit(info)}); the mesh starts without it`);
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

function banner(
  specs: ServiceSpec[],
  dbUrl: string,
  dbEmbedded: boolean,
  nats: NatsHandle,
  auth: DevAuth,
): void {
  const timer = specs.find((s) => s.name === "timer")!;
  const admin = specs.find((s) => s.name === "admin")!;
  const header = `-H "authorization: Bearer ${auth.token ?? "$TOKEN"}"`;
  const body = JSON.stringify({
    groupId: "demo",
    timerId: "hello-1",
    delay: "10s",
    callback: { http: { url: "http://127.0.0.1:9000/hook" } },
    payload: Buffer.from("hello").toString("base64"),
  });
  const method = "timer.v1.TimerService/CreateTimer";
  // The token is typed into the console's sign-in form, never put in its address.
  const signIn = auth.token
    ? "sign in with the development token below"
    : env.AUTH_DISABLED?.trim().toLowerCase() === "true"
      ? "AUTH_DISABLED: any token signs in"
      : "sign in with one of your tokens";
  const rule = "─".repeat(78);
  const lines = [
    "",
    rule,
    "  timer-mesh is up",
    "",
    ...specs.map(
      (s) =>
        `  ${s.name.padEnd(11)} gRPC 127.0.0.1:${String(s.grpcPort).padEnd(6)} HTTP http://127.0.0.1:${s.httpPort}  (/readyz)`,
    ),
    `  ${"Console".padEnd(11)} http://127.0.0.1:${admin.consolePort}/  (${signIn})`,
    `  ${"Postgres".padEnd(11)} ${redactUrl(dbUrl)}${dbEmbedded ? "  (embedded, data in .data/postgres)" : "  (DATABASE_URL)"}`,
    `  ${"NATS".padEnd(11)} ${redactUrl(nats.url)}${nats.server ? "  (nats-server child, JetStream data in .data/nats)" : "  (NATS_URL)"}`,
    `  ${"NATS users".padEnd(11)} ${nats.credentials}`,
    `  ${"Tokens".padEnd(11)} ${auth.source}`,
    `  ${"Callbacks".padEnd(11)} ${env.CALLBACK_ALLOWED_NETWORKS ? `public addresses and CALLBACK_ALLOWED_NETWORKS=${env.CALLBACK_ALLOWED_NETWORKS}` : `public and loopback addresses (development default CALLBACK_ALLOWED_NETWORKS=${DEV_CALLBACK_NETWORKS})`}`,
    ...(auth.token
      ? [
          "",
          "  Development admin token (any group, AdminService, DispatcherService; the console's sign-in):",
          "",
          `    export TOKEN=${auth.token}`,
        ]
      : ["", "  Set TOKEN to one of your tokens for the commands below."]),
    "",
    "  Create a timer (the services serve gRPC reflection):",
    "",
    `    grpcurl -plaintext ${header} -d ${shellQuote(body)} 127.0.0.1:${timer.grpcPort} ${method}`,
    "",
    "  or, from the repo root:",
    "",
    `    npx buf curl --protocol grpc --http2-prior-knowledge ${header} -d ${shellQuote(body)} http://127.0.0.1:${timer.grpcPort}/${method}`,
    "",
    "  Operate the mesh (README: Operating the mesh):",
    "",
    `    grpcurl -plaintext ${header} 127.0.0.1:${admin.grpcPort} admin.v1.AdminService/ListDispatchers`,
    "",
    "  Ctrl-C stops everything.",
    rule,
    "",
  ];
  process.stdout.write(`${lines.join("\n")}\n`);
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  try {
    const specs = serviceSpecs();
    for (const s of specs) {
      if (!existsSync(join(REPO_ROOT, entryOf(s.name)))) throw new Error(`${entryOf(s.name)} does not exist`);
    }
    await reapOrphanServices();

    const nats = await resolveNats({ env, log: say, serverLog: out("nats"), signal: shutdownCtl.signal });
    if (nats.server) {
      resources.push({ name: "nats-server", stop: nats.stop });
      watchExit("nats-server", nats.server.exited);
    }
    say(
      `NATS: ${redactUrl(nats.url)}${nats.server ? ` (nats-server child, pid ${nats.server.child.pid})` : " (NATS_URL)"}; ${nats.credentials}`,
    );
    if (!nats.server && nats.credentials.startsWith("no credentials")) {
      complain(
        "WARNING: NATS_URL is set without NATS_*_PASSWORD: the services connect without credentials and tenant callbacks can publish on the mesh's subjects",
      );
    }
    if (shutdown) return;

    say(env.DATABASE_URL ? "checking DATABASE_URL" : "starting the embedded Postgres");
    const db = await resolvePostgres({
      env,
      log: say,
      serverLog: out("postgres"),
      signal: shutdownCtl.signal,
    });
    if (db.embedded) {
      resources.push({ name: "Postgres", stop: db.stop });
      watchExit("Postgres", db.embedded.exited);
    }
    say(`Postgres: ${redactUrl(db.url)}${db.embedded ? ` (embedded, pid ${db.embedded.child.pid})` : ""}`);
    if (shutdown) return;

    await checkPorts(specs);
    await buildConsole();
    if (shutdown) return;
    const auth = await ensureDevAuth(env, join(REPO_ROOT, ".data"));
    // Each service gets its own NATS user and nothing of the others' (no NATS_*_PASSWORD).
    const natsPasswordVariables = /^NATS_[A-Z]+_PASSWORD$|^(CALLBACK_)?NATS_(USER|PASSWORD)$/;
    const childEnv: NodeJS.ProcessEnv = {
      ...Object.fromEntries(Object.entries(env).filter(([k]) => !natsPasswordVariables.test(k))),
      ...auth.env,
      DATABASE_URL: db.url,
      LOG_LEVEL: env.LOG_LEVEL || "info",
      CALLBACK_ALLOWED_NETWORKS: env.CALLBACK_ALLOWED_NETWORKS || DEV_CALLBACK_NETWORKS,
    };
    const timerSpec = specs.find((s) => s.name === "timer")!;
    // The console forwards its timer.v1 calls to the timer service started here.
    const adminEnv = { ...auth.adminEnv, TIMER_API_URL: `http://127.0.0.1:${timerSpec.grpcPort}` };
    for (const spec of specs) {
      const svc = spawnService(spec, {
        ...childEnv,
        ...(spec.name === "admin" ? adminEnv : {}),
        ...nats.serviceEnv(spec.name),
      });
      services.push(svc);
      say(`started ${spec.name} (pid ${svc.child.pid}): gRPC :${spec.grpcPort}, HTTP :${spec.httpPort}`);
    }
    await mkdir(join(REPO_ROOT, ".data"), { recursive: true });
    await writeFile(PIDS_FILE, JSON.stringify(services.map((s) => s.child.pid)));

    await Promise.all(services.map(waitReady));
    if (!shutdown) {
      banner(specs, db.url, !!db.embedded, nats, auth);
      await new Promise((res) => shutdownCtl.signal.addEventListener("abort", res, { once: true }));
    }
  } catch (err) {
    if (err instanceof NatsServerNotFoundError) {
      for (const line of err.message.split("\n")) complain(line);
    } else if (!shutdown) {
      complain(`cannot start: ${err instanceof Error ? err.message : String(err)}`);
    }
    requestShutdown("start-up failed", shutdown ? 0 : 1);
  }
}

async function stopEverything(): Promise<void> {
  if (services.length) {
    say(`stopping ${services.map((s) => s.name).join(", ")}`);
    await stopServices();
  }
  for (const r of resources.reverse()) {
    say(`stopping ${r.name}`);
    try {
      await r.stop();
    } catch (err) {
      complain(`stopping ${r.name} failed: ${err instanceof Error ? err.message : String(err)}`);
      requestShutdown("stop failed", 1);
    }
  }
}

await main();
requestShutdown("done", 0);
await stopEverything();
const code = shutdown?.code ?? 0;
say(code === 0 ? "all stopped" : `all stopped (exit code ${code})`);
process.exit(code);
