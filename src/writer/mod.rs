//! The writer role: the only place offsets are assigned. (Being written.)

use crate::store::SharedStore;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub partitions: u32,
    pub batch_size: usize,
    pub max_ack_pending: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("jetstream: {0}")]
    JetStream(String),
}

/// Consumes every partition of the ingest stream until `shutdown` fires.
pub async fn run(
    _client: async_nats::Client,
    _store: SharedStore,
    _settings: WriterSettings,
    shutdown: CancellationToken,
) -> Result<(), WriterError> {
    shutdown.cancelled().await;
    Ok(())
}
