// The console's port on its own (services/admin/src/console-server.ts, console-proxy.ts), with a
// stand-in for the admin's RPC handler and a stand-in timer service recording what reaches it:
// a console not built yet, and exactly which headers cross the proxy either way. The real
// admin and timer service behind it: test/integration/console-server.test.ts.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TimerApiProxy } from "../../services/admin/src/console-proxy.js";
import {
  NOT_BUILT_MESSAGE,
  startConsoleServer,
  type ConsoleServer,
} from "../../services/admin/src/console-server.js";
import { createLogger } from "../../services/shared/src/logger.js";

let dir: string;
let upstream: http.Server;
let received: http.IncomingHttpHeaders[] = [];
let consoleServer: ConsoleServer;
let base: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "console-"));
  // The timer service's stand-in: records the headers it got, answers with a cookie and more.
  upstream = http.createServer((req, res) => {
    received.push(req.headers);
    req.resume();
    req.on("end", () => {
      res.writeHead(200, {
        "content-type": "application/json",
        "set-cookie": "session=1",
        "access-control-allow-origin": "*",
        "x-internal": "secret",
        "trailer-grpc-status": "0",
      });
      res.end("{}");
    });
  });
  await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve));
  const log = createLogger("admin", "silent");
  consoleServer = await startConsoleServer({
    host: "127.0.0.1",
    port: 0,
    distDir: join(dir, "dist"),
    rpc: { handler: (_req, res) => res.end("admin"), tls: undefined },
    proxy: new TimerApiProxy({
      url: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
      tls: undefined,
      maxRequestBytes: 1024,
      log,
    }),
    publicConfig: { jaegerUiUrl: null, version: "0.0.0" },
    log,
  });
  base = `http://127.0.0.1:${consoleServer.port}`;
});
after(async () => {
  await consoleServer?.close(Date.now() + 1_000);
  upstream?.close();
  await rm(dir, { recursive: true, force: true });
});

test("before the console is built it says how to build it; once built it is served without a restart", async () => {
  for (const path of ["/", "/app.js"]) {
    const res = await fetch(`${base}${path}`);
    assert.equal(res.status, 503, path);
    assert.equal(await res.text(), NOT_BUILT_MESSAGE);
  }
  assert.equal((await fetch(`${base}/config.json`)).status, 200, "config.json needs no build");
  await mkdir(join(dir, "dist"));
  await writeFile(join(dir, "dist/index.html"), "<!doctype html><title>console</title>");
  const res = await fetch(`${base}/`);
  assert.equal(res.status, 200);
  assert.equal(await res.text(), "<!doctype html><title>console</title>");
  assert.equal((await fetch(`${base}/app.js`)).status, 404, "not in this build");
});

test("only a Connect call's headers reach the timer service, and only Connect's come back", async () => {
  received = [];
  const res = await fetch(`${base}/timer.v1.TimerService/GetTimer`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "connect-protocol-version": "1",
      "connect-timeout-ms": "5000",
      authorization: "Bearer t",
      traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
      cookie: "session=1",
      "x-forwarded-for": "10.0.0.1",
      "x-custom": "1",
    },
    body: "{}",
  });
  assert.equal(res.status, 200);
  const [got] = received;
  assert.ok(got, "the call reached the timer service");
  const forwarded = Object.keys(got).filter((h) => !["host", "connection", "content-length"].includes(h));
  assert.deepEqual(forwarded.sort(), [
    "authorization",
    "connect-protocol-version",
    "connect-timeout-ms",
    "content-type",
    "traceparent",
  ]);
  assert.equal(res.headers.get("set-cookie"), null);
  assert.equal(res.headers.get("access-control-allow-origin"), null);
  assert.equal(res.headers.get("x-internal"), null);
  assert.equal(res.headers.get("trailer-grpc-status"), "0");
  assert.equal(res.headers.get("content-type"), "application/json");
});

test("a body over the limit is refused without reaching the timer service", async () => {
  received = [];
  const res = await fetch(`${base}/timer.v1.TimerService/CreateTimer`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ payload: "x".repeat(2048) }),
  });
  assert.equal(res.status, 429);
  assert.equal(((await res.json()) as { code: string }).code, "resource_exhausted");
  assert.equal(received.length, 0);
});

test("an unreachable timer service is UNAVAILABLE, without the reason", async () => {
  const log = createLogger("admin", "silent");
  const proxy = new TimerApiProxy({ url: "http://127.0.0.1:9", tls: undefined, maxRequestBytes: 1024, log });
  const server = http.createServer(
    (req, res) => void proxy.forward(req, res, "/timer.v1.TimerService/GetTimer"),
  );
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const res = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`, {
      method: "POST",
      body: "{}",
    });
    assert.equal(res.status, 503);
    const body = (await res.json()) as { code: string; message: string };
    assert.equal(body.code, "unavailable");
    assert.doesNotMatch(body.message, /ECONNREFUSED|127\.0\.0\.1:9/);
  } finally {
    server.close();
    await proxy.close();
  }
});
