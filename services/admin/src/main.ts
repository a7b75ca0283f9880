import { readFile } from "node:fs/promises";
import { hostname } from "node:os";
import { createLogger } from "../../shared/src/logger.js";
import { startServiceTelemetry } from "../../shared/src/telemetry/telemetry.js";
import { SERVICE_VERSION } from "../../shared/src/version.js";
import { ConfigError } from "../../shared/src/env.js";
import { openDatabase } from "../../shared/src/db.js";
import { connectNats } from "../../shared/src/nats.js";
import { runMain, runService } from "../../shared/src/service-runtime.js";
import { AdminService, file_admin_v1_admin } from "../../shared/src/gen/admin/v1/admin_pb.js";
import { loadAdminConfig, type AdminConfig } from "./config.js";
import { Auditor } from "./audit.js";
import { DispatcherDirectory } from "./dispatcher-directory.js";
import { createAdminService } from "./handlers.js";
import { MeshControl, type DispatcherTls } from "./mesh-control.js";

const bootLog = createLogger("admin", "info");

/** TLS for calls to dispatchers, when DISPATCHER_TLS_CA_FILE is set. */
async function dispatcherTls(config: AdminConfig): Promise<DispatcherTls | undefined> {
  if (!config.dispatcherTlsCaFile) return undefined;
  const read = (variable: string, path: string) =>
    readFile(path).catch((err: Error) => {
      throw new Error(`${variable}: cannot read ${path}: ${err.message}`);
    });
  const own = config.security.tls;
  return {
    ca: await read("DISPATCHER_TLS_CA_FILE", config.dispatcherTlsCaFile),
    cert: own ? await read("TLS_CERT_FILE", own.certFile) : undefined,
    key: own ? await read("TLS_KEY_FILE", own.keyFile) : undefined,
  };
}

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
  const tls = await dispatcherTls(config);
  const pool = await openDatabase(config.databaseUrl, Math.min(config.dbPoolMax, 5), "admin", config.shardCount, log, telemetry);
  const nats = await connectNats(config.natsUrl, "admin", log, telemetry.meter);
  const directory = new DispatcherDirectory(nats, config.memberTtlMs, log);
  directory.start();
  const control = new MeshControl(
    nats,
    { rebalanceWaitMs: config.rebalanceWaitMs, callTimeoutMs: config.dispatcherCallTimeoutMs, tls },
    log,
  );
  await runService({
    name: "admin",
    host: config.host,
    grpcPort: config.grpcPort,
    httpPort: config.httpPort,
    log,
    files: [file_admin_v1_admin],
    serviceNames: [AdminService.typeName],
    routes: (router) =>
      router.service(
        AdminService,
        createAdminService({
          pool,
          nats,
          directory,
          control,
          auditor: new Auditor(pool, log),
          shardCount: config.shardCount,
          memberTtlMs: config.memberTtlMs,
          log,
        }),
      ),
    checks: {
      postgres: async () => (await pool.query("SELECT 1")).rowCount === 1,
      nats: async () => !nats.isClosed() && (await nats.rtt()) >= 0,
    },
    telemetry,
    security: config.security,
    onStop: async () => {
      directory.stop();
      await nats.drain();
      await pool.end();
    },
  });
});
