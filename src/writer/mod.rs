//! The writer role: the only place offsets are assigned.
//!
//! Per ingest partition, one task pulls `herald.in.<partition>` through a
//! durable consumer ([`consumer`]), sequences each batch ([`sequencer`]),
//! commits it to the store in one append, then — in this order, for I2 —
//! publishes the new publications on their channel subjects (in offset order
//! per channel), replies to the publishers and acks JetStream ([`partition`]).
//!
//! Knows nothing of sessions, HTTP or the client protocol beyond encoding a
//! publication. Which partitions this process owns is decided by the caller:
//! [`run`] takes them all; [`Writer::partition`] runs one.

mod consumer;
mod partition;
pub mod sequencer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::store::SharedStore;

/// Default time JetStream waits for a writer's ack before redelivering.
/// Long enough for a store commit; while a commit is being retried the writer
/// sends progress acks, so only a stopped writer's messages wait this long.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Default bound on the channel heads one partition task keeps cached.
pub const DEFAULT_HEAD_CACHE_CAPACITY: usize = 100_000;

#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Partitions of the ingest stream (fixed when it was created).
    pub partitions: u32,
    /// Most messages committed in one store batch; also the pull request size.
    pub batch_size: usize,
    /// Unacknowledged messages per partition consumer: bounds what a partition
    /// task holds (its batch in hand plus what the pull stream prefetched).
    pub max_ack_pending: i64,
    /// The consumers' `ack_wait` (see [`DEFAULT_ACK_WAIT`]).
    pub ack_wait: Duration,
    /// Channel heads cached per partition task; over it, the cache is cleared
    /// (see [`DEFAULT_HEAD_CACHE_CAPACITY`]).
    pub head_cache_capacity: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("invalid writer settings: {0}")]
    InvalidSettings(&'static str),
    #[error("writer task of partition {partition} panicked")]
    PartitionPanicked { partition: u32 },
}

/// What every partition task of one writer shares.
struct Shared {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    store: SharedStore,
    settings: WriterSettings,
}

/// A writer: consumes the partitions it is told to.
#[derive(Clone)]
pub struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    pub fn new(
        client: async_nats::Client,
        store: SharedStore,
        settings: WriterSettings,
    ) -> Result<Self, WriterError> {
        if settings.partitions == 0 {
            return Err(WriterError::InvalidSettings(
                "partitions must be at least 1",
            ));
        }
        if settings.batch_size == 0 {
            return Err(WriterError::InvalidSettings(
                "batch_size must be at least 1",
            ));
        }
        if settings.max_ack_pending < 1 {
            return Err(WriterError::InvalidSettings(
                "max_ack_pending must be at least 1",
            ));
        }
        let js = async_nats::jetstream::new(client.clone());
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                js,
                store,
                settings,
            }),
        })
    }

    /// Consumes `partition` until `stop` fires, then finishes the batch in
    /// hand (commit, publish, reply, ack) and returns. Transient NATS and
    /// store errors are retried inside; the future does not end on them.
    /// Spawn it; stop it with its own token to hand the partition over.
    pub fn partition(
        &self,
        partition: u32,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        partition::run(self.shared.clone(), partition, stop)
    }
}

/// Consumes every partition of the ingest stream until `shutdown` fires.
/// Returns `Ok` once every partition task has finished its batch in hand.
pub async fn run(
    client: async_nats::Client,
    store: SharedStore,
    settings: WriterSettings,
    shutdown: CancellationToken,
) -> Result<(), WriterError> {
    let partitions = settings.partitions;
    let writer = Writer::new(client, store, settings)?;
    // A panicking partition task stops the others too: the role fails loudly
    // rather than silently leaving a partition unconsumed.
    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    let mut ids = std::collections::HashMap::new();
    for p in 0..partitions {
        let handle = tasks.spawn(writer.partition(p, stop.clone()));
        ids.insert(handle.id(), p);
    }
    tracing::info!(partitions, "writer started");
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            let partition = ids.get(&e.id()).copied().unwrap_or(u32::MAX);
            tracing::error!(partition, error = %e, "writer partition task failed");
            stop.cancel();
            if result.is_ok() {
                result = Err(WriterError::PartitionPanicked { partition });
            }
        }
    }
    tracing::info!("writer stopped");
    result
}
