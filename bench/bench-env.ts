// Settings of the benchmark scripts, from BENCH_* environment variables: one parser for all.

/** A non-negative integer setting. */
export function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!/^\d+$/.test(raw.trim())) throw new Error(`${name} must be a non-negative integer, got "${raw}"`);
  return Number(raw);
}

/** Extra environment for a service: "K=V K2=V2", or a JSON object. */
export function envPairs(name: string): Record<string, string> {
  const raw = (process.env[name] ?? "").trim();
  if (raw.startsWith("{")) return JSON.parse(raw) as Record<string, string>;
  const out: Record<string, string> = {};
  for (const pair of raw.split(/\s+/).filter(Boolean)) {
    const i = pair.indexOf("=");
    if (i <= 0) throw new Error(`${name} must be "K=V K2=V2", got "${pair}"`);
    out[pair.slice(0, i)] = pair.slice(i + 1);
  }
  return out;
}
