// The repository's root directory, which local runs keep their data under (.data/).
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** Absolute path of the repository's root directory. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
