// Static checks of infra/docker-compose.yml, infra/Dockerfile and infra/k8s: there is no Docker
// engine or cluster to try them on, so this reads them and holds them to the contract (ports,
// environment, health endpoints) and to each other (scrape targets, mounts, names, references).
// Environments are also fed to the services' own config loaders, so a value the services would
// refuse at start fails here.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { loadTimerConfig } from "../../services/timer/src/config.js";
import { loadDispatcherConfig } from "../../services/dispatcher/src/config.js";
import { loadAdminConfig } from "../../services/admin/src/config.js";
import { loadYaml } from "../support/yaml.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const infra = join(root, "infra");


type Env = Record<string, string>;
type Kind = "timer" | "dispatcher" | "admin";
const kinds: Kind[] = ["timer", "dispatcher", "admin"];

/** The contract's ports, as the services' config loaders default them. */
const contract: Record<Kind, { grpc: number; http: number; load: (env: Env) => { shardCount: number } }> = {
  timer: { grpc: loadTimerConfig({}).grpcPort, http: loadTimerConfig({}).httpPort, load: loadTimerConfig },
  dispatcher: { grpc: loadDispatcherConfig({}).grpcPort, http: loadDispatcherConfig({}).httpPort, load: loadDispatcherConfig },
  admin: { grpc: loadAdminConfig({}).grpcPort, http: loadAdminConfig({}).httpPort, load: loadAdminConfig },
};

/** The variables of the contract every service is given, and what dispatchers get besides. */
const REQUIRED_ENV = [
  "DATABASE_URL", "NATS_URL", "GRPC_PORT", "HTTP_PORT", "SHARD_COUNT", "LOG_LEVEL",
  "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME",
];
const DISPATCHER_ENV = ["DISPATCHER_ID"];

test("the contract ports are the ones these checks hold the manifests to", () => {
  assert.deepEqual(
    kinds.map((k) => [k, contract[k].grpc, contract[k].http]),
    [["timer", 50051, 8080], ["dispatcher", 50052, 8081], ["admin", 50053, 8082]],
  );
});

// ------------------------------------------------------------------------------- Dockerfile

interface Stage {
  name: string;
  from: string;
  env: Env;
  expose: number[];
  cmd?: string[];
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
        for (const [, k, v] of args.matchAll(/(\w+)=("[^"]*"|\S+)/g)) stage!.env[k!] = v!.replace(/^"|"$/g, "");
        break;
      case "EXPOSE":
        stage!.expose.push(...rest.map(Number));
        break;
      case "CMD":
      case "ENTRYPOINT":
        stage!.cmd = JSON.parse(args) as string[]; // exec form only: SIGTERM must reach node
        break;
      case "COPY":
        if (!rest.some((a) => a.startsWith("--from"))) stage!.copies.push(...rest.filter((a) => !a.startsWith("--")).slice(0, -1));
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
  return { ...stage, env: { ...base.env, ...stage.env }, cmd: stage.cmd ?? base.cmd, expose: [...base.expose, ...stage.expose] };
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
    assert.deepEqual(stage.expose.sort(), [contract[kind].grpc, contract[kind].http].sort(), `${kind} EXPOSE`);
  }
  // What is copied exists, and is not excluded by the build's ignore file.
  const ignore = readFileSync(join(infra, "Dockerfile.dockerignore"), "utf8");
  for (const src of stages.flatMap((s) => s.copies)) {
    assert.ok(existsSync(join(root, src)), `COPY ${src}: no such file`);
    assert.match(ignore, new RegExp(`^!${src.replace(/[.*]/g, "\\$&")}(/\\*\\*)?$`, "m"), `Dockerfile.dockerignore excludes ${src}`);
  }
  // `npm ci --omit=dev` in the image: tsx must be a runtime dependency.
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { dependencies: Record<string, string> };
  assert.ok(pkg.dependencies.tsx, "tsx must be in dependencies, not devDependencies: the image runs the sources with it");
});

// --------------------------------------------------------------------------- docker-compose

interface ComposeService {
  build?: { context: string; dockerfile: string; target: string };
  image?: string;
  command?: string[] | string;
  environment?: Env;
  ports?: string[];
  volumes?: string[];
  depends_on?: Record<string, unknown> | string[];
  healthcheck?: { test: string[] };
  stop_grace_period?: string;
}

function compose(): Record<string, ComposeService> {
  const [doc] = loadYaml("infra/docker-compose.yml") as [{ services: Record<string, ComposeService> }];
  return doc.services;
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
  assert.deepEqual(apps.map(([name, , kind]) => [name, kind]), [
    ["timer", "timer"], ["dispatcher-1", "dispatcher"], ["dispatcher-2", "dispatcher"], ["dispatcher-3", "dispatcher"], ["admin", "admin"],
  ]);
  const stages = dockerfileStages().map((s) => s.name);
  for (const [name, s, kind] of apps) {
    assert.equal(resolve(infra, s.build!.context), root.replace(/\/$/, ""), `${name} builds from the repository root`);
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
    const env = s.environment ?? {};
    const required = kind === "dispatcher" ? [...REQUIRED_ENV, ...DISPATCHER_ENV] : REQUIRED_ENV;
    for (const v of required) assert.ok(env[v], `${name} lacks ${v}`);
    assert.equal(env.GRPC_PORT, String(contract[kind].grpc), `${name} GRPC_PORT`);
    assert.equal(env.HTTP_PORT, String(contract[kind].http), `${name} HTTP_PORT`);
    assert.equal(env.OTEL_SERVICE_NAME, kind, `${name} OTEL_SERVICE_NAME`);
    assert.equal(env.OTEL_EXPORTER_OTLP_ENDPOINT, "http://jaeger:4318", `${name} OTEL_EXPORTER_OTLP_ENDPOINT`);
    shardCounts.add(contract[kind].load(env).shardCount); // throws on a value the service refuses
    if (kind === "dispatcher") {
      dispatcherIds.push(env.DISPATCHER_ID!);
      assert.equal(env.ADVERTISE_ADDRESS, `${name}:${contract.dispatcher.grpc}`, `${name} ADVERTISE_ADDRESS`);
    }

    // Both contract ports published; the host side may differ (three dispatchers, one host).
    const published = (s.ports ?? []).map((p) => p.split(":"));
    assert.deepEqual(published.map(([, c]) => Number(c)).sort(), [contract[kind].grpc, contract[kind].http].sort(), `${name} ports`);
    hostPorts.push(...published.map(([h]) => h!));

    // Postgres, NATS and Jaeger are the compose services of those names, set up to match.
    const db = new URL(env.DATABASE_URL!);
    const pg = services[db.hostname]?.environment ?? {};
    assert.equal(db.hostname, "postgres", `${name} DATABASE_URL host`);
    assert.deepEqual(
      [decodeURIComponent(db.username), decodeURIComponent(db.password), db.pathname.slice(1), db.port || "5432"],
      [pg.POSTGRES_USER, pg.POSTGRES_PASSWORD, pg.POSTGRES_DB, "5432"],
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
  assert.ok((Array.isArray(natsCommand) ? natsCommand : String(natsCommand).split(" ")).includes("-js"), "nats runs with -js");
  assert.equal(services.jaeger?.environment?.COLLECTOR_OTLP_ENABLED, "true");
  assert.ok(services.jaeger?.ports?.some((p) => p.endsWith(":4318")), "jaeger publishes OTLP/HTTP 4318");
});

test("Prometheus scrapes exactly the compose services, and Grafana gets its provisioning", () => {
  const services = compose();
  const [config] = loadYaml("infra/prometheus/prometheus.yml") as [{
    scrape_configs: { job_name: string; metrics_path?: string; static_configs: { targets: string[] }[] }[];
    alerting: { alertmanagers: { static_configs: { targets: string[] }[] }[] };
    rule_files: string[];
  }];
  const scraped = config.scrape_configs.flatMap((c) =>
    c.static_configs.flatMap((sc) => sc.targets.map((t) => [c.job_name, t, c.metrics_path ?? "/metrics"])));
  const expected = appServices(services).map(([name, s, kind]) => [kind, `${name}:${s.environment!.HTTP_PORT}`, "/metrics"]);
  assert.deepEqual(scraped.sort(), expected.sort());
  assert.deepEqual(config.alerting.alertmanagers.flatMap((a) => a.static_configs.flatMap((sc) => sc.targets)), ["alertmanager:9093"]);
  assert.ok(services.alertmanager, "no alertmanager service");
  assert.deepEqual(config.rule_files, ["alerts.yml"]);

  // Mounts: each local source exists; Prometheus reads this config and its rules.
  for (const [name, s] of Object.entries(services)) {
    for (const volume of s.volumes ?? []) {
      const [src] = volume.split(":");
      if (src!.startsWith(".")) assert.ok(existsSync(resolve(infra, src!)), `${name} mounts ${src}, which does not exist`);
    }
  }
  const mounts = (name: string) => Object.fromEntries((services[name]?.volumes ?? []).map((v) => v.split(":").slice(0, 2).reverse()));
  assert.equal(mounts("prometheus")["/etc/prometheus"], "./prometheus");
  assert.ok((services.prometheus!.command as string[]).includes("--config.file=/etc/prometheus/prometheus.yml"));
  assert.equal(mounts("alertmanager")["/etc/alertmanager"], "./alertmanager");
  assert.ok(existsSync(join(infra, "alertmanager/alertmanager.yml")));
  assert.equal(mounts("grafana")["/etc/grafana/provisioning"], "./grafana/provisioning");
  const [providers] = loadYaml("infra/grafana/provisioning/dashboards/dashboards.yml") as [{ providers: { options: { path: string } }[] }];
  for (const p of providers.providers) assert.equal(mounts("grafana")[p.options.path], "./grafana/dashboards", `grafana mounts ${p.options.path}`);
});

// ------------------------------------------------------------------------------------ k8s

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Env; annotations?: Env };
  spec?: any; // manifests are loosely typed; the checks say what they expect
  data?: Env;
  stringData?: Env;
  resources?: string[];
}

function k8sFiles(): string[] {
  return readdirSync(join(infra, "k8s")).filter((f) => /\.ya?ml$/.test(f)).sort();
}

function k8sObjects(): { file: string; obj: K8sObject }[] {
  return k8sFiles()
    .filter((f) => f !== "kustomization.yaml")
    .flatMap((file) => (loadYaml(`infra/k8s/${file}`) as K8sObject[]).map((obj) => ({ file, obj })));
}

const matches = (selector: Env, labels: Env = {}) => Object.entries(selector).every(([k, v]) => labels[k] === v);

test("the k8s manifests are all listed, in one namespace, and their references resolve", () => {
  const [kustomization] = loadYaml("infra/k8s/kustomization.yaml") as [K8sObject];
  const objects = k8sObjects();
  assert.deepEqual([...kustomization.resources!].sort(), k8sFiles().filter((f) => f !== "kustomization.yaml"));
  const namespace = objects.find(({ obj }) => obj.kind === "Namespace")?.obj.metadata.name;
  assert.ok(namespace, "no Namespace");
  for (const { file, obj } of objects.filter(({ obj }) => obj.kind !== "Namespace")) {
    assert.equal(obj.metadata.namespace, namespace, `${file} ${obj.kind}/${obj.metadata.name} namespace`);
  }
  const workloads = objects.filter(({ obj }) => obj.kind === "Deployment" || obj.kind === "StatefulSet").map(({ obj }) => obj);
  for (const { obj } of objects.filter(({ obj }) => obj.kind === "Service" || obj.kind === "PodDisruptionBudget")) {
    const selector = obj.kind === "Service" ? obj.spec.selector : obj.spec.selector.matchLabels;
    const target = workloads.find((w) => matches(selector, w.spec.template.metadata.labels));
    assert.ok(target, `${obj.kind}/${obj.metadata.name} selects no pods`);
    if (obj.kind === "Service") {
      const kind = target.metadata.labels!["app.kubernetes.io/name"] as Kind;
      const containerPorts = target.spec.template.spec.containers.flatMap((c: any) => c.ports);
      for (const port of obj.spec.ports) {
        const named = containerPorts.find((p: any) => p.name === port.targetPort || p.containerPort === port.targetPort);
        assert.ok(named, `Service/${obj.metadata.name} targets port ${port.targetPort}, which no container has`);
        assert.equal(port.port, contract[kind][port.name as "grpc" | "http"], `Service/${obj.metadata.name} port ${port.name}`);
        assert.equal(named.containerPort, port.port, `Service/${obj.metadata.name} ${port.name} container port`);
      }
    }
  }
  assert.deepEqual(workloads.map((w) => `${w.kind}/${w.metadata.name}`).sort(), ["Deployment/admin", "Deployment/timer", "StatefulSet/dispatcher"]);
});

test("every workload probes /readyz and /healthz on its HTTP port, is scraped, and stops gracefully", () => {
  const objects = k8sObjects().map(({ obj }) => obj);
  const stages = dockerfileStages().map((s) => s.name);
  const configMaps = new Map(objects.filter((o) => o.kind === "ConfigMap").map((o) => [o.metadata.name, o.data ?? {}]));
  const secrets = new Map(objects.filter((o) => o.kind === "Secret").map((o) => [o.metadata.name, { ...o.data, ...o.stringData }]));
  const shardCounts = new Set<number>();

  for (const w of objects.filter((o) => o.kind === "Deployment" || o.kind === "StatefulSet")) {
    const kind = w.metadata.name as Kind;
    const where = `${w.kind}/${w.metadata.name}`;
    const pod = w.spec.template;
    assert.ok(matches(w.spec.selector.matchLabels, pod.metadata.labels), `${where} selector matches its pods`);
    assert.ok(pod.spec.terminationGracePeriodSeconds >= 30, `${where} terminationGracePeriodSeconds >= 30`);
    assert.deepEqual(
      [pod.metadata.annotations?.["prometheus.io/scrape"], pod.metadata.annotations?.["prometheus.io/port"], pod.metadata.annotations?.["prometheus.io/path"]],
      ["true", String(contract[kind].http), "/metrics"],
      `${where} scrape annotations`,
    );
    assert.equal(pod.spec.containers.length, 1, where);
    const c = pod.spec.containers[0];
    assert.match(c.image, new RegExp(`^timer-mesh/(${stages.join("|")}):`), `${where} image is a target of infra/Dockerfile`);
    assert.ok(c.image.startsWith(`timer-mesh/${kind}:`), `${where} runs the ${kind} image`);
    const portOf = (p: string | number) => (typeof p === "number" ? p : c.ports.find((cp: any) => cp.name === p)?.containerPort);
    assert.equal(portOf("grpc"), contract[kind].grpc, `${where} grpc port`);
    assert.equal(portOf("http"), contract[kind].http, `${where} http port`);
    assert.equal(c.readinessProbe?.httpGet?.path, "/readyz", `${where} readinessProbe`);
    assert.equal(portOf(c.readinessProbe.httpGet.port), contract[kind].http, `${where} readinessProbe port`);
    assert.equal(c.livenessProbe?.httpGet?.path, "/healthz", `${where} livenessProbe`);
    assert.equal(portOf(c.livenessProbe.httpGet.port), contract[kind].http, `${where} livenessProbe port`);

    // The environment the container gets, resolved as the kubelet would.
    const env: Env = {};
    for (const from of c.envFrom ?? []) {
      const source = from.configMapRef ? configMaps.get(from.configMapRef.name) : secrets.get(from.secretRef?.name);
      assert.ok(source, `${where} envFrom refers to a missing ConfigMap/Secret`);
      Object.assign(env, source);
    }
    for (const e of c.env ?? []) {
      const ref = e.valueFrom;
      if (ref?.secretKeyRef) {
        const value = secrets.get(ref.secretKeyRef.name)?.[ref.secretKeyRef.key];
        assert.ok(value, `${where} ${e.name}: no key ${ref.secretKeyRef.key} in Secret ${ref.secretKeyRef.name}`);
        env[e.name] = value;
      } else if (ref?.configMapKeyRef) {
        const value = configMaps.get(ref.configMapKeyRef.name)?.[ref.configMapKeyRef.key];
        assert.ok(value, `${where} ${e.name}: no key ${ref.configMapKeyRef.key} in ConfigMap ${ref.configMapKeyRef.name}`);
        env[e.name] = value;
      } else if (ref?.fieldRef) {
        env[e.name] = { "metadata.name": `${w.metadata.name}-0`, "metadata.namespace": w.metadata.namespace! }[ref.fieldRef.fieldPath as string] ?? "";
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
    const dbVar = c.env.find((e: any) => e.name === "DATABASE_URL");
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
  assert.ok(sts.spec.replicas >= 2, "a mesh of at least two dispatchers");
  const headless = objects.find((o) => o.kind === "Service" && o.metadata.name === sts.spec.serviceName);
  assert.ok(headless, `serviceName ${sts.spec.serviceName} is not a Service`);
  assert.equal(headless.spec.clusterIP, "None", "the dispatchers' Service is headless");
  assert.ok(matches(headless.spec.selector, sts.spec.template.metadata.labels));
  const env = sts.spec.template.spec.containers[0].env as { name: string; valueFrom?: { fieldRef?: { fieldPath: string } }; value?: string }[];
  assert.equal(env.find((e) => e.name === "DISPATCHER_ID")?.valueFrom?.fieldRef?.fieldPath, "metadata.name", "DISPATCHER_ID is the pod name");
  assert.match(env.find((e) => e.name === "ADVERTISE_ADDRESS")?.value ?? "", new RegExp(`^\\$\\(DISPATCHER_ID\\)\\.${headless.metadata.name}\\.`), "ADVERTISE_ADDRESS is the pod's DNS name");
  const shutdown = env.find((e) => e.name === "SHUTDOWN_TIMEOUT")?.value ?? "15s";
  assert.ok(sts.spec.template.spec.terminationGracePeriodSeconds > seconds(shutdown), "the grace period outlasts SHUTDOWN_TIMEOUT");
});
