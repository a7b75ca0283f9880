// How the admin service proves itself to the dispatchers it calls (DrainDispatcher): TLS, when
// DISPATCHER_TLS_CA_FILE is set, and its own bearer token. The operator's token is never
// forwarded (mesh-control.ts); these are the admin's own.
import { readFile } from "node:fs/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../../shared/src/logger.js";
import { readPemFile } from "../../shared/src/tls-files.js";
import type { AdminConfig } from "./config.js";
import type { DispatcherTls } from "./mesh-control.js";

/** TLS for calls to dispatchers, when DISPATCHER_TLS_CA_FILE is set. */
export async function dispatcherTls(config: AdminConfig): Promise<DispatcherTls | undefined> {
  if (!config.dispatcherTlsCaFile) return undefined;
  const ca = await readPemFile("DISPATCHER_TLS_CA_FILE", config.dispatcherTlsCaFile);
  const own = config.security.tls;
  if (!own) return { ca };
  return {
    ca,
    cert: await readPemFile("TLS_CERT_FILE", own.certFile),
    key: await readPemFile("TLS_KEY_FILE", own.keyFile),
  };
}

/**
 * The admin's own token for dispatchers, read at every call from DISPATCHER_TOKEN_FILE so that a
 * rotated secret is used at once. An unreadable file fails the call, naming the variable.
 */
export function dispatcherTokenSource(config: AdminConfig, log: Logger): () => Promise<string | undefined> {
  const source = config.dispatcherToken;
  if (!source) return async () => undefined;
  if ("inline" in source) return async () => source.inline;
  return async () => {
    try {
      return (await readFile(source.file, "utf8")).trim() || undefined;
    } catch (err) {
      log.error({ err, variable: "DISPATCHER_TOKEN_FILE" }, "cannot read the admin's dispatcher token");
      // The path and the reason are in the log; the caller learns only which setting is at fault.
      throw new ConnectError(
        "DISPATCHER_TOKEN_FILE of the admin service cannot be read",
        Code.FailedPrecondition,
        undefined,
        undefined,
        err,
      );
    }
  };
}
