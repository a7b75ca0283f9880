// Where HTTP and gRPC callbacks may connect. A tenant names the callback target, so without a
// policy the dispatchers would reach anything they can route to: cloud metadata, databases,
// admin ports. By default a callback may reach public unicast addresses only; an installation
// opens what it needs with
//
//   CALLBACK_ALLOWED_NETWORKS  comma-separated CIDRs (IPv4 and IPv6): addresses in them are allowed.
//   CALLBACK_ALLOWED_HOSTS     comma-separated host names, exact or `*.suffix`: a listed name may
//                              resolve to ANY address. That is how in-cluster receivers are opened
//                              (`*.svc.cluster.local`): the operator, not the tenant, controls what
//                              those names resolve to. Every other name must resolve ONLY to allowed
//                              addresses; one refused address refuses the name.
//
// The timer service checks literal addresses and always-loopback names at create; the dispatcher
// resolves names at delivery, checks every address, and connects only to the addresses it checked.
import dns from "node:dns";
import ipaddr from "ipaddr.js";
import { ConfigError, envOptional } from "./env.js";

type Address = ipaddr.IPv4 | ipaddr.IPv6;

/** An IP address as node's net and dns modules give and take it. */
export interface HostAddress {
  address: string;
  family: 4 | 6;
}

/** Resolves a name to all its addresses, like `dns.lookup(name, { all: true })`. */
export type Resolver = (hostname: string) => Promise<HostAddress[]>;

/** The system resolver (getaddrinfo, so /etc/hosts and the search path count, as for any client). */
export const systemResolver: Resolver = async (hostname) =>
  (await dns.promises.lookup(hostname, { all: true, verbatim: true })).map((a) => ({
    address: a.address,
    family: a.family === 6 ? 6 : 4,
  }));

/**
 * Shares one resolution of a name among the attempts of the next `ttlMs` (failures are not
 * kept). getaddrinfo runs on libuv's small thread pool, and with the policy every attempt
 * resolves its host, where a pooled keep-alive socket used to need no lookup at all. Safe
 * against rebinding: whatever answer is used is the one checked, and connected to.
 */
export function cachingResolver(resolve: Resolver, ttlMs: number, maxNames = 10_000): Resolver {
  const cache = new Map<string, { expiresMs: number; answer: Promise<HostAddress[]> }>();
  return (hostname) => {
    const now = Date.now();
    const hit = cache.get(hostname);
    if (hit && hit.expiresMs > now) return hit.answer;
    if (cache.size >= maxNames) cache.clear();
    const answer = resolve(hostname);
    cache.set(hostname, { expiresMs: now + ttlMs, answer });
    answer.catch(() => {
      if (cache.get(hostname)?.answer === answer) cache.delete(hostname);
    });
    return answer;
  };
}

/** A callback host as written, after the normalisation a URL parser or getaddrinfo applies. */
export type CallbackHost = { kind: "address"; address: Address } | { kind: "name"; name: string };

/** A callback may not go where it points; `message` is plain and safe to show the tenant. */
export class EgressRefused extends Error {
  override name = "EgressRefused";
}

const OPEN_HINT = "an operator can allow it with CALLBACK_ALLOWED_NETWORKS or CALLBACK_ALLOWED_HOSTS";

/** The allow-lists of one installation. Pure: no I/O except through an injected Resolver. */
export class EgressPolicy {
  constructor(
    readonly allowedNetworks: readonly [Address, number][],
    readonly allowedHosts: readonly string[],
  ) {}

  /** Why an address is refused (its range, e.g. "private"), or undefined when it is allowed. */
  refusalOf(address: Address): string | undefined {
    const a = unwrapMapped(address);
    if (this.allowedNetworks.some(([net, bits]) => net.kind() === a.kind() && a.match(net, bits)))
      return undefined;
    const range = rangeOf(a);
    return range === "unicast" ? undefined : range;
  }

  /** True when the name is listed in CALLBACK_ALLOWED_HOSTS (exactly, or under a `*.suffix`). */
  isHostAllowed(name: string): boolean {
    const n = canonicalName(name);
    return this.allowedHosts.some((h) => (h.startsWith("*.") ? n.endsWith(h.slice(1)) : n === h));
  }

  /**
   * The check that needs no DNS, made when a timer is created: a literal address is checked,
   * a name that is always loopback (`localhost`, `*.localhost`) is checked as 127.0.0.1 and ::1
   * (allowed if either is), any other name passes (it is checked on its addresses at delivery).
   * Throws EgressRefused.
   */
  checkStatic(host: CallbackHost): void {
    if (host.kind === "address") {
      const why = this.refusalOf(host.address);
      if (why)
        throw new EgressRefused(
          `is ${host.address.toString()} (${why}), which callbacks may not reach; ${OPEN_HINT}`,
        );
      return;
    }
    if (this.isRefusedLoopbackName(host.name)) {
      throw new EgressRefused(`resolves to a loopback address, which callbacks may not reach; ${OPEN_HINT}`);
    }
  }

  /** `localhost` and `*.localhost` (RFC 6761), unless listed or loopback is opened. */
  private isRefusedLoopbackName(name: string): boolean {
    return (
      isLoopbackName(name) &&
      !this.isHostAllowed(name) &&
      LOOPBACK_ADDRESSES.every((a) => this.refusalOf(a) !== undefined)
    );
  }

  /**
   * The addresses to connect to for a delivery, in the resolver's order: a literal address is
   * checked; a name is resolved and EVERY address it resolves to is checked (unless the name
   * itself is allowed), so a name with one public and one internal address cannot be used to
   * reach the internal one. The caller must connect to these and to nothing else (a second
   * lookup could answer differently: DNS rebinding). Throws EgressRefused; resolver errors
   * propagate.
   */
  async vet(host: CallbackHost, resolve: Resolver): Promise<HostAddress[]> {
    if (host.kind === "address") {
      const a = host.address;
      const why = this.refusalOf(a);
      if (why)
        throw new EgressRefused(
          `callback address ${a.toString()} is not allowed (${why}): callbacks may reach public addresses only; ${OPEN_HINT}`,
        );
      return [toHostAddress(a)];
    }
    const resolved = await resolve(host.name);
    if (resolved.length === 0) throw new Error(`callback host ${host.name} has no addresses`);
    const addresses = resolved.map((r) => ipaddr.parse(r.address));
    if (!this.isHostAllowed(host.name)) {
      for (const a of addresses) {
        const why = this.refusalOf(a);
        if (why) {
          throw new EgressRefused(
            `callback host ${host.name} resolves to ${a.toString()}, which is not allowed (${why}): callbacks may reach public addresses only; ${OPEN_HINT}`,
          );
        }
      }
    }
    return addresses.map(toHostAddress);
  }

  /** One line for the start log: what this installation opened beyond public unicast. */
  describe(): string {
    const nets = this.allowedNetworks.map(([a, bits]) => `${a.toString()}/${bits}`);
    if (nets.length === 0 && this.allowedHosts.length === 0)
      return "callbacks may reach public unicast addresses only";
    return `callbacks may reach public unicast addresses, and also networks [${nets.join(", ")}] and hosts [${this.allowedHosts.join(", ")}]`;
  }
}

/** Reads CALLBACK_ALLOWED_NETWORKS and CALLBACK_ALLOWED_HOSTS; a bad entry is a ConfigError naming it. */
export function loadEgressPolicy(env: Record<string, string | undefined>): EgressPolicy {
  return new EgressPolicy(
    parseList(env, "CALLBACK_ALLOWED_NETWORKS").map((e) => parseNetwork("CALLBACK_ALLOWED_NETWORKS", e)),
    parseList(env, "CALLBACK_ALLOWED_HOSTS").map((e) => parseHostPattern("CALLBACK_ALLOWED_HOSTS", e)),
  );
}

/**
 * Normalises a host as written in a callback URL or gRPC target: brackets removed, lower case,
 * and every IPv4 spelling getaddrinfo accepts (decimal `2130706433`, octal
 * `0177.0.0.1`, hex `0x7f.1`, short `127.1`) read as the address it is, by the WHATWG URL parser
 * (the one the dispatcher's HTTP client uses). Throws EgressRefused when it is not a valid host.
 */
export function parseCallbackHost(host: string): CallbackHost {
  let hostname: string;
  try {
    hostname = new URL(`http://${host.includes(":") && !host.startsWith("[") ? `[${host}]` : host}/`)
      .hostname;
  } catch (err) {
    throw new EgressRefused(`host "${host}" is not a valid host name or address`, { cause: err });
  }
  const bare = hostname.startsWith("[") ? hostname.slice(1, -1) : hostname;
  if (ipaddr.isValid(bare) && (bare.includes(":") || ipaddr.IPv4.isValidFourPartDecimal(bare))) {
    return { kind: "address", address: ipaddr.parse(bare) };
  }
  if (bare === "" || bare === ".") throw new EgressRefused(`host "${host}" is empty`);
  // Kept as written (a trailing dot means "no search domains" to the resolver); compared canonically.
  return { kind: "name", name: bare };
}

/** Splits a gRPC callback target `host:port` (IPv6 in brackets); undefined when malformed. */
export function parseGrpcTarget(target: string): { host: string; port: number } | undefined {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(target);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return undefined;
  return { host: m[1]!, port };
}

const LOOPBACK_ADDRESSES: Address[] = [ipaddr.parse("127.0.0.1"), ipaddr.parse("::1")];

/** `localhost` and `*.localhost` always mean loopback (RFC 6761), whatever DNS says. */
function isLoopbackName(name: string): boolean {
  const n = canonicalName(name);
  return n === "localhost" || n.endsWith(".localhost");
}

function canonicalName(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

/** ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket, so it is judged as a.b.c.d. */
function unwrapMapped(a: Address): Address {
  return a.kind() === "ipv6" && (a as ipaddr.IPv6).isIPv4MappedAddress()
    ? (a as ipaddr.IPv6).toIPv4Address()
    : a;
}

const IETF_RESERVED_V6: [Address, number] = ipaddr.parseCIDR("::/8");

/**
 * The special range an address is in, as a plain label, or "unicast" for an ordinary public
 * address: ipaddr.js's range() names the ranges (its lists follow the IANA special-purpose
 * registries); everything but "unicast" is refused. ipaddr.js calls IPv4-compatible addresses
 * (::a.b.c.d, deprecated) "unicast", so the IETF-reserved ::/8 around them is added.
 */
function rangeOf(a: Address): string {
  const range = a.range();
  if (range === "unicast" && a.kind() === "ipv6" && a.match(IETF_RESERVED_V6)) return "reserved";
  return RANGE_LABELS[range] ?? range;
}

const RANGE_LABELS: Record<string, string> = {
  linkLocal: "link-local",
  uniqueLocal: "unique local",
  carrierGradeNat: "carrier-grade NAT",
  rfc6052: "NAT64",
  rfc6145: "IPv4-translated",
  deprecatedSiteLocal: "site-local",
};

function toHostAddress(a: Address): HostAddress {
  const u = unwrapMapped(a);
  return { address: u.toString(), family: u.kind() === "ipv4" ? 4 : 6 };
}

function parseList(env: Record<string, string | undefined>, name: string): string[] {
  return (envOptional(env, name) ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

function parseNetwork(variable: string, entry: string): [Address, number] {
  let net: [Address, number];
  try {
    net = ipaddr.parseCIDR(entry);
  } catch (err) {
    throw new ConfigError(`${variable}: "${entry}" is not a CIDR like 10.0.0.0/8 or fd00::/8`, {
      cause: err,
    });
  }
  const [a, bits] = net;
  // ::ffff:a.b.c.d/n is stored as the IPv4 network it names, since addresses are unwrapped.
  if (a.kind() === "ipv6" && (a as ipaddr.IPv6).isIPv4MappedAddress() && bits >= 96) {
    return [(a as ipaddr.IPv6).toIPv4Address(), bits - 96];
  }
  return net;
}

const HOST_LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/;

function parseHostPattern(variable: string, entry: string): string {
  const pattern = canonicalName(entry);
  const name = pattern.startsWith("*.") ? pattern.slice(2) : pattern;
  if (ipaddr.isValid(name))
    throw new ConfigError(
      `${variable}: "${entry}" is an address; list addresses in CALLBACK_ALLOWED_NETWORKS`,
    );
  if (name === "" || !name.split(".").every((l) => HOST_LABEL.test(l))) {
    throw new ConfigError(`${variable}: "${entry}" is not a host name or *.suffix pattern`);
  }
  return pattern;
}
