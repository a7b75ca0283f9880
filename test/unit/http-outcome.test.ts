// How an HTTP callback attempt's answer becomes its outcome: which statuses and errors are
// retried, which fail the timer at once, and what last_error says. The attempt handler is driven
// directly, as undici would drive it, without a server.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { DeliveryResult } from "../../services/dispatcher/src/delivery.js";
import { classifyHttp, describe, HttpAttempt } from "../../services/dispatcher/src/http-callbacks.js";

test("2xx succeeds; 408, 429 and 5xx are retried; any other status fails the timer at once", () => {
  for (const status of [200, 201, 204, 299]) assert.deepEqual(classifyHttp(status), { ok: true });
  for (const status of [408, 429, 500, 502, 503, 504, 599]) {
    assert.deepEqual(classifyHttp(status), { ok: false, retryable: true, error: `HTTP ${status}` });
  }
  // Redirects are not followed: a 3xx is the receiver's answer like a 4xx.
  for (const status of [300, 301, 302, 307, 400, 401, 403, 404, 409, 410, 422]) {
    assert.deepEqual(classifyHttp(status), { ok: false, retryable: false, error: `HTTP ${status}` });
  }
});

test("an error's message leads with its code unless the message already names it", () => {
  const reset = Object.assign(new Error("socket hang up"), { code: "ECONNRESET" });
  assert.equal(describe(reset), "ECONNRESET: socket hang up");
  const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:9"), { code: "ECONNREFUSED" });
  assert.equal(describe(refused), "connect ECONNREFUSED 127.0.0.1:9");
  assert.equal(describe(new Error("plain")), "plain");
  assert.equal(describe("a string thrown"), "a string thrown");
});

/** An attempt whose deadline is an hour away, and the promise of its outcome. */
function attempt(): { handler: HttpAttempt; outcome: Promise<DeliveryResult> } {
  let handler: HttpAttempt | undefined;
  const outcome = new Promise<DeliveryResult>((resolve) => {
    handler = new HttpAttempt(resolve, 10_000, Date.now() + 3_600_000);
  });
  if (!handler) throw new Error("the promise executor runs at once");
  return { handler, outcome };
}

test("the final status decides, informational ones are skipped, and the end of the body changes nothing", async () => {
  const a = attempt();
  a.handler.onHeaders(100);
  a.handler.onHeaders(503);
  a.handler.onComplete();
  assert.deepEqual(await a.outcome, { ok: false, retryable: true, error: "HTTP 503" });

  const b = attempt();
  b.handler.onHeaders(204);
  b.handler.onError(new Error("body cut short"));
  assert.deepEqual(await b.outcome, { ok: true });
});

test("a connection error or an answer without a status is retried, with what happened", async () => {
  const a = attempt();
  a.handler.onError(Object.assign(new Error("socket hang up"), { code: "ECONNRESET" }));
  assert.deepEqual(await a.outcome, { ok: false, retryable: true, error: "ECONNRESET: socket hang up" });

  const b = attempt();
  b.handler.onComplete();
  assert.deepEqual(await b.outcome, { ok: false, retryable: true, error: "response ended without a status" });
});

test("an attempt past its deadline is retried as timed out, and a connection it gets later is aborted unused", async () => {
  let handler: HttpAttempt | undefined;
  const outcome = new Promise<DeliveryResult>((resolve) => {
    handler = new HttpAttempt(resolve, 250, Date.now());
  });
  assert.deepEqual(await outcome, { ok: false, retryable: true, error: "timed out after 250ms" });
  const aborted: (Error | undefined)[] = [];
  handler?.onConnect((err) => aborted.push(err));
  assert.equal(aborted.length, 1);
  assert.match(String(aborted[0]?.message), /timed out after 250ms/);
});
