// `npm run ops -- <command> [options]`: the operator's commands (the runbook's scripts), one
// module each under scripts/ops/, each exporting its `command` (command.ts). Modules load on
// demand so one command's dependencies never slow another.
import type { OpsCommand } from "./command.js";

const COMMANDS: Record<string, () => Promise<{ command: OpsCommand<unknown> }>> = {
  // One line per command, kept in alphabetical order.
  backup: () => import("./backup.js"),
  doctor: () => import("./doctor.js"),
  restore: () => import("./restore.js"),
  retention: () => import("./retention.js"),
  "sla-report": () => import("./sla-report.js"),
};

async function usage(): Promise<string> {
  const lines = await Promise.all(
    Object.entries(COMMANDS).map(
      async ([name, load]) => `  ${name.padEnd(12)}${(await load()).command.summary}`,
    ),
  );
  return [
    "usage: npm run ops -- <command> [options]   (each command's --help tells its options)",
    "",
    "commands:",
    ...lines,
  ].join("\n");
}

async function main(argv: string[]): Promise<number> {
  const [name, ...args] = argv;
  if (name === undefined || name === "--help" || name === "-h") {
    console.log(await usage());
    return name === undefined ? 2 : 0;
  }
  const load = COMMANDS[name];
  if (!load) {
    console.error(`unknown command "${name}"\n\n${await usage()}`);
    return 2;
  }
  const { command } = await load();
  let opts: unknown;
  try {
    opts = command.parse(args, process.env);
  } catch (err) {
    console.error(`${name}: ${err instanceof Error ? err.message : String(err)}\n\n${command.help}`);
    return 2;
  }
  if (opts === "help") {
    console.log(command.help);
    return 0;
  }
  return command.execute(opts);
}

process.exitCode = await main(process.argv.slice(2));
