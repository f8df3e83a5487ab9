//! The edge role: terminates client WebSockets (`GET /connection/websocket`),
//! speaks the Centrifugo protocol in JSON or Protobuf (the encoding is
//! negotiated at the upgrade and fixed for the connection) ([`session`], one file per command), keeps
//! the registry of who is connected and subscribed, by channel and by user
//! ([`registry`]), with each subscriber's position ([`subscriber`]) and one
//! NATS subscription per channel ([`feed`]), bounds every connection's
//! outbound queue ([`outbox`]), and applies the server API's per-user
//! commands arriving over NATS ([`control`]), answers presence,
//! join/leave and user status across edges ([`presence`]), and sends the
//! pushes of IM conversations (marker sync, typing, receipts, member
//! changes; [`im`]).
//!
//! HTTP-streaming and SSE run the same sessions over a streaming response,
//! the client's commands arriving through `/emulation` ([`emulation`]).
//!
//! Thin (I6): it holds connection state only. Publishes go through the
//! [`Publisher`]; every read (positions, recovery, history, gap fills) goes
//! to sync over NATS. It never opens the store.
//!
//! Graceful stop ([`Edge::close_all`]) refuses new WebSocket upgrades (503)
//! and closes the sessions evenly over `shutdown_drain`, so their reconnects
//! reach the other nodes spread out rather than all at once.

mod admission;
mod command;
pub mod control;
mod emulation;
mod feed;
pub mod im;
mod origin;
pub mod outbox;
pub mod presence;
mod rate;
mod registry;
mod session;
mod subscriber;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use self::feed::check_feed_message;
use self::feed::{FeedDeps, NatsFeeds};
use self::presence::Presence;
use self::registry::{PresenceEvent, Registry};
use crate::auth::Verifier;
use crate::bus::publisher::Publisher;
use crate::config::{ChannelsConfig, ClientConfig, PresenceConfig};
use crate::protocol::{Disconnect, Encoding};
use crate::sync::client::SyncClient;

/// How long `close_all` waits, after the drain, for sessions to finish closing.
const CLOSE_ALL_WAIT: Duration = Duration::from_secs(5);
/// How often a drain closes the next slice of sessions.
const DRAIN_TICK: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub client: ClientConfig,
    pub channels: ChannelsConfig,
    pub presence: PresenceConfig,
    /// Replicas of the status KV bucket.
    pub kv_replicas: usize,
    pub rate_limits: crate::config::RateLimits,
    pub connection_limits: crate::config::ConnectionLimits,
    pub allowed_origins: Vec<String>,
    /// Proxies to the application backend and where they are used.
    pub proxies: crate::config::ProxiesConfig,
    /// Which Web Push endpoints a device registration may name.
    pub webpush_endpoints: crate::config::WebpushEndpoints,
}

/// What `info` reports about this node.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EdgeStats {
    pub num_clients: u64,
    pub num_users: u64,
    pub num_channels: u64,
    pub num_subs: u64,
}

pub struct Edge {
    settings: EdgeSettings,
    nats: async_nats::Client,
    publisher: Publisher,
    sync: SyncClient,
    sync_timeout: Duration,
    verifier: Verifier,
    /// Who is connected and subscribed here: each session registers its
    /// connection when its WebSocket is upgraded and its subscriptions; both
    /// leave when the session drops them.
    registry: Arc<Registry>,
    /// Presence, join/leave and user status across edges.
    presence: Arc<Presence>,
    /// The registry's presence events, until `serve_presence` takes them.
    events: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<PresenceEvent>>>,
    next_session: AtomicU64,
    /// Revoked tokens (`crate::revocation`), set once at start.
    revocations: std::sync::OnceLock<Arc<crate::revocation::Revocations>>,
    /// Connection caps checked before an upgrade ([`admission`]).
    admission: admission::Admission,
    /// Command rate limits by tier ([`rate`]).
    rates: rate::Tiers,
    /// Set by `close_all`: new upgrades are refused with 503.
    closing: AtomicBool,
    /// The application backend's proxies (`crate::proxy`).
    proxies: crate::proxy::Proxies,
    /// Typing limit, receipt coalescing, written member rows ([`im`]).
    im: im::Im,
    /// Event webhooks (`crate::webhooks`), set once at start when on.
    webhooks: std::sync::OnceLock<crate::webhooks::Emitter>,
    /// Sessions over HTTP-streaming and SSE, by session id ([`emulation`]).
    emulation: emulation::Sessions,
}

impl Edge {
    /// Presence across edges, shared (the unread-aware push asks who is online).
    pub fn presence_handle(&self) -> Arc<Presence> {
        self.presence.clone()
    }

    pub fn new(
        settings: EdgeSettings,
        nats: async_nats::Client,
        publisher: Publisher,
        sync: SyncClient,
        verifier: Verifier,
        sync_timeout: Duration,
    ) -> Arc<Self> {
        let presence = Presence::new(nats.clone(), settings.presence.ttl, settings.kv_replicas);
        let (events_tx, events) = tokio::sync::mpsc::channel(presence::EVENT_QUEUE);
        let registry = Registry::new(
            Arc::new(NatsFeeds {
                deps: FeedDeps {
                    nats: nats.clone(),
                    sync: sync.clone(),
                    gap_fill_limit: settings.client.recovery_limit,
                    presence: presence.clone(),
                },
            }),
            events_tx,
        );
        let im = im::Im::new(settings.client.conversation_cache_size);
        Arc::new(Self {
            proxies: crate::proxy::Proxies::new(&settings.proxies),
            im,
            rates: rate::Tiers::new(&settings.rate_limits),
            admission: admission::Admission::new(settings.connection_limits.clone()),
            revocations: std::sync::OnceLock::new(),
            settings,
            nats,
            publisher,
            sync,
            sync_timeout,
            verifier,
            registry,
            presence,
            events: std::sync::Mutex::new(Some(events)),
            next_session: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            webhooks: std::sync::OnceLock::new(),
            emulation: emulation::Sessions::default(),
        })
    }

    /// Starts emitting event webhooks (call once, before accepting
    /// connections); the task runs until `shutdown`, then publishes what is
    /// queued.
    pub fn start_webhooks(
        &self,
        cfg: &crate::config::WebhookConfig,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (emitter, task) = crate::webhooks::Emitter::start(
            self.nats.clone(),
            cfg,
            self.presence.clone(),
            shutdown,
        );
        self.presence.set_webhooks(emitter.clone());
        let _ = self.webhooks.set(emitter);
        task
    }

    /// The event webhooks' emitter (off unless started).
    fn webhooks(&self) -> &crate::webhooks::Emitter {
        self.webhooks
            .get()
            .unwrap_or(&crate::webhooks::Emitter::OFF)
    }

    /// `GET /connection/websocket`; HTTP-streaming, SSE and their
    /// `/emulation` endpoint ([`emulation`]).
    pub fn router(self: &Arc<Self>) -> Router {
        use axum::routing::any;
        // The plain-HTTP transports answer browsers on allowed origins with
        // CORS headers (`origin::cors`); the WebSockets need none.
        let http_transports = Router::new()
            .route("/connection/http_stream", any(emulation::http_stream))
            .route("/connection/sse", any(emulation::sse))
            .route("/emulation", any(emulation::emulate))
            .route(
                "/connection/uni_http_stream",
                any(emulation::uni_http_stream),
            )
            .route("/connection/uni_sse", any(emulation::uni_sse))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                with_cors,
            ));
        Router::new()
            .route("/connection/websocket", get(upgrade))
            .route("/connection/uni_websocket", get(uni_upgrade))
            .merge(http_transports)
            .with_state(self.clone())
    }

    /// Starts answering presence queries and heartbeating (see
    /// [`presence`]); runs until `shutdown`. Call once, before accepting
    /// connections.
    pub async fn serve_presence(
        self: &Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, presence::PresenceError> {
        let events = self
            .events
            .lock()
            .expect("events lock")
            .take()
            .ok_or_else(|| presence::PresenceError::Nats("serve_presence called twice".into()))?;
        self.presence
            .serve(self.registry.clone(), events, shutdown)
            .await
    }

    /// Starts answering the `/emulation` requests other edges route to this
    /// edge's HTTP-streaming and SSE sessions; runs until `shutdown`. Call
    /// once, before accepting connections.
    pub async fn serve_emulation(
        self: &Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
        emulation::serve_routed(self.clone(), shutdown).await
    }

    /// Presence across edges, for the server API.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// Which Web Push endpoints a device registration may name.
    pub fn webpush_endpoints(&self) -> &crate::config::WebpushEndpoints {
        &self.settings.webpush_endpoints
    }

    /// Enforces these revocations from now on (set once).
    pub fn set_revocations(&self, r: Arc<crate::revocation::Revocations>) {
        let _ = self.revocations.set(r);
    }

    /// The revocations in force, for the server API.
    pub fn revocations(&self) -> Option<&Arc<crate::revocation::Revocations>> {
        self.revocations.get()
    }

    /// Whether a token of `user` with this `jti` and `iat` is revoked.
    fn revoked(&self, user: &str, jti: Option<&str>, iat: Option<u64>) -> bool {
        self.revocations
            .get()
            .is_some_and(|r| r.is_revoked(user, jti, iat))
    }

    pub fn stats(&self) -> EdgeStats {
        let (num_channels, num_subs) = self.registry.channel_counts();
        EdgeStats {
            num_clients: self.registry.num_connections(),
            num_users: self.registry.num_users(),
            num_channels,
            num_subs,
        }
    }

    /// Subscriptions to `channel` and connections of `user` on this edge,
    /// for the admin console.
    pub fn local_counts(&self, channel: Option<&str>, user: Option<&str>) -> (usize, usize) {
        (
            channel.map_or(0, |c| self.registry.subscriber_count(c)),
            user.map_or(0, |u| self.registry.targets(u, None, &[]).len()),
        )
    }

    /// Refuses new connections (503) and closes every session with `d` (e.g.
    /// 3001 shutdown, so SDKs reconnect elsewhere), spread evenly over
    /// `drain`: the i-th of n sessions at `drain * i / n`, a slice every
    /// [`DRAIN_TICK`]. A zero drain closes them all at once. Then waits a
    /// bounded time for them to finish.
    pub async fn close_all(&self, d: Disconnect, drain: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        let outboxes = self.registry.outboxes();
        let started = Instant::now();
        let mut tick = tokio::time::interval(DRAIN_TICK);
        let mut closed = 0;
        while closed < outboxes.len() {
            tick.tick().await;
            let due = due_by(outboxes.len(), drain, started.elapsed());
            for o in &outboxes[closed..due] {
                o.close(d);
            }
            closed = due;
        }
        // Sessions whose upgrade was accepted just before `closing` was set.
        for o in self.registry.outboxes() {
            o.close(d);
        }
        let waiting = Instant::now();
        while self.registry.num_connections() > 0 && waiting.elapsed() < CLOSE_ALL_WAIT {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The CORS headers of an HTTP transport's answer ([`origin::cors`]).
async fn with_cors(
    State(edge): State<Arc<Edge>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Only browsers send `Origin`: other clients pass untouched.
    if !request.headers().contains_key(axum::http::header::ORIGIN) {
        return next.run(request).await;
    }
    let asked = request.headers().clone();
    let mut response = next.run(request).await;
    origin::cors(
        &edge.settings.allowed_origins,
        &asked,
        response.headers_mut(),
    );
    response
}

/// How many of `n` sessions closed evenly over `drain` are due `elapsed`
/// into it: the i-th (from 0) at `drain * i / n`.
fn due_by(n: usize, drain: Duration, elapsed: Duration) -> usize {
    if drain.is_zero() || elapsed >= drain {
        return n;
    }
    let past = elapsed.as_nanos() * n as u128 / drain.as_nanos();
    usize::try_from(past).map_or(n, |p| p.saturating_add(1).min(n))
}

async fn upgrade(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade_as(edge, peer, headers, query, ws, None)
}

/// `GET /connection/uni_websocket`: the unidirectional WebSocket, JSON only;
/// its `ConnectRequest` in `cf_connect` or else the first message.
async fn uni_upgrade(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let connect = query.as_deref().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "cf_connect")
            .map(|(_, v)| bytes::Bytes::from(v.into_owned()))
    });
    upgrade_as(edge, peer, headers, None, ws, Some(connect))
}

/// The upgrade of either WebSocket endpoint; `uni` as `session::run` takes it.
fn upgrade_as(
    edge: Arc<Edge>,
    peer: std::net::SocketAddr,
    headers: axum::http::HeaderMap,
    query: Option<String>,
    ws: WebSocketUpgrade,
    uni: Option<Option<bytes::Bytes>>,
) -> Response {
    if edge.closing.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if !origin::allowed(&edge.settings.allowed_origins, &headers) {
        metrics::counter!(crate::metrics::LIMIT_HITS_TOTAL, "limit" => "origin").increment(1);
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let ip = edge.admission.client_ip(peer, &headers);
    let admitted = match edge.admission.admit(ip) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    let limit = edge.settings.client.message_size_limit;
    let id = edge.next_session.fetch_add(1, Ordering::Relaxed);
    let forwarded = edge.proxies.forwarded_headers(&headers);
    // tungstenite's default read buffer is 128 KiB, kept for the connection's
    // life; `client_read_buffer_size` (1 KiB) keeps idle connections cheap.
    let read_buffer = edge.settings.client.read_buffer_size;
    // As Centrifugo: the `centrifuge-protobuf` subprotocol (or
    // `format=protobuf` in the query) selects the binary encoding.
    // The unidirectional WebSocket is JSON only.
    let ws = if uni.is_none() {
        ws.protocols(Encoding::SUBPROTOCOLS)
    } else {
        ws
    };
    let encoding = Encoding::negotiate(
        ws.selected_protocol().and_then(|p| p.to_str().ok()),
        query.as_deref(),
    );
    ws.read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_write_buffer_size(
            edge.settings
                .client
                .queue_max_bytes
                .saturating_mul(2)
                .max(read_buffer),
        )
        // Frames up to twice the limit are read and refused with a close
        // code; past that tungstenite stops reading (memory bound).
        .max_message_size(limit.saturating_mul(2))
        .max_frame_size(limit.saturating_mul(2))
        .on_upgrade(move |socket| async move {
            let _admitted = admitted;
            session::run(edge, socket, id, encoding, forwarded, uni).await
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_spreads_closes_evenly() {
        let drain = Duration::from_secs(1);
        let ms = Duration::from_millis;
        assert_eq!(due_by(20, drain, ms(0)), 1);
        assert_eq!(due_by(20, drain, ms(49)), 1);
        assert_eq!(due_by(20, drain, ms(50)), 2);
        assert_eq!(due_by(20, drain, ms(500)), 11);
        assert_eq!(due_by(20, drain, ms(950)), 20);
        assert_eq!(due_by(20, drain, ms(2000)), 20);
        assert_eq!(due_by(1, drain, ms(0)), 1);
        assert_eq!(due_by(0, drain, ms(0)), 0);
        assert_eq!(due_by(1000, Duration::ZERO, ms(0)), 1000);
    }
}
