// The Prometheus and Alertmanager configuration as the tests read and check it: every alerting
// and recording rule of the files prometheus.yml loads, the series the recording rules make (so
// that expressions using them are checked like those using exported metrics, see promql.ts's
// checkExpr), and Debian's promtool and amtool run on them.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { METRICS } from "../../services/shared/src/telemetry/metric-names.js";
import { analyze } from "./promql.js";
import { loadYaml } from "./yaml.js";

const root = fileURLToPath(new URL("../../", import.meta.url));

/**
 * Runs a Prometheus tool (`promtool`, `amtool`) from the repository root and returns its exit
 * status and output; fails the test, naming the Debian package, when it is not installed.
 */
export function prometheusTool(
  command: "promtool" | "amtool",
  ...args: string[]
): { status: number | null; output: string } {
  const r = spawnSync(command, args, { cwd: root, encoding: "utf8" });
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === "ENOENT") {
    const pkg = command === "promtool" ? "prometheus" : "prometheus-alertmanager";
    assert.fail(
      `${command} is not on the PATH: install it with \`apt-get install ${pkg}\` (Debian/Ubuntu; .ci/run does)`,
    );
  }
  assert.ifError(r.error);
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

/** One rule of a rule file, with the file and group it is in. */
export interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  file: string;
  group: string;
}

/** The rule files of infra/prometheus/prometheus.yml, as paths from the repository root. */
export function ruleFiles(): string[] {
  const [config] = loadYaml("infra/prometheus/prometheus.yml") as [{ rule_files: string[] }];
  return config.rule_files.map((f) => `infra/prometheus/${f}`);
}

/** Every rule of every rule file, in file order. */
export function allRules(): Rule[] {
  return ruleFiles().flatMap((file) => {
    const [doc] = loadYaml(file) as [{ groups: { name: string; rules: Omit<Rule, "file" | "group">[] }[] }];
    return doc.groups.flatMap((g) => g.rules.map((r) => ({ ...r, file, group: g.name })));
  });
}

/**
 * The series each recording rule makes, with their labels: those its `by` clauses keep plus
 * the rule's own. (The rules here aggregate with `sum` or `sum by`, so that is all they keep.)
 */
export function recordedSeries(rules: readonly Rule[] = allRules()): Record<string, string[]> {
  const series: Record<string, string[]> = {};
  for (const rule of rules) {
    if (!rule.record) continue;
    const kept = analyze(rule.expr)
      .groupings.filter((g) => g.keyword === "by")
      .flatMap((g) => g.labels);
    series[rule.record] = [...new Set([...kept, ...Object.keys(rule.labels ?? {})])];
  }
  return series;
}

/**
 * The labels an alert's series carry besides `alertname`: those of its `by` clauses when it
 * aggregates by some, none when it aggregates everything away, else its series' own (job,
 * instance and the metric's labels), plus the rule's labels. (histogram_quantile's `le` is
 * dropped.) Enough for the rules here, which Alertmanager's `equal` lists are checked against.
 */
export function alertLabels(rule: Rule): string[] {
  const uses = analyze(rule.expr);
  const by = uses.groupings.filter((g) => g.keyword === "by").flatMap((g) => g.labels);
  const own = Object.keys(rule.labels ?? {});
  if (by.length > 0) return [...new Set([...by.filter((l) => l !== "le"), ...own])];
  if (/\b(sum|min|max|avg|count)\s*\(/.test(rule.expr)) return own;
  const metricLabels = uses.metrics.flatMap((m) => {
    const spec: { labels: readonly string[] } | undefined = (
      METRICS as Readonly<Record<string, { labels: readonly string[] }>>
    )[m.name];
    return ["job", "instance", ...(spec?.labels ?? [])];
  });
  return [...new Set([...metricLabels, ...own])];
}
