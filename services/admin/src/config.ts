import { loadCommonConfig, type CommonConfig } from "../../shared/src/env.js";

/** The admin service's settings, from the environment. */
export type AdminConfig = CommonConfig;

/** Reads and validates the admin service's environment. */
export function loadAdminConfig(env: Record<string, string | undefined>): AdminConfig {
  return loadCommonConfig(env, { grpc: 50053, http: 8082 });
}
