// The bounded batching queue in front of the create INSERTs (services/timer/src/create-queue.ts),
// with a fake batch runner the test settles by hand: what waits, what is refused, what is dropped.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { CreateQueue } from "../../services/timer/src/create-queue.js";
import { loadTimerConfig } from "../../services/timer/src/config.js";

/** A batch runner whose batches stay in flight until the test settles them. */
function fakeRunner() {
  const batches: {
    items: string[];
    settle(results?: PromiseSettledResult<string>[]): void;
    fail(err: unknown): void;
  }[] = [];
  const run = (items: string[]) =>
    new Promise<PromiseSettledResult<string>[]>((resolve, reject) => {
      batches.push({
        items,
        settle: (results) =>
          resolve(results ?? items.map((i) => ({ status: "fulfilled", value: `stored ${i}` }))),
        fail: reject,
      });
    });
  return { run, batches };
}

/** Lets promise callbacks run. */
const tick = () => new Promise((r) => setImmediate(r));

async function rejection(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    return err;
  }
  assert.fail("expected a rejection");
}

test("items wait while every batch slot is busy, then go in batches of at most maxBatch, in order", async () => {
  const f = fakeRunner();
  const q = new CreateQueue(f.run, { maxQueued: 100, maxBatch: 3, maxConcurrentBatches: 1 });
  const first = q.add("a");
  assert.deepEqual(
    f.batches.map((b) => b.items),
    [["a"]],
  );
  const rest = ["b", "c", "d", "e"].map((x) => q.add(x));
  assert.equal(q.queued, 4);
  f.batches[0]!.settle();
  assert.equal(await first, "stored a");
  await tick();
  assert.deepEqual(
    f.batches.map((b) => b.items),
    [["a"], ["b", "c", "d"]],
  );
  f.batches[1]!.settle();
  await tick();
  assert.deepEqual(
    f.batches.map((b) => b.items),
    [["a"], ["b", "c", "d"], ["e"]],
  );
  f.batches[2]!.settle();
  assert.deepEqual(await Promise.all(rest), ["stored b", "stored c", "stored d", "stored e"]);
  assert.equal(q.running, 0);
});

test("a full queue refuses at once with RESOURCE_EXHAUSTED naming CREATE_QUEUE_MAX and its value; room frees as batches start", async () => {
  const f = fakeRunner();
  const q = new CreateQueue(f.run, { maxQueued: 2, maxBatch: 10, maxConcurrentBatches: 1 });
  const inFlight = q.add("a"); // takes the only batch slot: it does not count as waiting
  const waiting = [q.add("b"), q.add("c")];
  const err = await rejection(q.add("d"));
  assert.equal(err.code, Code.ResourceExhausted);
  assert.match(err.rawMessage, /at most 2 \(CREATE_QUEUE_MAX\)/);
  assert.match(err.rawMessage, /Retry with backoff/);
  f.batches[0]!.settle();
  await inFlight;
  await tick();
  // b and c left the queue for the next batch: there is room again.
  const e = q.add("e");
  f.batches[1]!.settle();
  await tick();
  f.batches[2]!.settle();
  assert.deepEqual(await Promise.all([...waiting, e]), ["stored b", "stored c", "stored e"]);
  assert.deepEqual(
    f.batches.flatMap((b) => b.items),
    ["a", "b", "c", "e"],
    "the refused create never reached the database",
  );
});

test("a create whose deadline passes while it waits is dropped, answered DEADLINE_EXCEEDED, and never run", async () => {
  const f = fakeRunner();
  const q = new CreateQueue(f.run, { maxQueued: 10, maxBatch: 10, maxConcurrentBatches: 1 });
  const a = q.add("a");
  const deadline = new AbortController();
  const b = q.add("b", deadline.signal);
  const c = q.add("c");
  // What connect's deadline signal aborts with.
  deadline.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
  const err = await rejection(b);
  assert.equal(err.code, Code.DeadlineExceeded);
  assert.match(err.rawMessage, /not stored/);
  assert.equal(q.queued, 1);
  f.batches[0]!.settle();
  await a;
  await tick();
  f.batches[1]!.settle();
  assert.equal(await c, "stored c");
  assert.deepEqual(
    f.batches.flatMap((b) => b.items),
    ["a", "c"],
  );
});

test("a cancelled caller's create is dropped as CANCELLED; an already aborted one never queues", async () => {
  const f = fakeRunner();
  const q = new CreateQueue(f.run, { maxQueued: 10, maxBatch: 10, maxConcurrentBatches: 1 });
  void q.add("a");
  const cancel = new AbortController();
  const b = q.add("b", cancel.signal);
  cancel.abort(); // a client's RST_STREAM: no ConnectError reason
  assert.equal((await rejection(b)).code, Code.Canceled);

  const gone = new AbortController();
  gone.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
  assert.equal((await rejection(q.add("c", gone.signal))).code, Code.DeadlineExceeded);
  assert.equal(q.queued, 0);
  f.batches[0]!.settle();
  await tick();
  assert.deepEqual(
    f.batches.flatMap((b) => b.items),
    ["a"],
  );
});

test("once its batch has started, a create's result is awaited even if its caller gives up", async () => {
  const f = fakeRunner();
  const q = new CreateQueue(f.run, { maxQueued: 10, maxBatch: 10, maxConcurrentBatches: 1 });
  const ac = new AbortController();
  const a = q.add("a", ac.signal);
  assert.deepEqual(f.batches[0]!.items, ["a"]);
  ac.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
  f.batches[0]!.settle();
  // The INSERT ran: the truth is what it stored, not that the caller left.
  assert.equal(await a, "stored a");
});

test("a failed batch rejects each of its items with the error; per-item failures reach only their item", async () => {
  const f = fakeRunner();
  const q = new CreateQueue(f.run, { maxQueued: 10, maxBatch: 10, maxConcurrentBatches: 1 });
  const a = q.add("a");
  const down = Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" });
  f.batches[0]!.fail(down);
  await assert.rejects(a, (e) => e === down);

  const b = q.add("b");
  const c = q.add("c");
  await tick();
  const vanished = new Error("vanished");
  f.batches[1]!.settle(); // b alone: c waited for the slot
  assert.equal(await b, "stored b");
  await tick();
  f.batches[2]!.settle([{ status: "rejected", reason: vanished }]);
  await assert.rejects(c, (e) => e === vanished);
  // The queue keeps working after failures.
  const d = q.add("d");
  f.batches[3]!.settle();
  assert.equal(await d, "stored d");
});

test("several batches run at once up to maxConcurrentBatches", async () => {
  const f = fakeRunner();
  const q = new CreateQueue(f.run, { maxQueued: 10, maxBatch: 1, maxConcurrentBatches: 2 });
  const all = ["a", "b", "c"].map((x) => q.add(x));
  assert.equal(q.running, 2);
  assert.equal(q.queued, 1);
  f.batches[1]!.settle();
  await tick();
  assert.equal(q.running, 2);
  assert.equal(q.queued, 0);
  f.batches[0]!.settle();
  f.batches[2]!.settle();
  assert.deepEqual(await Promise.all(all), ["stored a", "stored b", "stored c"]);
});

test("a batch formed already (CreateTimers) runs whole in a slot of its own, in turn with waiting items", async () => {
  const f = fakeRunner();
  const q = new CreateQueue(f.run, { maxQueued: 100, maxBatch: 10, maxConcurrentBatches: 1 });
  const a = q.add("a"); // takes the only slot
  const b = q.add("b");
  const jobs: { resolve(v: string): void }[] = [];
  const whole = q.runWhole(30, () => new Promise<string>((resolve) => jobs.push({ resolve })));
  const c = q.add("c");
  assert.equal(q.queued, 1 + 30 + 1, "the unit counts as its creates");
  f.batches[0]!.settle();
  await tick();
  // "b" goes alone: the unit behind it is not merged into a batch of items.
  assert.deepEqual(
    f.batches.map((x) => x.items),
    [["a"], ["b"]],
  );
  assert.equal(jobs.length, 0);
  f.batches[1]!.settle();
  await tick();
  assert.equal(jobs.length, 1, "the unit runs once the slot is free");
  assert.equal(q.running, 1);
  assert.equal(f.batches.length, 2, "and nothing runs beside it");
  jobs[0]!.resolve("stored 30");
  assert.equal(await whole, "stored 30");
  await tick();
  f.batches[2]!.settle();
  assert.deepEqual(await Promise.all([a, b, c]), ["stored a", "stored b", "stored c"]);
  assert.equal(q.running, 0);
});

test("a unit run whole is refused when the queue has no room for its creates, but not when nothing waits", async () => {
  const f = fakeRunner();
  const q = new CreateQueue(f.run, { maxQueued: 10, maxBatch: 10, maxConcurrentBatches: 1 });
  let ran = 0;
  const job = () => {
    ran++;
    return Promise.resolve("done");
  };
  // Nothing waits: a unit larger than the queue still gets its turn.
  assert.equal(await q.runWhole(50, job), "done");
  const first = q.add("a"); // in flight
  const waiting = q.add("b");
  const err = await rejection(q.runWhole(10, job));
  assert.equal(err.code, Code.ResourceExhausted);
  assert.match(err.message, /at most 10 \(CREATE_QUEUE_MAX\)/);
  assert.equal(ran, 1);
  f.batches[0]!.settle();
  await tick();
  f.batches[1]!.settle();
  assert.deepEqual(await Promise.all([first, waiting]), ["stored a", "stored b"]);
});

test("a unit whose caller gives up before it starts never runs; once started it is awaited", async () => {
  const f = fakeRunner();
  const q = new CreateQueue(f.run, { maxQueued: 100, maxBatch: 10, maxConcurrentBatches: 1 });
  const first = q.add("a");
  const ac = new AbortController();
  let ran = false;
  const whole = q.runWhole(
    5,
    async () => {
      ran = true;
      return "x";
    },
    ac.signal,
  );
  ac.abort(new ConnectError("deadline", Code.DeadlineExceeded));
  const err = await rejection(whole);
  assert.equal(err.code, Code.DeadlineExceeded);
  assert.equal(q.queued, 0, "its creates no longer count as waiting");
  f.batches[0]!.settle();
  await first;
  await tick();
  assert.equal(ran, false);

  const started = new AbortController();
  let finish!: (v: string) => void;
  const running = q.runWhole(5, () => new Promise<string>((r) => (finish = r)), started.signal);
  await tick();
  started.abort(new ConnectError("cancelled", Code.Canceled));
  finish("stored");
  assert.equal(await running, "stored");
});

test("CREATE_QUEUE_MAX is read from the environment and checked", () => {
  assert.equal(loadTimerConfig({ AUTH_DISABLED: "true" }).createQueueMax, 5000);
  assert.equal(loadTimerConfig({ AUTH_DISABLED: "true", CREATE_QUEUE_MAX: "200" }).createQueueMax, 200);
  assert.throws(() => loadTimerConfig({ AUTH_DISABLED: "true", CREATE_QUEUE_MAX: "0" }), /CREATE_QUEUE_MAX/);
});
