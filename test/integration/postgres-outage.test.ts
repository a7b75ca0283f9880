// Postgres faults under a real mesh (a timer service and two dispatchers) on a Postgres cluster
// of this file's own (test/support/private-postgres.ts), which it crashes, hangs and blocks:
//
// - Postgres crashes (or hangs: every process SIGSTOPped) under a steady create-and-fire load
//   for longer than LEASE_TTL, then comes back: every create is either stored or answered with
//   a retryable error, every stored timer fires exactly once and never early, the services stay
//   up, and firing resumes within 5 s of Postgres answering again.
// - Postgres blocks the creates' INSERTs (a lock): creates whose callers gave up while they
//   waited for a batch are dropped, not stored when Postgres moves again; beyond
//   CREATE_QUEUE_MAX waiting creates, a create is refused at once.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type pg from "pg";
import {
  CallbackSchema,
  CreateTimerRequestSchema,
  TimerService,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { State } from "../../services/shared/src/timer-model.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startPrivatePostgres, type PrivatePostgres } from "../support/private-postgres.js";
import { startHttpReceiver, type Received } from "../support/receivers.js";
import type { ServiceProcess } from "../support/service-process.js";
import { waitFor } from "../support/wait.js";

const LEASE_TTL_MS = 3_000;
// Longer than LEASE_TTL: every dispatcher loses its leases while Postgres is away.
const OUTAGE_MS = 2 * LEASE_TTL_MS;
// The bound on how soon firing resumes once Postgres is back.
const RESUME_BOUND_MS = 5_000;
// The queue bound the blocked-INSERT test fills.
const CREATE_QUEUE_MAX = 50;

let pgServer: PrivatePostgres;
let mesh: TestMesh;
let receiver: Awaited<ReturnType<typeof startHttpReceiver>>;
let client: Client<typeof TimerService>;
const exits: string[] = [];

before(async () => {
  pgServer = await startPrivatePostgres();
  receiver = await startHttpReceiver();
  mesh = await startMesh({
    dispatchers: 2,
    databaseUrl: pgServer.url,
    dispatcherEnv: { LEASE_TTL: `${LEASE_TTL_MS}ms` },
    timerEnv: { CREATE_QUEUE_MAX: String(CREATE_QUEUE_MAX) },
  });
  for (const p of [mesh.timer, ...mesh.dispatchers]) {
    void p.exited.then((code) =>
      exits.push(
        `${p.name} on port ${p.grpcPort} exited (${code ?? p.child.signalCode}):\n${p.output().slice(-3000)}`,
      ),
    );
  }
  client = createClient(
    TimerService,
    createGrpcTransport({ baseUrl: `http://127.0.0.1:${mesh.timer.grpcPort}` }),
  );
});

after(async () => {
  await mesh?.[Symbol.asyncDispose]();
  await receiver?.close();
  await pgServer?.[Symbol.asyncDispose]();
});

function createReq(groupId: string, timerId: string, fireAtMs: number) {
  return create(CreateTimerRequestSchema, {
    groupId,
    timerId,
    schedule: { case: "fireAt", value: timestampFromMs(fireAtMs) },
    callback: create(CallbackSchema, { target: { case: "http", value: { url: receiver.url, headers: {} } } }),
  });
}

/** What a create was answered. */
interface Outcome {
  timerId: string;
  fireAtMs: number;
  code: Code | "OK";
  message: string;
}

async function createOnce(
  groupId: string,
  timerId: string,
  fireAtMs: number,
  timeoutMs = 10_000,
): Promise<Outcome> {
  try {
    await client.createTimer(createReq(groupId, timerId, fireAtMs), { timeoutMs });
    return { timerId, fireAtMs, code: "OK", message: "" };
  } catch (err) {
    const e = ConnectError.from(err);
    return { timerId, fireAtMs, code: e.code, message: e.rawMessage };
  }
}

function assertAlive(procs: ServiceProcess[], when: string): void {
  assert.deepEqual(exits, [], `no service may exit ${when}`);
  for (const p of procs)
    assert.ok(p.child.exitCode === null && p.child.signalCode === null, `${p.name} exited ${when}`);
}

async function stateCounts(pool: pg.Pool, groupId: string): Promise<Record<string, number>> {
  const { rows } = await pool.query<{ state: number; n: number }>(
    "SELECT state, count(*)::int AS n FROM timers WHERE group_id = $1 GROUP BY state",
    [groupId],
  );
  const names = new Map(Object.entries(State).map(([name, v]) => [v as number, name]));
  return Object.fromEntries(rows.map((r) => [names.get(r.state) ?? String(r.state), r.n]));
}

function countBy(items: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const i of items) out[i] = (out[i] ?? 0) + 1;
  return out;
}

function deliveriesOf(groupId: string): Received[] {
  return receiver.received.filter((r) => r.groupId === groupId);
}

/** Sessions of the timer service whose create INSERT is waiting for a lock. */
async function insertsWaitingForLock(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE application_name = 'timer' AND wait_event_type = 'Lock' AND query LIKE '%create_timers%'`,
  );
  return rows[0]!.n;
}

/** Holds a SHARE lock on `timers` (INSERTs and claims wait; reads go on) until release(). */
async function blockWrites(pool: pg.Pool): Promise<{ release(): Promise<void> }> {
  const c = await pool.connect();
  // The test may crash Postgres under it: that is expected, not an error of the test.
  c.on("error", () => {});
  await c.query("BEGIN");
  await c.query("LOCK TABLE timers IN SHARE MODE");
  return {
    async release() {
      await c.query("ROLLBACK").catch((err: unknown) => {
        // Gone with the server when the test crashed Postgres meanwhile; a failure otherwise.
        if (pgServer.running) throw err;
      });
      c.release(true);
    },
  };
}

/** Runs `fn` while a SHARE lock on `timers` blocks every INSERT. */
async function withWritesBlocked(pool: pg.Pool, fn: () => Promise<void>): Promise<void> {
  const lock = await blockWrites(pool);
  try {
    await fn();
  } finally {
    await lock.release();
  }
}

/** Waits until no create INSERT of the timer service is running. */
async function waitForBlockedInsertsToEnd(pool: pg.Pool): Promise<void> {
  await waitFor(
    async () =>
      (
        await pool.query(
          "SELECT 1 FROM pg_stat_activity WHERE application_name = 'timer' AND state = 'active' AND query LIKE '%create_timers%'",
        )
      ).rowCount === 0,
    10_000,
    "the blocked INSERTs to finish",
    50,
  );
}

/** A way for Postgres to go away and come back. */
interface PostgresFault {
  name: string;
  /** Takes Postgres away; returns when that began. */
  begin(): Promise<number>;
  /** Brings it back; returns when it answered again. */
  end(beganAt: number): Promise<number>;
  /** What a create may be answered while Postgres is away. */
  retryableCodes: Code[];
  /** A code some create must be answered with (the behaviour this fault is about). */
  expectCode: Code;
}

/**
 * A steady create-and-fire load through `fault`: every create is stored or refused with a
 * retryable code, every stored timer fires exactly once and never early, no service exits,
 * and firing resumes within RESUME_BOUND_MS of Postgres answering again.
 */
async function outageUnderLoad(group: string, fault: PostgresFault): Promise<void> {
  const pool = mesh.db.pool;
  const outcomes: Promise<Outcome>[] = [];
  let n = 0;
  let loading = true;
  // A steady load: 40 creates/s with caller-chosen ids, due 2-4 s ahead, so timers come due
  // before, during and after the outage.
  const load = (async () => {
    while (loading) {
      const id = `t-${String(n).padStart(5, "0")}`;
      outcomes.push(createOnce(group, id, Date.now() + 2_000 + (n % 20) * 100));
      n++;
      await new Promise((r) => setTimeout(r, 25));
    }
  })();
  let stoppedAt: number;
  let backAt: number;
  try {
    await waitFor(
      async () => deliveriesOf(group).length >= 40,
      20_000,
      "timers to fire under the load before the fault",
    );

    stoppedAt = await fault.begin();
    // The outage itself: Postgres stays away this long, whatever the services do meanwhile.
    await new Promise((r) => setTimeout(r, OUTAGE_MS));
    assertAlive([mesh.timer, ...mesh.dispatchers], `while Postgres is ${fault.name}`);
    backAt = await fault.end(stoppedAt);
    // The load runs on for a while after the outage (a duration, not a condition).
    await new Promise((r) => setTimeout(r, 6_000));
  } finally {
    loading = false;
    await load;
  }
  const answered = await Promise.all(outcomes);

  // Every create was stored (OK) or told why not, with a code that says "retry".
  const ok = answered.filter((o) => o.code === "OK");
  const failed = answered.filter((o) => o.code !== "OK");
  assert.ok(
    failed.some((o) => o.code === fault.expectCode),
    `while Postgres was ${fault.name}, some create must be answered ${Code[fault.expectCode]}; got ${JSON.stringify(countBy(failed.map((o) => Code[o.code as Code])))}`,
  );
  const badCodes = failed.filter((o) => !fault.retryableCodes.includes(o.code as Code));
  assert.deepEqual(
    badCodes.map((o) => `${o.timerId}: ${Code[o.code as Code]} ${o.message}`).slice(0, 10),
    [],
    `creates failed by the outage must be ${fault.retryableCodes.map((c) => Code[c]).join(" or ")} (retryable); ${badCodes.length} were not`,
  );
  // The server's own refusals say what to do (a DEADLINE_EXCEEDED is the client's own).
  for (const o of failed)
    if (o.code !== Code.DeadlineExceeded) assert.match(o.message, /Retry/, "the message says to retry");
  assert.ok(
    ok.some((o) => o.fireAtMs > backAt),
    "creates succeed again after the outage",
  );

  // A failed create may still have been stored (its commit raced the crash, or its caller
  // gave up while its INSERT was running): ask.
  const expected = new Map(ok.map((o) => [o.timerId, o.fireAtMs]));
  const notStored = new Set<string>();
  for (const o of failed) {
    const found = await waitFor(
      async () => {
        try {
          await client.getTimer({ groupId: group, timerId: o.timerId });
          return "stored";
        } catch (err) {
          if (ConnectError.from(err).code === Code.NotFound) return "absent";
          throw err;
        }
      },
      15_000,
      `GetTimer ${o.timerId}`,
      100,
    );
    if (found === "stored") expected.set(o.timerId, o.fireAtMs);
    else notStored.add(o.timerId);
  }

  // Every stored timer reaches SUCCEEDED (and with it, no claim is left to be re-delivered).
  let states: Record<string, number> = {};
  try {
    await waitFor(
      async () => {
        states = await stateCounts(pool, group);
        return states.Succeeded === expected.size;
      },
      60_000,
      "every stored timer to succeed",
      200,
    );
  } catch (err) {
    throw new Error(
      `${(err as Error).message}; states: ${JSON.stringify(states)}, expected ${expected.size}`,
      { cause: err },
    );
  }
  assertAlive([mesh.timer, ...mesh.dispatchers], "after the outage");

  const delivered = deliveriesOf(group);
  const counts = new Map<string, number>();
  for (const r of delivered) counts.set(r.timerId, (counts.get(r.timerId) ?? 0) + 1);
  const lost = [...expected.keys()].filter((id) => !counts.has(id));
  const twice = [...counts].filter(([, c]) => c > 1).map(([id, c]) => `${id}x${c}`);
  const unexpected = [...counts.keys()].filter((id) => !expected.has(id));
  const early = delivered
    .filter((r) => r.receivedAtMs < expected.get(r.timerId)!)
    .map((r) => `${r.timerId} ${expected.get(r.timerId)! - r.receivedAtMs}ms early`);
  const summary = `${answered.length} creates: ${ok.length} OK, ${failed.length} failed (${failed.length - notStored.size} of them stored anyway); ${delivered.length} deliveries`;
  assert.deepEqual(lost.slice(0, 10), [], `${lost.length} stored timers never fired; ${summary}`);
  assert.deepEqual(twice.slice(0, 10), [], `${twice.length} timers fired more than once; ${summary}`);
  assert.deepEqual(unexpected.slice(0, 10), [], `timers that were not stored fired; ${summary}`);
  assert.deepEqual(early.slice(0, 10), [], `${early.length} timers fired early; ${summary}`);

  // Firing resumes, both for the backlog (timers that came due while Postgres was away: the
  // first delivery after it returned) and for timers due after it returned (the first of
  // them, made by creates after the outage: create path and fire path both back).
  const backlog = [...expected.values()].filter((f) => f >= stoppedAt && f < backAt).length;
  assert.ok(backlog > 0, "timers came due during the outage");
  const firstAfter = Math.min(
    ...delivered.filter((r) => r.receivedAtMs >= backAt).map((r) => r.receivedAtMs),
  );
  const firstDueAfter = Math.min(
    ...delivered.filter((r) => expected.get(r.timerId)! >= backAt).map((r) => r.receivedAtMs),
  );
  const backlogResumeMs = firstAfter - backAt;
  const newResumeMs = firstDueAfter - backAt;
  const worstLate = Math.max(...delivered.map((r) => r.receivedAtMs - expected.get(r.timerId)!));
  console.log(
    `# ${summary}; outage ${backAt - stoppedAt} ms, ${backlog} timers due during it; after Postgres returned: first delivery ` +
      `${backlogResumeMs} ms, first timer due after it ${newResumeMs} ms; worst lateness ${worstLate} ms`,
  );
  assert.ok(
    backlogResumeMs <= RESUME_BOUND_MS,
    `the backlog began firing ${backlogResumeMs} ms after Postgres returned (bound ${RESUME_BOUND_MS} ms)`,
  );
  assert.ok(
    newResumeMs <= RESUME_BOUND_MS,
    `the first timer due after Postgres returned fired ${newResumeMs} ms after it (bound ${RESUME_BOUND_MS} ms)`,
  );
}

describe("Postgres faults", () => {
  test("Postgres crashes under load and comes back after LEASE_TTL: nothing lost, nothing twice, none early, firing resumes within 5 s", async () => {
    await outageUnderLoad("crash", {
      name: "down",
      async begin() {
        // Creates in flight when Postgres goes: their INSERTs wait on a lock, so the crash drops
        // their connections mid-statement ("Connection terminated unexpectedly").
        const lock = await blockWrites(mesh.db.pool);
        await waitFor(
          () => insertsWaitingForLock(mesh.db.pool),
          10_000,
          "a create INSERT to wait on the lock",
        );
        const at = Date.now();
        await pgServer.stop("immediate");
        await lock.release();
        return at;
      },
      async end(beganAt) {
        await pgServer.start();
        // Accepting connections again: the server's own log line, else start()'s (polled) check.
        return (pgServer.readyAtMs ?? 0) > beganAt ? pgServer.readyAtMs! : Date.now();
      },
      retryableCodes: [Code.Unavailable],
      expectCode: Code.Unavailable,
    });
  });

  test("Postgres hangs under load (every process SIGSTOPped) past LEASE_TTL: the create queue stays bounded; nothing lost, nothing twice, none early", async () => {
    await outageUnderLoad("hang", {
      name: "hung",
      async begin() {
        pgServer.pause();
        return Date.now();
      },
      async end() {
        pgServer.resume();
        return Date.now();
      },
      // Creates wait in the bounded queue (full: RESOURCE_EXHAUSTED), for a connection (UNAVAILABLE
      // after the pool's connect timeout), or past the caller's deadline.
      retryableCodes: [Code.Unavailable, Code.ResourceExhausted, Code.DeadlineExceeded],
      // Nothing leaves the create queue while Postgres hangs: once CREATE_QUEUE_MAX creates
      // wait, the next are refused at once instead of piling up in memory.
      expectCode: Code.ResourceExhausted,
    });
  });

  test("creates whose callers gave up while their INSERT was blocked are never stored", async () => {
    const group = "gave-up";
    const pool = mesh.db.pool;
    await waitFor(
      async () => (await createOnce("warm", `w-${Date.now()}`, Date.now() + 60_000)).code === "OK",
      20_000,
      "creates to work",
    );

    // Server-made ids (where a create stored after its caller gave up becomes a second timer
    // on retry), 1 s deadlines. The first ones take the batch slots and wait on the lock; the
    // rest wait in the queue until their deadline passes.
    await withWritesBlocked(pool, async () => {
      const gaveUp = Array.from({ length: 20 }, () => createOnce(group, "", Date.now() + 3_600_000, 1_000));
      await waitFor(() => insertsWaitingForLock(pool), 10_000, "create INSERTs to wait on the lock");
      const answers = await Promise.all(gaveUp);
      assert.deepEqual(
        [...new Set(answers.map((o) => Code[o.code as Code]))],
        ["DeadlineExceeded"],
        "each caller gave up at its deadline",
      );
    });
    await waitForBlockedInsertsToEnd(pool);
    await waitFor(
      async () => (await createOnce("warm", `w-${Date.now()}`, Date.now() + 60_000)).code === "OK",
      20_000,
      "creates to work again",
    );
    // Only the creates whose INSERT had started (one per batch slot: 4) can have been stored;
    // without dropping the others, all 20 would be, once Postgres moved.
    const { rows } = await pool.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM timers WHERE group_id = $1",
      [group],
    );
    assert.ok(
      rows[0]!.n <= 4,
      `${rows[0]!.n} of 20 creates whose callers gave up while waiting were stored later`,
    );
  });

  test("while the INSERTs are blocked, creates beyond CREATE_QUEUE_MAX are refused at once, naming it", async () => {
    const group = "queue-full";
    const pool = mesh.db.pool;
    const fireAtMs = Date.now() + 3_600_000;
    const done: Outcome[] = [];
    let all: Promise<Outcome[]> | undefined;
    await withWritesBlocked(pool, async () => {
      // 4 take the batch slots, CREATE_QUEUE_MAX wait, the rest are refused.
      const creates = Array.from({ length: 4 + CREATE_QUEUE_MAX + 10 }, (_, i) =>
        createOnce(group, `q-${i}`, fireAtMs, 60_000).then((o) => {
          done.push(o);
          return o;
        }),
      );
      all = Promise.all(creates);
      await waitFor(
        () => done.length >= 10,
        10_000,
        "creates beyond the queue bound to be answered while the INSERTs are blocked",
        50,
      );
      const answered = done.map((o) => `${o.timerId}: ${o.code === "OK" ? "OK" : Code[o.code]} ${o.message}`);
      assert.ok(
        done.every((o) => o.code === Code.ResourceExhausted),
        `answered while blocked: ${answered.slice(0, 3).join("; ")}`,
      );
      assert.match(done[0]!.message, new RegExp(`at most ${CREATE_QUEUE_MAX} \\(CREATE_QUEUE_MAX\\)`));
    });
    const answers = await all!;
    const stored = answers.filter((o) => o.code === "OK").length;
    const refused = answers.filter((o) => o.code === Code.ResourceExhausted).length;
    assert.equal(stored + refused, answers.length, "each create was stored or refused");
    assert.ok(
      stored >= CREATE_QUEUE_MAX,
      `the ${CREATE_QUEUE_MAX} queued creates were stored once Postgres moved (${stored})`,
    );
  });
});
