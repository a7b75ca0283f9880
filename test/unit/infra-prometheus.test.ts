// The Prometheus configuration, alert rules and dashboard queries, as Prometheus itself reads
// them: promtool checks the config and rules, runs the rules' unit tests
// (infra/prometheus/tests/alerts.test.yml), and parses every dashboard query.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../", import.meta.url));

/** Runs promtool from the repository root; fails the test when it is not installed. */
function promtool(...args: string[]): { status: number | null; output: string } {
  const r = spawnSync("promtool", args, { cwd: root, encoding: "utf8" });
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === "ENOENT") {
    assert.fail(
      "promtool is not on the PATH: install it with `apt-get install prometheus` (Debian/Ubuntu; .ci/run does)",
    );
  }
  assert.ifError(r.error);
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

test("prometheus.yml is a valid configuration", () => {
  const r = promtool("check", "config", "infra/prometheus/prometheus.yml");
  assert.equal(r.status, 0, r.output);
  assert.match(r.output, /SUCCESS: 1 rule files found/);
});

test("alerts.yml is valid", () => {
  const r = promtool("check", "rules", "infra/prometheus/alerts.yml");
  assert.equal(r.status, 0, r.output);
  assert.match(r.output, /SUCCESS: \d+ rules found/);
});

test("every alert fires and stays quiet where its unit tests say", () => {
  const r = promtool("test", "rules", "infra/prometheus/tests/alerts.test.yml");
  assert.equal(r.status, 0, r.output);
  assert.match(r.output, /SUCCESS/);

  // Each alert has a case where it fires and one where it does not. The files are read with
  // promtool's own YAML subset in mind: one `alert:` / `alertname:` per line.
  const rules = readFileSync(join(root, "infra/prometheus/alerts.yml"), "utf8");
  const alerts = [...rules.matchAll(/^\s*- alert: (\w+)$/gm)].map((m) => m[1]!);
  assert.ok(alerts.length >= 8, `only ${alerts.length} alerts found`);
  const tests = readFileSync(join(root, "infra/prometheus/tests/alerts.test.yml"), "utf8");
  const cases = [...tests.matchAll(/^\s*alertname: (\w+)\n\s*exp_alerts:( \[\])?$/gm)].map((m) => ({
    alert: m[1]!,
    fires: !m[2],
  }));
  for (const alert of alerts) {
    assert.ok(
      cases.some((c) => c.alert === alert && c.fires),
      `no test case where ${alert} fires`,
    );
    assert.ok(
      cases.some((c) => c.alert === alert && !c.fires),
      `no test case where ${alert} stays quiet`,
    );
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
      panels: { title: string; targets?: { expr?: string }[] }[];
    };
    for (const panel of dashboard.panels) {
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
