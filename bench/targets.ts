// What the benchmark figures are held against: issue 10's targets, the peer figures the issue
// measured on this machine (quoted, not re-measured here), and the verdicts a run ends with,
// including BENCH_STRICT's exit code. Pure: no I/O.
import { fmtInt, renderTable } from "./stats.js";

/** A bound a figure must meet: at least (">=") or at most ("<=") `value`. */
export interface Target {
  op: ">=" | "<=";
  value: number;
  unit: string;
}

/** Issue 10's targets ("Ingest as fast as the fire path"). */
export const TARGETS = {
  /** CreateTimer from 64 concurrent callers on one grpc-js channel. */
  unaryCreates: { op: ">=", value: 3_000, unit: "/s" },
  /** CreateTimers in batches of 1,000 from one client. */
  batchCreates: { op: ">=", value: 40_000, unit: "/s" },
  /** HTTP callbacks on one dispatcher. */
  httpFires: { op: ">=", value: 6_000, unit: "/s" },
  /** Lateness p99 at 5,000 fires/s with the timers stored ahead. */
  lateP99: { op: "<=", value: 50, unit: " ms" },
  /** While the mesh fires 5,000/s. */
  unaryCreatesUnderLoad: { op: ">=", value: 2_000, unit: "/s" },
  batchCreatesUnderLoad: { op: ">=", value: 20_000, unit: "/s" },
  /** NATS callbacks across the mesh. */
  natsFires: { op: ">=", value: 12_000, unit: "/s" },
} as const satisfies Record<string, Target>;

/** Which of the issue's comparison figures a row of the summary lines up with. */
export type PeerMeasure = "unary" | "batch" | "fires" | "p99At5000" | "p50p99At1000";

/** A system the issue measured with the same 20,000-job workload on this machine. */
export interface Peer {
  name: string;
  figures: Partial<Record<PeerMeasure, string>>;
}

/**
 * Issue 10's comparison, as quoted there (ranges are the spread of its runs). "timer-mesh before"
 * is this project before the issue's work, from the same table and text.
 */
export const PEERS: Peer[] = [
  {
    name: "pg-boss 12",
    figures: {
      unary: "1,274-1,328 /s",
      batch: "24,060-24,400 /s",
      p99At5000: "466 ms",
      p50p99At1000: "229 / 476 ms",
    },
  },
  {
    name: "BullMQ 6 (Redis)",
    figures: {
      unary: "10,689-15,925 /s",
      batch: "19,129-19,343 /s",
      p99At5000: "131 ms",
      p50p99At1000: "3.9 / 12 ms (hz 100)",
    },
  },
  {
    name: "graphile-worker 0.18",
    figures: { unary: "712-764 /s", batch: "25,255-30,142 /s", p99At5000: "falls behind (1,882 fires/s)" },
  },
  {
    name: "timer-mesh before",
    figures: {
      unary: "600-713 /s",
      batch: "773-864 /s (no batch RPC)",
      fires: "~3,300 /s",
      p99At5000: "1,158 ms, stored a minute ahead (4,100 fires/s)",
      p50p99At1000: "1.1 / 12 ms",
    },
  },
];

/** One row of a summary: a figure, its target (if it has one) and the verdict. */
export interface Verdict {
  measure: string;
  result: string;
  /** "" when the figure is only reported. */
  target: string;
  /** undefined when the figure is only reported. */
  pass: boolean | undefined;
  /** Why a row missed beyond its figure (e.g. "UNIMPLEMENTED", "2 creates refused"). */
  note?: string;
  peers?: PeerMeasure;
}

/** Whether `value` meets `target`; a figure that could not be measured (NaN) never does. */
export function meets(value: number, target: Target): boolean {
  if (!Number.isFinite(value)) return false;
  return target.op === ">=" ? value >= target.value : value <= target.value;
}

/** The target as printed: ">= 3,000 /s", "<= 50 ms". */
export function describeTarget(target: Target): string {
  return `${target.op} ${fmtInt(target.value)}${target.unit}`;
}

/**
 * A row judged against `target`. `valid` false (an error, a lost timer, creation overlapping
 * the measurement) fails the row whatever the figure, with `note` saying why.
 */
export function judged(
  measure: string,
  value: number,
  shown: string,
  target: Target,
  opts: { valid?: boolean; note?: string; peers?: PeerMeasure } = {},
): Verdict {
  const v: Verdict = {
    measure,
    result: shown,
    target: describeTarget(target),
    pass: meets(value, target) && opts.valid !== false,
  };
  if (opts.note) v.note = opts.note;
  if (opts.peers) v.peers = opts.peers;
  return v;
}

/** A row that must be exactly zero problems: "early / duplicate / missing" and the like. */
export function mustBeZero(measure: string, counts: number[], note?: string): Verdict {
  const v: Verdict = {
    measure,
    result: counts.map((c) => fmtInt(c)).join(" / "),
    target: counts.map(() => "0").join(" / "),
    pass: counts.every((c) => c === 0),
  };
  if (note) v.note = note;
  return v;
}

/** BENCH_STRICT=1: 1 when any judged row missed, else 0. Without it, always 0. */
export function exitCode(verdicts: Verdict[], strict: boolean): number {
  return strict && verdicts.some((v) => v.pass === false) ? 1 : 0;
}

/** The one summary table: figure, target, verdict, and the peers' figures where there are any. */
export function summaryTable(verdicts: Verdict[], peers: Peer[] = PEERS): string {
  const withPeers = verdicts.some((v) => v.peers);
  const headers = [
    "measure",
    "this run",
    "target",
    "verdict",
    ...(withPeers ? peers.map((p) => p.name) : []),
  ];
  const rows = verdicts.map((v) => [
    v.measure,
    v.result,
    v.target,
    v.pass === undefined ? "" : v.pass ? "PASS" : `MISS${v.note ? ` (${v.note})` : ""}`,
    ...(withPeers ? peers.map((p) => (v.peers ? (p.figures[v.peers] ?? "-") : "")) : []),
  ]);
  return renderTable(
    headers,
    rows,
    headers.map((_, i) => (i === 1 || i === 2 ? "right" : "left")),
  );
}
