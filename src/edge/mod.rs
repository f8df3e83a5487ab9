//! The edge role: client WebSockets. (Being written.)

use std::sync::Arc;

use axum::Router;

use crate::auth::Verifier;
use crate::bus::publisher::Publisher;
use crate::config::{ChannelsConfig, ClientConfig};
use crate::protocol::Disconnect;
use crate::sync::client::SyncClient;

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

pub struct Edge {}

impl Edge {
    pub fn new(
        _settings: EdgeSettings,
        _client: async_nats::Client,
        _publisher: Publisher,
        _sync: SyncClient,
        _verifier: Verifier,
    ) -> Arc<Self> {
        Arc::new(Self {})
    }

    /// `GET /connection/websocket`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
    }

    pub fn stats(&self) -> EdgeStats {
        EdgeStats::default()
    }

    /// Closes every session with `d` (shutdown).
    pub async fn close_all(&self, _d: Disconnect) {}
}
