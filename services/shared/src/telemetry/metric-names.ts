// Every metric the services export, as Prometheus scrapes it (histograms also export
// _bucket, _sum and _count). Dashboards and alert rules may use only these; a test scrapes the
// running services and checks each one is really exported. The instruments are made from these
// entries (instruments.ts), so a name, its help text, unit and buckets are written here only.

/** What the catalogue says of one metric. */
export interface MetricSpec {
  type: "counter" | "gauge" | "histogram";
  /** The labels of its series (besides the scrape's own). */
  labels: readonly string[];
  services: readonly ("timer" | "dispatcher" | "admin")[];
  /** Its HELP text. */
  help: string;
  /** "s" for a metric in seconds; the name ends in _seconds (a counter's in _seconds_total) then. */
  unit?: "s";
  /** A histogram's bucket boundaries. */
  buckets?: readonly number[];
}

// Bucket boundaries of the call-duration histograms (database queries, RPCs served): 0.5 ms to 10 s.
const CALL_SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Metric names with their labels and the services exporting them. */
export const METRICS = {
  // From the operations document, kept as named there.
  timer_creations_total: {
    type: "counter",
    labels: [],
    services: ["timer"],
    help: "Timers created (not replays)",
  },
  timer_creation_attempts_total: {
    type: "counter",
    labels: [],
    services: ["timer"],
    help: "Creates asked for (CreateTimer calls and CreateTimers items)",
  },
  timer_creation_failures_total: {
    type: "counter",
    labels: ["code"],
    services: ["timer"],
    help: "Creates that failed, by gRPC code",
  },
  timer_executions_total: {
    type: "counter",
    labels: [],
    services: ["dispatcher"],
    help: "Timers that reached a final outcome (SUCCEEDED or FAILED)",
  },
  timer_executions_success_total: {
    type: "counter",
    labels: [],
    services: ["dispatcher"],
    help: "Timers whose callback succeeded",
  },
  active_timers_total: {
    type: "gauge",
    labels: ["group_id"],
    services: ["timer"],
    help: 'Scheduled or firing timers per group (the 50 largest groups; the rest summed as group_id="_other")',
  },
  timer_execution_queue_size: {
    type: "gauge",
    labels: [],
    services: ["dispatcher"],
    help: "Timers held in memory that are due and not yet being delivered",
  },
  callback_attempts_total: {
    type: "counter",
    labels: ["transport"],
    services: ["dispatcher"],
    help: "Callback delivery attempts",
  },
  callback_failures_total: {
    type: "counter",
    labels: ["transport", "retryable"],
    services: ["dispatcher"],
    help: "Callback delivery attempts that failed",
  },
  database_connections_active: {
    type: "gauge",
    labels: [],
    services: ["timer", "dispatcher", "admin"],
    help: "Postgres connections in use",
  },
  database_connections_idle: {
    type: "gauge",
    labels: [],
    services: ["timer", "dispatcher", "admin"],
    help: "Postgres connections idle in the pool",
  },
  database_connections_max: {
    type: "gauge",
    labels: [],
    services: ["timer", "dispatcher", "admin"],
    help: "Postgres pool size limit",
  },
  database_connections_waiting: {
    type: "gauge",
    labels: [],
    services: ["timer", "dispatcher", "admin"],
    help: "Callers queued for a Postgres connection (the pool is exhausted while above 0)",
  },
  database_query_duration_seconds: {
    type: "histogram",
    labels: ["operation"],
    services: ["timer", "dispatcher", "admin"],
    help: "Postgres query time",
    unit: "s",
    buckets: CALL_SECONDS_BUCKETS,
  },
  // Added for the mesh.
  timer_shard_lag_seconds: {
    type: "gauge",
    labels: ["shard", "owner"],
    services: ["dispatcher"],
    help: "Now minus the oldest due, unfired fire_at in the shard (paused groups left out); 0 when none is due. Every dispatcher reports every shard, so lag stays visible when an owner dies",
    unit: "s",
  },
  timer_paused_due_timers: {
    type: "gauge",
    labels: ["group_id"],
    services: ["dispatcher"],
    help: "Due SCHEDULED timers of a paused group, waiting for it to be resumed (not in timer_shard_lag_seconds); 0 once resumed",
  },
  callback_duration_seconds: {
    type: "histogram",
    labels: ["transport", "outcome"],
    services: ["dispatcher"],
    help: "Time of one callback delivery attempt, by transport and outcome (success, retryable_failure, permanent_failure)",
    unit: "s",
    // 1 ms (a local NATS publish) to 30 s (three times the default CALLBACK_TIMEOUT of 10 s).
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  },
  timer_fire_lateness_seconds: {
    type: "histogram",
    labels: [],
    services: ["dispatcher"],
    help: "Start of the first delivery attempt minus fire_at",
    unit: "s",
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
  },
  timer_lateness_exceeded_total: {
    type: "counter",
    labels: ["action"],
    services: ["dispatcher"],
    help: "Timers whose first attempt started beyond their lateness contract's max_lateness, by what was done: expired (SKIP: not delivered, EXPIRED), fired_marked (FIRE_MARKED: delivered with x-timer-late-ms), fired (FIRE: delivered)",
  },
  dispatcher_owned_shards: {
    type: "gauge",
    labels: [],
    services: ["dispatcher"],
    help: "Shards whose lease this dispatcher holds",
  },
  dispatcher_members: {
    type: "gauge",
    labels: [],
    services: ["dispatcher"],
    help: "Live dispatchers as this one sees them",
  },
  timer_shard_count: { type: "gauge", labels: [], services: ["dispatcher"], help: "SHARD_COUNT of the mesh" },
  dispatcher_timers_in_memory: {
    type: "gauge",
    labels: [],
    services: ["dispatcher"],
    help: "Timers held in memory",
  },
  dispatcher_deliveries_in_flight: {
    type: "gauge",
    labels: [],
    services: ["dispatcher"],
    help: "Deliveries in flight",
  },
  dispatcher_timers_parked: {
    type: "gauge",
    labels: [],
    services: ["dispatcher"],
    help: "Due timers waiting because their group or callback destination holds its full share of delivery slots",
  },
  dispatcher_timers_parked_total: {
    type: "counter",
    labels: [],
    services: ["dispatcher"],
    help: "Times a due timer was parked by fair delivery (DELIVERY_GROUP_SHARE, DELIVERY_DESTINATION_SHARE)",
  },
  dispatcher_clock_offset_seconds: {
    type: "gauge",
    labels: [],
    services: ["dispatcher"],
    help: "This machine's wall clock minus Postgres's clock (positive: ahead); firing follows Postgres's clock whatever this is",
    unit: "s",
  },
  dispatcher_claim_entries_dropped_total: {
    type: "counter",
    labels: [],
    services: ["dispatcher"],
    help: "Timers dropped because Postgres refuses them in a claim statement even alone",
  },
  // Retention (retention-loop.ts): one dispatcher at a time deletes; every dispatcher refreshes the gauges.
  retention_rows_deleted_total: {
    type: "counter",
    labels: ["table"],
    services: ["dispatcher"],
    help: "Rows deleted by this dispatcher's automatic retention, by table (timers, timer_attempts, audit_events)",
  },
  retention_oldest_row_age_seconds: {
    type: "gauge",
    labels: ["table"],
    services: ["dispatcher"],
    help: "Age of the oldest row kept: timers (finished), timer_attempts (of the oldest finished timers), audit_events; 0 when none",
    unit: "s",
  },
  retention_last_run_timestamp_seconds: {
    type: "gauge",
    labels: [],
    services: ["dispatcher"],
    help: "Unix time this dispatcher last completed a retention run (0: never; the others skip while one holds the lock)",
    unit: "s",
  },
  database_size_bytes: {
    type: "gauge",
    labels: [],
    services: ["dispatcher"],
    help: "pg_database_size of the timer database, refreshed every RETENTION_INTERVAL",
  },
  database_table_size_bytes: {
    type: "gauge",
    labels: ["table"],
    services: ["dispatcher"],
    help: "pg_total_relation_size (indexes and TOAST included) of the 10 largest tables, refreshed every RETENTION_INTERVAL",
  },
  // The load ahead (services/admin/src/load-ahead-metrics.ts), every FORECAST_REFRESH; several
  // admin replicas export the same numbers (alerts take max()).
  timer_due_next_5m: {
    type: "gauge",
    labels: [],
    services: ["admin"],
    help: "SCHEDULED timers due in the next 5 minutes (paused groups' included), read from the due index within FORECAST_ROW_BUDGET",
  },
  timer_load_ahead_peak_per_minute: {
    type: "gauge",
    labels: [],
    services: ["admin"],
    help: "The most SCHEDULED timers due in one minute (whole minutes, the current one first) of the next hour",
  },
  // RPCs, following the OpenTelemetry RPC semantic conventions.
  rpc_server_call_duration_seconds: {
    type: "histogram",
    labels: ["rpc_system", "rpc_service", "rpc_method", "rpc_grpc_status_code"],
    services: ["timer", "dispatcher", "admin"],
    help: "Duration of RPCs served",
    unit: "s",
    buckets: CALL_SECONDS_BUCKETS,
  },
  nats_connected: {
    type: "gauge",
    labels: [],
    services: ["timer", "dispatcher"],
    help: "1 while connected to NATS",
  },
  // The process, as the OpenTelemetry semantic conventions name it (process.cpu.time,
  // process.memory.usage); made in telemetry.ts. The runtime's own are RUNTIME_METRICS below.
  process_cpu_time_seconds_total: {
    type: "counter",
    labels: ["cpu_mode"],
    services: ["timer", "dispatcher", "admin"],
    help: "CPU time used by the process, by mode (user, system)",
    unit: "s",
  },
  process_memory_usage_bytes: {
    type: "gauge",
    labels: [],
    services: ["timer", "dispatcher", "admin"],
    help: "Resident set size of the process",
  },
  mesh_messages_dropped_total: {
    type: "counter",
    labels: ["subject", "reason"],
    services: ["dispatcher", "admin"],
    help: "Messages on mesh NATS subjects that did not decode or validate, by subject kind and reason",
  },
} as const satisfies Record<string, MetricSpec>;

/** A metric name the services export. */
export type MetricName = keyof typeof METRICS;

const ALL = ["timer", "dispatcher", "admin"] as const;

/**
 * The Node.js runtime's metrics, made by @opentelemetry/instrumentation-runtime-node in every
 * service (telemetry.ts), as Prometheus scrapes them: OpenTelemetry's names with dots as
 * underscores and no unit suffix (delays and durations are in seconds, sizes in bytes); the
 * help text here is a summary (a scrape shows the instrumentation's). Apart from METRICS because
 * nothing here makes them (an instrument of that name would clash) and a dashboard shows a few,
 * not all; the telemetry test scrapes them too.
 */
export const RUNTIME_METRICS = {
  nodejs_eventloop_delay_min: {
    type: "gauge",
    labels: [],
    services: ALL,
    help: "Event loop minimum delay (s)",
  },
  nodejs_eventloop_delay_max: {
    type: "gauge",
    labels: [],
    services: ALL,
    help: "Event loop maximum delay (s)",
  },
  nodejs_eventloop_delay_mean: {
    type: "gauge",
    labels: [],
    services: ALL,
    help: "Event loop mean delay (s)",
  },
  nodejs_eventloop_delay_stddev: {
    type: "gauge",
    labels: [],
    services: ALL,
    help: "Event loop delay's standard deviation (s)",
  },
  nodejs_eventloop_delay_p50: {
    type: "gauge",
    labels: [],
    services: ALL,
    help: "Event loop delay's median (s)",
  },
  nodejs_eventloop_delay_p90: {
    type: "gauge",
    labels: [],
    services: ALL,
    help: "Event loop delay's 90th percentile (s)",
  },
  nodejs_eventloop_delay_p99: {
    type: "gauge",
    labels: [],
    services: ALL,
    help: "Event loop delay's 99th percentile (s)",
  },
  nodejs_eventloop_utilization: {
    type: "gauge",
    labels: [],
    services: ALL,
    help: "Event loop utilization (0 to 1)",
  },
  nodejs_eventloop_time_total: {
    type: "counter",
    labels: ["nodejs_eventloop_state"],
    services: ALL,
    help: "Time the event loop spent in each state (active, idle), seconds",
  },
  v8js_gc_duration: {
    type: "histogram",
    labels: ["v8js_gc_type"],
    services: ALL,
    help: "Garbage collection time by kind (major, minor, incremental, weakcb), seconds",
  },
  v8js_memory_heap_used: {
    type: "gauge",
    labels: ["v8js_heap_space_name"],
    services: ALL,
    help: "V8 heap bytes in use, per heap space",
  },
  v8js_memory_heap_space_size: {
    type: "gauge",
    labels: ["v8js_heap_space_name"],
    services: ALL,
    help: "V8 heap bytes reserved, per heap space",
  },
  v8js_memory_heap_space_available_size: {
    type: "gauge",
    labels: ["v8js_heap_space_name"],
    services: ALL,
    help: "V8 heap bytes still available, per heap space",
  },
  v8js_memory_heap_space_physical_size: {
    type: "gauge",
    labels: ["v8js_heap_space_name"],
    services: ALL,
    help: "V8 heap bytes committed, per heap space",
  },
  v8js_resource_active: {
    type: "gauge",
    labels: ["v8js_resource_type"],
    services: ALL,
    help: "Active resources keeping the event loop alive, by type",
  },
} as const satisfies Record<string, MetricSpec>;
