// The console's port of the admin service (services/admin/src/console-server.ts), driven as a
// browser drives it: fetch() and Connect JSON calls, against a real mesh (timer service,
// dispatcher, admin; real Postgres and nats-server) and the console as `npm run build:console`
// builds it. What it serves, the headers that make it safe to serve, the admin calls it makes
// through the admin's own interceptors (authenticated, audited), the timer.v1 calls it forwards
// (authorized by the timer service), and everything it refuses.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import { connect as tlsConnect } from "node:tls";
import { fileURLToPath } from "node:url";
import { hashToken } from "../../services/shared/src/auth.js";
import { SERVICE_VERSION } from "../../services/shared/src/version.js";
import { makeTestCertificates } from "../support/certificates.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startService, type ServiceProcess } from "../support/service-process.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const OPS = "ops-console-4e9b1c7a20";
const BILLING = "billing-console-8d2f6a13e5";
const TOKENS = JSON.stringify([
  { name: "ops", sha256: hashToken(OPS), admin: true },
  { name: "ci-billing", sha256: hashToken(BILLING), groups: ["billing"] },
]);
const JAEGER = "http://jaeger.example:16686";
/** The admin's GRPC_MAX_REQUEST_BYTES: small, so a forwarded body over it is cheap to send. */
const MAX_REQUEST_BYTES = 4096;
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

let mesh: TestMesh;
let admin: ServiceProcess;
let base: string;

before(async () => {
  // What `npm ci` (prepare) and `npm start` do; a failed build fails here with esbuild's messages.
  execFileSync(process.execPath, ["scripts/build-console.mjs"], { cwd: root, stdio: "pipe" });
  mesh = await startMesh({ env: { AUTH_TOKENS: TOKENS } });
  admin = await startService("admin", {
    ...mesh.envFor("admin"),
    JAEGER_UI_URL: `${JAEGER}/`,
    GRPC_MAX_REQUEST_BYTES: String(MAX_REQUEST_BYTES),
  });
  base = `http://127.0.0.1:${admin.consolePort}`;
});
after(async () => {
  await admin?.[Symbol.asyncDispose]();
  await mesh?.[Symbol.asyncDispose]();
});

/** A Connect unary call with JSON, as @connectrpc/connect-web makes it. */
async function call(
  path: string,
  body: unknown,
  opts: { token?: string; origin?: string } = {},
): Promise<{ status: number; json: Record<string, unknown>; headers: Headers }> {
  const headers: Record<string, string> = {
    "content-type": "application/json",
    "connect-protocol-version": "1",
  };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  if (opts.origin) headers.origin = opts.origin;
  const res = await fetch(`${base}${path}`, { method: "POST", headers, body: JSON.stringify(body) });
  const text = await res.text();
  // A refusal before any handler (404, 405) is plain text.
  const json = res.headers.get("content-type")?.startsWith("application/json")
    ? (JSON.parse(text) as Record<string, unknown>)
    : { text };
  return { status: res.status, json, headers: res.headers };
}

/** A request with its path sent exactly as given (fetch would normalize "/../x"). */
function rawGet(path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: admin.consolePort, path, method: "GET" }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

function assertSecurityHeaders(headers: Headers, what: string): void {
  assert.equal(headers.get("content-security-policy"), CSP, `${what}: CSP`);
  assert.equal(headers.get("x-content-type-options"), "nosniff", `${what}: nosniff`);
  assert.equal(headers.get("referrer-policy"), "no-referrer", `${what}: referrer policy`);
  assert.equal(headers.get("x-frame-options"), "DENY", `${what}: frame options`);
  assert.equal(headers.get("cross-origin-opener-policy"), "same-origin", `${what}: COOP`);
  assert.equal(headers.get("cross-origin-resource-policy"), "same-origin", `${what}: CORP`);
  assert.equal(headers.get("set-cookie"), null, `${what}: no cookie`);
  assert.equal(headers.get("access-control-allow-origin"), null, `${what}: no CORS`);
}

test("the start log names the console's address", () => {
  assert.match(admin.output(), new RegExp(`console at http://127\\.0\\.0\\.1:${admin.consolePort}/`));
});

test("GET / serves the built index with the security headers, never stored, no cookie", async () => {
  const res = await fetch(`${base}/`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/html/);
  assert.equal(
    await res.text(),
    readFileSync(`${root}services/admin/console/dist/index.html`, "utf8"),
    "the index as built",
  );
  assertSecurityHeaders(res.headers, "GET /");
  assert.equal(res.headers.get("cache-control"), "no-store");
});

test("the script, its source map and the style sheet are served by name, with their types", async () => {
  for (const [path, type] of [
    ["/app.js", /^text\/javascript/],
    ["/app.js.map", /^application\/json/],
    ["/app.css", /^text\/css/],
  ] as const) {
    const res = await fetch(`${base}${path}`);
    assert.equal(res.status, 200, path);
    assert.match(res.headers.get("content-type") ?? "", type, path);
    assert.equal(
      Buffer.from(await res.arrayBuffer()).equals(readFileSync(`${root}services/admin/console/dist${path}`)),
      true,
      `${path} as built`,
    );
    assertSecurityHeaders(res.headers, path);
  }
  const head = await fetch(`${base}/app.js`, { method: "HEAD" });
  assert.equal(head.status, 200);
  assert.equal(await head.text(), "");
});

test("/config.json has the Jaeger UI address and the version, nothing else", async () => {
  const res = await fetch(`${base}/config.json`);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { jaegerUiUrl: JAEGER, version: SERVICE_VERSION });
  assertSecurityHeaders(res.headers, "/config.json");
  assert.equal(res.headers.get("cache-control"), "no-store");
});

test("an AdminService change through the console is authenticated and audited like on the gRPC port", async () => {
  const group = "console-paused";
  const anonymous = await call("/admin.v1.AdminService/PauseGroup", { groupId: group, reason: "x" });
  assert.equal(anonymous.status, 401);
  assert.equal(anonymous.json.code, "unauthenticated");
  const group_token = await call(
    "/admin.v1.AdminService/PauseGroup",
    { groupId: group, reason: "x" },
    { token: BILLING },
  );
  assert.equal(group_token.json.code, "permission_denied", "a group token is not an admin token here either");

  const paused = await call(
    "/admin.v1.AdminService/PauseGroup",
    { groupId: group, reason: "from the console" },
    { token: OPS, origin: base },
  );
  assert.equal(paused.status, 200, JSON.stringify(paused.json));
  assert.equal(paused.json.newlyPaused, true);
  assertSecurityHeaders(paused.headers, "PauseGroup");
  assert.equal(paused.headers.get("cache-control"), "no-store");
  const { rows } = await mesh.db.pool.query<{ group_id: string }>(
    "SELECT group_id FROM paused_groups WHERE group_id = $1",
    [group],
  );
  assert.equal(rows.length, 1, "the group is paused in the database");

  const audit = await call(
    "/admin.v1.AdminService/ListAuditEvents",
    { action: "PauseGroup", actor: "ops" },
    { token: OPS },
  );
  assert.equal(audit.status, 200, JSON.stringify(audit.json));
  const events = (audit.json.events ?? []) as Array<{ arguments?: { groupId?: string }; outcome?: string }>;
  assert.ok(
    events.some((e) => e.arguments?.groupId === group && e.outcome === "OK"),
    `audited: ${JSON.stringify(events)}`,
  );
});

test("timer.v1 calls are forwarded to the timer service, which authorizes them by the token", async () => {
  const timer = {
    groupId: "billing",
    timerId: "console-1",
    delay: "3600s",
    callback: { http: { url: "http://127.0.0.1:9/hook" } },
  };
  const created = await call("/timer.v1.TimerService/CreateTimer", timer, { token: BILLING, origin: base });
  assert.equal(created.status, 200, JSON.stringify(created.json));
  assertSecurityHeaders(created.headers, "CreateTimer");
  const got = await call(
    "/timer.v1.TimerService/GetTimer",
    { groupId: "billing", timerId: "console-1" },
    { token: BILLING },
  );
  assert.equal(got.status, 200, JSON.stringify(got.json));
  assert.equal((got.json.timer as { timerId?: string } | undefined)?.timerId, "console-1");

  // ops makes a timer in a group billing's token does not cover; billing cannot read it.
  const other = await call(
    "/timer.v1.TimerService/CreateTimer",
    { ...timer, groupId: "orders", timerId: "console-2" },
    { token: OPS },
  );
  assert.equal(other.status, 200, JSON.stringify(other.json));
  const refused = await call(
    "/timer.v1.TimerService/GetTimer",
    { groupId: "orders", timerId: "console-2" },
    { token: BILLING },
  );
  assert.equal(refused.json.code, "permission_denied", JSON.stringify(refused.json));
  const anonymous = await call("/timer.v1.TimerService/GetTimer", {
    groupId: "billing",
    timerId: "console-1",
  });
  assert.equal(anonymous.json.code, "unauthenticated");
  const schedules = await call(
    "/timer.v1.ScheduleService/ListSchedules",
    { groupId: "billing" },
    { token: BILLING },
  );
  assert.equal(schedules.status, 200, `ScheduleService is forwarded too: ${JSON.stringify(schedules.json)}`);
});

test("a forwarded body over GRPC_MAX_REQUEST_BYTES is refused before it reaches the timer service", async () => {
  const res = await call(
    "/timer.v1.TimerService/CreateTimer",
    { groupId: "billing", timerId: "big", payload: Buffer.alloc(MAX_REQUEST_BYTES).toString("base64") },
    { token: BILLING },
  );
  assert.equal(res.json.code, "resource_exhausted");
});

test("services the console does not call are not reachable through it", async () => {
  for (const path of [
    "/timer.v1.TimerCallbackService/OnTimerFired",
    "/dispatcher.v1.DispatcherService/GetStatus",
    "/grpc.health.v1.Health/Check",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/admin.v1.AdminService",
  ]) {
    const res = await call(path, {}, { token: OPS });
    assert.equal(res.status, 404, path);
  }
});

test("a call from another origin is refused; other methods are not allowed", async () => {
  for (const path of ["/admin.v1.AdminService/ListGroups", "/timer.v1.TimerService/GetTimer"]) {
    const res = await call(
      path,
      { groupId: "billing", timerId: "console-1" },
      {
        token: OPS,
        origin: "https://evil.example",
      },
    );
    assert.equal(res.status, 403, path);
    assertSecurityHeaders(res.headers, `${path} cross-origin`);
  }
  const sameHostOtherScheme = await call(
    "/admin.v1.AdminService/ListGroups",
    {},
    {
      token: OPS,
      origin: `https://127.0.0.1:${admin.consolePort}`,
    },
  );
  assert.equal(sameHostOtherScheme.status, 403);
  assert.equal((await fetch(`${base}/admin.v1.AdminService/ListGroups`)).status, 405, "GET of an RPC");
  assert.equal((await fetch(`${base}/`, { method: "POST" })).status, 405, "POST of the page");
  assert.equal((await fetch(`${base}/config.json`, { method: "DELETE" })).status, 405);
});

test("nothing outside the built files is served", async () => {
  for (const path of [
    "/../package.json",
    "/%2e%2e/package.json",
    "/..%2fpackage.json",
    "/%2e%2e%2fpackage.json",
    "/package.json",
    "/dist/index.html",
    "/src/main.tsx",
    "//etc/passwd",
    "/index.html/",
    "/.",
  ]) {
    const res = await rawGet(path);
    assert.equal(res.status, 404, path);
    assert.doesNotMatch(res.body, /timer-mesh|dependencies/, path);
  }
});

/** The protocol a TLS client offering h2 first, as browsers do, gets from the port. */
function negotiatedProtocol(port: number, ca: Buffer): Promise<string | false | null> {
  return new Promise((resolve, reject) => {
    const sock = tlsConnect({ host: "127.0.0.1", port, ca, ALPNProtocols: ["h2", "http/1.1"] }, () => {
      resolve(sock.alpnProtocol);
      sock.end();
    });
    sock.on("error", reject);
  });
}

/** One request over TLS trusting `ca`. */
function tlsRequest(
  port: number,
  ca: Buffer,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: string,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: "127.0.0.1", port, method, path, headers, ca, agent: false }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (text += d));
      res.on("end", () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: text,
        }),
      );
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

test("with TLS configured the console serves HTTPS (HTTP/1.1 only) and forwards to an https timer service", async () => {
  await using certs = await makeTestCertificates();
  const tls = { TLS_CERT_FILE: certs.serverCert, TLS_KEY_FILE: certs.serverKey };
  await using tlsTimer = await startService("timer", { ...mesh.envFor("timer"), ...tls });
  await using tlsAdmin = await startService("admin", {
    ...mesh.envFor("admin"),
    ...tls,
    TIMER_API_URL: `https://127.0.0.1:${tlsTimer.grpcPort}`,
    TIMER_API_CA_FILE: certs.caCert,
  });
  const port = tlsAdmin.consolePort!;
  assert.match(tlsAdmin.output(), new RegExp(`console at https://127\\.0\\.0\\.1:${port}/`));
  const ca = readFileSync(certs.caCert);
  const page = await tlsRequest(port, ca, "GET", "/");
  assert.equal(page.status, 200);
  assert.equal(await negotiatedProtocol(port, ca), "http/1.1", "a browser offering h2 gets HTTP/1.1");
  assert.equal(page.headers["content-security-policy"], CSP);

  const origin = `https://127.0.0.1:${port}`;
  const headers = {
    "content-type": "application/json",
    "connect-protocol-version": "1",
    authorization: `Bearer ${BILLING}`,
    origin,
  };
  const missing = await tlsRequest(
    port,
    ca,
    "POST",
    "/timer.v1.TimerService/GetTimer",
    headers,
    JSON.stringify({ groupId: "billing", timerId: "no-such-timer" }),
  );
  // not_found comes from the timer service itself: the call went through over TLS.
  assert.equal((JSON.parse(missing.body) as { code?: string }).code, "not_found", missing.body);
  const whoami = await tlsRequest(port, ca, "POST", "/admin.v1.AdminService/ListGroups", headers, "{}");
  assert.equal((JSON.parse(whoami.body) as { code?: string }).code, "permission_denied", whoami.body);
  const plainOrigin = await tlsRequest(
    port,
    ca,
    "POST",
    "/timer.v1.TimerService/GetTimer",
    { ...headers, origin: `http://127.0.0.1:${port}` },
    "{}",
  );
  assert.equal(plainOrigin.status, 403, "http:// is another origin than https://");
});
