import { test } from "node:test";
import assert from "node:assert/strict";
import type { Attributes, ObservableResult } from "@opentelemetry/api";
import { GaugeSeries } from "../../services/shared/src/telemetry/gauge-series.js";

function collect(
  series: GaugeSeries,
  current: { attributes: Attributes; value: number }[],
): Map<string, number> {
  const out = new Map<string, number>();
  const result = {
    observe: (value: number, attributes?: Attributes) => out.set(JSON.stringify(attributes), value),
  } as ObservableResult;
  series.observe(result, current);
  return out;
}

test("a label set that disappears is reported as 0, not frozen at its last value", () => {
  const s = new GaugeSeries();
  assert.deepEqual(
    [...collect(s, [{ attributes: { shard: "1", owner: "d1" }, value: 42 }])],
    [['{"shard":"1","owner":"d1"}', 42]],
  );
  const next = collect(s, [{ attributes: { shard: "1", owner: "d2" }, value: 0.5 }]);
  assert.equal(next.get('{"shard":"1","owner":"d1"}'), 0);
  assert.equal(next.get('{"shard":"1","owner":"d2"}'), 0.5);
  const back = collect(s, [{ attributes: { shard: "1", owner: "d1" }, value: 3 }]);
  assert.equal(back.get('{"shard":"1","owner":"d1"}'), 3);
  assert.equal(back.get('{"shard":"1","owner":"d2"}'), 0);
});
