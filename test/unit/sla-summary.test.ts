import { test } from "node:test";
import assert from "node:assert/strict";
import {
  buildSlaReport,
  errorClass,
  formatSlaText,
  judgeLine,
  type SlaRow,
  slaExitCode,
} from "../../scripts/ops/sla-summary.js";

function row(over: Partial<SlaRow> = {}): SlaRow {
  return {
    overall: true,
    groupId: null,
    due: 1000,
    onTime: 1000,
    neverAttempted: 0,
    p50: 0.01,
    p95: 0.02,
    p99: 0.05,
    max: 0.2,
    failedTimers: 0,
    expiredTimers: 0,
    failures: [],
    callbackAttempts: 1000,
    callbackFailures: 0,
    abandoned: 0,
    ...over,
  };
}

const range = {
  from: new Date("2026-12-01T00:00:00Z"),
  to: new Date("2026-12-02T00:00:00Z"),
  generatedAt: new Date("2026-12-02T00:00:01Z"),
};

test("error classes keep the status or system error and drop what varies per timer", () => {
  assert.equal(errorClass("HTTP 503"), "HTTP 503");
  assert.equal(errorClass("gave up after 5 attempts: HTTP 503"), "HTTP 503");
  assert.equal(errorClass("gRPC UNAVAILABLE: No connection established"), "gRPC UNAVAILABLE");
  assert.equal(errorClass("timed out after 10000ms"), "timeout");
  assert.equal(errorClass("gave up after 3 attempts: timed out after 500ms"), "timeout");
  assert.equal(errorClass("ECONNREFUSED: connect ECONNREFUSED 10.0.0.7:9000"), "ECONNREFUSED");
  assert.equal(errorClass("getaddrinfo ENOTFOUND hooks.example"), "ENOTFOUND");
  assert.equal(
    errorClass(
      "callback host a.example resolves to 10.0.0.1, which is not allowed (private): callbacks may reach public addresses only; x",
    ),
    "egress refused",
  );
  assert.equal(errorClass('callback.grpc.target "x" is not host:port'), "invalid callback");
  assert.equal(
    errorClass("delivery abandoned: d1#ab12 recorded no outcome by the claim's deadline"),
    "abandoned (dispatcher gone mid-delivery)",
  );
  assert.equal(errorClass("NATS publish not confirmed: TIMEOUT"), "NATS publish not confirmed");
  assert.equal(errorClass(null), "(no error recorded)");
  assert.equal(errorClass("something odd 42 happened: detail"), "something odd N happened");
});

test("on time at exactly 99.5 % passes, just under fails; callback failures at 5 % fail", () => {
  assert.equal(judgeLine(row({ due: 1000, onTime: 995 })).verdicts.onTime, "PASS");
  assert.equal(judgeLine(row({ due: 1000, onTime: 994 })).verdicts.onTime, "FAIL");
  assert.equal(
    judgeLine(row({ callbackAttempts: 100, callbackFailures: 4 })).verdicts.callbackFailures,
    "PASS",
  );
  const atFive = judgeLine(row({ callbackAttempts: 100, callbackFailures: 5 }));
  assert.equal(atFive.verdicts.callbackFailures, "FAIL");
  assert.equal(atFive.verdicts.overall, "FAIL");
});

test("nothing due is NO DATA, not a pass or a failure, and exits 0", () => {
  const empty = row({ due: 0, onTime: 0, p50: null, p95: null, p99: null, max: null, callbackAttempts: 0 });
  const line = judgeLine(empty);
  assert.deepEqual(line.verdicts, { onTime: "NO DATA", callbackFailures: "NO DATA", overall: "NO DATA" });
  assert.equal(line.onTimePercent, null);
  const report = buildSlaReport([empty], range, 0);
  assert.equal(slaExitCode(report), 0);
  assert.match(formatSlaText(report), /^\(all\) +0 +- +- +- +- +- +0 +- +NO DATA$/m);
});

test("failures of a line are summed by class, largest first", () => {
  const line = judgeLine(
    row({
      failedTimers: 6,
      failures: [
        { error: "gave up after 5 attempts: HTTP 503", count: 2 },
        { error: "HTTP 503", count: 1 },
        { error: "timed out after 10000ms", count: 3 },
      ],
    }),
  );
  assert.deepEqual(line.failuresByReason, [
    { reason: "HTTP 503", count: 3 },
    { reason: "timeout", count: 3 },
  ]);
});

test("a percentage just under the target is never printed rounded up to it", () => {
  const report = buildSlaReport([row({ due: 10_000, onTime: 9_949 })], range, 0);
  assert.equal(slaExitCode(report), 1);
  assert.match(formatSlaText(report), /timer execution: FAIL \(99\.49% within 30s, target 99\.5%\)/);
});

test("the text names the groups not shown and says how never-attempted timers count", () => {
  const report = buildSlaReport(
    [row({ neverAttempted: 2 }), row({ overall: false, groupId: "billing", due: 600 })],
    range,
    7,
  );
  const text = formatSlaText(report);
  assert.match(text, /^billing +600 /m);
  assert.match(text, /\(top 1 of 7 groups by timers due; --top N for more\)/);
  assert.match(text, /note: 2 timer\(s\) due in the range were never attempted .* now − fire_at/);
  assert.equal(report.groups[0]!.group, "billing");
});
