// Bearer-token authentication and authorization for every gRPC port.
//
// Tokens are configured as JSON (AUTH_TOKENS_FILE, or AUTH_TOKENS inline):
//   [{"name":"ci-billing","sha256":"<hex sha256 of the token>","groups":["billing","orders-*"]},
//    {"name":"ops","sha256":"<hex>","admin":true}]
// Only the SHA-256 of a token is ever stored; a presented token is hashed and compared with
// timingSafeEqual against every entry. The file is reloaded when it changes (its mtime, size or
// inode, polled) and on SIGHUP; a file that no longer parses keeps the previous tokens.
//
// Rules: health and reflection are open; AdminService and DispatcherService (and anything not
// listed) need an admin token, except the AdminService methods in SCOPED_METHODS; TimerService,
// ScheduleService and those methods need a valid token here, and the handlers check the
// request's group against the token's groups (authorizeGroup). A service with no tokens
// refuses to start unless AUTH_DISABLED=true says so explicitly; then every call runs as
// "anonymous" with every right, and the service says so loudly at every start.
import { createHash, timingSafeEqual } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import {
  Code,
  ConnectError,
  createContextKey,
  type HandlerContext,
  type Interceptor,
} from "@connectrpc/connect";
import { MISSING_TOKENS_MESSAGE } from "./env.js";
import type { Logger } from "./logger.js";

/** Who is calling, as their token says. */
export interface Principal {
  /** The token's name: what audit events and logs show (never the token). */
  name: string;
  admin: boolean;
  /** Group patterns: exact names, prefixes ending in "*", or "*" for every group. */
  groups: string[];
}

/** A configured token: its principal and the SHA-256 of the secret. */
export interface TokenEntry extends Principal {
  sha256: Buffer;
}

/** Where tokens come from (see env.ts), or `disabled`: no tokens, every caller an admin. */
export interface AuthSettings {
  tokensFile: string | undefined;
  tokensJson: string | undefined;
  disabled: boolean;
  /** How often the token file's mtime is checked. */
  reloadMs: number;
}

/** Raised for a token configuration that cannot be used; the message names the entry. */
export class AuthConfigError extends Error {
  override name = "AuthConfigError";
}

/** The principal of every call when authentication is disabled. */
export const ANONYMOUS: Principal = Object.freeze({ name: "anonymous", admin: true, groups: ["*"] });

/** Services anyone may call without a token (and that answer before a service is ready: service-runtime.ts). */
export const OPEN_SERVICES: ReadonlySet<string> = new Set([
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
]);

/** Services any valid token may call; their handlers check the group. Everything else is admin only. */
const SCOPED_SERVICES = new Set(["timer.v1.TimerService", "timer.v1.ScheduleService"]);

/**
 * Methods of admin-only services that a group token may call too: their handlers act only
 * inside the token's groups (authorizeGroup), and refuse what spans groups unless admin.
 * WhoAmI only tells the caller about its own token, so any token may ask.
 */
const SCOPED_METHODS = new Set([
  "admin.v1.AdminService/StartBulkOperation",
  "admin.v1.AdminService/GetOperation",
  "admin.v1.AdminService/ListOperations",
  "admin.v1.AdminService/CancelOperation",
  "admin.v1.AdminService/ForecastLoad",
  "admin.v1.AdminService/WhoAmI",
]);

/** The caller of the current RPC, set by authInterceptor. */
export const principalKey = createContextKey<Principal | undefined>(undefined, {
  description: "authenticated caller",
});

/** Hex SHA-256 of a token: what the token file stores. */
export function hashToken(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

/** Parses and validates token JSON; `source` names it in error messages. */
export function parseTokens(text: string, source: string): TokenEntry[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new AuthConfigError(`${source}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
  if (!Array.isArray(raw)) throw new AuthConfigError(`${source}: must be a JSON array of tokens`);
  const names = new Set<string>();
  const hashes = new Set<string>();
  return raw.map((item: unknown, i): TokenEntry => {
    const where = `${source}: token ${i + 1}`;
    if (typeof item !== "object" || item === null || Array.isArray(item))
      throw new AuthConfigError(`${where} must be an object`);
    const e = item as Record<string, unknown>;
    for (const key of Object.keys(e)) {
      if (!["name", "sha256", "groups", "admin"].includes(key)) {
        throw new AuthConfigError(
          `${where} has an unknown field "${key}" (allowed: name, sha256, groups, admin)`,
        );
      }
    }
    if (typeof e.name !== "string" || e.name === "") throw new AuthConfigError(`${where} needs a "name"`);
    const name = e.name;
    const named = `${source}: token "${name}"`;
    if (names.has(name)) throw new AuthConfigError(`${named} is listed twice`);
    names.add(name);
    const sha = e.sha256;
    if (typeof sha !== "string" || !/^[0-9a-fA-F]{64}$/.test(sha)) {
      throw new AuthConfigError(
        `${named}: "sha256" must be the 64 hex digits of the token's SHA-256 (not the token itself)`,
      );
    }
    if (hashes.has(sha.toLowerCase()))
      throw new AuthConfigError(`${named} has the same sha256 as another token`);
    hashes.add(sha.toLowerCase());
    if (e.admin !== undefined && typeof e.admin !== "boolean")
      throw new AuthConfigError(`${named}: "admin" must be true or false`);
    const admin = e.admin === true;
    const groups = e.groups ?? [];
    if (!Array.isArray(groups) || !groups.every((g) => typeof g === "string" && g !== "")) {
      throw new AuthConfigError(`${named}: "groups" must be an array of group names or patterns`);
    }
    for (const g of groups as string[]) {
      if (g.slice(0, -1).includes("*"))
        throw new AuthConfigError(`${named}: group pattern "${g}" may have "*" only at its end`);
    }
    if (!admin && groups.length === 0)
      throw new AuthConfigError(`${named} is not admin and names no groups: it could do nothing`);
    return { name, admin, groups: groups as string[], sha256: Buffer.from(sha, "hex") };
  });
}

/** Whether a group pattern ("billing", "orders-*", "*") covers a group. */
export function groupPatternMatches(pattern: string, groupId: string): boolean {
  if (pattern.endsWith("*")) return groupId.startsWith(pattern.slice(0, -1));
  return pattern === groupId;
}

/** Whether a principal may create and see timers of a group. */
export function mayUseGroup(p: Principal, groupId: string): boolean {
  return p.admin || p.groups.some((g) => groupPatternMatches(g, groupId));
}

/** A set of tokens, looked up by the presented secret in constant time per entry. */
export class TokenTable {
  constructor(readonly entries: readonly TokenEntry[]) {}

  /** The principal of a presented token, or undefined when it matches none. */
  lookup(token: string): Principal | undefined {
    const presented = createHash("sha256").update(token, "utf8").digest();
    let found: TokenEntry | undefined;
    // No early exit: every entry is compared, so timing says nothing about which one matched.
    for (const e of this.entries) {
      if (timingSafeEqual(presented, e.sha256) && !found) found = e;
    }
    return found && { name: found.name, admin: found.admin, groups: found.groups };
  }
}

/** Token state of one process: the current table (or none: auth off), kept fresh from its file. */
export class Authenticator {
  private poller: NodeJS.Timeout | undefined;
  private fileVersion = "";
  private reloading: Promise<void> | undefined;
  private readonly onHup = () => void this.reload("SIGHUP");

  private constructor(
    private table: TokenTable | undefined,
    private readonly settings: AuthSettings,
    private readonly log: Logger,
  ) {}

  /**
   * Loads the tokens (failing with a clear message when they are unusable or missing), starts
   * watching the file, and warns loudly when authentication is disabled.
   */
  static async start(settings: AuthSettings, log: Logger): Promise<Authenticator> {
    const configured = settings.tokensJson !== undefined || settings.tokensFile !== undefined;
    if (settings.disabled && configured)
      throw new AuthConfigError("AUTH_DISABLED=true and tokens are both set: choose one");
    if (settings.disabled) {
      log.warn(
        { auth: "disabled" },
        "AUTHENTICATION IS DISABLED (AUTH_DISABLED=true): every caller is an anonymous admin on this port and may " +
          "create, read and cancel any group's timers, purge groups and drain dispatchers. Only for a machine no one " +
          "else can reach; configure AUTH_TOKENS_FILE and unset AUTH_DISABLED everywhere else.",
      );
      return new Authenticator(undefined, settings, log);
    }
    if (settings.tokensJson !== undefined) {
      const auth = new Authenticator(
        new TokenTable(parseTokens(settings.tokensJson, "AUTH_TOKENS")),
        settings,
        log,
      );
      log.info({ tokens: auth.table!.entries.length, source: "AUTH_TOKENS" }, "authentication on");
      return auth;
    }
    if (settings.tokensFile !== undefined) {
      const file = settings.tokensFile;
      const version = await fileVersion(file).catch((err: Error) => {
        throw new AuthConfigError(`AUTH_TOKENS_FILE: cannot read ${file}: ${err.message}`, { cause: err });
      });
      const text = await readFile(file, "utf8");
      const auth = new Authenticator(new TokenTable(parseTokens(text, file)), settings, log);
      auth.fileVersion = version;
      auth.watch();
      log.info({ tokens: auth.table!.entries.length, source: file }, "authentication on");
      return auth;
    }
    throw new AuthConfigError(MISSING_TOKENS_MESSAGE);
  }

  /** Whether tokens are required. */
  get enabled(): boolean {
    return this.table !== undefined;
  }

  /** The principal for an authorization header value; throws UNAUTHENTICATED when it has none. */
  authenticate(authorization: string | null): Principal {
    if (!this.table) return ANONYMOUS;
    if (authorization === null || authorization.trim() === "") {
      throw new ConnectError(
        'missing credentials: send the header "authorization: Bearer <token>"',
        Code.Unauthenticated,
      );
    }
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization.trim());
    if (!m)
      throw new ConnectError(
        'malformed authorization header: expected "Bearer <token>"',
        Code.Unauthenticated,
      );
    const p = this.table.lookup(m[1]!);
    if (!p)
      throw new ConnectError(
        "unknown token: it matches no configured token (revoked, or a typo?)",
        Code.Unauthenticated,
      );
    return p;
  }

  /** Reads the token file again; a file that does not parse keeps the current tokens. */
  reload(why: string): Promise<void> {
    const file = this.settings.tokensFile;
    if (!file) {
      this.log.info({ why }, "no AUTH_TOKENS_FILE to reload");
      return Promise.resolve();
    }
    this.reloading ??= (async () => {
      try {
        const version = await fileVersion(file);
        const entries = parseTokens(await readFile(file, "utf8"), file);
        this.table = new TokenTable(entries);
        this.fileVersion = version;
        this.log.info({ why, tokens: entries.length, source: file }, "reloaded tokens");
      } catch (err) {
        this.log.error(
          { why, source: file, error: (err as Error).message },
          "could not reload tokens; keeping the previous ones",
        );
      }
    })().finally(() => (this.reloading = undefined));
    return this.reloading;
  }

  /** Stops watching the token file. */
  stop(): void {
    clearInterval(this.poller);
    process.off("SIGHUP", this.onHup);
  }

  private watch(): void {
    process.on("SIGHUP", this.onHup);
    this.poller = setInterval(() => {
      void fileVersion(this.settings.tokensFile!).then(
        async (v) => {
          if (v === this.fileVersion) return;
          this.fileVersion = v; // a bad file is reported once, not at every poll
          await this.reload("file changed");
        },
        (err: Error) => {
          const v = `missing:${err.message}`;
          if (v === this.fileVersion) return;
          this.fileVersion = v;
          this.log.error(
            { source: this.settings.tokensFile, error: err.message },
            "token file unreadable; keeping the previous tokens",
          );
        },
      );
    }, this.settings.reloadMs);
    this.poller.unref();
  }
}

async function fileVersion(path: string): Promise<string> {
  const s = await stat(path);
  return `${s.ino}:${s.size}:${s.mtimeMs}`;
}

/**
 * Authenticates every call but health and reflection, and lets only admin tokens reach
 * services other than TimerService. The caller is put in the context for the handlers.
 */
export function authInterceptor(auth: Authenticator, log: Logger): Interceptor {
  return (next) => async (req) => {
    const service = req.service.typeName;
    if (OPEN_SERVICES.has(service)) return next(req);
    const rpc = `${service}/${req.method.name}`;
    let principal: Principal;
    try {
      principal = auth.authenticate(req.header.get("authorization"));
    } catch (err) {
      log.warn({ rpc, reason: (err as ConnectError).rawMessage }, "unauthenticated call refused");
      throw err;
    }
    if (!principal.admin && !SCOPED_SERVICES.has(service) && !SCOPED_METHODS.has(rpc)) {
      log.warn({ rpc, token: principal.name }, "call refused: admin token required");
      throw new ConnectError(
        `token "${principal.name}" may not call ${service}: it needs an admin token`,
        Code.PermissionDenied,
      );
    }
    req.contextValues.set(principalKey, principal);
    return next(req);
  };
}

/** The authenticated caller of a handler's RPC (UNAUTHENTICATED when none was established). */
export function callerOf(ctx: HandlerContext): Principal {
  const p = ctx.values.get(principalKey);
  if (!p) throw new ConnectError("missing credentials", Code.Unauthenticated);
  return p;
}

/** Throws PERMISSION_DENIED unless the caller's token covers the group. */
export function authorizeGroup(ctx: HandlerContext, groupId: string): Principal {
  const p = callerOf(ctx);
  if (!mayUseGroup(p, groupId)) {
    throw new ConnectError(`token "${p.name}" may not use group "${groupId}"`, Code.PermissionDenied);
  }
  return p;
}
