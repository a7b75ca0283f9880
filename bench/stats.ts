// Percentiles, table printing and the judging of deliveries for the benchmarks. Pure helpers, no I/O.

/** Distribution of a set of samples (milliseconds, usually). */
export interface Summary {
  count: number;
  min: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** Nearest-rank percentile of an ascending array; NaN when empty. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  const rank = Math.ceil((p / 100) * n);
  return sorted[Math.min(n, Math.max(1, rank)) - 1]!;
}

/** Count, mean and percentiles of the samples. */
export function summarize(values: Iterable<number>): Summary {
  const s = Float64Array.from(values).sort();
  let sum = 0;
  for (const v of s) sum += v;
  return {
    count: s.length,
    min: s.length ? s[0]! : NaN,
    mean: s.length ? sum / s.length : NaN,
    p50: percentile(s, 50),
    p90: percentile(s, 90),
    p99: percentile(s, 99),
    max: s.length ? s[s.length - 1]! : NaN,
  };
}

/** A number with a fixed count of decimals, or "-" when not finite. */
export function fmt(n: number, decimals = 1): string {
  return Number.isFinite(n) ? n.toFixed(decimals) : "-";
}

/** An integer with thousands separators ("20,000"). */
export function fmtInt(n: number): string {
  return Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "-";
}

/** Milliseconds: one decimal below 100 ms, whole numbers above. */
export function fmtMs(n: number): string {
  if (!Number.isFinite(n)) return "-";
  return Math.abs(n) < 100 ? n.toFixed(1) : Math.round(n).toString();
}

export type Align = "left" | "right";

/**
 * A markdown table padded so it also reads well in a terminal. Columns are right-aligned when
 * every body cell looks numeric, unless `align` says otherwise.
 */
export function renderTable(headers: string[], rows: (string | number)[][], align?: Align[]): string {
  const body = rows.map((r) => headers.map((_, i) => String(r[i] ?? "")));
  const numeric = (s: string) => /^[-+]?[\d,]*\.?\d+( ?%| ms| s|\/s)?$|^-$/.test(s.trim());
  const aligns: Align[] = headers.map(
    (_, i) => align?.[i] ?? (body.length > 0 && body.every((r) => numeric(r[i]!)) ? "right" : "left"),
  );
  const widths = headers.map((h, i) => Math.max(3, h.length, ...body.map((r) => r[i]!.length)));
  const pad = (s: string, i: number) =>
    aligns[i] === "right" ? s.padStart(widths[i]!) : s.padEnd(widths[i]!);
  const line = (cells: string[]) => `| ${cells.map(pad).join(" | ")} |`;
  const rule = `|${widths.map((w, i) => (aligns[i] === "right" ? `${"-".repeat(w + 1)}:` : `:${"-".repeat(w + 1)}`)).join("|")}|`;
  return [line(headers), rule, ...body.map(line)].join("\n");
}

// ---------------------------------------------------------------------------------------------
// Judging the deliveries of a fire run.

/** One delivery as a receiver recorded it: [timerId, attempt, fireAtMs (its header), receivedAtMs]. */
export type Delivery = [timerId: string, attempt: number, fireAtMs: number, receivedAtMs: number];

/** What a set of deliveries says against the timers that were expected to fire. */
export interface FireResult {
  expected: number;
  deliveries: number;
  /** Expected timers delivered at least once. */
  unique: number;
  /** The same attempt of a timer delivered more than once: a double fire, never allowed. */
  duplicates: number;
  /**
   * Expected timers delivered more than once, any attempts: with a receiver that always answers
   * 200 this too is a double fire (a retry there means an attempt was wrongly judged failed).
   */
  redelivered: number;
  /** Deliveries before the timer's fire time (the expected one, or the header's). */
  early: number;
  missing: number;
  /** Deliveries of a later attempt (after a failed one): at-least-once retries, allowed. */
  retries: number;
  /** Deliveries of timers nobody expected. */
  unexpected: number;
  firstAtMs: number;
  lastAtMs: number;
  /** Receipt of each expected timer's first delivery minus its fire time. */
  lateness: Summary;
  /** First receipt of each expected timer: [fireAtMs, receivedAtMs]. */
  firsts: [number, number][];
}

/** Judges `deliveries` against `expected` (timer id to fire time, ms). */
export function judgeDeliveries(deliveries: Delivery[], expected: Map<string, number>): FireResult {
  const first = new Map<string, Delivery>();
  const attempts = new Set<string>();
  let duplicates = 0;
  let early = 0;
  let retries = 0;
  let unexpected = 0;
  let firstAtMs = Infinity;
  let lastAtMs = -Infinity;
  for (const d of deliveries) {
    const [id, attempt, headerFireAt, at] = d;
    const due = expected.get(id);
    if (due === undefined) unexpected++;
    if (at < (due ?? headerFireAt) || at < headerFireAt) early++;
    if (attempt > 1) retries++;
    const key = `${id}#${attempt}`;
    if (attempts.has(key)) duplicates++;
    attempts.add(key);
    firstAtMs = Math.min(firstAtMs, at);
    lastAtMs = Math.max(lastAtMs, at);
    const prev = first.get(id);
    if (!prev || at < prev[3]) first.set(id, d);
  }
  const firsts: [number, number][] = [];
  for (const [id, due] of expected) {
    const d = first.get(id);
    if (d) firsts.push([due, d[3]]);
  }
  const redelivered = countRepeated(deliveries.filter((d) => expected.has(d[0])).map((d) => d[0]));
  return {
    expected: expected.size,
    deliveries: deliveries.length,
    unique: firsts.length,
    duplicates,
    redelivered,
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

/** How many distinct values occur more than once. */
function countRepeated(values: string[]): number {
  const seen = new Map<string, number>();
  for (const v of values) seen.set(v, (seen.get(v) ?? 0) + 1);
  let n = 0;
  for (const c of seen.values()) if (c > 1) n++;
  return n;
}

/** Expected timers delivered per second between the first and the last receipt. */
export function fireRate(r: FireResult): number {
  const spanS = (r.lastAtMs - r.firstAtMs) / 1000;
  return spanS > 0 ? r.unique / spanS : NaN;
}

/** Every expected timer delivered exactly once (no retry either), none early, nothing else. */
export function exactlyOnce(r: FireResult): boolean {
  return r.missing === 0 && r.early === 0 && r.redelivered === 0 && r.duplicates === 0 && r.unexpected === 0;
}

/** One line of the checks. */
export function checksLine(r: FireResult): string {
  return `early ${r.early}, duplicate attempts ${r.duplicates}, timers delivered more than once ${r.redelivered}, missing ${r.missing} (not delivered by the drain deadline), retried attempts ${r.retries}, unexpected ${r.unexpected} (deliveries ${fmtInt(r.deliveries)} for ${fmtInt(r.expected)} timers)`;
}

/** Deliveries per receipt second, and lateness of the timers due in each second, from `originMs`. */
export function timeline(r: FireResult, originMs: number): string {
  const buckets = new Map<number, { received: number; late: number[] }>();
  const at = (s: number) => {
    let b = buckets.get(s);
    if (!b) {
      b = { received: 0, late: [] };
      buckets.set(s, b);
    }
    return b;
  };
  for (const [due, recv] of r.firsts) {
    at(Math.floor((recv - originMs) / 1000)).received++;
    at(Math.floor((due - originMs) / 1000)).late.push(recv - due);
  }
  const rows = [...buckets.keys()]
    .sort((a, b) => a - b)
    .map((s) => {
      const b = buckets.get(s)!;
      const l = summarize(b.late);
      return [
        `${s}..${s + 1}`,
        fmtInt(b.received),
        fmtInt(l.count),
        fmtMs(l.p50),
        fmtMs(l.p99),
        fmtMs(l.max),
      ];
    });
  return renderTable(
    ["second (from 1st fire_at)", "received in it", "due in it", "their late p50", "p99", "max"],
    rows,
  );
}
