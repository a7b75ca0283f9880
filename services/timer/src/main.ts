import { hostname } from "node:os";
import { createLogger } from "../../shared/src/logger.js";
import { startServiceTelemetry } from "../../shared/src/telemetry/telemetry.js";
import { SERVICE_VERSION } from "../../shared/src/version.js";
import { createTimerMetrics } from "./timer-metrics.js";
import { loadServiceConfig } from "../../shared/src/service-config.js";
import { openDatabase } from "../../shared/src/db.js";
import { connectNats } from "../../shared/src/nats.js";
import { runMain, runService } from "../../shared/src/service-runtime.js";
import { file_timer_v1_timer, TimerService } from "../../shared/src/gen/timer/v1/timer_pb.js";
import { file_timer_v1_schedule, ScheduleService } from "../../shared/src/gen/timer/v1/schedule_pb.js";
import { createScheduleService } from "./schedule-handlers.js";
import { loadTimerConfig } from "./config.js";
import { createTimerService } from "./handlers.js";
import { CreateBatcher } from "./timer-store.js";
import { startActiveTimerRecount } from "./active-timer-recount.js";
import { TokenBuckets } from "./create-rate.js";
import { GroupQuota } from "./group-quota.js";

const bootLog = createLogger("timer", "info");

runMain(bootLog, async () => {
  const config = loadServiceConfig(() => loadTimerConfig(process.env));
  const log = createLogger("timer", config.logLevel);
  log.info(
    { egress: config.limits.egress.describe(), natsSubjects: config.limits.tenantSubjects.describe() },
    "callback policy",
  );
  const telemetry = startServiceTelemetry(
    "timer",
    `timer-${hostname()}-${process.pid}`,
    config,
    SERVICE_VERSION,
  );
  const database = openDatabase(config, "timer", log, telemetry);
  const pool = database.pool;
  const nats = connectNats(config.natsUrl, config.natsCredentials, "timer", log, telemetry.meter);
  const batcher = new CreateBatcher(pool, { maxQueued: config.createQueueMax });
  const metrics = createTimerMetrics(telemetry.meter);
  const quota = new GroupQuota(config.quotas.groupMaxActiveTimers);
  const createRate = new TokenBuckets(config.quotas.createRatePerToken, config.quotas.createBurstPerToken);
  let recount: { stop(): void } | undefined;
  await runService({
    name: "timer",
    host: config.host,
    grpcPort: config.grpcPort,
    httpPort: config.httpPort,
    log,
    files: [file_timer_v1_timer, file_timer_v1_schedule],
    serviceNames: [TimerService.typeName, ScheduleService.typeName],
    routes: (router) =>
      router
        .service(
          ScheduleService,
          createScheduleService({ pool, nats, config, log, tracer: telemetry.tracer }),
        )
        .service(
          TimerService,
          createTimerService({
            pool,
            nats,
            batcher,
            config,
            log,
            metrics,
            tracer: telemetry.tracer,
            quota,
            createRate,
          }),
        ),
    // Creating a timer needs Postgres alone: while NATS is away announcements are skipped (the
    // dispatchers' poll finds the timers), so a NATS outage does not take the service out of
    // rotation.
    dependencies: { postgres: database, nats },
    optional: ["nats"],
    // The first recount, before the first create: the group quota checks against real counts.
    start: {
      after: [database],
      run: async () => {
        recount = await startActiveTimerRecount(pool, log, config.activeTimersRefreshMs, [metrics, quota]);
      },
    },
    telemetry,
    security: config.security,
    grpcMaxRequestBytes: config.grpcMaxRequestBytes,
    shutdownTimeoutMs: config.shutdownTimeoutMs,
    onStop: async () => {
      recount?.stop();
    },
  });
});
