// The dispatcher's callback client at the edges: what an HTTP receiver may do wrong (a huge or
// endless body, no answer, a reset, a certificate for another name), and how core NATS
// publishes are confirmed. Real loopback servers; NATS through a stand-in connection that
// counts flushes (the flush batching is pure bookkeeping).
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import type { AddressInfo, Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { create } from "@bufbuild/protobuf";
import type { NatsConnection } from "@nats-io/transport-node";
import type { NatsLink } from "../../services/shared/src/nats.js";
import { loadEgressPolicy, type HostAddress, type Resolver } from "../../services/shared/src/egress.js";
import { TenantSubjects } from "../../services/shared/src/tenant-subjects.js";
import { CallbackDeliverer, type Delivery } from "../../services/dispatcher/src/delivery.js";
import { MAX_DRAINED_BODY_BYTES } from "../../services/dispatcher/src/http-callbacks.js";
import { CallbackSchema, type Callback } from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { makeTestCertificates } from "../support/certificates.js";

const resolver =
  (names: Record<string, string>): Resolver =>
  async (name) => {
    const a = names[name];
    if (!a) throw new Error(`no such host ${name}`);
    return [{ address: a, family: 4 } satisfies HostAddress];
  };

function deliverer(
  opts: {
    timeoutMs?: number;
    nats?: Pick<NatsLink, "ifConnected">;
    httpsCa?: string;
    names?: Record<string, string>;
  } = {},
): CallbackDeliverer {
  return new CallbackDeliverer({
    nats: opts.nats ?? { ifConnected: () => undefined },
    timeoutMs: opts.timeoutMs ?? 5_000,
    maxSockets: 4,
    egress: loadEgressPolicy({ CALLBACK_ALLOWED_NETWORKS: "127.0.0.1/32" }),
    tenantSubjects: new TenantSubjects(undefined),
    resolve: resolver(opts.names ?? {}),
    ...(opts.httpsCa ? { httpsCa: opts.httpsCa } : {}),
  });
}

function delivery(callback: Callback, timerId = "t1"): Delivery {
  return {
    groupId: "g",
    timerId,
    fireAtMs: Date.now(),
    attempt: 1,
    payload: new Uint8Array([1, 2, 3]),
    labels: {},
    callback,
    idempotencyKey: `g/${timerId}`,
    traceparent: "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01",
  };
}

const httpCb = (url: string) =>
  create(CallbackSchema, { target: { case: "http", value: { url, headers: { "x-team": "blue" } } } });
const natsCb = (subject: string) =>
  create(CallbackSchema, { target: { case: "nats", value: { subject, jetstream: false } } });

/** A loopback HTTP server answering with `handler`; counts the connections it accepted. */
async function server(
  handler: http.RequestListener,
): Promise<{ url: string; connections: () => number; close(): Promise<void> }> {
  const s = http.createServer(handler);
  let connections = 0;
  const sockets = new Set<Socket>();
  s.on("connection", (c: Socket) => {
    connections++;
    sockets.add(c);
    c.on("close", () => sockets.delete(c));
  });
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(s.address() as AddressInfo).port}/hook`,
    connections: () => connections,
    close: () =>
      new Promise<void>((r) => {
        for (const c of sockets) c.destroy();
        s.close(() => r());
      }),
  };
}

describe("HTTP callbacks at the edges", () => {
  test("the status decides: a 200 whose body is huge succeeds, the body is not read to its end, and its connection is not reused", async () => {
    let written = 0;
    const rx = await server((req, res) => {
      req.resume();
      res.writeHead(200, { "content-type": "application/octet-stream" });
      const chunk = Buffer.alloc(64 * 1024, 97);
      // Writes until the client goes away, 64 MiB at most.
      const pump = () => {
        while (written < 64 * 1024 * 1024 && !res.destroyed) {
          written += chunk.length;
          if (!res.write(chunk)) return void res.once("drain", pump);
        }
        res.end();
      };
      pump();
    });
    const d = deliverer();
    try {
      assert.deepEqual(await d.deliver(delivery(httpCb(rx.url))), { ok: true });
      assert.deepEqual(await d.deliver(delivery(httpCb(rx.url), "t2")), { ok: true });
      assert.ok(written < 64 * 1024 * 1024, "the client stopped reading; the body was never taken whole");
      assert.ok(MAX_DRAINED_BODY_BYTES < 64 * 1024 * 1024);
      assert.ok(rx.connections() >= 2, "a connection whose body was cut off is not reused");
    } finally {
      d.close();
      await rx.close();
    }
  });

  test("a 200 whose body never ends succeeds: the attempt does not wait for the body", async () => {
    const rx = await server((req, res) => {
      req.resume();
      res.writeHead(200);
      res.write("partial"); // and nothing more, ever
    });
    const d = deliverer({ timeoutMs: 60_000 });
    try {
      assert.deepEqual(await d.deliver(delivery(httpCb(rx.url))), { ok: true });
    } finally {
      d.close();
      await rx.close();
    }
  });

  test("a receiver that never answers fails the attempt, retryably, at CALLBACK_TIMEOUT", async () => {
    const rx = await server((req) => void req.resume());
    const d = deliverer({ timeoutMs: 300 });
    try {
      assert.deepEqual(await d.deliver(delivery(httpCb(rx.url))), {
        ok: false,
        retryable: true,
        error: "timed out after 300ms",
      });
    } finally {
      d.close();
      await rx.close();
    }
  });

  test("a connection reset before the answer is a retryable failure", async () => {
    const rx = await server((req) => req.socket.destroy());
    const d = deliverer();
    try {
      const r = await d.deliver(delivery(httpCb(rx.url)));
      assert.equal(r.ok, false);
      assert.equal(r.ok ? undefined : r.retryable, true);
      assert.match(r.ok ? "" : r.error, /other side closed|ECONNRESET|socket hang up/i);
    } finally {
      d.close();
      await rx.close();
    }
  });

  test("the request carries the tenant's headers, the contract's headers and the payload; no redirect is followed", async () => {
    const seen: { headers: http.IncomingHttpHeaders; body: Buffer; url: string }[] = [];
    const rx = await server((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        seen.push({ headers: req.headers, body: Buffer.concat(chunks), url: req.url ?? "" });
        res.writeHead(302, { location: "/elsewhere" }).end();
      });
    });
    const d = deliverer();
    try {
      assert.deepEqual(await d.deliver(delivery(httpCb(`${rx.url}?team=blue`))), {
        ok: false,
        retryable: false,
        error: "HTTP 302",
      });
      assert.equal(seen.length, 1);
      const h = seen[0]!.headers;
      assert.equal(seen[0]!.url, "/hook?team=blue");
      assert.equal(h["x-team"], "blue");
      assert.equal(h["x-timer-group"], "g");
      assert.equal(h["x-timer-id"], "t1");
      assert.equal(h["x-timer-attempt"], "1");
      assert.equal(h["idempotency-key"], "g/t1");
      assert.equal(h["content-type"], "application/octet-stream");
      assert.equal(h["content-length"], "3");
      assert.deepEqual([...seen[0]!.body], [1, 2, 3]);
    } finally {
      d.close();
      await rx.close();
    }
  });
});

describe("https callbacks", () => {
  test("the certificate is verified against the URL's host name (SNI too), not against the pinned address", async () => {
    await using certs = await makeTestCertificates();
    const [cert, key, ca] = await Promise.all([
      readFile(certs.serverCert),
      readFile(certs.serverKey),
      readFile(certs.caCert, "utf8"),
    ]);
    const sni: (string | false | null)[] = [];
    const s = https.createServer({ cert, key }, (req, res) => {
      sni.push((req.socket as TLSSocket).servername);
      req.resume();
      res.end();
    });
    await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
    const port = (s.address() as AddressInfo).port;
    // The server's certificate names localhost and 127.0.0.1, not receiver.test; both names
    // resolve (stub) to 127.0.0.1, the address the certificate does name.
    const names = { localhost: "127.0.0.1", "receiver.test": "127.0.0.1" };
    const trusting = deliverer({ httpsCa: ca, names });
    const untrusting = deliverer({ names });
    try {
      assert.deepEqual(await trusting.deliver(delivery(httpCb(`https://localhost:${port}/hook`))), {
        ok: true,
      });
      assert.deepEqual(sni, ["localhost"]);
      const wrongName = await trusting.deliver(delivery(httpCb(`https://receiver.test:${port}/hook`)));
      assert.equal(wrongName.ok, false);
      assert.match(
        wrongName.ok ? "" : wrongName.error,
        /ERR_TLS_CERT_ALTNAME_INVALID|does not match|altnames/i,
      );
      const unknownCa = await untrusting.deliver(delivery(httpCb(`https://localhost:${port}/hook`)));
      assert.equal(unknownCa.ok, false);
      assert.match(unknownCa.ok ? "" : unknownCa.error, /certificate/i);
      assert.deepEqual(sni, ["localhost"], "no request reached the server over an unverified connection");
    } finally {
      trusting.close();
      untrusting.close();
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  });
});

describe("core NATS callbacks", () => {
  /** A connected stand-in recording publishes, and what each flush (PING) confirmed. */
  function natsStub() {
    const published: string[] = [];
    const flushes: number[] = []; // publishes made before each flush
    const connection = {
      publish: (subject: string) => void published.push(subject),
      flush: async () => void flushes.push(published.length),
    } as unknown as NatsConnection;
    return { link: { ifConnected: () => connection }, published, flushes };
  }

  test("the publishes of one turn share one flush; a publish made after that flush went out waits for the next one", async () => {
    const nats = natsStub();
    const d = deliverer({ nats: nats.link });
    const first = await Promise.all(
      Array.from({ length: 50 }, (_, i) => d.deliver(delivery(natsCb("orders.fired"), `t${i}`))),
    );
    assert.ok(first.every((r) => r.ok));
    assert.deepEqual(nats.flushes, [50], "one flush, sent after all 50 publishes");
    assert.deepEqual(await d.deliver(delivery(natsCb("orders.fired"), "late")), { ok: true });
    assert.deepEqual(nats.flushes, [50, 51], "the later publish had a flush of its own, sent after it");
  });

  test("a flush that fails fails every attempt it was to confirm, retryably", async () => {
    const connection = {
      publish: () => {},
      flush: async () => Promise.reject(new Error("connection closed")),
    } as unknown as NatsConnection;
    const d = deliverer({ nats: { ifConnected: () => connection } });
    const results = await Promise.all(
      [1, 2, 3].map((i) => d.deliver(delivery(natsCb("orders.fired"), `t${i}`))),
    );
    assert.deepEqual(
      results,
      Array(3).fill({ ok: false, retryable: true, error: "NATS publish not confirmed: connection closed" }),
    );
  });
});
