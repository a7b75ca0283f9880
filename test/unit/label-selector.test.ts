// Kubernetes label selectors (services/shared/src/label-selector.ts): parsing, errors that name
// the position, and the SQL built from them (every key and value a parameter).
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  formatLabelSelector,
  LabelSelectorError,
  labelSelectorSql,
  parseLabelSelector,
  SqlParams,
} from "../../services/shared/src/label-selector.js";

test("every operator parses, with or without white space", () => {
  assert.deepEqual(parseLabelSelector("customer=acme, tier==gold,env != prod"), [
    { op: "equals", key: "customer", value: "acme" },
    { op: "equals", key: "tier", value: "gold" },
    { op: "notEquals", key: "env", value: "prod" },
  ]);
  assert.deepEqual(parseLabelSelector("tier in (gold, silver),region notin (eu),canary,!beta"), [
    { op: "in", key: "tier", values: ["gold", "silver"] },
    { op: "notIn", key: "region", values: ["eu"] },
    { op: "exists", key: "canary" },
    { op: "notExists", key: "beta" },
  ]);
  assert.deepEqual(parseLabelSelector("app.kubernetes.io/name=api"), [
    { op: "equals", key: "app.kubernetes.io/name", value: "api" },
  ]);
});

test("an empty selector has no terms; k= is the empty value", () => {
  assert.deepEqual(parseLabelSelector(""), []);
  assert.deepEqual(parseLabelSelector("   "), []);
  assert.deepEqual(parseLabelSelector("note=,x"), [
    { op: "equals", key: "note", value: "" },
    { op: "exists", key: "x" },
  ]);
});

test("errors name the 1-based position of what is wrong", () => {
  const cases: [string, number, RegExp][] = [
    ["customer=acme,", 15, /expected a label key, found the end/],
    ["a=b c", 5, /expected "," or the end/],
    ["tier in gold", 9, /expected "\("/],
    ["tier in (gold", 14, /expected "," or "\)", found the end/],
    ["tier in ()", 10, /expected a value/],
    ["-bad=x", 1, /label key "-bad"/],
    ["a=b,!", 6, /expected a label key/],
    ["a b", 3, /expected an operator/],
    ["a=(", 3, /expected a value, found "\("/],
    [`k=${"v".repeat(257)}`, 3, /over 256 characters/],
  ];
  for (const [text, pos, message] of cases) {
    assert.throws(
      () => parseLabelSelector(text),
      (err: unknown) => {
        assert.ok(err instanceof LabelSelectorError, text);
        assert.equal(err.position, pos, text);
        assert.match(err.message, message);
        assert.match(err.message, new RegExp(`^at character ${pos}: `));
        return true;
      },
    );
  }
});

test("the canonical form reads back to the same terms", () => {
  const terms = parseLabelSelector(" tier in (gold,silver) , !beta,a==b, c != d , e notin (x)");
  const text = formatLabelSelector(terms);
  assert.equal(text, "tier in (gold,silver),!beta,a=b,c!=d,e notin (x)");
  assert.deepEqual(parseLabelSelector(text), terms);
});

test("the SQL carries keys and values only as parameters", () => {
  const hostile = "x'); DROP TABLE timers; --";
  const terms = parseLabelSelector(`a=${hostile.replace(/[\s,()=!]/g, "")},b in (p,q),!c,d,e!=f,g notin (h)`);
  const params = new SqlParams(["first"]);
  const sql = labelSelectorSql(terms, params, "t.labels");
  assert.equal(
    sql,
    "(t.labels @> $2::jsonb) AND (coalesce((t.labels ->> $3::text) = ANY($4::text[]), false)) AND " +
      "(NOT jsonb_exists(t.labels, $5::text)) AND (jsonb_exists(t.labels, $6::text)) AND " +
      "(NOT (t.labels @> $7::jsonb)) AND (NOT coalesce((t.labels ->> $8::text) = ANY($9::text[]), false))",
  );
  assert.doesNotMatch(sql, /DROP|'/);
  assert.deepEqual(params.values, [
    "first",
    JSON.stringify({ a: "x';DROPTABLEtimers;--" }),
    "b",
    ["p", "q"],
    "c",
    "d",
    JSON.stringify({ e: "f" }),
    "g",
    ["h"],
  ]);
  assert.equal(labelSelectorSql([], new SqlParams()), "true");
});
