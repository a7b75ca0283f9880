#!/usr/bin/env node
// `npm test`: check the code (Biome's format and lint, ESLint's type-aware promise rules, the
// type checker), then run every unit and integration test with Node's test runner, one file at a
// time (each integration file starts its own processes on a 2-core machine).
//
//   node scripts/test.mjs              checks, then unit, then integration tests
//   node scripts/test.mjs unit         checks, then the unit tests
//   node scripts/test.mjs integration  checks, then the integration tests
//   node scripts/test.mjs FILE...      type check, then only those files (quick iteration)
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
process.chdir(root);

function testFiles(dir) {
  return readdirSync(dir, { recursive: true })
    .filter((f) => String(f).endsWith(".test.ts"))
    .map((f) => join(dir, String(f)))
    .sort();
}

/** Runs one step with the output shown; exits with its status when it fails. */
function step(name, command, args) {
  const result = spawnSync(command, args, {
    stdio: "inherit",
    env: { ...process.env, PATH: `${join(root, "node_modules/.bin")}:${process.env.PATH}` },
  });
  if (result.status !== 0) {
    console.error(`${name} failed`);
    process.exit(result.status ?? 1);
  }
}

const args = process.argv.slice(2);
const suites = { unit: ["test/unit"], integration: ["test/integration"] };
const selected = args.length === 0 ? ["test/unit", "test/integration"] : suites[args[0]];
const files = selected ? selected.flatMap(testFiles) : args;

if (selected) {
  // The whole code base, so a commit cannot land unformatted or with a floating promise.
  step("format and lint (biome ci)", process.execPath, ["node_modules/@biomejs/biome/bin/biome", "ci", "."]);
  step("type-aware lint (eslint)", process.execPath, [
    "node_modules/eslint/bin/eslint.js",
    "--max-warnings=0",
    ".",
  ]);
}
step("type check", process.execPath, ["node_modules/typescript/bin/tsc", "--noEmit", "-p", "tsconfig.json"]);
step("type check (console)", process.execPath, [
  "node_modules/typescript/bin/tsc",
  "--noEmit",
  "-p",
  "services/admin/console/tsconfig.json",
]);
/** Runs test files, `concurrency` files at a time. */
function runTests(name, list, concurrency) {
  if (list.length === 0) return;
  step(name, process.execPath, [
    "--import",
    "tsx",
    "--test",
    `--test-concurrency=${concurrency}`,
    "--test-reporter=spec",
    ...list,
  ]);
}

// Unit tests touch no shared resource (ports 0, their own temp directories, no database): two
// files at a time, which takes a third off their time on two cores. Integration files start
// meshes of processes and measure timing: one at a time, so none competes with another.
const isUnit = (f) => f.startsWith("test/unit/");
runTests("unit tests", files.filter(isUnit), 2);
runTests(
  "tests",
  files.filter((f) => !isUnit(f)),
  1,
);
