// What a service needs from outside that may be missing when it starts and may come and go while
// it runs: Postgres (db.ts) and NATS (nats.ts). A service opens its ports at once whatever they
// are doing; service-runtime.ts reports readiness from them, answers calls UNAVAILABLE until the
// ones a service needs have been reached, starts the work that needs them once they are there,
// and closes them last at shutdown.

/** Postgres or NATS as a service sees it. */
export interface Dependency {
  /** How calls and logs name it: "database not ready". */
  readonly name: string;
  /**
   * Resolves the first time it is usable (Postgres reached and migrated, NATS connected).
   * Rejects on a failure that retrying cannot fix (a migration's SQL error, a refused
   * password): the service then exits 1 with that message. Never settles when closed first.
   */
  readonly ready: Promise<unknown>;
  /** Whether `ready` has resolved. */
  readonly isReady: boolean;
  /** Whether it is usable right now (readiness: it may have gone away since). */
  check(): Promise<boolean>;
  /** Lets go of it, at the end of shutdown; stops any connecting still going on. */
  close(): Promise<void>;
}
