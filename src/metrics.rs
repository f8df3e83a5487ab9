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
pub const MESSAGES_OUT_TOTAL: &str = "herald_edge_messages_out_total";
pub const BYTES_OUT_TOTAL: &str = "herald_edge_bytes_out_total";
pub const BYTES_IN_TOTAL: &str = "herald_edge_bytes_in_total";
pub const CHANNELS: &str = "herald_edge_channels";
pub const SLOW_DISCONNECTS_TOTAL: &str = "herald_edge_slow_disconnects_total";
pub const GAPS_FILLED_TOTAL: &str = "herald_edge_gaps_filled_total";
pub const PUBLISH_SECONDS: &str = "herald_edge_publish_seconds";
pub const CONTROL_TOTAL: &str = "herald_edge_control_total";

// Writer.
pub const WRITER_BATCHES_TOTAL: &str = "herald_writer_batches_total";
pub const WRITER_BATCH_SIZE: &str = "herald_writer_batch_size";
pub const WRITER_SEQUENCED_TOTAL: &str = "herald_writer_sequenced_total";
pub const WRITER_DUPLICATES_TOTAL: &str = "herald_writer_duplicates_total";
pub const WRITER_COMMIT_SECONDS: &str = "herald_writer_commit_seconds";
pub const WRITER_ERRORS_TOTAL: &str = "herald_writer_errors_total";
pub const WRITER_PARTITIONS_OWNED: &str = "herald_writer_partitions_owned";
pub const WRITER_LEASE_EVENTS_TOTAL: &str = "herald_writer_lease_events_total";
pub const WRITER_FAILOVERS_TOTAL: &str = "herald_writer_failovers_total";

// Sync.
pub const SYNC_REQUESTS_TOTAL: &str = "herald_sync_requests_total";
pub const SYNC_SECONDS: &str = "herald_sync_request_seconds";
pub const SYNC_RETRIES_TOTAL: &str = "herald_sync_client_retries_total";

// Server API.
pub const API_REQUESTS_TOTAL: &str = "herald_api_requests_total";

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
    (MESSAGES_OUT_TOTAL, "Frames written to client sockets."),
    (BYTES_OUT_TOTAL, "Bytes written to client sockets."),
    (BYTES_IN_TOTAL, "Bytes read from client sockets."),
    (
        CHANNELS,
        "Channels with at least one local subscriber (one NATS subscription each).",
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
        WRITER_COMMIT_SECONDS,
        "Store commit latency of a writer batch.",
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
    (
        SYNC_RETRIES_TOTAL,
        "Sync requests an edge or publisher sent again (no instance answered, or a retryable store error).",
    ),
    (SYNC_SECONDS, "Sync request latency, by source."),
    (
        API_REQUESTS_TOTAL,
        "Server API requests, by method and result.",
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
