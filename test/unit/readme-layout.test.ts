// The README's Layout section is where a newcomer starts reading the code. It names every source
// file under the folder it belongs to; this test keeps it true as files are added, moved or removed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT } from "../../scripts/repo-root.js";

/** Folders whose every source file the layout must name. */
const LISTED_IN_FULL = [
  "services/shared/",
  "services/timer/src/",
  "services/dispatcher/src/",
  "services/admin/src/",
  "scripts/",
  "test/support/",
  "bench/",
];
// A file name, not a pattern such as `*-handlers.ts`.
const SOURCE_FILE = /(?<![\w*.-])[A-Za-z0-9_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*\.(?:ts|mjs|js|jsonc?)\b/g;

/** The names each section of the Layout block mentions, by the folder heading it ("" for the top). */
function layoutSections(): Map<string, Set<string>> {
  const readme = readFileSync(join(REPO_ROOT, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf("\n## Layout\n"));
  const block = /```\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(block, "README.md has a Layout section with a code block");
  const sections = new Map<string, Set<string>>([["", new Set()]]);
  let current = "";
  for (const line of block.split("\n")) {
    const heading = /^(\S+\/)(?:\s|$)/.exec(line)?.[1];
    if (heading && !/\.(?:json|js)\b/.test(line)) {
      current = heading;
      sections.set(current, new Set());
    }
    for (const name of line.match(SOURCE_FILE) ?? []) sections.get(current)?.add(name);
  }
  return sections;
}

/** Source files below `dir` (relative to the repository root), generated code left out. */
function sourceFiles(dir: string): string[] {
  return readdirSync(join(REPO_ROOT, dir), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && /\.(?:ts|mjs)$/.test(e.name))
    .filter((e) => !join(e.parentPath, e.name).includes("/src/gen/"))
    .map((e) => e.name);
}

test("the README's Layout names every source file of the folders it lists", () => {
  const sections = layoutSections();
  for (const dir of LISTED_IN_FULL) {
    const named = sections.get(dir);
    assert.ok(named, `the Layout has a section for ${dir}`);
    const missing = sourceFiles(dir).filter((f) => !named.has(f));
    assert.deepEqual(missing, [], `${dir} files the Layout does not name`);
  }
});

test("every file the README's Layout names exists where it says", () => {
  for (const [dir, names] of layoutSections()) {
    const present = new Set(dir === "" ? readdirSync(REPO_ROOT) : sourceFiles(dir));
    const gone = [...names].filter((n) => !present.has(n));
    assert.deepEqual(gone, [], `names under ${dir || "the top"} that are not files there`);
    if (dir !== "") assert.ok(existsSync(join(REPO_ROOT, dir)), `${dir} exists`);
  }
});
