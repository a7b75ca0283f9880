// The NATS users of infra/nats/nats.conf, for whatever starts a nats-server and the services
// around it (`npm start`, the tests, the benchmarks): where each user's password goes, and which
// variables give each service its own user.
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";

/** The permissions config every nats-server of the mesh runs with. */
export const NATS_CONFIG_FILE = fileURLToPath(new URL("../infra/nats/nats.conf", import.meta.url));

/** The users nats.conf defines. */
export const NATS_USERS = ["timer", "dispatcher", "admin", "callbacks", "operator"] as const;
export type NatsUser = (typeof NATS_USERS)[number];

/** A password for every user. */
export type NatsPasswords = Record<NatsUser, string>;
/** The passwords of the services' own users (the operator's is not theirs). */
export type ServicePasswords = Omit<NatsPasswords, "operator">;

/** The nats-server environment variable holding `user`'s password (NATS_TIMER_PASSWORD, ...). */
export function passwordVariable(user: NatsUser): string {
  return `NATS_${user.toUpperCase()}_PASSWORD`;
}

/**
 * Fresh random passwords for every user. Each starts with a letter: nats-server parses a
 * substituted $VAR as a config value, and one starting with a digit or "-" reads as a number.
 */
export function randomPasswords(): NatsPasswords {
  return Object.fromEntries(
    NATS_USERS.map((u) => [u, `p${randomBytes(18).toString("hex")}`]),
  ) as NatsPasswords;
}

/** The environment nats-server needs to read nats.conf: every password variable. */
export function serverPasswordEnv(passwords: NatsPasswords): Record<string, string> {
  return Object.fromEntries(NATS_USERS.map((u) => [passwordVariable(u), passwords[u]]));
}

/**
 * NATS_USER/NATS_PASSWORD of a service (its own user), and for the dispatcher also
 * CALLBACK_NATS_USER/CALLBACK_NATS_PASSWORD (the `callbacks` user tenant callbacks go out as).
 */
export function serviceNatsEnv(
  service: "timer" | "dispatcher" | "admin",
  passwords: ServicePasswords,
): Record<string, string> {
  const own = { NATS_USER: service, NATS_PASSWORD: passwords[service] };
  return service === "dispatcher"
    ? { ...own, CALLBACK_NATS_USER: "callbacks", CALLBACK_NATS_PASSWORD: passwords.callbacks }
    : own;
}
