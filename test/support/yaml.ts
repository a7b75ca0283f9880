import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

const root = fileURLToPath(new URL("../../", import.meta.url));

/** Parses every document of a YAML file under the repository root; fails the test on a syntax error. */
export function loadYaml(relPath: string): unknown[] {
  const docs = parseAllDocuments(readFileSync(join(root, relPath), "utf8"), { merge: true });
  const list = Array.isArray(docs) ? docs : [docs];
  for (const d of list) assert.deepEqual(d.errors.map(String), [], `${relPath} is not valid YAML`);
  return list.map((d) => d.toJS() as unknown).filter((doc) => doc !== null && doc !== undefined);
}
