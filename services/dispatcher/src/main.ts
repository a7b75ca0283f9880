import { createLogger } from "../../shared/src/logger.js";
import { ConfigError } from "../../shared/src/env.js";
import { openDatabase } from "../../shared/src/db.js";
import { ALL_SHARDS_SUBJECT, connectNats, type TimerAnnouncement } from "../../shared/src/nats.js";
import { runMain, runService } from "../../shared/src/service-runtime.js";
import { DispatcherService, file_dispatcher_v1_dispatcher } from "../../shared/src/gen/dispatcher/v1/dispatcher_pb.js";
import { loadDispatcherConfig } from "./config.js";
import { CallbackDeliverer } from "./delivery.js";
import { shardLag } from "./dispatch-store.js";
import { createDispatcherService } from "./handlers.js";
import { Scheduler } from "./scheduler.js";
import { AllShards } from "./shard-ownership.js";

const VERSION = "0.1.0";
const bootLog = createLogger("dispatcher", "info");

runMain(bootLog, async () => {
  let config;
  try {
    config = loadDispatcherConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) throw new Error(`configuration: ${err.message}`);
    throw err;
  }
  const log = createLogger("dispatcher", config.logLevel).child({ dispatcher_id: config.dispatcherId });
  const pool = await openDatabase(config.databaseUrl, config.dbPoolMax, `dispatcher:${config.dispatcherId}`, config.shardCount, log);
  const nats = await connectNats(config.natsUrl, `dispatcher:${config.dispatcherId}`, log);
  const deliverer = new CallbackDeliverer(nats, config.callbackTimeoutMs, config.maxInFlight);
  const ownership = new AllShards(config.shardCount);
  const scheduler = new Scheduler(
    pool,
    deliverer,
    ownership,
    {
      dispatcherId: config.dispatcherId,
      lookaheadMs: config.lookaheadMs,
      pollIntervalMs: config.pollIntervalMs,
      overdueGraceMs: config.overdueGraceMs,
      claimLeadMs: config.claimLeadMs,
      claimBatch: config.claimBatch,
      maxInFlight: config.maxInFlight,
      maxHeld: config.maxHeld,
      claimTtlMs: config.claimLeadMs + config.callbackTimeoutMs + 30_000,
      catchUpShare: config.catchUpShare,
    },
    log,
  );

  const decoder = new TextDecoder();
  const sub = nats.subscribe(ALL_SHARDS_SUBJECT, {
    callback: (err, msg) => {
      if (err) return log.warn({ err }, "announcement subscription error");
      try {
        scheduler.announce(JSON.parse(decoder.decode(msg.data)) as TimerAnnouncement);
      } catch (e) {
        log.warn({ err: e, subject: msg.subject }, "ignoring malformed announcement");
      }
    },
  });
  scheduler.start();
  const startTimeMs = Date.now();

  await runService({
    name: "dispatcher",
    host: config.host,
    grpcPort: config.grpcPort,
    httpPort: config.httpPort,
    log,
    files: [file_dispatcher_v1_dispatcher],
    serviceNames: [DispatcherService.typeName],
    routes: (router) =>
      router.service(
        DispatcherService,
        createDispatcherService({
          dispatcherId: config.dispatcherId,
          shardCount: config.shardCount,
          version: VERSION,
          startTimeMs,
          scheduler,
          ownership,
          members: () => [config.dispatcherId],
          shardLag: () => shardLag(pool, ownership.owned()),
          epochOf: () => 0n,
        }),
      ),
    checks: {
      postgres: async () => (await pool.query("SELECT 1")).rowCount === 1,
      nats: async () => !nats.isClosed() && (await nats.rtt()) >= 0,
    },
    onStop: async () => {
      sub.unsubscribe();
      await scheduler.stop(config.shutdownTimeoutMs);
      deliverer.close();
      await nats.drain();
      await pool.end();
    },
    stopTimeoutMs: config.shutdownTimeoutMs + 10_000,
  });
});
