//! The server HTTP API for application backends (Centrifugo-shaped). (Being written.)

use axum::Router;

use crate::bus::publisher::Publisher;
use std::sync::Arc;

use crate::config::{ChannelsConfig, Secret};
use crate::edge::Edge;
use crate::sync::client::SyncClient;

#[derive(Clone)]
pub struct ApiState {
    pub key: Option<Secret>,
    pub publisher: Publisher,
    pub sync: SyncClient,
    pub channels: ChannelsConfig,
    pub history_page_limit: usize,
    /// For `info`.
    pub edge: Arc<Edge>,
}

/// `POST /api/<method>`.
pub fn router(_state: ApiState) -> Router {
    Router::new()
}
