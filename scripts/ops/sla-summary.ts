// The SLA report's judgement and presentation, with no I/O: the runbook's targets ("SLA
// Monitoring": 99.5 % of timers executed within 30 s of their time, callback failures under 5 %),
// what a recorded error is for the "failures by reason" table, the verdicts, and the text and JSON
// forms. sla-report.ts reads the numbers from Postgres and hands them here.

/** The runbook's SLA targets for timer execution and callbacks. */
export const SLA_TARGETS = {
  /** A timer is on time when its first attempt started at most this long after fire_at. */
  onTimeWindowSeconds: 30,
  /** Percent of due timers that must be on time. */
  onTimePercent: 99.5,
  /** Percent of callback attempts that may fail (exclusive). */
  callbackFailurePercent: 5,
} as const;

/** One row of the report query: the whole range (`overall`) or one group. Counts are numbers. */
export interface SlaRow {
  overall: boolean;
  /** null on the overall row. */
  groupId: string | null;
  /** Timers whose fire_at is in the range (and already past). */
  due: number;
  /** Of those, whose first attempt started within the on-time window of fire_at. */
  onTime: number;
  /** Due but not attempted at all yet: their lateness is counted as now − fire_at. */
  neverAttempted: number;
  /** Lateness percentiles and maximum in seconds; null when nothing was due. */
  p50: number | null;
  p95: number | null;
  p99: number | null;
  max: number | null;
  /** Timers due in the range that ended FAILED. */
  failedTimers: number;
  /**
   * Timers due in the range that their lateness contract (SKIP) ended EXPIRED, not delivered:
   * counted late like the rest (their lateness is when their attempt was judged).
   */
  expiredTimers: number;
  /** Their last errors as recorded, with how many timers ended with each. */
  failures: { error: string; count: number }[];
  /** Callback attempts of these timers that got an answer (succeeded, retried or failed). */
  callbackAttempts: number;
  /** Of those, the ones that failed (retried or failed). */
  callbackFailures: number;
  /** Attempts taken back from a dispatcher that vanished with them in flight (no answer known). */
  abandoned: number;
}

/** Verdict of one target: met, missed, or nothing to judge. */
export type Verdict = "PASS" | "FAIL" | "NO DATA";

/** One line of the report: a group, or the whole range. */
export interface SlaLine {
  group: string;
  due: number;
  onTime: number;
  /** Percent of due timers on time; null when none was due. */
  onTimePercent: number | null;
  neverAttempted: number;
  latenessSeconds: { p50: number | null; p95: number | null; p99: number | null; max: number | null };
  failedTimers: number;
  /** Timers their lateness contract ended EXPIRED (not delivered). */
  expiredTimers: number;
  /** FAILED timers by error class, largest first. */
  failuresByReason: { reason: string; count: number }[];
  callbackAttempts: number;
  callbackFailures: number;
  /** Percent of answered callback attempts that failed; null when none was made. */
  callbackFailurePercent: number | null;
  abandonedAttempts: number;
  verdicts: { onTime: Verdict; callbackFailures: Verdict; overall: Verdict };
}

/** The report as printed with --format json. */
export interface SlaReport {
  range: { from: string; to: string; generatedAt: string };
  targets: typeof SLA_TARGETS;
  overall: SlaLine;
  /** The largest groups by due timers, at most `top`. */
  groups: SlaLine[];
  /** How many groups had timers due in the range (the table shows the top ones). */
  groupCount: number;
  notes: string[];
}

/**
 * What kind of failure a recorded error is, for the "failures by reason" table: the delivery
 * code writes the status or the system error first (delivery.ts, http-callbacks.ts), so the
 * class keeps that and drops what varies per timer (addresses, subjects, durations).
 */
export function errorClass(error: string | null): string {
  if (error === null || error.trim() === "") return "(no error recorded)";
  // Retries used up: the reason is the last attempt's.
  const e = error.replace(/^gave up after \d+ attempts: /, "");
  let m = /^HTTP (\d{3})\b/.exec(e);
  if (m) return `HTTP ${m[1]}`;
  m = /^gRPC ([A-Z_]+)\b/.exec(e);
  if (m) return `gRPC ${m[1]}`;
  if (/^timed out after/.test(e)) return "timeout";
  if (/^delivery abandoned/.test(e)) return "abandoned (dispatcher gone mid-delivery)";
  if (/^NATS not connected/.test(e)) return "NATS not connected";
  if (/^NATS publish not confirmed/.test(e)) return "NATS publish not confirmed";
  if (/which callbacks may not reach|is not allowed|not a valid host name|is empty$/.test(e))
    return "egress refused";
  if (/^callback\.(nats\.subject|grpc\.target) /.test(e) || /^timer has no callback target/.test(e))
    return "invalid callback";
  m = /^(E[A-Z_]+)\b/.exec(e);
  if (m) return m[1]!;
  m = /\b(ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|EPIPE)\b/.exec(e);
  if (m) return m[1]!;
  // Anything else: its first words, digits masked, so that one kind of error is one line.
  return e.replace(/\d+/g, "N").split(/[:;(]/)[0]!.trim().slice(0, 60) || "other";
}

function percent(part: number, whole: number): number | null {
  return whole === 0 ? null : (100 * part) / whole;
}

function both(a: Verdict, b: Verdict): Verdict {
  if (a === "FAIL" || b === "FAIL") return "FAIL";
  if (a === "NO DATA" && b === "NO DATA") return "NO DATA";
  return "PASS";
}

/** A row of the query, judged against the targets. */
export function judgeLine(row: SlaRow): SlaLine {
  const onTimePercent = percent(row.onTime, row.due);
  const callbackFailurePercent = percent(row.callbackFailures, row.callbackAttempts);
  const byReason = new Map<string, number>();
  for (const f of row.failures) {
    const reason = errorClass(f.error);
    byReason.set(reason, (byReason.get(reason) ?? 0) + f.count);
  }
  const onTime: Verdict =
    onTimePercent === null ? "NO DATA" : onTimePercent >= SLA_TARGETS.onTimePercent ? "PASS" : "FAIL";
  const callbackFailures: Verdict =
    callbackFailurePercent === null
      ? "NO DATA"
      : callbackFailurePercent < SLA_TARGETS.callbackFailurePercent
        ? "PASS"
        : "FAIL";
  return {
    group: row.overall ? "(all)" : (row.groupId ?? ""),
    due: row.due,
    onTime: row.onTime,
    onTimePercent,
    neverAttempted: row.neverAttempted,
    latenessSeconds: {
      p50: toMicroseconds(row.p50),
      p95: toMicroseconds(row.p95),
      p99: toMicroseconds(row.p99),
      max: toMicroseconds(row.max),
    },
    failedTimers: row.failedTimers,
    expiredTimers: row.expiredTimers,
    failuresByReason: [...byReason]
      .map(([reason, count]) => ({ reason, count }))
      .sort((a, b) => b.count - a.count || a.reason.localeCompare(b.reason)),
    callbackAttempts: row.callbackAttempts,
    callbackFailures: row.callbackFailures,
    callbackFailurePercent,
    abandonedAttempts: row.abandoned,
    verdicts: { onTime, callbackFailures, overall: both(onTime, callbackFailures) },
  };
}

/** The whole report from the query's rows (the overall row and the top groups). */
export function buildSlaReport(
  rows: readonly SlaRow[],
  range: { from: Date; to: Date; generatedAt: Date },
  groupCount: number,
): SlaReport {
  const overallRow = rows.find((r) => r.overall);
  if (!overallRow) throw new Error("the SLA query returned no overall row");
  const overall = judgeLine(overallRow);
  const notes: string[] = [];
  if (overall.neverAttempted > 0)
    notes.push(
      `${overall.neverAttempted} timer(s) due in the range were never attempted (a paused group, no live owner, or a backlog): each counts as late by now − fire_at.`,
    );
  if (overall.expiredTimers > 0)
    notes.push(
      `${overall.expiredTimers} timer(s) were not delivered: their lateness contract (SKIP) ended them EXPIRED, started beyond their max_lateness; they count as late.`,
    );
  if (overall.abandonedAttempts > 0)
    notes.push(
      `${overall.abandonedAttempts} attempt(s) were abandoned by a dispatcher that vanished mid-delivery: not counted as callback failures.`,
    );
  return {
    range: {
      from: range.from.toISOString(),
      to: range.to.toISOString(),
      generatedAt: range.generatedAt.toISOString(),
    },
    targets: SLA_TARGETS,
    overall,
    groups: rows.filter((r) => !r.overall).map(judgeLine),
    groupCount,
    notes,
  };
}

/** Exit code of `sla-report`: 1 when a target is missed, 0 otherwise (met, or nothing to judge). */
export function slaExitCode(report: SlaReport): number {
  return report.overall.verdicts.overall === "FAIL" ? 1 : 0;
}

function seconds(s: number | null): string {
  if (s === null) return "-";
  return Math.abs(s) >= 100 ? `${s.toFixed(0)}s` : `${s.toFixed(3)}s`;
}

function pct(p: number | null): string {
  if (p === null) return "-";
  // Never round a miss up to the target: 99.49 % stays below 99.5 %.
  return `${(Math.floor(p * 100) / 100).toFixed(2)}%`;
}

/** Columns padded to their widest cell: the first `left` aligned left (names), the rest right (numbers). */
function table(header: string[], rows: string[][], left = 1): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i < left ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)];
}

/** The report as text: targets, the SLA table (overall and top groups), failures by reason, notes. */
export function formatSlaText(report: SlaReport): string {
  const t = report.targets;
  const out: string[] = [
    `SLA report ${report.range.from} .. ${report.range.to} (Postgres time, generated ${report.range.generatedAt})`,
    `targets: ${t.onTimePercent}% of timers fired within ${t.onTimeWindowSeconds}s of fire_at; callback failures < ${t.callbackFailurePercent}%`,
    "",
  ];
  const lines = [report.overall, ...report.groups];
  out.push(
    ...table(
      [
        "group",
        "due",
        `within ${t.onTimeWindowSeconds}s`,
        "p50",
        "p95",
        "p99",
        "max",
        "failed",
        "cb fail",
        "verdict",
      ],
      lines.map((l) => [
        l.group,
        String(l.due),
        pct(l.onTimePercent),
        seconds(l.latenessSeconds.p50),
        seconds(l.latenessSeconds.p95),
        seconds(l.latenessSeconds.p99),
        seconds(l.latenessSeconds.max),
        String(l.failedTimers),
        pct(l.callbackFailurePercent),
        l.verdicts.overall,
      ]),
    ),
  );
  if (report.groupCount > report.groups.length)
    out.push(`(top ${report.groups.length} of ${report.groupCount} groups by timers due; --top N for more)`);
  out.push(
    "",
    `timer execution: ${report.overall.verdicts.onTime} (${pct(report.overall.onTimePercent)} within ${t.onTimeWindowSeconds}s, target ${t.onTimePercent}%)`,
    `callback failures: ${report.overall.verdicts.callbackFailures} (${report.overall.callbackFailures} of ${report.overall.callbackAttempts} attempts, ${pct(report.overall.callbackFailurePercent)}, target < ${t.callbackFailurePercent}%)`,
  );
  const failing = lines.filter((l) => l.failuresByReason.length > 0);
  if (failing.length > 0) {
    out.push("", "failures by reason (timers ended FAILED):");
    const rows = failing.flatMap((l) => l.failuresByReason.map((f) => [l.group, f.reason, String(f.count)]));
    out.push(...table(["group", "reason", "timers"], rows, 2).map((line) => `  ${line}`));
  }
  for (const note of report.notes) out.push("", `note: ${note}`);
  return out.join("\n");
}

/** Seconds to whole microseconds (Postgres's resolution): percentile_cont interpolates in floating point (0.00200999...). */
function toMicroseconds(seconds: number | null): number | null {
  return seconds === null ? null : Math.round(seconds * 1e6) / 1e6;
}
