//! Metric names (the only place they are spelled), their help texts, the
//! closed label sets, and the Prometheus recorder. Names: `herald_` prefix,
//! base units, `_total`, `_seconds`, `_bytes` suffixes. Labels take values
//! from closed sets only ([`labels`]: method, result, code, kind, …) — never a
//! user, client or channel.
//!
//! [`install`] sets up the recorder once per process: the global label `role`,
//! `herald_build_info`, every help text, every series of the role's closed
//! label sets registered at zero (so `rate()` of a counter that never moved is
//! 0, not nothing), and an upkeep thread that folds histogram samples into
//! their buckets even when nobody scrapes. [`Metrics::render`] adds the
//! process and tokio runtime figures, read at scrape time.
//!
//! Knows nothing of what the roles do: they record through the `metrics`
//! macros with these names, or through the handles cached here for the
//! per-frame paths ([`edge_io`]).

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What [`install`] needs to know of the process's role: the `role` label
/// and which parts run (whose series to register at zero). The roles module
/// builds it; metrics knows nothing of roles beyond this.
#[derive(Debug, Clone, Copy)]
pub struct RoleParts {
    pub label: &'static str,
    pub edge: bool,
    pub writer: bool,
    pub sync: bool,
}

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
pub const DELTA_PATCHES_TOTAL: &str = "herald_edge_delta_patches_total";
pub const PUBLISH_SECONDS: &str = "herald_edge_publish_seconds";
pub const DELIVERY_SECONDS: &str = "herald_edge_delivery_seconds";
pub const PUBLISH_INGEST_ACK_SECONDS: &str = "herald_edge_publish_ingest_ack_seconds";
pub const FEED_LAG_SECONDS: &str = "herald_edge_feed_lag_seconds";
pub const CONTROL_TOTAL: &str = "herald_edge_control_total";
pub const PRESENCE_EDGES: &str = "herald_edge_presence_edges";
pub const PRESENCE_EVENTS_DROPPED_TOTAL: &str = "herald_edge_presence_events_dropped_total";
pub const PRESENCE_GATHER_TIMEOUTS_TOTAL: &str = "herald_edge_presence_gather_timeouts_total";
pub const EDGE_IM_DROPPED_TOTAL: &str = "herald_edge_im_dropped_total";

// Writer.
pub const WRITER_BATCHES_TOTAL: &str = "herald_writer_batches_total";
pub const WRITER_BATCH_SIZE: &str = "herald_writer_batch_size";
pub const WRITER_SEQUENCED_TOTAL: &str = "herald_writer_sequenced_total";
pub const WRITER_DUPLICATES_TOTAL: &str = "herald_writer_duplicates_total";
pub const WRITER_REDELIVERIES_TOTAL: &str = "herald_writer_redeliveries_total";
pub const WRITER_COMMIT_SECONDS: &str = "herald_writer_commit_seconds";
pub const WRITER_ACK_SECONDS: &str = "herald_writer_ack_seconds";
pub const WRITER_INGEST_LAG_SECONDS: &str = "herald_writer_ingest_lag_seconds";
pub const WRITER_RECEIVE_LAG_SECONDS: &str = "herald_writer_receive_lag_seconds";
pub const WRITER_LOOKUP_SECONDS: &str = "herald_writer_lookup_seconds";
pub const WRITER_PUBLISH_SECONDS: &str = "herald_writer_publish_seconds";
pub const WRITER_PIPELINE_BATCHES: &str = "herald_writer_pipeline_batches";
pub const WRITER_PIPELINED_TOTAL: &str = "herald_writer_pipelined_total";
pub const WRITER_CONSUMER_PENDING: &str = "herald_writer_consumer_pending_messages";
pub const WRITER_CONSUMER_ACK_PENDING: &str = "herald_writer_consumer_ack_pending_messages";
pub const WRITER_ERRORS_TOTAL: &str = "herald_writer_errors_total";
pub const WRITER_PARTITIONS_OWNED: &str = "herald_writer_partitions_owned";
pub const WRITER_PARTITIONS: &str = "herald_writer_partitions";
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

// Proxies to the application backend (edge).
pub const PROXY_REQUESTS_TOTAL: &str = "herald_proxy_requests_total";
pub const PROXY_SECONDS: &str = "herald_proxy_request_seconds";

// Event webhooks (edge and writer emit; the writer holding partition 0 dispatches).
pub const WEBHOOK_EMITTED_TOTAL: &str = "herald_webhook_events_emitted_total";
pub const WEBHOOK_DROPPED_TOTAL: &str = "herald_webhook_events_dropped_total";
pub const WEBHOOK_DELIVERED_TOTAL: &str = "herald_webhook_events_delivered_total";
pub const WEBHOOK_RETRIES_TOTAL: &str = "herald_webhook_retries_total";
pub const WEBHOOK_EXPIRED_TOTAL: &str = "herald_webhook_events_expired_total";
pub const WEBHOOK_DELIVERY_SECONDS: &str = "herald_webhook_delivery_seconds";
pub const WEBHOOK_REQUEST_SECONDS: &str = "herald_webhook_request_seconds";
// Push notifications (the push worker: sync role; the API queues jobs).
pub const PUSH_SENDS_TOTAL: &str = "herald_push_sends_total";
pub const PUSH_SEND_SECONDS: &str = "herald_push_send_seconds";
pub const PUSH_JOBS_TOTAL: &str = "herald_push_jobs_total";
pub const PUSH_DEVICES_REMOVED_TOTAL: &str = "herald_push_devices_removed_total";
pub const PUSH_UNREAD_TOTAL: &str = "herald_push_unread_total";

// Abuse limits (every role's listeners; the edge's clients).
pub const LIMIT_HITS_TOTAL: &str = "herald_limit_hits_total";

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
    (
        PRESENCE_EDGES,
        "Edges this edge knows alive (heartbeat within presence_ttl), itself included: each answers every presence query.",
    ),
    (
        PRESENCE_EVENTS_DROPPED_TOTAL,
        "Join, leave and user status events dropped because the edge's presence queue was full.",
    ),
    (
        EDGE_IM_DROPPED_TOTAL,
        "Typing events and live receipts dropped because the edge's limiter was full (client_conversation_cache_size), by kind.",
    ),
    (
        PRESENCE_GATHER_TIMEOUTS_TOTAL,
        "Presence, presence stats and user status queries answered without every known edge (gather timeout).",
    ),
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
        "NATS subscriptions this edge holds now (one per channel with local interest, plus control and presence's two).",
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
        DELTA_PATCHES_TOTAL,
        "Fossil deltas computed for delta subscriptions: one per publication and edge, shared by every delta subscriber of the channel there.",
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
        PUBLISH_INGEST_ACK_SECONDS,
        "Time from a history publish sent to the ingest stream to JetStream's ack (the publish is then queued for the writer).",
    ),
    (
        FEED_LAG_SECONDS,
        "Time from the writer's store commit to the edge's channel feed receiving the publication from NATS (across hosts it includes clock skew).",
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
        WRITER_RECEIVE_LAG_SECONDS,
        "Time from a message stored in the ingest stream (JetStream's clock) to the writer receiving it (ours).",
    ),
    (
        WRITER_LOOKUP_SECONDS,
        "Time a writer batch spends reading what the store knows: channel heads not cached and idempotency keys.",
    ),
    (
        WRITER_PUBLISH_SECONDS,
        "Time after a writer batch's commit to hand its channel publications, replies and acks to the NATS connection.",
    ),
    (
        WRITER_PIPELINE_BATCHES,
        "Writer batches sequenced and not yet acknowledged, over this process's partitions (at most writer_pipeline_depth per partition).",
    ),
    (
        WRITER_PIPELINED_TOTAL,
        "Writer batches whose store append was issued while an earlier batch of the same partition was still in flight.",
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
        WRITER_PARTITIONS,
        "Partitions of the ingest stream (ingest_partitions) as this writer knows them; the owned partitions of all writers should add up to it.",
    ),
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
        PROXY_REQUESTS_TOTAL,
        "Calls to the application backend's proxies, by proxy (a configured name), kind (connect, refresh, subscribe, publish, sub_refresh, rpc) and result (ok, error, disconnect: the backend's answer; timeout, unavailable, status, invalid: no usable answer).",
    ),
    (
        PROXY_SECONDS,
        "Duration of calls to the application backend's proxies, by proxy and kind.",
    ),
    (
        WEBHOOK_EMITTED_TOTAL,
        "Webhook events stored in the events stream, by type.",
    ),
    (
        WEBHOOK_DROPPED_TOTAL,
        "Webhook events lost before the events stream stored them, by reason (queue_full: the emit queue was full; publish_failed: JetStream refused them until shutdown or the writer's tries ran out).",
    ),
    (
        WEBHOOK_DELIVERED_TOTAL,
        "Webhook events every endpoint answered 2xx to, by type.",
    ),
    (
        WEBHOOK_RETRIES_TOTAL,
        "Webhook delivery attempts that failed and will be retried after a backoff.",
    ),
    (
        WEBHOOK_EXPIRED_TOTAL,
        "Webhook events given up undelivered after webhook_max_age, by type.",
    ),
    (
        WEBHOOK_DELIVERY_SECONDS,
        "Time from an event to its delivery (every endpoint answered 2xx).",
    ),
    (
        WEBHOOK_REQUEST_SECONDS,
        "Duration of one webhook POST, answered or not.",
    ),
    (
        PUSH_SENDS_TOTAL,
        "Notifications sent to a device, by provider (fcm, apns, webpush) and result (sent, invalid_token, retry, failed, expired, no_device, no_sender).",
    ),
    (
        PUSH_SEND_SECONDS,
        "Duration of one send to a push provider, by provider.",
    ),
    (
        PUSH_JOBS_TOTAL,
        "send_push_notification jobs, by result (queued, fanned_out, retry, expired, invalid).",
    ),
    (
        PUSH_DEVICES_REMOVED_TOTAL,
        "Devices removed because their provider called the token invalid, by provider.",
    ),
    (
        PUSH_UNREAD_TOTAL,
        "Unread-aware pushes, by result (queued; dropped: a channel not timed because push_unread_max_pending were waiting).",
    ),
    (
        LIMIT_HITS_TOTAL,
        "Requests, commands and connections refused by an abuse limit, by limit.",
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

/// Every value a labelled series can take. [`install`] registers each
/// combination a role can produce at zero; the recording sites use only
/// these values.
pub mod labels {
    /// `code` of [`super::DISCONNECTS_TOTAL`]: the protocol's disconnect codes,
    /// 3000 (the client closed), 1009 (frame too big), and `custom` for any
    /// code a backend chose through the server API.
    pub const DISCONNECT_CODES: &[&str] = &[
        "1009", "3000", "3001", "3004", "3005", "3006", "3008", "3009", "3010", "3011", "3012",
        "3500", "3501", "3502", "3503", "3504", "3505", "3506", "3508", "custom",
    ];
    /// `method` of [`super::COMMANDS_TOTAL`] (a pong is not counted).
    pub const COMMAND_METHODS: &[&str] = &[
        "connect",
        "subscribe",
        "unsubscribe",
        "publish",
        "presence",
        "presence_stats",
        "history",
        "ping",
        "send",
        "rpc",
        "refresh",
        "sub_refresh",
    ];
    /// The method of a command that names none, or several.
    pub const UNKNOWN_METHOD: &str = "unknown";
    /// The labels of the client protocol's errors (`ProtocolError::label`).
    pub const PROTOCOL_ERRORS: &[&str] = &[
        "internal",
        "unauthorized",
        "unknown_channel",
        "permission_denied",
        "method_not_found",
        "already_subscribed",
        "limit_exceeded",
        "bad_request",
        "not_available",
        "token_expired",
        "expired",
        "too_many_requests",
        "unrecoverable_position",
    ];
    /// `result` of [`super::COMMANDS_TOTAL`] besides [`PROTOCOL_ERRORS`].
    pub const COMMAND_OUTCOMES: &[&str] = &["ok", "disconnect", "backend_error"];
    /// What a command without a known method can fail with.
    pub const UNKNOWN_METHOD_ERRORS: &[&str] = &["method_not_found", "bad_request"];
    /// `result` of [`super::GAPS_FILLED_TOTAL`].
    pub const GAP_RESULTS: &[&str] = &["filled", "failed"];
    /// `op` of [`super::CONTROL_TOTAL`]; an undecodable message counts as
    /// `unknown`/`invalid`.
    pub const CONTROL_OPS: &[&str] = &[
        "disconnect",
        "subscribe",
        "unsubscribe",
        "refresh",
        "message",
    ];
    /// `kind` of [`super::EDGE_IM_DROPPED_TOTAL`].
    pub const IM_DROP_KINDS: &[&str] = &["typing", "receipt"];
    pub const CONTROL_RESULTS: &[&str] = &["local", "none"];
    /// `source` of [`super::PUBLISH_SECONDS`].
    pub const PUBLISH_SOURCES: &[&str] = &["client", "api"];
    /// `kind` of [`super::WRITER_ERRORS_TOTAL`].
    pub const WRITER_ERROR_KINDS: &[&str] = &[
        "consume",
        "decode",
        "ack",
        "publish",
        "reply",
        "lease",
        "store_unavailable",
        "store_timeout",
        "store_conflict",
        "store_corrupt",
        "store_io",
        "store_locked",
    ];
    /// `event` of [`super::WRITER_LEASE_EVENTS_TOTAL`].
    pub const LEASE_EVENTS: &[&str] = &["acquired", "lost", "released"];
    /// `source` of the sync request metrics.
    pub const SYNC_SOURCES: &[&str] = &["http", "nats"];
    /// `result` of [`super::SYNC_REQUESTS_TOTAL`] (`unauthorized` and
    /// `forbidden` only over HTTP).
    pub const SYNC_RESULTS: &[&str] = &[
        "ok",
        "bad_request",
        "not_found",
        "unavailable",
        "internal",
        "unauthorized",
        "forbidden",
    ];
    /// `op` of the store metrics: the methods of the `Store` trait.
    pub const STORE_OPS: &[&str] = &[
        "append",
        "read",
        "position",
        "idempotent_offset",
        "idempotent_offsets",
        "purge_expired_keys",
        "add_members",
        "remove_members",
        "is_member",
        "members",
        "advance_markers",
        "markers",
        "conversations",
        "positions",
        "put_device",
        "remove_device",
        "device",
        "user_devices",
        "topic_devices",
    ];
    /// `kind` of [`super::STORE_ERRORS_TOTAL`] (`StoreErrorKind::label`).
    pub const STORE_ERROR_KINDS: &[&str] = &[
        "unavailable",
        "timeout",
        "conflict",
        "corrupt",
        "io",
        "locked",
    ];
    /// `limit` of [`super::LIMIT_HITS_TOTAL`]: `http_connections` (a
    /// listener's `http_max_connections`), `connection_rate` and `user_rate`
    /// (a command refused with 111), `rate_disconnect` (closed with 3013),
    /// `user_connect` (a connect refused with 111), `api_ip` / `api_key` /
    /// `sync_ip` / `sync_key` (an HTTP API request answered 429),
    /// `node_connections` / `ip_connections` / `ip_connect_rate` (an upgrade
    /// answered 503 / 429 / 429), `user_connections` (3504 at connect),
    /// `origin` (an upgrade from a browser origin not allowed: 403).
    pub const LIMITS: &[&str] = &[
        "http_connections",
        "connection_rate",
        "user_rate",
        "rate_disconnect",
        "user_connect",
        "node_connections",
        "ip_connections",
        "ip_connect_rate",
        "user_connections",
        "origin",
        "api_ip",
        "api_key",
        "sync_ip",
        "sync_key",
        "emulation_queue",
    ];
    /// `method` of [`super::API_REQUESTS_TOTAL`]; `unknown` for any other name.
    pub const API_METHODS: &[&str] = &[
        "publish",
        "broadcast",
        "history",
        "info",
        "disconnect",
        "subscribe",
        "unsubscribe",
        "refresh",
        "presence",
        "presence_stats",
        "user_status",
        "revoke_token",
        "invalidate_user_tokens",
        "add_members",
        "remove_members",
        "members",
        "conversations",
        "unread",
        "device_register",
        "device_remove",
        "device_list",
        "send_push_notification",
    ];
    /// What a request for an unknown method can get.
    pub const API_UNKNOWN_RESULTS: &[&str] =
        &["unauthorized", "method_not_found", "too_many_requests"];
    /// `kind` of [`super::NATS_PUBLISH_ERRORS_TOTAL`]: what was being
    /// published — a publication into the ingest stream, a publication on a
    /// channel subject (the writer's, or one without history), a reply (the
    /// writer's to a publisher, sync's to a request), a per-user control
    /// message.
    pub const NATS_PUBLISH_KINDS: &[&str] = &["ingest", "channel", "reply", "control", "webhook"];
    /// `type` of the webhook counters.
    pub const WEBHOOK_TYPES: &[&str] = &[
        "connected",
        "disconnected",
        "subscribed",
        "unsubscribed",
        "user_online",
        "user_offline",
        "published",
    ];
    /// `reason` of [`super::WEBHOOK_DROPPED_TOTAL`].
    pub const WEBHOOK_DROP_REASONS: &[&str] = &["queue_full", "publish_failed"];
}

/// Latency buckets (seconds): 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Lag buckets (seconds): like latency, extended to 2 minutes for the
/// metrics that include queueing (a backlog in front of the writer).
const LAG_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Batch size buckets (messages).
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// How often the upkeep thread folds histogram samples into buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The installed recorder's renderer: what `/metrics` answers.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    /// The global `role` label (of the first role installed in the process).
    role: &'static str,
}

static INSTALLED: OnceLock<Metrics> = OnceLock::new();

/// Installs the global recorder once per process (tests start many roles in
/// one process; the first one names the `role` label) and registers the
/// series `role` can produce. Returns the renderer `/metrics` uses.
pub fn install(role: impl Into<RoleParts>) -> Metrics {
    let role = role.into();
    let metrics = INSTALLED.get_or_init(|| build(role.label)).clone();
    register(role);
    metrics
}

fn build(role: &'static str) -> Metrics {
    let recorder = PrometheusBuilder::new()
        .add_global_label("role", role)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(WRITER_INGEST_LAG_SECONDS.into()), LAG_BUCKETS)
        })
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(DELIVERY_SECONDS.into()), LAG_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(FEED_LAG_SECONDS.into()), LAG_BUCKETS))
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(WRITER_RECEIVE_LAG_SECONDS.into()),
                LAG_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(WEBHOOK_DELIVERY_SECONDS.into()), LAG_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(WRITER_BATCH_SIZE.into()), SIZE_BUCKETS)
        })
        .expect("bucket lists are non-empty")
        .build_recorder();
    let handle = recorder.handle();
    // Another recorder may already be installed (e.g. by an embedding
    // application); then ours only renders what it is given.
    let _ = metrics::set_global_recorder(recorder);
    for (name, help) in HELP {
        metrics::describe_counter!(*name, *help);
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Without a scrape, histogram samples pile up until the next render:
    // fold them into their buckets regularly instead.
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("herald-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "metrics upkeep thread not started; histograms fold only when scraped");
    }
    Metrics { handle, role }
}

/// Registers at zero every series with a closed label set that `role` can
/// produce. Idempotent: counters and gauges move by 0, and a histogram is
/// registered by looking its handle up (`let _ =`).
fn register(role: RoleParts) {
    use labels::*;
    let counter = |name: &'static str| metrics::counter!(name).increment(0);
    let gauge = |name: &'static str| metrics::gauge!(name).increment(0.0);

    gauge(NATS_CONNECTED);
    counter(NATS_RECONNECTS_TOTAL);
    for kind in NATS_PUBLISH_KINDS {
        metrics::counter!(NATS_PUBLISH_ERRORS_TOTAL, "kind" => *kind).increment(0);
    }
    for limit in LIMITS {
        metrics::counter!(LIMIT_HITS_TOTAL, "limit" => *limit).increment(0);
    }

    if role.edge {
        for name in [
            CONNECTIONS,
            SUBSCRIPTIONS,
            CHANNELS,
            NATS_SUBSCRIPTIONS,
            OUTBOUND_QUEUED_BYTES,
            PRESENCE_EDGES,
        ] {
            gauge(name);
        }
        for name in [
            CONNECTS_TOTAL,
            MESSAGES_IN_TOTAL,
            MESSAGES_OUT_TOTAL,
            BYTES_IN_TOTAL,
            BYTES_OUT_TOTAL,
            SLOW_DISCONNECTS_TOTAL,
            DELTA_PATCHES_TOTAL,
            SYNC_RETRIES_TOTAL,
            PRESENCE_EVENTS_DROPPED_TOTAL,
            PRESENCE_GATHER_TIMEOUTS_TOTAL,
        ] {
            counter(name);
        }
        for code in DISCONNECT_CODES {
            metrics::counter!(DISCONNECTS_TOTAL, "code" => *code).increment(0);
        }
        for method in COMMAND_METHODS {
            for result in COMMAND_OUTCOMES.iter().chain(PROTOCOL_ERRORS) {
                metrics::counter!(COMMANDS_TOTAL, "method" => *method, "result" => *result)
                    .increment(0);
            }
        }
        for result in UNKNOWN_METHOD_ERRORS {
            metrics::counter!(COMMANDS_TOTAL, "method" => UNKNOWN_METHOD, "result" => *result)
                .increment(0);
        }
        for result in GAP_RESULTS {
            metrics::counter!(GAPS_FILLED_TOTAL, "result" => *result).increment(0);
        }
        for op in CONTROL_OPS {
            for result in CONTROL_RESULTS {
                metrics::counter!(CONTROL_TOTAL, "op" => *op, "result" => *result).increment(0);
            }
        }
        metrics::counter!(CONTROL_TOTAL, "op" => "unknown", "result" => "invalid").increment(0);
        for kind in IM_DROP_KINDS {
            metrics::counter!(EDGE_IM_DROPPED_TOTAL, "kind" => *kind).increment(0);
        }
        for source in PUBLISH_SOURCES {
            let _ = metrics::histogram!(PUBLISH_SECONDS, "source" => *source);
        }
        let _ = metrics::histogram!(DELIVERY_SECONDS);
        let _ = metrics::histogram!(PUBLISH_INGEST_ACK_SECONDS);
        let _ = metrics::histogram!(FEED_LAG_SECONDS);
        for method in API_METHODS {
            for result in std::iter::once(&"ok").chain(PROTOCOL_ERRORS) {
                metrics::counter!(API_REQUESTS_TOTAL, "method" => *method, "result" => *result)
                    .increment(0);
            }
        }
        for result in API_UNKNOWN_RESULTS {
            metrics::counter!(API_REQUESTS_TOTAL, "method" => "unknown", "result" => *result)
                .increment(0);
        }
    }

    if role.writer {
        for name in [
            WRITER_BATCHES_TOTAL,
            WRITER_SEQUENCED_TOTAL,
            WRITER_DUPLICATES_TOTAL,
            WRITER_REDELIVERIES_TOTAL,
            WRITER_FAILOVERS_TOTAL,
            WRITER_PIPELINED_TOTAL,
        ] {
            counter(name);
        }
        gauge(WRITER_PIPELINE_BATCHES);
        gauge(WRITER_PARTITIONS_OWNED);
        gauge(WRITER_PARTITIONS);
        for kind in WRITER_ERROR_KINDS {
            metrics::counter!(WRITER_ERRORS_TOTAL, "kind" => *kind).increment(0);
        }
        for event in LEASE_EVENTS {
            metrics::counter!(WRITER_LEASE_EVENTS_TOTAL, "event" => *event).increment(0);
        }
        for name in [
            WRITER_BATCH_SIZE,
            WRITER_COMMIT_SECONDS,
            WRITER_ACK_SECONDS,
            WRITER_INGEST_LAG_SECONDS,
            WRITER_RECEIVE_LAG_SECONDS,
            WRITER_LOOKUP_SECONDS,
            WRITER_PUBLISH_SECONDS,
        ] {
            let _ = metrics::histogram!(name);
        }
    }

    if role.edge || role.writer {
        for t in WEBHOOK_TYPES {
            metrics::counter!(WEBHOOK_EMITTED_TOTAL, "type" => *t).increment(0);
        }
        for reason in WEBHOOK_DROP_REASONS {
            metrics::counter!(WEBHOOK_DROPPED_TOTAL, "reason" => *reason).increment(0);
        }
    }
    if role.writer {
        for t in WEBHOOK_TYPES {
            metrics::counter!(WEBHOOK_DELIVERED_TOTAL, "type" => *t).increment(0);
            metrics::counter!(WEBHOOK_EXPIRED_TOTAL, "type" => *t).increment(0);
        }
        counter(WEBHOOK_RETRIES_TOTAL);
        let _ = metrics::histogram!(WEBHOOK_DELIVERY_SECONDS);
        let _ = metrics::histogram!(WEBHOOK_REQUEST_SECONDS);
    }

    if role.sync {
        counter(SYNC_ROWS_READ_TOTAL);
        counter(SYNC_COALESCED_TOTAL);
        for source in SYNC_SOURCES {
            let _ = metrics::histogram!(SYNC_SECONDS, "source" => *source);
            for result in SYNC_RESULTS {
                metrics::counter!(SYNC_REQUESTS_TOTAL, "source" => *source, "result" => *result)
                    .increment(0);
            }
        }
    }
}

/// Registers the store series of `backend` at zero; the metered store
/// wrapper calls it when it wraps a backend.
pub fn register_store(backend: &'static str) {
    for op in labels::STORE_OPS {
        let _ = metrics::histogram!(STORE_OPERATION_SECONDS, "op" => *op, "backend" => backend);
        for kind in labels::STORE_ERROR_KINDS {
            metrics::counter!(STORE_ERRORS_TOTAL, "op" => *op, "backend" => backend, "kind" => *kind)
                .increment(0);
        }
    }
}

/// Cached handles of the edge's per-frame metrics: looked up in the registry
/// once, then each use is one atomic operation.
pub struct EdgeIo {
    pub messages_in: Counter,
    pub bytes_in: Counter,
    pub messages_out: Counter,
    pub bytes_out: Counter,
    /// Moved up on every frame queued and down when it is written (or
    /// dropped), by every connection.
    pub queued_bytes: Gauge,
    pub delivery: Histogram,
    /// Commit → a channel feed receiving the publication.
    pub feed_lag: Histogram,
    /// A history publish → JetStream's ack.
    pub ingest_ack: Histogram,
}

/// The edge's per-frame handles. Resolved on first use, so the recorder
/// must be installed before the first connection (roles install it first).
pub fn edge_io() -> &'static EdgeIo {
    static IO: OnceLock<EdgeIo> = OnceLock::new();
    IO.get_or_init(|| EdgeIo {
        messages_in: metrics::counter!(MESSAGES_IN_TOTAL),
        bytes_in: metrics::counter!(BYTES_IN_TOTAL),
        messages_out: metrics::counter!(MESSAGES_OUT_TOTAL),
        bytes_out: metrics::counter!(BYTES_OUT_TOTAL),
        queued_bytes: metrics::gauge!(OUTBOUND_QUEUED_BYTES),
        delivery: metrics::histogram!(DELIVERY_SECONDS),
        feed_lag: metrics::histogram!(FEED_LAG_SECONDS),
        ingest_ack: metrics::histogram!(PUBLISH_INGEST_ACK_SECONDS),
    })
}

/// One unit of a gauge for as long as it lives (e.g. a NATS subscription
/// held): up when made, down when dropped, on every path.
pub struct GaugeHold(Gauge);

impl GaugeHold {
    pub fn new(gauge: Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for GaugeHold {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Microseconds since the Unix epoch: the clock of the `Herald-Committed`
/// header (0 if the clock is before 1970).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Seconds from `since_micros` (see [`unix_micros`]) to now; 0 when
/// `since_micros` is ahead (clock skew between hosts).
pub fn seconds_since(since_micros: u64) -> f64 {
    unix_micros().saturating_sub(since_micros) as f64 / 1e6
}

impl Metrics {
    /// The Prometheus text: every recorded series, then the process and
    /// tokio runtime figures read now.
    pub fn render(&self) -> String {
        let mut out = self.handle.render();
        self.render_process(&mut out);
        self.render_runtime(&mut out);
        out
    }

    /// Process figures (`metrics-process` reads them from the OS). Written
    /// here rather than recorded: `process_cpu_seconds_total` is fractional,
    /// which a `metrics` counter (an integer) cannot hold.
    fn render_process(&self, out: &mut String) {
        let p = metrics_process::collector::collect();
        let figures = [
            (PROCESS_CPU_SECONDS_TOTAL, "counter", p.cpu_seconds_total),
            (
                PROCESS_RESIDENT_MEMORY_BYTES,
                "gauge",
                p.resident_memory_bytes.map(|v| v as f64),
            ),
            (
                PROCESS_VIRTUAL_MEMORY_BYTES,
                "gauge",
                p.virtual_memory_bytes.map(|v| v as f64),
            ),
            (PROCESS_OPEN_FDS, "gauge", p.open_fds.map(|v| v as f64)),
            (PROCESS_MAX_FDS, "gauge", p.max_fds.map(|v| v as f64)),
            (
                PROCESS_START_TIME_SECONDS,
                "gauge",
                p.start_time_seconds.map(|v| v as f64),
            ),
        ];
        for (name, kind, value) in figures {
            if let Some(value) = value {
                self.write_one(out, name, kind, value);
            }
        }
    }

    /// The tokio runtime serving this scrape: its stable metrics.
    fn render_runtime(&self, out: &mut String) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let m = runtime.metrics();
        let busy: Duration = (0..m.num_workers())
            .map(|w| m.worker_total_busy_duration(w))
            .sum();
        self.write_one(out, TOKIO_WORKERS, "gauge", m.num_workers() as f64);
        self.write_one(out, TOKIO_ALIVE_TASKS, "gauge", m.num_alive_tasks() as f64);
        self.write_one(
            out,
            TOKIO_GLOBAL_QUEUE_DEPTH,
            "gauge",
            m.global_queue_depth() as f64,
        );
        self.write_one(out, TOKIO_BUSY_SECONDS_TOTAL, "counter", busy.as_secs_f64());
    }

    /// One unlabelled series (plus `role`) with its HELP and TYPE lines.
    fn write_one(&self, out: &mut String, name: &str, kind: &str, value: f64) {
        let help = HELP
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, h)| *h);
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{role=\"{}\"}} {value}\n\n",
            self.role
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::protocol::{Disconnect, ProtocolError};
    use crate::store::StoreErrorKind;

    #[test]
    fn names_are_unique_and_conventional() {
        let names: HashSet<_> = HELP.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), HELP.len(), "a name is listed twice");
        for (name, help) in HELP {
            assert!(
                name.starts_with("herald_") || name.starts_with("process_"),
                "{name}"
            );
            assert!(!help.is_empty() && !help.contains('\n'), "{name}");
        }
    }

    #[test]
    fn label_sets_cover_what_the_code_produces() {
        let errors = [
            ProtocolError::Internal,
            ProtocolError::Unauthorized,
            ProtocolError::UnknownChannel,
            ProtocolError::PermissionDenied,
            ProtocolError::MethodNotFound,
            ProtocolError::AlreadySubscribed,
            ProtocolError::LimitExceeded,
            ProtocolError::BadRequest,
            ProtocolError::NotAvailable,
            ProtocolError::TokenExpired,
            ProtocolError::Expired,
            ProtocolError::TooManyRequests,
            ProtocolError::UnrecoverablePosition,
        ];
        let labels: Vec<_> = errors.iter().map(|e| e.label()).collect();
        assert_eq!(labels, labels::PROTOCOL_ERRORS);
        // Code 100 with its own message, counted as `internal`.
        assert_eq!(ProtocolError::PublishUnconfirmed.label(), "internal");

        let kinds = [
            StoreErrorKind::Unavailable,
            StoreErrorKind::Timeout,
            StoreErrorKind::Conflict,
            StoreErrorKind::Corrupt,
            StoreErrorKind::Io,
            StoreErrorKind::Locked,
        ];
        let labels: Vec<_> = kinds.iter().map(|k| k.label()).collect();
        assert_eq!(labels, labels::STORE_ERROR_KINDS);
        for kind in labels::STORE_ERROR_KINDS {
            assert!(labels::WRITER_ERROR_KINDS.contains(&format!("store_{kind}").as_str()));
        }

        for d in [
            Disconnect::SHUTDOWN,
            Disconnect::SERVER_ERROR,
            Disconnect::EXPIRED,
            Disconnect::SUB_EXPIRED,
            Disconnect::SLOW,
            Disconnect::WRITE_ERROR,
            Disconnect::INSUFFICIENT_STATE,
            Disconnect::FORCE_RECONNECT,
            Disconnect::NO_PONG,
            Disconnect::INVALID_TOKEN,
            Disconnect::BAD_REQUEST,
            Disconnect::STALE,
            Disconnect::FORCE_NO_RECONNECT,
            Disconnect::CONNECTION_LIMIT,
            Disconnect::CHANNEL_LIMIT,
            Disconnect::MESSAGE_SIZE_LIMIT,
            Disconnect::NOT_AVAILABLE,
        ] {
            let code = d.code.to_string();
            assert!(labels::DISCONNECT_CODES.contains(&code.as_str()), "{code}");
        }
    }

    #[test]
    fn ages_never_go_negative() {
        assert_eq!(seconds_since(u64::MAX), 0.0);
        let age = seconds_since(unix_micros() - 2_000_000);
        assert!((2.0..3.0).contains(&age), "{age}");
    }
}
