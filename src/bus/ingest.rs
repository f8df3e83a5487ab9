//! The wire formats between publishers, the writer and edges, and the ingest
//! stream's definition.
//!
//! - An [`IngestMessage`] is what a publisher puts on `herald.in.<partition>`.
//! - A [`WriterReply`] is what the writer answers on the publisher's reply
//!   subject after the store commit; a [`StoredBatch`] carries one batch's
//!   answers to one publishing process in one message instead.
//! - A sequenced publication on `herald.ch.<token>` is the JSON object of a
//!   protocol `Publication` (so an edge wraps it into a push without parsing),
//!   with the offset and epoch also in headers.

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::subjects;
use crate::config::IngestConfig;

#[derive(Debug, Serialize, Deserialize)]
pub struct IngestMessage {
    pub channel: String,
    pub data: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    /// Idempotency key: the API's `idempotency_key`, or generated.
    pub key: String,
}

/// The writer's answer to one publish.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WriterReply {
    Stored { offset: u64, epoch: String },
    Failed { message: String },
}

/// One writer batch's `Stored` answers to one publishing process, sent on
/// its [`subjects::batch_reply_subject`] after the commit (I2): one NATS
/// message per publisher per batch instead of one per publication. Binary:
/// a version byte (1), then per publication its reply token (u64 LE), offset
/// (u64 LE), the epoch's length (u16 LE) and the epoch's bytes. Refusals
/// (`Failed`) still go one by one as [`WriterReply`]s: they are rare.
#[derive(Debug, Clone, Default)]
pub struct StoredBatch {
    buf: Vec<u8>,
}

const STORED_BATCH_VERSION: u8 = 1;

impl StoredBatch {
    pub fn push(&mut self, token: u64, offset: u64, epoch: &str) {
        if self.buf.is_empty() {
            self.buf.push(STORED_BATCH_VERSION);
        }
        // An epoch is a few bytes (`sequencer::new_epoch`); a longer one
        // read from a store is cut rather than framed wrongly.
        let epoch = &epoch.as_bytes()[..epoch.len().min(usize::from(u16::MAX))];
        self.buf.extend_from_slice(&token.to_le_bytes());
        self.buf.extend_from_slice(&offset.to_le_bytes());
        self.buf
            .extend_from_slice(&(epoch.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(epoch);
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn into_bytes(self) -> Bytes {
        Bytes::from(self.buf)
    }

    /// The (token, offset, epoch) of each publication in a batch's payload,
    /// in order; `None` if the payload is not a whole, non-empty batch.
    pub fn decode(payload: &[u8]) -> Option<Vec<(u64, u64, &str)>> {
        let (&version, mut rest) = payload.split_first()?;
        if version != STORED_BATCH_VERSION || rest.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(rest.len() / 26);
        while !rest.is_empty() {
            let (token, r) = rest.split_first_chunk::<8>()?;
            let (offset, r) = r.split_first_chunk::<8>()?;
            let (len, r) = r.split_first_chunk::<2>()?;
            let len = usize::from(u16::from_le_bytes(*len));
            if r.len() < len {
                return None;
            }
            let (epoch, r) = r.split_at(len);
            out.push((
                u64::from_le_bytes(*token),
                u64::from_le_bytes(*offset),
                std::str::from_utf8(epoch).ok()?,
            ));
            rest = r;
        }
        Some(out)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamSetupError {
    #[error("jetstream: {0}")]
    JetStream(String),
    #[error(
        "stream {stream} was created with {found} partitions but ingest_partitions is {configured}; \
         the partition count is fixed when the stream is created"
    )]
    PartitionMismatch {
        stream: &'static str,
        found: u32,
        configured: u32,
    },
}

/// Creates the ingest stream if missing, checks its partition count otherwise
/// and brings its replica count to `ingest_replicas`.
///
/// Work-queue retention: a message leaves the stream when the writer acks it
/// (after the store commit), so `max_bytes` bounds only what the writer has not
/// yet stored, and `DiscardPolicy::New` turns a full stream into publish
/// errors (backpressure) rather than silently dropping old messages.
pub async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &IngestConfig,
) -> Result<stream::Stream, StreamSetupError> {
    let config = stream::Config {
        name: subjects::INGEST_STREAM.to_string(),
        subjects: vec![subjects::ingest_wildcard().to_string()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        max_bytes: cfg.max_bytes,
        duplicate_window: cfg.duplicate_window,
        num_replicas: cfg.replicas,
        metadata: [(
            subjects::PARTITIONS_METADATA_KEY.to_string(),
            cfg.partitions.to_string(),
        )]
        .into_iter()
        .collect(),
        description: Some("Herald ingest: publications waiting for the writer".into()),
        ..Default::default()
    };
    let mut stream = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| StreamSetupError::JetStream(e.to_string()))?;
    let info = stream
        .info()
        .await
        .map_err(|e| StreamSetupError::JetStream(e.to_string()))?;
    let found = info
        .config
        .metadata
        .get(subjects::PARTITIONS_METADATA_KEY)
        .and_then(|v| v.parse::<u32>().ok());
    match found {
        Some(found) if found != cfg.partitions => {
            return Err(StreamSetupError::PartitionMismatch {
                stream: subjects::INGEST_STREAM,
                found,
                configured: cfg.partitions,
            });
        }
        _ => {}
    }
    if info.config.num_replicas != cfg.replicas {
        // JetStream moves a stream to a new replica count in place (the
        // cluster must have that many nodes); its messages stay.
        let mut config = info.config.clone();
        tracing::info!(
            stream = subjects::INGEST_STREAM,
            from = info.config.num_replicas,
            to = cfg.replicas,
            "changing the ingest stream's replicas (ingest_replicas)"
        );
        config.num_replicas = cfg.replicas;
        js.update_stream(config)
            .await
            .map_err(|e| StreamSetupError::JetStream(e.to_string()))?;
        stream = js
            .get_stream(subjects::INGEST_STREAM)
            .await
            .map_err(|e| StreamSetupError::JetStream(e.to_string()))?;
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_batch_round_trips() {
        let mut batch = StoredBatch::default();
        assert!(batch.is_empty());
        batch.push(7, 1, "ab12cd34");
        batch.push(u64::MAX, 42, "");
        batch.push(9, u64::MAX, "é");
        let bytes = batch.into_bytes();
        assert_eq!(
            StoredBatch::decode(&bytes).unwrap(),
            [(7, 1, "ab12cd34"), (u64::MAX, 42, ""), (9, u64::MAX, "é")]
        );
    }

    #[test]
    fn a_damaged_stored_batch_is_refused() {
        let mut batch = StoredBatch::default();
        batch.push(7, 1, "ab12cd34");
        let bytes = batch.into_bytes();
        for cut in 0..bytes.len() {
            assert!(StoredBatch::decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut other_version = bytes.to_vec();
        other_version[0] = 2;
        assert!(StoredBatch::decode(&other_version).is_none());
        let mut bad_utf8 = bytes.to_vec();
        *bad_utf8.last_mut().unwrap() = 0xff;
        assert!(StoredBatch::decode(&bad_utf8).is_none());
    }
}
