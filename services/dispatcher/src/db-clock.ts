// The dispatcher's clock is Postgres's clock. Claims, fencing and fire times are all judged by
// the database (`now()` in the claim statement), so a dispatcher that scheduled by its own wall
// clock would wake too early when its clock runs ahead (the claim finds nothing due, the timer
// drops out of memory and comes back seconds later through the overdue scan) and fire late by
// the skew when it runs behind.
//
// So the dispatcher measures the offset between its monotonic clock (performance.now(): it never
// steps, whatever NTP or an operator does to the wall clock) and Postgres's clock_timestamp(), the
// way NTP does: a few round trips back to back on one connection, keeping the one with the
// shortest round trip, whose error is at most half that round trip. It measures again every
// interval, so slow drift between the two clocks is followed too.
//
// now() answers the earliest Postgres time it can be right now (the estimate minus half the
// round trip): "never early" compares fire times with it, so a timer is never sent before its
// fire time by the database's clock, whatever this machine's wall clock says.
import type pg from "pg";
import type { Logger } from "../../shared/src/logger.js";

/** One round trip to Postgres: monotonic and wall times around it, and the database time read in between. */
export interface ClockSample {
  /** performance.now() before and after the query. */
  monoBeforeMs: number;
  monoAfterMs: number;
  /** Date.now() before and after the query. */
  wallBeforeMs: number;
  wallAfterMs: number;
  /** Postgres clock_timestamp() in epoch milliseconds (sub-millisecond fraction kept). */
  dbMs: number;
}

/** What a burst of samples says about the clocks. */
export interface ClockEstimate {
  /** Postgres time minus monotonic time, at the midpoint of the best round trip. */
  monoToDbMs: number;
  /** Half the best round trip: the most the estimate can be off by. */
  uncertaintyMs: number;
  /** This machine's wall clock minus Postgres's clock (positive: this machine is ahead). */
  wallOffsetMs: number;
}

/** The estimate from the sample with the shortest round trip (the least room for error). */
export function estimateClock(samples: readonly ClockSample[]): ClockEstimate {
  let best: ClockSample | undefined;
  for (const s of samples) {
    if (!best || s.monoAfterMs - s.monoBeforeMs < best.monoAfterMs - best.monoBeforeMs) best = s;
  }
  if (!best) throw new Error("estimateClock needs at least one sample");
  const rtt = best.monoAfterMs - best.monoBeforeMs;
  return {
    monoToDbMs: best.dbMs - (best.monoBeforeMs + best.monoAfterMs) / 2,
    uncertaintyMs: rtt / 2,
    wallOffsetMs: (best.wallBeforeMs + best.wallAfterMs) / 2 - best.dbMs,
  };
}

/** The time source of the firing loop: Postgres's "now", and timers that go off by it. */
export interface Clock {
  /** Milliseconds since the epoch by Postgres's clock, never ahead of it. */
  now(): number;
  /** Calls `fn` once `ms` have passed (it may be a fraction of a millisecond early); the returned function cancels it. */
  after(ms: number, fn: () => void): () => void;
}

const SAMPLES_PER_BURST = 5;

/** Keeps this process's estimate of Postgres's clock. */
export class DbClock implements Clock {
  private estimate: ClockEstimate | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly pool: pg.Pool,
    private readonly log: Logger,
    private readonly intervalMs = 10_000,
  ) {}

  now(): number {
    const e = this.estimate;
    // Before the first measurement (the dispatcher fires nothing then) the wall clock stands in.
    if (!e) return Date.now();
    return performance.now() + e.monoToDbMs - e.uncertaintyMs;
  }

  after(ms: number, fn: () => void): () => void {
    // A delay is the same length on both clocks (now() is the monotonic clock plus an offset).
    const timer = setTimeout(fn, Math.max(0, ms));
    return () => clearTimeout(timer);
  }

  /** This machine's wall clock minus Postgres's, in milliseconds; undefined until measured. */
  wallOffsetMs(): number | undefined {
    return this.estimate?.wallOffsetMs;
  }

  /** Measures once (retrying until Postgres answers or stop() is called), then keeps measuring every interval. */
  async start(): Promise<void> {
    let delay = 200;
    while (!this.stopped) {
      try {
        await this.measure();
        break;
      } catch (err) {
        this.log.warn({ err }, "could not read the Postgres clock; retrying");
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 5_000);
      }
    }
    const loop = () => {
      this.timer = setTimeout(() => {
        this.measure()
          .catch((err: unknown) =>
            this.log.warn({ err }, "could not read the Postgres clock; keeping the last offset"),
          )
          .finally(() => {
            if (!this.stopped) loop();
          });
      }, this.intervalMs);
      this.timer.unref();
    };
    if (!this.stopped) loop();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private async measure(): Promise<void> {
    // One connection for the whole burst: waiting for a pooled connection would count as
    // round trip, on one side only.
    const client = await this.pool.connect();
    // A connection lost mid-burst fails the query in flight (measure() rejects and is retried);
    // a checked-out client has no pool listener, so without this one its 'error' event would
    // also crash the process.
    let lost: Error | undefined;
    const onError = (err: Error): void => {
      lost = err;
    };
    client.on("error", onError);
    const samples: ClockSample[] = [];
    try {
      for (let i = 0; i < SAMPLES_PER_BURST; i++) {
        const wallBeforeMs = Date.now();
        const monoBeforeMs = performance.now();
        const { rows } = await client.query<{ ms: number }>(`-- read_clock
          SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS ms`);
        const monoAfterMs = performance.now();
        const wallAfterMs = Date.now();
        samples.push({ monoBeforeMs, monoAfterMs, wallBeforeMs, wallAfterMs, dbMs: rows[0]!.ms });
      }
    } finally {
      client.removeListener("error", onError);
      // A client whose connection failed is discarded, not returned to the pool.
      client.release(lost);
    }
    const next = estimateClock(samples);
    const previous = this.estimate;
    this.estimate = next;
    // A change of more than 100 ms between measurements is a clock step somewhere (ours or the
    // database's); firing follows it, an operator wants to know.
    if (!previous || Math.abs(next.wallOffsetMs - previous.wallOffsetMs) > 100) {
      this.log.info(
        {
          clock_offset_ms: Math.round(next.wallOffsetMs * 10) / 10,
          uncertainty_ms: Math.round(next.uncertaintyMs * 100) / 100,
        },
        "measured this machine's clock against Postgres's; firing follows Postgres's clock",
      );
    }
  }
}
