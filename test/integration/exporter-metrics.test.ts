// The exporter metrics the dashboards and alerts may use (test/support/exporter-metrics.ts) are
// ones the exporters really export:
// - Postgres: Debian's prometheus-postgres-exporter, scraped against a real database. Compose
//   runs the upstream image, whose names are the same (the upstream one drops the `server` label
//   Debian's 0.11 adds, and adds labels to pg_stat_activity).
// - NATS: prometheus-nats-exporter is not packaged; it turns every number of nats-server's /varz
//   into gnatsd_varz_<field>, so a real nats-server's /varz must have each field.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { stopChild } from "../../scripts/child-process.js";
import { createTestDatabase } from "../support/database.js";
import { EXPORTER_METRICS } from "../support/exporter-metrics.js";
import { freePort, waitFor } from "../support/wait.js";
import { natsInstallHint } from "../../scripts/nats-child.js";

const BINARY = "prometheus-postgres-exporter";

test("postgres-exporter exports every pg_* metric the dashboards may use, with the listed labels", async () => {
  const installed = spawnSync(BINARY, ["--version"], { encoding: "utf8" });
  assert.ok(
    !installed.error,
    `${BINARY} is not on the PATH: install it with \`apt-get install prometheus-postgres-exporter\` (.ci/run does)`,
  );
  await using db = await createTestDatabase("pgexp");
  // Something in pg_stat_activity and pg_locks for the database: an open transaction.
  const client = await db.pool.connect();
  await client.query("BEGIN; CREATE TABLE t (x int); INSERT INTO t VALUES (1)");

  const port = await freePort();
  const url = new URL(db.url);
  url.searchParams.set("sslmode", "disable");
  const child = spawn(BINARY, [`--web.listen-address=127.0.0.1:${port}`], {
    env: { PATH: process.env.PATH, DATA_SOURCE_NAME: url.toString() },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  try {
    const text = await waitFor(
      async () => {
        const r = await fetch(`http://127.0.0.1:${port}/metrics`);
        const body = await r.text();
        return /^pg_up 1$/m.test(body) && /^pg_stat_activity_count\{/m.test(body) ? body : undefined;
      },
      30_000,
      `${BINARY} to report pg_up 1 (stderr: ${stderr})`,
      200,
    );
    // Every series' labels, by metric name.
    const seen = new Map<string, Set<string>>();
    for (const m of text.matchAll(/^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? /gm)) {
      const labels = seen.get(m[1]!) ?? new Set<string>();
      for (const [, label] of (m[2] ?? "").matchAll(/(\w+)="/g)) labels.add(label!);
      seen.set(m[1]!, labels);
    }
    for (const [name, spec] of Object.entries(EXPORTER_METRICS.postgres)) {
      const labels = seen.get(name);
      assert.ok(labels, `${name} is not exported`);
      const listed: readonly string[] = spec.labels;
      const unlisted = [...labels].filter((l) => l !== "server" && !listed.includes(l));
      assert.deepEqual(unlisted, [], `${name}: labels not in exporter-metrics.ts`);
    }
  } finally {
    await client.query("ROLLBACK");
    client.release();
    await stopChild(child, [
      ["SIGTERM", 5_000],
      ["SIGKILL", 5_000],
    ]);
  }
});

test("nats-server's /varz has a number for every gnatsd_varz_* metric the dashboards may use", async () => {
  const [port, monitor] = [await freePort(), await freePort()];
  const child = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(port), "-m", String(monitor)], {
    stdio: ["ignore", "ignore", "ignore"],
  });
  child.on("error", () => {}); // reported below, by the missing /varz and the hint
  try {
    const varz = await waitFor(
      async () =>
        (await fetch(`http://127.0.0.1:${monitor}/varz`)).json() as Promise<Record<string, unknown>>,
      15_000,
      `nats-server's /varz (${natsInstallHint()})`,
      100,
    );
    for (const name of Object.keys(EXPORTER_METRICS.nats)) {
      const field = name.replace(/^gnatsd_varz_/, "");
      assert.equal(typeof varz[field], "number", `/varz has no number ${field} (for ${name})`);
    }
  } finally {
    await stopChild(child, [
      ["SIGTERM", 5_000],
      ["SIGKILL", 5_000],
    ]);
  }
});
