//! Metric names (the only place they are spelled), their help texts, and the
//! Prometheus recorder. Names: `herald_` prefix, base units, `_total`,
//! `_seconds`, `_bytes` suffixes. Labels take values from closed sets only
//! (method, result, code, reason, kind) — never a user, client or channel.
//!
//! Knows nothing of the roles: they record through the `metrics` macros with
//! these names.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

// Edge.
pub const CONNECTIONS: &str = "herald_edge_connections";
pub const SUBSCRIPTIONS: &str = "herald_edge_subscriptions";
pub const CONNECTS_TOTAL: &str = "herald_edge_connects_total";
pub const DISCONNECTS_TOTAL: &str = "herald_edge_disconnects_total";
pub const COMMANDS_TOTAL: &str = "herald_edge_commands_total";
pub const MESSAGES_IN_TOTAL: &str = "herald_edge_messages_in_total";
pub const MESSAGES_OUT_TOTAL: &str = "herald_edge_messages_out_total";
pub const BYTES_OUT_TOTAL: &str = "herald_edge_bytes_out_total";
pub const BYTES_IN_TOTAL: &str = "herald_edge_bytes_in_total";
pub const OUTBOUND_QUEUED_BYTES: &str = "herald_edge_outbound_queued_bytes";
pub const CHANNELS: &str = "herald_edge_channels";
pub const NATS_SUBSCRIPTIONS: &str = "herald_edge_nats_subscriptions";
pub const SLOW_DISCONNECTS_TOTAL: &str = "herald_edge_slow_disconnects_total";
pub const GAPS_FILLED_TOTAL: &str = "herald_edge_gaps_filled_total";
pub const PUBLISH_SECONDS: &str = "herald_edge_publish_seconds";
pub const DELIVERY_SECONDS: &str = "herald_edge_delivery_seconds";
pub const CONTROL_TOTAL: &str = "herald_edge_control_total";

// Writer.
pub const WRITER_BATCHES_TOTAL: &str = "herald_writer_batches_total";
pub const WRITER_BATCH_SIZE: &str = "herald_writer_batch_size";
pub const WRITER_SEQUENCED_TOTAL: &str = "herald_writer_sequenced_total";
pub const WRITER_DUPLICATES_TOTAL: &str = "herald_writer_duplicates_total";
pub const WRITER_REDELIVERIES_TOTAL: &str = "herald_writer_redeliveries_total";
pub const WRITER_COMMIT_SECONDS: &str = "herald_writer_commit_seconds";
pub const WRITER_ACK_SECONDS: &str = "herald_writer_ack_seconds";
pub const WRITER_INGEST_LAG_SECONDS: &str = "herald_writer_ingest_lag_seconds";
pub const WRITER_CONSUMER_PENDING: &str = "herald_writer_consumer_pending_messages";
pub const WRITER_CONSUMER_ACK_PENDING: &str = "herald_writer_consumer_ack_pending_messages";
pub const WRITER_ERRORS_TOTAL: &str = "herald_writer_errors_total";
pub const WRITER_PARTITIONS_OWNED: &str = "herald_writer_partitions_owned";
pub const WRITER_LEASE_EVENTS_TOTAL: &str = "herald_writer_lease_events_total";
pub const WRITER_FAILOVERS_TOTAL: &str = "herald_writer_failovers_total";

// Sync.
pub const SYNC_REQUESTS_TOTAL: &str = "herald_sync_requests_total";
pub const SYNC_SECONDS: &str = "herald_sync_request_seconds";
pub const SYNC_ROWS_READ_TOTAL: &str = "herald_sync_rows_read_total";
pub const SYNC_COALESCED_TOTAL: &str = "herald_sync_coalesced_total";
pub const SYNC_RETRIES_TOTAL: &str = "herald_sync_client_retries_total";

// Store (every backend, through the metered wrapper).
pub const STORE_OPERATION_SECONDS: &str = "herald_store_operation_seconds";
pub const STORE_ERRORS_TOTAL: &str = "herald_store_errors_total";

// Server API.
pub const API_REQUESTS_TOTAL: &str = "herald_api_requests_total";

// NATS connection (every role).
pub const NATS_CONNECTED: &str = "herald_nats_connected";
pub const NATS_RECONNECTS_TOTAL: &str = "herald_nats_reconnects_total";
pub const NATS_PUBLISH_ERRORS_TOTAL: &str = "herald_nats_publish_errors_total";

// Process and runtime. The `process_*` names are the standard ones of the
// Prometheus client libraries, so existing dashboards and alerts apply.
pub const BUILD_INFO: &str = "herald_build_info";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "process_virtual_memory_bytes";
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
pub const TOKIO_WORKERS: &str = "herald_tokio_workers";
pub const TOKIO_ALIVE_TASKS: &str = "herald_tokio_alive_tasks";
pub const TOKIO_GLOBAL_QUEUE_DEPTH: &str = "herald_tokio_global_queue_depth";
pub const TOKIO_BUSY_SECONDS_TOTAL: &str = "herald_tokio_busy_seconds_total";

/// (name, help) of every metric, for `# HELP` lines.
pub const HELP: &[(&str, &str)] = &[
    (CONNECTIONS, "Client connections open now."),
    (SUBSCRIPTIONS, "Client subscriptions open now."),
    (CONNECTS_TOTAL, "Client connections authenticated."),
    (
        DISCONNECTS_TOTAL,
        "Client connections closed, by disconnect code.",
    ),
    (
        COMMANDS_TOTAL,
        "Client commands handled, by method and result.",
    ),
    (MESSAGES_IN_TOTAL, "Frames read from client sockets."),
    (MESSAGES_OUT_TOTAL, "Frames written to client sockets."),
    (BYTES_OUT_TOTAL, "Bytes written to client sockets."),
    (BYTES_IN_TOTAL, "Bytes read from client sockets."),
    (
        OUTBOUND_QUEUED_BYTES,
        "Bytes waiting in the outbound queues of all connections now (each bounded by client_queue_max_bytes).",
    ),
    (
        CHANNELS,
        "Channels with at least one local subscriber (one NATS subscription each).",
    ),
    (
        NATS_SUBSCRIPTIONS,
        "NATS subscriptions this edge holds now (one per channel with local interest, plus control).",
    ),
    (
        SLOW_DISCONNECTS_TOTAL,
        "Connections closed with 3008 because their outbound queue passed its bound.",
    ),
    (
        GAPS_FILLED_TOTAL,
        "Offset gaps in a channel's live stream filled from sync, or failed.",
    ),
    (
        PUBLISH_SECONDS,
        "Time from a publish received to its reply, by source.",
    ),
    (
        DELIVERY_SECONDS,
        "Time from the writer's store commit to the frame written to a client socket (oldest publication of each socket write; across hosts it includes clock skew).",
    ),
    (
        CONTROL_TOTAL,
        "Per-user control messages (server API disconnect, subscribe, unsubscribe, refresh) received by this edge, by op and result (local: some local session matched; none; invalid).",
    ),
    (
        WRITER_BATCHES_TOTAL,
        "Batches committed to the store by the writer.",
    ),
    (WRITER_BATCH_SIZE, "Messages per writer batch."),
    (
        WRITER_SEQUENCED_TOTAL,
        "Publications given an offset and stored.",
    ),
    (
        WRITER_DUPLICATES_TOTAL,
        "Messages recognised by idempotency key and not stored again.",
    ),
    (
        WRITER_REDELIVERIES_TOTAL,
        "Ingest messages JetStream delivered to a writer more than once (ack timeout, writer failover).",
    ),
    (
        WRITER_COMMIT_SECONDS,
        "Store commit latency of a writer batch.",
    ),
    (
        WRITER_ACK_SECONDS,
        "Time to acknowledge a committed batch to JetStream.",
    ),
    (
        WRITER_INGEST_LAG_SECONDS,
        "Time from a message stored in the ingest stream to its store commit (queueing before the writer).",
    ),
    (
        WRITER_CONSUMER_PENDING,
        "Ingest messages not yet delivered to this process's writers, by partition (polled from JetStream).",
    ),
    (
        WRITER_CONSUMER_ACK_PENDING,
        "Ingest messages delivered to this process's writers and not yet acknowledged, by partition (polled from JetStream).",
    ),
    (WRITER_ERRORS_TOTAL, "Writer failures, by kind."),
    (
        WRITER_PARTITIONS_OWNED,
        "Ingest partitions this process's writers run a task for.",
    ),
    (
        WRITER_LEASE_EVENTS_TOTAL,
        "Partition leases acquired, lost (renewal refused or expired) and released, by event.",
    ),
    (
        WRITER_FAILOVERS_TOTAL,
        "Partitions taken over from a writer that let its lease expire without releasing it.",
    ),
    (SYNC_REQUESTS_TOTAL, "Sync requests, by source and result."),
    (SYNC_SECONDS, "Sync request (page) latency, by source."),
    (
        SYNC_ROWS_READ_TOTAL,
        "Publications read from the store to answer sync requests.",
    ),
    (
        SYNC_COALESCED_TOTAL,
        "Sync requests answered by a concurrent identical read instead of their own.",
    ),
    (
        SYNC_RETRIES_TOTAL,
        "Sync requests an edge or publisher sent again (no instance answered, or a retryable store error).",
    ),
    (
        STORE_OPERATION_SECONDS,
        "Store operation latency, by operation and backend.",
    ),
    (
        STORE_ERRORS_TOTAL,
        "Store operations failed, by operation, backend and error kind.",
    ),
    (
        API_REQUESTS_TOTAL,
        "Server API requests, by method and result.",
    ),
    (
        NATS_CONNECTED,
        "1 while the NATS connection is up, 0 while it is down.",
    ),
    (
        NATS_RECONNECTS_TOTAL,
        "Times the NATS connection was re-established after a loss.",
    ),
    (
        NATS_PUBLISH_ERRORS_TOTAL,
        "NATS and JetStream publishes that failed, by kind.",
    ),
    (
        BUILD_INFO,
        "Always 1; the labels carry the version and the role this process runs.",
    ),
    (
        PROCESS_RESIDENT_MEMORY_BYTES,
        "Resident memory size in bytes.",
    ),
    (
        PROCESS_VIRTUAL_MEMORY_BYTES,
        "Virtual memory size in bytes.",
    ),
    (
        PROCESS_CPU_SECONDS_TOTAL,
        "Total user and system CPU time spent in seconds.",
    ),
    (PROCESS_OPEN_FDS, "Number of open file descriptors."),
    (PROCESS_MAX_FDS, "Maximum number of open file descriptors."),
    (
        PROCESS_START_TIME_SECONDS,
        "Start time of the process since unix epoch in seconds.",
    ),
    (TOKIO_WORKERS, "Worker threads of the tokio runtime."),
    (TOKIO_ALIVE_TASKS, "Tasks alive in the tokio runtime."),
    (
        TOKIO_GLOBAL_QUEUE_DEPTH,
        "Tasks waiting in the tokio runtime's global (injection) queue.",
    ),
    (
        TOKIO_BUSY_SECONDS_TOTAL,
        "Time the tokio workers spent busy, summed over workers.",
    ),
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process (tests start many roles in
/// one process) and returns the handle `/metrics` renders from.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ];
            let sizes = [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(WRITER_BATCH_SIZE.into()), &sizes)
                })
                .expect("bucket lists are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by an embedding
            // application); then ours only renders what it is given.
            let _ = metrics::set_global_recorder(recorder);
            for (name, help) in HELP {
                metrics::describe_counter!(*name, *help);
            }
            handle
        })
        .clone()
}
