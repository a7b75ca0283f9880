// Development credentials for `npm start`: one admin token, generated on the first run and
// kept under .data/ (the token in dev-admin-token, only its SHA-256 in dev-auth-tokens.json,
// which every service reads as AUTH_TOKENS_FILE), so the commands the banner prints work as
// pasted. Operators who set AUTH_TOKENS_FILE or AUTH_TOKENS themselves get theirs instead.
import { randomBytes } from "node:crypto";
import { readFile, writeFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { hashToken, parseTokens } from "../services/shared/src/auth.js";

/** What `npm start` runs the services with. */
export interface DevAuth {
  /** Variables for the services (AUTH_TOKENS_FILE), empty when the operator set their own. */
  env: Record<string, string>;
  /** The development token to print, when it is ours. */
  token: string | undefined;
  /** Where the tokens come from, for the banner. */
  source: string;
}

/** The development admin token and token file under dataDir, made on first use. */
export async function ensureDevAuth(env: NodeJS.ProcessEnv, dataDir: string): Promise<DevAuth> {
  if (env.AUTH_TOKENS_FILE) return { env: {}, token: undefined, source: `AUTH_TOKENS_FILE (${env.AUTH_TOKENS_FILE})` };
  if (env.AUTH_TOKENS) return { env: {}, token: undefined, source: "AUTH_TOKENS" };
  const tokenPath = join(dataDir, "dev-admin-token");
  const tokensFile = join(dataDir, "dev-auth-tokens.json");
  let token: string | undefined;
  try {
    const stored = (await readFile(tokenPath, "utf8")).trim();
    const entries = parseTokens(await readFile(tokensFile, "utf8"), tokensFile);
    if (entries.some((e) => e.admin && e.sha256.toString("hex") === hashToken(stored))) token = stored;
  } catch {
    // first run, or a file was removed or edited: make a new pair
  }
  let source = `${tokensFile} (development admin token in ${tokenPath})`;
  if (!token) {
    token = `tmdev_${randomBytes(24).toString("base64url")}`;
    await mkdir(dataDir, { recursive: true });
    await writeFile(tokenPath, `${token}\n`, { mode: 0o600 });
    await writeFile(tokensFile, JSON.stringify([{ name: "dev-admin", sha256: hashToken(token), admin: true }], null, 2) + "\n", { mode: 0o600 });
    source = `${tokensFile} (new development admin token in ${tokenPath})`;
  }
  return { env: { AUTH_TOKENS_FILE: tokensFile }, token, source };
}
