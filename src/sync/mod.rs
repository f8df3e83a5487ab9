//! The sync role: read-only history by offset cursor, over HTTP for clients and
//! over NATS request/reply for edges. (Being written.)

pub mod client;
pub mod wire;

use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::config::ChannelsConfig;
use crate::store::SharedStore;

pub struct SyncService {
    pub store: SharedStore,
    pub channels: ChannelsConfig,
    pub page_limit: usize,
}

impl SyncService {
    /// HTTP routes: `GET /api/v1/channels/{channel}/publications`.
    pub fn router(self: &Arc<Self>, _verifier: Verifier) -> Router {
        Router::new()
    }

    /// Answers `subjects::SYNC` requests (queue group `sync`) until `shutdown`.
    pub async fn serve_nats(
        self: Arc<Self>,
        _client: async_nats::Client,
        shutdown: CancellationToken,
    ) -> Result<(), async_nats::SubscribeError> {
        shutdown.cancelled().await;
        Ok(())
    }
}
