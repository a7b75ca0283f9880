// timer.v1.TimerSelector checks, authorization and WHERE clause
// (services/shared/src/timer-selector.ts), and the bulk operation plan built on it
// (services/admin/src/bulk-operation-plan.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { StartBulkOperationRequestSchema } from "../../services/shared/src/gen/admin/v1/admin_pb.js";
import { TimerSelectorSchema, TimerState } from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import type { Principal } from "../../services/shared/src/auth.js";
import { SqlParams } from "../../services/shared/src/label-selector.js";
import {
  authorizeSelection,
  checkTimerSelector,
  likeLiteral,
  listSelection,
  selectionKey,
  timerSelectionSql,
} from "../../services/shared/src/timer-selector.js";
import { bulkPlanOf, MAX_SHIFT_MS } from "../../services/admin/src/bulk-operation-plan.js";

type SelectorInit = Parameters<typeof create<typeof TimerSelectorSchema>>[1];
const selector = (init: SelectorInit) => create(TimerSelectorSchema, init);
const DAY = 86_400_000;
const NOW = Date.UTC(2026, 2, 1);

function refusedWith(code: Code, message: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof ConnectError);
    assert.equal(err.code, code);
    assert.match(err.rawMessage, message);
    return true;
  };
}

test("a selector's errors name the field", () => {
  const cases: [SelectorInit, RegExp][] = [
    [{}, /^selector\.group_id is required/],
    [{ groupId: "a", groupPattern: "*" }, /^selector\.group_pattern cannot be combined/],
    [{ groupId: "bad group" }, /^selector\.group_id must be/],
    [{ groupPattern: "orders" }, /^selector\.group_pattern must be "\*"/],
    [{ groupPattern: "or*ders*" }, /^selector\.group_pattern/],
    [{ groupId: "a", timerIdPrefix: "%" }, /^selector\.timer_id_prefix/],
    [{ groupId: "a", states: [99 as TimerState] }, /^selector\.states has an unknown state 99/],
    [{ groupId: "a", fireBefore: timestampFromMs(5_000) }, /^selector\.fire_before is before 2000/],
    [
      { groupId: "a", fireAfter: timestampFromMs(NOW + DAY), fireBefore: timestampFromMs(NOW) },
      /^selector\.fire_before must be later than fire_after/,
    ],
    [{ groupId: "a", labelSelector: "customer=acme," }, /^selector\.label_selector at character 15/],
    [{ groupId: "a", scheduleId: "nightly@x" }, /^selector\.schedule_id/],
  ];
  for (const [init, message] of cases)
    assert.throws(() => checkTimerSelector(selector(init)), refusedWith(Code.InvalidArgument, message));
  assert.throws(
    () => checkTimerSelector(undefined),
    refusedWith(Code.InvalidArgument, /^selector is required/),
  );
});

test("a checked selector: states sorted and distinct, pattern as a prefix", () => {
  const s = checkTimerSelector(
    selector({
      groupPattern: "orders-*",
      states: [TimerState.PAUSED, TimerState.SCHEDULED, TimerState.PAUSED],
      labelSelector: "customer=acme",
    }),
  );
  assert.equal(s.groupId, null);
  assert.equal(s.groupPrefix, "orders-");
  assert.deepEqual(s.states, [TimerState.SCHEDULED, TimerState.PAUSED]);
  assert.equal(checkTimerSelector(selector({ groupPattern: "*" })).groupPrefix, "");
});

test("group tokens act on their groups only; group_pattern needs an admin", () => {
  const billing: Principal = { name: "ci-billing", admin: false, groups: ["billing", "orders-*"] };
  const ops: Principal = { name: "ops", admin: true, groups: [] };
  authorizeSelection(billing, checkTimerSelector(selector({ groupId: "orders-eu" })));
  authorizeSelection(ops, checkTimerSelector(selector({ groupPattern: "*" })));
  assert.throws(
    () => authorizeSelection(billing, checkTimerSelector(selector({ groupId: "shipping" }))),
    refusedWith(Code.PermissionDenied, /may not use group "shipping"/),
  );
  assert.throws(
    () => authorizeSelection(billing, checkTimerSelector(selector({ groupPattern: "orders-*" }))),
    refusedWith(Code.PermissionDenied, /group_pattern: it needs an admin token/),
  );
});

test("the WHERE clause has every term, values as parameters, LIKE escaped", () => {
  const params = new SqlParams(["x"]);
  const sql = timerSelectionSql(
    checkTimerSelector(
      selector({
        groupPattern: "team_a*",
        timerIdPrefix: "inv_2026",
        states: [TimerState.SCHEDULED],
        fireAfter: timestampFromMs(NOW),
        fireBefore: timestampFromMs(NOW + DAY),
        labelSelector: "customer=acme",
        scheduleId: "nightly",
      }),
    ),
    params,
    "t.",
  );
  assert.equal(
    sql,
    "t.group_id LIKE $2::text ESCAPE '\\' AND t.timer_id LIKE $3::text ESCAPE '\\' AND t.state = ANY($4::smallint[]) AND " +
      "t.fire_at >= $5::timestamptz AND t.fire_at < $6::timestamptz AND (t.labels @> $7::jsonb) AND t.schedule_id = $8::text",
  );
  assert.deepEqual(params.values.slice(1, 4), ["team\\_a%", "inv\\_2026%", [TimerState.SCHEDULED]]);
  assert.equal(likeLiteral("a%b_c\\"), "a\\%b\\_c\\\\");
  // "*" matches every group: no group term at all.
  assert.equal(
    timerSelectionSql(checkTimerSelector(selector({ groupPattern: "*" })), new SqlParams()),
    "true",
  );
});

test("ListTimers: the selector's group stands in for the request's; a pattern is refused", () => {
  assert.equal(listSelection("", selector({ groupId: "billing" })).groupId, "billing");
  assert.equal(listSelection("billing", selector({})).groupId, "billing");
  assert.throws(
    () => listSelection("billing", selector({ groupId: "orders" })),
    refusedWith(Code.InvalidArgument, /^selector\.group_id must equal group_id/),
  );
  assert.throws(
    () => listSelection("billing", selector({ groupPattern: "*" })),
    refusedWith(Code.InvalidArgument, /^selector\.group_pattern is for AdminService/),
  );
  const a = selectionKey(listSelection("g", selector({ labelSelector: "a=b" })));
  const b = selectionKey(listSelection("g", selector({ labelSelector: "a=c" })));
  assert.notEqual(a, b);
});

test("a bulk plan: states narrowed, batch size, shift bounds", () => {
  const req = (init: Parameters<typeof create<typeof StartBulkOperationRequestSchema>>[1]) =>
    create(StartBulkOperationRequestSchema, { selector: selector({ groupId: "g" }), ...init });
  const pause = bulkPlanOf(req({ action: { case: "pause", value: {} } }), NOW);
  assert.deepEqual(pause.fromStates, [TimerState.SCHEDULED]);
  assert.equal(pause.batchSize, 500);
  const cancel = bulkPlanOf(
    req({
      selector: selector({ groupId: "g", states: [TimerState.PAUSED, TimerState.FAILED] }),
      action: { case: "cancel", value: {} },
      batchSize: 7,
    }),
    NOW,
  );
  assert.deepEqual(cancel.fromStates, [TimerState.PAUSED]);
  assert.equal(cancel.batchSize, 7);
  assert.deepEqual(bulkPlanOf(req({ action: { case: "retry", value: {} } }), NOW).fromStates, [
    TimerState.FAILED,
    TimerState.EXPIRED,
  ]);
  const shift = bulkPlanOf(
    req({ action: { case: "shift", value: { shift: { case: "by", value: durationFromMs(-7_200_000) } } } }),
    NOW,
  );
  assert.deepEqual(shift.shift, { toMs: null, byMs: -7_200_000 });

  const refused: [Parameters<typeof req>[0], RegExp][] = [
    [{}, /^action is required/],
    [
      {
        selector: selector({ groupId: "g", states: [TimerState.FAILED] }),
        action: { case: "pause", value: {} },
      },
      /^selector\.states leaves nothing to pause: it applies to SCHEDULED timers/,
    ],
    [{ action: { case: "pause", value: {} }, batchSize: 10_001 }, /^batch_size must be between 1 and 10000/],
    [{ action: { case: "shift", value: {} } }, /^shift needs by or to/],
    [
      {
        action: {
          case: "shift",
          value: { shift: { case: "by", value: durationFromMs(MAX_SHIFT_MS + 1000) } },
        },
      },
      /^shift\.by must be at most 366 days/,
    ],
    [
      {
        action: {
          case: "shift",
          value: { shift: { case: "to", value: timestampFromMs(NOW + MAX_SHIFT_MS + 1000) } },
        },
      },
      /^shift\.to must be at most 366 days from now/,
    ],
    [
      { action: { case: "shift", value: { shift: { case: "to", value: timestampFromMs(1_700_000) } } } },
      /^shift\.to is before 2000-01-01/,
    ],
    [{ selector: undefined, action: { case: "pause", value: {} } }, /^selector is required/],
  ];
  for (const [init, message] of refused)
    assert.throws(() => bulkPlanOf(req(init), NOW), refusedWith(Code.InvalidArgument, message));
});
