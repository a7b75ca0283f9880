// The dispatcher process: reads its settings, opens Postgres and NATS, and wires the parts that
// fire timers (membership, shard assignment and leases, announcement subscriptions, rebalance
// requests, the scheduler) to each other and to the service runtime. Each part's logic lives in
// its own module; this file only builds them and orders their start and their hand-off at stop.
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type pg from "pg";
import { openDatabase } from "../../shared/src/db.js";
import {
  DispatcherService,
  file_dispatcher_v1_dispatcher,
} from "../../shared/src/gen/dispatcher/v1/dispatcher_pb.js";
import { createLogger, type Logger } from "../../shared/src/logger.js";
import { MeshMessageDrops } from "../../shared/src/mesh-message-drops.js";
import { connectNats, type NatsLink } from "../../shared/src/nats.js";
import { loadServiceConfig } from "../../shared/src/service-config.js";
import { runMain, runService } from "../../shared/src/service-runtime.js";
import { startServiceTelemetry, type Telemetry } from "../../shared/src/telemetry/telemetry.js";
import { SERVICE_VERSION } from "../../shared/src/version.js";
import { AnnouncementSubscriptions } from "./announcement-subscriptions.js";
import { type DispatcherConfig, loadDispatcherConfig } from "./config.js";
import { DbClock } from "./db-clock.js";
import { CallbackDeliverer } from "./delivery.js";
import { pgDispatchStore, shardLag } from "./dispatch-store.js";
import { createDispatcherMetrics } from "./dispatcher-metrics.js";
import { createDispatcherService, type DispatcherState } from "./handlers.js";
import { Membership } from "./membership.js";
import { subscribeRebalance } from "./rebalance.js";
import { RetentionLoop } from "./retention-loop.js";
import { ScheduleAdvancer } from "./schedule-advancer.js";
import { Scheduler } from "./scheduler.js";
import { ShardAssignment } from "./shard-assignment.js";
import { LeaseKeeper } from "./shard-leases.js";

const bootLog = createLogger("dispatcher", "info");

runMain(bootLog, async () => {
  const config = loadServiceConfig(() => loadDispatcherConfig(process.env));
  const log = createLogger("dispatcher", config.logLevel).child({ dispatcher_id: config.dispatcherId });
  const startTimeMs = Date.now();
  // Claims name this process, not just the dispatcher id, so that a restart under the same id
  // can tell its predecessor's orphaned claims from its own.
  const claimOwner = `${config.dispatcherId}#${randomBytes(4).toString("hex")}`;
  // The firing path passes span contexts explicitly, so no implicit (AsyncLocalStorage) context.
  const telemetry = startServiceTelemetry("dispatcher", config.dispatcherId, config, SERVICE_VERSION, false);
  const database = openDatabase(config, `dispatcher:${config.dispatcherId}`, log, telemetry);
  // Two NATS connections: the mesh's own (membership, announcements, rebalance) and one for
  // tenant callbacks, whose user may publish only outside the mesh's subjects
  // (infra/nats/nats.conf), so no callback subject can speak for the mesh.
  const nats = connectNats(
    config.natsUrl,
    config.natsCredentials,
    `dispatcher:${config.dispatcherId}`,
    log,
    telemetry.meter,
  );
  let callbackNats = nats;
  if (config.callbackNatsCredentials) {
    callbackNats = connectNats(
      config.natsUrl,
      config.callbackNatsCredentials,
      `dispatcher:${config.dispatcherId}:callbacks`,
      log,
    );
  } else {
    log.warn(
      "NATS_USER and CALLBACK_NATS_USER are not set: tenant callbacks are published on the mesh's own, unrestricted " +
        "NATS connection, so a callback subject can reach the mesh's subjects. Run NATS with infra/nats/nats.conf and " +
        "set NATS_USER/NATS_PASSWORD and CALLBACK_NATS_USER/CALLBACK_NATS_PASSWORD outside local development.",
    );
  }
  const drops = new MeshMessageDrops(telemetry.meter, log);
  log.info(
    { egress: config.egress.describe(), natsSubjects: config.tenantSubjects.describe() },
    "callback policy",
  );

  // Membership, leases and the scheduler need Postgres and NATS: the ports open at once, and
  // the dispatcher starts dispatching (and becomes ready) once both are there.
  let dispatching: Dispatching | undefined;
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
          version: SERVICE_VERSION,
          startTimeMs,
          state: () => dispatching,
          shardLag: (shards) => shardLag(database.pool, shards),
        }),
      ),
    dependencies: {
      postgres: database,
      nats,
      ...(callbackNats !== nats ? { nats_callbacks: callbackNats } : {}),
    },
    checks: { membership: async () => dispatching?.membership.connected ?? false },
    start: {
      after: [database, nats, callbackNats],
      run: async (signal) => {
        dispatching = await startDispatching(
          {
            config,
            log,
            telemetry,
            pool: database.pool,
            natsLink: nats,
            callbackNats,
            drops,
            claimOwner,
            startTimeMs,
          },
          signal,
        );
      },
    },
    telemetry,
    security: config.security,
    grpcMaxRequestBytes: config.grpcMaxRequestBytes,
    shutdownTimeoutMs: config.shutdownTimeoutMs,
    onStop: async () => {
      await dispatching?.stop();
    },
  });
});

/** A started dispatcher: what its handlers read, and its hand-off at shutdown. */
interface Dispatching extends DispatcherState {
  membership: Membership;
  /** Leaves the mesh, hands the shards over, and finishes (or records) the deliveries in flight. */
  stop(): Promise<void>;
}

/**
 * Joins the mesh and starts dispatching. `signal` (shutdown) cuts the start short: what was
 * started is returned all the same, for stop() to undo.
 */
async function startDispatching(
  ctx: {
    config: DispatcherConfig;
    log: Logger;
    telemetry: Telemetry;
    pool: pg.Pool;
    /** The mesh's own connection (connected: `start.after` waited for it). */
    natsLink: NatsLink;
    /** Tenant callbacks are published only while it is connected. */
    callbackNats: NatsLink;
    drops: MeshMessageDrops;
    claimOwner: string;
    startTimeMs: number;
  },
  signal: AbortSignal,
): Promise<Dispatching> {
  const { config, log, telemetry, pool, natsLink, callbackNats, drops, claimOwner, startTimeMs } = ctx;
  const nats = await natsLink.ready;
  const deliverer = new CallbackDeliverer({
    nats: callbackNats,
    timeoutMs: config.callbackTimeoutMs,
    maxSockets: config.maxInFlight,
    egress: config.egress,
    tenantSubjects: config.tenantSubjects,
  });

  // Announcements of new near-term timers arrive on one subject per owned shard.
  const announcements = new AnnouncementSubscriptions({
    nats,
    shardCount: config.shardCount,
    telemetry,
    drops,
    log,
    announce: (a) => scheduler.announce(a),
  });

  // Fire times, claims and "never early" are judged by Postgres's clock, measured here.
  const clock = new DbClock(pool, log);
  const leases: LeaseKeeper = new LeaseKeeper(
    pool,
    config.dispatcherId,
    claimOwner,
    { leaseTtlMs: config.leaseTtlMs, tickMs: config.leaseTickMs },
    {
      releasing: async (shards) => {
        for (const s of shards) announcements.unsubscribe(s);
        await scheduler.dropUnowned();
      },
      gained: async (shards, takenOver) => {
        for (const s of shards) announcements.subscribe(s);
        // Claims the previous owner left in flight are not taken back here: it may only have
        // stalled and still record their outcomes. The poll takes back those whose deadline
        // passes without one (reclaimExpired).
        if (takenOver.length > 0)
          log.warn({ shards: takenOver.length }, "took over shards whose previous owner's lease expired");
        await scheduler.loadShards(shards);
      },
      lost: (shards) => {
        for (const s of shards) announcements.unsubscribe(s);
        void scheduler.dropUnowned();
      },
    },
    log,
  );
  const scheduler: Scheduler = new Scheduler(
    {
      store: pgDispatchStore(pool, config.dispatcherId, claimOwner),
      clock,
      deliver: (d) => deliverer.deliver(d),
      ownership: leases,
      log,
      events: {
        fired: (lateMs) => metrics.fired(lateMs),
        attempted: (transport, result, ms) => metrics.attempted(transport, result, ms),
        finished: (ok) => metrics.finished(ok),
        claimDropped: () => metrics.claimDropped(),
        latenessExceeded: (action) => metrics.latenessExceeded(action),
      },
      tracer: telemetry.tracingEnabled ? telemetry.tracer : undefined,
    },
    {
      announcementsFlowing: () => natsLink.ifConnected() !== undefined,
      lookaheadMs: config.lookaheadMs,
      pollIntervalMs: config.pollIntervalMs,
      overdueGraceMs: config.overdueGraceMs,
      claimLeadMs: config.claimLeadMs,
      claimBatch: config.claimBatch,
      maxInFlight: config.maxInFlight,
      maxHeld: config.maxHeld,
      claimTtlMs: config.claimLeadMs + config.callbackTimeoutMs + 5_000,
      catchUpShare: config.catchUpShare,
      groupShare: config.groupShare,
      destinationShare: config.destinationShare,
    },
  );

  const membership = new Membership(
    nats,
    {
      id: config.dispatcherId,
      grpcAddress: config.advertiseAddress,
      version: SERVICE_VERSION,
      startedAtMs: startTimeMs,
    },
    { heartbeatMs: config.heartbeatMs, memberTtlMs: config.memberTtlMs },
    log,
    drops,
  );
  const metrics = createDispatcherMetrics(
    telemetry.meter,
    pool,
    config.shardCount,
    {
      ownedShards: () => leases.owned().length,
      members: () => membership.list().length,
      timersInMemory: () => scheduler.held,
      deliveriesInFlight: () => scheduler.deliveriesInFlight,
      dueNotStarted: () => scheduler.dueNotStarted(),
      timersParked: () => scheduler.parked,
      timersParkedTotal: () => scheduler.parkedTotal,
      clockOffsetMs: () => clock.wallOffsetMs(),
    },
    log,
  );
  const assignment = new ShardAssignment({
    dispatcherId: config.dispatcherId,
    shardCount: config.shardCount,
    membership,
    leases,
    log,
  });
  membership.onChange(() => assignment.reassign());
  membership.start();
  const rebalance = subscribeRebalance({
    nats,
    dispatcherId: config.dispatcherId,
    assignment,
    leases,
    drops,
    log,
  });
  // Hear the others before claiming anything, so a joining dispatcher does not first reach
  // for every free shard. Shutdown cuts the wait short (the sleep rejects on abort).
  await sleep(Math.min(config.memberTtlMs, 2 * config.heartbeatMs), undefined, { signal }).catch(() => {});
  // Shutdown ends the first clock reading, which waits for Postgres.
  signal.addEventListener("abort", () => clock.stop(), { once: true });
  if (!signal.aborted) {
    assignment.reassign();
    await clock.start();
  }
  if (!signal.aborted) {
    leases.start();
    scheduler.start();
  }
  // Deletes what is past its retention when it holds the lock; its own connection (retention-loop.ts).
  const retention = new RetentionLoop({
    databaseUrl: config.databaseUrl,
    applicationName: `dispatcher:${config.dispatcherId}:retention`,
    statementTimeoutMs: config.dbStatementTimeoutMs,
    settings: config.retention,
    meter: telemetry.meter,
    log,
  });
  if (!signal.aborted) retention.start();
  // Creates schedules' next firings ahead of time, shared by all dispatchers (schedule-advancer.ts).
  const advancer = new ScheduleAdvancer({
    pool,
    shardCount: config.shardCount,
    settings: config.schedules,
    log,
  });
  if (!signal.aborted) advancer.start();

  return {
    scheduler,
    ownership: leases,
    membership,
    members: () => membership.list().map((m) => m.id),
    draining: () => assignment.draining,
    drain: () => assignment.drain(),
    // The NATS connections and the pool stay open for the runtime to close after the calls in
    // flight (service-runtime.ts).
    stop: async () => {
      // Ends after its current batch, while the hand-off below goes on.
      const retentionStopped = retention.stop();
      const advancerStopped = advancer.stop();
      metrics.stop();
      clock.stop();
      // Leave the ring, hand the shards over (stop claiming, then release), then finish
      // the deliveries already in flight and record them.
      assignment.stopTaking();
      rebalance.unsubscribe();
      await membership.leave();
      await leases.stop();
      announcements.unsubscribeAll();
      await scheduler.stop(config.shutdownTimeoutMs);
      deliverer.close();
      await retentionStopped;
      await advancerStopped;
    },
  };
}
