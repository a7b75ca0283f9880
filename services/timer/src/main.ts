import { createLogger } from "../../shared/src/logger.js";
import { ConfigError } from "../../shared/src/env.js";
import { openDatabase } from "../../shared/src/db.js";
import { connectNats } from "../../shared/src/nats.js";
import { runMain, runService } from "../../shared/src/service-runtime.js";
import { file_timer_v1_timer, TimerService } from "../../shared/src/gen/timer/v1/timer_pb.js";
import { loadTimerConfig } from "./config.js";
import { createTimerService } from "./handlers.js";
import { CreateBatcher } from "./timer-store.js";

const bootLog = createLogger("timer", "info");

runMain(bootLog, async () => {
  let config;
  try {
    config = loadTimerConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) throw new Error(`configuration: ${err.message}`);
    throw err;
  }
  const log = createLogger("timer", config.logLevel);
  const pool = await openDatabase(config.databaseUrl, config.dbPoolMax, "timer", config.shardCount, log);
  const nats = await connectNats(config.natsUrl, "timer", log);
  const batcher = new CreateBatcher(pool);
  await runService({
    name: "timer",
    host: config.host,
    grpcPort: config.grpcPort,
    httpPort: config.httpPort,
    log,
    files: [file_timer_v1_timer],
    serviceNames: [TimerService.typeName],
    routes: (router) => router.service(TimerService, createTimerService({ pool, nats, batcher, config, log })),
    checks: {
      postgres: async () => (await pool.query("SELECT 1")).rowCount === 1,
      nats: async () => !nats.isClosed() && nats.info !== undefined && (await nats.rtt()) >= 0,
    },
    onStop: async () => {
      await nats.drain();
      await pool.end();
    },
  });
});
