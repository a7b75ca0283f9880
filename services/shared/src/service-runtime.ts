// What every service process does around its own logic: serve gRPC (with health and
// reflection, bearer-token authentication, optional TLS) and HTTP, and shut down in order on
// SIGTERM/SIGINT.
import type { DescFile } from "@bufbuild/protobuf";
import { stdSerializers } from "pino";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { Authenticator, authInterceptor } from "./auth.js";
import type { SecurityConfig } from "./env.js";
import { HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import { HealthStatus, registerHealthService } from "./grpc-health.js";
import { registerReflectionServices } from "./grpc-reflection.js";
import type { Logger } from "./logger.js";
import { redactCredentials, redactDeep } from "./redact.js";
import { rpcServerInterceptor } from "./telemetry/rpc.js";
import type { Telemetry } from "./telemetry/telemetry.js";
import { errorInterceptor, readTlsMaterial, startGrpcServer, startHttpServer, type Check, type ExtraRoute } from "./servers.js";

/** A running service: its ports and how to stop it. */
export interface RunningService {
  grpcPort: number;
  httpPort: number;
  health: HealthStatus;
  stop(reason: string): Promise<void>;
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
  checks: Record<string, Check>;
  extraHttp?: ExtraRoute[];
  /** Service-specific shutdown, after the gRPC server stops taking calls. */
  onStop: () => Promise<void>;
  telemetry: Telemetry;
  /** Tokens and TLS of the gRPC port (CommonConfig.security). */
  security: SecurityConfig;
  /** GRPC_MAX_REQUEST_BYTES (CommonConfig.grpcMaxRequestBytes). */
  grpcMaxRequestBytes: number;
  stopTimeoutMs?: number;
}): Promise<RunningService> {
  const { log } = opts;
  const health = new HealthStatus();
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
  const grpc = await startGrpcServer({
    host: opts.host,
    port: opts.grpcPort,
    tls,
    maxRequestBytes: opts.grpcMaxRequestBytes,
    interceptors: [
      rpcServerInterceptor(opts.telemetry.meter, opts.telemetry.tracer, opts.telemetry.tracingEnabled),
      errorInterceptor(log),
      authInterceptor(auth, log),
      ...(opts.interceptors ?? []),
    ],
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
    checks: opts.checks,
    extra: [opts.telemetry.metricsRoute, ...(opts.extraHttp ?? [])],
  });
  const ready = async () => {
    const results = await Promise.all(Object.values(opts.checks).map((c) => c().catch(() => false)));
    return results.every(Boolean);
  };
  const updateHealth = async () => {
    const status = (await ready()) ? HealthCheckResponse_ServingStatus.SERVING : HealthCheckResponse_ServingStatus.NOT_SERVING;
    health.set("", status);
    for (const s of opts.serviceNames) health.set(s, status);
  };
  await updateHealth();
  const healthTimer = setInterval(() => void updateHealth(), 2_000);
  healthTimer.unref();

  let stopping: Promise<void> | undefined;
  const stop = (reason: string): Promise<void> => {
    stopping ??= (async () => {
      log.info({ reason }, "shutting down");
      clearInterval(healthTimer);
      health.set("", HealthCheckResponse_ServingStatus.NOT_SERVING);
      for (const s of opts.serviceNames) health.set(s, HealthCheckResponse_ServingStatus.NOT_SERVING);
      const deadline = setTimeout(() => {
        log.error("shutdown took too long; exiting");
        process.exit(1);
      }, opts.stopTimeoutMs ?? 30_000);
      deadline.unref();
      await grpc.close();
      auth.stop();
      await opts.onStop();
      await httpServer.close();
      await opts.telemetry.shutdown().catch((err: unknown) => log.warn({ err }, "flushing telemetry failed"));
      log.info("stopped");
    })();
    return stopping;
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
    { grpc_port: grpc.port, http_port: httpServer.port, tls: tls ? (tls.clientCa ? "mtls" : "tls") : "off", auth: auth.enabled ? "on" : "off" },
    `${opts.name} listening`,
  );
  return { grpcPort: grpc.port, httpPort: httpServer.port, health, stop };
}

/**
 * Runs main, logging a startup failure plainly and exiting 1. What is logged has the user info
 * of any URL in it masked: a driver's error may quote the connection string it was given.
 */
export function runMain(log: Logger, main: () => Promise<unknown>): void {
  main().catch((err: unknown) => {
    const message = redactCredentials(err instanceof Error ? err.message : String(err));
    log.fatal({ err: redactDeep(stdSerializers.err(err as Error)) }, `failed to start: ${message}`);
    process.exit(1);
  });
}
