//! The wire formats between publishers, the writer and edges, and the ingest
//! stream's definition.
//!
//! - An [`IngestMessage`] is what a publisher puts on `herald.in.<partition>`.
//! - A [`WriterReply`] is what the writer answers on the publisher's reply
//!   subject after the store commit.
//! - A sequenced publication on `herald.ch.<token>` is the JSON object of a
//!   protocol `Publication` (so an edge wraps it into a push without parsing),
//!   with the offset and epoch also in headers.

use async_nats::jetstream::{self, stream};
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
