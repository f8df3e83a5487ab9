//! The edge role: terminates client WebSockets (`GET /connection/websocket`),
//! speaks the Centrifugo protocol ([`session`]), keeps the hub of local
//! subscribers ([`hub`]) with one NATS subscription per channel ([`feed`]),
//! and bounds every connection's outbound queue ([`outbox`]).
//!
//! Thin (I6): it holds connection state only. Publishes go through the
//! [`Publisher`]; every read (positions, recovery, history, gap fills) goes
//! to sync over NATS. It never opens the store.

mod feed;
pub mod hub;
pub mod outbox;
mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use self::feed::FeedDeps;
use self::hub::{Hub, SessionId};
use self::outbox::Outbox;
use crate::auth::Verifier;
use crate::bus::publisher::Publisher;
use crate::config::{ChannelsConfig, ClientConfig};
use crate::protocol::Disconnect;
use crate::sync::client::SyncClient;

/// The WebSocket read buffer per connection. tungstenite's default is
/// 128 KiB; a few KiB keeps idle connections cheap.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// How long `close_all` waits for sessions to finish closing.
const CLOSE_ALL_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub client: ClientConfig,
    pub channels: ChannelsConfig,
}

/// What `info` reports about this node.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EdgeStats {
    pub num_clients: u64,
    pub num_users: u64,
    pub num_channels: u64,
    pub num_subs: u64,
}

struct SessionEntry {
    outbox: Arc<Outbox>,
    user: Option<String>,
}

pub struct Edge {
    settings: EdgeSettings,
    publisher: Publisher,
    sync: SyncClient,
    sync_timeout: Duration,
    verifier: Verifier,
    hub: Arc<Hub>,
    /// Live sessions: added when a WebSocket is upgraded, removed by the
    /// session when it ends. Used for `info` and graceful shutdown.
    sessions: Mutex<HashMap<SessionId, SessionEntry>>,
    next_session: AtomicU64,
    /// Set by `close_all`: new upgrades are refused with 503.
    closing: AtomicBool,
}

impl Edge {
    pub fn new(
        settings: EdgeSettings,
        nats: async_nats::Client,
        publisher: Publisher,
        sync: SyncClient,
        verifier: Verifier,
        sync_timeout: Duration,
    ) -> Arc<Self> {
        let hub = Hub::new(FeedDeps {
            nats,
            sync: sync.clone(),
            gap_fill_limit: settings.client.recovery_limit,
        });
        Arc::new(Self {
            settings,
            publisher,
            sync,
            sync_timeout,
            verifier,
            hub,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            closing: AtomicBool::new(false),
        })
    }

    /// `GET /connection/websocket`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/connection/websocket", get(upgrade))
            .with_state(self.clone())
    }

    pub fn stats(&self) -> EdgeStats {
        let (num_clients, num_users) = {
            let sessions = self.sessions.lock().expect("sessions lock");
            let users: std::collections::HashSet<&str> = sessions
                .values()
                .filter_map(|s| s.user.as_deref())
                .collect();
            (sessions.len() as u64, users.len() as u64)
        };
        let (num_channels, num_subs) = self.hub.counts();
        EdgeStats {
            num_clients,
            num_users,
            num_channels,
            num_subs,
        }
    }

    /// Refuses new connections and closes every session with `d` (e.g. 3001
    /// shutdown, so SDKs reconnect elsewhere); waits a bounded time for them
    /// to finish.
    pub async fn close_all(&self, d: Disconnect) {
        self.closing.store(true, Ordering::SeqCst);
        let outboxes: Vec<Arc<Outbox>> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .values()
            .map(|s| s.outbox.clone())
            .collect();
        for o in outboxes {
            o.close(d);
        }
        let started = Instant::now();
        while !self.sessions.lock().expect("sessions lock").is_empty()
            && started.elapsed() < CLOSE_ALL_WAIT
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn register(&self, id: SessionId, outbox: Arc<Outbox>) {
        self.sessions
            .lock()
            .expect("sessions lock")
            .insert(id, SessionEntry { outbox, user: None });
    }

    fn set_user(&self, id: SessionId, user: &str) {
        if let Some(s) = self.sessions.lock().expect("sessions lock").get_mut(&id) {
            s.user = Some(user.to_string());
        }
    }

    fn unregister(&self, id: SessionId) {
        self.sessions.lock().expect("sessions lock").remove(&id);
    }
}

async fn upgrade(State(edge): State<Arc<Edge>>, ws: WebSocketUpgrade) -> Response {
    if edge.closing.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let limit = edge.settings.client.message_size_limit;
    let id = edge.next_session.fetch_add(1, Ordering::Relaxed);
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(
            edge.settings
                .client
                .queue_max_bytes
                .saturating_mul(2)
                .max(READ_BUFFER_BYTES),
        )
        // Frames up to twice the limit are read and refused with a close
        // code; past that tungstenite stops reading (memory bound).
        .max_message_size(limit.saturating_mul(2))
        .max_frame_size(limit.saturating_mul(2))
        .on_upgrade(move |socket| session::run(edge, socket, id))
}
