import { readFile } from "node:fs/promises";
import { hostname } from "node:os";
import { createLogger, type Logger } from "../../shared/src/logger.js";
import { startServiceTelemetry } from "../../shared/src/telemetry/telemetry.js";
import { SERVICE_VERSION } from "../../shared/src/version.js";
import { ConfigError } from "../../shared/src/env.js";
import { openDatabase } from "../../shared/src/db.js";
import { Code, ConnectError } from "@connectrpc/connect";
import { MeshMessageDrops } from "../../shared/src/mesh-message-drops.js";
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

/**
 * The admin's own token for dispatchers, read at every call from DISPATCHER_TOKEN_FILE so that a
 * rotated secret is used at once. An unreadable file fails the call, naming the variable.
 */
function dispatcherTokenSource(config: AdminConfig, log: Logger): () => Promise<string | undefined> {
  const source = config.dispatcherToken;
  if (!source) return async () => undefined;
  if ("inline" in source) return async () => source.inline;
  return async () => {
    try {
      return (await readFile(source.file, "utf8")).trim() || undefined;
    } catch (err) {
      log.error({ err, variable: "DISPATCHER_TOKEN_FILE" }, "cannot read the admin's dispatcher token");
      throw new ConnectError(
        `DISPATCHER_TOKEN_FILE of the admin service cannot be read`,
        Code.FailedPrecondition,
      );
    }
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
  const telemetry = startServiceTelemetry(
    "admin",
    `admin-${hostname()}-${process.pid}`,
    config,
    SERVICE_VERSION,
  );
  const tls = await dispatcherTls(config);
  const database = openDatabase(config, "admin", log, telemetry, Math.min(config.dbPoolMax, 5));
  const pool = database.pool;
  const dispatcherToken = dispatcherTokenSource(config, log);
  await dispatcherToken(); // an unreadable DISPATCHER_TOKEN_FILE stops the start, not the first drain
  if (!config.dispatcherToken) {
    log.warn(
      "DISPATCHER_TOKEN is not set: DrainDispatcher works only against dispatchers with AUTH_DISABLED=true",
    );
  }
  const nats = connectNats(config.natsUrl, config.natsCredentials, "admin", log, telemetry.meter);
  const drops = new MeshMessageDrops(telemetry.meter, log);
  const directory = new DispatcherDirectory(config.memberTtlMs, drops);
  const control = new MeshControl(
    {
      rebalanceWaitMs: config.rebalanceWaitMs,
      callTimeoutMs: config.dispatcherCallTimeoutMs,
      tls,
      dispatcherToken,
      shardCount: config.shardCount,
    },
    log,
    drops,
  );
  const service = await runService({
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
          listPageMaxBytes: config.listPageMaxBytes,
          log,
        }),
      ),
    // Most admin calls are Postgres alone, so the service is ready on Postgres: while NATS is
    // away, only the calls that go through the dispatchers (ListDispatchers, DrainDispatcher,
    // RebalanceShards) answer UNAVAILABLE, naming NATS (handlers.ts).
    dependencies: { postgres: database, nats },
    optional: ["nats"],
    start: { after: [database] },
    telemetry,
    security: config.security,
    grpcMaxRequestBytes: config.grpcMaxRequestBytes,
    shutdownTimeoutMs: config.shutdownTimeoutMs,
    onStop: async () => {
      directory.stop();
    },
  });
  // The directory hears heartbeats from the first connection on.
  service.after([nats], async () => directory.start(await nats.ready));
});
