// npm run chaos [seconds] — the mesh under a steady load while faults play, one at a time, with
// recovery between them; prints what each fault cost and exits non-zero when a timer was lost,
// fired early, or fired twice where no crash explains it.
//
// The mesh: a timer service and three dispatchers (d1, d2, d3; d3 under libfaketime, so its wall
// clock can be stepped like an NTP step does: Date.now() jumps, performance.now() does not) on a
// private Postgres cluster (test/support/private-postgres.ts) and a private nats-server, all real
// processes started with the test helpers (test/support/mesh.ts). The load: CHAOS_RATE creates
// per second (200) through the timer service's gRPC API, caller-chosen ids, fire times 2-5 s
// ahead, HTTP callbacks to a receiver in a child process (test/support/receivers.ts) that
// records every arrival by its own clock with the timer's fire time and idempotency key.
//
// The faults, in order, each in its own slot of the run:
//   SIGKILL d1 (restarted 2 s later) · SIGSTOP d2 for LEASE_TTL + 2 s, then SIGCONT ·
//   nats-server stopped for 2 s and restarted · Postgres restarted (fast shutdown, start) ·
//   d3's wall clock stepped +3 s, then to -3 s, then back.
//
// Each timer is counted in the slot its fire time falls in. A duplicate is "in flight at the
// kill" when its first delivery arrived in the CALLBACK_TIMEOUT before the SIGKILLed process
// was seen dead and the second after that (at-least-once allows exactly that); any other
// duplicate is a failure.
//
// Environment: CHAOS_SECONDS (length of the loaded run, default 210; or the first argument),
// CHAOS_RATE (creates per second, default 200). Needs nats-server on PATH and libfaketime
// (/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1, Debian package `faketime`).
import { fork, type ChildProcess } from "node:child_process";
import { access, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { startMesh, type TestMesh } from "../test/support/mesh.js";
import { startPrivatePostgres, type PrivatePostgres } from "../test/support/private-postgres.js";
import { startHttpReceiver } from "../test/support/receivers.js";
import type { ServiceProcess } from "../test/support/service-process.js";
import { httpTimerAt } from "../test/support/timer-client.js";
import { waitFor } from "../test/support/wait.js";
import { envInt } from "./bench-env.js";
import { fmtInt, fmtMs, renderTable, summarize } from "./stats.js";

const SELF = fileURLToPath(import.meta.url);
const ROOT = fileURLToPath(new URL("../", import.meta.url));
const LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const GROUP = "chaos";
const LEASE_TTL_MS = 3_000;
const CALLBACK_TIMEOUT_MS = 10_000;
const WARMUP_MS = 20_000;
const MIN_SLOT_MS = 20_000;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const log = (msg: string) => console.error(`[chaos ${new Date().toISOString().slice(11, 23)}] ${msg}`);

// ---------------------------------------------------------------------------------------------
// Receiver child: the test receiver in its own process, so the load generator's work never
// delays the arrival stamps (a late stamp could hide an early delivery).

/** One arrival: timer id, fire time (header), arrival (receiver clock), idempotency key, attempt. */
type Arrival = [string, number, number, string, number];

async function receiverMain(): Promise<void> {
  const receiver = await startHttpReceiver();
  process.send!({ url: receiver.url });
  process.on("message", (m: string) => {
    if (m !== "take") return;
    const rows: Arrival[] = receiver.received
      .splice(0)
      .map((r) => [r.timerId, r.fireAtMs, r.receivedAtMs, r.idempotencyKey, r.attempt]);
    process.send!({ rows });
  });
  process.on("disconnect", () => void receiver.close().then(() => process.exit(0)));
}

interface ReceiverChild {
  url: string;
  /** Every arrival so far. */
  arrivals: Arrival[];
  collect(): Promise<void>;
  close(): void;
}

async function startReceiverChild(): Promise<ReceiverChild> {
  const child: ChildProcess = fork(SELF, ["--receiver"], {
    cwd: ROOT,
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  child.on("error", (err) => log(`receiver process: ${err.message}`));
  const url = await new Promise<string>((resolve, reject) => {
    child.once("message", (m: { url: string }) => resolve(m.url));
    child.once("exit", (code) => reject(new Error(`receiver exited (${code})`)));
  });
  const arrivals: Arrival[] = [];
  return {
    url,
    arrivals,
    collect: () =>
      new Promise<void>((resolve, reject) => {
        if (!child.connected) return reject(new Error("the receiver process is gone"));
        child.once("message", (m: { rows: Arrival[] }) => {
          for (const r of m.rows) arrivals.push(r);
          resolve();
        });
        child.send("take");
      }),
    close: () => {
      if (child.connected) child.disconnect();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Load: creates at a steady rate; the answer of each is kept.

interface Created {
  fireAtMs: number;
  /** "OK", or the gRPC status name of the error. */
  answer: string;
  /** The error's message, when it failed. */
  detail?: string;
}

function startLoad(mesh: TestMesh, url: string, ratePerSecond: number) {
  const created = new Map<string, Created>();
  let issued = 0;
  let pending = 0;
  const startedAt = Date.now();
  const tick = setInterval(() => {
    const due = Math.floor(((Date.now() - startedAt) / 1000) * ratePerSecond);
    for (; issued < due; issued++) {
      const id = `c${String(issued).padStart(7, "0")}`;
      const fireAtMs = Date.now() + 2_000 + Math.round(Math.random() * 3_000);
      const entry: Created = { fireAtMs, answer: "pending" };
      created.set(id, entry);
      pending++;
      mesh.client
        .call("createTimer", httpTimerAt(GROUP, id, fireAtMs, url))
        .then(
          () => (entry.answer = "OK"),
          (err: grpc.ServiceError) => {
            entry.answer = grpc.status[err.code] ?? String(err.code);
            entry.detail = err.details;
          },
        )
        .finally(() => pending--);
    }
  }, 10);
  return {
    created,
    async stop() {
      clearInterval(tick);
      await waitFor(() => pending === 0, 60_000, "the last creates to be answered", 50);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Faults

interface FaultRecord {
  name: string;
  startedAtMs: number;
  note: string;
  /** When every service answered /readyz again after the fault. */
  recoveredAtMs: number;
}

interface Chaos {
  mesh: TestMesh;
  pg: PrivatePostgres;
  clockFile: string;
  /** When each SIGKILLed process was seen dead (the duplicates they explain). */
  kills: number[];
  /** Processes we stopped on purpose (their exit is no failure). */
  killed: Set<ServiceProcess>;
}

/** Each dispatcher process's DISPATCHER_ID. */
const dispatcherIds = new Map<ServiceProcess, string>();

/** The live process of a dispatcher id (the latest started). */
function dispatcher(c: Chaos, id: string): ServiceProcess {
  const p = [...c.mesh.dispatchers].reverse().find((d) => dispatcherIds.get(d) === id);
  if (!p) throw new Error(`no dispatcher ${id}`);
  return p;
}

async function addDispatcher(
  c: Chaos,
  id: string,
  env: Record<string, string> = {},
): Promise<ServiceProcess> {
  const p = await c.mesh.addDispatcher(id, {
    LEASE_TTL: `${LEASE_TTL_MS}ms`,
    CALLBACK_TIMEOUT: `${CALLBACK_TIMEOUT_MS}ms`,
    ...env,
  });
  dispatcherIds.set(p, id);
  return p;
}

const FAULTS: { name: string; run(c: Chaos): Promise<string> }[] = [
  {
    name: "SIGKILL d1",
    async run(c) {
      const d1 = dispatcher(c, "d1");
      c.killed.add(d1);
      d1.child.kill("SIGKILL");
      await d1.exited;
      // When we saw it dead: a delivery it started before dying arrived before this.
      c.kills.push(Date.now());
      await sleep(2_000);
      await addDispatcher(c, "d1");
      return "killed, restarted after 2 s";
    },
  },
  {
    name: `SIGSTOP d2 ${(LEASE_TTL_MS + 2_000) / 1000} s`,
    async run(c) {
      const d2 = dispatcher(c, "d2");
      d2.child.kill("SIGSTOP");
      await sleep(LEASE_TTL_MS + 2_000);
      d2.child.kill("SIGCONT");
      return `stopped past LEASE_TTL (${LEASE_TTL_MS} ms), continued`;
    },
  },
  {
    name: "NATS restart",
    async run(c) {
      await c.mesh.nats.stop();
      await sleep(2_000);
      await c.mesh.nats.restart();
      return "down 2 s";
    },
  },
  {
    name: "Postgres restart",
    async run(c) {
      const t0 = Date.now();
      await c.pg.stop("fast");
      await c.pg.start();
      return `fast shutdown and start: down ${fmtInt(Date.now() - t0)} ms`;
    },
  },
  {
    name: "clock step d3",
    async run(c) {
      await writeFile(c.clockFile, "+3s\n");
      await sleep(8_000);
      await writeFile(c.clockFile, "-3s\n");
      await sleep(8_000);
      await writeFile(c.clockFile, "+0s\n");
      return "wall clock +3 s for 8 s, then -3 s for 8 s, then back";
    },
  },
];

async function allReady(c: Chaos): Promise<boolean> {
  const live = [c.mesh.timer, ...c.mesh.dispatchers].filter((p) => !c.killed.has(p));
  const ok = await Promise.all(
    live.map((p) =>
      fetch(`http://127.0.0.1:${p.httpPort}/readyz`).then(
        (r) => r.status === 200,
        () => false,
      ),
    ),
  );
  return ok.every(Boolean);
}

// ---------------------------------------------------------------------------------------------
// Report

interface Row {
  phase: string;
  stored: number;
  createErrors: number;
  fired: number;
  lost: number;
  dupInFlight: number;
  dupOther: number;
  early: number;
  /** First-arrival lateness of each fired timer. */
  lateMs: number[];
}

/** A row with nothing counted yet. */
function emptyRow(phase: string): Row {
  return {
    phase,
    stored: 0,
    createErrors: 0,
    fired: 0,
    lost: 0,
    dupInFlight: 0,
    dupOther: 0,
    early: 0,
    lateMs: [],
  };
}

function analyse(
  created: Map<string, Created>,
  stored: Map<string, number>,
  arrivals: Arrival[],
  phases: { name: string; fromMs: number }[],
  kills: number[],
): { rows: Row[]; problems: string[] } {
  const byId = new Map<string, Arrival[]>();
  for (const a of arrivals) {
    const list = byId.get(a[0]);
    if (list) list.push(a);
    else byId.set(a[0], [a]);
  }
  const problems: string[] = [];
  for (const [id, c] of created) {
    if (c.answer === "OK" && !stored.has(id))
      problems.push(`create of ${id} answered OK but the timer is not stored`);
  }
  for (const id of byId.keys()) if (!stored.has(id)) problems.push(`timer ${id} fired but was never stored`);

  const phaseOf = (fireAtMs: number) => {
    let i = 0;
    while (i + 1 < phases.length && phases[i + 1]!.fromMs <= fireAtMs) i++;
    return i;
  };
  const rows: Row[] = phases.map((p) => emptyRow(p.name));
  for (const [id, c] of created) {
    if (c.answer !== "OK" && !stored.has(id)) rows[phaseOf(c.fireAtMs)]!.createErrors++;
  }
  for (const [id, fireAtMs] of stored) {
    const row = rows[phaseOf(fireAtMs)]!;
    row.stored++;
    const got = (byId.get(id) ?? []).sort((a, b) => a[2] - b[2]);
    if (got.length === 0) {
      row.lost++;
      if (row.lost <= 3) problems.push(`timer ${id} (due ${new Date(fireAtMs).toISOString()}) never fired`);
      continue;
    }
    row.fired++;
    if (got.some((a) => a[2] < fireAtMs)) {
      row.early++;
      if (row.early <= 3) problems.push(`timer ${id} fired ${fmtMs(fireAtMs - got[0]![2])} ms early`);
    }
    row.lateMs.push(got[0]![2] - fireAtMs);
    // What a receiver relies on: the fire time it is told is the stored one, and a repeat
    // carries the same idempotency key as the first delivery (so it can be recognised).
    if (got.some((a) => a[1] !== fireAtMs))
      problems.push(
        `timer ${id} was delivered with x-timer-fire-at ${new Date(got[0]![1]).toISOString()}, stored ${new Date(fireAtMs).toISOString()}`,
      );
    if (new Set(got.map((a) => a[3])).size > 1)
      problems.push(
        `timer ${id}'s deliveries carried different idempotency keys: ${got.map((a) => a[3]).join(", ")}`,
      );
    if (got.length > 1) {
      const first = got[0]![2];
      const second = got[1]![2];
      // In flight at a SIGKILL: started (arrived) before the process was seen dead, within one
      // callback timeout of that, and repeated after it.
      const explained = kills.some((k) => first <= k && first >= k - CALLBACK_TIMEOUT_MS && second > k);
      if (explained) row.dupInFlight++;
      else {
        row.dupOther++;
        if (row.dupOther <= 3)
          problems.push(
            `timer ${id} fired ${got.length} times (at ${got.map((a) => new Date(a[2]).toISOString().slice(11, 23)).join(", ")}) with no crash in flight`,
          );
      }
    }
  }
  const total = emptyRow("total");
  for (const r of rows) {
    total.stored += r.stored;
    total.createErrors += r.createErrors;
    total.fired += r.fired;
    total.lost += r.lost;
    total.dupInFlight += r.dupInFlight;
    total.dupOther += r.dupOther;
    total.early += r.early;
    for (const ms of r.lateMs) total.lateMs.push(ms);
  }
  return { rows: [...rows, total], problems };
}

/** The warn/error/fatal messages of a service's JSON log, most frequent first. */
function logDigest(output: string): string[] {
  const counts = new Map<string, number>();
  for (const line of output.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      const rec = JSON.parse(line) as { level?: string; msg?: string };
      if (rec.level !== "warn" && rec.level !== "error" && rec.level !== "fatal") continue;
      if (rec.msg?.startsWith("AUTHENTICATION IS DISABLED")) continue;
      const key = `${rec.level}: ${rec.msg}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
    } catch {
      // not a log record
    }
  }
  return [...counts]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 6)
    .map(([m, n]) => `${n} × ${m}`);
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const seconds = Number(process.argv[2] ?? envInt("CHAOS_SECONDS", 210));
  if (!Number.isInteger(seconds) || seconds <= 0)
    throw new Error(`the run length must be a whole number of seconds, got "${process.argv[2]}"`);
  const rate = envInt("CHAOS_RATE", 200);
  await access(LIBFAKETIME).catch(() => {
    throw new Error(
      `${LIBFAKETIME} is missing: install Debian's faketime package (apt-get install faketime)`,
    );
  });
  const slotMs = Math.max(MIN_SLOT_MS, (seconds * 1000 - WARMUP_MS) / FAULTS.length);
  const runMs = WARMUP_MS + slotMs * FAULTS.length;

  const tmp = await mkdtemp(join(tmpdir(), "chaos-"));
  const clockFile = join(tmp, "faketime");
  await writeFile(clockFile, "+0s\n");
  log(
    "starting Postgres, nats-server, receiver, timer service and dispatchers d1, d2, d3 (d3 under libfaketime)",
  );
  const pg = await startPrivatePostgres();
  const receiver = await startReceiverChild();
  let mesh: TestMesh | undefined;
  let cleaning: Promise<void> | undefined;
  const cleanUp = () =>
    (cleaning ??= (async () => {
      try {
        await Promise.resolve(mesh?.[Symbol.asyncDispose]()).catch((err: unknown) =>
          log(`stopping the mesh: ${String(err)}`),
        );
        receiver.close();
      } finally {
        await pg[Symbol.asyncDispose]();
        await rm(tmp, { recursive: true, force: true });
      }
    })());
  // Ctrl-C: Postgres runs in its own process group, so it would outlive us without this. The
  // handler stays installed: tsx relays the signal again, and a second one must not kill us
  // half-way through the clean-up.
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.on(sig, () => {
      if (cleaning !== undefined) return;
      log(`${sig}: stopping everything`);
      void cleanUp().finally(() => process.exit(130));
    });
  }
  try {
    mesh = await startMesh({ dispatchers: 0, databaseUrl: pg.url, env: { LOG_LEVEL: "warn" } });
    const c: Chaos = { mesh, pg, clockFile, kills: [], killed: new Set() };
    await addDispatcher(c, "d1");
    await addDispatcher(c, "d2");
    await addDispatcher(c, "d3", {
      LD_PRELOAD: LIBFAKETIME,
      FAKETIME_TIMESTAMP_FILE: clockFile,
      FAKETIME_NO_CACHE: "1",
      // An NTP step moves the wall clock; CLOCK_MONOTONIC (performance.now()) goes on.
      FAKETIME_DONT_FAKE_MONOTONIC: "1",
    });
    const unexpectedExits: string[] = [];
    const watch = (p: ServiceProcess) =>
      void p.exited.then((code) => {
        if (!c.killed.has(p))
          unexpectedExits.push(
            `${p.name} ${dispatcherIds.get(p) ?? ""} exited (${code ?? p.child.signalCode}):\n${p.output().slice(-2000)}`,
          );
      });
    watch(mesh.timer);
    const watched = new Set<ServiceProcess>();
    const watchAll = () => {
      for (const p of c.mesh.dispatchers) {
        if (watched.has(p)) continue;
        watched.add(p);
        watch(p);
      }
    };
    watchAll();
    await waitFor(() => allReady(c), 60_000, "every service to be ready");

    log(
      `load: ${rate} creates/s for ${fmtInt(runMs / 1000)} s; faults every ${fmtInt(slotMs / 1000)} s after ${WARMUP_MS / 1000} s of warm-up`,
    );
    const load = startLoad(mesh, receiver.url, rate);
    const collector = setInterval(
      () => void receiver.collect().catch((err: Error) => log(err.message)),
      5_000,
    );
    const runStart = Date.now();
    const phases: { name: string; fromMs: number }[] = [{ name: "no fault (warm-up)", fromMs: 0 }];
    const records: FaultRecord[] = [];
    await sleep(WARMUP_MS);
    for (const [i, fault] of FAULTS.entries()) {
      const slotEnd = runStart + WARMUP_MS + (i + 1) * slotMs;
      const startedAtMs = Date.now();
      phases.push({ name: fault.name, fromMs: startedAtMs });
      log(`fault: ${fault.name}`);
      const note = await fault.run(c);
      watchAll();
      await waitFor(() => allReady(c), 60_000, `every service to be ready after ${fault.name}`, 100);
      const recoveredAtMs = Date.now();
      records.push({ name: fault.name, startedAtMs, note, recoveredAtMs });
      log(`  ${note}; all ready ${fmtInt(recoveredAtMs - startedAtMs)} ms after the fault began`);
      await sleep(Math.max(0, slotEnd - Date.now()));
    }
    log("load stopped; waiting for every stored timer to finish");
    await load.stop();
    clearInterval(collector);

    // The truth of what was stored, then every stored timer to reach a final state.
    let open = -1;
    try {
      await waitFor(
        async () => {
          const { rows } = await mesh!.db.pool.query<{ n: number }>(
            "SELECT count(*)::int AS n FROM timers WHERE group_id = $1 AND state IN (1, 2)",
            [GROUP],
          );
          open = rows[0]!.n;
          return open === 0;
        },
        120_000,
        "every stored timer to be delivered",
        500,
      );
    } catch {
      log(`${open} timers still scheduled or firing after 120 s: counted as lost`);
    }
    const { rows } = await mesh.db.pool.query<{ timer_id: string; fire_at: Date }>(
      "SELECT timer_id, fire_at FROM timers WHERE group_id = $1",
      [GROUP],
    );
    const stored = new Map(rows.map((r) => [r.timer_id, r.fire_at.getTime()]));
    await receiver.collect();

    const { rows: table, problems } = analyse(load.created, stored, receiver.arrivals, phases, c.kills);
    console.log(
      `\n## Chaos run: ${fmtInt(runMs / 1000)} s at ${rate} creates/s, timer service + 3 dispatchers\n`,
    );
    console.log(
      renderTable(
        [
          "phase (by fire time)",
          "timers stored",
          "create errors",
          "fired",
          "lost",
          "dup: in flight at kill",
          "dup: other",
          "early",
          "lateness p99 ms",
          "worst lateness ms",
        ],
        table.map((r) => {
          const late = summarize(r.lateMs);
          return [
            r.phase,
            fmtInt(r.stored),
            fmtInt(r.createErrors),
            fmtInt(r.fired),
            fmtInt(r.lost),
            fmtInt(r.dupInFlight),
            fmtInt(r.dupOther),
            fmtInt(r.early),
            fmtMs(late.p99),
            fmtMs(late.max),
          ];
        }),
      ),
    );
    console.log("\nFaults:\n");
    for (const r of records) {
      console.log(
        `- t+${fmtInt((r.startedAtMs - runStart) / 1000)} s ${r.name}: ${r.note}; every service ready again after ${fmtInt(r.recoveredAtMs - r.startedAtMs)} ms`,
      );
    }
    const errors = new Map<string, { n: number; example: string }>();
    for (const c2 of load.created.values()) {
      if (c2.answer === "OK") continue;
      const e = errors.get(c2.answer) ?? { n: 0, example: c2.detail ?? "" };
      e.n++;
      errors.set(c2.answer, e);
    }
    if (errors.size > 0) {
      console.log(
        "\nCreate errors by code (a failed create may still be stored: the table counts what Postgres holds):\n",
      );
      for (const [code, e] of errors) console.log(`- ${code}: ${fmtInt(e.n)}, e.g. "${e.example}"`);
    }
    for (const e of unexpectedExits) problems.push(`a service exited: ${e}`);
    console.log("\nWarnings and errors the services logged (count, message):\n");
    for (const p of [mesh.timer, ...mesh.dispatchers]) {
      const digest = logDigest(p.output());
      if (digest.length > 0)
        console.log(`- ${p.name} ${dispatcherIds.get(p) ?? ""} (port ${p.grpcPort}): ${digest.join("; ")}`);
    }
    const total = table[table.length - 1]!;
    const failed = total.lost > 0 || total.early > 0 || total.dupOther > 0 || problems.length > 0;
    if (problems.length > 0) console.log(`\nProblems:\n${problems.map((p) => `- ${p}`).join("\n")}`);
    console.log(
      failed
        ? "\nFAILED: timers lost, early, or fired twice without a crash to explain it"
        : "\nOK: nothing lost, nothing early, duplicates only where a delivery was in flight at a SIGKILL",
    );
    return failed ? 1 : 0;
  } finally {
    await cleanUp();
  }
}

if (process.argv.includes("--receiver")) {
  void receiverMain();
} else {
  main().then(
    (code) => process.exit(code),
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
}
