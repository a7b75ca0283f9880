// The callback egress policy (pure) and the dispatcher's resolve-and-pin delivery, with a
// resolver stub: private, link-local and public addresses are only ever handed to the policy or
// returned by the stub, never connected to; the receivers are on 127.0.0.1.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import type { NatsConnection } from "@nats-io/transport-node";
import type { NatsLink } from "../../services/shared/src/nats.js";
import ipaddr from "ipaddr.js";
import { ConfigError } from "../../services/shared/src/env.js";
import {
  EgressRefused,
  cachingResolver,
  loadEgressPolicy,
  parseCallbackHost,
  parseGrpcTarget,
  type EgressPolicy,
  type Resolver,
  type HostAddress,
} from "../../services/shared/src/egress.js";
import { TenantSubjects } from "../../services/shared/src/tenant-subjects.js";
import { CallbackDeliverer, type Delivery } from "../../services/dispatcher/src/delivery.js";
import { CallbackSchema, type Callback } from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { loadTimerConfig } from "../../services/timer/src/config.js";
import { loadDispatcherConfig } from "../../services/dispatcher/src/config.js";
import { startGrpcReceiver, startHttpReceiver } from "../support/receivers.js";
import { RESERVED_SUBJECT_EXAMPLES } from "../support/reserved-subjects.js";

const strict = loadEgressPolicy({});
const LOOPBACK = "127.0.0.0/8,::1/128";

/** The refusal reason of a host as written in a URL or target, with no DNS (create-time check). */
function staticRefusal(policy: EgressPolicy, host: string): string | undefined {
  try {
    policy.checkStatic(parseCallbackHost(host));
    return undefined;
  } catch (err) {
    if (err instanceof EgressRefused) return err.message;
    throw err;
  }
}

function urlHost(url: string): string {
  return new URL(url).hostname;
}

describe("egress policy: addresses", () => {
  const refused: [string, string][] = [
    ["127.0.0.1", "loopback"],
    ["127.255.0.9", "loopback"],
    ["169.254.169.254", "link-local"],
    ["10.1.2.3", "private"],
    ["172.16.0.1", "private"],
    ["172.31.255.254", "private"],
    ["192.168.1.1", "private"],
    ["100.64.0.1", "carrier-grade NAT"],
    ["[fc00::1]", "unique local"],
    ["[fd12:3456::1]", "unique local"],
    ["[fec0::1]", "site-local"],
    ["[fe80::1]", "link-local"],
    ["[::1]", "loopback"],
    ["0.0.0.0", "unspecified"],
    ["[::]", "unspecified"],
    ["224.0.0.1", "multicast"],
    ["[ff02::1]", "multicast"],
    ["255.255.255.255", "broadcast"],
    ["198.18.0.1", "reserved"],
    ["192.0.2.1", "reserved"],
    ["[::ffff:127.0.0.1]", "loopback"],
    ["[::ffff:7f00:1]", "loopback"],
    ["[::ffff:169.254.169.254]", "link-local"],
    ["[::127.0.0.1]", "reserved"],
    ["[64:ff9b::a9fe:a9fe]", "NAT64"],
    ["[2002:7f00:1::]", "6to4"],
    ["[2001:db8::1]", "reserved"],
  ];
  for (const [host, what] of refused) {
    test(`${host} is refused (${what})`, () => {
      const message = staticRefusal(strict, host) ?? "allowed";
      assert.ok(
        message.includes(
          ` (${what}), which callbacks may not reach; an operator can allow it with CALLBACK_ALLOWED_NETWORKS`,
        ),
        message,
      );
    });
  }

  test("disguised IPv4 spellings are read as the address they are, in URLs and in gRPC targets", () => {
    for (const url of [
      "http://2130706433/",
      "http://0177.0.0.1/",
      "http://0x7f000001/",
      "http://0x7f.1/",
      "http://127.1/",
      "http://0251.0376.0251.0376/",
      "http://0/",
    ]) {
      assert.match(staticRefusal(strict, urlHost(url)) ?? "allowed", /loopback|link-local|unspecified/, url);
    }
    for (const host of ["2130706433", "0177.0.0.1", "0x7f000001", "0x7f.1", "127.1", "0xa9.0xfe.0xa9.0xfe"]) {
      const parsed = parseCallbackHost(host);
      assert.equal(parsed.kind, "address", host);
      assert.match(staticRefusal(strict, host) ?? "allowed", /loopback|link-local/, host);
    }
    assert.deepEqual(parseCallbackHost("0x7f.1"), { kind: "address", address: ipaddr.parse("127.0.0.1") });
  });

  test("the names that are always loopback are refused without DNS, with or without a trailing dot", () => {
    for (const host of ["localhost", "localhost.", "LOCALHOST", "x.localhost", "a.b.localhost."]) {
      assert.match(
        staticRefusal(strict, host) ?? "allowed",
        /resolves to a loopback address, which callbacks may not reach/,
        host,
      );
    }
    // Any other name passes create; it is checked on its addresses at delivery.
    assert.equal(staticRefusal(strict, "receiver.example.com"), undefined);
    assert.equal(staticRefusal(strict, "localhost.example.com"), undefined);
  });

  test("public unicast addresses are allowed", () => {
    for (const host of ["93.184.216.34", "[2606:2800::1]", "8.8.8.8", "[::ffff:93.184.216.34]"]) {
      assert.equal(staticRefusal(strict, host), undefined, host);
    }
  });
});

describe("egress policy: allow-lists open exactly what they name", () => {
  test("CALLBACK_ALLOWED_NETWORKS opens its CIDRs and nothing next to them", () => {
    const p = loadEgressPolicy({ CALLBACK_ALLOWED_NETWORKS: " 10.1.0.0/16 , fd00:1::/32,127.0.0.1/32" });
    assert.equal(staticRefusal(p, "10.1.2.3"), undefined);
    assert.match(staticRefusal(p, "10.2.0.1") ?? "allowed", /private/);
    assert.equal(staticRefusal(p, "[fd00:1::5]"), undefined);
    assert.match(staticRefusal(p, "[fd00:2::5]") ?? "allowed", /unique local/);
    assert.equal(staticRefusal(p, "127.0.0.1"), undefined);
    assert.equal(
      staticRefusal(p, "[::ffff:127.0.0.1]"),
      undefined,
      "IPv4-mapped is judged as the IPv4 address",
    );
    assert.match(staticRefusal(p, "127.0.0.2") ?? "allowed", /loopback/);
    assert.match(
      staticRefusal(p, "[::1]") ?? "allowed",
      /loopback/,
      "an IPv4 loopback network does not open ::1",
    );
    assert.match(staticRefusal(p, "169.254.169.254") ?? "allowed", /link-local/);
    // localhost is allowed at create once either loopback address is.
    assert.equal(staticRefusal(p, "localhost"), undefined);
  });

  test("an IPv4-mapped CIDR opens the IPv4 network it names", () => {
    const p = loadEgressPolicy({ CALLBACK_ALLOWED_NETWORKS: "::ffff:10.0.0.0/104" });
    assert.equal(staticRefusal(p, "10.9.9.9"), undefined);
    assert.match(staticRefusal(p, "11.0.0.1") ?? "refused", /refused/);
  });

  test("CALLBACK_ALLOWED_HOSTS matches exact names and *.suffix, case- and trailing-dot-insensitively", () => {
    const p = loadEgressPolicy({ CALLBACK_ALLOWED_HOSTS: "receiver.internal, *.svc.cluster.local" });
    assert.equal(p.isHostAllowed("receiver.internal"), true);
    assert.equal(p.isHostAllowed("RECEIVER.internal."), true);
    assert.equal(p.isHostAllowed("other.internal"), false);
    assert.equal(p.isHostAllowed("x.receiver.internal"), false);
    assert.equal(p.isHostAllowed("hook.team.svc.cluster.local"), true);
    assert.equal(p.isHostAllowed("svc.cluster.local"), false);
    assert.equal(p.isHostAllowed("evilsvc.cluster.local"), false);
    assert.equal(p.isHostAllowed("svc.cluster.local.evil.com"), false);
  });

  test("bad entries are a ConfigError naming the variable and the entry", () => {
    const bad: Record<string, string>[] = [
      { CALLBACK_ALLOWED_NETWORKS: "10.0.0.0/33" },
      { CALLBACK_ALLOWED_NETWORKS: "10.0.0.0" },
      { CALLBACK_ALLOWED_NETWORKS: "10.0.0.0/8,banana" },
      { CALLBACK_ALLOWED_HOSTS: "10.0.0.5" },
      { CALLBACK_ALLOWED_HOSTS: "a.*.example" },
      { CALLBACK_ALLOWED_HOSTS: "*" },
      { CALLBACK_ALLOWED_HOSTS: "bad host" },
    ];
    for (const env of bad) {
      const [name, value] = Object.entries(env)[0]!;
      const entry = value.split(",").at(-1)!;
      assert.throws(
        () => loadEgressPolicy(env),
        (e: Error) =>
          e instanceof ConfigError && e.message.includes(name) && e.message.includes(`"${entry}"`),
        `${name}=${value}`,
      );
    }
  });

  test("the timer service and the dispatcher refuse to start on a bad entry", () => {
    for (const load of [loadTimerConfig, loadDispatcherConfig]) {
      assert.throws(
        () => load({ AUTH_DISABLED: "true", CALLBACK_ALLOWED_NETWORKS: "10.0.0.0/8,nope" }),
        /CALLBACK_ALLOWED_NETWORKS: "nope"/,
      );
      assert.throws(
        () => load({ AUTH_DISABLED: "true", CALLBACK_ALLOWED_HOSTS: "1.2.3.4" }),
        /CALLBACK_ALLOWED_HOSTS: "1\.2\.3\.4"/,
      );
      assert.throws(
        () => load({ AUTH_DISABLED: "true", CALLBACK_NATS_SUBJECT_PREFIX: "timers." }),
        /CALLBACK_NATS_SUBJECT_PREFIX/,
      );
    }
    assert.equal(
      loadTimerConfig({
        AUTH_DISABLED: "true",
        CALLBACK_ALLOWED_NETWORKS: "10.0.0.0/8",
      }).limits.egress.refusalOf(ipaddr.parse("10.1.1.1")),
      undefined,
    );
    assert.equal(
      loadDispatcherConfig({
        AUTH_DISABLED: "true",
        CALLBACK_ALLOWED_HOSTS: "a.example",
      }).egress.isHostAllowed("a.example"),
      true,
    );
  });

  test("the start log line says what is open", () => {
    assert.match(strict.describe(), /public unicast addresses only/);
    assert.match(
      loadEgressPolicy({ CALLBACK_ALLOWED_NETWORKS: LOOPBACK, CALLBACK_ALLOWED_HOSTS: "*.svc" }).describe(),
      /127\.0\.0\.0\/8.*::1\/128.*\*\.svc/,
    );
  });

  test("gRPC targets are split into host and port", () => {
    assert.deepEqual(parseGrpcTarget("receiver.example:9090"), { host: "receiver.example", port: 9090 });
    assert.deepEqual(parseGrpcTarget("[::1]:80"), { host: "[::1]", port: 80 });
    for (const t of ["receiver", "dns:///x:80", "unix:/tmp/s", "x:0", "x:70000", "a b:80"])
      assert.equal(parseGrpcTarget(t), undefined, t);
  });
});

/** A resolver stub answering from a table, counting calls. */
function stubResolver(table: Record<string, string[] | string[][]>): Resolver & { calls: string[] } {
  const calls: string[] = [];
  const answers = new Map(Object.entries(table).map(([k, v]) => [k, [...v]]));
  const fn = async (name: string): Promise<HostAddress[]> => {
    calls.push(name);
    const a = answers.get(name);
    if (!a) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${name}`), { code: "ENOTFOUND" });
    // A list of lists answers differently on each call (a rebinding name); a flat list always the same.
    const current = Array.isArray(a[0])
      ? a.length > 1
        ? (a.shift() as string[])
        : (a[0] as string[])
      : (a as string[]);
    return current.map((address) => ({ address, family: address.includes(":") ? 6 : 4 }));
  };
  return Object.assign(fn, { calls });
}

describe("egress policy: names are checked on every address they resolve to", () => {
  test("a name resolving to a private address, or to a public and a link-local one, is refused", async () => {
    const resolve = stubResolver({
      "internal.example": ["10.0.0.5"],
      "mixed.example": ["93.184.216.34", "169.254.169.254"],
    });
    await assert.rejects(
      strict.vet(parseCallbackHost("internal.example"), resolve),
      (e: Error) =>
        e instanceof EgressRefused &&
        /callback host internal\.example resolves to 10\.0\.0\.5, which is not allowed \(private\)/.test(
          e.message,
        ),
    );
    await assert.rejects(
      strict.vet(parseCallbackHost("mixed.example"), resolve),
      (e: Error) =>
        e instanceof EgressRefused &&
        /169\.254\.169\.254, which is not allowed \(link-local\)/.test(e.message),
    );
  });

  test("a public name passes with the addresses to connect to, in the resolver's order", async () => {
    const resolve = stubResolver({
      "public.example": ["2606:2800::1", "93.184.216.34", "::ffff:93.184.216.35"],
    });
    assert.deepEqual(await strict.vet(parseCallbackHost("public.example"), resolve), [
      { address: "2606:2800::1", family: 6 },
      { address: "93.184.216.34", family: 4 },
      { address: "93.184.216.35", family: 4 },
    ]);
  });

  test("a name in CALLBACK_ALLOWED_HOSTS may resolve to any address; its neighbours may not", async () => {
    const p = loadEgressPolicy({ CALLBACK_ALLOWED_HOSTS: "*.svc.cluster.local" });
    const resolve = stubResolver({
      "hook.team.svc.cluster.local": ["10.96.0.12"],
      "hook.team.svc.cluster.local.evil.example": ["10.96.0.12"],
    });
    assert.deepEqual(await p.vet(parseCallbackHost("hook.team.svc.cluster.local"), resolve), [
      { address: "10.96.0.12", family: 4 },
    ]);
    await assert.rejects(
      p.vet(parseCallbackHost("hook.team.svc.cluster.local.evil.example"), resolve),
      EgressRefused,
    );
  });

  test("the resolution cache shares an answer within its TTL and never keeps a failure", async () => {
    let calls = 0;
    let fail = true;
    const inner: Resolver = async (name) => {
      calls++;
      if (fail) throw new Error(`ENOTFOUND ${name}`);
      return [{ address: "93.184.216.34", family: 4 }];
    };
    const cached = cachingResolver(inner, 60_000);
    await assert.rejects(cached("a.example"));
    fail = false;
    assert.deepEqual(await cached("a.example"), [{ address: "93.184.216.34", family: 4 }]);
    await cached("a.example");
    assert.equal(calls, 2, "the failure was retried, the success shared");
    const uncached = cachingResolver(inner, 0);
    await uncached("b.example");
    await uncached("b.example");
    assert.equal(calls, 4);
  });

  test("a literal address is not resolved", async () => {
    const resolve = stubResolver({});
    await assert.rejects(
      strict.vet(parseCallbackHost("10.1.2.3"), resolve),
      /callback address 10\.1\.2\.3 is not allowed \(private\)/,
    );
    assert.deepEqual(resolve.calls, []);
  });
});

// ---------------------------------------------------------------------------------------------
// CallbackDeliverer with a resolver stub and loopback receivers: the address connected to is
// the vetted one, whatever a second lookup would say.

/** A connected NATS link stand-in recording publishes; only NATS delivery touches it. */
function natsStub(): Pick<NatsLink, "ifConnected"> & { published: string[] } {
  const published: string[] = [];
  const connection = {
    publish: (subject: string) => void published.push(subject),
    flush: async () => {},
  } as unknown as NatsConnection;
  return { ifConnected: () => connection, published };
}

function deliverer(
  resolve: Resolver,
  env: Record<string, string> = { CALLBACK_ALLOWED_NETWORKS: "127.0.0.1/32" },
  nats = natsStub(),
): CallbackDeliverer {
  return new CallbackDeliverer({
    nats,
    timeoutMs: 5_000,
    maxSockets: 4,
    egress: loadEgressPolicy(env),
    tenantSubjects: new TenantSubjects(undefined),
    resolve,
  });
}

function delivery(callback: Callback, groupId = "g"): Delivery {
  return {
    groupId,
    timerId: "t1",
    fireAtMs: Date.now(),
    attempt: 1,
    payload: new Uint8Array([1, 2, 3]),
    labels: {},
    callback,
    idempotencyKey: "k",
    traceparent: "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01",
  };
}

const http = (url: string) =>
  create(CallbackSchema, { target: { case: "http", value: { url, headers: {} } } });
const grpcCb = (target: string) => create(CallbackSchema, { target: { case: "grpc", value: { target } } });
const natsCb = (subject: string) =>
  create(CallbackSchema, { target: { case: "nats", value: { subject, jetstream: false } } });

describe("delivery connects to the vetted address", () => {
  test("HTTP: a name only the stub knows is delivered to its vetted address, resolved once, even if it rebinds", async () => {
    await using rx = await startHttpReceiver();
    const port = new URL(rx.url).port;
    // ".test" never resolves in real DNS: the request can only succeed through the pinned address.
    const resolve = stubResolver({ "receiver.test": [["127.0.0.1"], ["10.0.0.5"]] });
    const d = deliverer(resolve);
    try {
      assert.deepEqual(await d.deliver(delivery(http(`http://receiver.test:${port}/hook`))), { ok: true });
      assert.deepEqual(resolve.calls, ["receiver.test"]);
      assert.equal(rx.received.length, 1);
      assert.equal(rx.received[0]!.headers.host, `receiver.test:${port}`, "the request still names the host");
      // The next lookup answers 10.0.0.5: that attempt is refused before anything is sent.
      const second = await d.deliver(delivery(http(`http://receiver.test:${port}/hook`)));
      assert.equal(second.ok, false);
      assert.deepEqual(second, {
        ok: false,
        retryable: false,
        error: `callback host receiver.test resolves to 10.0.0.5, which is not allowed (private): callbacks may reach public addresses only; an operator can allow it with CALLBACK_ALLOWED_NETWORKS or CALLBACK_ALLOWED_HOSTS`,
      });
      assert.equal(rx.received.length, 1);
    } finally {
      d.close();
    }
  });

  test("HTTP: a refusal is permanent and the same whether or not anything listens there", async () => {
    await using rx = await startHttpReceiver();
    const d = deliverer(stubResolver({}), {});
    try {
      const listening = await d.deliver(delivery(http(rx.url)));
      const closed = await d.deliver(delivery(http("http://127.0.0.1:1/hook")));
      assert.equal(listening.ok, false);
      assert.deepEqual(
        [listening, closed].map((r) =>
          r.ok ? "ok" : `${r.retryable} ${r.error.replace(/127\.0\.0\.1/, "ADDR")}`,
        ),
        Array(2).fill(
          "false callback address ADDR is not allowed (loopback): callbacks may reach public addresses only; an operator can allow it with CALLBACK_ALLOWED_NETWORKS or CALLBACK_ALLOWED_HOSTS",
        ),
      );
      assert.equal(rx.received.length, 0);
    } finally {
      d.close();
    }
  });

  test("HTTP: redirects are not followed", async () => {
    await using target = await startHttpReceiver();
    const { createServer } = await import("node:http");
    const server = createServer((_req, res) => {
      res.writeHead(307, { location: target.url }).end();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    const d = deliverer(stubResolver({}));
    try {
      assert.deepEqual(await d.deliver(delivery(http(`http://127.0.0.1:${port}/hook`))), {
        ok: false,
        retryable: false,
        error: "HTTP 307",
      });
      assert.equal(target.received.length, 0);
    } finally {
      d.close();
      server.close();
    }
  });

  test("gRPC: the channel goes to the vetted address and keeps the target as its authority", async () => {
    await using rx = await startGrpcReceiver();
    const port = rx.target.split(":")[1];
    const resolve = stubResolver({ "receiver.test": [["127.0.0.1"], ["169.254.169.254"]] });
    const d = deliverer(resolve);
    try {
      assert.deepEqual(await d.deliver(delivery(grpcCb(`receiver.test:${port}`))), { ok: true });
      assert.equal(rx.received.length, 1);
      assert.equal(rx.received[0]!.headers[":authority"], `receiver.test:${port}`);
      const second = await d.deliver(delivery(grpcCb(`receiver.test:${port}`)));
      assert.equal(second.ok, false);
      assert.match(
        second.ok ? "" : second.error,
        /resolves to 169\.254\.169\.254, which is not allowed \(link-local\)/,
      );
      assert.equal(second.ok ? true : second.retryable, false);
      assert.equal(rx.received.length, 1);
    } finally {
      d.close();
    }
  });

  test("gRPC: a disguised loopback target is refused without connecting", async () => {
    await using rx = await startGrpcReceiver();
    const port = rx.target.split(":")[1];
    const resolve = stubResolver({ localhost: ["::1", "127.0.0.1"], "localhost.": ["127.0.0.1"] });
    const d = deliverer(resolve, {});
    try {
      for (const host of [
        "127.0.0.1",
        "0x7f.1",
        "2130706433",
        "[::ffff:127.0.0.1]",
        "localhost",
        "LocalHost.",
      ]) {
        const r = await d.deliver(delivery(grpcCb(`${host}:${port}`)));
        assert.equal(r.ok ? "ok" : r.retryable, false, host);
      }
      assert.equal(rx.received.length, 0);
      assert.deepEqual(
        resolve.calls,
        ["localhost", "localhost."],
        "names are resolved and their addresses checked",
      );
    } finally {
      d.close();
    }
  });

  test("a name in CALLBACK_ALLOWED_HOSTS is delivered to whatever it resolves to; the same address under another name is refused", async () => {
    await using rx = await startHttpReceiver();
    const port = new URL(rx.url).port;
    const resolve = stubResolver({
      "hook.team.svc.cluster.local": ["127.0.0.1"],
      "other.example": ["127.0.0.1"],
    });
    const d = deliverer(resolve, { CALLBACK_ALLOWED_HOSTS: "*.svc.cluster.local" });
    try {
      assert.deepEqual(await d.deliver(delivery(http(`http://hook.team.svc.cluster.local:${port}/hook`))), {
        ok: true,
      });
      const other = await d.deliver(delivery(http(`http://other.example:${port}/hook`)));
      assert.match(
        other.ok ? "" : other.error,
        /callback host other\.example resolves to 127\.0\.0\.1, which is not allowed \(loopback\)/,
      );
      assert.equal(rx.received.length, 1);
    } finally {
      d.close();
    }
  });

  test("a name with both families: HTTP falls back between its vetted addresses, gRPC uses its IPv4 ones", async () => {
    await using rx = await startHttpReceiver();
    await using grx = await startGrpcReceiver();
    // ::1 first (as getaddrinfo may order localhost); the receivers listen on 127.0.0.1 only.
    const resolve = stubResolver({ "dual.test": ["::1", "127.0.0.1"] });
    const d = deliverer(resolve, { CALLBACK_ALLOWED_NETWORKS: "127.0.0.1/32,::1/128" });
    try {
      assert.deepEqual(await d.deliver(delivery(http(`http://dual.test:${new URL(rx.url).port}/hook`))), {
        ok: true,
      });
      assert.deepEqual(await d.deliver(delivery(grpcCb(`dual.test:${grx.target.split(":")[1]}`))), {
        ok: true,
      });
    } finally {
      d.close();
    }
  });
});

describe("delivery re-checks NATS subjects", () => {
  test("a stored callback on a reserved subject fails for good and is never published", async () => {
    const nats = natsStub();
    const d = deliverer(stubResolver({}), {}, nats);
    for (const subject of RESERVED_SUBJECT_EXAMPLES) {
      const r = await d.deliver(delivery(natsCb(subject)));
      assert.equal(r.ok ? "ok" : r.retryable, false, subject);
      assert.match(r.ok ? "" : r.error, /is reserved for the timer mesh/, subject);
    }
    assert.deepEqual(nats.published, []);
    assert.deepEqual(await d.deliver(delivery(natsCb("orders.fired"))), { ok: true });
    assert.deepEqual(nats.published, ["orders.fired"]);
  });
});
