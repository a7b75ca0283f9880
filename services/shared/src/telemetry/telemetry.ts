// Telemetry for one service process, set up in one place and shut down in `finally`:
// - metrics always on, through @opentelemetry/exporter-prometheus, served at /metrics on the
//   service's HTTP port (no extra port): the services' own, the Node.js runtime's (event loop,
//   heap, GC: @opentelemetry/instrumentation-runtime-node, RUNTIME_METRICS) and the process's
//   CPU time and resident memory;
// - traces exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set,
//   http/protobuf by default, http/json when OTEL_EXPORTER_OTLP_TRACES_PROTOCOL says so; off
//   cleanly (no-op tracer, nothing buffered) otherwise.
import type http from "node:http";
import { metrics, trace, type ContextManager, type Meter, type Tracer } from "@opentelemetry/api";
import { NodeSDK } from "@opentelemetry/sdk-node";
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus";
import { OTLPTraceExporter as OTLPProtoTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { OTLPTraceExporter as OTLPJsonTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { BatchSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from "@opentelemetry/semantic-conventions";
import { RuntimeNodeInstrumentation } from "@opentelemetry/instrumentation-runtime-node";
import { observableCounter, observableGauge } from "./instruments.js";

/** Telemetry settings; read from the environment by the service's config. */
export interface TelemetryConfig {
  serviceName: string;
  serviceVersion: string;
  instanceId: string;
  /** OTLP endpoint for traces; tracing is off when undefined. */
  tracesEndpoint: string | undefined;
  tracesProtocol: "http/protobuf" | "http/json";
  /**
   * Carry the active span implicitly across awaits (AsyncLocalStorage). It costs a hook on every
   * promise; a service that passes span contexts explicitly (the dispatcher's hot path) turns it
   * off even while tracing.
   */
  implicitContext: boolean;
}

/** A started telemetry pipeline. */
export interface Telemetry {
  meter: Meter;
  tracer: Tracer;
  tracingEnabled: boolean;
  /** Serves GET /metrics; returns false for other paths. */
  metricsRoute(req: http.IncomingMessage, res: http.ServerResponse): boolean;
  shutdown(): Promise<void>;
}

/** Starts metrics (always) and tracing (when configured) for a service. */
export function startTelemetry(config: TelemetryConfig): Telemetry {
  const prometheus = new PrometheusExporter({ preventServerStart: true, withoutScopeInfo: true });
  const url = config.tracesEndpoint;
  const tracingEnabled = url !== undefined;
  const spanProcessors = tracingEnabled
    ? [
        new BatchSpanProcessor(
          config.tracesProtocol === "http/json"
            ? new OTLPJsonTraceExporter({ url })
            : new OTLPProtoTraceExporter({ url }),
          { maxQueueSize: 20_000, maxExportBatchSize: 1_000, scheduledDelayMillis: 1_000 },
        ),
      ]
    : [];
  const sdk = new NodeSDK({
    resource: resourceFromAttributes({
      [ATTR_SERVICE_NAME]: config.serviceName,
      [ATTR_SERVICE_VERSION]: config.serviceVersion,
      "service.instance.id": config.instanceId,
    }),
    metricReader: prometheus,
    spanProcessors,
    instrumentations: [new RuntimeNodeInstrumentation()],
    // Without tracing (or without implicit context) skip the AsyncLocalStorage context manager:
    // its hook on every promise costs ~0.4 ms of CPU per RPC and ~30% of the dispatcher's fire
    // rate here. Without tracing there is no propagator either.
    // NodeSDK.start() documents null as "do not register"; its types only admit an instance.
    ...(tracingEnabled && config.implicitContext
      ? {}
      : { contextManager: null as unknown as ContextManager }),
    ...(tracingEnabled ? {} : { textMapPropagator: null }),
  });
  sdk.start();
  const meter = metrics.getMeter(config.serviceName, config.serviceVersion);
  observeProcess(meter);
  return {
    meter,
    tracer: trace.getTracer(config.serviceName, config.serviceVersion),
    tracingEnabled,
    metricsRoute(req, res) {
      if ((req.url ?? "").split("?")[0] !== "/metrics") return false;
      prometheus.getMetricsRequestHandler(req, res);
      return true;
    },
    shutdown: () => sdk.shutdown(),
  };
}

/**
 * The process's CPU time and resident memory. The runtime instrumentation reports the event
 * loop, the V8 heap and GC but neither of these, and @opentelemetry/host-metrics (which has
 * them) also brings host-wide CPU, memory and network series a pod does not need; two
 * observable instruments read at scrape time cost nothing in between. Named as the OpenTelemetry
 * semantic conventions' process.cpu.time and process.memory.usage come out in Prometheus.
 */
function observeProcess(meter: Meter): void {
  observableCounter(meter, "process_cpu_time_seconds_total").addCallback((r) => {
    const { user, system } = process.cpuUsage(); // microseconds
    r.observe(user / 1e6, { cpu_mode: "user" });
    r.observe(system / 1e6, { cpu_mode: "system" });
  });
  observableGauge(meter, "process_memory_usage_bytes").addCallback((r) =>
    r.observe(process.memoryUsage.rss()),
  );
}

/** Starts telemetry for a service from its common configuration. */
export function startServiceTelemetry(
  service: string,
  instanceId: string,
  config: {
    tracesEndpoint: string | undefined;
    tracesProtocol: "http/protobuf" | "http/json";
    otelServiceName: string | undefined;
  },
  version: string,
  implicitContext = true,
): Telemetry {
  return startTelemetry({
    implicitContext,
    serviceName: config.otelServiceName ?? service,
    serviceVersion: version,
    instanceId,
    tracesEndpoint: config.tracesEndpoint,
    tracesProtocol: config.tracesProtocol,
  });
}
