// A real Prometheus (Debian's) scraping a running mesh with our alert rules: when a shard's
// owner dies holding its lease while the shard's timers are due, ShardLagHigh fires through
// the Prometheus HTTP API, naming the shard and its owner; once the lease expires and another
// dispatcher takes the shard over and fires them, the alert clears.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { CreateTimerRequestSchema } from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { shardOf } from "../../services/shared/src/shard.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startHttpReceiver } from "../support/receivers.js";
import { freePort, waitFor } from "../support/wait.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const SHARDS = 16;
let mesh: TestMesh;
let receiver: Awaited<ReturnType<typeof startHttpReceiver>>;
let prometheus: ChildProcess | undefined;
let dir: string;

before(async () => {
  receiver = await startHttpReceiver();
  mesh = await startMesh({ dispatchers: 0, env: { SHARD_COUNT: String(SHARDS) } });
  // d1 holds its leases for a long time, so that when it dies its shards wait long enough
  // for the alert's threshold (15 s) and hold time (30 s).
  await mesh.addDispatcher("d1", { LEASE_TTL: "75s" });
  await mesh.addDispatcher("d2");
  dir = await mkdtemp(join(tmpdir(), "prom-e2e-"));
});
after(async () => {
  if (prometheus && prometheus.exitCode === null) {
    const exited = new Promise((r) => prometheus!.once("exit", r));
    prometheus.kill("SIGTERM");
    await exited;
  }
  await mesh?.[Symbol.asyncDispose]();
  await receiver?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

interface Alert {
  labels: Record<string, string>;
  state: string;
}

test("ShardLagHigh fires for a dead owner's lagging shard, then clears after takeover", {
  timeout: 240_000,
}, async () => {
  const owned = await waitFor(
    async () => {
      const { rows } = await mesh.db.pool.query(
        "SELECT shard, owner FROM shard_owners WHERE owner IS NOT NULL",
      );
      return rows.length === SHARDS &&
        rows.some((r) => r.owner === "d1") &&
        rows.some((r) => r.owner === "d2")
        ? rows
        : undefined;
    },
    20_000,
    "d1 and d2 to share the shards",
  );
  const shard = owned.find((r) => r.owner === "d1")!.shard as number;

  const port = await freePort();
  const config = join(dir, "prometheus.yml");
  await writeFile(
    config,
    [
      "global:",
      "  scrape_interval: 1s",
      "  evaluation_interval: 1s",
      "rule_files:",
      `  - ${join(root, "infra/prometheus/alerts.yml")}`,
      "scrape_configs:",
      "  - job_name: dispatcher",
      "    static_configs:",
      `      - targets: ["127.0.0.1:${mesh.dispatchers[0]!.httpPort}", "127.0.0.1:${mesh.dispatchers[1]!.httpPort}"]`,
      "",
    ].join("\n"),
  );
  prometheus = spawn(
    "prometheus",
    [
      `--config.file=${config}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
    ],
    { stdio: "ignore" },
  );
  prometheus.once("error", (err) =>
    assert.fail(`prometheus could not start (apt-get install prometheus): ${err.message}`),
  );
  const api = `http://127.0.0.1:${port}/api/v1`;
  await waitFor(async () => (await fetch(`${api}/targets`)).ok, 30_000, "prometheus to serve its API");

  // Timers in d1's shard, due in a moment; d1 dies before they are due.
  const ids: string[] = [];
  for (let i = 0; ids.length < 5; i++) if (shardOf("lag", `t${i}`, SHARDS) === shard) ids.push(`t${i}`);
  for (const id of ids) {
    await mesh.client.call(
      "createTimer",
      create(CreateTimerRequestSchema, {
        groupId: "lag",
        timerId: id,
        schedule: { case: "delay", value: durationFromMs(1_000) },
        callback: { target: { case: "http", value: { url: receiver.url, headers: {} } } },
      }),
    );
  }
  mesh.dispatchers[0]!.child.kill("SIGKILL");

  const alerts = async (): Promise<Alert[]> =>
    ((await (await fetch(`${api}/alerts`)).json()) as { data: { alerts: Alert[] } }).data.alerts;
  const lagAlert = (list: Alert[]) =>
    list.find((a) => a.labels.alertname === "ShardLagHigh" && a.labels.shard === String(shard));
  const firing = await waitFor(
    async () => {
      const a = lagAlert(await alerts());
      return a?.state === "firing" ? a : undefined;
    },
    120_000,
    `ShardLagHigh to fire for shard ${shard}`,
    500,
  );
  assert.equal(firing.labels.owner, "d1", "the alert names the dead owner");
  assert.equal(firing.labels.severity, "critical");
  assert.equal(
    receiver.received.filter((r) => r.groupId === "lag").length,
    0,
    "nothing fired while the lease was held",
  );

  // d1's lease expires, d2 takes the shard over, fires the timers, and the lag goes away.
  await waitFor(
    () =>
      new Set(receiver.received.filter((r) => r.groupId === "lag").map((r) => r.timerId)).size === ids.length,
    90_000,
    "d2 to fire the shard's timers",
  );
  await waitFor(async () => lagAlert(await alerts()) === undefined, 30_000, "ShardLagHigh to clear", 500);
});
