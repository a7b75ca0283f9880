// What an `npm run ops` command is (scripts/ops/ops.ts runs them) and the defaults they share.
// A command parses its flags over the environment and then executes; the runner owns the rest
// (--help, the exit code 2 and usage on a bad flag) so that every command behaves alike.
import { envUrl } from "../../services/shared/src/env.js";
import type { Env } from "../child-process.js";

/** One operator command. */
export interface OpsCommand<Options> {
  /** One line for `npm run ops -- --help`. */
  summary: string;
  /** What --help prints: usage and every option. */
  help: string;
  /** The options from the flags over the environment, "help" for --help; throws on a bad flag, naming it. */
  parse(args: string[], env: Env): Options | "help";
  /** Runs the command; the exit code (0 when all is well, 1 when it found or hit a problem). */
  execute(opts: Options): Promise<number>;
}

/** DATABASE_URL, or the local default the services use (npm start's Postgres on 5432). */
export function databaseUrlFrom(env: Env): string {
  return envUrl(env, "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/timers", ["postgres", "postgresql"]);
}
