import { hostname } from "node:os";
import { createLogger } from "../../shared/src/logger.js";
import { startServiceTelemetry } from "../../shared/src/telemetry/telemetry.js";
import { SERVICE_VERSION } from "../../shared/src/version.js";
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
  const telemetry = startServiceTelemetry("admin", `admin-${hostname()}-${process.pid}`, config, SERVICE_VERSION);
  const pool = await openDatabase(config.databaseUrl, Math.min(config.dbPoolMax, 5), "admin", config.shardCount, log, telemetry);
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
    telemetry,
    onStop: async () => {
      await pool.end();
    },
  });
});
