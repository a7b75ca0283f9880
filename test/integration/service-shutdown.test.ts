// SIGTERM with a grpc.health.v1.Health/Watch stream open (what a Kubernetes-style health
// checker or a service mesh keeps): the watcher hears NOT_SERVING and its stream ends, the
// dispatcher hands its shards over and records the deliveries in flight, and the process exits 0.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../../services/shared/src/gen/grpc/health/v1/health_pb.js";
import { State } from "../../services/shared/src/timer-model.js";
import { startMesh } from "../support/mesh.js";
import { startHttpReceiver } from "../support/receivers.js";
import type { ServiceProcess } from "../support/service-process.js";
import { httpTimerAt } from "../support/timer-client.js";
import { waitFor } from "../support/wait.js";

/** Opens a Watch stream on the whole server; `result` settles when the stream ends. */
function watchHealth(s: ServiceProcess) {
  const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${s.grpcPort}` }));
  const statuses: ServingStatus[] = [];
  const result = (async () => {
    for await (const r of health.watch({ service: "" })) statuses.push(r.status);
  })().then(
    () => ({ ended: "cleanly" as const }),
    (err: unknown) => ({ ended: "with an error" as const, err }),
  );
  return { statuses, result };
}

/** SIGTERM; asserts exit 0, and that the watcher heard NOT_SERVING and its stream ended cleanly. */
async function stopWatched(s: ServiceProcess, watch: ReturnType<typeof watchHealth>): Promise<void> {
  // Generous: SHUTDOWN_TIMEOUT (15 s) bounds the wait for deliveries; the deadline that exits 1 comes later.
  const code = await s.stop("SIGTERM", 60_000);
  assert.equal(code, 0, `${s.name} should exit 0 on SIGTERM; output:\n${s.output().slice(-3000)}`);
  const result = await watch.result;
  assert.equal(
    result.ended,
    "cleanly",
    `the Watch stream should end before the process does: ${String((result as { err?: unknown }).err)}`,
  );
  assert.deepEqual(
    watch.statuses.slice(-1),
    [ServingStatus.NOT_SERVING],
    `the watcher hears NOT_SERVING last; heard ${watch.statuses.map((x) => ServingStatus[x]).join(", ")}`,
  );
}

describe("SIGTERM with a health Watch stream open", () => {
  test("a dispatcher with deliveries in flight hands its shards over, records them, and exits 0", async () => {
    await using mesh = await startMesh({ dispatchers: 1 });
    // Slower than a delivery takes to leave, well within CALLBACK_TIMEOUT and SHUTDOWN_TIMEOUT.
    await using rx = await startHttpReceiver(() => new Promise((r) => setTimeout(() => r(200), 3_000)));
    const d1 = mesh.dispatchers[0]!;
    const watch = watchHealth(d1);
    await waitFor(
      () => watch.statuses.includes(ServingStatus.SERVING),
      30_000,
      "the watcher to hear SERVING",
    );

    const n = 20;
    const fireAtMs = Date.now() + 500;
    for (let i = 0; i < n; i++) {
      const res = await mesh.client.call("createTimer", httpTimerAt("shutdown", `t-${i}`, fireAtMs, rx.url));
      assert.equal(res.created, true);
    }
    // Every delivery has reached the receiver, none answered yet: all in flight.
    await waitFor(() => rx.received.length === n, 30_000, `${n} deliveries to be in flight`);

    await stopWatched(d1, watch);
    const { rows: states } = await mesh.db.pool.query<{ state: number; n: number }>(
      "SELECT state, count(*)::int AS n FROM timers WHERE group_id = 'shutdown' GROUP BY state",
    );
    assert.deepEqual(
      states,
      [{ state: State.Succeeded, n }],
      "the deliveries in flight are recorded, none left FIRING",
    );
    const { rows: held } = await mesh.db.pool.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM shard_leases WHERE owner = 'd1'",
    );
    assert.equal(held[0]!.n, 0, "the dispatcher released its shards");
  });

  test("the timer service exits 0", async () => {
    await using mesh = await startMesh({ dispatchers: 0 });
    const watch = watchHealth(mesh.timer);
    await waitFor(
      () => watch.statuses.includes(ServingStatus.SERVING),
      30_000,
      "the watcher to hear SERVING",
    );
    await stopWatched(mesh.timer, watch);
  });
});
