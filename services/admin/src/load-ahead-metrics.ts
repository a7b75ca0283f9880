// The load-ahead gauges, computed by the admin service every FORECAST_REFRESH: SCHEDULED timers
// due in the next 5 minutes (timer_due_next_5m) and the most due in one minute of the next hour
// (timer_load_ahead_peak_per_minute), which alert TimerLoadAheadAboveRecentPeak compares with the
// most the mesh fired in one minute over the last day. Read from the due index within
// FORECAST_ROW_BUDGET like ForecastLoad (forecast-store.ts). Each refresh also brings the recent
// firing peak up to date, so ForecastLoad finds it mostly counted.
import type { Meter } from "@opentelemetry/api";
import type pg from "pg";
import type { Logger } from "../../shared/src/logger.js";
import { observableGauge } from "../../shared/src/telemetry/instruments.js";
import { loadAhead, type LoadAhead } from "./forecast-store.js";
import type { RecentFiringPeak } from "./recent-firing-peak.js";

/** What the loop reads and how often. */
export interface LoadAheadSettings {
  pool: pg.Pool;
  shardCount: number;
  /** Index entries read per shard at most. */
  perShardRows: number;
  refreshMs: number;
  recentPeak: RecentFiringPeak;
}

/** Registers the gauges and starts refreshing them; returns the function that stops it. */
export function startLoadAheadMetrics(meter: Meter, settings: LoadAheadSettings, log: Logger): () => void {
  // Unset until the first read succeeds: a scrape then shows no sample rather than a false 0.
  let current: LoadAhead | undefined;
  let running = false;
  const refresh = async () => {
    if (running) return; // a read slower than the interval is not stacked on
    running = true;
    try {
      current = await loadAhead(settings.pool, settings.shardCount, settings.perShardRows);
      await settings.recentPeak.refresh();
    } catch (err) {
      log.warn({ err }, "could not compute the load ahead");
    } finally {
      running = false;
    }
  };
  void refresh();
  const timer = setInterval(() => void refresh(), settings.refreshMs);
  timer.unref();
  observableGauge(meter, "timer_due_next_5m").addCallback((r) => {
    if (current) r.observe(current.dueNext5m);
  });
  observableGauge(meter, "timer_load_ahead_peak_per_minute").addCallback((r) => {
    if (current) r.observe(current.peakPerMinute);
  });
  return () => clearInterval(timer);
}
