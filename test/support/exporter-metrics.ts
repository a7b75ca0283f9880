// The metrics of the server exporters that infra/docker-compose.yml runs beside the services,
// as Prometheus scrapes them, with their labels: dashboards and alert rules may use these too
// (test/support/promql.ts adds them to its catalogue). Only what the dashboards and alerts need
// is listed; add a name here after checking that the exporter really exports it.
//
// - postgres-exporter (job "postgres"), quay.io/prometheuscommunity/postgres-exporter v0.17.1:
//   its default collectors (database, locks, stat_database, settings) and default queries
//   (pg_stat_activity). Debian's prometheus-postgres-exporter (0.11) exports the same names with
//   a `server` label besides; test/integration/exporter-metrics.test.ts scrapes it.
// - prometheus-nats-exporter -varz (job "nats"): every number of nats-server's /varz as
//   gnatsd_varz_<field>, a gauge labelled server_id (the monitoring URL), counters included.

/** What is known of one exporter metric: its type and labels (besides job and instance). */
export interface ExporterMetric {
  type: "counter" | "gauge";
  labels: readonly string[];
}

const STAT_DATABASE = ["datid", "datname"] as const;
const STAT_ACTIVITY = [
  "datname",
  "state",
  "usename",
  "application_name",
  "backend_type",
  "wait_event_type",
  "wait_event",
] as const;
const VARZ = ["server_id"] as const;

/** Metric names by the scrape job of the exporter that exports them. */
export const EXPORTER_METRICS = {
  postgres: {
    pg_up: { type: "gauge", labels: [] },
    pg_database_size_bytes: { type: "gauge", labels: ["datname"] },
    pg_locks_count: { type: "gauge", labels: ["datname", "mode"] },
    pg_settings_max_connections: { type: "gauge", labels: [] },
    pg_stat_activity_count: { type: "gauge", labels: STAT_ACTIVITY },
    pg_stat_activity_max_tx_duration: { type: "gauge", labels: STAT_ACTIVITY },
    pg_stat_database_numbackends: { type: "gauge", labels: STAT_DATABASE },
    pg_stat_database_xact_commit: { type: "counter", labels: STAT_DATABASE },
    pg_stat_database_xact_rollback: { type: "counter", labels: STAT_DATABASE },
    pg_stat_database_blks_read: { type: "counter", labels: STAT_DATABASE },
    pg_stat_database_blks_hit: { type: "counter", labels: STAT_DATABASE },
    pg_stat_database_tup_inserted: { type: "counter", labels: STAT_DATABASE },
    pg_stat_database_tup_updated: { type: "counter", labels: STAT_DATABASE },
    pg_stat_database_tup_deleted: { type: "counter", labels: STAT_DATABASE },
    pg_stat_database_deadlocks: { type: "counter", labels: STAT_DATABASE },
    pg_stat_database_conflicts: { type: "counter", labels: STAT_DATABASE },
    pg_stat_database_temp_bytes: { type: "counter", labels: STAT_DATABASE },
  },
  nats: {
    gnatsd_varz_connections: { type: "gauge", labels: VARZ },
    gnatsd_varz_total_connections: { type: "gauge", labels: VARZ },
    gnatsd_varz_subscriptions: { type: "gauge", labels: VARZ },
    gnatsd_varz_slow_consumers: { type: "gauge", labels: VARZ },
    gnatsd_varz_in_msgs: { type: "gauge", labels: VARZ },
    gnatsd_varz_out_msgs: { type: "gauge", labels: VARZ },
    gnatsd_varz_in_bytes: { type: "gauge", labels: VARZ },
    gnatsd_varz_out_bytes: { type: "gauge", labels: VARZ },
    gnatsd_varz_mem: { type: "gauge", labels: VARZ },
    gnatsd_varz_cpu: { type: "gauge", labels: VARZ },
  },
} as const satisfies Record<string, Record<string, ExporterMetric>>;

/** Every exporter metric by name, whichever exporter exports it. */
export const ALL_EXPORTER_METRICS: Readonly<Record<string, ExporterMetric>> = Object.assign(
  {},
  ...Object.values(EXPORTER_METRICS),
);
