// Every service's main reads its settings the same way: a ConfigError (a setting missing or
// malformed, named in its message) stops the start as "configuration: <what>"; any other error
// is a bug in the loader and goes on as it is.
import { ConfigError } from "./env.js";

/** Runs a service's config loader, turning a ConfigError into "configuration: …" (with its cause). */
export function loadServiceConfig<T>(load: () => T): T {
  try {
    return load();
  } catch (err) {
    if (err instanceof ConfigError) throw new Error(`configuration: ${err.message}`, { cause: err });
    throw err;
  }
}
