// Standard gRPC health checking service (grpc.health.v1.Health), see
// https://github.com/grpc/grpc/blob/master/doc/health-checking.md
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import {
  Health,
  type HealthCheckRequest,
  type HealthCheckResponse,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthListResponseSchema,
} from "./gen/grpc/health/v1/health_pb.js";

export { HealthCheckResponse_ServingStatus as ServingStatus } from "./gen/grpc/health/v1/health_pb.js";

type Listener = (status: ServingStatus) => void;

/** Per-process serving status per service name ("" = the whole server), observable by Watch. */
export class HealthStatus {
  readonly #statuses = new Map<string, ServingStatus>();
  readonly #listeners = new Map<string, Set<Listener>>();
  readonly #closing = new AbortController();

  /** Creates the registry; by default the whole server ("") starts out SERVING, like grpc-go. */
  constructor(initial: Readonly<Record<string, ServingStatus>> = { "": ServingStatus.SERVING }) {
    for (const [service, status] of Object.entries(initial)) this.set(service, status);
  }

  /** Sets the status of a service ("" = whole server) and notifies watchers; SERVICE_UNKNOWN removes it. */
  set(service: string, status: ServingStatus): void {
    if (status === ServingStatus.SERVICE_UNKNOWN) {
      this.clear(service);
      return;
    }
    if (this.#statuses.get(service) === status) return;
    this.#statuses.set(service, status);
    this.#notify(service, status);
  }

  /** Forgets a service: Check then answers NOT_FOUND and watchers receive SERVICE_UNKNOWN. */
  clear(service: string): void {
    if (!this.#statuses.delete(service)) return;
    this.#notify(service, ServingStatus.SERVICE_UNKNOWN);
  }

  /**
   * Ends every Watch stream, each after the last status it was to send, and makes later Watch
   * calls answer once and end: at shutdown, after the statuses were set to NOT_SERVING, so that
   * watchers hear it and the server can close (an open Watch stream would hold it open forever).
   */
  close(): void {
    this.#closing.abort();
  }

  /** Aborted by close(). */
  get closed(): AbortSignal {
    return this.#closing.signal;
  }

  /** Returns the status of a service, or undefined when it was never set (or cleared). */
  get(service: string): ServingStatus | undefined {
    return this.#statuses.get(service);
  }

  /** Returns a snapshot of all known services and their statuses. */
  entries(): Array<[service: string, status: ServingStatus]> {
    return [...this.#statuses.entries()];
  }

  /** Calls listener on every change of the service's status (SERVICE_UNKNOWN on clear); returns an unsubscribe function. */
  subscribe(service: string, listener: Listener): () => void {
    let set = this.#listeners.get(service);
    if (!set) {
      set = new Set();
      this.#listeners.set(service, set);
    }
    set.add(listener);
    return () => {
      const current = this.#listeners.get(service);
      if (!current) return;
      current.delete(listener);
      if (current.size === 0) this.#listeners.delete(service);
    };
  }

  #notify(service: string, status: ServingStatus): void {
    const set = this.#listeners.get(service);
    if (!set) return;
    for (const listener of [...set]) listener(status);
  }
}

/** Registers grpc.health.v1.Health (Check, List, Watch) on the router, backed by the given HealthStatus. */
export function registerHealthService(router: ConnectRouter, health: HealthStatus): ConnectRouter {
  return router.service(Health, {
    check(req: HealthCheckRequest): HealthCheckResponse {
      const status = health.get(req.service);
      if (status === undefined) {
        throw new ConnectError(`unknown service ${JSON.stringify(req.service)}`, Code.NotFound);
      }
      return create(HealthCheckResponseSchema, { status });
    },

    list() {
      const statuses: Record<string, { status: ServingStatus }> = {};
      for (const [service, status] of health.entries()) statuses[service] = { status };
      return create(HealthListResponseSchema, { statuses });
    },

    async *watch(req: HealthCheckRequest, ctx: HandlerContext): AsyncGenerator<HealthCheckResponse> {
      const { signal } = ctx;
      const { closed } = health;
      // Only the latest status matters: a slow reader may skip intermediate states (allowed by the spec).
      let pending: ServingStatus | undefined;
      let wake: (() => void) | undefined;
      const unsubscribe = health.subscribe(req.service, (status) => {
        pending = status;
        wake?.();
      });
      const onAbort = () => wake?.();
      signal.addEventListener("abort", onAbort);
      closed.addEventListener("abort", onAbort);
      try {
        let last = health.get(req.service) ?? ServingStatus.SERVICE_UNKNOWN;
        yield create(HealthCheckResponseSchema, { status: last });
        for (;;) {
          if (pending !== undefined) {
            const status = pending;
            pending = undefined;
            if (status === last) continue;
            last = status;
            yield create(HealthCheckResponseSchema, { status });
            continue;
          }
          // Checked only once nothing is pending: the NOT_SERVING set at shutdown goes out first.
          if (signal.aborted || closed.aborted) return;
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
          wake = undefined;
        }
      } finally {
        unsubscribe();
        signal.removeEventListener("abort", onAbort);
        closed.removeEventListener("abort", onAbort);
      }
    },
  });
}
