// Percentiles and table printing for the benchmarks. Pure helpers, no I/O.

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
  const aligns: Align[] = headers.map((_, i) => align?.[i] ?? (body.length > 0 && body.every((r) => numeric(r[i]!)) ? "right" : "left"));
  const widths = headers.map((h, i) => Math.max(3, h.length, ...body.map((r) => r[i]!.length)));
  const pad = (s: string, i: number) => (aligns[i] === "right" ? s.padStart(widths[i]!) : s.padEnd(widths[i]!));
  const line = (cells: string[]) => `| ${cells.map(pad).join(" | ")} |`;
  const rule = `|${widths.map((w, i) => (aligns[i] === "right" ? `${"-".repeat(w + 1)}:` : `:${"-".repeat(w + 1)}`)).join("|")}|`;
  return [line(headers), rule, ...body.map(line)].join("\n");
}
