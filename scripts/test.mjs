#!/usr/bin/env node
// `npm test`: type-check, then every unit and integration test with Node's test runner, one
// file at a time (each integration file starts its own processes on a 2-core machine).
// Pass file paths to run only those.
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

const args = process.argv.slice(2);
const files = args.length > 0 ? args : [...testFiles("test/unit"), ...testFiles("test/integration")];

const tsc = spawnSync(
  process.execPath,
  ["node_modules/typescript/bin/tsc", "--noEmit", "-p", "tsconfig.json"],
  { stdio: "inherit" },
);
if (tsc.status !== 0) {
  console.error("type check failed");
  process.exit(tsc.status ?? 1);
}

const result = spawnSync(
  process.execPath,
  ["--import", "tsx", "--test", "--test-concurrency=1", "--test-reporter=spec", ...files],
  {
    stdio: "inherit",
    env: { ...process.env, PATH: `${join(root, "node_modules/.bin")}:${process.env.PATH}` },
  },
);
process.exit(result.status ?? 1);
