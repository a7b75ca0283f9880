// The admin service's process: reads its settings, opens Postgres and NATS, and serves
// admin.v1.AdminService, joined here from its parts (*-handlers.ts), each over its own SQL
// (*-store.ts). Only wiring lives here.
import { hostname } from "node:os";
import { fileURLToPath } from "node:url";
import { createLogger } from "../../shared/src/logger.js";
import { startServiceTelemetry } from "../../shared/src/telemetry/telemetry.js";
import { SERVICE_VERSION } from "../../shared/src/version.js";
import { loadServiceConfig } from "../../shared/src/service-config.js";
import { openDatabase } from "../../shared/src/db.js";
import type { ServiceImpl } from "@connectrpc/connect";
import { MeshMessageDrops } from "../../shared/src/mesh-message-drops.js";
import { connectNats } from "../../shared/src/nats.js";
import { runMain, runService } from "../../shared/src/service-runtime.js";
import { AdminService, file_admin_v1_admin } from "../../shared/src/gen/admin/v1/admin_pb.js";
import { loadAdminConfig } from "./config.js";
import { dispatcherTls, dispatcherTokenSource } from "./dispatcher-credentials.js";
import { Auditor } from "./audit.js";
import { TimerApiProxy, timerApiTls } from "./console-proxy.js";
import { startConsoleServer } from "./console-server.js";
import { DispatcherDirectory } from "./dispatcher-directory.js";
import { bulkHandlers } from "./bulk-handlers.js";
import { callerHandlers } from "./caller-handlers.js";
import { groupHandlers } from "./group-handlers.js";
import type { AdminDeps } from "./handler-support.js";
import { inspectHandlers } from "./inspect-handlers.js";
import { meshHandlers } from "./mesh-handlers.js";
import { purgeHandlers } from "./purge-handlers.js";
import { type ForecastDeps, forecastHandlers, perShardRows } from "./forecast-handlers.js";
import { startLoadAheadMetrics } from "./load-ahead-metrics.js";
import { RecentFiringPeak } from "./recent-firing-peak.js";
import { MeshControl } from "./mesh-control.js";
import { operationHandlers } from "./operation-handlers.js";
import { OperationRunner } from "./operation-runner.js";

const bootLog = createLogger("admin", "info");
/** What scripts/build-console.mjs makes (npm ci, npm start, npm run build:console). */
const CONSOLE_DIST = fileURLToPath(new URL("../console/dist/", import.meta.url));

/** admin.v1.AdminService, one part per section of the API (each part's file says what it holds). */
function adminService(
  deps: AdminDeps,
  forecast: ForecastDeps,
  runner: OperationRunner,
): ServiceImpl<typeof AdminService> {
  return {
    ...operationHandlers(deps, runner),
    ...meshHandlers(deps),
    ...groupHandlers(deps),
    ...bulkHandlers(deps),
    ...purgeHandlers(deps),
    ...inspectHandlers(deps),
    ...forecastHandlers(deps, forecast),
    ...callerHandlers(),
  };
}

runMain(bootLog, async () => {
  const config = loadServiceConfig(() => loadAdminConfig(process.env));
  const log = createLogger("admin", config.logLevel);
  const telemetry = startServiceTelemetry(
    "admin",
    `admin-${hostname()}-${process.pid}`,
    config,
    SERVICE_VERSION,
  );
  const tls = await dispatcherTls(config);
  const database = openDatabase(config, "admin", log, telemetry);
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
  const deps: AdminDeps = {
    pool,
    nats,
    directory,
    control,
    auditor: new Auditor(pool, log),
    shardCount: config.shardCount,
    memberTtlMs: config.memberTtlMs,
    listPageMaxBytes: config.listPageMaxBytes,
    log,
  };
  const forecast: ForecastDeps = {
    rowBudget: config.forecastRowBudget,
    recentPeak: new RecentFiringPeak(pool),
  };
  let stopLoadAhead: (() => void) | undefined;
  // Every admin process works on bulk operations; a killed one's are resumed by another.
  const runner = new OperationRunner(pool, nats, log, {
    leaseMs: config.bulkOperationLeaseMs,
    pollMs: config.bulkOperationPollMs,
  });
  // One implementation, mounted on the gRPC port and on the console's.
  const implementation = adminService(deps, forecast, runner);
  const consoleConfig = config.console;
  const timerApi = consoleConfig && {
    url: consoleConfig.timerApiUrl,
    tls: await timerApiTls(config),
  };
  const service = await runService({
    name: "admin",
    host: config.host,
    grpcPort: config.grpcPort,
    httpPort: config.httpPort,
    log,
    files: [file_admin_v1_admin],
    serviceNames: [AdminService.typeName],
    routes: (router) => router.service(AdminService, implementation),
    // Most admin calls are Postgres alone, so the service is ready on Postgres: while NATS is
    // away, only the calls that go through the dispatchers (ListDispatchers, DrainDispatcher,
    // RebalanceShards) answer UNAVAILABLE, naming NATS (mesh-handlers.ts).
    dependencies: { postgres: database, nats },
    optional: ["nats"],
    start: { after: [database] },
    telemetry,
    security: config.security,
    grpcMaxRequestBytes: config.grpcMaxRequestBytes,
    shutdownTimeoutMs: config.shutdownTimeoutMs,
    // The browser console (CONSOLE_PORT), unless CONSOLE_ENABLED=false: the same AdminService
    // calls as the gRPC port's, and timer.v1 forwarded to TIMER_API_URL.
    extraServers:
      consoleConfig && timerApi
        ? [
            (rpc) =>
              startConsoleServer({
                host: consoleConfig.host,
                port: consoleConfig.port,
                distDir: CONSOLE_DIST,
                rpc,
                proxy: new TimerApiProxy({
                  ...timerApi,
                  maxRequestBytes: config.grpcMaxRequestBytes,
                  log,
                }),
                publicConfig: { jaegerUiUrl: consoleConfig.jaegerUiUrl ?? null, version: SERVICE_VERSION },
                log,
              }),
          ]
        : [],
    onStop: async () => {
      directory.stop();
      await runner.stop();
      stopLoadAhead?.();
    },
  });
  // The gauges read Postgres, so they start once it is there.
  service.after([database], async () => {
    stopLoadAhead = startLoadAheadMetrics(
      telemetry.meter,
      {
        pool,
        shardCount: config.shardCount,
        perShardRows: perShardRows(config.forecastRowBudget, config.shardCount),
        refreshMs: config.forecastRefreshMs,
        recentPeak: forecast.recentPeak,
      },
      log,
    );
  });
  service.after([database], () => runner.start());
  // The directory hears heartbeats from the first connection on.
  service.after([nats], async () => directory.start(await nats.ready));
});
