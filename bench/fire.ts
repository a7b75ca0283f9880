// End-to-end benchmark of the timer mesh against issue 10's targets and peers: unary and batch
// create rates, fire throughput and lateness, in one summary table.
//
//   cd /work/main && npm run bench          (BENCH_STRICT=1 npm run bench: exit 1 on a miss)
//
// Starts the system as the tests do (test/support/mesh.ts: a fresh database on the local
// Postgres, a private nats-server, the timer service and ONE dispatcher as real processes,
// LOG_LEVEL=warn, the per-caller create rate lifted) and the HTTP callback receiver in a child
// process (bench/receiver.ts). The workload is the issue's, 20,000 timers per step:
//
//   1. Unary creates: BENCH_CREATES (20,000) CreateTimer calls from BENCH_CALLERS (64)
//      concurrent callers on ONE grpc-js channel, timers due in 1 h.
//   2. Batch creates: BENCH_CREATES timers in CreateTimers calls of BENCH_BATCH_SIZE (1,000),
//      BENCH_BATCH_IN_FLIGHT (1) at a time, from one client. Until the server has CreateTimers
//      this row fails as UNIMPLEMENTED (and the fire runs create their timers with unary calls).
//   3. Fire throughput: BENCH_FIRES (20,000) HTTP-callback timers due evenly over
//      BENCH_FIRE_WINDOW_MS (2 s: offered 10,000/s), first due BENCH_FIRE_LEAD_MS (10 s) after
//      their creation; fires/s between the first and the last receipt.
//   4. Lateness with timers stored ahead: BENCH_STEADY_COUNT (20,000) timers at each rate of
//      BENCH_STEADY_RATES ("5000,1000" fires/s), first due BENCH_STEADY_LEAD_MS (5 s) after
//      their creation; lateness = receipt - fire_at.
//
// Every fire run (bench/fire-run.ts, the one procedure) checks that every create was
// acknowledged and every timer delivered exactly once and never early; a failed check fails its
// rows. Each step also prints the CPU used by every process (bench/cpu.ts), so a miss can be
// traced to the timer service, the dispatcher, Postgres, the receiver, the load generator, or
// other work on the machine.
//
// Other knobs: BENCH_PAYLOAD_BYTES (64), BENCH_DRAIN_TIMEOUT_MS (60 s), BENCH_SHARD_COUNT (1024),
// BENCH_VACUUM=1 (VACUUM ANALYZE after each creation step, standing in for autovacuum where the
// server has it off), BENCH_TIMER_ENV / BENCH_DISPATCHER_ENV (extra service environment, "K=V
// K2=V2" or a JSON object). A count of 0 skips its step. Everything is torn down at the end,
// also on failure or Ctrl-C.
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { cpus } from "node:os";
import { fileURLToPath } from "node:url";
import { startMesh, type TestMesh } from "../test/support/mesh.js";
import { envInt, envPairs } from "./bench-env.js";
import { cpuSnapshot, cpuTable, machineBusyPct, readProc, type CpuSnapshot, type Known } from "./cpu.js";
import {
  type CreateRun,
  Creator,
  createBatches,
  createRate,
  createUnary,
  failureNote,
  hourAheadLoad,
} from "./creates.js";
import { dbStates, fireRun, type FireOutcome } from "./fire-run.js";
import { startReceiver, type Receiver } from "./receiver.js";
import {
  checksLine,
  exactlyOnce,
  fireRate,
  fmt,
  fmtInt,
  fmtMs,
  renderTable,
  timeline,
  type Summary,
} from "./stats.js";
import {
  exitCode,
  judged,
  mustBeZero,
  summaryTable,
  TARGETS,
  type PeerMeasure,
  type Verdict,
} from "./targets.js";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

const cfg = {
  creates: envInt("BENCH_CREATES", 20_000),
  callers: Math.max(1, envInt("BENCH_CALLERS", 64)),
  batchSize: Math.max(1, envInt("BENCH_BATCH_SIZE", 1_000)),
  batchInFlight: Math.max(1, envInt("BENCH_BATCH_IN_FLIGHT", 1)),
  payloadBytes: envInt("BENCH_PAYLOAD_BYTES", 64),
  fires: envInt("BENCH_FIRES", 20_000),
  fireWindowMs: Math.max(1, envInt("BENCH_FIRE_WINDOW_MS", 2_000)),
  fireLeadMs: envInt("BENCH_FIRE_LEAD_MS", 10_000),
  steadyRates: (process.env.BENCH_STEADY_RATES ?? "5000,1000")
    .split(",")
    .filter(Boolean)
    .map((r) => {
      if (!/^\d+$/.test(r.trim()) || Number(r) === 0)
        throw new Error(`BENCH_STEADY_RATES must be positive integers separated by commas, got "${r}"`);
      return Number(r);
    }),
  steadyCount: envInt("BENCH_STEADY_COUNT", 20_000),
  steadyLeadMs: envInt("BENCH_STEADY_LEAD_MS", 5_000),
  drainTimeoutMs: envInt("BENCH_DRAIN_TIMEOUT_MS", 60_000),
  shardCount: Math.max(1, envInt("BENCH_SHARD_COUNT", 1024)),
  strict: process.env.BENCH_STRICT === "1",
  vacuum: process.env.BENCH_VACUUM === "1",
  timerEnv: envPairs("BENCH_TIMER_ENV"),
  dispatcherEnv: envPairs("BENCH_DISPATCHER_ENV"),
};

const t0 = Date.now();
function log(msg: string): void {
  console.log(`[bench +${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

/** The commit the services run from, and whether services/ has uncommitted changes. */
function sourceVersion(): string {
  try {
    const head = execFileSync("git", ["rev-parse", "--short", "HEAD"], {
      cwd: ROOT,
      encoding: "utf8",
    }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain", "--", "services"], {
      cwd: ROOT,
      encoding: "utf8",
    }).trim();
    return `services at ${head}${dirty ? ` + ${dirty.split("\n").length} uncommitted file(s) in services/` : " (clean)"}`;
  } catch {
    return "services at unknown commit";
  }
}

/** Established TCP connections to 127.0.0.1:port (to show the callers share one HTTP/2 connection). */
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

const PHASE_HEADERS = ["step", "count", "duration s", "rate /s", "p50 ms", "p99 ms", "max ms"];
const triple = (s: Summary) => `${fmtMs(s.p50)} / ${fmtMs(s.p99)} / ${fmtMs(s.max)}`;

async function main(): Promise<number> {
  let mesh: TestMesh | undefined;
  let rx: Receiver | undefined;
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      const step = async (what: string, f: () => PromiseLike<unknown>) => {
        try {
          await f();
        } catch (err) {
          console.error(`cleanup: ${what} failed:`, err);
        }
      };
      if (mesh)
        await step("stopping the mesh (services, nats-server, database)", () => mesh![Symbol.asyncDispose]());
      if (rx) await step("stopping the receiver", () => rx!.close());
    })());
  const onSignal = (sig: NodeJS.Signals) => {
    console.error(`\n${sig}: cleaning up...`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  process.once("exit", () => {
    // Last resort if cleanup could not run: never leave processes behind.
    for (const s of mesh ? [mesh.timer, ...mesh.dispatchers] : [])
      if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill("SIGKILL");
    if (rx && rx.child.exitCode === null) rx.child.kill("SIGKILL");
  });

  const verdicts: Verdict[] = [];
  try {
    const machine = `${cpus().length} cores (${cpus()[0]?.model ?? "cpu"})`;
    console.log(`# timer mesh benchmark\n`);
    console.log(`node ${process.version}, ${machine}, ${sourceVersion()}`);
    console.log(`config ${JSON.stringify(cfg)}\n`);

    const idle0 = cpuSnapshot();
    await sleep(1_000);
    const busyPct = machineBusyPct(idle0, cpuSnapshot());
    log(
      `machine CPU busy before start: ${fmt(busyPct, 0)}% of ${cpus().length * 100}%${busyPct > 20 ? ' -- WARNING: other work is running; results will be distorted (see the "other:" rows)' : ""}`,
    );

    rx = await startReceiver();
    mesh = await startMesh({
      dispatchers: 1,
      databasePrefix: "bench",
      env: { SHARD_COUNT: String(cfg.shardCount), LOG_LEVEL: "warn" },
      // Every bench caller is the same ("anonymous"): lift the per-caller create rate, which
      // would otherwise cap creation at CREATE_RATE_PER_TOKEN (1,000/s) and measure the limit.
      timerEnv: { CREATE_RATE_PER_TOKEN: "1000000", CREATE_BURST_PER_TOKEN: "10000000", ...cfg.timerEnv },
      dispatcherEnv: cfg.dispatcherEnv,
    });
    const { db, timer, client } = mesh;
    const dispatcher = mesh.dispatchers[0]!;
    const dbName = new URL(db.url).pathname.slice(1);
    const pgVersion = (await db.pool.query<{ server_version: string }>("SHOW server_version")).rows[0]!
      .server_version;
    const autovacuum = (await db.pool.query<{ autovacuum: string }>("SHOW autovacuum")).rows[0]!.autovacuum;
    const backendPid = (await db.pool.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid;
    const known: Known = {
      pids: new Map([
        [timer.child.pid!, "timer service"],
        [dispatcher.child.pid!, "dispatcher"],
        [rx.child.pid!, "receiver (child process)"],
        [process.pid, "bench (load generator)"],
      ]),
      natsPort: mesh.nats.port,
      postmasterPid: readProc(backendPid)?.ppid,
      dbName,
    };
    log(
      `database ${dbName} (Postgres ${pgVersion}, autovacuum ${autovacuum}${cfg.vacuum ? "; the bench runs VACUUM ANALYZE after each creation step" : autovacuum === "off" ? "; tables are never vacuumed or analyzed during the run (BENCH_VACUUM=1 changes that)" : ""}), nats ${mesh.nats.url}, timer pid ${timer.child.pid} grpc :${timer.grpcPort}, dispatcher pid ${dispatcher.child.pid}, receiver pid ${rx.child.pid} at ${rx.url}`,
    );

    const payload = new Uint8Array(cfg.payloadBytes).map((_, i) => 97 + (i % 26));
    const inAnHour = (group: string) => hourAheadLoad(group, rx!.url, payload);
    const vacuum = async () => {
      const t = Date.now();
      await db.pool.query("VACUUM (ANALYZE)");
      log(`VACUUM ANALYZE took ${Date.now() - t} ms`);
    };
    const creator = new Creator(client, log, { callers: cfg.callers, batchSize: cfg.batchSize });
    const createStep = async (title: string, run: () => Promise<CreateRun>) => {
      console.log(`\n## ${title}\n`);
      const a = cpuSnapshot();
      const r = await run();
      const b = cpuSnapshot();
      console.log(
        renderTable(PHASE_HEADERS, [
          [
            r.method,
            fmtInt(r.acknowledged),
            fmt(r.durationMs / 1000, 2),
            fmtInt(createRate(r)),
            fmtMs(r.latency.p50),
            fmtMs(r.latency.p99),
            fmtMs(r.latency.max),
          ],
        ]),
      );
      console.log(
        `\nnot acknowledged: ${r.failed.size}${r.firstError ? ` (first: ${r.firstError})` : ""}; call latency mean ${fmtMs(r.latency.mean)} ms, p90 ${fmtMs(r.latency.p90)} ms\n`,
      );
      console.log(cpuTable(a, b, known));
      if (cfg.vacuum) await vacuum();
      return r;
    };

    // ---- 1. unary creates ------------------------------------------------------------------
    let unary: CreateRun | undefined;
    if (cfg.creates > 0) {
      // Warm-up, not measured: one create per caller opens the channel and warms the JIT.
      await createUnary(client, cfg.callers, { count: cfg.callers }, inAnHour("bench-warmup"));
      const connections = tcpConnectionsTo(timer.grpcPort);
      unary = await createStep(
        `1. Unary CreateTimer: ${fmtInt(cfg.creates)} calls, ${cfg.callers} concurrent callers on one grpc-js channel (${connections} TCP connection(s) to the timer service)`,
        () => createUnary(client, cfg.callers, { count: cfg.creates }, inAnHour("bench-unary")),
      );
      creator.observe(unary);
      verdicts.push(
        judged(
          `unary CreateTimer/s (${cfg.callers} callers, one grpc-js channel)`,
          createRate(unary),
          fmtInt(createRate(unary)),
          TARGETS.unaryCreates,
          {
            valid: unary.failed.size === 0,
            note: failureNote(unary),
            peers: "unary",
          },
        ),
      );
      verdicts.push({
        measure: "  CreateTimer call p50 / p99 / max ms",
        result: triple(unary.latency),
        target: "",
        pass: undefined,
      });
    }

    // ---- 2. batch creates ------------------------------------------------------------------
    let batch: CreateRun | undefined;
    if (cfg.creates > 0) {
      const label = `batch CreateTimers: timers/s (${fmtInt(cfg.batchSize)} a call, ${cfg.batchInFlight} in flight, one client)`;
      const warm = await createBatches(
        client,
        cfg.batchSize,
        1,
        { count: cfg.batchSize },
        inAnHour("bench-warmup-batch"),
      );
      if (warm.unimplemented) {
        creator.observe(warm);
        console.log(
          `\n## 2. Batch CreateTimers: not run, the server answers UNIMPLEMENTED (${warm.firstError ?? ""})\n`,
        );
        verdicts.push({
          measure: label,
          result: "UNIMPLEMENTED",
          target: `>= ${fmtInt(TARGETS.batchCreates.value)}/s`,
          pass: false,
          note: "the server has no CreateTimers",
          peers: "batch",
        });
      } else {
        batch = await createStep(
          `2. Batch CreateTimers: ${fmtInt(cfg.creates)} timers in calls of ${fmtInt(cfg.batchSize)}, ${cfg.batchInFlight} call(s) in flight, one client`,
          () =>
            createBatches(
              client,
              cfg.batchSize,
              cfg.batchInFlight,
              { count: cfg.creates },
              inAnHour("bench-batch"),
            ),
        );
        creator.observe(batch);
        verdicts.push(
          judged(label, createRate(batch), fmtInt(createRate(batch)), TARGETS.batchCreates, {
            valid: batch.failed.size === 0,
            note: failureNote(batch),
            peers: "batch",
          }),
        );
        verdicts.push({
          measure: "  CreateTimers call p50 / p99 / max ms",
          result: triple(batch.latency),
          target: "",
          pass: undefined,
        });
      }
    }

    // ---- 3. and 4.: the fire runs -----------------------------------------------------------
    const fireStep = async (
      title: string,
      group: string,
      count: number,
      spanMs: number,
      leadMs: number,
    ): Promise<FireOutcome> => {
      console.log(`\n## ${title}\n`);
      const cpu: Partial<Record<"creating" | "created" | "firing" | "fired", CpuSnapshot>> = {};
      const o = await fireRun(
        creator,
        rx!,
        {
          group,
          count,
          spanMs,
          leadMs,
          callback: "http",
          payload,
          drainTimeoutMs: cfg.drainTimeoutMs,
          onPhase: async (p) => {
            cpu[p] = cpuSnapshot();
            if (p === "created" && cfg.vacuum) await vacuum();
          },
        },
        log,
      );
      const r = o.result;
      console.log();
      console.log(
        renderTable(PHASE_HEADERS, [
          [
            `${group} (lateness)`,
            fmtInt(r.unique),
            fmt((r.lastAtMs - r.firstAtMs) / 1000, 2),
            fmtInt(fireRate(r)),
            fmtMs(r.lateness.p50),
            fmtMs(r.lateness.p99),
            fmtMs(r.lateness.max),
          ],
        ]),
      );
      console.log(
        `\nchecks: ${checksLine(r)}; in Postgres: ${await dbStates(db, group)}; lateness mean ${fmtMs(r.lateness.mean)} ms, p90 ${fmtMs(r.lateness.p90)} ms`,
      );
      console.log(
        `rate = timers delivered / (last receipt - first receipt); first receipt ${r.firstAtMs - o.startMs} ms after the first fire_at, last ${r.lastAtMs - (o.startMs + spanMs)} ms after the last fire_at\n`,
      );
      console.log(timeline(r, o.startMs));
      if (cpu.creating && cpu.created)
        console.log(
          `\nCPU while creating the ${fmtInt(count)} timers (${fmt((cpu.created.atMs - cpu.creating.atMs) / 1000, 1)} s, ${o.made.method}):\n\n${cpuTable(cpu.creating, cpu.created, known)}`,
        );
      if (cpu.firing && cpu.fired)
        console.log(
          `\nCPU while firing (${fmt((cpu.fired.atMs - cpu.firing.atMs) / 1000, 1)} s, from 0.3 s before the first fire_at to the last receipt):\n\n${cpuTable(cpu.firing, cpu.fired, known)}`,
        );
      return o;
    };
    /** Why a fire run's figures cannot be trusted, if they cannot. */
    const invalidity = (o: FireOutcome) =>
      [
        o.overlapped ? "creation overlapped firing" : "",
        failureNote(o.made),
        exactlyOnce(o.result) ? "" : "not exactly once",
      ]
        .filter(Boolean)
        .join("; ");
    const onceRow = (what: string, o: FireOutcome) =>
      mustBeZero(
        `${what}: early / twice / missing / unexpected / create refused`,
        [o.result.early, o.result.redelivered, o.result.missing, o.result.unexpected, o.made.failed.size],
        o.made.failed.size ? failureNote(o.made) : undefined,
      );

    if (cfg.fires > 0) {
      const o = await fireStep(
        `3. Fire throughput: ${fmtInt(cfg.fires)} HTTP-callback timers due evenly over ${fmt(cfg.fireWindowMs / 1000, 1)} s (offered ${fmtInt(cfg.fires / (cfg.fireWindowMs / 1000))}/s), one dispatcher`,
        "bench-fire",
        cfg.fires,
        cfg.fireWindowMs,
        cfg.fireLeadMs,
      );
      const rate = fireRate(o.result);
      const bad = invalidity(o);
      verdicts.push(
        judged(
          `fires/s, HTTP callbacks, one dispatcher (${fmtInt(cfg.fires)} due within ${fmt(cfg.fireWindowMs / 1000, 1)} s)`,
          rate,
          fmtInt(rate),
          TARGETS.httpFires,
          { valid: !bad, note: bad, peers: "fires" },
        ),
      );
      verdicts.push({
        measure: "  lateness p50 / p99 / max ms at saturation",
        result: triple(o.result.lateness),
        target: "",
        pass: undefined,
      });
      verdicts.push(onceRow("  exactly once", o));
    }

    for (const rate of cfg.steadyCount > 0 ? cfg.steadyRates : []) {
      const spanMs = Math.round((cfg.steadyCount / rate) * 1000);
      const o = await fireStep(
        `4. Lateness at ${fmtInt(rate)} fires/s: ${fmtInt(cfg.steadyCount)} HTTP-callback timers over ${fmt(spanMs / 1000, 1)} s, stored ahead`,
        `bench-steady-${rate}`,
        cfg.steadyCount,
        spanMs,
        cfg.steadyLeadMs,
      );
      const bad = invalidity(o);
      const peers: PeerMeasure | undefined =
        rate === 5_000 ? "p99At5000" : rate === 1_000 ? "p50p99At1000" : undefined;
      verdicts.push(
        judged(
          `lateness p50 / p99 / max ms at ${fmtInt(rate)} fires/s (stored ahead)`,
          o.result.lateness.p99,
          triple(o.result.lateness),
          TARGETS.lateP99,
          {
            valid: !bad,
            note: bad,
            ...(peers ? { peers } : {}),
          },
        ),
      );
      verdicts.push({
        measure: "  fires/s delivered in that run",
        result: fmtInt(fireRate(o.result)),
        target: "",
        pass: undefined,
      });
      verdicts.push(onceRow("  exactly once", o));
    }

    for (const s of [timer, dispatcher]) {
      const out = s.output().trim();
      if (out)
        console.log(
          `\n${s.name} logged (LOG_LEVEL=warn), last lines:\n${out
            .split("\n")
            .slice(-8)
            .map((l) => `  ${l.slice(0, 300)}`)
            .join("\n")}`,
        );
    }

    console.log(`\n## Summary\n`);
    console.log(
      `machine: ${machine}; node ${process.version}; Postgres ${pgVersion}; ${sourceVersion()}; CPU busy with other work before the start: ${fmt(busyPct, 0)}% of ${cpus().length * 100}%`,
    );
    console.log(
      `peer columns: as measured by issue 10 on this machine with the same 20,000-job workload (quoted from the issue, not re-measured by this script); "timer-mesh before" is this project before issue 10\n`,
    );
    console.log(
      summaryTable([
        { measure: "cores on this machine", result: String(cpus().length), target: "", pass: undefined },
        ...verdicts,
      ]),
    );
    const missed = verdicts.filter((v) => v.pass === false).length;
    console.log(
      `\n${missed === 0 ? "every target met" : `${missed} row(s) missed their target`}${cfg.strict ? " (BENCH_STRICT=1: exit code reflects it)" : " (BENCH_STRICT=1 to exit non-zero on a miss)"}`,
    );
    return exitCode(verdicts, cfg.strict);
  } finally {
    log("cleaning up (services, receiver, nats-server, database)");
    await cleanup();
    log("done");
  }
}

const code = await main().catch((err: unknown) => {
  console.error("bench failed:", err);
  return 1;
});
process.exit(code);
