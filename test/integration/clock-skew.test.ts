// The database clock is the clock. Two dispatchers run under libfaketime, one with its clock
// 2 s ahead of Postgres's and this test's, one 2 s behind: every timer still fires never early
// by the receiver's clock, and on time, because dispatchers schedule by Postgres's clock.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { CreateTimerRequestSchema } from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startHttpReceiver } from "../support/receivers.js";
import { waitFor } from "../support/wait.js";
import type { ServiceProcess } from "../support/service-process.js";

// Debian's libfaketime (package faketime; .ci/run installs it).
const LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const TIMERS = 1_000;

let mesh: TestMesh;
let receiver: Awaited<ReturnType<typeof startHttpReceiver>>;
let ahead: ServiceProcess;
let behind: ServiceProcess;

/** Environment that runs a process with its clocks shifted by `offset` (libfaketime syntax, e.g. "+2s"). */
function skewed(offset: string): Record<string, string> {
  return { LD_PRELOAD: LIBFAKETIME, FAKETIME: offset };
}

before(async () => {
  assert.ok(existsSync(LIBFAKETIME), `${LIBFAKETIME} is missing: apt-get install faketime`);
  receiver = await startHttpReceiver();
  mesh = await startMesh({ dispatchers: 0 });
  ahead = await mesh.addDispatcher("ahead", skewed("+2s"));
  behind = await mesh.addDispatcher("behind", skewed("-2s"));
});

after(async () => {
  await mesh?.[Symbol.asyncDispose]();
  await receiver?.close();
});

async function clockOffsetSeconds(p: ServiceProcess): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${p.httpPort}/metrics`)).text();
  const m = /^dispatcher_clock_offset_seconds(?:\{[^}]*\})? (\S+)$/m.exec(text);
  return m ? Number(m[1]) : undefined;
}

test("dispatchers 2 s ahead and 2 s behind fire 1,000 timers never early, p99 lateness within 100 ms, and export their offset", async () => {
  // The skew is real: each dispatcher measured its own (this machine's Postgres is the reference).
  const offAhead = await waitFor(
    () => clockOffsetSeconds(ahead),
    10_000,
    "the ahead dispatcher's clock offset",
  );
  const offBehind = await waitFor(
    () => clockOffsetSeconds(behind),
    10_000,
    "the behind dispatcher's clock offset",
  );
  assert.ok(Math.abs(offAhead - 2) < 0.25, `ahead dispatcher measured ${offAhead} s`);
  assert.ok(Math.abs(offBehind + 2) < 0.25, `behind dispatcher measured ${offBehind} s`);
  await waitFor(
    async () => {
      const { rows } = await mesh.db.pool.query<{ owner: string }>(
        "SELECT DISTINCT owner FROM shard_owners WHERE owner IS NOT NULL",
      );
      return rows.length === 2;
    },
    20_000,
    "both dispatchers to own shards",
  );

  const start = Date.now() + 5_000;
  const spanMs = 10_000;
  const ids = Array.from({ length: TIMERS }, (_, i) => `t${i}`);
  for (let i = 0; i < ids.length; i += 64) {
    await Promise.all(
      ids.slice(i, i + 64).map((id, j) =>
        mesh.client.call(
          "createTimer",
          create(CreateTimerRequestSchema, {
            groupId: "skew",
            timerId: id,
            schedule: {
              case: "fireAt",
              value: timestampFromMs(start + Math.floor(((i + j) * spanMs) / TIMERS)),
            },
            callback: { target: { case: "http", value: { url: receiver.url, headers: {} } } },
          }),
        ),
      ),
    );
  }
  assert.ok(
    Date.now() < start,
    "every timer was created before the first is due (the test measures firing, not creating)",
  );
  await waitFor(
    () => new Set(receiver.received.map((r) => r.timerId)).size === TIMERS,
    spanMs + 30_000,
    "every timer to arrive",
  );

  assert.equal(receiver.received.length, TIMERS, "each timer arrived once");
  const early = receiver.received.filter((r) => r.receivedAtMs < r.fireAtMs);
  assert.deepEqual(
    early.map((r) => `${r.timerId} ${r.fireAtMs - r.receivedAtMs} ms early`),
    [],
  );
  const lateness = receiver.received.map((r) => r.receivedAtMs - r.fireAtMs).sort((a, b) => a - b);
  const p = (q: number) => lateness[Math.min(lateness.length - 1, Math.floor(q * lateness.length))]!;
  console.log(
    `# lateness with clocks 2 s ahead and 2 s behind: p50 ${p(0.5)} ms, p99 ${p(0.99)} ms, max ${p(1)} ms`,
  );
  assert.ok(p(0.99) <= 100, `p99 lateness ${p(0.99)} ms`);
  const { rows } = await mesh.db.pool.query<{ dispatcher_id: string; n: number }>(
    "SELECT dispatcher_id, count(*)::int AS n FROM timer_attempts WHERE group_id = 'skew' GROUP BY dispatcher_id ORDER BY 1",
  );
  assert.deepEqual(
    rows.map((r) => r.dispatcher_id),
    ["ahead", "behind"],
    "both skewed dispatchers fired timers",
  );
});
