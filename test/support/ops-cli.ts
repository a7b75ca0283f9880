// Running `npm run ops -- <command>` the way an operator does, as a process of its own (node with
// tsx, what `npm run ops` runs), with only the environment the test gives it.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { exitOf } from "../../scripts/child-process.js";

const root = fileURLToPath(new URL("../../", import.meta.url));

/** How an ops command ended: its exit code and what it printed. */
export interface OpsRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs scripts/ops/ops.ts with `args` (the command first) and `env` besides PATH; never rejects on a non-zero exit. */
export async function runOps(args: readonly string[], env: Record<string, string>): Promise<OpsRun> {
  const child = spawn(process.execPath, ["--import", "tsx", "scripts/ops/ops.ts", ...args], {
    cwd: root,
    env: { PATH: process.env.PATH ?? "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const { code } = await exitOf(child);
  return { code, stdout, stderr };
}
