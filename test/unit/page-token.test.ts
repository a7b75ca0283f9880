// Page tokens (services/shared/src/page-token.ts and the ListTimers tokens made with it in
// services/timer/src/page-token.ts): a token comes back as the position it was made from, and one
// that was tampered with, is not a token at all, or was made for another query is refused with an
// error that says so, never read as some other position.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  decodePageToken,
  encodePageToken,
  PAGE_TOKEN_REFUSED,
} from "../../services/shared/src/page-token.js";
import { decodeListTimersToken, encodeListTimersToken } from "../../services/timer/src/page-token.js";

const position = { fireAtMs: Date.UTC(2026, 0, 1, 12), timerId: "invoice-42" };
const SCHEDULED = [1];

/** A token whose JSON is `fields`, as a caller rewriting a token by hand would make it. */
const forged = (fields: unknown) => Buffer.from(JSON.stringify(fields)).toString("base64url");

/** Asserts the ListTimers token is refused with INVALID_ARGUMENT and the shared message. */
function refused(token: string, groupId = "billing", states = SCHEDULED): void {
  assert.throws(
    () => decodeListTimersToken(token, groupId, states),
    (e: unknown) => {
      assert.ok(e instanceof ConnectError, `a ConnectError, got ${String(e)}`);
      assert.equal(e.code, Code.InvalidArgument);
      assert.equal(e.rawMessage, PAGE_TOKEN_REFUSED);
      assert.match(e.rawMessage, /^page_token is malformed or belongs to a different query$/);
      return true;
    },
    token,
  );
}

describe("ListTimers page tokens", () => {
  test("round trip: a token decodes to the position it was made from", () => {
    const token = encodeListTimersToken(position, "billing", SCHEDULED);
    assert.match(token, /^[A-Za-z0-9_-]+$/, "opaque and URL-safe");
    assert.deepEqual(decodeListTimersToken(token, "billing", SCHEDULED), position);
  });

  test("a token of another group or other states is refused", () => {
    const token = encodeListTimersToken(position, "billing", SCHEDULED);
    refused(token, "shipping");
    refused(token, "billing", [1, 3]);
    refused(token, "billing", []);
  });

  test("garbage is refused", () => {
    for (const token of ["garbage!", "e30", "bnVsbA", "WzFd", "not base64 at all ###", "x"]) refused(token);
  });

  test("a tampered token is refused: cut short, a field of the wrong type, or its query changed", () => {
    const token = encodeListTimersToken(position, "billing", SCHEDULED);
    refused(token.slice(0, -4));
    const fields = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as Record<string, unknown>;
    refused(forged({ ...fields, f: "1767268800000" }));
    refused(forged({ ...fields, f: null }));
    refused(forged({ ...fields, t: 42 }));
    refused(forged({ f: fields.f, t: fields.t }));
    refused(forged({ ...fields, q: "another-query" }));
  });

  test("an admin ListFailedTimers token is foreign here", () => {
    refused(encodePageToken({ f: "2026-01-01 12:00:00+00", g: "billing", t: "invoice-42" }, "billing"));
  });
});

describe("shared page tokens", () => {
  test("round trip of the position's fields, bound to the query", () => {
    const token = encodePageToken({ f: "2026-01-01 12:00:00.123456+00", g: "billing", t: "x" }, "billing");
    assert.deepEqual(decodePageToken(token, "billing"), {
      f: "2026-01-01 12:00:00.123456+00",
      g: "billing",
      t: "x",
      q: "billing",
    });
    assert.equal(decodePageToken(token, ""), undefined);
  });

  test("a JSON value that is not an object is no token", () => {
    for (const value of [null, 1, "q", [1], true])
      assert.equal(decodePageToken(forged(value), ""), undefined);
  });
});
