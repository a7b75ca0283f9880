// npm run bench:mesh — the dispatcher mesh under load, with 1, 2 and 3 dispatchers (separate
// processes), NATS and HTTP callbacks, on this machine's Postgres and a private nats-server.
//
// For each configuration it prints fires per second at saturation, lateness p50 / p99 / max
// at a steady offered rate, the create rate of the timer service under that same load, and
// checks on every run: none early, no duplicate, nothing lost. It then SIGKILLs one of three
// dispatchers mid-run and reports how long until the dead member's due timers fire again, and
// compares fires per second with tracing exported (OTLP) and with telemetry off.
//
// Timers for the fire runs are inserted straight into Postgres (the same rows CreateTimer
// writes, shard computed by the same function), well before they are due, so the fire rate
// measured is the dispatchers' and not the create path's.
//
// Between runs the bench vacuums the tables, standing in for autovacuum (off on this machine's
// Postgres). Environment: BENCH_SATURATE (timers per saturation run, 40000), BENCH_RATE (steady fires/s,
// 5000), BENCH_SECONDS (steady run length, 8), BENCH_DISPATCHERS ("1,2,3"),
// BENCH_TRANSPORTS ("nats,http"), BENCH_SKIP_KILL / BENCH_SKIP_OTEL (=1 to skip those parts).
import { fork, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import http from "node:http";
import { fileURLToPath } from "node:url";
import { create, type JsonValue } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { connect } from "@nats-io/transport-node";
import { CreateTimerRequestSchema } from "../services/shared/src/gen/timer/v1/timer_pb.js";
import { shardOf } from "../services/shared/src/shard.js";
import { destinationOfJson } from "../services/shared/src/callback-destination.js";
import { publishAnnouncement } from "../services/shared/src/mesh-messages.js";
import { createTestDatabase, type TestDatabase } from "../test/support/database.js";
import { startNats, type TestNats } from "../test/support/nats-server.js";
import { startService, type ServiceProcess } from "../test/support/service-process.js";
import { GrpcTimerClient } from "../test/support/timer-client.js";
import { waitFor } from "../test/support/wait.js";
import { fmtInt, fmtMs, renderTable, summarize } from "./stats.js";

const SELF = fileURLToPath(import.meta.url);
const ROOT = fileURLToPath(new URL("../", import.meta.url));
const SHARDS = 1024;

// ---------------------------------------------------------------------------------------------
// Receiver child: subscribes (NATS) or listens (HTTP), records [id, fireAtMs, receivedAtMs].

type Row = [string, number, number, number]; // timer id, fire_at, received at, attempt

async function receiverMain(): Promise<void> {
  const rows: Row[] = [];
  const record = (id: string | undefined, fireAt: string | undefined, attempt: string | undefined) =>
    rows.push([id ?? "", Date.parse(fireAt ?? ""), Date.now(), Number(attempt ?? 0)]);
  const nc = await connect({ servers: process.env["BENCH_NATS_URL"]!, user: "operator", pass: process.env["BENCH_NATS_PASSWORD"]! });
  nc.subscribe("bench.fired", {
    callback: (_err, msg) => {
      record(msg.headers?.get("x-timer-id"), msg.headers?.get("x-timer-fire-at"), msg.headers?.get("x-timer-attempt"));
    },
  });
  await nc.flush();
  const server = http.createServer((req, res) => {
    if (req.url === "/v1/traces") {
      req.resume();
      req.on("end", () => res.end("{}"));
      return;
    }
    req.resume();
    req.on("end", () => {
      record(req.headers["x-timer-id"] as string, req.headers["x-timer-fire-at"] as string, req.headers["x-timer-attempt"] as string);
      res.end();
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, "127.0.0.1", () => {
    process.send!({ port: (server.address() as { port: number }).port });
  });
  process.on("message", (m: { take?: boolean }) => {
    if (m.take) process.send!({ rows: rows.splice(0) });
  });
}

interface Receiver {
  url: string;
  otlp: string;
  take(): Promise<Row[]>;
  close(): void;
}

async function startReceiver(nats: TestNats): Promise<Receiver> {
  const child: ChildProcess = fork(SELF, ["--receiver"], {
    cwd: ROOT,
    execArgv: ["--import", "tsx"],
    env: { ...process.env, BENCH_NATS_URL: nats.url, BENCH_NATS_PASSWORD: nats.passwords.operator },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.once("message", (m: { port: number }) => resolve(m.port));
    child.once("exit", (code) => reject(new Error(`receiver exited (${code})`)));
  });
  return {
    url: `http://127.0.0.1:${port}/hook`,
    otlp: `http://127.0.0.1:${port}`,
    take: () =>
      new Promise((resolve) => {
        child.once("message", (m: { rows: Row[] }) => resolve(m.rows));
        child.send({ take: true });
      }),
    close: () => child.kill("SIGTERM"),
  };
}

// ---------------------------------------------------------------------------------------------
// The mesh under test.

interface Mesh {
  db: TestDatabase;
  nats: TestNats;
  timer: ServiceProcess;
  dispatchers: ServiceProcess[];
  receiver: Receiver;
  close(): Promise<void>;
}

async function startBenchMesh(dispatchers: number, tracing: false | number = false): Promise<Mesh> {
  const db = await createTestDatabase("bench");
  const nats = await startNats();
  const receiver = await startReceiver(nats);
  // Tracing exports every span over OTLP to a sink in the receiver process (as to a collector).
  // `tracing` is the head-sampling ratio of new traces (parentbased_traceidratio).
  const otel: Record<string, string> =
    tracing === false
      ? { OTEL_SDK_DISABLED: "true" }
      : { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.otlp, OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: String(tracing) };
  const common = { DATABASE_URL: db.url, LOG_LEVEL: "warn", SHARD_COUNT: String(SHARDS), ...otel };
  // All creates come from one caller ("anonymous"): lift the per-token create rate (CREATE_RATE_PER_TOKEN,
  // 1,000/s by default) so the bench measures the mesh, not the limit.
  const timer = await startService("timer", { ...common, ...nats.serviceEnv("timer"), CREATE_RATE_PER_TOKEN: "1000000", CREATE_BURST_PER_TOKEN: "1000000" });
  const ds: ServiceProcess[] = [];
  for (let i = 1; i <= dispatchers; i++) {
    ds.push(await startService("dispatcher", { ...common, ...nats.serviceEnv("dispatcher"), DISPATCHER_ID: `d${i}`, CLAIM_BATCH: "1000", DB_POOL_MAX: "10" }));
  }
  await waitFor(async () => {
    const { rows } = await db.pool.query("SELECT count(DISTINCT owner)::int AS owners, count(*)::int AS n FROM shard_owners WHERE owner IS NOT NULL");
    return rows[0].owners === dispatchers && rows[0].n === SHARDS;
  }, 30_000, "every shard to be owned");
  return {
    db,
    nats,
    timer,
    dispatchers: ds,
    receiver,
    async close() {
      await Promise.all([timer, ...ds].map((p) => p.stop("SIGTERM")));
      receiver.close();
      await nats[Symbol.asyncDispose]();
      await db[Symbol.asyncDispose]();
    },
  };
}

type Transport = "nats" | "http";

/**
 * Inserts `n` scheduled timers due evenly over [startMs, startMs + spanMs), and announces each
 * on its shard's subject as the timer service does for timers due soon: the dispatchers'
 * window loader has already read past them, so this is how they learn of them, as in real use.
 */
async function insertTimers(db: TestDatabase, nats: TestNats, group: string, n: number, startMs: number, spanMs: number, transport: Transport, url: string): Promise<void> {
  const callback: JsonValue = transport === "nats" ? { nats: { subject: "bench.fired" } } : { http: { url } };
  const hash = createHash("sha256").update(group).digest();
  for (let from = 0; from < n; from += 10_000) {
    const ids: string[] = [];
    const shards: number[] = [];
    const fireAt: Date[] = [];
    for (let i = from; i < Math.min(n, from + 10_000); i++) {
      const id = `t${i}`;
      ids.push(id);
      shards.push(shardOf(group, id, SHARDS));
      fireAt.push(new Date(startMs + Math.floor((i * spanMs) / n)));
    }
    await db.pool.query(
      `INSERT INTO timers (group_id, timer_id, shard, state, fire_at, next_attempt_at, callback, payload, labels,
                           max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, request_hash)
       SELECT $1, id, s, 1, f, f, $5::jsonb, '\\x'::bytea, '{}', 5, 1000, 300000, 2, $6
         FROM unnest($2::text[], $3::int[], $4::timestamptz[]) AS x(id, s, f)`,
      [group, ids, shards, fireAt, JSON.stringify(callback), hash],
    );
  }
  // As the timer service, with its NATS user (only it and the admin may announce).
  const nc = await nats.connectAs("timer");
  const destination = destinationOfJson(callback);
  for (let i = 0; i < n; i++) {
    const t = `t${i}`;
    publishAnnouncement(nc, { groupId: group, timerId: t, shard: shardOf(group, t, SHARDS), dueMs: startMs + Math.floor((i * spanMs) / n), destination });
  }
  await nc.flush();
  await nc.close();
  // This machine's Postgres runs with autovacuum off: without this, each run would wade through
  // the dead row versions of the runs before it (every fire updates a row twice).
  await db.pool.query("VACUUM ANALYZE timers");
  await db.pool.query("VACUUM ANALYZE timer_attempts");
}

interface FireRun {
  delivered: number;
  expected: number;
  /** The same attempt of a timer delivered twice: a double fire, never allowed. */
  duplicates: number;
  /** Timers delivered again after an attempt failed (timeout, error): at-least-once retries. */
  retried: number;
  early: number;
  firesPerSecond: number;
  lateness: ReturnType<typeof summarize>;
}

async function fireRun(mesh: Mesh, group: string, n: number, spanMs: number, transport: Transport, during?: () => Promise<void>): Promise<FireRun> {
  const startMs = Date.now() + 12_000; // every dispatcher has loaded its part of the window by then
  await insertTimers(mesh.db, mesh.nats, group, n, startMs, spanMs, transport, mesh.receiver.url);
  const rows: Row[] = [];
  const side = during?.();
  await waitFor(async () => {
    rows.push(...(await mesh.receiver.take()));
    return new Set(rows.map((r) => r[0])).size >= n || Date.now() > startMs + spanMs + 60_000;
  }, spanMs + 90_000, `${n} deliveries`, 250);
  await side;
  const seen = new Map<string, number>();
  const attempts = new Map<string, number>();
  for (const r of rows) {
    seen.set(r[0], (seen.get(r[0]) ?? 0) + 1);
    const k = `${r[0]}#${r[3]}`;
    attempts.set(k, (attempts.get(k) ?? 0) + 1);
  }
  const firsts = rows.map((r) => r[2]).sort((a, b) => a - b);
  const durationMs = Math.max(1, firsts[firsts.length - 1]! - firsts[0]!);
  return {
    delivered: seen.size,
    expected: n,
    duplicates: [...attempts.values()].filter((c) => c > 1).length,
    retried: [...seen.values()].filter((c) => c > 1).length,
    early: rows.filter((r) => r[2] < r[1]).length,
    firesPerSecond: (rows.length / durationMs) * 1000,
    lateness: summarize(rows.map((r) => r[2] - r[1])),
  };
}

/** Creates far-future timers from 32 concurrent clients until `untilMs`; returns creates/s. */
async function createLoad(mesh: Mesh, untilMs: number): Promise<number> {
  const clients = Array.from({ length: 8 }, () => new GrpcTimerClient(`127.0.0.1:${mesh.timer.grpcPort}`));
  let n = 0;
  const t0 = Date.now();
  await Promise.all(
    Array.from({ length: 32 }, async (_, w) => {
      while (Date.now() < untilMs) {
        const i = n++;
        await clients[w % 8]!.call(
          "createTimer",
          create(CreateTimerRequestSchema, {
            groupId: "bench-create",
            timerId: `c${i}`,
            schedule: { case: "delay", value: durationFromMs(3_600_000) },
            callback: { target: { case: "http", value: { url: mesh.receiver.url, headers: {} } } },
          }),
        );
      }
    }),
  );
  for (const c of clients) c.close();
  return (n / (Date.now() - t0)) * 1000;
}

function check(r: FireRun): string {
  const ok = r.delivered === r.expected && r.duplicates === 0 && r.early === 0;
  return `${ok ? "ok" : "FAIL"}: ${fmtInt(r.delivered)}/${fmtInt(r.expected)}, dup ${r.duplicates}, early ${r.early}${r.retried ? `, retried ${r.retried}` : ""}`;
}

const log = (m: string) => process.stderr.write(`[bench:mesh] ${m}\n`);

async function main(): Promise<void> {
  const saturate = Number(process.env["BENCH_SATURATE"] ?? 40_000);
  const rate = Number(process.env["BENCH_RATE"] ?? 5_000);
  const seconds = Number(process.env["BENCH_SECONDS"] ?? 8);
  const counts = (process.env["BENCH_DISPATCHERS"] ?? "1,2,3").split(",").map(Number);
  const transports = (process.env["BENCH_TRANSPORTS"] ?? "nats,http").split(",") as Transport[];

  const rows: string[][] = [];
  for (const d of counts) {
    for (const transport of transports) {
      log(`${d} dispatcher(s), ${transport}: saturation run of ${saturate} timers due within 1 s`);
      const mesh = await startBenchMesh(d);
      try {
        const sat = await fireRun(mesh, "sat", saturate, 1_000, transport);
        log(`  ${fmtInt(sat.firesPerSecond)} fires/s (${check(sat)}); steady run at ${rate}/s for ${seconds} s`);
        const steady = await fireRun(mesh, "steady", rate * seconds, seconds * 1000, transport);
        log(`  lateness p99 ${fmtMs(steady.lateness.p99)} ms (${check(steady)}); again with 32 clients creating flat out alongside`);
        let creates = 0;
        const loaded = await fireRun(mesh, "loaded", rate * seconds, seconds * 1000, transport, async () => {
          await new Promise((r) => setTimeout(r, 12_000)); // until the timers start firing
          creates = await createLoad(mesh, Date.now() + seconds * 1000);
        });
        log(`  creates ${fmtInt(creates)}/s alongside, lateness p99 then ${fmtMs(loaded.lateness.p99)} ms (${check(loaded)})`);
        rows.push([
          String(d), transport, fmtInt(sat.firesPerSecond), check(sat), fmtInt(rate),
          fmtMs(steady.lateness.p50), fmtMs(steady.lateness.p99), fmtMs(steady.lateness.max), check(steady),
          fmtInt(creates), fmtMs(loaded.lateness.p99), check(loaded),
        ]);
      } finally {
        await mesh.close();
      }
    }
  }
  console.log("\n## Mesh throughput and lateness\n");
  console.log(renderTable(
    ["dispatchers", "callbacks", "fires/s (saturated)", "saturated run", "steady rate/s", "lateness p50 ms", "p99 ms", "max ms", "steady run", "creates/s under that load", "lateness p99 ms with creates", "loaded run"],
    rows,
  ));

  if (process.env["BENCH_SKIP_KILL"] !== "1") {
    log("failover: 3 dispatchers, 1,000 fires/s for 12 s, SIGKILL of d3 after 4 s");
    const mesh = await startBenchMesh(3);
    try {
      let killedAt = 0;
      const run = await fireRun(mesh, "kill", 12_000, 12_000, "nats", async () => {
        await new Promise((r) => setTimeout(r, 12_000 + 4_000));
        killedAt = Date.now();
        mesh.dispatchers[2]!.child.kill("SIGKILL");
      });
      const { rows: shardRows } = await mesh.db.pool.query("SELECT count(*)::int AS n FROM timer_attempts WHERE group_id = 'kill'");
      const lateAfterKill = await mesh.db.pool.query(
        `SELECT max(extract(epoch FROM fired_time - fire_at))::float8 * 1000 AS worst
           FROM timers WHERE group_id = 'kill' AND fire_at > $1`,
        [new Date(killedAt)],
      );
      console.log("\n## Failover (SIGKILL of one of three dispatchers, NATS callbacks, 1,000 fires/s)\n");
      console.log(renderTable(["timers", "delivered", "duplicates", "attempts recorded", "time until the dead member's due timers fired again (ms)"], [
        [fmtInt(run.expected), fmtInt(run.delivered), String(run.duplicates), fmtInt(shardRows[0].n), fmtMs(lateAfterKill.rows[0].worst)],
      ]));
    } finally {
      await mesh.close();
    }
  }

  if (process.env["BENCH_SKIP_OTEL"] !== "1") {
    const results: string[][] = [];
    const variants: [string, false | number][] = [
      ["off (metrics only)", false],
      ["on, traces sampled at 10% (OTEL_TRACES_SAMPLER_ARG=0.1)", 0.1],
      ["on, every trace exported", 1],
    ];
    for (const [label, on] of variants) {
      log(`telemetry ${label}: 3 dispatchers, NATS, saturation run`);
      const mesh = await startBenchMesh(3, on);
      try {
        const r = await fireRun(mesh, "otel", saturate, 1_000, "nats");
        results.push([label, fmtInt(r.firesPerSecond), fmtMs(r.lateness.p99), check(r)]);
      } finally {
        await mesh.close();
      }
    }
    console.log("\n## Telemetry cost (3 dispatchers, NATS callbacks, saturated)\n");
    console.log(renderTable(["telemetry", "fires/s", "lateness p99 ms", "run"], results));
  }
}

if (process.argv.includes("--receiver")) {
  void receiverMain();
} else {
  main().then(
    () => process.exit(0),
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
}
