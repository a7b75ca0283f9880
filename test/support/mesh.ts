// The whole system for one test file: a fresh database, a private nats-server, the timer
// service and N dispatchers, each a real process, each connecting to NATS as its own user.
import pg from "pg";
import { createTestDatabase, type TestDatabase } from "./database.js";
import { startNats, type TestNats } from "./nats-server.js";
import { startService, type ServiceProcess } from "./service-process.js";
import { GrpcTimerClient } from "./timer-client.js";

/** A running mesh under test. */
export interface TestMesh extends AsyncDisposable {
  db: TestDatabase;
  nats: TestNats;
  timer: ServiceProcess;
  dispatchers: ServiceProcess[];
  client: GrpcTimerClient;
  /** Environment every service gets (DATABASE_URL, NATS_URL, SHARD_COUNT...), without NATS credentials. */
  env: Record<string, string>;
  /**
   * `env` plus the service's own NATS user: what to start one more service of that kind with;
   * for the admin also TIMER_API_URL, the mesh's timer service (where its console forwards timer.v1).
   */
  envFor(service: "timer" | "dispatcher" | "admin"): Record<string, string>;
  /** Starts one more dispatcher with the given id. */
  addDispatcher(id: string, env?: Record<string, string>): Promise<ServiceProcess>;
}

/** Starts database, NATS, the timer service and `dispatchers` dispatchers. */
export async function startMesh(
  opts: {
    dispatchers?: number;
    env?: Record<string, string>;
    timerEnv?: Record<string, string>;
    dispatcherEnv?: Record<string, string>;
    /**
     * Use this (empty) database instead of a fresh one on the shared test server: a private
     * cluster the test stops and starts (private-postgres.ts). It is left in place afterwards.
     */
    databaseUrl?: string;
    /** Name prefix of the fresh database ("t"); the benchmarks use "bench" so a leftover is recognizable. */
    databasePrefix?: string;
  } = {},
): Promise<TestMesh> {
  const db = opts.databaseUrl
    ? existingDatabase(opts.databaseUrl)
    : await createTestDatabase(opts.databasePrefix);
  const nats = await startNats();
  const env = { DATABASE_URL: db.url, NATS_URL: nats.url, SHARD_COUNT: "64", ...opts.env };
  let timerApi: Record<string, string> = {};
  const envFor = (service: "timer" | "dispatcher" | "admin") => ({
    ...env,
    ...nats.serviceEnv(service),
    ...(service === "admin" ? timerApi : {}),
  });
  const started: ServiceProcess[] = [];
  try {
    const timer = await startService("timer", { ...envFor("timer"), ...opts.timerEnv });
    started.push(timer);
    timerApi = { TIMER_API_URL: `http://127.0.0.1:${timer.grpcPort}` };
    const dispatchers: ServiceProcess[] = [];
    const addDispatcher = async (id: string, extra: Record<string, string> = {}) => {
      const d = await startService("dispatcher", {
        ...envFor("dispatcher"),
        DISPATCHER_ID: id,
        ...opts.dispatcherEnv,
        ...extra,
      });
      dispatchers.push(d);
      started.push(d);
      return d;
    };
    for (let i = 0; i < (opts.dispatchers ?? 1); i++) await addDispatcher(`d${i + 1}`);
    const client = new GrpcTimerClient(`127.0.0.1:${timer.grpcPort}`);
    return {
      db,
      nats,
      timer,
      dispatchers,
      client,
      env,
      envFor,
      addDispatcher,
      async [Symbol.asyncDispose]() {
        client.close();
        await Promise.all(started.map((p) => p[Symbol.asyncDispose]()));
        await nats[Symbol.asyncDispose]();
        await db[Symbol.asyncDispose]();
      },
    };
  } catch (err) {
    await Promise.all(started.map((p) => p[Symbol.asyncDispose]()));
    await nats[Symbol.asyncDispose]();
    await db[Symbol.asyncDispose]();
    throw err;
  }
}

/** A pool on a database the caller owns; disposing only closes the pool. */
function existingDatabase(url: string): TestDatabase {
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  // Its server may be stopped under it on purpose: an idle client's broken connection must not
  // crash the test (a query on it still fails, as it should).
  pool.on("error", () => {});
  return { url, pool, [Symbol.asyncDispose]: () => pool.end() };
}
