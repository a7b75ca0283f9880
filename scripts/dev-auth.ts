// Development credentials for `npm start`: one admin token for the developer, and one for the
// admin service's own calls to dispatchers (DISPATCHER_TOKEN: the admin never forwards its
// caller's token), generated on the first run and kept under .data/ (the tokens in
// dev-admin-token and dev-dispatcher-token, only their SHA-256 in dev-auth-tokens.json, which
// every service reads as AUTH_TOKENS_FILE), so the commands the banner prints work as pasted.
// Operators who set AUTH_TOKENS_FILE or AUTH_TOKENS themselves get theirs instead (and set
// DISPATCHER_TOKEN for the admin themselves).
import { randomBytes } from "node:crypto";
import { readFile, writeFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { hashToken, parseTokens } from "../services/shared/src/auth.js";

/** What `npm start` runs the services with. */
export interface DevAuth {
  /** Variables for the services (AUTH_TOKENS_FILE), empty when the operator set their own. */
  env: Record<string, string>;
  /** Variables for the admin service alone (DISPATCHER_TOKEN), empty when the operator set their own tokens. */
  adminEnv: Record<string, string>;
  /** The development token to print, when it is ours. */
  token: string | undefined;
  /** Where the tokens come from, for the banner. */
  source: string;
}

/** The development admin token and token file under dataDir, made on first use. */
export async function ensureDevAuth(env: NodeJS.ProcessEnv, dataDir: string): Promise<DevAuth> {
  if (env.AUTH_TOKENS_FILE)
    return { env: {}, adminEnv: {}, token: undefined, source: `AUTH_TOKENS_FILE (${env.AUTH_TOKENS_FILE})` };
  if (env.AUTH_TOKENS) return { env: {}, adminEnv: {}, token: undefined, source: "AUTH_TOKENS" };
  // Tokens as well would be ambiguous, and the services refuse that.
  if (env.AUTH_DISABLED?.trim().toLowerCase() === "true")
    return {
      env: {},
      adminEnv: {},
      token: undefined,
      source: "none: AUTH_DISABLED=true, every caller is an anonymous admin",
    };
  const tokenPath = join(dataDir, "dev-admin-token");
  const dispatcherTokenPath = join(dataDir, "dev-dispatcher-token");
  const tokensFile = join(dataDir, "dev-auth-tokens.json");
  let token: string | undefined;
  let dispatcherToken: string | undefined;
  try {
    const stored = (await readFile(tokenPath, "utf8")).trim();
    const storedDispatcher = (await readFile(dispatcherTokenPath, "utf8")).trim();
    const entries = parseTokens(await readFile(tokensFile, "utf8"), tokensFile);
    const isAdmin = (t: string) => entries.some((e) => e.admin && e.sha256.toString("hex") === hashToken(t));
    if (isAdmin(stored) && isAdmin(storedDispatcher)) {
      token = stored;
      dispatcherToken = storedDispatcher;
    }
  } catch {
    // first run, or a file was removed or edited: make new ones
  }
  let source = `${tokensFile} (development admin token in ${tokenPath})`;
  if (!token || !dispatcherToken) {
    token = `tmdev_${randomBytes(24).toString("base64url")}`;
    dispatcherToken = `tmdev_${randomBytes(24).toString("base64url")}`;
    const entries = [
      { name: "dev-admin", sha256: hashToken(token), admin: true },
      { name: "admin-service", sha256: hashToken(dispatcherToken), admin: true },
    ];
    await mkdir(dataDir, { recursive: true });
    await writeFile(tokenPath, `${token}\n`, { mode: 0o600 });
    await writeFile(dispatcherTokenPath, `${dispatcherToken}\n`, { mode: 0o600 });
    await writeFile(tokensFile, `${JSON.stringify(entries, null, 2)}\n`, { mode: 0o600 });
    source = `${tokensFile} (new development admin token in ${tokenPath})`;
  }
  return {
    env: { AUTH_TOKENS_FILE: tokensFile },
    adminEnv: { DISPATCHER_TOKEN_FILE: dispatcherTokenPath },
    token,
    source,
  };
}
