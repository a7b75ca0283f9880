// npm run bench:mesh — the dispatcher mesh under load, with 1, 2 and 3 dispatchers (separate
// processes), NATS and HTTP callbacks, on this machine's Postgres and a private nats-server.
//
// Each configuration is the system as the tests start it (test/support/mesh.ts) with the
// receiver child of bench/receiver.ts, and runs the one fire procedure of bench/fire-run.ts
// (timers created through the timer service, in CreateTimers batches when it has them, before
// they are due; every delivery judged):
//
//   - saturation: BENCH_SATURATE (40,000) timers due within 1 s: fires/s across the mesh;
//   - steady: BENCH_RATE (5,000) fires/s for BENCH_SECONDS (8 s): lateness p50 / p99 / max;
//   - loaded: the same steady run again while a client creates timers flat out, unary
//     CreateTimer from BENCH_CALLERS (64) callers on one grpc-js channel for the first half of
//     the firing, then CreateTimers batches of 1,000 for the second half: the create rates
//     under that load, and the lateness then.
//
// It then SIGKILLs one of three dispatchers mid-run and reports how long until the dead
// member's due timers fire again, and compares fires per second with tracing exported (OTLP)
// and with telemetry off. It ends with a summary against issue 10's targets (creates while the
// mesh fires 5,000/s: unary >= 2,000/s, batch >= 20,000/s; NATS callbacks >= 12,000 fires/s
// across the mesh); BENCH_STRICT=1 exits 1 on a miss.
//
// Between runs the bench vacuums the tables, standing in for autovacuum (off on this machine's
// Postgres). Environment: BENCH_SATURATE, BENCH_RATE, BENCH_SECONDS, BENCH_DISPATCHERS ("1,2,3"),
// BENCH_TRANSPORTS ("nats,http"), BENCH_CALLERS, BENCH_LEAD_MS (5 s between the end of a run's
// creation and its first fire time), BENCH_SKIP_KILL / BENCH_SKIP_OTEL (=1 to skip those parts).
import { cpus } from "node:os";
import { startMesh, type TestMesh } from "../test/support/mesh.js";
import { waitForShardOwners } from "../test/support/shard-owners.js";
import { envInt } from "./bench-env.js";
import {
  type CreateRun,
  Creator,
  createBatches,
  createRate,
  createUnary,
  failureNote,
  hourAheadLoad,
} from "./creates.js";
import {
  type CallbackKind,
  type FireOutcome,
  type FireSpec,
  fireRun,
  vacuumTimerTables,
} from "./fire-run.js";
import { startReceiver, type Receiver } from "./receiver.js";
import { fireRate, fmtInt, fmtMs, renderTable } from "./stats.js";
import { exitCode, judged, summaryTable, TARGETS, type Verdict } from "./targets.js";

const SHARDS = 1024;

const cfg = {
  saturate: envInt("BENCH_SATURATE", 40_000),
  rate: Math.max(1, envInt("BENCH_RATE", 5_000)),
  seconds: Math.max(1, envInt("BENCH_SECONDS", 8)),
  // Empty: no configuration runs (only the failover and telemetry parts).
  dispatchers: (process.env.BENCH_DISPATCHERS ?? "1,2,3").split(",").filter(Boolean).map(Number),
  transports: (process.env.BENCH_TRANSPORTS ?? "nats,http").split(",").filter(Boolean) as CallbackKind[],
  callers: Math.max(1, envInt("BENCH_CALLERS", 64)),
  leadMs: envInt("BENCH_LEAD_MS", 5_000),
  drainTimeoutMs: envInt("BENCH_DRAIN_TIMEOUT_MS", 60_000),
  skipKill: process.env.BENCH_SKIP_KILL === "1",
  skipOtel: process.env.BENCH_SKIP_OTEL === "1",
  strict: process.env.BENCH_STRICT === "1",
};
for (const t of cfg.transports)
  if (t !== "nats" && t !== "http") throw new Error(`BENCH_TRANSPORTS takes nats and http, got "${t}"`);
for (const d of cfg.dispatchers)
  if (!Number.isInteger(d) || d < 1)
    throw new Error(`BENCH_DISPATCHERS takes counts of 1 or more, got "${process.env.BENCH_DISPATCHERS}"`);

const log = (m: string) =>
  process.stderr.write(`[bench:mesh ${new Date().toISOString().slice(11, 19)}] ${m}\n`);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

/** The mesh under test, its receiver, and a Creator on its timer service. */
interface BenchMesh {
  mesh: TestMesh;
  receiver: Receiver;
  creator: Creator;
  close(): Promise<void>;
}

async function startBenchMesh(dispatchers: number, tracing: false | number = false): Promise<BenchMesh> {
  const receiver = await startReceiver();
  // Tracing exports every span over OTLP to a sink in the receiver process (as to a collector).
  // `tracing` is the head-sampling ratio of new traces (parentbased_traceidratio).
  const otel: Record<string, string> =
    tracing === false
      ? { OTEL_SDK_DISABLED: "true" }
      : {
          OTEL_EXPORTER_OTLP_ENDPOINT: receiver.otlpEndpoint,
          OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
          OTEL_TRACES_SAMPLER_ARG: String(tracing),
        };
  let mesh: TestMesh;
  try {
    mesh = await startMesh({
      dispatchers,
      databasePrefix: "bench",
      env: { LOG_LEVEL: "warn", SHARD_COUNT: String(SHARDS), ...otel },
      // All creates come from one caller ("anonymous"): lift the per-caller create rate
      // (CREATE_RATE_PER_TOKEN, 1,000/s by default) so the bench measures the mesh, not the limit.
      timerEnv: { CREATE_RATE_PER_TOKEN: "1000000", CREATE_BURST_PER_TOKEN: "10000000" },
      dispatcherEnv: { CLAIM_BATCH: "1000", DB_POOL_MAX: "10" },
    });
  } catch (err) {
    await receiver.close();
    throw err;
  }
  const close = async () => {
    await mesh[Symbol.asyncDispose]();
    await receiver.close();
  };
  try {
    await receiver.listenNats(mesh.nats.url, "operator", mesh.nats.passwords.operator);
    await waitForShardOwners(mesh.db.pool, dispatchers, SHARDS, 30_000);
    const creator = new Creator(mesh.client, log, { callers: cfg.callers, batchSize: 1_000 });
    // Learn whether CreateTimers is there and how fast creation goes once warm (the first calls
    // of a fresh process are slow), so that the first fire run's window is planned after its
    // creation ends without waiting far longer than needed.
    const warm = await createBatches(
      mesh.client,
      1_000,
      1,
      { count: 2_000 },
      hourAheadLoad("bench-warmup", receiver.url),
    );
    creator.observe(
      warm.unimplemented
        ? warm
        : await createBatches(
            mesh.client,
            1_000,
            1,
            { count: 5_000 },
            hourAheadLoad("bench-probe", receiver.url),
          ),
    );
    return { mesh, receiver, creator, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/** A fire run on the mesh, vacuuming first (this machine's Postgres runs with autovacuum off). */
async function run(
  b: BenchMesh,
  group: string,
  count: number,
  spanMs: number,
  callback: CallbackKind,
  during?: FireSpec["during"],
): Promise<FireOutcome> {
  await vacuumTimerTables(b.mesh.db);
  return fireRun(
    b.creator,
    b.receiver,
    {
      group,
      count,
      spanMs,
      leadMs: cfg.leadMs,
      callback,
      drainTimeoutMs: cfg.drainTimeoutMs,
      ...(during ? { during } : {}),
    },
    log,
  );
}

/** "ok: 40,000/40,000, dup 0, early 0" or "FAIL: ..." (retries after a failed attempt are allowed here). */
function check(o: FireOutcome): string {
  const r = o.result;
  const ok =
    r.missing === 0 &&
    r.duplicates === 0 &&
    r.early === 0 &&
    r.unexpected === 0 &&
    o.made.failed.size === 0 &&
    !o.overlapped;
  const extra = [
    r.retries ? `retried ${r.retries}` : "",
    o.made.failed.size ? `${o.made.failed.size} creates not acknowledged` : "",
    o.overlapped ? "creation overlapped firing" : "",
  ].filter(Boolean);
  return `${ok ? "ok" : "FAIL"}: ${fmtInt(r.unique)}/${fmtInt(r.expected + o.made.failed.size)}, dup ${r.duplicates}, early ${r.early}${extra.length ? `, ${extra.join(", ")}` : ""}`;
}
const valid = (o: FireOutcome) => check(o).startsWith("ok");

async function main(): Promise<number> {
  const verdicts: Verdict[] = [];
  const rows: string[][] = [];
  const natsSaturated: { d: number; rate: number; ok: boolean }[] = [];
  for (const d of cfg.dispatchers) {
    for (const transport of cfg.transports) {
      log(`${d} dispatcher(s), ${transport}: saturation run of ${cfg.saturate} timers due within 1 s`);
      const b = await startBenchMesh(d);
      try {
        const sat = await run(b, "sat", cfg.saturate, 1_000, transport);
        log(
          `  ${fmtInt(fireRate(sat.result))} fires/s (${check(sat)}); steady run at ${cfg.rate}/s for ${cfg.seconds} s`,
        );
        if (transport === "nats") natsSaturated.push({ d, rate: fireRate(sat.result), ok: valid(sat) });
        const steady = await run(b, "steady", cfg.rate * cfg.seconds, cfg.seconds * 1000, transport);
        log(
          `  lateness p99 ${fmtMs(steady.result.lateness.p99)} ms (${check(steady)}); again with unary then batch creates flat out alongside`,
        );
        let unary: CreateRun | undefined;
        let batch: CreateRun | undefined;
        const loaded = await run(
          b,
          "loaded",
          cfg.rate * cfg.seconds,
          cfg.seconds * 1000,
          transport,
          async (startMs) => {
            await sleep(startMs - Date.now());
            const halfMs = (cfg.seconds * 1000) / 2;
            unary = await createUnary(
              b.mesh.client,
              cfg.callers,
              { untilMs: startMs + halfMs },
              hourAheadLoad("load-unary", b.receiver.url),
            );
            batch = await createBatches(
              b.mesh.client,
              1_000,
              1,
              { untilMs: startMs + 2 * halfMs },
              hourAheadLoad("load-batch", b.receiver.url),
            );
          },
        );
        const u = unary!;
        const bt = batch!;
        log(
          `  creates alongside: unary ${fmtInt(createRate(u))}/s${failureNote(u) ? ` (${failureNote(u)})` : ""}, batch ${bt.unimplemented ? "UNIMPLEMENTED" : `${fmtInt(createRate(bt))}/s`}${!bt.unimplemented && failureNote(bt) ? ` (${failureNote(bt)})` : ""}; lateness p99 then ${fmtMs(loaded.result.lateness.p99)} ms (${check(loaded)})`,
        );
        rows.push([
          String(d),
          transport,
          fmtInt(fireRate(sat.result)),
          check(sat),
          fmtInt(cfg.rate),
          fmtMs(steady.result.lateness.p50),
          fmtMs(steady.result.lateness.p99),
          fmtMs(steady.result.lateness.max),
          check(steady),
          fmtInt(createRate(u)),
          bt.unimplemented ? "UNIMPLEMENTED" : fmtInt(createRate(bt)),
          fmtMs(loaded.result.lateness.p99),
          check(loaded),
        ]);
        const where = `while ${d} dispatcher(s) fire ${fmtInt(cfg.rate)}/s, ${transport}`;
        const loadNote = valid(loaded) ? "" : `the fire run under load: ${check(loaded)}`;
        verdicts.push(
          judged(
            `unary CreateTimer/s ${where}`,
            createRate(u),
            fmtInt(createRate(u)),
            TARGETS.unaryCreatesUnderLoad,
            {
              valid: u.failed.size === 0,
              note: failureNote(u),
            },
          ),
        );
        verdicts.push(
          bt.unimplemented
            ? {
                measure: `batch CreateTimers timers/s ${where}`,
                result: "UNIMPLEMENTED",
                target: `>= ${fmtInt(TARGETS.batchCreatesUnderLoad.value)}/s`,
                pass: false,
                note: "the server has no CreateTimers",
              }
            : judged(
                `batch CreateTimers timers/s ${where}`,
                createRate(bt),
                fmtInt(createRate(bt)),
                TARGETS.batchCreatesUnderLoad,
                { valid: bt.failed.size === 0, note: failureNote(bt) },
              ),
        );
        if (loadNote)
          verdicts.push({
            measure: `  fire run under that load`,
            result: check(loaded),
            target: "ok",
            pass: false,
          });
      } finally {
        await b.close();
      }
    }
  }
  console.log("\n## Mesh throughput and lateness\n");
  console.log(
    renderTable(
      [
        "dispatchers",
        "callbacks",
        "fires/s (saturated)",
        "saturated run",
        "steady rate/s",
        "lateness p50 ms",
        "p99 ms",
        "max ms",
        "steady run",
        "unary creates/s under that load",
        "batch creates/s under that load",
        "lateness p99 ms with creates",
        "loaded run",
      ],
      rows,
    ),
  );
  if (natsSaturated.length > 0) {
    // The mesh's NATS capacity: its best configuration (an operator picks the dispatcher count).
    const best = natsSaturated.reduce((a, x) => (x.rate > a.rate ? x : a));
    const all = natsSaturated.map((x) => `${x.d}: ${fmtInt(x.rate)}`).join(", ");
    verdicts.unshift(
      judged(
        `NATS callbacks fires/s across the mesh (best of dispatcher counts ${all})`,
        best.rate,
        `${fmtInt(best.rate)} (${best.d} dispatcher(s))`,
        TARGETS.natsFires,
        {
          valid: best.ok,
          note: best.ok ? "" : "that saturation run was not exactly once",
        },
      ),
    );
  }

  if (!cfg.skipKill) {
    log("failover: 3 dispatchers, 1,000 fires/s for 12 s, SIGKILL of d3 after 4 s");
    const b = await startBenchMesh(3);
    try {
      let killedAt = 0;
      const o = await run(b, "kill", 12_000, 12_000, "nats", async (startMs) => {
        await sleep(startMs + 4_000 - Date.now());
        killedAt = Date.now();
        b.mesh.dispatchers[2]!.child.kill("SIGKILL");
      });
      const { rows: attempts } = await b.mesh.db.pool.query(
        "SELECT count(*)::int AS n FROM timer_attempts WHERE group_id = 'kill'",
      );
      const lateAfterKill = await b.mesh.db.pool.query(
        `SELECT max(extract(epoch FROM fired_time - fire_at))::float8 * 1000 AS worst
           FROM timers WHERE group_id = 'kill' AND fire_at > $1`,
        [new Date(killedAt)],
      );
      console.log("\n## Failover (SIGKILL of one of three dispatchers, NATS callbacks, 1,000 fires/s)\n");
      console.log(
        renderTable(
          [
            "timers",
            "delivered",
            "duplicates",
            "attempts recorded",
            "time until the dead member's due timers fired again (ms)",
            "run",
          ],
          [
            [
              fmtInt(o.result.expected),
              fmtInt(o.result.unique),
              String(o.result.duplicates),
              fmtInt(attempts[0].n),
              fmtMs(lateAfterKill.rows[0].worst),
              check(o),
            ],
          ],
        ),
      );
    } finally {
      await b.close();
    }
  }

  if (!cfg.skipOtel) {
    const results: string[][] = [];
    const variants: [string, false | number][] = [
      ["off (metrics only)", false],
      ["on, traces sampled at 10% (OTEL_TRACES_SAMPLER_ARG=0.1)", 0.1],
      ["on, every trace exported", 1],
    ];
    for (const [label, on] of variants) {
      log(`telemetry ${label}: 3 dispatchers, NATS, saturation run`);
      const b = await startBenchMesh(3, on);
      try {
        const o = await run(b, "otel", cfg.saturate, 1_000, "nats");
        results.push([label, fmtInt(fireRate(o.result)), fmtMs(o.result.lateness.p99), check(o)]);
      } finally {
        await b.close();
      }
    }
    console.log("\n## Telemetry cost (3 dispatchers, NATS callbacks, saturated)\n");
    console.log(renderTable(["telemetry", "fires/s", "lateness p99 ms", "run"], results));
  }

  if (verdicts.length > 0) {
    console.log(
      `\n## Summary against issue 10's targets (${cpus().length} cores, ${cpus()[0]?.model ?? "cpu"})\n`,
    );
    console.log(summaryTable(verdicts));
  }
  return exitCode(verdicts, cfg.strict);
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
