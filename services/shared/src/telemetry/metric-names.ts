// Every metric the services export, as Prometheus scrapes it (histograms also export
// _bucket, _sum and _count). Dashboards and alert rules may use only these; a test scrapes the
// running services and checks each one is really exported.

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
    help: "CreateTimer calls",
  },
  timer_creation_failures_total: {
    type: "counter",
    labels: ["code"],
    services: ["timer"],
    help: "CreateTimer calls that failed, by gRPC code",
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
  },
  // Added for the mesh.
  timer_shard_lag_seconds: {
    type: "gauge",
    labels: ["shard", "owner"],
    services: ["dispatcher"],
    help: "Now minus the oldest due, unfired fire_at in the shard; 0 when none is due. Every dispatcher reports every shard, so lag stays visible when an owner dies",
  },
  timer_fire_lateness_seconds: {
    type: "histogram",
    labels: [],
    services: ["dispatcher"],
    help: "Start of the first delivery attempt minus fire_at",
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
} as const;

/** A metric name the services export. */
export type MetricName = keyof typeof METRICS;
