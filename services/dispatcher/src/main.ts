import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type { Subscription } from "@nats-io/transport-node";
import { SpanKind } from "@opentelemetry/api";
import type pg from "pg";
import { createLogger, type Logger } from "../../shared/src/logger.js";
import { extractFrom } from "../../shared/src/telemetry/trace-context.js";
import { startServiceTelemetry, type Telemetry } from "../../shared/src/telemetry/telemetry.js";
import { SERVICE_VERSION } from "../../shared/src/version.js";
import { createDispatcherMetrics } from "./dispatcher-metrics.js";
import { ConfigError } from "../../shared/src/env.js";
import { openDatabase } from "../../shared/src/db.js";
import { MeshMessageDrops } from "../../shared/src/mesh-message-drops.js";
import {
  ANNOUNCEMENT_SUBJECTS,
  decodeAnnouncements,
  decodeRebalanceRequest,
  encodeRebalanceReply,
  REBALANCE_SUBJECT,
  shardSubject,
} from "../../shared/src/mesh-messages.js";
import { connectNats, type NatsLink } from "../../shared/src/nats.js";
import { runMain, runService } from "../../shared/src/service-runtime.js";
import {
  DispatcherService,
  file_dispatcher_v1_dispatcher,
} from "../../shared/src/gen/dispatcher/v1/dispatcher_pb.js";
import { loadDispatcherConfig, type DispatcherConfig } from "./config.js";
import { CallbackDeliverer } from "./delivery.js";
import { shardLag } from "./dispatch-store.js";
import { DbClock } from "./db-clock.js";
import { createDispatcherService, type DispatcherState } from "./handlers.js";
import { Membership } from "./membership.js";
import { Scheduler } from "./scheduler.js";
import { LeaseKeeper } from "./shard-leases.js";
import { shardsOf } from "./shard-ring.js";

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
  const shardSubs = new Map<number, Subscription>();
  const subscribeShard = (shard: number) => {
    if (shardSubs.has(shard)) return;
    shardSubs.set(
      shard,
      nats.subscribe(shardSubject(shard), {
        callback: (err, msg) => {
          if (err) return log.warn({ err, shard }, "announcement subscription error");
          const receive = () => {
            // Checked here, so nothing malformed ever reaches a claim batch.
            const a = decodeAnnouncements(msg.data, shard, config.shardCount);
            if (!a.ok) return drops.drop(ANNOUNCEMENT_SUBJECTS, a.reason);
            for (const t of a.value) scheduler.announce(t);
          };
          if (!telemetry.tracingEnabled) return receive();
          const parent = extractFrom((k) => msg.headers?.get(k) || undefined);
          telemetry.tracer.startActiveSpan(
            `process ${msg.subject}`,
            {
              kind: SpanKind.CONSUMER,
              attributes: {
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.destination.name": msg.subject,
                "timer.shard": shard,
              },
            },
            parent,
            (span) => {
              receive();
              span.end();
            },
          );
        },
      }),
    );
  };
  const unsubscribeShard = (shard: number) => {
    shardSubs.get(shard)?.unsubscribe();
    shardSubs.delete(shard);
  };

  // Fire times, claims and "never early" are judged by Postgres's clock, measured here.
  const clock = new DbClock(pool, log);
  const leases: LeaseKeeper = new LeaseKeeper(
    pool,
    config.dispatcherId,
    claimOwner,
    { leaseTtlMs: config.leaseTtlMs, tickMs: config.leaseTickMs },
    {
      releasing: async (shards) => {
        for (const s of shards) unsubscribeShard(s);
        await scheduler.dropUnowned();
      },
      gained: async (shards, takenOver) => {
        for (const s of shards) subscribeShard(s);
        // Claims the previous owner left in flight are not taken back here: it may only have
        // stalled and still record their outcomes. The poll takes back those whose deadline
        // passes without one (reclaimExpired).
        if (takenOver.length > 0)
          log.warn({ shards: takenOver.length }, "took over shards whose previous owner's lease expired");
        await scheduler.loadShards(shards);
      },
      lost: (shards) => {
        for (const s of shards) unsubscribeShard(s);
        void scheduler.dropUnowned();
      },
    },
    log,
  );
  const scheduler: Scheduler = new Scheduler(
    pool,
    deliverer,
    leases,
    {
      dispatcherId: config.dispatcherId,
      clock,
      announcementsFlowing: () => natsLink.ifConnected() !== undefined,
      claimOwner,
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
    log,
    {
      fired: (lateMs) => metrics.fired(lateMs),
      attempted: (transport, result) => metrics.attempted(transport, result),
      finished: (ok) => metrics.finished(ok),
      claimDropped: () => metrics.claimDropped(),
    },
    telemetry.tracer,
    telemetry.tracingEnabled,
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
  let draining = false;
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
  const reassign = () => {
    const mine = draining ? [] : shardsOf(config.dispatcherId, membership.activeIds(), config.shardCount);
    leases.setDesired(mine);
  };
  membership.onChange(reassign);
  membership.start();
  // Operators (through the admin service) ask every dispatcher to reconcile its leases with
  // the assignment now; `undrain` names dispatchers that may take shards again.
  const control = nats.subscribe(REBALANCE_SUBJECT, {
    callback: (err, msg) => {
      if (err) return;
      const req = decodeRebalanceRequest(msg.data);
      if (!req.ok) return drops.drop(REBALANCE_SUBJECT, req.reason);
      if (draining && req.value.undrain.includes(config.dispatcherId)) {
        draining = false;
        membership.setDraining(false);
        log.info("resumed taking shards after drain");
      }
      reassign();
      void leases.tick();
      if (msg.reply) {
        try {
          msg.respond(
            encodeRebalanceReply({
              dispatcherId: config.dispatcherId,
              draining,
              ownedShards: leases.owned().length,
            }),
          );
        } catch (e) {
          log.warn({ err: e }, "could not answer a rebalance request");
        }
      }
    },
  });
  // Hear the others before claiming anything, so a joining dispatcher does not first reach
  // for every free shard. Shutdown cuts the wait short (the sleep rejects on abort).
  await sleep(Math.min(config.memberTtlMs, 2 * config.heartbeatMs), undefined, { signal }).catch(() => {});
  // Shutdown ends the first clock reading, which waits for Postgres.
  signal.addEventListener("abort", () => clock.stop(), { once: true });
  if (!signal.aborted) {
    reassign();
    await clock.start();
  }
  if (!signal.aborted) {
    leases.start();
    scheduler.start();
  }

  const drain = async (): Promise<number> => {
    const before = leases.owned().length;
    draining = true;
    membership.setDraining(true);
    reassign();
    await leases.tick();
    log.info({ released: before - leases.owned().length }, "drained");
    return before - leases.owned().length;
  };

  return {
    scheduler,
    ownership: leases,
    membership,
    members: () => membership.list().map((m) => m.id),
    draining: () => draining,
    drain,
    // The NATS connections and the pool stay open for the runtime to close after the calls in
    // flight (service-runtime.ts).
    stop: async () => {
      metrics.stop();
      clock.stop();
      // Leave the ring, hand the shards over (stop claiming, then release), then finish
      // the deliveries already in flight and record them.
      draining = true;
      control.unsubscribe();
      await membership.leave();
      await leases.stop();
      for (const s of [...shardSubs.keys()]) unsubscribeShard(s);
      await scheduler.stop(config.shutdownTimeoutMs);
      deliverer.close();
    },
  };
}
