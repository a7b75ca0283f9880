// The Grafana dashboards and the alert rules may use only the metrics the services export
// (services/shared/src/telemetry/metric-names.ts), with only those metrics' labels: a typo in a
// metric or label name would otherwise give an empty panel or an alert that can never fire, and
// nothing would say so. PromQL is read with the small tokenizer below, not a full parser: it
// knows which identifiers are functions, keywords, label names and metric names.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { METRICS } from "../../services/shared/src/telemetry/metric-names.js";
import { loadYaml } from "../support/yaml.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const dashboardsDir = join(root, "infra/grafana/dashboards");

// ------------------------------------------------------------------------------- the tokenizer

type Token = { kind: "ident" | "string" | "number" | "duration" | "var" | "punct"; text: string };

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
function tokenize(expr: string): Token[] {
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
interface MetricUse {
  name: string;
  at: number;
  matchers: { label: string; op: string; value: string }[];
}

/** What an expression uses: metric selectors, functions, and grouping clauses over token ranges. */
interface ExprUses {
  metrics: MetricUse[];
  functions: string[];
  groupings: { keyword: string; labels: string[]; from: number; to: number }[];
}

/** Reads the metrics, functions and grouping labels an expression uses. */
function analyze(expr: string): ExprUses {
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
const catalogue = METRICS as Record<string, MetricInfo>;

/** The labels a scraped series of this name has, or why the name is not exported. */
function seriesLabels(name: string): { labels: string[] } | { error: string } {
  if (name === "up") return { labels: [...TARGET_LABELS] };
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

/** Every problem with the metric names, labels, functions and job names an expression uses. */
function checkExpr(expr: string, jobs: readonly string[]): string[] {
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
    const found = seriesLabels(m.name);
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

// ---------------------------------------------------------------------------- what is checked

interface Panel {
  id?: number;
  type?: string;
  title?: string;
  datasource?: { type?: string; uid?: string };
  gridPos?: { h: number; w: number; x: number; y: number };
  targets?: { expr?: string; refId?: string; datasource?: { uid?: string } }[];
  panels?: Panel[];
}
interface Dashboard {
  uid?: string;
  title?: string;
  schemaVersion?: number;
  panels?: Panel[];
}

function dashboards(): { file: string; dashboard: Dashboard }[] {
  return readdirSync(dashboardsDir)
    .filter((f) => f.endsWith(".json"))
    .sort()
    .map((file) => ({
      file,
      dashboard: JSON.parse(readFileSync(join(dashboardsDir, file), "utf8")) as Dashboard,
    }));
}

function allPanels(panels: Panel[] = []): Panel[] {
  return panels.flatMap((p) => [p, ...allPanels(p.panels)]);
}

interface AlertRule {
  alert?: string;
  record?: string;
  expr: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

function alertRules(): AlertRule[] {
  const [doc] = loadYaml("infra/prometheus/alerts.yml") as [{ groups: { rules: AlertRule[] }[] }];
  return doc.groups.flatMap((g) => g.rules);
}

function scrapeJobs(): string[] {
  const [config] = loadYaml("infra/prometheus/prometheus.yml") as [
    { scrape_configs: { job_name: string }[] },
  ];
  return config.scrape_configs.map((c) => c.job_name);
}

/** Every PromQL expression of the dashboards and alert rules, with where it comes from. */
function allExpressions(): { where: string; expr: string }[] {
  const exprs: { where: string; expr: string }[] = [];
  for (const { file, dashboard } of dashboards()) {
    for (const panel of allPanels(dashboard.panels)) {
      for (const target of panel.targets ?? []) {
        if (target.expr) exprs.push({ where: `${file} "${panel.title}" ${target.refId}`, expr: target.expr });
      }
    }
  }
  for (const rule of alertRules())
    exprs.push({ where: `alerts.yml ${rule.alert ?? rule.record}`, expr: rule.expr });
  return exprs;
}

test("the tokenizer tells metrics from functions, keywords, labels and durations", () => {
  const uses = analyze(
    'histogram_quantile(0.99, sum by (job, le) (rate(timer_fire_lateness_seconds_bucket{job="dispatcher"}[5m] offset 1m)))' +
      " / on (job) group_left () (sum without (code) (timer_creation_failures_total) > bool 0) or vector(1) # timer_creations_total",
  );
  assert.deepEqual(
    uses.metrics.map((m) => m.name),
    ["timer_fire_lateness_seconds_bucket", "timer_creation_failures_total"],
  );
  assert.deepEqual(uses.functions, ["histogram_quantile", "rate", "vector"]);
  assert.deepEqual(
    uses.groupings.map((g) => [g.keyword, g.labels]),
    [
      ["by", ["job", "le"]],
      ["on", ["job"]],
      ["group_left", []],
      ["without", ["code"]],
    ],
  );
  assert.deepEqual(uses.metrics[0]!.matchers, [{ label: "job", op: "=", value: "dispatcher" }]);
  assert.deepEqual(
    analyze("sum(rate(callback_attempts_total[$__rate_interval])) by (transport)").groupings[0]!.labels,
    ["transport"],
  );
  assert.deepEqual(
    analyze('{__name__="dispatcher_members", job="dispatcher"}').metrics.map((m) => m.name),
    ["dispatcher_members"],
  );
});

test("the checks catch misspelt metrics, labels, functions and jobs", () => {
  const jobs = ["timer", "dispatcher", "admin"];
  const bad: [string, RegExp][] = [
    ["sum(rate(timer_creatons_total[5m]))", /timer_creatons_total is not in METRICS/],
    ["sum by (grop_id) (active_timers_total)", /by \(grop_id\)/],
    ['timer_shard_lag_seconds{shrd="1"}', /has no label shrd/],
    ["histogram_quantile(0.95, rate(database_query_duration_seconds[5m]))", /is a histogram/],
    ["histogram_quantile(0.95, sum by (le) (rate(database_query_duration_seconds_sum[5m])))", /by \(le\)/],
    ["sum by (operation) (timer_shard_lag_seconds)", /by \(operation\)/],
    [
      "histgram_quantile(0.5, sum by (le) (rate(timer_fire_lateness_seconds_bucket[5m])))",
      /unknown function histgram_quantile/,
    ],
    ['up{job="dispatchers"} == 0', /job "dispatchers"/],
    ["sum(dispatcher_owned_shard)", /dispatcher_owned_shard is not in METRICS/],
  ];
  for (const [expr, problem] of bad) {
    const problems = checkExpr(expr, jobs);
    assert.ok(
      problems.some((p) => problem.test(p)),
      `${expr} gave ${JSON.stringify(problems)}`,
    );
  }
  const good = [
    'sum by (job) (up{job=~"timer|dispatcher"})',
    'active_timers_total{group_id="not_a_metric"} offset 5m',
    "max by (shard, owner) (timer_shard_lag_seconds) > 15",
    "sum by (job, instance) (database_connections_active) / (sum by (job, instance) (database_connections_max) > 0)",
    "(max(max_over_time(timer_shard_count[1h])) or vector(1)) - (sum(dispatcher_owned_shards) or vector(0))",
  ];
  for (const expr of good) assert.deepEqual(checkExpr(expr, jobs), [], expr);
});

test("every metric and label in the dashboards and alert rules is one the services export", () => {
  const jobs = scrapeJobs();
  const exprs = allExpressions();
  assert.ok(exprs.length >= 30, `only ${exprs.length} expressions found`);
  const problems = exprs.flatMap(({ where, expr }) =>
    checkExpr(expr, jobs).map((p) => `${where}: ${p}\n    ${expr}`),
  );
  assert.deepEqual(problems, [], `\n${problems.join("\n")}`);
  // And together they cover the catalogue, so a metric nobody watches is a decision, not an accident.
  const base = (name: string) => (catalogue[name] ? name : name.replace(/_(bucket|sum|count)$/, ""));
  const used = new Set(exprs.flatMap(({ expr }) => analyze(expr).metrics.map((m) => base(m.name))));
  const unwatched = Object.keys(METRICS).filter((name) => !used.has(name));
  assert.deepEqual(unwatched, [], "metrics on no dashboard and in no alert");
});

test("every alert has a severity, a summary, a description and a runbook", () => {
  const rules = alertRules().filter((r) => r.alert);
  assert.deepEqual(rules.map((r) => r.alert).sort(), [
    "CallbackFailureRateHigh",
    "DatabaseConnectionPoolExhaustion",
    "DispatcherClockSkew",
    "DispatcherDown",
    "HighTimerCreationFailureRate",
    "MeshMessagesDropped",
    "ShardLagHigh",
    "ShardsUnowned",
    "TimerExecutionBacklog",
    "TimerFireLatenessHigh",
  ]);
  const readme = readFileSync(join(root, "infra/README.md"), "utf8");
  for (const rule of rules) {
    assert.match(rule.labels?.severity ?? "", /^(critical|warning)$/, `${rule.alert} severity`);
    for (const key of ["summary", "description", "runbook"]) {
      assert.ok((rule.annotations?.[key] ?? "").length > 0, `${rule.alert} has no ${key} annotation`);
    }
    // The runbook names a section of infra/README.md that exists.
    const anchor = /infra\/README\.md#([a-z0-9-]+)/.exec(rule.annotations!.runbook!)?.[1];
    assert.equal(anchor, rule.alert!.toLowerCase(), `${rule.alert} runbook link`);
    assert.match(
      readme,
      new RegExp(`^#+ ${rule.alert}$`, "m"),
      `infra/README.md has no section for ${rule.alert}`,
    );
  }
});

test("dashboards are provisionable and use the provisioned Prometheus", () => {
  const [datasources] = loadYaml("infra/grafana/provisioning/datasources/prometheus.yml") as [
    { datasources: { uid: string; type: string; url: string }[] },
  ];
  const prometheus = datasources.datasources.find((d) => d.type === "prometheus");
  assert.ok(prometheus, "no Prometheus datasource provisioned");
  assert.equal(prometheus.url, "http://prometheus:9090");
  const [providers] = loadYaml("infra/grafana/provisioning/dashboards/dashboards.yml") as [
    { providers: { type: string; options: { path: string } }[] },
  ];
  assert.deepEqual(
    providers.providers.map((p) => [p.type, p.options.path]),
    [["file", "/var/lib/grafana/dashboards"]],
  );

  const found = dashboards();
  assert.deepEqual(
    found.map(({ file, dashboard }) => [file, dashboard.title]),
    [
      ["database-performance.json", "Timer Service - Database Performance"],
      ["shards.json", "Timer Service - Shards"],
      ["timer-service-overview.json", "Timer Service - Overview"],
    ],
  );
  const uids = found.map(({ dashboard }) => dashboard.uid);
  assert.equal(new Set(uids).size, uids.length, "dashboard uids must be unique");
  for (const { file, dashboard } of found) {
    assert.match(dashboard.uid ?? "", /^[\w-]{1,40}$/, `${file} uid`);
    assert.ok((dashboard.schemaVersion ?? 0) >= 36, `${file} schemaVersion`);
    const panels = allPanels(dashboard.panels);
    assert.ok(panels.length > 0, `${file} has no panels`);
    const ids = panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, `${file}: panel ids must be unique`);
    for (const p of panels) {
      const where = `${file} "${p.title}"`;
      assert.ok(p.title, `${file}: panel ${p.id} has no title`);
      const g = p.gridPos;
      assert.ok(
        g && [g.h, g.w, g.x, g.y].every(Number.isInteger) && g.w > 0 && g.h > 0 && g.x + g.w <= 24,
        `${where} gridPos`,
      );
      if (p.type === "row") continue;
      assert.equal(p.datasource?.uid, prometheus.uid, `${where} datasource`);
      assert.ok((p.targets ?? []).length > 0, `${where} has no query`);
      for (const t of p.targets ?? []) {
        assert.ok(t.expr, `${where} target ${t.refId} has no expr`);
        if (t.datasource) assert.equal(t.datasource.uid, prometheus.uid, `${where} target datasource`);
      }
    }
    // Panels do not overlap.
    for (const [i, a] of panels.entries()) {
      for (const b of panels.slice(i + 1)) {
        const overlap =
          a.gridPos!.x < b.gridPos!.x + b.gridPos!.w &&
          b.gridPos!.x < a.gridPos!.x + a.gridPos!.w &&
          a.gridPos!.y < b.gridPos!.y + b.gridPos!.h &&
          b.gridPos!.y < a.gridPos!.y + a.gridPos!.h;
        assert.ok(!overlap, `${file}: "${a.title}" and "${b.title}" overlap`);
      }
    }
  }
  // The panels the operations document names are there.
  const titles = (file: string) =>
    allPanels(found.find((d) => d.file === file)!.dashboard.panels).map((p) => p.title);
  for (const title of ["Timer Creation Rate", "Timer Execution Success Rate", "Active Timers by Group"]) {
    assert.ok(titles("timer-service-overview.json").includes(title), `Overview lacks "${title}"`);
  }
  assert.ok(titles("database-performance.json").includes("Database Connection Pool"));
  assert.ok(titles("database-performance.json").some((t) => t?.startsWith("Query Performance")));
});
