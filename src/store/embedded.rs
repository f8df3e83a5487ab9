//! The embedded store: fjall (an LSM tree) in the data dir. (Being written.)

use std::path::Path;

use async_trait::async_trait;

use super::*;

pub struct EmbeddedStore {}

impl EmbeddedStore {
    pub fn open(_dir: &Path, _options: StoreOptions) -> StoreResult<Self> {
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "not yet written",
        ))
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn append(&self, _batch: &[ChannelAppend]) -> StoreResult<()> {
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "not yet written",
        ))
    }
    async fn read(&self, _channel: &str, _range: ReadRange) -> StoreResult<Vec<StoredPublication>> {
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "not yet written",
        ))
    }
    async fn position(&self, _channel: &str) -> StoreResult<Position> {
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "not yet written",
        ))
    }
    async fn idempotent_offset(&self, _channel: &str, _key: &str) -> StoreResult<Option<u64>> {
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "not yet written",
        ))
    }
    async fn purge_expired_keys(&self) -> StoreResult<u64> {
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "not yet written",
        ))
    }
}
