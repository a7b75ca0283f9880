// Reads PromQL well enough to check it against the metrics the services export
// (services/shared/src/telemetry/metric-names.ts): a small tokenizer, not a full parser, that knows
// which identifiers are functions, keywords, label names and metric names, and what each grouping
// clause (by, without, on, ignoring, group_*) applies to. Grafana's $variables read as tokens.
//
//   analyze('sum by (job) (rate(timer_creations_total[5m]))')  // metrics, functions, groupings
//   checkExpr(expr, ["timer", "dispatcher", "admin"])           // [] or the problems found
import { METRICS, RUNTIME_METRICS } from "../../services/shared/src/telemetry/metric-names.js";
import { ALL_EXPORTER_METRICS } from "./exporter-metrics.js";

export type Token = { kind: "ident" | "string" | "number" | "duration" | "var" | "punct"; text: string };

const AGGREGATORS = new Set([
  "sum",
  "min",
  "max",
  "avg",
  "group",
  "stddev",
  "stdvar",
  "count",
  "count_values",
  "bottomk",
  "topk",
  "quantile",
  "limitk",
  "limit_ratio",
]);
const GROUPING = new Set(["by", "without", "on", "ignoring", "group_left", "group_right"]);
const KEYWORDS = new Set(["bool", "offset", "and", "or", "unless", "atan2", "inf", "nan"]);
const FUNCTIONS = new Set([
  "abs",
  "absent",
  "absent_over_time",
  "acos",
  "acosh",
  "asin",
  "asinh",
  "atan",
  "atanh",
  "avg_over_time",
  "ceil",
  "changes",
  "clamp",
  "clamp_max",
  "clamp_min",
  "cos",
  "cosh",
  "count_over_time",
  "day_of_month",
  "day_of_week",
  "day_of_year",
  "days_in_month",
  "deg",
  "delta",
  "deriv",
  "double_exponential_smoothing",
  "end",
  "exp",
  "floor",
  "histogram_avg",
  "histogram_count",
  "histogram_fraction",
  "histogram_quantile",
  "histogram_stddev",
  "histogram_stdvar",
  "histogram_sum",
  "holt_winters",
  "hour",
  "idelta",
  "increase",
  "irate",
  "label_join",
  "label_replace",
  "last_over_time",
  "ln",
  "log10",
  "log2",
  "mad_over_time",
  "max_over_time",
  "min_over_time",
  "minute",
  "month",
  "pi",
  "predict_linear",
  "present_over_time",
  "quantile_over_time",
  "rad",
  "rate",
  "resets",
  "round",
  "scalar",
  "sgn",
  "sin",
  "sinh",
  "sort",
  "sort_by_label",
  "sort_by_label_desc",
  "sort_desc",
  "sqrt",
  "start",
  "stddev_over_time",
  "stdvar_over_time",
  "sum_over_time",
  "tan",
  "tanh",
  "time",
  "timestamp",
  "vector",
  "year",
]);
/** Labels every scraped series has. */
const TARGET_LABELS = ["job", "instance"];

const DURATION = /^(\d+(ms|s|m|h|d|w|y))+/;
const NUMBER = /^(0[xX][0-9a-fA-F]+|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)/;
const IDENT = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const VARIABLE = /^\$(\{[^}]*\}|\w+)/; // Grafana's $__rate_interval, ${job}, ...
const PUNCT = /^(==|!=|<=|>=|=~|!~|[-+*/%^=<>(){}[\],@:])/;

/** Splits a PromQL expression into tokens (comments and whitespace dropped). */
export function tokenize(expr: string): Token[] {
  const tokens: Token[] = [];
  let s = expr;
  while (s.length > 0) {
    const ws = /^(\s+|#[^\n]*)/.exec(s);
    if (ws) {
      s = s.slice(ws[0].length);
      continue;
    }
    const quote = s[0];
    if (quote === '"' || quote === "'" || quote === "`") {
      let i = 1;
      while (i < s.length && s[i] !== quote) i += s[i] === "\\" && quote !== "`" ? 2 : 1;
      if (i >= s.length) throw new Error(`unterminated string in: ${expr}`);
      tokens.push({ kind: "string", text: s.slice(1, i) });
      s = s.slice(i + 1);
      continue;
    }
    const rules: [Token["kind"], RegExp][] = [
      ["duration", DURATION],
      ["number", NUMBER],
      ["ident", IDENT],
      ["var", VARIABLE],
      ["punct", PUNCT],
    ];
    const hit = rules.map(([kind, re]) => [kind, re.exec(s)] as const).find(([, m]) => m !== null);
    if (!hit) throw new Error(`cannot read "${s.slice(0, 20)}" in: ${expr}`);
    const [kind, m] = hit;
    tokens.push({ kind, text: m![0] });
    s = s.slice(m![0].length);
  }
  return tokens;
}

/** Index of the token closing the bracket opened at `open`. */
function closing(tokens: Token[], open: number): number {
  const pairs: Record<string, string> = { "(": ")", "[": "]", "{": "}" };
  const opener = tokens[open]!.text;
  let depth = 0;
  for (let i = open; i < tokens.length; i++) {
    if (tokens[i]!.kind !== "punct") continue;
    if (tokens[i]!.text === opener) depth++;
    else if (tokens[i]!.text === pairs[opener]) depth--;
    if (depth === 0) return i;
  }
  throw new Error(`unbalanced "${opener}"`);
}

/** A metric name as written (with any _bucket/_sum/_count suffix), where and with which labels. */
export interface MetricUse {
  name: string;
  at: number;
  matchers: { label: string; op: string; value: string }[];
}

/** What an expression uses: metric selectors, functions, and grouping clauses over token ranges. */
export interface ExprUses {
  metrics: MetricUse[];
  functions: string[];
  groupings: { keyword: string; labels: string[]; from: number; to: number }[];
}

/** Reads the metrics, functions and grouping labels an expression uses. */
export function analyze(expr: string): ExprUses {
  const tokens = tokenize(expr);
  const uses: ExprUses = { metrics: [], functions: [], groupings: [] };
  const isPunct = (i: number, text: string) => tokens[i]?.kind === "punct" && tokens[i]!.text === text;
  const lower = (i: number) => tokens[i]?.text.toLowerCase() ?? "";

  const readMatchers = (open: number): MetricUse["matchers"] => {
    const end = closing(tokens, open);
    const matchers: MetricUse["matchers"] = [];
    for (let i = open + 1; i < end; i++) {
      if (isPunct(i, ",")) continue;
      const [label, op, value] = [tokens[i], tokens[i + 1], tokens[i + 2]];
      if (label?.kind !== "ident" || op?.kind !== "punct" || value?.kind !== "string") {
        throw new Error(`cannot read the label matchers of: ${expr}`);
      }
      matchers.push({ label: label.text, op: op.text, value: value.text });
      i += 2;
    }
    return matchers;
  };
  const readLabelList = (open: number): string[] => {
    const end = closing(tokens, open);
    return tokens
      .slice(open + 1, end)
      .filter((t) => t.kind === "ident")
      .map((t) => t.text);
  };

  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (t.kind === "punct" && t.text === "[") {
      i = closing(tokens, i); // range or subquery: durations and Grafana variables only
      continue;
    }
    if (t.kind === "punct" && t.text === "{") {
      // A selector with no name before it: {__name__="..."}.
      const matchers = readMatchers(i);
      const name = matchers.find((m) => m.label === "__name__" && m.op === "=");
      if (!name) throw new Error(`a selector without a metric name in: ${expr}`);
      uses.metrics.push({ name: name.value, at: i, matchers: matchers.filter((m) => m !== name) });
      i = closing(tokens, i);
      continue;
    }
    if (t.kind !== "ident") continue;
    const next = tokens[i + 1];
    const nextIsParen = next?.kind === "punct" && next.text === "(";
    if (GROUPING.has(lower(i))) {
      if (nextIsParen) {
        const end = closing(tokens, i + 1);
        uses.groupings.push({
          keyword: lower(i),
          labels: readLabelList(i + 1),
          ...groupingScope(tokens, i, expr),
        });
        i = end;
      }
      continue;
    }
    if (AGGREGATORS.has(lower(i)) && (nextIsParen || GROUPING.has(next?.text.toLowerCase() ?? ""))) continue;
    if (KEYWORDS.has(lower(i))) continue;
    if (nextIsParen) {
      uses.functions.push(t.text);
      continue;
    }
    const matchers = isPunct(i + 1, "{") ? readMatchers(i + 1) : [];
    uses.metrics.push({ name: t.text, at: i, matchers });
    if (matchers.length > 0 || isPunct(i + 1, "{")) i = closing(tokens, i + 1);
  }
  return uses;
}

/**
 * The token range a grouping clause applies to: for `by`/`without`, the argument of its
 * aggregation (`sum by (x) (ARG)` or `sum(ARG) by (x)`); for `on`/`ignoring`/`group_*`, the
 * whole expression.
 */
function groupingScope(tokens: Token[], at: number, expr: string): { from: number; to: number } {
  const keyword = tokens[at]!.text.toLowerCase();
  if (keyword !== "by" && keyword !== "without") return { from: 0, to: tokens.length - 1 };
  const labelsEnd = closing(tokens, at + 1);
  if (AGGREGATORS.has(tokens[at - 1]?.text.toLowerCase() ?? "")) {
    const open = labelsEnd + 1;
    if (tokens[open]?.text !== "(") throw new Error(`no argument after "${keyword} (...)" in: ${expr}`);
    return { from: open, to: closing(tokens, open) };
  }
  // Trailing form: the argument is the parenthesis just before `by`.
  const close = at - 1;
  for (let open = close; open >= 0; open--) {
    if (tokens[open]!.text === "(" && closing(tokens, open) === close) return { from: open, to: close };
  }
  throw new Error(`cannot find the aggregation of "${keyword}" in: ${expr}`);
}

type MetricInfo = { type: string; labels: readonly string[] };
const catalogue: Readonly<Record<string, MetricInfo>> = {
  ...METRICS,
  ...RUNTIME_METRICS,
  ...ALL_EXPORTER_METRICS,
};

/** The labels a scraped series of this name has, or why the name is not exported. */
function seriesLabels(
  name: string,
  recorded: Readonly<Record<string, readonly string[]>>,
): { labels: string[] } | { error: string } {
  if (name === "up") return { labels: [...TARGET_LABELS] };
  const record = recorded[name];
  if (record) return { labels: [...record] };
  const direct = catalogue[name];
  if (direct) {
    if (direct.type === "histogram")
      return { error: `${name} is a histogram: use ${name}_bucket, _sum or _count` };
    return { labels: [...TARGET_LABELS, ...direct.labels] };
  }
  for (const suffix of ["_bucket", "_sum", "_count"]) {
    const base = catalogue[name.slice(0, -suffix.length)];
    if (name.endsWith(suffix) && base?.type === "histogram") {
      return { labels: [...TARGET_LABELS, ...base.labels, ...(suffix === "_bucket" ? ["le"] : [])] };
    }
  }
  return { error: `${name} is not in METRICS (services/shared/src/telemetry/metric-names.ts)` };
}

/**
 * Every problem with the metric names, labels, functions and job names an expression uses.
 * `recorded`: the series recording rules make, with their labels (prometheus-rules.ts).
 */
export function checkExpr(
  expr: string,
  jobs: readonly string[],
  recorded: Readonly<Record<string, readonly string[]>> = {},
): string[] {
  let uses: ExprUses;
  try {
    uses = analyze(expr);
  } catch (err) {
    return [(err as Error).message];
  }
  const problems: string[] = [];
  for (const fn of uses.functions) {
    if (!FUNCTIONS.has(fn)) problems.push(`unknown function ${fn}()`);
  }
  const labelsAt = new Map<number, string[]>();
  for (const m of uses.metrics) {
    const found = seriesLabels(m.name, recorded);
    if ("error" in found) {
      problems.push(found.error);
      continue;
    }
    labelsAt.set(m.at, found.labels);
    for (const matcher of m.matchers) {
      if (!found.labels.includes(matcher.label)) {
        problems.push(`${m.name} has no label ${matcher.label} (it has ${found.labels.join(", ")})`);
      }
      if (matcher.label === "job" && (matcher.op === "=" || matcher.op === "=~")) {
        // Plain alternatives only (a|b|c); anything fancier is not checked.
        const alternatives = /^[\w|-]+$/.test(matcher.value) ? matcher.value.split("|") : [];
        for (const job of alternatives) {
          if (!jobs.includes(job))
            problems.push(`job "${job}" is not a scrape job of prometheus.yml (${jobs.join(", ")})`);
        }
      }
    }
  }
  for (const g of uses.groupings) {
    const inScope = [...labelsAt].filter(([at]) => at > g.from && at < g.to).map(([, labels]) => labels);
    for (const label of g.labels) {
      // by/without: every series aggregated has the label; on/ignoring: at least one side has it.
      const ok =
        g.keyword === "by" || g.keyword === "without"
          ? inScope.every((labels) => labels.includes(label))
          : inScope.some((labels) => labels.includes(label));
      if (!ok) problems.push(`${g.keyword} (${label}): not a label of the series it groups`);
    }
  }
  return problems;
}
