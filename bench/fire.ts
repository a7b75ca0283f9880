// End-to-end benchmark of the timer mesh: create rate, fire throughput and steady lateness.
//
//   cd /work/main && npm run bench
//
// Starts a fresh Postgres database (on the local server, see test/support/database.ts), a
// private nats-server, the timer service and ONE dispatcher as real processes (LOG_LEVEL=warn),
// and an HTTP callback receiver in a CHILD process (this same file run with --receiver), so the
// load generator's own CPU use does not delay the receipt timestamps. Then:
//
//   A. Create rate: BENCH_CLIENTS (32) GrpcTimerClient instances, one in-flight unary
//      CreateTimer each, for BENCH_CREATES (20,000) timers due in 1 h (group bench-create).
//   B. Fire throughput: BENCH_FIRES (30,000) timers due evenly over BENCH_FIRE_WINDOW_MS (5 s),
//      the first ~10 s after their creation is predicted to end; fires/s between the first and
//      last receipt, lateness = receipt - fire_at, early / duplicate / missing counts.
//   C. Steady lateness: BENCH_STEADY_RATE (1,000) fires/s for BENCH_STEADY_SECONDS (20 s),
//      created ahead of time with evenly spaced fire times.
//
// Other knobs: BENCH_CLIENTS, BENCH_PAYLOAD_BYTES, BENCH_FIRE_WINDOW_MS, BENCH_FIRE_LEAD_MS,
// BENCH_STEADY_LEAD_MS, BENCH_DRAIN_TIMEOUT_MS, BENCH_SHARD_COUNT (1024), BENCH_STRICT=1 (exit 1
// on a missed target), BENCH_VACUUM=1 (VACUUM ANALYZE the bench database after each creation
// step, standing in for autovacuum where the server has it off), and BENCH_TIMER_ENV /
// BENCH_DISPATCHER_ENV: extra service environment for experiments, as "K=V K2=V2" or a JSON
// object (e.g. BENCH_DISPATCHER_ENV="CLAIM_BATCH=1000 MAX_IN_FLIGHT=1024"). A count of 0 skips
// its phase. Everything is torn down at the end, also on failure or Ctrl-C.
//
// Each measured window also prints the CPU used by every process (from /proc), so a missed
// target can be traced to the timer service, the dispatcher, Postgres, the receiver, the load
// generator, or other work on the machine.
import { execFileSync, fork, type ChildProcess } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { cpus } from "node:os";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { CreateTimerRequestSchema, type CreateTimerRequest } from "../services/shared/src/gen/timer/v1/timer_pb.js";
import { createTestDatabase, type TestDatabase } from "../test/support/database.js";
import { startNats, type TestNats } from "../test/support/nats-server.js";
import { startHttpReceiver } from "../test/support/receivers.js";
import { startService, type ServiceProcess } from "../test/support/service-process.js";
import { GrpcTimerClient } from "../test/support/timer-client.js";
import { waitFor } from "../test/support/wait.js";
import { fmt, fmtInt, fmtMs, renderTable, summarize, type Summary } from "./stats.js";
import { envInt, envPairs } from "./bench-env.js";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const SELF = fileURLToPath(import.meta.url);

const TARGET_CREATE_RATE = 2_000;
const TARGET_FIRE_RATE = 2_000;
const TARGET_STEADY_P99_MS = 50;

// ---------------------------------------------------------------------------------------------
// Receiver child process: startHttpReceiver from test/support, queried over the IPC channel.

/** One delivery as the receiver recorded it: [timerId, attempt, fireAtMs, receivedAtMs]. */
type Row = [timerId: string, attempt: number, fireAtMs: number, receivedAtMs: number];

type ToReceiver = { id: number; op: "count" | "take"; group: string };
type FromReceiver = { type: "ready"; url: string } | { id: number; count: number } | { id: number; rows: Row[] };

async function receiverMain(): Promise<void> {
  const counts = new Map<string, number>();
  const rx = await startHttpReceiver((r) => {
    counts.set(r.groupId, (counts.get(r.groupId) ?? 0) + 1);
    return 200;
  });
  const send = (m: FromReceiver) => process.send!(m);
  process.on("message", (m: ToReceiver) => {
    if (m.op === "count") {
      send({ id: m.id, count: counts.get(m.group) ?? 0 });
      return;
    }
    const rows: Row[] = [];
    const keep = [];
    for (const r of rx.received) {
      if (r.groupId === m.group) rows.push([r.timerId, r.attempt, r.fireAtMs, r.receivedAtMs]);
      else keep.push(r);
    }
    rx.received.length = 0;
    for (const r of keep) rx.received.push(r);
    send({ id: m.id, rows });
  });
  process.on("disconnect", () => void rx.close().finally(() => process.exit(0)));
  send({ type: "ready", url: rx.url });
}

/** The parent's handle on the receiver child. */
interface Receiver {
  url: string;
  child: ChildProcess;
  count(group: string): Promise<number>;
  take(group: string): Promise<Row[]>;
  close(): Promise<void>;
}

async function startReceiverChild(): Promise<Receiver> {
  const child = fork(SELF, ["--receiver"], { cwd: ROOT, execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const waiting = new Map<number, (m: FromReceiver) => void>();
  let nextId = 1;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  const url = await new Promise<string>((resolve, reject) => {
    child.on("message", (m: FromReceiver) => {
      if ("type" in m) return resolve(m.url);
      waiting.get(m.id)?.(m);
      waiting.delete(m.id);
    });
    child.once("exit", (code) => reject(new Error(`receiver exited during start (code ${code})`)));
    setTimeout(() => reject(new Error("receiver did not start within 20 s")), 20_000).unref();
  });
  const ask = (op: ToReceiver["op"], group: string) =>
    new Promise<FromReceiver>((resolve, reject) => {
      if (!child.connected) return reject(new Error("receiver is gone"));
      const id = nextId++;
      waiting.set(id, resolve);
      child.send({ id, op, group } satisfies ToReceiver);
    });
  return {
    url,
    child,
    count: async (group) => (await ask("count", group) as { count: number }).count,
    take: async (group) => (await ask("take", group) as { rows: Row[] }).rows,
    async close() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      if (child.connected) child.disconnect();
      const t = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(t);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc: who used the two cores during each measured window.

interface ProcSample {
  ppid: number;
  comm: string;
  ticks: number;
}

interface CpuSnapshot {
  atMs: number;
  procs: Map<number, ProcSample>;
  busy: number;
  total: number;
}

const CLK_TCK = 100; // getconf CLK_TCK on Linux x86-64

function readProc(pid: number): ProcSample | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const close = s.lastIndexOf(")");
    const f = s.slice(close + 2).split(" "); // f[0] is field 3 (state)
    return { ppid: Number(f[1]), comm: s.slice(s.indexOf("(") + 1, close), ticks: Number(f[11]) + Number(f[12]) };
  } catch {
    return undefined;
  }
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ");
  } catch {
    return "";
  }
}

function cpuSnapshot(): CpuSnapshot {
  const procs = new Map<number, ProcSample>();
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    const p = readProc(Number(d));
    if (p) procs.set(Number(d), p);
  }
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = cpu.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = cpu[3]! + cpu[4]!;
  return { atMs: Date.now(), procs, busy: total - idle, total };
}

interface Known {
  pids: Map<number, string>;
  natsPort: number;
  postmasterPid: number | undefined;
  dbName: string;
}

function categorize(pid: number, p: ProcSample, k: Known): string {
  const named = k.pids.get(pid);
  if (named) return named;
  if (p.comm === "nats-server" && cmdline(pid).includes(` -p ${k.natsPort} `)) return "nats-server (private)";
  if (k.postmasterPid !== undefined && (pid === k.postmasterPid || p.ppid === k.postmasterPid)) {
    return cmdline(pid).includes(` ${k.dbName} `) ? "postgres: bench-db backends" : "postgres: other (walwriter, ckpt, other dbs)";
  }
  return `${OTHER}${shortCommand(pid, p.comm)}`;
}

const OTHER = "other: ";

/** A short name for a process that is not part of the bench ("node test/integration/x.test.ts"). */
function shortCommand(pid: number, comm: string): string {
  const args = cmdline(pid).trim().split(" ");
  if (/^node|MainThread$/.test(comm) || /(^|\/)node$/.test(args[0] ?? "")) {
    const script = args.find((a, i) => i > 0 && !a.startsWith("-") && a !== "tsx" && /[./]/.test(a));
    if (script) return `node ${script.replace(ROOT, "").replace(/^.*node_modules\/\.bin\//, "")}`;
  }
  return comm || "?";
}

/** CPU per process group between two snapshots, as % of one core (the machine has cpus().length). */
function cpuTable(a: CpuSnapshot, b: CpuSnapshot, k: Known): string {
  const wallS = (b.atMs - a.atMs) / 1000;
  const by = new Map<string, number>();
  for (const [pid, p] of b.procs) {
    const before = a.procs.get(pid);
    const d = p.ticks - (before && before.comm === p.comm ? before.ticks : 0);
    if (d <= 0) continue;
    const cat = categorize(pid, p, k);
    by.set(cat, (by.get(cat) ?? 0) + d / CLK_TCK);
  }
  const order = [...k.pids.values(), "nats-server (private)", "postgres: bench-db backends", "postgres: other (walwriter, ckpt, other dbs)"];
  const row = (name: string, s: number) => [name, fmt(s, 2), `${fmt((100 * s) / wallS, 0)}%`];
  const rows = order.filter((c) => by.has(c)).map((c) => row(c, by.get(c)!));
  // Everything else, biggest first: other people's tests and builds show up here.
  const others = [...by].filter(([c]) => c.startsWith(OTHER)).sort((x, y) => y[1] - x[1]);
  for (const [c, v] of others.slice(0, 4)) if (v >= 0.05) rows.push(row(c.length > 70 ? `${c.slice(0, 67)}...` : c, v));
  const rest = others.slice(4).reduce((a, [, v]) => a + v, 0) + others.slice(0, 4).filter(([, v]) => v < 0.05).reduce((a, [, v]) => a + v, 0);
  if (rest >= 0.01) rows.push(row("other: everything else", rest));
  const accounted = [...by.values()].reduce((a, v) => a + v, 0);
  const machineS = (b.busy - a.busy) / CLK_TCK;
  if (machineS - accounted >= 0.05) rows.push(row("other: exited meanwhile (closed pg connections, others' tests)", machineS - accounted));
  const machine = (100 * cpus().length * (b.busy - a.busy)) / Math.max(1, b.total - a.total);
  rows.push([`machine total (${cpus().length} cores = ${cpus().length * 100}%)`, fmt(((b.busy - a.busy) / CLK_TCK), 2), `${fmt(machine, 0)}%`]);
  return renderTable(["process", "CPU s", "% of a core"], rows);
}

// ---------------------------------------------------------------------------------------------
// Configuration and small helpers.



const cfg = {
  creates: envInt("BENCH_CREATES", 20_000),
  clients: Math.max(1, envInt("BENCH_CLIENTS", 32)),
  payloadBytes: envInt("BENCH_PAYLOAD_BYTES", 64),
  fires: envInt("BENCH_FIRES", 30_000),
  fireWindowMs: Math.max(1, envInt("BENCH_FIRE_WINDOW_MS", 5_000)),
  fireLeadMs: envInt("BENCH_FIRE_LEAD_MS", 10_000),
  steadyRate: envInt("BENCH_STEADY_RATE", 1_000),
  steadySeconds: envInt("BENCH_STEADY_SECONDS", 20),
  steadyLeadMs: envInt("BENCH_STEADY_LEAD_MS", 5_000),
  drainTimeoutMs: envInt("BENCH_DRAIN_TIMEOUT_MS", 60_000),
  shardCount: Math.max(1, envInt("BENCH_SHARD_COUNT", 1024)),
  strict: process.env["BENCH_STRICT"] === "1",
  vacuum: process.env["BENCH_VACUUM"] === "1",
  timerEnv: envPairs("BENCH_TIMER_ENV"),
  dispatcherEnv: envPairs("BENCH_DISPATCHER_ENV"),
};

const t0 = Date.now();
function log(msg: string): void {
  console.log(`[bench +${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
}

/** The commit the services run from, and whether services/ has uncommitted changes. */
function sourceVersion(): string {
  try {
    const head = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: ROOT, encoding: "utf8" }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain", "--", "services"], { cwd: ROOT, encoding: "utf8" }).trim();
    return `services at ${head}${dirty ? ` + ${dirty.split("\n").length} uncommitted file(s) in services/` : " (clean)"}`;
  } catch {
    return "services at unknown commit";
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

/** Established TCP connections to 127.0.0.1:port (to tell how many HTTP/2 connections grpc-js opened). */
function tcpConnectionsTo(port: number): number {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  let n = 0;
  for (const f of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = "";
    try {
      text = readFileSync(f, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const c = line.trim().split(/\s+/);
      if (c.length > 3 && c[2]!.endsWith(hex) && c[3] === "01") n++;
    }
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// Creating timers with N concurrent clients.

interface CreateRun {
  requested: number;
  ok: number;
  failed: Set<number>;
  firstError: string | undefined;
  durationMs: number;
  endedAtMs: number;
  latency: Summary;
}

async function createMany(clients: GrpcTimerClient[], n: number, build: (i: number) => CreateTimerRequest): Promise<CreateRun> {
  const lat: number[] = [];
  const failed = new Set<number>();
  let firstError: string | undefined;
  let next = 0;
  const start = performance.now();
  await Promise.all(
    clients.map(async (client) => {
      for (;;) {
        const i = next++;
        if (i >= n) return;
        const req = build(i);
        const s = performance.now();
        try {
          await client.call("createTimer", req);
          lat.push(performance.now() - s);
        } catch (err) {
          failed.add(i);
          firstError ??= err instanceof Error ? err.message : String(err);
        }
      }
    }),
  );
  const durationMs = performance.now() - start;
  return { requested: n, ok: n - failed.size, failed, firstError, durationMs, endedAtMs: Date.now(), latency: summarize(lat) };
}

function httpCallback(url: string) {
  return { target: { case: "http" as const, value: { url, headers: {} } } };
}

// ---------------------------------------------------------------------------------------------
// Waiting for deliveries and judging them.

interface FireResult {
  expected: number;
  deliveries: number;
  unique: number;
  duplicates: number;
  early: number;
  missing: number;
  retries: number;
  unexpected: number;
  firstAtMs: number;
  lastAtMs: number;
  lateness: Summary;
  /** First receipt of each expected timer: [fireAtMs, receivedAtMs]. */
  firsts: [number, number][];
}

async function awaitDeliveries(rx: Receiver, group: string, expected: number, deadlineMs: number): Promise<void> {
  let lastReport = Date.now();
  for (;;) {
    const c = await rx.count(group);
    if (c >= expected) return;
    if (Date.now() > deadlineMs) {
      log(`gave up waiting: ${fmtInt(c)} of ${fmtInt(expected)} delivered`);
      return;
    }
    if (Date.now() - lastReport >= 5_000) {
      log(`  ... ${fmtInt(c)} / ${fmtInt(expected)} delivered`);
      lastReport = Date.now();
    }
    await sleep(100);
  }
}

function judge(rows: Row[], expected: Map<string, number>): FireResult {
  const first = new Map<string, Row>();
  let duplicates = 0;
  let early = 0;
  let retries = 0;
  let unexpected = 0;
  let firstAtMs = Infinity;
  let lastAtMs = -Infinity;
  for (const r of rows) {
    const [id, attempt, headerFireAt, at] = r;
    const due = expected.get(id);
    if (due === undefined) unexpected++;
    if (at < (due ?? headerFireAt) || at < headerFireAt) early++;
    if (attempt > 1) retries++;
    firstAtMs = Math.min(firstAtMs, at);
    lastAtMs = Math.max(lastAtMs, at);
    const prev = first.get(id);
    if (prev) {
      duplicates++;
      if (at < prev[3]) first.set(id, r);
    } else {
      first.set(id, r);
    }
  }
  const firsts: [number, number][] = [];
  for (const [id, due] of expected) {
    const r = first.get(id);
    if (r) firsts.push([due, r[3]]);
  }
  return {
    expected: expected.size,
    deliveries: rows.length,
    unique: firsts.length,
    duplicates,
    early,
    missing: expected.size - firsts.length,
    retries,
    unexpected,
    firstAtMs,
    lastAtMs,
    lateness: summarize(firsts.map(([due, at]) => at - due)),
    firsts,
  };
}

async function dbStates(db: TestDatabase, group: string): Promise<string> {
  const names: Record<number, string> = { 1: "scheduled", 2: "firing", 3: "succeeded", 4: "failed", 5: "cancelled" };
  let rows: { state: number; n: string }[] = [];
  try {
    await waitFor(async () => {
      rows = (await db.pool.query<{ state: number; n: string }>("SELECT state, count(*) AS n FROM timers WHERE group_id = $1 GROUP BY state ORDER BY state", [group])).rows;
      return !rows.some((r) => r.state === 2);
    }, 15_000, "outcomes to be written back", 250);
  } catch {
    // report whatever is there
  }
  return rows.map((r) => `${names[r.state] ?? r.state} ${fmtInt(Number(r.n))}`).join(", ") || "no rows";
}

async function vacuum(db: TestDatabase): Promise<void> {
  const t = Date.now();
  await db.pool.query("VACUUM (ANALYZE)");
  log(`VACUUM ANALYZE took ${Date.now() - t} ms`);
}

function fireRate(r: FireResult): number {
  const spanS = (r.lastAtMs - r.firstAtMs) / 1000;
  return spanS > 0 ? r.unique / spanS : NaN;
}

function checksLine(r: FireResult): string {
  return `early ${r.early}, duplicates ${r.duplicates}, missing ${r.missing} (not delivered by the drain deadline), retried attempts ${r.retries}, unexpected ${r.unexpected} (deliveries ${fmtInt(r.deliveries)} for ${fmtInt(r.expected)} timers)`;
}

/** Deliveries per receipt second, and lateness of the timers due in each second. */
function timeline(r: FireResult, originMs: number): string {
  const buckets = new Map<number, { received: number; late: number[] }>();
  const at = (s: number) => buckets.get(s) ?? (buckets.set(s, { received: 0, late: [] }), buckets.get(s)!);
  for (const [due, recv] of r.firsts) {
    at(Math.floor((recv - originMs) / 1000)).received++;
    at(Math.floor((due - originMs) / 1000)).late.push(recv - due);
  }
  const secs = [...buckets.keys()].sort((a, b) => a - b);
  const rows = secs.map((s) => {
    const b = buckets.get(s)!;
    const l = summarize(b.late);
    return [`${s}..${s + 1}`, fmtInt(b.received), fmtInt(l.count), fmtMs(l.p50), fmtMs(l.p99), fmtMs(l.max)];
  });
  return renderTable(["second (from 1st fire_at)", "received in it", "due in it", "their late p50", "p99", "max"], rows);
}

// ---------------------------------------------------------------------------------------------
// The run.

interface Verdict {
  phase: string;
  metric: string;
  result: string;
  target: string;
  pass: boolean | undefined;
}

const PHASE_HEADERS = ["phase", "count", "duration s", "rate /s", "p50 ms", "p99 ms", "max ms"];

async function main(): Promise<number> {
  let db: TestDatabase | undefined;
  let nats: TestNats | undefined;
  let rx: Receiver | undefined;
  const services: ServiceProcess[] = [];
  const clients: GrpcTimerClient[] = [];
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      for (const c of clients) c.close();
      const step = async (what: string, f: () => PromiseLike<unknown>) => {
        try {
          await f();
        } catch (err) {
          console.error(`cleanup: ${what} failed:`, err);
        }
      };
      await Promise.all(services.map((s) => step(`stopping ${s.name}`, () => s.stop("SIGTERM", 20_000))));
      if (rx) await step("stopping the receiver", () => rx!.close());
      if (nats) await step("stopping nats-server", () => nats![Symbol.asyncDispose]());
      if (db) await step("dropping the database", () => db![Symbol.asyncDispose]());
    })());
  const onSignal = (sig: NodeJS.Signals) => {
    console.error(`\n${sig}: cleaning up...`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  process.once("exit", () => {
    // Last resort if cleanup could not run: never leave processes behind.
    for (const s of services) if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill("SIGKILL");
    if (rx && rx.child.exitCode === null) rx.child.kill("SIGKILL");
  });

  const verdicts: Verdict[] = [];
  try {
    console.log(`# timer mesh benchmark\n`);
    console.log(`node ${process.version}, ${cpus().length} x ${cpus()[0]?.model ?? "cpu"}, ${sourceVersion()}`);
    console.log(`config ${JSON.stringify(cfg)}\n`);

    const idle0 = cpuSnapshot();
    await sleep(1_000);
    const idle1 = cpuSnapshot();
    const busyPct = (100 * cpus().length * (idle1.busy - idle0.busy)) / Math.max(1, idle1.total - idle0.total);
    log(`machine CPU busy before start: ${fmt(busyPct, 0)}% of ${cpus().length * 100}%${busyPct > 20 ? " -- WARNING: other work is running; results will be distorted (see the \"other:\" rows)" : ""}`);

    db = await createTestDatabase("bench");
    const dbName = new URL(db.url).pathname.slice(1);
    nats = await startNats();
    rx = await startReceiverChild();
    const env = { DATABASE_URL: db.url, SHARD_COUNT: String(cfg.shardCount), LOG_LEVEL: "warn" };
    // Every bench client is the same caller ("anonymous"): lift the per-token create rate, which
    // would otherwise cap phase A at CREATE_RATE_PER_TOKEN (1,000/s) and measure the limit.
    const unthrottled = { CREATE_RATE_PER_TOKEN: "1000000", CREATE_BURST_PER_TOKEN: "1000000" };
    const timer = await startService("timer", { ...env, ...nats.serviceEnv("timer"), ...unthrottled, ...cfg.timerEnv });
    services.push(timer);
    const dispatcher = await startService("dispatcher", { ...env, ...nats.serviceEnv("dispatcher"), DISPATCHER_ID: "bench-d1", ...cfg.dispatcherEnv });
    services.push(dispatcher);
    const pgVersion = (await db.pool.query<{ server_version: string }>("SHOW server_version")).rows[0]!.server_version;
    const autovacuum = (await db.pool.query<{ autovacuum: string }>("SHOW autovacuum")).rows[0]!.autovacuum;
    const backendPid = (await db.pool.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid;
    const known: Known = {
      pids: new Map([
        [timer.child.pid!, "timer service"],
        [dispatcher.child.pid!, "dispatcher"],
        [rx.child.pid!, "receiver (child process)"],
        [process.pid, "bench (load generator)"],
      ]),
      natsPort: nats.port,
      postmasterPid: readProc(backendPid)?.ppid,
      dbName,
    };
    log(`database ${dbName} (Postgres ${pgVersion}, autovacuum ${autovacuum}${cfg.vacuum ? "; the bench runs VACUUM ANALYZE after each creation step" : autovacuum === "off" ? "; tables are never vacuumed or analyzed during the run (BENCH_VACUUM=1 changes that)" : ""}), nats ${nats.url}, timer pid ${timer.child.pid} grpc :${timer.grpcPort}, dispatcher pid ${dispatcher.child.pid}, receiver pid ${rx.child.pid} at ${rx.url}`);

    for (let i = 0; i < cfg.clients; i++) clients.push(new GrpcTimerClient(`127.0.0.1:${timer.grpcPort}`));
    const payload = new Uint8Array(cfg.payloadBytes).map((_, i) => 97 + (i % 26));
    // Warm-up: one create per client opens its channel and warms the JIT; not measured.
    await Promise.all(
      clients.map((c, i) =>
        c.call("createTimer", create(CreateTimerRequestSchema, {
          groupId: "bench-warmup", timerId: `w-${i}`, schedule: { case: "delay", value: durationFromMs(3_600_000) },
          callback: httpCallback(rx!.url), payload,
        })),
      ),
    );
    const connections = tcpConnectionsTo(timer.grpcPort);
    log(`${cfg.clients} GrpcTimerClient instances warmed up; they hold ${connections} TCP connection(s) to the timer service`);

    // ---- A. create rate -------------------------------------------------------------------
    let createRate = NaN;
    if (cfg.creates > 0) {
      console.log(`\n## A. Create rate: ${fmtInt(cfg.creates)} CreateTimer calls, ${cfg.clients} clients x 1 in flight (${connections} TCP connection(s)), timers due in 1 h\n`);
      const cpuA = cpuSnapshot();
      const run = await createMany(clients, cfg.creates, (i) =>
        create(CreateTimerRequestSchema, {
          groupId: "bench-create", timerId: `c-${i}`, schedule: { case: "delay", value: durationFromMs(3_600_000) },
          callback: httpCallback(rx!.url), payload,
        }),
      );
      const cpuA2 = cpuSnapshot();
      createRate = run.ok / (run.durationMs / 1000);
      console.log(renderTable(PHASE_HEADERS, [["A create", fmtInt(run.ok), fmt(run.durationMs / 1000, 2), fmtInt(createRate), fmtMs(run.latency.p50), fmtMs(run.latency.p99), fmtMs(run.latency.max)]]));
      console.log(`\nerrors: ${run.failed.size}${run.firstError ? ` (first: ${run.firstError})` : ""}; CreateTimer latency mean ${fmtMs(run.latency.mean)} ms, p90 ${fmtMs(run.latency.p90)} ms\n`);
      console.log(cpuTable(cpuA, cpuA2, known));
      verdicts.push({ phase: "A create", metric: `creates/s (${cfg.clients} clients)`, result: fmtInt(createRate), target: `>= ${fmtInt(TARGET_CREATE_RATE)}`, pass: createRate >= TARGET_CREATE_RATE && run.failed.size === 0 });
      verdicts.push({ phase: "A create", metric: "CreateTimer p50 / p99 / max ms", result: `${fmtMs(run.latency.p50)} / ${fmtMs(run.latency.p99)} / ${fmtMs(run.latency.max)}`, target: "(reported)", pass: undefined });
    }
    // Fire times are fixed at creation, so the start of each firing phase is predicted from the
    // slowest create rate seen so far (with a margin); an overlap is reported and flagged.
    let slowestRate = Number.isFinite(createRate) && createRate > 0 ? createRate : 800;
    const predictCreateMs = (n: number) => (n / slowestRate) * 1000 * 1.5 + 2_000;
    const observe = (run: CreateRun) => {
      if (run.ok > 0) slowestRate = Math.min(slowestRate, run.ok / (run.durationMs / 1000));
    };

    // ---- B. fire throughput ---------------------------------------------------------------
    if (cfg.fires > 0) {
      const n = cfg.fires;
      const startMs = Math.ceil((Date.now() + predictCreateMs(n) + cfg.fireLeadMs) / 1000) * 1000;
      const dueOf = (i: number) => startMs + Math.floor((i * cfg.fireWindowMs) / n);
      console.log(`\n## B. Fire throughput: ${fmtInt(n)} HTTP-callback timers due evenly over ${fmt(cfg.fireWindowMs / 1000, 1)} s (offered ${fmtInt(n / (cfg.fireWindowMs / 1000))}/s)\n`);
      log(`creating ${fmtInt(n)} timers; first due at +${fmt((startMs - Date.now()) / 1000, 1)} s`);
      const cpuB0 = cpuSnapshot();
      const made = await createMany(clients, n, (i) =>
        create(CreateTimerRequestSchema, {
          groupId: "bench-fire", timerId: `f-${i}`, schedule: { case: "fireAt", value: timestampFromMs(dueOf(i)) },
          callback: httpCallback(rx!.url), payload,
        }),
      );
      const cpuB1 = cpuSnapshot();
      observe(made);
      const gapMs = startMs - made.endedAtMs;
      log(`created ${fmtInt(made.ok)} in ${fmt(made.durationMs / 1000, 2)} s (${fmtInt(made.ok / (made.durationMs / 1000))}/s, p99 ${fmtMs(made.latency.p99)} ms, ${made.failed.size} errors${made.firstError ? `: ${made.firstError}` : ""}); first fire_at is ${fmt(gapMs / 1000, 1)} s after creation ended`);
      if (gapMs < 1_000) log(`WARNING: creation ended only ${gapMs} ms before the first fire_at; creation load overlaps firing`);
      const expected = new Map<string, number>();
      for (let i = 0; i < n; i++) if (!made.failed.has(i)) expected.set(`f-${i}`, dueOf(i));
      if (cfg.vacuum) await vacuum(db);
      await sleep(startMs - 300 - Date.now());
      const cpuB2 = cpuSnapshot();
      await awaitDeliveries(rx, "bench-fire", expected.size, startMs + cfg.fireWindowMs + cfg.drainTimeoutMs);
      const cpuB3 = cpuSnapshot();
      await sleep(2_000); // late duplicates or retries would show up here
      const r = judge(await rx.take("bench-fire"), expected);
      const rate = fireRate(r);
      console.log();
      console.log(renderTable(PHASE_HEADERS, [["B fire (lateness)", fmtInt(r.unique), fmt((r.lastAtMs - r.firstAtMs) / 1000, 2), fmtInt(rate), fmtMs(r.lateness.p50), fmtMs(r.lateness.p99), fmtMs(r.lateness.max)]]));
      console.log(`\nchecks: ${checksLine(r)}; in Postgres: ${await dbStates(db, "bench-fire")}`);
      console.log(`rate = timers delivered / (last receipt - first receipt); first receipt ${r.firstAtMs - startMs} ms after the first fire_at, last ${r.lastAtMs - (startMs + cfg.fireWindowMs)} ms after the last fire_at\n`);
      console.log(timeline(r, startMs));
      console.log(`\nCPU while creating the ${fmtInt(n)} timers (${fmt((cpuB1.atMs - cpuB0.atMs) / 1000, 1)} s):\n`);
      console.log(cpuTable(cpuB0, cpuB1, known));
      console.log(`\nCPU while firing (${fmt((cpuB3.atMs - cpuB2.atMs) / 1000, 1)} s, from 0.3 s before the first fire_at to the last receipt):\n`);
      console.log(cpuTable(cpuB2, cpuB3, known));
      const overlapB = gapMs < 1_000 ? " (creation overlapped firing!)" : "";
      verdicts.push({ phase: "B fire", metric: `fires/s (first to last receipt)${overlapB}`, result: fmtInt(rate), target: `>= ${fmtInt(TARGET_FIRE_RATE)}`, pass: rate >= TARGET_FIRE_RATE });
      verdicts.push({ phase: "B fire", metric: "lateness p50 / p99 / max ms", result: `${fmtMs(r.lateness.p50)} / ${fmtMs(r.lateness.p99)} / ${fmtMs(r.lateness.max)}`, target: "(reported)", pass: undefined });
      verdicts.push({ phase: "B fire", metric: "early / duplicate / missing", result: `${r.early} / ${r.duplicates} / ${r.missing}`, target: "0 / 0 / 0", pass: r.early === 0 && r.duplicates === 0 && r.missing === 0 && made.failed.size === 0 });
    }

    // ---- C. steady lateness ---------------------------------------------------------------
    if (cfg.steadyRate > 0 && cfg.steadySeconds > 0) {
      const n = cfg.steadyRate * cfg.steadySeconds;
      const startMs = Math.ceil((Date.now() + predictCreateMs(n) + cfg.steadyLeadMs) / 1000) * 1000;
      const dueOf = (i: number) => startMs + Math.round((i * 1000) / cfg.steadyRate);
      console.log(`\n## C. Steady lateness: ${fmtInt(cfg.steadyRate)} fires/s for ${cfg.steadySeconds} s (${fmtInt(n)} timers, created ahead)\n`);
      log(`creating ${fmtInt(n)} timers; first due at +${fmt((startMs - Date.now()) / 1000, 1)} s`);
      const made = await createMany(clients, n, (i) =>
        create(CreateTimerRequestSchema, {
          groupId: "bench-steady", timerId: `s-${i}`, schedule: { case: "fireAt", value: timestampFromMs(dueOf(i)) },
          callback: httpCallback(rx!.url), payload,
        }),
      );
      observe(made);
      const gapMs = startMs - made.endedAtMs;
      log(`created ${fmtInt(made.ok)} in ${fmt(made.durationMs / 1000, 2)} s (${fmtInt(made.ok / (made.durationMs / 1000))}/s, ${made.failed.size} errors${made.firstError ? `: ${made.firstError}` : ""}); first fire_at is ${fmt(gapMs / 1000, 1)} s after creation ended`);
      if (gapMs < 1_000) log(`WARNING: creation ended only ${gapMs} ms before the first fire_at; creation load overlaps firing`);
      const expected = new Map<string, number>();
      for (let i = 0; i < n; i++) if (!made.failed.has(i)) expected.set(`s-${i}`, dueOf(i));
      if (cfg.vacuum) await vacuum(db);
      await sleep(startMs - 300 - Date.now());
      const cpuC0 = cpuSnapshot();
      await awaitDeliveries(rx, "bench-steady", expected.size, startMs + cfg.steadySeconds * 1000 + cfg.drainTimeoutMs);
      const cpuC1 = cpuSnapshot();
      await sleep(2_000);
      const r = judge(await rx.take("bench-steady"), expected);
      const rate = fireRate(r);
      console.log();
      console.log(renderTable(PHASE_HEADERS, [["C steady (lateness)", fmtInt(r.unique), fmt((r.lastAtMs - r.firstAtMs) / 1000, 2), fmtInt(rate), fmtMs(r.lateness.p50), fmtMs(r.lateness.p99), fmtMs(r.lateness.max)]]));
      console.log(`\nchecks: ${checksLine(r)}; in Postgres: ${await dbStates(db, "bench-steady")}; lateness mean ${fmtMs(r.lateness.mean)} ms, p90 ${fmtMs(r.lateness.p90)} ms\n`);
      console.log(timeline(r, startMs));
      console.log(`\nCPU while firing (${fmt((cpuC1.atMs - cpuC0.atMs) / 1000, 1)} s):\n`);
      console.log(cpuTable(cpuC0, cpuC1, known));
      const overlapC = gapMs < 1_000 ? " (creation overlapped firing!)" : "";
      verdicts.push({ phase: "C steady", metric: `lateness p99 ms at ${fmtInt(cfg.steadyRate)}/s${overlapC}`, result: fmtMs(r.lateness.p99), target: `<= ${TARGET_STEADY_P99_MS}`, pass: r.lateness.p99 <= TARGET_STEADY_P99_MS && r.missing === 0 });
      verdicts.push({ phase: "C steady", metric: "lateness p50 / max ms", result: `${fmtMs(r.lateness.p50)} / ${fmtMs(r.lateness.max)}`, target: "(reported)", pass: undefined });
      verdicts.push({ phase: "C steady", metric: "early / duplicate / missing", result: `${r.early} / ${r.duplicates} / ${r.missing}`, target: "0 / 0 / 0", pass: r.early === 0 && r.duplicates === 0 && r.missing === 0 && made.failed.size === 0 });
    }

    for (const s of services) {
      const out = s.output().trim();
      if (out) console.log(`\n${s.name} logged (LOG_LEVEL=warn), last lines:\n${out.split("\n").slice(-8).map((l) => `  ${l.slice(0, 300)}`).join("\n")}`);
    }

    console.log(`\n## Summary\n`);
    console.log(renderTable(
      ["phase", "metric", "result", "target", "verdict"],
      verdicts.map((v) => [v.phase, v.metric, v.result, v.target, v.pass === undefined ? "" : v.pass ? "PASS" : "MISS"]),
      ["left", "left", "right", "right", "left"],
    ));
    return cfg.strict && verdicts.some((v) => v.pass === false) ? 1 : 0;
  } finally {
    log("cleaning up (services, receiver, nats-server, database)");
    await cleanup();
    log("done");
  }
}

if (process.argv.includes("--receiver")) {
  await receiverMain();
} else {
  const code = await main().catch((err: unknown) => {
    console.error("bench failed:", err);
    return 1;
  });
  process.exit(code);
}
