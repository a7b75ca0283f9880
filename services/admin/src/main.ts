import { createLogger } from "../../shared/src/logger.js";
import { ConfigError } from "../../shared/src/env.js";
import { openDatabase } from "../../shared/src/db.js";
import { runMain, runService } from "../../shared/src/service-runtime.js";
import { loadAdminConfig } from "./config.js";

const bootLog = createLogger("admin", "info");

runMain(bootLog, async () => {
  let config;
  try {
    config = loadAdminConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) throw new Error(`configuration: ${err.message}`);
    throw err;
  }
  const log = createLogger("admin", config.logLevel);
  const pool = await openDatabase(config.databaseUrl, Math.min(config.dbPoolMax, 5), "admin", config.shardCount, log);
  await runService({
    name: "admin",
    host: config.host,
    grpcPort: config.grpcPort,
    httpPort: config.httpPort,
    log,
    files: [],
    serviceNames: [],
    routes: () => {},
    checks: {
      postgres: async () => (await pool.query("SELECT 1")).rowCount === 1,
    },
    onStop: async () => {
      await pool.end();
    },
  });
});
