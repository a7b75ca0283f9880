// The Prometheus configuration, rules and dashboard queries, as Prometheus itself reads them:
// promtool checks the config and rule files (alerts.yml, slo-rules.yml), runs the rules' unit
// tests (infra/prometheus/tests/*.test.yml) and parses every dashboard query; and every alert
// has a test where it fires and one where it stays quiet, its labels and annotations, and a
// runbook section in infra/README.md that its runbook_url points at.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { allRules, prometheusTool, recordedSeries, ruleFiles } from "../support/prometheus-config.js";
import { checkExpr } from "../support/promql.js";
import { loadYaml } from "../support/yaml.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const promtool = (...args: string[]) => prometheusTool("promtool", ...args);
const testsDir = "infra/prometheus/tests";
const testFiles = () =>
  readdirSync(join(root, testsDir))
    .filter((f) => f.endsWith(".test.yml"))
    .sort()
    .map((f) => `${testsDir}/${f}`);

/** What a promtool unit-test file holds, as far as these checks read it. */
interface RuleTests {
  tests: {
    name?: string;
    alert_rule_test?: { alertname: string; exp_alerts?: unknown[] | null }[];
    promql_expr_test?: { expr: string }[];
  }[];
}
const ruleTests = () => testFiles().flatMap((f) => (loadYaml(f) as [RuleTests])[0].tests);

/** The anchor GitHub (and most Markdown renderers) give a heading. */
const anchorOf = (heading: string) =>
  heading
    .trim()
    .toLowerCase()
    .replace(/[^\w\- ]/g, "")
    .replace(/ /g, "-");

const alerts = () => allRules().filter((r) => r.alert);

test("prometheus.yml is a valid configuration loading every rule file", () => {
  const r = promtool("check", "config", "infra/prometheus/prometheus.yml");
  assert.equal(r.status, 0, r.output);
  assert.deepEqual(ruleFiles(), ["infra/prometheus/alerts.yml", "infra/prometheus/slo-rules.yml"]);
  assert.match(r.output, new RegExp(`SUCCESS: ${ruleFiles().length} rule files found`));
});

test("the rule files are valid", () => {
  for (const file of ruleFiles()) {
    const r = promtool("check", "rules", file);
    assert.equal(r.status, 0, r.output);
    assert.match(r.output, /SUCCESS: \d+ rules found/);
  }
});

test("every rule unit test passes", () => {
  const files = testFiles();
  assert.deepEqual(files, [
    `${testsDir}/alerts.test.yml`,
    `${testsDir}/slo-rules-long.test.yml`,
    `${testsDir}/slo-rules.test.yml`,
  ]);
  const r = promtool("test", "rules", ...files);
  assert.equal(r.status, 0, r.output);
  assert.equal(r.output.match(/SUCCESS/g)?.length, files.length, r.output);
});

test("every alert has a case where it fires and one where it stays quiet", () => {
  const cases = ruleTests().flatMap((t) =>
    (t.alert_rule_test ?? []).map((c) => ({ alert: c.alertname, fires: (c.exp_alerts ?? []).length > 0 })),
  );
  const names = alerts().map((r) => r.alert!);
  for (const alert of names) {
    assert.ok(
      cases.some((c) => c.alert === alert && c.fires),
      `no test case where ${alert} fires`,
    );
    assert.ok(
      cases.some((c) => c.alert === alert && !c.fires),
      `no test case where ${alert} stays quiet`,
    );
  }
  for (const c of cases) assert.ok(names.includes(c.alert), `a test case of unknown alert ${c.alert}`);
});

test("every recording rule is tested with expected values", () => {
  // Per family: sli:x:ratio_rate5m, ..._rate3d are one expression at different windows.
  const tested = ruleTests().flatMap((t) => (t.promql_expr_test ?? []).map((c) => c.expr));
  const families = new Set(
    allRules()
      .filter((r) => r.record)
      .map((r) => r.record!.replace(/\d+[mhd]$/, "")),
  );
  assert.ok(families.size >= 8, `only ${families.size} recording rule families`);
  for (const family of families) {
    assert.ok(
      tested.some((expr) => expr.includes(family)),
      `no promql_expr_test reads ${family}*`,
    );
  }
});

test("the recording rules' series are checked like exported metrics", () => {
  const recorded = recordedSeries();
  assert.deepEqual(recorded["sli:timer_fired_within_30s:ratio_rate5m"], [], "label-less");
  const jobs = ["timer", "dispatcher", "admin"];
  assert.deepEqual(checkExpr("slo:timer_fired_within_30s:burn_rate1h > 14.4", jobs, recorded), []);
  for (const [expr, problem] of [
    ["slo:timer_fired_within_30s:burn_rate7h > 1", /burn_rate7h is not in METRICS/],
    ['sli:api_call_within_500ms:ratio_rate1h{job="timer"}', /has no label job/],
    ["sum by (job) (slo:api_call_within_500ms:burn_rate5m)", /by \(job\)/],
  ] as const) {
    const problems = checkExpr(expr, jobs, recorded);
    assert.ok(
      problems.some((p) => problem.test(p)),
      `${expr} gave ${JSON.stringify(problems)}`,
    );
  }
});

test("every alert has a severity, a summary, a description and a runbook it links to", () => {
  assert.deepEqual(
    alerts()
      .map((r) => r.alert)
      .sort(),
    [
      "AdminServiceDown",
      "ApiLatencySLOFastBurn",
      "ApiLatencySLOSlowBurn",
      "CallbackFailureRateHigh",
      "DatabaseConnectionPoolExhaustion",
      "DatabaseConnectionPoolSaturated",
      "DispatcherClockSkew",
      "DispatcherDown",
      "HighTimerCreationFailureRate",
      "MeshMessagesDropped",
      "NatsDisconnected",
      "PausedGroupHasDueTimers",
      "RpcErrorRateHigh",
      "RpcLatencyHigh",
      "ShardLagHigh",
      "ShardsUnowned",
      "TimerExecutionBacklog",
      "TimerExecutionFailuresHigh",
      "TimerFireLatenessHigh",
      "TimerLoadAheadAboveRecentPeak",
      "TimerSLOFastBurn",
      "TimerSLOSlowBurn",
      "TimerServiceDown",
    ],
  );
  const infraReadme = readFileSync(join(root, "infra/README.md"), "utf8");
  const runbooks = infraReadme.slice(infraReadme.indexOf("\n## Alerts and runbooks\n"));
  const anchors = new Set([...runbooks.matchAll(/^### (.+)$/gm)].map((m) => anchorOf(m[1]!)));
  const readme = readFileSync(join(root, "README.md"), "utf8");
  const table = readme.slice(readme.indexOf("### Alerts: what each means and what to do"));
  for (const rule of alerts()) {
    const name = rule.alert!;
    assert.match(rule.labels?.severity ?? "", /^(critical|warning)$/, `${name} severity`);
    assert.equal(rule.labels?.service, "timer-service", `${name} service label`);
    for (const key of ["summary", "description", "runbook"]) {
      assert.ok((rule.annotations?.[key] ?? "").length > 0, `${name} has no ${key} annotation`);
    }
    // The link is the README section's, behind the optional base of the deployment.
    assert.equal(
      rule.annotations?.runbook_url,
      `{{ $externalLabels.runbook_base_url }}infra/README.md#${name.toLowerCase()}`,
      `${name} runbook_url`,
    );
    assert.ok(
      anchors.has(name.toLowerCase()),
      `infra/README.md has no "### ${name}" under "## Alerts and runbooks"`,
    );
    assert.match(table, new RegExp(`^\\| \`${name}\` \\|`, "m"), `README.md's alert table lacks ${name}`);
  }
});

test("every dashboard query is valid PromQL", () => {
  // promtool parses rule files only, so each query becomes a recording rule. Grafana's own
  // variables are replaced by what they stand for.
  const dir = join(root, "infra/grafana/dashboards");
  const rules: { record: string; expr: string }[] = [];
  const where: string[] = [];
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".json"))) {
    const dashboard = JSON.parse(readFileSync(join(dir, file), "utf8")) as {
      panels: { title: string; datasource?: { type?: string }; targets?: { expr?: string }[] }[];
    };
    // Loki panels (the Overview's logs) hold LogQL, not PromQL.
    for (const panel of dashboard.panels.filter(
      (p) => (p.datasource?.type ?? "prometheus") === "prometheus",
    )) {
      for (const target of panel.targets ?? []) {
        if (!target.expr) continue;
        const expr = target.expr.replace(/\$__rate_interval|\$__interval|\$__range/g, "5m");
        rules.push({ record: `dashboard:query:${rules.length}`, expr });
        where.push(`${file} "${panel.title}"`);
      }
    }
  }
  assert.ok(rules.length >= 30, `only ${rules.length} dashboard queries found`);
  const tmp = mkdtempSync(join(tmpdir(), "dashboards-promql-"));
  try {
    // JSON is YAML: no YAML writer needed.
    const file = join(tmp, "dashboard-queries.yml");
    writeFileSync(file, JSON.stringify({ groups: [{ name: "dashboards", rules }] }, null, 2));
    const r = promtool("check", "rules", file);
    const explained = r.output.replace(
      /dashboard:query:(\d+)/g,
      (m, i: string) => `${m} (${where[Number(i)]})`,
    );
    assert.equal(r.status, 0, explained);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
