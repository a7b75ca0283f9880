// The committed generated code must be exactly what `npm run generate` produces, and the
// protos must pass `buf lint`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const root = fileURLToPath(new URL("../../", import.meta.url));
const env = { ...process.env, PATH: `${join(root, "node_modules/.bin")}:${process.env.PATH}` };

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile())
      out.push(relative(dir, join(e.parentPath ?? (e as unknown as { path: string }).path, e.name)));
  }
  return out.sort();
}

test("generated code is up to date with proto/ (run `npm run generate`)", async () => {
  const tmp = await mkdtemp(join(tmpdir(), "gen-"));
  try {
    const template = JSON.stringify({
      version: "v2",
      clean: true,
      plugins: [{ local: "protoc-gen-es", out: tmp, opt: ["target=ts", "import_extension=js"] }],
    });
    await run("buf", ["generate", "--template", template], { cwd: join(root, "proto"), env });
    const committedDir = join(root, "services/shared/src/gen");
    const fresh = await listFiles(tmp);
    assert.deepEqual(await listFiles(committedDir), fresh, "generated file set differs");
    for (const f of fresh) {
      const [a, b] = await Promise.all([
        readFile(join(tmp, f), "utf8"),
        readFile(join(committedDir, f), "utf8"),
      ]);
      assert.equal(b, a, `${f} is stale: run npm run generate`);
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
});

test("buf lint passes", async () => {
  const { stdout, stderr } = await run("buf", ["lint"], { cwd: join(root, "proto"), env });
  assert.equal(stdout + stderr, "");
});
