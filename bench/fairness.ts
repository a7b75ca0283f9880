// Fair delivery benchmark: does one team's hanging receiver slow only that team?
//
//   cd /work/main && npm run bench:fairness
//
// Starts a fresh database, a private nats-server, the timer service and ONE dispatcher as real
// processes (test/support/mesh.ts, dispatcher defaults: MAX_IN_FLIGHT 2048, CALLBACK_TIMEOUT
// 10 s, DELIVERY_GROUP_SHARE and DELIVERY_DESTINATION_SHARE 25%), and two loopback receivers in
// this process: one that accepts every callback and never answers (team A's), one that
// answers 200 at once (team B's). Then BENCH_A_TIMERS (1,500) timers of team A due at T and
// BENCH_B_TIMERS (200) of team B due at T + BENCH_B_OFFSET_MS (200 ms), T being BENCH_LEAD_MS
// (30 s) after creation starts (a run whose creation ran into T is run again with more lead), and for
// BENCH_OBSERVE_MS (20 s) after T it records every callback that arrives.
//
// Prints, per team, how many fired within the window and their lateness (receipt - fire_at):
// the target is team B's p99 under 1 s while team A's deliveries hang. BENCH_BASELINE=1 runs
// the same a second time with both shares at 100% (no fair delivery: the behaviour before),
// to show the difference. BENCH_DISPATCHER_ENV adds dispatcher environment ("K=V K2=V2").
// BENCH_STRICT=1 exits 1 when the target is missed. Everything is torn down at the end.
import { startMesh } from "../test/support/mesh.js";
import { startHangingHttpReceiver, startHttpReceiver } from "../test/support/receivers.js";
import { createAll, httpTimerAt } from "../test/support/timer-client.js";
import { fmtInt, fmtMs, renderTable, summarize } from "./stats.js";
import { envInt, envPairs } from "./bench-env.js";

const TARGET_B_P99_MS = 1_000;

const cfg = {
  aTimers: envInt("BENCH_A_TIMERS", 1_500),
  bTimers: envInt("BENCH_B_TIMERS", 200),
  bOffsetMs: envInt("BENCH_B_OFFSET_MS", 200),
  observeMs: envInt("BENCH_OBSERVE_MS", 20_000),
  leadMs: envInt("BENCH_LEAD_MS", 30_000),
  baseline: process.env.BENCH_BASELINE === "1",
  strict: process.env.BENCH_STRICT === "1",
  dispatcherEnv: envPairs("BENCH_DISPATCHER_ENV"),
};

const log = (msg: string) => console.log(`[${new Date().toISOString().slice(11, 23)}] ${msg}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, Math.max(0, ms)));

interface RunResult {
  label: string;
  /** Creation ended less than a second before T (a busy machine): the figures would measure creation, not delivery. */
  overlapped: { createMs: number } | undefined;
  rows: (string | number)[][];
  bP99: number;
  bFired: number;
}

async function run(label: string, dispatcherEnv: Record<string, string>, leadMs: number): Promise<RunResult> {
  console.log(`\n## ${label}\n`);
  log("starting database, nats-server, timer service and one dispatcher");
  // The hanging deliveries must not hold up the teardown.
  const mesh = await startMesh({
    dispatchers: 1,
    env: { LOG_LEVEL: "warn" },
    dispatcherEnv: { SHUTDOWN_TIMEOUT: "1s", ...dispatcherEnv },
  });
  const hanging = await startHangingHttpReceiver();
  const healthy = await startHttpReceiver();
  try {
    const createStartMs = Date.now();
    const aDue = createStartMs + leadMs;
    const bDue = aDue + cfg.bOffsetMs;
    log(
      `creating ${fmtInt(cfg.aTimers)} timers of team-a (receiver never answers) due at T, ${fmtInt(cfg.bTimers)} of team-b (healthy receiver) due at T + ${cfg.bOffsetMs} ms`,
    );
    await createAll(mesh.client, [
      ...Array.from({ length: cfg.aTimers }, (_, i) => httpTimerAt("team-a", `a-${i}`, aDue, hanging.url)),
      ...Array.from({ length: cfg.bTimers }, (_, i) => httpTimerAt("team-b", `b-${i}`, bDue, healthy.url)),
    ]);
    const slack = aDue - Date.now();
    log(`created in ${Date.now() - createStartMs} ms; T is ${slack} ms away`);
    if (slack < 1_000) {
      log(
        "creation ran into T: this run would measure creation, not delivery; it is run again with more lead",
      );
      return { label, overlapped: { createMs: Date.now() - createStartMs }, rows: [], bP99: NaN, bFired: 0 };
    }
    await sleep(aDue + cfg.observeMs - Date.now());
    const until = aDue + cfg.observeMs;
    const a = hanging.received.filter((r) => r.receivedAtMs <= until);
    const b = healthy.received.filter((r) => r.receivedAtMs <= until && r.attempt === 1);
    const bUnique = new Set(b.map((r) => r.timerId)).size;
    const aLate = summarize(a.map((r) => r.receivedAtMs - aDue));
    const bLate = summarize(b.map((r) => r.receivedAtMs - r.fireAtMs));
    const early = b.filter((r) => r.receivedAtMs < r.fireAtMs).length;
    const metrics = await (await fetch(`http://127.0.0.1:${mesh.dispatchers[0]!.httpPort}/metrics`)).text();
    const parked = /^dispatcher_timers_parked (\S+)/m.exec(metrics)?.[1] ?? "?";
    log(
      `team-a: ${hanging.open()} callbacks still hanging at the end of the window; dispatcher_timers_parked ${parked}; team-b: ${early} early, ${b.length - bUnique} duplicate`,
    );
    const window = `${cfg.observeMs / 1000} s`;
    return {
      label,
      overlapped: undefined,
      bP99: bUnique === cfg.bTimers ? bLate.p99 : Infinity,
      bFired: bUnique,
      rows: [
        [
          label,
          "team-a (hanging receiver)",
          `${fmtInt(a.length)} / ${fmtInt(cfg.aTimers)} in ${window}`,
          fmtMs(aLate.p50),
          fmtMs(aLate.p99),
          fmtMs(aLate.max),
          "(reported: capped at its share)",
        ],
        [
          label,
          "team-b (healthy receiver)",
          `${fmtInt(bUnique)} / ${fmtInt(cfg.bTimers)} in ${window}`,
          fmtMs(bLate.p50),
          fmtMs(bLate.p99),
          fmtMs(bLate.max),
          `all fired, p99 < ${fmtInt(TARGET_B_P99_MS)} ms`,
        ],
      ],
    };
  } finally {
    log("cleaning up");
    await hanging.close();
    await healthy.close();
    await mesh[Symbol.asyncDispose]();
  }
}

async function main(): Promise<number> {
  console.log(
    `# Fair delivery: ${fmtInt(cfg.aTimers)} timers of team-a at a receiver that never answers, ${fmtInt(cfg.bTimers)} of team-b ${cfg.bOffsetMs} ms later at a healthy one`,
  );
  const measured = async (label: string, env: Record<string, string>) => {
    let r = await run(label, env, cfg.leadMs);
    for (let tries = 1; r.overlapped && tries < 3; tries++)
      r = await run(label, env, 2 * r.overlapped.createMs + 3_000);
    if (r.overlapped)
      throw new Error("creating the timers kept running into their fire time; the machine is too busy");
    return r;
  };
  const results = [await measured("fair delivery (defaults)", cfg.dispatcherEnv)];
  if (cfg.baseline) {
    results.push(
      await measured("no fair delivery (shares 100%)", {
        ...cfg.dispatcherEnv,
        DELIVERY_GROUP_SHARE: "100",
        DELIVERY_DESTINATION_SHARE: "100",
      }),
    );
  }
  console.log("\n## Summary (lateness = receipt - fire_at; team-a: receipt - T)\n");
  console.log(
    renderTable(
      ["run", "group", "fired", "p50 ms", "p99 ms", "max ms", "target"],
      results.flatMap((r) => r.rows),
      ["left", "left", "right", "right", "right", "right", "left"],
    ),
  );
  const fair = results[0]!;
  const pass = fair.bFired === cfg.bTimers && fair.bP99 < TARGET_B_P99_MS;
  console.log(
    `\nteam-b p99 ${fmtMs(fair.bP99)} ms with fair delivery: ${pass ? "PASS" : "MISS"} (target < ${fmtInt(TARGET_B_P99_MS)} ms, all ${fmtInt(cfg.bTimers)} fired)`,
  );
  return cfg.strict && !pass ? 1 : 0;
}

const code = await main().catch((err: unknown) => {
  console.error("bench failed:", err);
  return 1;
});
process.exit(code);
