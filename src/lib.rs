//! Herald: a real-time push and IM server speaking the Centrifugo client
//! protocol v2, with durable, dense, gap-free per-channel history.
//!
//! Codemap (see ARCHITECTURE.md for the invariants):
//! - [`config`]: every option, layered file < env < flags.
//! - [`protocol`]: Centrifugo wire types and codec; no I/O.
//! - [`auth`]: client JWTs (HS256, RS/ES/EdDSA), [`jwks`]: JWK Set cache,
//!   [`tokens`]: the verifier from config. [`channel`]: names and permissions.
//! - [`secrets`]: private files in the data dir, URL redaction.
//! - [`bus`]: NATS — subjects, ingest stream, publisher, child nats-server.
//! - [`edge`]: WebSocket sessions, the registry (by channel and by user), per-channel NATS feeds, outbox.
//! - [`writer`]: assigns offsets, commits batches, publishes, acks.
//! - [`sync`]: history reads over HTTP and NATS request/reply.
//! - [`api`]: the server HTTP API.
//! - [`proxy`]: Centrifugo-compatible HTTP proxies to the application backend.
//! - [`webhooks`]: durable event webhooks (emit, the events stream, the dispatcher).
//! - [`push`]: offline push notifications: the device registry.
//! - [`store`]: the `Store` trait, its contract suite, the embedded backend.
//! - [`http_limit`]: per-IP and per-credential request rates of the HTTP APIs (429).
//! - [`http_client`]: the connector of outbound HTTP(S) clients (proxies, webhooks, push).
//! - [`http_server`]: serves a router with header-read/idle timeouts and a connection cap.
//! - [`revocation`]: revoked tokens in a NATS KV bucket, watched by every edge.
//! - [`roles`]: wires the roles of one process together.
//! - [`metrics`]: metric names and the Prometheus recorder.
//! - [`telemetry`]: the tracing subscriber, OTLP span export, trace context in headers.
//! - [`limits`]: the open-file limit, raised at start.
//! - `fuzzing`: the entry points of the fuzz targets (`fuzz/`) and their corpus replay.
//!
//! The protocol client the tests use (`crates/herald-client`) and the load
//! generator (`crates/herald-bench`) are crates of their own.

pub mod api;
pub mod auth;
pub mod bus;
pub mod channel;
pub mod config;
pub mod edge;
#[doc(hidden)]
pub mod fuzzing;
pub mod http_client;
pub mod http_limit;
pub mod http_server;
pub mod jwks;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod push;
pub mod revocation;
pub mod roles;
pub mod secrets;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod web;
pub mod webhooks;
pub mod writer;
