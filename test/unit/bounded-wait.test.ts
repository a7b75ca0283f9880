// within(): the bounded wait every shutdown step, probe and flush uses.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { within } from "../../services/shared/src/bounded-wait.js";

// within()'s own timer does not hold the process open (a shutdown must be able to end); this one
// keeps the test's event loop alive while it waits.
const keepAlive = setInterval(() => {}, 1_000);
after(() => clearInterval(keepAlive));

test("a promise that settles in time gives its value, even a falsy one", async () => {
  assert.deepEqual(await within(Promise.resolve(false), 1_000), { value: false });
});

test("a promise that does not settle in time gives undefined", async () => {
  assert.equal(await within(new Promise(() => {}), 10), undefined);
});

test("a rejection in time rejects; a late one is neither thrown nor unhandled", async () => {
  await assert.rejects(within(Promise.reject(new Error("refused")), 1_000), /refused/);
  let unhandled = 0;
  const count = () => unhandled++;
  process.on("unhandledRejection", count);
  try {
    const late = new Promise((_, reject) => setTimeout(() => reject(new Error("late")), 20));
    assert.equal(await within(late, 1), undefined);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(unhandled, 0);
  } finally {
    process.off("unhandledRejection", count);
  }
});
