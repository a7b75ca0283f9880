// The OpenTelemetry Collector's configuration as the collector reads it from several --config
// files: later files override earlier ones key by key, and a list (a pipeline's processors) is
// replaced whole (the collector's confmap merge). For the static checks of
// infra/k8s/otel-collector/ (compose runs config.yaml, the k8s sidecars config.yaml + k8s.yaml).
import { loadYaml } from "./yaml.js";

/** A parsed YAML mapping. */
export type YamlMap = { [key: string]: unknown };

const isMap = (v: unknown): v is YamlMap => typeof v === "object" && v !== null && !Array.isArray(v);

/** `over` merged into `base`: maps recursively, anything else (lists too) replaced. */
export function mergeConfig(base: YamlMap, over: YamlMap): YamlMap {
  const out: YamlMap = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const old = out[key];
    out[key] = isMap(old) && isMap(value) ? mergeConfig(old, value) : value;
  }
  return out;
}

/** The collector configuration of these files (paths from the repository root), merged in order. */
export function collectorConfig(...files: string[]): YamlMap {
  return files.reduce<YamlMap>((config, file) => {
    const [doc] = loadYaml(file);
    if (!isMap(doc)) throw new Error(`${file} is not a YAML mapping`);
    return mergeConfig(config, doc);
  }, {});
}

/** A value at a dotted path of keys ("receivers.otlp.protocols.http.endpoint"), or undefined. */
export function at(config: unknown, path: string): unknown {
  return path.split(".").reduce<unknown>((v, key) => (isMap(v) ? v[key] : undefined), config);
}
