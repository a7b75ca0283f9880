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
  /** "s" for a metric in seconds; the name ends in _seconds then. */
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
    help: "Now minus the oldest due, unfired fire_at in the shard; 0 when none is due. Every dispatcher reports every shard, so lag stays visible when an owner dies",
    unit: "s",
  },
  timer_fire_lateness_seconds: {
    type: "histogram",
    labels: [],
    services: ["dispatcher"],
    help: "Start of the first delivery attempt minus fire_at",
    unit: "s",
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
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
  mesh_messages_dropped_total: {
    type: "counter",
    labels: ["subject", "reason"],
    services: ["dispatcher", "admin"],
    help: "Messages on mesh NATS subjects that did not decode or validate, by subject kind and reason",
  },
} as const satisfies Record<string, MetricSpec>;

/** A metric name the services export. */
export type MetricName = keyof typeof METRICS;
