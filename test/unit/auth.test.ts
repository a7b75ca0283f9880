// Token parsing, lookup and group scopes (services/shared/src/auth.ts), and the security
// settings read from the environment.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { pino } from "pino";
import {
  ANONYMOUS,
  AuthConfigError,
  Authenticator,
  TokenTable,
  groupPatternMatches,
  hashToken,
  mayUseGroup,
  parseTokens,
} from "../../services/shared/src/auth.js";
import { ConfigError, loadSecurityConfig } from "../../services/shared/src/env.js";
import { waitFor } from "../support/wait.js";

const quiet = pino({ level: "silent" });

const tokensJson = (entries: object[]) => JSON.stringify(entries);

test("hashToken is the hex SHA-256 of the token", () => {
  assert.equal(hashToken("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
});

test("parseTokens reads admin and scoped tokens", () => {
  const entries = parseTokens(
    tokensJson([
      { name: "ci-billing", sha256: hashToken("b"), groups: ["billing", "orders-*"] },
      { name: "ops", sha256: hashToken("o").toUpperCase(), admin: true },
    ]),
    "test",
  );
  assert.deepEqual(
    entries.map((e) => [e.name, e.admin, e.groups]),
    [
      ["ci-billing", false, ["billing", "orders-*"]],
      ["ops", true, []],
    ],
  );
  assert.equal(entries[1]!.sha256.toString("hex"), hashToken("o"));
});

test("parseTokens refuses unusable entries with a message naming them", () => {
  const h = hashToken("x");
  const cases: [unknown, RegExp][] = [
    ["not json", /not valid JSON/],
    [{ name: "a" }, /JSON array/],
    [[{ sha256: h, admin: true }], /token 1 needs a "name"/],
    [[{ name: "a", sha256: "secret-token", admin: true }], /token "a": "sha256" must be the 64 hex digits/],
    [[{ name: "a", sha256: h }], /token "a" is not admin and names no groups/],
    [[{ name: "a", sha256: h, groups: ["bill*ing"] }], /"bill\*ing" may have "\*" only at its end/],
    [[{ name: "a", sha256: h, admin: "yes" }], /"admin" must be true or false/],
    [[{ name: "a", sha256: h, admin: true, scopes: [] }], /unknown field "scopes"/],
    [
      [
        { name: "a", sha256: h, admin: true },
        { name: "a", sha256: hashToken("y"), admin: true },
      ],
      /token "a" is listed twice/,
    ],
    [
      [
        { name: "a", sha256: h, admin: true },
        { name: "b", sha256: h, admin: true },
      ],
      /token "b" has the same sha256/,
    ],
  ];
  for (const [value, message] of cases) {
    const text = typeof value === "string" ? value : JSON.stringify(value);
    assert.throws(
      () => parseTokens(text, "tokens.json"),
      (e: Error) =>
        e instanceof AuthConfigError && message.test(e.message) && e.message.startsWith("tokens.json"),
      text,
    );
  }
});

test("group patterns: exact, trailing * prefix, and * for all; admin tokens use any group", () => {
  assert.ok(groupPatternMatches("billing", "billing"));
  assert.ok(!groupPatternMatches("billing", "billing-eu"));
  assert.ok(groupPatternMatches("orders-*", "orders-eu"));
  assert.ok(groupPatternMatches("orders-*", "orders-"));
  assert.ok(!groupPatternMatches("orders-*", "orders"));
  assert.ok(groupPatternMatches("*", "anything"));
  const billing = { name: "ci-billing", admin: false, groups: ["billing", "orders-*"] };
  assert.ok(mayUseGroup(billing, "billing"));
  assert.ok(mayUseGroup(billing, "orders-us"));
  assert.ok(!mayUseGroup(billing, "payroll"));
  assert.ok(mayUseGroup({ name: "ops", admin: true, groups: [] }, "payroll"));
});

test("TokenTable finds a token by its secret, and nothing for another", () => {
  const table = new TokenTable(
    parseTokens(
      tokensJson([
        { name: "a", sha256: hashToken("secret-a"), groups: ["g"] },
        { name: "b", sha256: hashToken("secret-b"), admin: true },
      ]),
      "t",
    ),
  );
  assert.deepEqual(table.lookup("secret-b"), { name: "b", admin: true, groups: [] });
  assert.equal(table.lookup("secret-a")?.name, "a");
  assert.equal(table.lookup("secret-c"), undefined);
  assert.equal(table.lookup(""), undefined);
});

/** A logger that keeps what it writes, to check what is said (and not said) at start. */
function recordingLogger(): { log: pino.Logger; lines: () => { level: number; msg: string }[] } {
  const chunks: string[] = [];
  const log = pino({ level: "info" }, { write: (chunk: string) => void chunks.push(chunk) });
  return { log, lines: () => chunks.map((c) => JSON.parse(c) as { level: number; msg: string }) };
}

test("Authenticator: refuses to start without tokens unless disabled explicitly, and then says so loudly", async () => {
  await assert.rejects(
    Authenticator.start(
      { tokensFile: undefined, tokensJson: undefined, disabled: false, reloadMs: 1000 },
      quiet,
    ),
    (e: Error) =>
      e instanceof AuthConfigError &&
      /AUTH_TOKENS_FILE/.test(e.message) &&
      /AUTH_DISABLED=true/.test(e.message),
  );
  await assert.rejects(
    Authenticator.start({ tokensFile: undefined, tokensJson: "[]", disabled: true, reloadMs: 1000 }, quiet),
    (e: Error) => e instanceof AuthConfigError && /AUTH_DISABLED/.test(e.message),
  );
  const { log, lines } = recordingLogger();
  const off = await Authenticator.start(
    { tokensFile: undefined, tokensJson: undefined, disabled: true, reloadMs: 1000 },
    log,
  );
  assert.equal(off.enabled, false);
  assert.equal(off.authenticate(null), ANONYMOUS);
  const warning = lines().find((l) => /AUTHENTICATION IS DISABLED/.test(l.msg));
  assert.ok(warning, "the start says authentication is disabled");
  assert.ok(warning.level >= pino.levels.values.warn!, "at warn level or above");
  assert.match(warning.msg, /anonymous admin/);
});

test("Authenticator: UNAUTHENTICATED for missing, malformed and unknown tokens", async () => {
  const on = await Authenticator.start(
    {
      tokensFile: undefined,
      tokensJson: tokensJson([{ name: "ops", sha256: hashToken("s3cret"), admin: true }]),
      disabled: false,
      reloadMs: 1000,
    },
    quiet,
  );
  assert.equal(on.authenticate("Bearer s3cret").name, "ops");
  assert.equal(on.authenticate("bearer   s3cret ").name, "ops");
  const unauthenticated = (header: string | null, message: RegExp) =>
    assert.throws(
      () => on.authenticate(header),
      (e: Error) =>
        e instanceof ConnectError && e.code === Code.Unauthenticated && message.test(e.rawMessage),
    );
  unauthenticated(null, /missing credentials/);
  unauthenticated("", /missing credentials/);
  unauthenticated("Basic b3BzOnMzY3JldA==", /malformed authorization header/);
  unauthenticated("Bearer wrong", /unknown token/);
  await assert.rejects(
    Authenticator.start(
      { tokensFile: undefined, tokensJson: "[{}]", disabled: false, reloadMs: 1000 },
      quiet,
    ),
    (e: Error) => e instanceof AuthConfigError && /^AUTH_TOKENS: token 1/.test(e.message),
  );
});

test("Authenticator reloads a changed token file, and keeps the old tokens when the new file is bad", async () => {
  const dir = await mkdtemp(join(tmpdir(), "auth-"));
  const file = join(dir, "tokens.json");
  try {
    await writeFile(file, tokensJson([{ name: "old", sha256: hashToken("old-token"), admin: true }]));
    const auth = await Authenticator.start(
      { tokensFile: file, tokensJson: undefined, disabled: false, reloadMs: 100 },
      quiet,
    );
    try {
      assert.equal(auth.authenticate("Bearer old-token").name, "old");
      await writeFile(file, tokensJson([{ name: "new", sha256: hashToken("new-token"), groups: ["g"] }]));
      await waitFor(
        () => {
          try {
            return auth.authenticate("Bearer new-token").name === "new";
          } catch {
            return false;
          }
        },
        5_000,
        "the rewritten token file to be picked up",
      );
      assert.throws(() => auth.authenticate("Bearer old-token"), /unknown token/);
      await writeFile(file, "[{ broken");
      await auth.reload("test"); // as SIGHUP does
      assert.equal(auth.authenticate("Bearer new-token").name, "new", "a bad file keeps the previous tokens");
    } finally {
      auth.stop();
    }
    await assert.rejects(
      Authenticator.start(
        { tokensFile: join(dir, "missing.json"), tokensJson: undefined, disabled: false, reloadMs: 100 },
        quiet,
      ),
      /AUTH_TOKENS_FILE: cannot read .*missing\.json/,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("security settings from the environment", () => {
  assert.deepEqual(loadSecurityConfig({ AUTH_DISABLED: "true" }), {
    authTokensFile: undefined,
    authTokens: undefined,
    authDisabled: true,
    authReloadMs: 5000,
    tls: undefined,
  });
  assert.equal(loadSecurityConfig({ AUTH_TOKENS: "[]" }).authDisabled, false);
  assert.equal(loadSecurityConfig({ AUTH_TOKENS: "[]", AUTH_DISABLED: "false" }).authDisabled, false);
  const s = loadSecurityConfig({
    AUTH_TOKENS_FILE: "/etc/t.json",
    AUTH_RELOAD_INTERVAL: "2s",
    TLS_CERT_FILE: "c.pem",
    TLS_KEY_FILE: "k.pem",
    TLS_CLIENT_CA_FILE: "ca.pem",
  });
  assert.equal(s.authTokensFile, "/etc/t.json");
  assert.equal(s.authReloadMs, 2000);
  assert.deepEqual(s.tls, { certFile: "c.pem", keyFile: "k.pem", clientCaFile: "ca.pem" });
  for (const [env, name] of [
    [{ AUTH_TOKENS_FILE: "a", AUTH_TOKENS: "[]" }, /AUTH_TOKENS_FILE or AUTH_TOKENS, not both/],
    [{ AUTH_DISABLED: "true", TLS_CERT_FILE: "c.pem" }, /TLS_CERT_FILE and TLS_KEY_FILE/],
    [{ AUTH_DISABLED: "true", TLS_CLIENT_CA_FILE: "ca.pem" }, /TLS_CLIENT_CA_FILE/],
    [{ AUTH_DISABLED: "true", AUTH_RELOAD_INTERVAL: "often" }, /AUTH_RELOAD_INTERVAL/],
    [{ AUTH_DISABLED: "yes" }, /AUTH_DISABLED must be true or false/],
    // Ambiguous: which one did the operator mean?
    [
      { AUTH_DISABLED: "true", AUTH_TOKENS_FILE: "/etc/t.json" },
      /AUTH_DISABLED=true and AUTH_TOKENS_FILE are both set/,
    ],
    [{ AUTH_DISABLED: "true", AUTH_TOKENS: "[]" }, /AUTH_DISABLED=true and AUTH_TOKENS are both set/],
  ] as const) {
    assert.throws(
      () => loadSecurityConfig(env),
      (e: Error) => e instanceof ConfigError && name.test(e.message),
    );
  }
});

test("no token configuration is refused, with how to configure tokens or disable authentication", () => {
  for (const env of [
    {},
    { AUTH_DISABLED: "false" },
    { AUTH_DISABLED: "" },
    { AUTH_TOKENS: "", AUTH_TOKENS_FILE: "" },
  ]) {
    assert.throws(
      () => loadSecurityConfig(env),
      (e: Error) =>
        e instanceof ConfigError &&
        /AUTH_TOKENS_FILE/.test(e.message) &&
        /"sha256"/.test(e.message) &&
        /sha256sum/.test(e.message) &&
        /createHash\("sha256"\)/.test(e.message) &&
        /AUTH_DISABLED=true/.test(e.message),
      JSON.stringify(env),
    );
  }
});
