// Creating timers for the benchmarks, the two ways a client can: unary CreateTimer from many
// concurrent callers, and CreateTimers batches. Every create must be acknowledged as stored now
// (created: true); anything else (an error, a refused item, a replay) is counted as failed with
// the first such message kept, so a rate is never reported over creates that did not happen.
import { performance } from "node:perf_hooks";
import { create } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { CallbackSchema, type CreateTimerRequest } from "../services/shared/src/gen/timer/v1/timer_pb.js";
import { createTimers, type GrpcTimerClient, hourAhead } from "../test/support/timer-client.js";
import { summarize, type Summary } from "./stats.js";

/** How much to create: `count` creates, or as many as fit before `untilMs` (epoch ms). */
export type Amount = { count: number } | { untilMs: number };

export interface CreateRun {
  method: "unary" | "batch";
  /** Creates sent. */
  requested: number;
  /** Creates answered created: true. */
  acknowledged: number;
  /** Indexes of the creates not acknowledged. */
  failed: Set<number>;
  firstError: string | undefined;
  /** The server does not serve the method (gRPC UNIMPLEMENTED): the run stopped at once. */
  unimplemented: boolean;
  durationMs: number;
  endedAtMs: number;
  /** Latency of each call (one create, or one batch). */
  latency: Summary;
}

/**
 * The create load: the i-th create of timers `<group>-<i>`, an hour out (they never fire during a
 * run), calling back `url` over HTTP with `payload`.
 */
export function hourAheadLoad(
  group: string,
  url: string,
  payload?: Uint8Array,
): (i: number) => CreateTimerRequest {
  const callback = create(CallbackSchema, { target: { case: "http", value: { url, headers: {} } } });
  return (i) => hourAhead(group, `${group}-${i}`, { callback, ...(payload ? { payload } : {}) });
}

/** Acknowledged creates per second. */
export function createRate(run: CreateRun): number {
  return run.durationMs > 0 ? run.acknowledged / (run.durationMs / 1000) : NaN;
}

/** "12 of 20,000 not acknowledged (first: ...)" or "". */
export function failureNote(run: CreateRun): string {
  if (run.unimplemented)
    return `${run.method === "batch" ? "CreateTimers" : "CreateTimer"} is UNIMPLEMENTED on the server`;
  if (run.failed.size === 0) return "";
  return `${run.failed.size} of ${run.requested} not acknowledged (first: ${run.firstError ?? "?"})`;
}

const isUnimplemented = (err: unknown) =>
  (err as grpc.ServiceError | undefined)?.code === grpc.status.UNIMPLEMENTED;
const describe = (err: unknown) => (err instanceof Error ? err.message : String(err));

/** The shared loop: `workers` loops each taking the next `size` indexes until the amount is done. */
async function drive(
  method: CreateRun["method"],
  amount: Amount,
  workers: number,
  size: number,
  send: (from: number, n: number) => Promise<(string | undefined)[]>,
): Promise<CreateRun> {
  const lat: number[] = [];
  const failed = new Set<number>();
  let firstError: string | undefined;
  let unimplemented = false;
  let next = 0;
  let acknowledged = 0;
  const more = () =>
    !unimplemented && ("count" in amount ? next < amount.count : Date.now() < amount.untilMs);
  const start = performance.now();
  await Promise.all(
    Array.from({ length: workers }, async () => {
      while (more()) {
        const from = next;
        const n = "count" in amount ? Math.min(size, amount.count - from) : size;
        next += n;
        const s = performance.now();
        let errors: (string | undefined)[];
        try {
          errors = await send(from, n);
          lat.push(performance.now() - s);
        } catch (err) {
          if (isUnimplemented(err)) unimplemented = true;
          errors = Array.from({ length: n }, () => describe(err));
        }
        errors.forEach((e, k) => {
          if (e === undefined) acknowledged++;
          else {
            failed.add(from + k);
            firstError ??= e;
          }
        });
      }
    }),
  );
  const durationMs = performance.now() - start;
  return {
    method,
    requested: next,
    acknowledged,
    failed,
    firstError,
    unimplemented,
    durationMs,
    endedAtMs: Date.now(),
    latency: summarize(lat),
  };
}

/** Unary CreateTimer from `callers` concurrent callers, each with one call in flight, on `client`'s one channel. */
export function createUnary(
  client: GrpcTimerClient,
  callers: number,
  amount: Amount,
  build: (i: number) => CreateTimerRequest,
): Promise<CreateRun> {
  return drive("unary", amount, callers, 1, async (i) => {
    const res = await client.call("createTimer", build(i));
    return [res.created ? undefined : `timer ${res.timer?.timerId ?? "?"} was not created (a replay)`];
  });
}

/** CreateTimers batches of `batchSize`, `inFlight` batches at a time, on `client`'s one channel. */
export function createBatches(
  client: GrpcTimerClient,
  batchSize: number,
  inFlight: number,
  amount: Amount,
  build: (i: number) => CreateTimerRequest,
): Promise<CreateRun> {
  return drive("batch", amount, inFlight, batchSize, async (from, n) => {
    const results = await createTimers(
      client,
      Array.from({ length: n }, (_, k) => build(from + k)),
    );
    return results.map((r) =>
      r.error
        ? `code ${r.error.code}: ${r.error.message}`
        : r.created
          ? undefined
          : `timer ${r.timerId} was not created (a replay)`,
    );
  });
}

/**
 * Creates timers ahead of a fire run: in batches when the server has CreateTimers, else (once
 * it answered UNIMPLEMENTED) with unary calls, and says which. Keeps the slowest rate seen of
 * each method, so a fire run can predict how long its creation will take.
 */
export class Creator {
  /** Whether the server has CreateTimers; undefined until a batch was tried. */
  private batches: boolean | undefined;
  private readonly slowest: Partial<Record<CreateRun["method"], number>> = {};
  constructor(
    private readonly client: GrpcTimerClient,
    private readonly log: (m: string) => void,
    private readonly opts: { callers: number; batchSize: number } = { callers: 64, batchSize: 1_000 },
  ) {}

  /** Creates per second to plan with: the slowest seen of the method create() will use (800/s before any). */
  plannedRate(): number {
    return this.slowest[this.batches === false ? "unary" : "batch"] ?? this.slowest.unary ?? 800;
  }

  /** Learns from a run: whether batches work, and its rate for plannedRate(). */
  observe(run: CreateRun): void {
    if (run.method === "batch") {
      if (run.unimplemented) {
        if (this.batches !== false)
          this.log(
            "CreateTimers is UNIMPLEMENTED on this server: timers are created ahead with unary CreateTimer calls instead (slower)",
          );
        this.batches = false;
        return;
      }
      this.batches = true;
    }
    const r = createRate(run);
    if (run.acknowledged > 0 && Number.isFinite(r))
      this.slowest[run.method] = Math.min(this.slowest[run.method] ?? Infinity, r);
  }

  async create(count: number, build: (i: number) => CreateTimerRequest): Promise<CreateRun> {
    if (this.batches !== false) {
      const run = await createBatches(this.client, this.opts.batchSize, 1, { count }, build);
      this.observe(run);
      if (!run.unimplemented) return run;
    }
    const run = await createUnary(this.client, this.opts.callers, { count }, build);
    this.observe(run);
    return run;
  }
}
