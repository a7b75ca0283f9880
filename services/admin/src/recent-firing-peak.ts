// The most timers the mesh fired in one minute over the last 24 hours (ForecastLoad's
// max_fired_per_minute_last_day), kept as a tally per minute in memory and brought up to date
// with the minutes that ended since the last refresh: each minute's first attempts are read
// once, so a refresh costs the firings of the new minutes, not a whole day's. The first refresh
// after a start reads the day once.
//
// A minute is counted one minute after it ends: an attempt is written when its delivery
// finishes, a moment after its finished_at, and a row committed after its minute was counted
// would be missed for good.
import type pg from "pg";
import { currentMinute, firedPerMinute } from "./forecast-store.js";

const DAY_MINUTES = 1440;

/** The recent firing peak, refreshed on demand; concurrent refreshes share one read. */
export class RecentFiringPeak {
  private readonly perMinute = new Map<number, number>();
  /** Minutes before this one are counted. */
  private countedUntil: number | null = null;
  private inFlight: Promise<void> | null = null;

  constructor(private readonly pool: pg.Pool) {}

  /** Counts the minutes that ended since the last refresh and forgets those older than a day. */
  refresh(): Promise<void> {
    this.inFlight ??= this.readNewMinutes().finally(() => {
      this.inFlight = null;
    });
    return this.inFlight;
  }

  /** The most first attempts finished in one minute over the day before the last refresh. */
  peak(): number {
    let max = 0;
    for (const n of this.perMinute.values()) max = Math.max(max, n);
    return max;
  }

  private async readNewMinutes(): Promise<void> {
    const now = await currentMinute(this.pool);
    const until = now - 1;
    const oldest = now - DAY_MINUTES;
    const from = Math.max(this.countedUntil ?? oldest, oldest);
    if (from < until) {
      for (const { minute, fired } of await firedPerMinute(this.pool, from, until)) {
        this.perMinute.set(minute, fired);
      }
      this.countedUntil = until;
    }
    for (const minute of this.perMinute.keys()) if (minute < oldest) this.perMinute.delete(minute);
  }
}
