// What every service process does around its own logic: serve gRPC (with health and
// reflection, bearer-token authentication, optional TLS) and HTTP from the first moment,
// whatever Postgres and NATS are doing; report readiness from them; start the service's own work
// once what it needs is there; and shut down in order on SIGTERM/SIGINT.
import type { DescFile } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { stdSerializers } from "pino";
import { Code, ConnectError, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { Authenticator, authInterceptor, OPEN_SERVICES } from "./auth.js";
import type { Dependency } from "./dependency.js";
import type { SecurityConfig } from "./env.js";
import { HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import { HealthStatus, registerHealthService } from "./grpc-health.js";
import { registerReflectionServices } from "./grpc-reflection.js";
import type { Logger } from "./logger.js";
import { within } from "./bounded-wait.js";
import { redactCredentials, redactDeep } from "./redact.js";
import { rpcServerInterceptor } from "./telemetry/rpc.js";
import type { Telemetry } from "./telemetry/telemetry.js";
import { readTlsMaterial, type TlsMaterial } from "./tls-files.js";
import {
  errorInterceptor,
  runChecks,
  startGrpcServer,
  startHttpServer,
  type Check,
  type ExtraRoute,
  type ExtraServer,
  type RpcHandler,
} from "./servers.js";

const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;

// How often readiness is re-evaluated for gRPC health (Watch streams hear changes within this).
const HEALTH_INTERVAL_MS = 2_000;

// Shutdown bounds besides SHUTDOWN_TIMEOUT: closing Postgres and NATS (a pool waiting on a hung
// query, a drain through a vanished server), the last HTTP requests, the telemetry flush. The
// process exits 1 only if everything together overruns SHUTDOWN_TIMEOUT by HARD_MARGIN_MS.
const CLOSE_DEPENDENCIES_MS = 5_000;
const CLOSE_HTTP_MS = 1_000;
const FLUSH_TELEMETRY_MS = 3_000;
const HARD_MARGIN_MS = 15_000;

/** A running service: its ports and how to stop it. */
export interface RunningService {
  grpcPort: number;
  httpPort: number;
  health: HealthStatus;
  /**
   * Runs `run` once every one of `deps` is ready (never, when the service stops first), in the
   * background: the start of work that needs them. `run` gets a signal aborted at shutdown and
   * should return promptly then; shutdown waits for it before the service's onStop. A throw is
   * a failed start: logged, exit 1.
   */
  after(deps: Dependency[], run: (signal: AbortSignal) => Promise<void> | void): void;
  stop(reason: string): Promise<void>;
}

/** What a server of the service besides its ports gets (runService's extraServers). */
export interface RpcMount {
  /**
   * A Connect handler for HTTP/1.1 requests over the service's own routes (not health or
   * reflection), through the same interceptors (telemetry, errors, authentication, the
   * readiness gate, the service's own) and request size limit as the gRPC port: a call through
   * it is the same call, authorized and audited the same way.
   */
  handler: RpcHandler;
  /** The gRPC port's TLS material (TLS_*), undefined when it is plaintext. */
  tls: TlsMaterial | undefined;
}

/** Starts the gRPC and HTTP servers of a service and wires SIGTERM/SIGINT to an ordered stop. */
export async function runService(opts: {
  name: string;
  host: string;
  grpcPort: number;
  httpPort: number;
  log: Logger;
  files: DescFile[];
  serviceNames: string[];
  routes: (router: ConnectRouter) => void;
  interceptors?: Interceptor[];
  /**
   * Postgres and NATS, by the name /health shows: each makes the service unready while its
   * check fails (unless listed in `optional`); a failure retrying cannot fix exits 1; they are
   * closed last at shutdown.
   */
  dependencies: Record<string, Dependency>;
  /** Names of `dependencies` shown in /health that do not make the service unready. */
  optional?: string[];
  /** Readiness checks besides the dependencies' own (the dispatcher's membership). */
  checks?: Record<string, Check>;
  /**
   * The service's own start, once `after` are ready (see RunningService.after). Until it has
   * finished the service is not ready and answers every call but health and reflection
   * UNAVAILABLE, naming what it waits for ("database not ready").
   */
  start: { after: Dependency[]; run?: (signal: AbortSignal) => Promise<void> | void };
  extraHttp?: ExtraRoute[];
  /**
   * Servers besides the gRPC and HTTP ports (the admin's console), started after them and
   * stopped with the gRPC port: they stop accepting when it does and get the same deadline for
   * their requests in flight.
   */
  extraServers?: Array<(mount: RpcMount) => Promise<ExtraServer>>;
  /**
   * Service-specific shutdown (a dispatcher's hand-off), after the ports stopped taking calls
   * and before the calls in flight are awaited and the dependencies closed: they are still
   * usable here.
   */
  onStop: () => Promise<void>;
  telemetry: Telemetry;
  /** Tokens and TLS of the gRPC port (CommonConfig.security). */
  security: SecurityConfig;
  /** GRPC_MAX_REQUEST_BYTES (CommonConfig.grpcMaxRequestBytes). */
  grpcMaxRequestBytes: number;
  /** SHUTDOWN_TIMEOUT (CommonConfig.shutdownTimeoutMs): how long after SIGTERM calls in flight may go on. */
  shutdownTimeoutMs: number;
}): Promise<RunningService> {
  const { log } = opts;
  const health = new HealthStatus({ "": NOT_SERVING });
  for (const s of opts.serviceNames) health.set(s, NOT_SERVING);
  const auth = await Authenticator.start(
    {
      tokensFile: opts.security.authTokensFile,
      tokensJson: opts.security.authTokens,
      disabled: opts.security.authDisabled,
      reloadMs: opts.security.authReloadMs,
    },
    log,
  );
  const tls = opts.security.tls ? await readTlsMaterial(opts.security.tls) : undefined;

  // A dependency failing for good (wrong password, failed migration) ends the process.
  for (const dep of Object.values(opts.dependencies)) dep.ready.catch((err: unknown) => failStart(log, err));

  const stopping = new AbortController();
  const stopped = new Promise<void>((resolve) =>
    stopping.signal.addEventListener("abort", () => resolve(), { once: true }),
  );
  const runs = new Set<Promise<void>>();
  const after = (deps: Dependency[], run: (signal: AbortSignal) => Promise<void> | void) => {
    const task = (async () => {
      // A rejected `ready` is reported by the watch above; here it only means "never".
      const ready = Promise.all(deps.map((d) => d.ready)).then(
        () => true,
        () => new Promise<boolean>(() => {}),
      );
      if (!(await Promise.race([ready, stopped.then(() => false)]))) return;
      await run(stopping.signal);
    })().catch((err: unknown) => failStart(log, err));
    runs.add(task);
    void task.then(() => runs.delete(task));
  };

  let started = false;
  /** Why calls cannot be served now, or undefined when they can. */
  const notServing = (): string | undefined => {
    if (stopping.signal.aborted) return `${opts.name} is shutting down`;
    if (started) return undefined;
    const missing = opts.start.after.filter((d) => !d.isReady).map((d) => `${d.name} not ready`);
    return missing.length > 0 ? missing.join(", ") : `${opts.name} is starting`;
  };
  const gate: Interceptor = (next) => async (req) => {
    if (!OPEN_SERVICES.has(req.service.typeName)) {
      const reason = notServing();
      if (reason) throw new ConnectError(`${reason}; retry later`, Code.Unavailable);
    }
    return next(req);
  };

  const optionalNames = new Set(opts.optional ?? []);
  const required: Record<string, Check> = { started: async () => started };
  const optional: Record<string, Check> = {};
  for (const [name, dep] of Object.entries(opts.dependencies))
    (optionalNames.has(name) ? optional : required)[name] = () => dep.check();
  Object.assign(required, opts.checks);

  const interceptors = [
    rpcServerInterceptor(opts.telemetry.meter, opts.telemetry.tracer, opts.telemetry.tracingEnabled),
    errorInterceptor(log),
    authInterceptor(auth, log),
    gate,
    ...(opts.interceptors ?? []),
  ];
  const grpc = await startGrpcServer({
    host: opts.host,
    port: opts.grpcPort,
    tls,
    maxRequestBytes: opts.grpcMaxRequestBytes,
    interceptors,
    routes: (router) => {
      opts.routes(router);
      registerHealthService(router, health);
      registerReflectionServices(router, opts.files);
    },
  });
  const httpServer = await startHttpServer({
    host: opts.host,
    port: opts.httpPort,
    service: opts.name,
    checks: required,
    optional,
    stopping: () => stopping.signal.aborted,
    extra: [opts.telemetry.metricsRoute, ...(opts.extraHttp ?? [])],
  });
  const extraServers: ExtraServer[] = [];
  if (opts.extraServers?.length) {
    const mount: RpcMount = {
      handler: connectNodeAdapter({
        routes: opts.routes,
        interceptors,
        readMaxBytes: opts.grpcMaxRequestBytes,
      }),
      tls,
    };
    for (const start of opts.extraServers) extraServers.push(await start(mount));
  }

  // gRPC health follows readiness; each change is logged once, naming what is missing.
  let lastState = "";
  let updating = false;
  let again = false;
  const updateHealth = async (): Promise<void> => {
    if (stopping.signal.aborted) return;
    if (updating) {
      again = true; // a change (the start finishing) during an evaluation is not lost
      return;
    }
    updating = true;
    try {
      const [req, opt] = await Promise.all([runChecks(required), runChecks(optional)]);
      if (stopping.signal.aborted) return;
      const ready = Object.values(req).every(Boolean);
      const status = ready ? SERVING : NOT_SERVING;
      health.set("", status);
      for (const s of opts.serviceNames) health.set(s, status);
      const failing = (checks: Record<string, boolean>) =>
        Object.keys(checks).filter((name) => !checks[name] && name !== "started");
      const [reqDown, optDown] = [failing(req), failing(opt)];
      const state = `${ready}:${reqDown.join(",")}:${optDown.join(",")}`;
      if (state !== lastState) {
        lastState = state;
        const checks = { ...req, ...opt };
        const also = optDown.length > 0 ? ` (${optDown.join(", ")} down, not needed for readiness)` : "";
        if (ready) log.info({ checks }, `ready${also}`);
        else
          log.warn(
            { checks },
            `not ready: ${reqDown.length > 0 ? `${reqDown.join(", ")} down` : "starting"}${also}`,
          );
      }
    } finally {
      updating = false;
      if (again) {
        again = false;
        void updateHealth();
      }
    }
  };
  after(opts.start.after, async (signal) => {
    await opts.start.run?.(signal);
    started = true;
    void updateHealth();
  });
  await updateHealth();
  const healthTimer = setInterval(() => void updateHealth(), HEALTH_INTERVAL_MS);
  healthTimer.unref();

  let stopPromise: Promise<void> | undefined;
  const stop = (reason: string): Promise<void> => {
    stopPromise ??= (async () => {
      const workDeadline = Date.now() + opts.shutdownTimeoutMs;
      log.info({ reason }, "shutting down");
      const hard = setTimeout(() => {
        log.error("shutdown took too long; exiting");
        process.exit(1);
      }, opts.shutdownTimeoutMs + HARD_MARGIN_MS);
      hard.unref();
      stopping.abort();
      clearInterval(healthTimer);
      // Watchers hear NOT_SERVING, then their streams end: an open Watch stream would
      // otherwise keep the gRPC server from ever closing.
      health.set("", NOT_SERVING);
      for (const s of opts.serviceNames) health.set(s, NOT_SERVING);
      health.close();
      grpc.stopAccepting();
      for (const extra of extraServers) extra.stopAccepting();
      auth.stop();
      // Start work still going on sees the abort and returns; the service's onStop then
      // stops whatever it got to.
      await within(Promise.allSettled(runs), workDeadline - Date.now());
      await opts.onStop();
      await Promise.all([
        grpc.close(workDeadline),
        ...extraServers.map((extra) => extra.close(workDeadline)),
      ]);
      await within(
        Promise.allSettled(Object.values(opts.dependencies).map((d) => d.close())),
        CLOSE_DEPENDENCIES_MS,
      );
      await httpServer.close(Date.now() + CLOSE_HTTP_MS);
      await within(
        opts.telemetry.shutdown().catch((err: unknown) => log.warn({ err }, "flushing telemetry failed")),
        FLUSH_TELEMETRY_MS,
      );
      clearTimeout(hard);
      log.info("stopped");
    })();
    return stopPromise;
  };
  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    process.once(sig, () => {
      stop(sig).then(
        () => process.exit(0),
        (err) => {
          log.error({ err }, "shutdown failed");
          process.exit(1);
        },
      );
    });
  }
  log.info(
    {
      grpc_port: grpc.port,
      http_port: httpServer.port,
      tls: tls ? (tls.clientCa ? "mtls" : "tls") : "off",
      auth: auth.enabled ? "on" : "off",
    },
    `${opts.name} listening`,
  );
  return { grpcPort: grpc.port, httpPort: httpServer.port, health, after, stop };
}

/**
 * Logs a failed start plainly and exits 1. What is logged has the user info of any URL in it
 * masked: a driver's error may quote the connection string it was given.
 */
function failStart(log: Logger, err: unknown): never {
  const message = redactCredentials(err instanceof Error ? err.message : String(err));
  log.fatal({ err: redactDeep(stdSerializers.err(err as Error)) }, `failed to start: ${message}`);
  process.exit(1);
}

/** Runs main, exiting 1 with the reason when it fails (see failStart). */
export function runMain(log: Logger, main: () => Promise<unknown>): void {
  main().catch((err: unknown) => failStart(log, err));
}
