//! Durable history: the `Store` trait every backend implements, its types and
//! error kinds, and the contract suite all backends must pass.
//!
//! The store does not assign offsets (the writer's sequencer does) and does not
//! know NATS or the protocol. It keeps, per channel, publications keyed by a
//! dense offset, the channel's head and epoch, and idempotency keys. It refuses
//! a batch that would not continue a channel densely from its head, which makes
//! a second writer (or a stale retry) fail loudly instead of corrupting I1.
//!
//! For IM conversations (`im`) it also keeps channel memberships, each
//! user's read / delivered markers per channel and each user's conversation
//! set; it does not decide who may set them (the edge does).
//!
//! For push notifications (`device`) it keeps registered devices by id, by
//! user and by topic; it does not know providers or per-user limits.

pub mod contract;
pub mod device;
pub mod embedded;
pub mod im;
pub mod metered;
pub mod scylla;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use device::{Device, Provider};
pub use im::{Conversation, Markers, Standing};

/// A stored publication. `data` and `info` are raw JSON as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPublication {
    pub offset: u64,
    pub data: Bytes,
    /// A `ClientInfo` JSON object, when a client published.
    pub info: Option<Bytes>,
    /// Milliseconds since the Unix epoch at which the writer sequenced it.
    pub time_ms: u64,
}

/// The head (last offset, 0 when empty) and epoch of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    pub head: u64,
    pub epoch: String,
    /// `time_ms` of the head publication (0 when empty), stored by `append`
    /// in the same write as the head.
    pub time_ms: u64,
}

/// The epoch of a channel that has no publication yet: 8 hex digits of
/// SHA-256 over the store's identity and the channel name.
///
/// As Centrifugo, an empty history channel answers `subscribe` and `history`
/// with an epoch, and the channel keeps it when its first publication is
/// stored. Herald's readers never write, so the epoch is not created by the
/// first read but follows from what the reader and the writer both know: the
/// channel's name and the identity of the store (fixed when the store was
/// created; a store created anew, e.g. after its data was lost, has another
/// one, so clients positioned in the old one see a new epoch).
pub fn initial_epoch(store_identity: &str, channel: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(store_identity.as_bytes());
    hash.update([0]);
    hash.update(channel.as_bytes());
    hash.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Everything one writer batch stores for one channel.
#[derive(Debug, Clone)]
pub struct ChannelAppend {
    pub channel: String,
    /// The channel's epoch, never empty; fixed by the writer when the first
    /// publication is stored, and the same on every later append.
    pub epoch: String,
    /// Contiguous offsets, the first being the stored head + 1. Never empty;
    /// a channel may appear more than once in a batch if each entry continues
    /// the one before it.
    pub publications: Vec<StoredPublication>,
    /// Idempotency keys of these publications, with the offset each got
    /// (an offset inside `publications`).
    pub idempotency_keys: Vec<(String, u64)>,
}

/// Which part of a channel to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRange {
    /// Only offsets strictly greater than this (0 = from the start).
    pub after: u64,
    /// Only offsets strictly smaller than this (`None` = up to the head).
    pub before: Option<u64>,
    pub limit: usize,
    /// `Forward` starts just after `after` going up; `Backward` starts just
    /// below `before` (or at the head) going down.
    pub direction: Direction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// The kinds of store failure callers branch on: `Unavailable` and `Timeout`
/// are worth retrying; `Conflict` means the batch does not continue the
/// channel (another writer, or a stale head) and must not be retried as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    Unavailable,
    Timeout,
    Conflict,
    Corrupt,
    Io,
    /// Another process holds the store (embedded store: its directory lock).
    Locked,
}

impl StoreErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Conflict => "conflict",
            Self::Corrupt => "corrupt",
            Self::Io => "io",
            Self::Locked => "locked",
        }
    }

    pub fn retryable(self) -> bool {
        matches!(self, Self::Unavailable | Self::Timeout | Self::Io)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("store {}: {message}", kind.label())]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a whole batch atomically and durably (fsync or the configured
    /// consistency) before returning. Fails with `Conflict`, storing nothing,
    /// if any channel's first offset is not its stored head + 1 or its epoch
    /// differs from the stored one. A backend shared by several processes
    /// (ScyllaDB) is atomic per channel: when a concurrent writer takes one
    /// of the batch's channels mid-append, that channel gets nothing and the
    /// others may be stored while `append` returns `Conflict` (the writer
    /// re-sequences; the idempotency keys make what was stored duplicates).
    async fn append(&self, batch: &[ChannelAppend]) -> StoreResult<()>;

    /// Whether appends are applied in the order their futures are first
    /// polled, each checked against the heads the earlier ones leave, so a
    /// caller may issue an append that continues one still in flight (the
    /// writer's pipeline): the embedded store's single committer queue does.
    /// When `false` (the default; ScyllaDB, whose appends run concurrently)
    /// a caller waits for an append to finish before issuing one that
    /// continues it, or it would meet `Conflict`.
    fn ordered_appends(&self) -> bool {
        false
    }

    /// Reads at most `range.limit` publications of a channel in the given
    /// range and direction; an unknown channel reads empty.
    async fn read(&self, channel: &str, range: ReadRange) -> StoreResult<Vec<StoredPublication>>;

    /// Head and epoch; for an unknown channel `head == 0` and its
    /// [`initial_epoch`] under this store's identity, so an empty channel
    /// already has the epoch its first publication will be stored with (the
    /// writer sequences with the epoch this returns).
    async fn position(&self, channel: &str) -> StoreResult<Position>;

    /// The offset stored under (channel, key), if the key is younger than the
    /// retention.
    async fn idempotent_offset(&self, channel: &str, key: &str) -> StoreResult<Option<u64>>;

    /// [`Store::idempotent_offset`] of many (channel, key) pairs, answered in
    /// their order: what the writer asks once per batch. The default asks
    /// them one by one, concurrently; a backend that can answer them in one
    /// go overrides it.
    async fn idempotent_offsets(&self, keys: &[(&str, &str)]) -> StoreResult<Vec<Option<u64>>> {
        futures::future::try_join_all(
            keys.iter()
                .map(|(channel, key)| self.idempotent_offset(channel, key)),
        )
        .await
    }

    /// Removes idempotency keys older than the retention. Called periodically.
    async fn purge_expired_keys(&self) -> StoreResult<u64>;

    /// Adds members; idempotent. Each added user's row becomes `Member` (from
    /// nothing, `Participant` or `Removed`, markers kept), updated_ms = now_ms.
    /// Returns the users that were not members before, in input order.
    async fn add_members(
        &self,
        channel: &str,
        users: &[&str],
        now_ms: u64,
    ) -> StoreResult<Vec<String>>;

    /// Removes members; idempotent. Their rows become `Removed` (updated_ms =
    /// now_ms, markers kept); a user who is not a member keeps their row as
    /// it is. Returns the users that were members before, in input order.
    async fn remove_members(
        &self,
        channel: &str,
        users: &[&str],
        now_ms: u64,
    ) -> StoreResult<Vec<String>>;

    async fn is_member(&self, channel: &str, user: &str) -> StoreResult<bool>;

    /// Current members sorted by user id, strictly after `after` ("" = from
    /// the start), at most `limit`, each with their markers.
    async fn members(
        &self,
        channel: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, Markers)>>;

    /// Moves the user's markers forward ([`Markers::advanced`]: read :=
    /// max(read, given read), delivered := max(delivered, given delivered,
    /// new read)). Never moves back, also under concurrent calls from several
    /// processes. The caller has already clamped to the channel's head. Puts
    /// the channel into the user's conversation set as `Participant` when the
    /// user has no row there; updates updated_ms only when a marker moved (or
    /// the row is new). Returns the markers after the call and whether they
    /// changed.
    async fn advance_markers(
        &self,
        user: &str,
        channel: &str,
        read: u64,
        delivered: u64,
        now_ms: u64,
    ) -> StoreResult<(Markers, bool)>;

    /// The user's markers in a channel (zero when none).
    async fn markers(&self, user: &str, channel: &str) -> StoreResult<Markers>;

    /// The user's whole conversation set (every standing), any order.
    async fn conversations(&self, user: &str) -> StoreResult<Vec<Conversation>>;

    /// Positions of many channels in their order; the default asks
    /// [`Store::position`] for each, concurrently.
    async fn positions(&self, channels: &[&str]) -> StoreResult<Vec<Position>> {
        futures::future::try_join_all(channels.iter().map(|c| self.position(c))).await
    }

    /// Stores a device by id (insert or replace), keeping the by-user and
    /// by-topic views in step: a device moved to another user or other
    /// topics leaves the old ones. Returns the row it replaced.
    async fn put_device(&self, device: &Device) -> StoreResult<Option<Device>>;

    /// Removes a device from every view; returns the row removed.
    async fn remove_device(&self, id: &str) -> StoreResult<Option<Device>>;

    async fn device(&self, id: &str) -> StoreResult<Option<Device>>;

    /// The user's devices by id, strictly after `after` ("" = from the
    /// start), at most `limit`.
    async fn user_devices(&self, user: &str, after: &str, limit: usize)
    -> StoreResult<Vec<Device>>;

    /// The devices subscribed to `topic` by id, strictly after `after`, at
    /// most `limit`.
    async fn topic_devices(
        &self,
        topic: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<Device>>;
}

pub type SharedStore = Arc<dyn Store>;

/// A point inside a backend's `append` where an [`AppendHook`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendStep {
    /// The batch's channels were read and checked; nothing is written yet.
    HeadsRead,
    /// Publications and idempotency keys are written; the heads are not.
    KeysWritten,
    /// Everything is committed; `append` has not returned yet (an error
    /// injected here is a write that timed out but was applied).
    Committed,
}

/// Test-only: called at each [`AppendStep`] of an append by a backend that
/// accepts one (ScyllaDB: `ScyllaStore::with_append_hook`). It may pause (a
/// writer stalled mid-append) or return an error (a failure injected at that
/// point, which the append returns). Production code never sets one; the cost
/// without one is a `None` check per step.
pub type AppendHook =
    Arc<dyn Fn(AppendStep) -> futures::future::BoxFuture<'static, StoreResult<()>> + Send + Sync>;

/// Settings every backend shares.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub idempotency_retention: Duration,
}
