//! The writer role: the only place offsets are assigned.
//!
//! Per ingest partition, one task pulls `herald.in.<partition>` through a
//! durable consumer ([`consumer`]), sequences each batch ([`sequencer`]),
//! commits it to the store in one append, then — in this order, for I2 —
//! publishes the new publications on their channel subjects (in offset order
//! per channel), replies to the publishers and acks JetStream ([`partition`]).
//! Up to `pipeline_depth` batches of a partition are in flight at once: the
//! next is sequenced and its append issued while the one before is being
//! committed; they complete strictly in order.
//!
//! While a partition runs, [`pending`] polls its consumer's backlog for the
//! metrics.
//!
//! Which partitions an instance runs is decided by [`ownership`]: leases in
//! a NATS KV bucket split the partitions evenly among the live instances
//! (I8). [`run`] is the role's entry point; [`Writer::partition`] runs one
//! partition behind a [`Fence`] (the store's head check, not the lease, is
//! what keeps I1 when two tasks overlap).
//!
//! With event webhooks on (`crate::webhooks::WriterHooks`), each batch's
//! new publications become `published` events before the ack, and the task
//! of partition 0 runs the webhook dispatcher beside it (one dispatcher for
//! the whole deployment, failing over with the partition's lease).
//!
//! Knows nothing of sessions, HTTP or the client protocol beyond encoding a
//! publication.

mod consumer;
mod ownership;
mod partition;
mod pending;
pub mod sequencer;

pub use partition::check_ingest;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::SharedStore;

/// Default time JetStream waits for a writer's ack before redelivering.
/// Long enough for a store commit; while a commit is being retried the writer
/// sends progress acks, so only a stopped writer's messages wait this long.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Default bound on the channel heads one partition task keeps cached.
pub const DEFAULT_HEAD_CACHE_CAPACITY: usize = 100_000;
/// Shortest `failover_timeout` accepted: leases are renewed every third of
/// it, and each renewal is a JetStream round trip.
pub const MIN_FAILOVER_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Partitions of the ingest stream (fixed when it was created).
    pub partitions: u32,
    /// Most messages committed in one store batch; also the pull request size.
    pub batch_size: usize,
    /// Batches one partition task holds between sequencing and acking (the
    /// pipeline, see [`partition`]); 1 = one batch at a time.
    pub pipeline_depth: usize,
    /// Unacknowledged messages per partition consumer: bounds what a partition
    /// task holds (its batch in hand plus what the pull stream prefetched).
    pub max_ack_pending: i64,
    /// The consumers' `ack_wait` (see [`DEFAULT_ACK_WAIT`]).
    pub ack_wait: Duration,
    /// Channel heads cached per partition task; over it, the cache is cleared
    /// (see [`DEFAULT_HEAD_CACHE_CAPACITY`]).
    pub head_cache_capacity: usize,
    /// Lease time of a partition: a writer that stops renewing (crash,
    /// network loss) loses its partitions after this, and another writer
    /// takes them over (see [`ownership`]).
    pub failover_timeout: Duration,
    /// Replicas of the writers' KV bucket (`nats_kv_replicas`).
    pub kv_replicas: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("invalid writer settings: {0}")]
    InvalidSettings(&'static str),
    #[error("writer task of partition {partition} panicked")]
    PartitionPanicked { partition: u32 },
}

/// Until when a partition task may commit: the local expiry of its lease,
/// moved forward by each renewal and to "now" when the lease is lost. The
/// task checks it right before every store append.
#[derive(Debug, Clone)]
pub struct Fence(watch::Receiver<Instant>);

impl Fence {
    /// A fence open until the instant last sent on `expiry`.
    pub fn new(expiry: watch::Receiver<Instant>) -> Self {
        Self(expiry)
    }

    pub fn is_open(&self) -> bool {
        Instant::now() < *self.0.borrow()
    }
}

/// What every partition task of one writer shares.
struct Shared {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    store: SharedStore,
    settings: WriterSettings,
    /// Event webhooks: `published` events, the dispatcher (partition 0).
    webhooks: Option<crate::webhooks::WriterHooks>,
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
        if settings.pipeline_depth == 0 {
            return Err(WriterError::InvalidSettings(
                "pipeline_depth must be at least 1",
            ));
        }
        if settings.max_ack_pending < 1 {
            return Err(WriterError::InvalidSettings(
                "max_ack_pending must be at least 1",
            ));
        }
        if settings.failover_timeout < MIN_FAILOVER_TIMEOUT {
            return Err(WriterError::InvalidSettings(
                "failover_timeout must be at least 1s",
            ));
        }
        metrics::gauge!(crate::metrics::WRITER_PARTITIONS).set(settings.partitions);
        let js = async_nats::jetstream::new(client.clone());
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                js,
                store,
                settings,
                webhooks: None,
            }),
        })
    }

    /// Consumes `partition` until `stop` fires, then finishes the batches in
    /// hand (commit, publish, reply, ack) and returns. Commits only while
    /// `fence` is open; a batch meeting a closed fence is handed back (naked).
    /// Transient NATS and store errors are retried inside; the future does
    /// not end on them. Spawn it; stop it with its own token to hand the
    /// partition over.
    pub fn partition(
        &self,
        partition: u32,
        stop: CancellationToken,
        fence: Fence,
    ) -> impl Future<Output = ()> + Send + 'static {
        let dispatcher = (partition == 0)
            .then(|| self.shared.webhooks.as_ref())
            .flatten()
            .map(|w| w.dispatcher(stop.clone()));
        let run = partition::run(self.shared.clone(), partition, stop, fence);
        async move {
            match dispatcher {
                Some(d) => {
                    tokio::join!(run, d);
                }
                None => run.await,
            }
        }
    }
}

/// A read-only view of one writer instance (tests, diagnostics).
#[derive(Debug, Clone)]
pub struct WriterHandle {
    id: Arc<str>,
    owned: watch::Receiver<BTreeSet<u32>>,
}

impl WriterHandle {
    /// The instance's id: its member key and the value of its leases.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The partitions the instance runs a task for now: from acquiring a
    /// partition's lease until its task has ended after the lease was lost or
    /// released (a releasing task finishes its batch in hand first).
    pub fn owned(&self) -> BTreeSet<u32> {
        self.owned.borrow().clone()
    }
}

/// One writer instance: takes part in partition ownership and consumes the
/// partitions it holds leases on.
pub struct WriterInstance {
    writer: Writer,
    id: Arc<str>,
    /// Published after every change of the running partition tasks; the
    /// receivers are [`WriterHandle`]s.
    owned: watch::Sender<BTreeSet<u32>>,
}

impl WriterInstance {
    pub fn new(
        client: async_nats::Client,
        store: SharedStore,
        settings: WriterSettings,
    ) -> Result<Self, WriterError> {
        Ok(Self {
            writer: Writer::new(client, store, settings)?,
            id: Arc::from(uuid::Uuid::new_v4().simple().to_string()),
            owned: watch::Sender::new(BTreeSet::new()),
        })
    }

    /// Emits `published` events and dispatches events beside partition 0
    /// (call before `run`).
    pub fn with_webhooks(mut self, hooks: Option<crate::webhooks::WriterHooks>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.writer.shared) {
            shared.webhooks = hooks;
        }
        self
    }

    pub fn handle(&self) -> WriterHandle {
        WriterHandle {
            id: self.id.clone(),
            owned: self.owned.subscribe(),
        }
    }

    /// Runs until `shutdown` fires: joins the writers' group, holds leases on
    /// a fair share of the partitions and consumes them. On shutdown, stops
    /// every partition (each finishes its batch in hand), releases the leases
    /// and leaves the group, then returns `Ok`. Transient NATS errors never
    /// end it; a panicking partition task does (after the same cleanup), so
    /// the role fails loudly rather than silently leaving a partition
    /// unconsumed.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WriterError> {
        ownership::run(self.writer, self.id, self.owned, shutdown).await
    }
}

/// The writer role: one [`WriterInstance`] until `shutdown` fires.
pub async fn run(
    client: async_nats::Client,
    store: SharedStore,
    settings: WriterSettings,
    shutdown: CancellationToken,
) -> Result<(), WriterError> {
    WriterInstance::new(client, store, settings)?
        .run(shutdown)
        .await
}
