// Copies infra/nats/nats.conf into the ConfigMap of infra/k8s/nats.yaml. kustomize may not read
// files outside infra/k8s, so the ConfigMap holds a copy; test/unit/infra-manifests.test.ts
// fails when the two differ. Run after changing nats.conf:  npx tsx scripts/sync-k8s-nats-config.ts
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const conf = fileURLToPath(new URL("../infra/nats/nats.conf", import.meta.url));
const manifest = fileURLToPath(new URL("../infra/k8s/nats.yaml", import.meta.url));

// The block scalar runs from "  nats.conf: |" to the next document; every line indented by 4.
const text = readFileSync(manifest, "utf8");
const m = /^( {2}nats\.conf: \|\n)[\s\S]*?(?=^---\n)/m.exec(text);
if (!m) throw new Error(`${manifest}: no "  nats.conf: |" block followed by "---"`);
const body = readFileSync(conf, "utf8")
  .split("\n")
  .map((line) => (line === "" ? "" : `    ${line}`))
  .join("\n");
writeFileSync(manifest, text.slice(0, m.index) + m[1] + body + text.slice(m.index + m[0].length));
console.log(`${manifest}: ConfigMap nats.conf = ${conf}`);
