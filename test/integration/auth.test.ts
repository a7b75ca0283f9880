// Tokens from a file that operators rotate (polled and on SIGHUP), and TLS / mTLS on the gRPC
// ports, against real service processes; calls made with `buf curl` as an operator would.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hashToken } from "../../services/shared/src/auth.js";
import { bufCurl, bufCurlOk } from "../support/buf-curl.js";
import { makeTestCertificates, type TestCertificates } from "../support/certificates.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startService, type ServiceProcess } from "../support/service-process.js";
import { freePort, waitFor } from "../support/wait.js";

const tokens = (entries: { name: string; token: string; groups?: string[]; admin?: boolean }[]) =>
  JSON.stringify(entries.map(({ token, ...e }) => ({ ...e, sha256: hashToken(token) })));

describe("a token file rotated while the services run", () => {
  let dir: string;
  let file: string;
  let mesh: TestMesh;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "tokens-"));
    file = join(dir, "tokens.json");
    await writeFile(file, tokens([{ name: "ci-old", token: "old-secret", groups: ["billing"] }]));
    mesh = await startMesh({
      dispatchers: 0,
      env: { AUTH_TOKENS_FILE: file, AUTH_RELOAD_INTERVAL: "200ms" },
    });
  });
  after(async () => {
    await mesh?.[Symbol.asyncDispose]();
    await rm(dir, { recursive: true, force: true });
  });

  const listBilling = (token: string) =>
    bufCurl(mesh.timer.grpcPort, "timer.v1.TimerService/ListTimers", { groupId: "billing" }, token);

  test("a rewritten file is picked up: the old token is refused, the new one accepted; a broken file keeps the tokens", async () => {
    assert.equal((await listBilling("old-secret")).exitCode, 0);
    await writeFile(file, tokens([{ name: "ci-new", token: "new-secret", groups: ["billing"] }]));
    await waitFor(
      async () => (await listBilling("old-secret")).code === "unauthenticated",
      10_000,
      "the old token to be refused",
    );
    assert.equal((await listBilling("new-secret")).exitCode, 0, "the new token is accepted");
    const denied = await bufCurl(
      mesh.timer.grpcPort,
      "timer.v1.TimerService/ListTimers",
      { groupId: "payroll" },
      "new-secret",
    );
    assert.equal(denied.code, "permission_denied");
    assert.equal(denied.message, 'token "ci-new" may not use group "payroll"');

    await writeFile(file, '[{"name": "half-written"');
    await waitFor(
      () => /could not reload tokens; keeping the previous ones/.test(mesh.timer.output()),
      10_000,
      "the broken file to be reported",
    );
    assert.equal((await listBilling("new-secret")).exitCode, 0, "the previous tokens stay in force");
  });

  test("SIGHUP reloads the file at once (the admin here polls only hourly)", async () => {
    await writeFile(file, tokens([{ name: "ops-1", token: "ops-secret-1", admin: true }]));
    await using admin = await startService("admin", { ...mesh.envFor("admin"), AUTH_RELOAD_INTERVAL: "1h" });
    const listGroups = (token: string) =>
      bufCurl(admin.grpcPort, "admin.v1.AdminService/ListGroups", {}, token);
    assert.equal((await listGroups("ops-secret-1")).exitCode, 0);
    await writeFile(file, tokens([{ name: "ops-2", token: "ops-secret-2", admin: true }]));
    admin.child.kill("SIGHUP");
    await waitFor(
      async () => (await listGroups("ops-secret-2")).exitCode === 0,
      10_000,
      "the new admin token to be accepted",
    );
    assert.equal((await listGroups("ops-secret-1")).code, "unauthenticated");
    assert.equal(admin.child.exitCode, null, "SIGHUP does not stop the service");
  });
});

describe("WhoAmI: any valid token asks what it is", () => {
  let mesh: TestMesh;
  let admin: ServiceProcess;
  const OPS = "whoami-ops-secret";
  const BILLING = "whoami-billing-secret";
  // An admin token that happens to be named like the caller of a service without authentication.
  const NAMED_ANONYMOUS = "whoami-anonymous-secret";

  before(async () => {
    const authTokens = tokens([
      { name: "ops", token: OPS, admin: true },
      { name: "ci-billing", token: BILLING, groups: ["billing", "orders-*"] },
      { name: "anonymous", token: NAMED_ANONYMOUS, admin: true },
    ]);
    mesh = await startMesh({ dispatchers: 0, env: { AUTH_TOKENS: authTokens } });
    admin = await startService("admin", mesh.envFor("admin"));
  });
  after(async () => {
    await admin?.[Symbol.asyncDispose]();
    await mesh?.[Symbol.asyncDispose]();
  });

  const whoAmI = (token?: string) => bufCurl(admin.grpcPort, "admin.v1.AdminService/WhoAmI", {}, token);

  test("an admin token is an admin, a group token names its groups, no token or an unknown one is UNAUTHENTICATED", async () => {
    const ops = await whoAmI(OPS);
    assert.equal(ops.exitCode, 0, ops.stderr);
    assert.deepEqual(ops.json, { name: "ops", admin: true });

    const billing = await whoAmI(BILLING);
    assert.equal(billing.exitCode, 0, `a group token may call WhoAmI: ${billing.stderr}`);
    assert.deepEqual(billing.json, { name: "ci-billing", groups: ["billing", "orders-*"] });

    const named = await whoAmI(NAMED_ANONYMOUS);
    assert.deepEqual(named.json, { name: "anonymous", admin: true }, "a token's name does not turn auth off");

    assert.equal((await whoAmI()).code, "unauthenticated");
    const unknown = await whoAmI("not-a-configured-token");
    assert.equal(unknown.code, "unauthenticated");
    assert.match(unknown.message ?? "", /unknown token/);

    const { rows } = await mesh.db.pool.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM audit_events WHERE action LIKE '%/WhoAmI'",
    );
    assert.equal(rows[0]?.n, 0, "WhoAmI changes nothing: not audited");
  });
});

describe("TLS and mTLS on the gRPC ports", () => {
  let certs: TestCertificates;
  let mesh: TestMesh;
  let admin: ServiceProcess;
  const OPS = "tls-ops-secret";

  before(async () => {
    certs = await makeTestCertificates();
    const tls = {
      TLS_CERT_FILE: certs.serverCert,
      TLS_KEY_FILE: certs.serverKey,
      TLS_CLIENT_CA_FILE: certs.caCert,
    };
    const service = "tls-admin-service-secret";
    const authTokens = tokens([
      { name: "ops", token: OPS, admin: true },
      { name: "admin-service", token: service, admin: true },
    ]);
    mesh = await startMesh({ dispatchers: 1, env: { AUTH_TOKENS: authTokens }, dispatcherEnv: tls });
    // The admin serves mTLS itself and calls the (mTLS) dispatcher with its certificate and its own token.
    admin = await startService("admin", {
      ...mesh.envFor("admin"),
      ...tls,
      DISPATCHER_TLS_CA_FILE: certs.caCert,
      DISPATCHER_TOKEN: service,
    });
    await waitFor(
      async () => {
        const { rows } = await mesh.db.pool.query(
          "SELECT count(*)::int AS n FROM shard_owners WHERE owner = 'd1'",
        );
        return rows[0].n === 64;
      },
      20_000,
      "d1 to own every shard",
    );
  });
  after(async () => {
    await admin?.[Symbol.asyncDispose]();
    await mesh?.[Symbol.asyncDispose]();
    await certs?.[Symbol.asyncDispose]();
  });

  const clientCert = () => ["--cacert", certs.caCert, "--cert", certs.clientCert, "--key", certs.clientKey];

  test("the admin port speaks TLS and requires a client certificate signed by TLS_CLIENT_CA_FILE", async () => {
    const url = `https://127.0.0.1:${admin.grpcPort}`;
    const health = await bufCurlOk<{ status: string }>(
      url,
      "grpc.health.v1.Health/Check",
      {},
      undefined,
      clientCert(),
    );
    assert.equal(health.status, "SERVING");
    await waitFor(
      async () =>
        (
          await bufCurlOk<{ dispatchers?: unknown[] }>(
            url,
            "admin.v1.AdminService/ListDispatchers",
            {},
            OPS,
            clientCert(),
          )
        ).dispatchers?.length === 1,
      10_000,
      "the admin to hear the dispatcher",
    );

    const noClientCert = await bufCurl(url, "grpc.health.v1.Health/Check", {}, undefined, [
      "--cacert",
      certs.caCert,
    ]);
    assert.notEqual(noClientCert.exitCode, 0, "without a client certificate the handshake fails");
    assert.equal(noClientCert.json, undefined);
    const untrusted = await bufCurl(url, "grpc.health.v1.Health/Check", {}, undefined, [
      "--cert",
      certs.clientCert,
      "--key",
      certs.clientKey,
    ]);
    assert.notEqual(untrusted.exitCode, 0, "the server certificate is not trusted without the CA");
    const plaintext = await bufCurl(admin.grpcPort, "grpc.health.v1.Health/Check", {});
    assert.notEqual(plaintext.exitCode, 0, "plaintext HTTP/2 is refused");
  });

  test("DrainDispatcher reaches a dispatcher that requires mTLS (DISPATCHER_TLS_CA_FILE)", async () => {
    const url = `https://127.0.0.1:${admin.grpcPort}`;
    const drained = await bufCurlOk<{ releasedShards: number }>(
      url,
      "admin.v1.AdminService/DrainDispatcher",
      { dispatcherId: "d1" },
      OPS,
      clientCert(),
    );
    assert.equal(drained.releasedShards, 64);
    const { rows } = await mesh.db.pool.query(
      "SELECT count(*)::int AS n FROM shard_owners WHERE owner = 'd1'",
    );
    assert.equal(rows[0].n, 0, "d1 owns nothing after the drain");
  });
});

describe("secure by default: tokens, or authentication disabled explicitly", () => {
  let mesh: TestMesh;

  before(async () => {
    mesh = await startMesh({ dispatchers: 0, env: { AUTH_DISABLED: "true" } });
  });
  after(async () => {
    await mesh?.[Symbol.asyncDispose]();
  });

  test("a service with no token configuration and no AUTH_DISABLED refuses to start, saying how to configure either", async () => {
    for (const name of ["timer", "dispatcher", "admin"] as const) {
      // "" wins over the test default AUTH_DISABLED=true: this service has neither.
      await using service = await startService(
        name,
        { ...mesh.env, AUTH_DISABLED: "", DISPATCHER_ID: "no-auth" },
        { waitReady: false },
      );
      // Either it exits, or (the bug) it comes up serving without authentication.
      const outcome = await waitFor(
        async () =>
          service.child.exitCode !== null
            ? "exited"
            : (await fetch(`http://127.0.0.1:${service.httpPort}/readyz`).catch(() => undefined))?.ok &&
              "ready",
        60_000,
        `${name} to exit or become ready`,
        50,
      );
      assert.equal(outcome, "exited", `${name} must not start without tokens:\n${service.output()}`);
      assert.notEqual(await service.exited, 0, `${name} exits non-zero`);
      const out = service.output();
      assert.match(out, /"level":"fatal"/, `${name} says why:\n${out}`);
      assert.match(out, /AUTH_TOKENS_FILE/, name);
      assert.match(out, /AUTH_DISABLED=true/, name);
      assert.match(out, /sha256sum/, `${name} says how to hash a token`);
    }
  });

  test("a malformed or unreachable DATABASE_URL or NATS_URL is logged without its password", async () => {
    const closed = await freePort(); // nothing listens there: connection refused, on loopback
    const cases: Record<string, string>[] = [
      { DATABASE_URL: "postgres://timer:pg-s3cr3t/x@127.0.0.1:5432/timers" }, // "/" in the password: not a URL
      { DATABASE_URL: `postgres://timer:pg-s3cr3t@127.0.0.1:${closed}/timers` },
      { NATS_URL: "nats://timer:nats-s3cr3t@127.0.0.1:4222x" },
      { NATS_URL: "nats://nats-t0ken-s3cr3t@127.0.0.1:bad" },
    ];
    for (const env of cases) {
      await using service = await startService("timer", { ...mesh.env, ...env }, { waitReady: false });
      assert.notEqual(await service.exited, 0, `${JSON.stringify(env)}: the timer service does not start`);
      const out = service.output();
      assert.match(out, /failed to start/, out);
      assert.doesNotMatch(out, /s3cr3t/, `the password is not logged:\n${out}`);
    }
  });

  test("with AUTH_DISABLED=true WhoAmI answers without a token: the anonymous admin, authentication disabled", async () => {
    await using admin = await startService("admin", mesh.envFor("admin"));
    const me = await bufCurlOk(admin.grpcPort, "admin.v1.AdminService/WhoAmI", {});
    assert.deepEqual(me, { name: "anonymous", admin: true, groups: ["*"], authDisabled: true });
  });

  test("with AUTH_DISABLED=true the service starts, and says loudly that every caller is an anonymous admin", () => {
    const lines = mesh.timer
      .output()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { level: string; msg: string; auth?: string });
    const warning = lines.find((l) => /AUTHENTICATION IS DISABLED/.test(l.msg));
    assert.ok(warning, "the warning is logged at start");
    assert.ok(["warn", "error", "fatal"].includes(warning.level), `logged at level ${warning.level}`);
    assert.match(warning.msg, /anonymous admin/);
    assert.ok(
      lines.some((l) => /listening/.test(l.msg) && l.auth === "off"),
      "and the service runs with authentication off",
    );
  });
});
