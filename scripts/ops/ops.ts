// `npm run ops -- <command> [options]`: the operator's commands (the runbook's scripts), one
// module each under scripts/ops/. Each module exports `run(args)`, returning the exit code, and a
// one-line `summary`; modules load on demand so one command's dependencies never slow another.

/** An operator command: its one-line summary and how to run it. */
export interface OpsCommand {
  summary: string;
  run(args: string[]): Promise<number>;
}

const COMMANDS: Record<string, () => Promise<OpsCommand>> = {
  // One line per command, kept in alphabetical order.
};

function usage(): string {
  return [
    "usage: npm run ops -- <command> [options]   (each command's --help tells its options)",
    "",
    "commands:",
    ...Object.keys(COMMANDS).map((name) => `  ${name}`),
  ].join("\n");
}

async function main(argv: string[]): Promise<number> {
  const [name, ...args] = argv;
  if (name === undefined || name === "--help" || name === "-h") {
    console.log(usage());
    return name === undefined ? 2 : 0;
  }
  const load = COMMANDS[name];
  if (!load) {
    console.error(`unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  const command = await load();
  return command.run(args);
}

process.exitCode = await main(process.argv.slice(2));
