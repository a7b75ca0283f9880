// The protos only ever grow: `buf breaking` (rules FILE, proto/buf.yaml) checks proto/ as it is
// in the working tree, uncommitted edits included, against proto/ at each of the last commits
// that changed it, taken from the git history. A field renamed or renumbered, a method or
// message removed, a type changed: any of them fails here, naming the change and the commit.
// Without the history (an export without .git, a shallow clone) the test fails and says so,
// rather than passing having compared nothing.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../", import.meta.url));
const buf = join(root, "node_modules/.bin/buf");
/** How many earlier versions of proto/ the working tree is checked against. */
const VERSIONS = 5;

function run(command: string, args: string[]): { status: number | null; output: string } {
  const r = spawnSync(command, args, { cwd: root, encoding: "utf8" });
  assert.ifError(r.error);
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

/**
 * The last `n` commits that changed proto/, newest first; fails the test, saying what to do,
 * when the history is not there to read.
 */
function protoCommits(n: number): string[] {
  const inside = run("git", ["rev-parse", "--is-inside-work-tree"]);
  assert.ok(
    inside.status === 0 && inside.output.trim() === "true",
    `proto-breaking needs the git history to compare proto/ with its earlier versions, and ${root} is not a git work tree (${inside.output.trim()}). Run the tests from a clone.`,
  );
  const shallow = run("git", ["rev-parse", "--is-shallow-repository"]);
  assert.ok(
    shallow.status === 0 && shallow.output.trim() === "false",
    "proto-breaking needs the git history, and this clone is shallow: earlier versions of proto/ are missing. Fetch it with `git fetch --unshallow` (or clone without --depth).",
  );
  const log = run("git", ["log", `--max-count=${n}`, "--format=%H", "--", "proto"]);
  assert.equal(log.status, 0, log.output);
  const commits = log.output.split("\n").filter((l) => /^[0-9a-f]{40}$/.test(l));
  assert.ok(commits.length > 0, "no commit in the git history changed proto/: nothing to compare with");
  return commits;
}

/**
 * `buf breaking` of the module at `dir` (a path from the repository root) against proto/ at
 * `commit`. The repository is named by its common git directory, so a `git worktree` (whose
 * .git is a file) works too.
 */
function breakingAgainst(dir: string, commit: string): { status: number | null; output: string } {
  const gitDir = run("git", ["rev-parse", "--path-format=absolute", "--git-common-dir"]);
  assert.equal(gitDir.status, 0, gitDir.output);
  return run(buf, [
    "breaking",
    dir,
    "--against",
    `${gitDir.output.trim()}#format=git,ref=${commit},subdir=proto`,
  ]);
}

test("proto/ breaks nothing of its last versions in the git history", () => {
  const commits = protoCommits(VERSIONS);
  for (const commit of commits) {
    const r = breakingAgainst("proto", commit);
    assert.equal(
      r.status,
      0,
      `proto/ breaks what commit ${commit.slice(0, 12)} published; protos may only grow (add fields, messages, methods):\n${r.output}`,
    );
  }
});

test("a renamed field is caught", () => {
  // A scratch copy with one field renamed, checked against the newest commit the same way.
  const [newest] = protoCommits(1);
  const scratch = mkdtempSync(join(tmpdir(), "proto-breaking-"));
  try {
    cpSync(join(root, "proto"), scratch, { recursive: true });
    const file = join(scratch, "timer/v1/timer.proto");
    const text = readFileSync(file, "utf8");
    const renamed = text.replace(/^(\s*string) group_id = 1;/m, "$1 group = 1;");
    assert.notEqual(renamed, text, "timer.proto has a `string group_id = 1;` field to rename");
    writeFileSync(file, renamed);
    const r = breakingAgainst(scratch, newest!);
    assert.notEqual(r.status, 0, `buf breaking let a renamed field through:\n${r.output}`);
    assert.match(r.output, /changed name from "group_id" to "group"/);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
});
