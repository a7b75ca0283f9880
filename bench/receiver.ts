// The benchmarks' callback receiver, in a CHILD process so that the load generator's own CPU use
// does not delay the receipt timestamps. It takes HTTP callbacks (startHttpReceiver from
// test/support, answering 200), NATS callbacks on one subject once told where NATS is, and OTLP
// trace exports (discarded, as a collector on another machine would take them). The parent
// asks it over the IPC channel how many deliveries a group has had, and takes them.
//
// Run as a child by startReceiver(); `tsx bench/receiver.ts` alone does nothing useful.
import { fork, type ChildProcess } from "node:child_process";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { startHttpReceiver } from "../test/support/receivers.js";
import type { Delivery } from "./stats.js";

const SELF = fileURLToPath(import.meta.url);
const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** The subject NATS callbacks of the benchmarks publish on. */
export const NATS_SUBJECT = "bench.fired";

type Ask = { op: "count" | "take"; group: string } | { op: "nats"; url: string; user: string; pass: string };
type ToReceiver = Ask & { id: number };
type FromReceiver =
  | { type: "ready"; url: string; otlp: string }
  | { id: number; count?: number; rows?: Delivery[]; error?: string };

/** The parent's handle on the receiver child. */
export interface Receiver {
  /** Where HTTP callbacks go. */
  url: string;
  /** OTEL_EXPORTER_OTLP_ENDPOINT for services whose traces should be exported (and dropped). */
  otlpEndpoint: string;
  child: ChildProcess;
  /** Subscribes to NATS_SUBJECT on this server as `user`; resolves once subscribed. */
  listenNats(url: string, user: string, pass: string): Promise<void>;
  /** Deliveries recorded for `group` and not taken yet. */
  count(group: string): Promise<number>;
  /** Removes and returns the deliveries recorded for `group`. */
  take(group: string): Promise<Delivery[]>;
  close(): Promise<void>;
}

async function receiverMain(): Promise<void> {
  const byGroup = new Map<string, Delivery[]>();
  const record = (group: string, d: Delivery) => {
    let rows = byGroup.get(group);
    if (!rows) {
      rows = [];
      byGroup.set(group, rows);
    }
    rows.push(d);
  };
  const rx = await startHttpReceiver((r) => {
    record(r.groupId, [r.timerId, r.attempt, r.fireAtMs, r.receivedAtMs]);
    return 200;
  });
  const otlp = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => res.end("{}"));
  });
  await new Promise<void>((r) => otlp.listen(0, "127.0.0.1", r));
  let nc: NatsConnection | undefined;
  const send = (m: FromReceiver) => process.send!(m);
  process.on("message", (m: ToReceiver) => {
    if (m.op === "nats") {
      void (async () => {
        nc = await connect({ servers: m.url, user: m.user, pass: m.pass });
        nc.subscribe(NATS_SUBJECT, {
          callback: (_err, msg) => {
            const h = msg.headers;
            record(h?.get("x-timer-group") ?? "", [
              h?.get("x-timer-id") ?? "",
              Number(h?.get("x-timer-attempt")),
              Date.parse(h?.get("x-timer-fire-at") ?? ""),
              Date.now(),
            ]);
          },
        });
        await nc.flush();
      })().then(
        () => send({ id: m.id }),
        (err: unknown) => send({ id: m.id, error: String(err) }),
      );
      return;
    }
    // startHttpReceiver keeps every request too; what matters is recorded above.
    rx.received.length = 0;
    if (m.op === "count") {
      send({ id: m.id, count: byGroup.get(m.group)?.length ?? 0 });
      return;
    }
    const rows = byGroup.get(m.group) ?? [];
    byGroup.delete(m.group);
    send({ id: m.id, rows });
  });
  process.on("disconnect", () => {
    void (async () => {
      await nc?.close();
      otlp.closeAllConnections();
      otlp.close();
      await rx.close();
    })().finally(() => process.exit(0));
  });
  send({ type: "ready", url: rx.url, otlp: `http://127.0.0.1:${(otlp.address() as AddressInfo).port}` });
}

/** Forks the receiver and waits until it listens. */
export async function startReceiver(): Promise<Receiver> {
  const child = fork(SELF, ["--receiver"], {
    cwd: ROOT,
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const waiting = new Map<number, (m: FromReceiver) => void>();
  let nextId = 1;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  const ready = await new Promise<{ url: string; otlp: string }>((resolve, reject) => {
    child.on("message", (m: FromReceiver) => {
      if ("type" in m) return resolve(m);
      waiting.get(m.id)?.(m);
      waiting.delete(m.id);
    });
    child.once("exit", (code) => reject(new Error(`receiver exited during start (code ${code})`)));
    setTimeout(() => reject(new Error("receiver did not start within 20 s")), 20_000).unref();
  });
  const ask = (m: Ask) =>
    new Promise<Exclude<FromReceiver, { type: "ready" }>>((resolve, reject) => {
      if (!child.connected) return reject(new Error("the receiver process is gone"));
      const id = nextId++;
      waiting.set(id, (r) => {
        if ("type" in r) return;
        if (r.error) reject(new Error(`receiver: ${r.error}`));
        else resolve(r);
      });
      child.send({ ...m, id } satisfies ToReceiver);
    });
  return {
    url: ready.url,
    otlpEndpoint: ready.otlp,
    child,
    listenNats: async (url, user, pass) => void (await ask({ op: "nats", url, user, pass })),
    count: async (group) => (await ask({ op: "count", group })).count ?? 0,
    take: async (group) => (await ask({ op: "take", group })).rows ?? [],
    async close() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      if (child.connected) child.disconnect();
      const t = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(t);
    },
  };
}

if (process.argv.includes("--receiver")) await receiverMain();
