// CPU accounting from /proc for the benchmarks: who used the machine's cores during a measured
// window (the timer service, dispatchers, Postgres, the receiver, the load generator, or other
// work on the machine), so a missed target can be traced to a process.
import { readFileSync, readdirSync } from "node:fs";
import { cpus } from "node:os";
import { fileURLToPath } from "node:url";
import { fmt, renderTable } from "./stats.js";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

interface ProcSample {
  ppid: number;
  comm: string;
  ticks: number;
  /** Start time (clock ticks after boot): tells a reused pid from the same process. */
  start: number;
}

export interface CpuSnapshot {
  atMs: number;
  procs: Map<number, ProcSample>;
  busy: number;
  total: number;
}

const CLK_TCK = 100; // getconf CLK_TCK on Linux x86-64

export function readProc(pid: number): ProcSample | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const close = s.lastIndexOf(")");
    const f = s.slice(close + 2).split(" "); // f[0] is field 3 (state)
    return {
      ppid: Number(f[1]),
      comm: s.slice(s.indexOf("(") + 1, close),
      ticks: Number(f[11]) + Number(f[12]),
      start: Number(f[19]),
    };
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

export function cpuSnapshot(): CpuSnapshot {
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

export interface Known {
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
    return cmdline(pid).includes(` ${k.dbName} `)
      ? "postgres: bench-db backends"
      : "postgres: other (walwriter, ckpt, other dbs)";
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
export function cpuTable(a: CpuSnapshot, b: CpuSnapshot, k: Known): string {
  const wallS = (b.atMs - a.atMs) / 1000;
  const by = new Map<string, number>();
  for (const [pid, p] of b.procs) {
    const before = a.procs.get(pid);
    // The same process by start time, not by name: kernel workers rename themselves as they
    // take other work, and counting all their ticks again would be wrong.
    const d = p.ticks - (before && before.start === p.start ? before.ticks : 0);
    if (d <= 0) continue;
    const cat = categorize(pid, p, k);
    by.set(cat, (by.get(cat) ?? 0) + d / CLK_TCK);
  }
  const order = [
    ...k.pids.values(),
    "nats-server (private)",
    "postgres: bench-db backends",
    "postgres: other (walwriter, ckpt, other dbs)",
  ];
  const row = (name: string, s: number) => [name, fmt(s, 2), `${fmt((100 * s) / wallS, 0)}%`];
  const rows = order.filter((c) => by.has(c)).map((c) => row(c, by.get(c)!));
  // Everything else, biggest first: other people's tests and builds show up here.
  const others = [...by].filter(([c]) => c.startsWith(OTHER)).sort((x, y) => y[1] - x[1]);
  for (const [c, v] of others.slice(0, 4))
    if (v >= 0.05) rows.push(row(c.length > 70 ? `${c.slice(0, 67)}...` : c, v));
  const rest =
    others.slice(4).reduce((a, [, v]) => a + v, 0) +
    others
      .slice(0, 4)
      .filter(([, v]) => v < 0.05)
      .reduce((a, [, v]) => a + v, 0);
  if (rest >= 0.01) rows.push(row("other: everything else", rest));
  const accounted = [...by.values()].reduce((a, v) => a + v, 0);
  const machineS = (b.busy - a.busy) / CLK_TCK;
  if (machineS - accounted >= 0.05)
    rows.push(row("other: exited meanwhile (closed pg connections, others' tests)", machineS - accounted));
  const machine = (100 * cpus().length * (b.busy - a.busy)) / Math.max(1, b.total - a.total);
  rows.push([
    `machine total (${cpus().length} cores = ${cpus().length * 100}%)`,
    fmt((b.busy - a.busy) / CLK_TCK, 2),
    `${fmt(machine, 0)}%`,
  ]);
  return renderTable(["process", "CPU s", "% of a core"], rows);
}

/** The machine's busy share between two snapshots, as % of one core (up to cores x 100%). */
export function machineBusyPct(a: CpuSnapshot, b: CpuSnapshot): number {
  return (100 * cpus().length * (b.busy - a.busy)) / Math.max(1, b.total - a.total);
}
