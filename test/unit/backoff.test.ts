import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffMs, mayRetry } from "../../services/dispatcher/src/backoff.js";

const policy = { maxAttempts: 5, initialBackoffMs: 1000, maxBackoffMs: 300_000, multiplier: 2 };

test("backoff doubles from the initial delay, with at most 20% jitter taken off", () => {
  assert.equal(
    backoffMs(policy, 1, () => 0),
    1000,
  );
  assert.equal(
    backoffMs(policy, 2, () => 0),
    2000,
  );
  assert.equal(
    backoffMs(policy, 3, () => 0),
    4000,
  );
  assert.equal(
    backoffMs(policy, 3, () => 1),
    3200,
  );
  for (let i = 0; i < 100; i++) {
    const d = backoffMs(policy, 4);
    assert.ok(d > 6400 - 1 && d <= 8000);
  }
});

test("backoff is capped at max_backoff", () => {
  assert.equal(
    backoffMs(policy, 30, () => 0),
    300_000,
  );
});

test("attempts stop at max_attempts", () => {
  assert.equal(mayRetry(policy, 4), true);
  assert.equal(mayRetry(policy, 5), false);
});
