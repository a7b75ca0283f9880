// The Grafana dashboards and the alert rules may use only the metrics the services export
// (services/shared/src/telemetry/metric-names.ts), with only those metrics' labels: a typo in a
// metric or label name would otherwise give an empty panel or an alert that can never fire, and
// nothing would say so. PromQL is read with test/support/promql.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { METRICS } from "../../services/shared/src/telemetry/metric-names.js";
import { allRules, recordedSeries } from "../support/prometheus-config.js";
import { analyze, checkExpr } from "../support/promql.js";
import { loadYaml } from "../support/yaml.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const dashboardsDir = join(root, "infra/grafana/dashboards");

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
interface Variable {
  name: string;
  type: string;
  datasource?: { type?: string; uid?: string };
  query?: string | { query?: string };
}
interface Dashboard {
  uid?: string;
  title?: string;
  schemaVersion?: number;
  panels?: Panel[];
  templating?: { list?: Variable[] };
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

/** Panels that query Prometheus (PromQL); the others (the Loki logs panel) query other sources. */
const isPrometheusPanel = (p: Panel) =>
  p.type !== "row" && (p.datasource?.type ?? "prometheus") === "prometheus";

/** The Grafana datasources provisioned from infra/grafana/provisioning/datasources/*.yml. */
function provisionedDatasources(): { uid: string; type: string; url: string; file: string }[] {
  const dir = join(root, "infra/grafana/provisioning/datasources");
  return readdirSync(dir)
    .filter((f) => /\.ya?ml$/.test(f))
    .sort()
    .flatMap((file) => {
      const [doc] = loadYaml(`infra/grafana/provisioning/datasources/${file}`) as [
        { datasources: { uid: string; type: string; url: string }[] },
      ];
      return doc.datasources.map((d) => ({ ...d, file }));
    });
}

/** The PromQL of a query variable: `label_values(<selector>, <label>)` gives the selector. */
function variableQuery(v: Variable): { expr: string; label: string } | undefined {
  const text = typeof v.query === "string" ? v.query : v.query?.query;
  const m = /^label_values\((.*),\s*(\w+)\)$/.exec(text ?? "");
  return m ? { expr: m[1]!, label: m[2]! } : undefined;
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
    for (const panel of allPanels(dashboard.panels).filter(isPrometheusPanel)) {
      for (const target of panel.targets ?? []) {
        if (target.expr) exprs.push({ where: `${file} "${panel.title}" ${target.refId}`, expr: target.expr });
      }
    }
    for (const v of dashboard.templating?.list ?? []) {
      const q = variableQuery(v);
      if (q) exprs.push({ where: `${file} variable $${v.name}`, expr: q.expr });
    }
  }
  for (const rule of allRules())
    exprs.push({ where: `${rule.file} ${rule.alert ?? rule.record}`, expr: rule.expr });
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
  // Recording rules' series (slo-rules.yml) may be used like exported metrics.
  const recorded = recordedSeries();
  const problems = exprs.flatMap(({ where, expr }) =>
    checkExpr(expr, jobs, recorded).map((p) => `${where}: ${p}\n    ${expr}`),
  );
  assert.deepEqual(problems, [], `\n${problems.join("\n")}`);
  // And together they cover the catalogue, so a metric nobody watches is a decision, not an accident.
  const base = (name: string) => (name in METRICS ? name : name.replace(/_(bucket|sum|count)$/, ""));
  const used = new Set(exprs.flatMap(({ expr }) => analyze(expr).metrics.map((m) => base(m.name))));
  const unwatched = Object.keys(METRICS).filter((name) => !used.has(name));
  assert.deepEqual(unwatched, [], "metrics on no dashboard and in no alert");
});

// Each alert's labels, annotations, runbook and tests: test/unit/infra-prometheus.test.ts.

test("dashboards are provisionable and use the provisioned Prometheus", () => {
  const datasources = provisionedDatasources();
  const prometheus = datasources.find((d) => d.type === "prometheus");
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
      // Prometheus panels use the Prometheus datasource; others one provisioned of their type.
      const source: { uid: string } | undefined = isPrometheusPanel(p)
        ? prometheus
        : datasources.find((d) => d.uid === p.datasource?.uid && d.type === p.datasource?.type);
      assert.ok(source, `${where}: datasource ${JSON.stringify(p.datasource)} is not provisioned`);
      assert.equal(p.datasource?.uid, source.uid, `${where} datasource`);
      assert.ok((p.targets ?? []).length > 0, `${where} has no query`);
      for (const t of p.targets ?? []) {
        assert.ok(t.expr, `${where} target ${t.refId} has no expr`);
        if (t.datasource) assert.equal(t.datasource.uid, source.uid, `${where} target datasource`);
      }
    }
    // Every $variable a query uses is defined (Grafana's own $__ ones aside), and every
    // dashboard can narrow its per-process panels to some instances.
    const defined = new Set((dashboard.templating?.list ?? []).map((v) => v.name));
    for (const p of panels) {
      for (const t of p.targets ?? []) {
        for (const [, name] of (t.expr ?? "").matchAll(/\$\{?(\w+)/g)) {
          if (!name!.startsWith("__"))
            assert.ok(defined.has(name!), `${file} "${p.title}" uses $${name}, not defined`);
        }
      }
    }
    const instance = (dashboard.templating?.list ?? []).find((v) => v.name === "instance");
    assert.equal(
      variableQuery(instance ?? { name: "", type: "" })?.label,
      "instance",
      `${file} $instance variable`,
    );
    assert.ok(
      panels.some((p) => (p.targets ?? []).some((t) => t.expr?.includes('instance=~"$instance"'))),
      `${file}: no panel uses $instance`,
    );
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
  // The runtime, delivery, Postgres and NATS panels of issue 12, and the logs of a trace.
  for (const title of [
    "Callback Duration p50 / p99 by Transport",
    "Event Loop Delay p99",
    "Resident Memory (RSS)",
    "V8 Heap Used",
    "CPU",
    "GC Time",
    "NATS Messages",
  ]) {
    assert.ok(titles("timer-service-overview.json").includes(title), `Overview lacks "${title}"`);
  }
  for (const title of ["Callers Waiting for a Connection", "Postgres Up", "Server Connections by State"]) {
    assert.ok(titles("database-performance.json").includes(title), `Database lacks "${title}"`);
  }
  const overview = found.find((d) => d.file === "timer-service-overview.json")!.dashboard;
  const logs = allPanels(overview.panels).find((p) => p.type === "logs");
  assert.equal(logs?.datasource?.type, "loki", "the Overview has a Loki logs panel");
  assert.ok(
    logs.targets?.some((t) => t.expr?.includes('"$trace_id"')),
    "the logs panel filters by the $trace_id variable",
  );
  assert.equal(
    overview.templating?.list?.find((v) => v.name === "trace_id")?.type,
    "textbox",
    "$trace_id is a textbox to paste a trace id into",
  );
  assert.ok(titles("database-performance.json").some((t) => t?.startsWith("Query Performance")));
});
