// Static checks of the observability pipeline around the services: the OpenTelemetry Collector
// (infra/k8s/otel-collector/, run by compose alone and by the k8s sidecars with k8s.yaml over
// it), Loki and Promtail (infra/loki, infra/promtail), and the Grafana datasources that link
// traces and logs. None of otelcol, loki or promtail is packaged for this machine, so their
// configs are read here: every component a pipeline names is defined and every one defined is
// used, the sampling keeps what the runbook needs, and each address one config gives for
// another (promtail -> loki, collector -> jaeger, Grafana -> loki/jaeger) is a compose service
// listening there. The log fields Promtail extracts are checked against a real log line.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { at, collectorConfig, type YamlMap } from "../support/otel-collector-config.js";
import { loadYaml } from "../support/yaml.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const COLLECTOR = "infra/k8s/otel-collector";

/** The collector as compose runs it, and as the Kubernetes sidecars run it. */
const configs: [string, YamlMap][] = [
  ["compose", collectorConfig(`${COLLECTOR}/config.yaml`)],
  ["k8s", collectorConfig(`${COLLECTOR}/config.yaml`, `${COLLECTOR}/k8s.yaml`)],
];

/** Component types of collector-contrib these configs may use (the part of an id before "/"). */
const KNOWN_TYPES: Record<string, string[]> = {
  receivers: ["otlp"],
  processors: ["memory_limiter", "batch", "resourcedetection", "k8sattributes", "tail_sampling"],
  exporters: ["otlp", "otlphttp", "debug"],
  extensions: ["health_check"],
};

interface Pipeline {
  receivers?: string[];
  processors?: string[];
  exporters?: string[];
}

const keys = (v: unknown): string[] => (typeof v === "object" && v !== null ? Object.keys(v) : []);

interface ComposeService {
  image?: string;
  command?: string[];
  environment?: Record<string, string>;
  ports?: string[];
  volumes?: string[];
}
const [compose] = loadYaml("infra/docker-compose.yml") as [{ services: Record<string, ComposeService> }];
const services = compose.services;

/** host:port of a URL or of a bare "host:port". */
function hostPort(address: string): { host: string; port: number } {
  const url = new URL(address.includes("://") ? address : `tcp://${address}`);
  return { host: url.hostname, port: Number(url.port) };
}

/** Where a compose service mounts a file of infra/ (relative to infra/), by container path. */
function mounts(service: string): Record<string, string> {
  return Object.fromEntries(
    (services[service]?.volumes ?? []).map((v) => {
      const [src, dst] = v.split(":");
      return [dst!, src!.replace(/^\.\//, "")];
    }),
  );
}

test("every collector pipeline's components are defined, and every defined component is used", () => {
  for (const [where, config] of configs) {
    const pipelines = (at(config, "service.pipelines") ?? {}) as Record<string, Pipeline>;
    assert.deepEqual(Object.keys(pipelines), ["traces"], `${where}: one pipeline, for traces`);
    const used = new Set<string>();
    for (const [name, pipeline] of Object.entries(pipelines)) {
      for (const kind of ["receivers", "processors", "exporters"] as const) {
        const ids = pipeline[kind] ?? [];
        assert.ok(kind === "processors" || ids.length > 0, `${where} ${name}: no ${kind}`);
        for (const id of ids) {
          assert.ok(keys(config[kind]).includes(id), `${where} ${name}: ${kind} ${id} is not defined`);
          used.add(`${kind}.${id}`);
        }
      }
    }
    for (const id of (at(config, "service.extensions") ?? []) as string[]) {
      assert.ok(keys(config.extensions).includes(id), `${where}: extension ${id} is not defined`);
      used.add(`extensions.${id}`);
    }
    for (const kind of Object.keys(KNOWN_TYPES)) {
      for (const id of keys(config[kind])) {
        assert.ok(used.has(`${kind}.${id}`), `${where}: ${kind} ${id} is defined but in no pipeline`);
        assert.ok(KNOWN_TYPES[kind]!.includes(id.split("/")[0]!), `${where}: unknown ${kind} type ${id}`);
      }
    }
    assert.deepEqual(
      keys(config).filter((k) => !(k in KNOWN_TYPES) && k !== "service"),
      [],
      `${where}: top-level sections`,
    );

    // Order: memory_limiter first (refuse before buffering), batch last, and the sampler after
    // whatever adds attributes (it regroups spans and loses their connection's context).
    const processors = pipelines.traces!.processors ?? [];
    assert.equal(processors[0], "memory_limiter", `${where}: memory_limiter comes first`);
    assert.equal(processors.at(-1), "batch", `${where}: batch comes last`);
    const sampler = processors.indexOf("tail_sampling");
    assert.ok(sampler > 0, `${where}: traces are tail-sampled`);
    for (const p of ["resourcedetection/env", "k8sattributes"].filter((p) => processors.includes(p)))
      assert.ok(processors.indexOf(p) < sampler, `${where}: ${p} runs before tail_sampling`);
  }
  // Kubernetes resource attributes in Kubernetes, found by the pod uid the env detector sets.
  const k8s = configs.find(([w]) => w === "k8s")![1];
  assert.ok((at(k8s, "service.pipelines.traces.processors") as string[]).includes("k8sattributes"));
  assert.deepEqual(at(k8s, "processors.k8sattributes.pod_association"), [
    { sources: [{ from: "resource_attribute", name: "k8s.pod.uid" }] },
  ]);
  assert.ok(
    !(at(configs[0]![1], "service.pipelines.traces.processors") as string[]).includes("k8sattributes"),
  );
});

interface Policy {
  name: string;
  type: string;
  status_code?: { status_codes: string[] };
  latency?: { threshold_ms: number };
  probabilistic?: { sampling_percentage: number };
  ottl_condition?: { span?: string[] };
  string_attribute?: { key: string; values: string[] };
  and?: { and_sub_policy: Policy[] };
}

test("tail sampling keeps errors, slow fires and slow RPCs, and samples the rest", () => {
  const policies = at(configs[0]![1], "processors.tail_sampling.policies") as Policy[];
  const named = (type: string) => policies.filter((p) => p.type === type);
  assert.deepEqual(named("status_code")[0]?.status_code?.status_codes, ["ERROR"], "errors are kept");

  // Slow fires: the dispatcher's "fire timer" spans (the name the code really uses) over 1 s.
  const fireTracing = readFileSync(join(root, "services/dispatcher/src/fire-tracing.ts"), "utf8");
  const slow = (condition: (p: Policy) => boolean) =>
    named("and").find((p) => p.and?.and_sub_policy.some(condition))?.and?.and_sub_policy;
  const fires = slow((p) => (p.ottl_condition?.span ?? []).some((c) => c.includes("fire timer")));
  assert.ok(fires, "a policy keeps slow fire traces");
  const fireName = /^name == "(.+)"$/.exec(
    fires.find((p) => p.ottl_condition)!.ottl_condition!.span![0]!,
  )?.[1];
  assert.ok(
    fireName && fireTracing.includes(`startSpan("${fireName}"`),
    `the dispatcher names a span "${fireName}"`,
  );
  assert.equal(fires.find((p) => p.type === "latency")?.latency?.threshold_ms, 1000, "fires over 1 s");

  // Slow RPCs: spans with the rpc.system attribute the services set, over the API objective.
  const rpcs = slow((p) => p.string_attribute?.key === "rpc.system");
  const rpcTelemetry = readFileSync(join(root, "services/shared/src/telemetry/rpc.ts"), "utf8");
  for (const value of rpcs?.find((p) => p.string_attribute)?.string_attribute?.values ?? [])
    assert.ok(rpcTelemetry.includes(`"rpc.system": "${value}"`), `RPC spans carry rpc.system=${value}`);
  assert.equal(rpcs?.find((p) => p.type === "latency")?.latency?.threshold_ms, 500, "RPCs over 500 ms");

  const rest = named("probabilistic")[0]?.probabilistic?.sampling_percentage ?? 0;
  assert.ok(rest > 0 && rest < 100, "the rest is sampled");
  // A fire trace ends with its delivery: the decision waits at least the callback timeout.
  const wait = String(at(configs[0]![1], "processors.tail_sampling.decision_wait"));
  assert.ok(Number(/^(\d+)s$/.exec(wait)?.[1]) >= 10, `decision_wait ${wait} covers CALLBACK_TIMEOUT (10s)`);
});

test("compose runs the same collector config, between the services and Jaeger", () => {
  const collector = services["otel-collector"];
  assert.ok(collector, "no otel-collector service in compose");
  const args = collector.command ?? [];
  const files = args.flatMap((a) => (a.startsWith("--config=") ? [a.slice(9)] : []));
  assert.deepEqual(
    files.map((f) => mounts("otel-collector")[f]),
    ["k8s/otel-collector/config.yaml"],
    "compose mounts config.yaml alone (no Kubernetes overrides)",
  );
  // The same collector build as the sidecars.
  const sidecarImage = /image: (otel\/opentelemetry-collector-contrib:\S+)/.exec(
    readFileSync(join(root, "infra/k8s/timer.yaml"), "utf8"),
  )?.[1];
  assert.equal(collector.image, sidecarImage, "compose and the sidecars run one collector version");

  // Services send where the collector listens (on every interface: other containers send).
  const config = configs[0]![1];
  const listen = hostPort(String(at(config, "receivers.otlp.protocols.http.endpoint")));
  assert.equal(listen.host, "0.0.0.0");
  const [, envBlock] = /x-service-env: &service-env\n((?: {2}.*\n)+)/.exec(
    readFileSync(join(root, "infra/docker-compose.yml"), "utf8"),
  ) ?? [undefined, ""];
  const endpoint = /OTEL_EXPORTER_OTLP_ENDPOINT: (\S+)/.exec(envBlock ?? "")?.[1] ?? "";
  assert.deepEqual(
    hostPort(endpoint),
    { host: "otel-collector", port: listen.port },
    "services -> collector",
  );

  // The collector exports to Jaeger's OTLP/gRPC port; Jaeger takes OTLP.
  const exporter = hostPort(String(at(config, "exporters.otlp/jaeger.endpoint")));
  assert.ok(services[exporter.host], `the collector exports to ${exporter.host}, not a compose service`);
  assert.equal(exporter.port, 4317, "Jaeger's OTLP/gRPC port");
  assert.equal(services[exporter.host]!.environment?.COLLECTOR_OTLP_ENABLED, "true");
});

// ------------------------------------------------------------------------------------- logs

/** One log line of a service, written inside a span, as the services write them. */
function serviceLogLine(): Record<string, unknown> {
  const script = `
    const { createLogger } = await import(${JSON.stringify(join(root, "services/shared/src/logger.ts"))});
    const { startTelemetry } = await import(${JSON.stringify(join(root, "services/shared/src/telemetry/telemetry.ts"))});
    const telemetry = startTelemetry({ serviceName: "dispatcher", serviceVersion: "0", instanceId: "test",
      tracesEndpoint: "http://127.0.0.1:9/v1/traces", tracesProtocol: "http/protobuf", implicitContext: true });
    const log = createLogger("dispatcher", "info");
    telemetry.tracer.startActiveSpan("fire timer", (span) => { log.info("inside a span"); span.end(); });
    process.exit(0); // nothing to export: the line is written synchronously
  `;
  const out = execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    cwd: root,
    encoding: "utf8",
  });
  const line = out.split("\n").find((l) => l.includes("inside a span"));
  assert.ok(line, `no log line in: ${out}`);
  return JSON.parse(line) as Record<string, unknown>;
}

interface Promtail {
  server: { http_listen_port: number };
  clients: { url: string }[];
  scrape_configs: {
    job_name: string;
    docker_sd_configs?: { host: string; filters?: { name: string; values: string[] }[] }[];
    relabel_configs?: { source_labels: string[]; target_label: string }[];
    pipeline_stages: Record<string, Record<string, unknown>>[];
  }[];
}

interface Datasource {
  uid: string;
  type: string;
  url: string;
  jsonData?: {
    derivedFields?: { name: string; matcherRegex: string; datasourceUid: string; url: string }[];
    tracesToLogsV2?: {
      datasourceUid: string;
      tags?: { key: string; value: string }[];
      filterByTraceID?: boolean;
    };
  };
}

function datasources(): Datasource[] {
  const dir = join(root, "infra/grafana/provisioning/datasources");
  return readdirSync(dir)
    .filter((f) => /\.ya?ml$/.test(f))
    .flatMap(
      (f) =>
        (loadYaml(`infra/grafana/provisioning/datasources/${f}`) as [{ datasources: Datasource[] }])[0]
          .datasources,
    );
}

test("Loki and Promtail configs parse, and Promtail pushes to the compose Loki", () => {
  const [loki] = loadYaml("infra/loki/loki.yaml") as [YamlMap];
  const lokiPort = Number(at(loki, "server.http_listen_port"));
  assert.equal(at(loki, "auth_enabled"), false, "one tenant: Promtail and Grafana send no X-Scope-OrgID");
  assert.ok(at(loki, "limits_config.allow_structured_metadata"), "trace ids go in structured metadata");
  assert.equal((at(loki, "schema_config.configs") as { schema: string }[])[0]?.schema, "v13");
  assert.equal(mounts("loki")["/etc/loki/loki.yaml"], "loki/loki.yaml");
  assert.ok(services.loki?.command?.includes("-config.file=/etc/loki/loki.yaml"));

  const [promtail] = loadYaml("infra/promtail/promtail.yaml") as [Promtail];
  assert.equal(mounts("promtail")["/etc/promtail/promtail.yaml"], "promtail/promtail.yaml");
  assert.ok(services.promtail?.command?.includes("-config.file=/etc/promtail/promtail.yaml"));
  const push = new URL(promtail.clients[0]!.url);
  assert.deepEqual(
    [push.hostname, Number(push.port), push.pathname],
    ["loki", lokiPort, "/loki/api/v1/push"],
    "promtail pushes to the loki service",
  );
  assert.ok(services[push.hostname], "loki is a compose service");
  // Docker discovery of this compose project's containers.
  const [job] = promtail.scrape_configs;
  const sd = job?.docker_sd_configs?.[0];
  assert.equal(sd?.host, "unix:///var/run/docker.sock");
  assert.ok(mounts("promtail")["/var/run/docker.sock"], "promtail mounts the Docker socket");
  const [composeDoc] = loadYaml("infra/docker-compose.yml") as [{ name: string }];
  assert.deepEqual(sd.filters, [
    { name: "label", values: [`com.docker.compose.project=${composeDoc.name}`] },
  ]);
});

test("Promtail extracts level and trace_id from the services' real log lines", () => {
  const line = serviceLogLine();
  assert.equal(line.level, "info", "pino writes the level as a word");
  assert.match(String(line.trace_id), /^[0-9a-f]{32}$/, "lines inside a span carry trace_id");
  assert.equal(line.service, "dispatcher");

  const [promtail] = loadYaml("infra/promtail/promtail.yaml") as [Promtail];
  const stages = promtail.scrape_configs[0]!.pipeline_stages;
  const stage = (name: string) => stages.find((s) => name in s)?.[name] ?? {};
  const extracted = (stage("json").expressions ?? {}) as Record<string, string>;
  for (const field of ["level", "service", "trace_id", "time"])
    assert.ok(Object.values(extracted).includes(field) && field in line, `the json stage reads ${field}`);
  // level and service as labels (a few values each); trace_id never (a stream per trace).
  assert.deepEqual(Object.keys(stage("labels")).sort(), ["level", "service"]);
  assert.ok("trace_id" in stage("structured_metadata"), "trace_id is structured metadata");
  assert.equal(stage("timestamp").source, "time");

  // Grafana: the trace id link matches this line, and points at the Jaeger datasource.
  const all = datasources();
  const uids = new Set(all.map((d) => d.uid));
  const loki = all.find((d) => d.type === "loki");
  assert.ok(loki, "a Loki datasource is provisioned");
  const [lokiConfig] = loadYaml("infra/loki/loki.yaml") as [YamlMap];
  assert.deepEqual(hostPort(loki.url), {
    host: "loki",
    port: Number(at(lokiConfig, "server.http_listen_port")),
  });
  const field = loki.jsonData?.derivedFields?.find((f) => f.name === "trace_id");
  assert.ok(field, "log lines link their trace_id");
  assert.equal(new RegExp(field.matcherRegex).exec(JSON.stringify(line))?.[1], line.trace_id);
  assert.ok(uids.has(field.datasourceUid), `derived field -> datasource ${field.datasourceUid}`);
  assert.equal(all.find((d) => d.uid === field.datasourceUid)?.type, "jaeger");
  assert.equal(
    field.url,
    "$${__value.raw}",
    "the link is the trace id ($$ escapes provisioning's env expansion)",
  );

  // And back: a span's logs are its service's lines holding the trace id.
  const jaeger = all.find((d) => d.type === "jaeger");
  const toLogs = jaeger?.jsonData?.tracesToLogsV2;
  assert.ok(toLogs && uids.has(toLogs.datasourceUid), "Jaeger links to a provisioned datasource");
  assert.equal(all.find((d) => d.uid === toLogs.datasourceUid)?.type, "loki");
  assert.ok(toLogs.filterByTraceID, "by trace id");
  for (const tag of toLogs.tags ?? [])
    assert.ok(tag.value in stage("labels"), `Loki label ${tag.value} (from ${tag.key}) is one Promtail sets`);
  for (const d of all) {
    const { host } = hostPort(d.url);
    assert.ok(services[host], `datasource ${d.uid} -> ${host}, not a compose service`);
  }
  assert.ok(services.grafana?.volumes?.includes("./grafana/provisioning:/etc/grafana/provisioning:ro"));

  // The Overview's logs panel selects streams by labels Promtail sets.
  const overview = JSON.parse(
    readFileSync(join(root, "infra/grafana/dashboards/timer-service-overview.json"), "utf8"),
  ) as { panels: { type: string; targets?: { expr: string }[] }[] };
  const logs = overview.panels.find((p) => p.type === "logs");
  const selector = /^\{([^}]*)\}/.exec(logs?.targets?.[0]?.expr ?? "")?.[1] ?? "";
  const labels = [...selector.matchAll(/(\w+)\s*[=!]~?/g)].map((m) => m[1]!);
  assert.ok(labels.length > 0, "the logs panel selects streams");
  for (const label of labels)
    assert.ok(label in stage("labels"), `the logs panel's label ${label} is set by Promtail`);
});
