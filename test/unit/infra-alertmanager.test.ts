// The Alertmanager configuration (infra/alertmanager/alertmanager.yml) as Alertmanager reads it:
// amtool checks it, every alert of the rules routes by its severity (critical pages, warning
// opens a ticket), and every inhibit rule names alerts that exist and labels that both sides
// carry, so that it can match. That the inhibitions hold back what they should, live, is
// test/integration/prometheus-alerts.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { alertLabels, allRules, prometheusTool } from "../support/prometheus-config.js";
import { loadYaml } from "../support/yaml.js";

const CONFIG = "infra/alertmanager/alertmanager.yml";
const amtool = (...args: string[]) => prometheusTool("amtool", ...args);

interface InhibitRule {
  source_matchers: string[];
  target_matchers: string[];
  equal?: string[];
}

/** The alert names an `alertname="A"` or `alertname=~"A|B"` matcher picks. */
function alertNames(matchers: readonly string[]): string[] {
  const m = matchers.map((x) => /^alertname=~?"([\w|]+)"$/.exec(x)).find((x) => x !== null);
  assert.ok(m, `no alertname matcher in ${JSON.stringify(matchers)}`);
  return m[1]!.split("|");
}

test("alertmanager.yml passes amtool check-config", () => {
  const r = amtool("check-config", CONFIG);
  assert.equal(r.status, 0, r.output);
  assert.match(r.output, /SUCCESS/);
  assert.match(r.output, /2 receivers/);
});

test("every alert routes by its severity: critical to the page receiver, warning to the ticket one", () => {
  const receiverOf = { critical: "page", warning: "ticket" } as const;
  for (const rule of allRules().filter((r) => r.alert)) {
    const severity = rule.labels?.severity as keyof typeof receiverOf;
    const labels = Object.entries({ alertname: rule.alert!, ...rule.labels }).map(([k, v]) => `${k}=${v}`);
    const r = amtool("config", "routes", "test", `--config.file=${CONFIG}`, ...labels);
    assert.equal(r.status, 0, r.output);
    assert.match(
      r.output,
      new RegExp(`^${receiverOf[severity]}$`, "m"),
      `${rule.alert} (${severity}): ${r.output}`,
    );
  }
  // Both receivers deliver somewhere.
  const [config] = loadYaml(CONFIG) as [
    { receivers: { name: string; webhook_configs?: { url: string }[] }[] },
  ];
  for (const receiver of config.receivers) {
    assert.match(receiver.webhook_configs?.[0]?.url ?? "", /^http:\/\/alert-webhook:9095\//, receiver.name);
  }
});

test("every inhibit rule names existing alerts and labels both sides carry", () => {
  const [config] = loadYaml(CONFIG) as [{ inhibit_rules: InhibitRule[] }];
  const alerts = new Map(allRules().flatMap((r) => (r.alert ? [[r.alert, r] as const] : [])));
  assert.ok(config.inhibit_rules.length >= 4, "inhibit rules");
  for (const rule of config.inhibit_rules) {
    const sides = [...alertNames(rule.source_matchers), ...alertNames(rule.target_matchers)];
    for (const name of sides) assert.ok(alerts.has(name), `inhibit rule names unknown alert ${name}`);
    // `system` and `cluster` are external labels Prometheus adds to every alert it sends.
    const equal = (rule.equal ?? []).filter((l) => l !== "system" && l !== "cluster");
    for (const name of sides) {
      const labels = alertLabels(alerts.get(name)!);
      for (const label of equal) {
        assert.ok(
          labels.includes(label),
          `${name} has no label ${label} to match on (it has ${labels.join(", ")})`,
        );
      }
    }
  }
  // The crash of one dispatcher pages once: DispatcherDown holds back the symptoms.
  const fromDown = config.inhibit_rules.filter((r) =>
    alertNames(r.source_matchers).includes("DispatcherDown"),
  );
  assert.deepEqual(fromDown.flatMap((r) => alertNames(r.target_matchers)).sort(), [
    "ShardLagHigh",
    "ShardsUnowned",
    "TimerFireLatenessHigh",
    "TimerSLOSlowBurn",
  ]);
  assert.equal(alerts.get("DispatcherDown")?.labels?.severity, "critical", "DispatcherDown is the page");
});
