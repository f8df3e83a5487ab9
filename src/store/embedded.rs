//! The embedded store: fjall (an LSM tree) in one directory of the data dir.
//! The key layout and the reasons for it are in `schema/README.md`.
//!
//! Owns the byte encoding of keys and values and the check that a batch
//! continues each channel densely from its stored head (I1). Appends are group
//! committed by one committer thread: the `append` calls that arrive while a
//! commit is being fsynced queue up, and the next commit takes all of them as
//! one fjall write batch with one fsync; each call returns only after the
//! fsync that made its batch durable (I2), and fjall makes a batch readable
//! only after that. A batch that fails its check fails alone. Reads are
//! snapshot range scans that stop after `limit` items.
//!
//! History retention frees space ([`EmbeddedStore::start_expiry`]): a
//! background thread wakes every `store_expiry_interval` and runs one pass
//! that deletes, per channel whose namespace has a `history_retention`, the
//! publications whose `time_ms` is older than it (oldest first, stopping at
//! the first one still kept: time does not decrease with the offset), then
//! the idempotency keys older than `idempotency_retention`. A channel's
//! head stays, so offsets stay dense and keep counting; reads return what is
//! left. A publication's row carries its idempotency key, so the pass deletes
//! the key with the publication (when the key still points at it): in a
//! namespace with a `history_retention` a key answers for at most that long,
//! and a retry arriving after its publication expired is stored again as a
//! new publication at a new offset (history then holds that one copy; a
//! subscriber that received the first copy live receives the second too).
//! Within JetStream's `ingest_duplicate_window` (a namespace whose retention
//! is shorter than that window) such a retry is dropped by JetStream as a
//! duplicate and its offset lookup finds no key: the publish times out (code
//! 100) until the window has passed.
//! Bounded work per pass: at most [`EXPIRY_CHANNELS_PER_PASS`] channels
//! visited and [`EXPIRY_PER_PASS`] publications deleted (in write batches of
//! [`PURGE_CHUNK`], each under the write lock); the next pass resumes where
//! this one stopped. Once [`COMPACT_AFTER`] publications were deleted since
//! the last compaction, the pass flushes the memtables and runs a major
//! compaction of the publications, which is what gives the bytes back to the
//! file system at fjall's next memtable flush (a deletion is a tombstone
//! until then); that rewrite costs
//! O(size of the kept history) and happens at most once per pass.
//!
//! Does not know who assigns offsets, NATS or the protocol. fjall locks the
//! directory, so a second process opening it fails with `Unavailable`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use tokio::sync::oneshot;

use crate::config::ChannelsConfig;

use super::{
    ChannelAppend, Conversation, Device, Direction, Markers, Position, ReadRange, Store,
    StoreError, StoreErrorKind, StoreOptions, StoreResult, StoredPublication,
};

mod device;
mod im;

/// Version byte leading every value this module writes, so a later layout can
/// be told apart from this one.
const VALUE_V1: u8 = 1;
/// Version byte of a publication value carrying its idempotency key: a
/// binary that knows only v1 refuses it as corrupt instead of reading the
/// key as data.
const VALUE_V2: u8 = 2;
/// Version byte of a channel head value that carries the head's `time_ms`.
const POSITION_V2: u8 = 2;
/// Flag bit in a v1 publication value: an info length and info follow the time.
const HAS_INFO: u8 = 1;
/// Flag bit in a v2 publication value: a key length and the publication's
/// idempotency key follow (after the info), so expiry can delete the key.
const HAS_KEY: u8 = 2;
/// Expired idempotency keys deleted per write batch by `purge_expired_keys`,
/// so a purge never holds the write lock (and stalls appends) for long.
const PURGE_CHUNK: usize = 1024;
/// Channels an expiry pass visits at most; the next pass resumes after the
/// last one visited.
pub const EXPIRY_CHANNELS_PER_PASS: usize = 10_000;
/// Publications an expiry pass deletes at most.
pub const EXPIRY_PER_PASS: u64 = 200_000;
/// Deleted publications after which a pass compacts the publications.
pub const COMPACT_AFTER: u64 = 50_000;
/// First allocation for a read; `limit` may be far larger than what is stored.
const READ_PREALLOC: usize = 1024;

const MESSAGES: &str = "messages";
const CHANNELS: &str = "channels";
const KEYS: &str = "idempotency";
const KEYS_BY_TIME: &str = "idempotency_by_time";
const MEMBERS: &str = "members";
const CONVERSATIONS: &str = "conversations";
const DEVICES: &str = "push_devices";
const USER_DEVICES: &str = "push_user_devices";
const TOPIC_DEVICES: &str = "push_topic_devices";
const META: &str = "meta";
/// The key in `meta` of the store's identity ([`super::initial_epoch`]).
const IDENTITY_KEY: &[u8] = b"identity";

/// The fjall-backed `Store`. Cheap to share behind an `Arc`; dropping it
/// stops the committer (after the commit in hand), closes the database and
/// releases the directory lock.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    /// Appends for the committer. The queue holds at most one job per
    /// `append` call being awaited (the writer has at most
    /// `writer_pipeline_depth` per partition).
    commits: Option<mpsc::Sender<Job>>,
    committer: Option<JoinHandle<()>>,
    /// Membership and marker changes for the IM committer (`im`), and its
    /// thread. At most one job per call being awaited.
    im_commits: Option<mpsc::Sender<im::Job>>,
    im_committer: Option<JoinHandle<()>>,
    /// The expiry thread and the sender whose drop stops it.
    expiry: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

/// What one expiry pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryPass {
    pub channels_visited: usize,
    pub publications_deleted: u64,
    /// Idempotency keys deleted with their expired publications.
    pub keys_deleted: u64,
    pub keys_purged: u64,
    pub compacted: bool,
}

/// One `append` call waiting for a group commit.
type Job = (Vec<Prepared>, oneshot::Sender<StoreResult<()>>);

struct Inner {
    db: Database,
    /// escaped channel ++ offset (u64 BE) -> publication.
    messages: Keyspace,
    /// channel (raw UTF-8) -> head and epoch.
    channels: Keyspace,
    /// escaped channel ++ key -> offset and stored-at time.
    keys: Keyspace,
    /// stored-at ms (u64 BE) ++ escaped channel ++ key -> empty; the purge index.
    keys_by_time: Keyspace,
    /// escaped channel ++ user -> empty: current members (`im`).
    members: Keyspace,
    /// escaped user ++ channel -> standing, markers, updated_ms (`im`).
    conversations: Keyspace,
    /// device id -> device (`device`).
    devices: Keyspace,
    /// escaped user ++ device id -> empty (`device`).
    user_devices: Keyspace,
    /// escaped topic ++ device id -> empty (`device`).
    topic_devices: Keyspace,
    /// Held by a device put or remove from its read to its commit; only
    /// inside `spawn_blocking`.
    device_lock: Mutex<()>,
    /// Random, written once when the store is created (keyspace `meta`):
    /// the epochs of empty channels follow from it.
    identity: String,
    retention: Duration,
    /// Held by a group commit from reading the heads to the fsync, and by
    /// each purge chunk, so no write slips between a check and its commit.
    /// Only taken on the committer thread or inside `spawn_blocking`, never
    /// across an `.await`.
    write_lock: Mutex<()>,
    /// Where the next expiry pass starts in the `channels` keyspace, and the
    /// publications deleted since the last compaction.
    expiry_state: Mutex<(Vec<u8>, u64)>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. Blocks while fjall recovers its
    /// journal; call it at startup.
    pub fn open(dir: &Path, options: StoreOptions) -> StoreResult<Self> {
        let db = Database::builder(dir).open().map_err(|e| match e {
            fjall::Error::Locked => StoreError::new(
                StoreErrorKind::Locked,
                format!(
                    "{} is locked: another Herald process holds this store",
                    dir.display()
                ),
            ),
            e => map_err(&format!("opening {}", dir.display()), e),
        })?;
        let open_keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| map_err(&format!("opening keyspace {name} in {}", dir.display()), e))
        };
        let identity = identity(&db, &open_keyspace(META)?)
            .map_err(|e| map_err(&format!("the store identity in {}", dir.display()), e))?;
        let inner = Arc::new(Inner {
            identity,
            messages: open_keyspace(MESSAGES)?,
            channels: open_keyspace(CHANNELS)?,
            keys: open_keyspace(KEYS)?,
            keys_by_time: open_keyspace(KEYS_BY_TIME)?,
            members: open_keyspace(MEMBERS)?,
            conversations: open_keyspace(CONVERSATIONS)?,
            devices: open_keyspace(DEVICES)?,
            user_devices: open_keyspace(USER_DEVICES)?,
            topic_devices: open_keyspace(TOPIC_DEVICES)?,
            device_lock: Mutex::new(()),
            db,
            retention: options.idempotency_retention,
            write_lock: Mutex::new(()),
            expiry_state: Mutex::new((Vec::new(), 0)),
        });
        let (commits, jobs) = mpsc::channel();
        let committer = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("herald-store-commit".into())
                .spawn(move || inner.commit_loop(&jobs))
                .map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Unavailable,
                        format!("starting the store's committer thread: {e}"),
                    )
                })?
        };
        let (im_commits, im_jobs) = mpsc::channel();
        let im_committer = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("herald-store-im".into())
                .spawn(move || inner.im_loop(&im_jobs))
                .map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Unavailable,
                        format!("starting the store's IM committer thread: {e}"),
                    )
                })?
        };
        tracing::info!(dir = %dir.display(), "embedded store open");
        Ok(Self {
            inner,
            commits: Some(commits),
            committer: Some(committer),
            im_commits: Some(im_commits),
            im_committer: Some(im_committer),
            expiry: None,
        })
    }

    /// Starts the background expiry thread: one [`EmbeddedStore::expire`]
    /// pass every `interval` with `channels`' history retentions, until the
    /// store is dropped (the drop waits for a pass in hand, compaction
    /// included). Without it nothing is deleted (keys still stop answering
    /// after `idempotency_retention`, and reads stop serving expired history).
    pub fn start_expiry(
        &mut self,
        channels: ChannelsConfig,
        interval: Duration,
    ) -> StoreResult<()> {
        let (stop, stopped) = mpsc::channel::<()>();
        let inner = Arc::clone(&self.inner);
        let thread = std::thread::Builder::new()
            .name("herald-store-expiry".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    match inner.expire(&channels) {
                        Ok(pass) => tracing::debug!(?pass, "store expiry pass"),
                        Err(e) => tracing::warn!(error = %e, "store expiry pass failed"),
                    }
                }
            })
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Unavailable,
                    format!("starting the store's expiry thread: {e}"),
                )
            })?;
        self.expiry = Some((stop, thread));
        Ok(())
    }

    /// One expiry pass now (what the background thread runs).
    pub async fn expire(&self, channels: ChannelsConfig) -> StoreResult<ExpiryPass> {
        self.blocking(move |inner| inner.expire(&channels)).await
    }

    /// Flushes every memtable into tables and waits (tests measure the
    /// tables with it).
    pub async fn flush(&self) -> StoreResult<()> {
        self.blocking(Inner::flush).await
    }

    /// Bytes the store's tables and journal take on disk, as fjall counts them.
    pub fn disk_space(&self) -> StoreResult<u64> {
        self.inner
            .db
            .disk_space()
            .map_err(|e| map_err("measuring disk space", e))
    }

    /// Queues a membership or marker change for the IM committer and waits
    /// for the fsync that made it durable.
    async fn im_change(&self, op: im::Op) -> StoreResult<im::Done> {
        let stopped = || {
            StoreError::new(
                StoreErrorKind::Unavailable,
                "the store's IM committer stopped",
            )
        };
        let (done, result) = oneshot::channel();
        self.im_commits
            .as_ref()
            .ok_or_else(stopped)?
            .send((op, done))
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// Runs blocking fjall work off the async runtime.
    async fn blocking<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Unavailable,
                    format!("store task failed: {e}"),
                )
            })?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn append(&self, batch: &[ChannelAppend]) -> StoreResult<()> {
        let prepared = prepare(batch)?;
        if prepared.is_empty() {
            return Ok(());
        }
        let stopped =
            || StoreError::new(StoreErrorKind::Unavailable, "the store's committer stopped");
        let (done, result) = oneshot::channel();
        self.commits
            .as_ref()
            .ok_or_else(stopped)?
            .send((prepared, done))
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// The batch is queued for the committer at the first poll, before any
    /// await, and the committer checks queued batches in queue order.
    fn ordered_appends(&self) -> bool {
        true
    }

    async fn read(&self, channel: &str, range: ReadRange) -> StoreResult<Vec<StoredPublication>> {
        let channel = channel.to_owned();
        self.blocking(move |inner| inner.read(&channel, range))
            .await
    }

    async fn position(&self, channel: &str) -> StoreResult<Position> {
        let channel = channel.to_owned();
        self.blocking(move |inner| {
            let value = inner
                .db
                .snapshot()
                .get(&inner.channels, channel.as_bytes())
                .map_err(|e| map_err("reading a channel head", e))?;
            match value {
                Some(v) => decode_position(&v).ok_or_else(|| corrupt_position(&channel)),
                None => Ok(inner.empty_position(&channel)),
            }
        })
        .await
    }

    async fn idempotent_offset(&self, channel: &str, key: &str) -> StoreResult<Option<u64>> {
        let mut found = self.idempotent_offsets(&[(channel, key)]).await?;
        Ok(found.pop().flatten())
    }

    /// One blocking call and one snapshot for the whole batch: the writer
    /// asks once per batch, and a hand-off to a blocking thread per key cost
    /// more than the lookups.
    async fn idempotent_offsets(&self, keys: &[(&str, &str)]) -> StoreResult<Vec<Option<u64>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<Vec<u8>> = keys
            .iter()
            .map(|(channel, key)| key_key(channel, key))
            .collect();
        self.blocking(move |inner| {
            let snapshot = inner.db.snapshot();
            let cutoff = expiry_cutoff(now_ms(), inner.retention);
            wanted
                .iter()
                .map(|primary| {
                    let value = snapshot
                        .get(&inner.keys, primary)
                        .map_err(|e| map_err("reading an idempotency key", e))?;
                    let Some(value) = value else { return Ok(None) };
                    let (offset, stored_at) = decode_key_value(&value).ok_or_else(|| {
                        StoreError::new(
                            StoreErrorKind::Corrupt,
                            format!(
                                "undecodable idempotency key {:?}",
                                String::from_utf8_lossy(primary)
                            ),
                        )
                    })?;
                    Ok((stored_at > cutoff).then_some(offset))
                })
                .collect()
        })
        .await
    }

    async fn purge_expired_keys(&self) -> StoreResult<u64> {
        let purged = self.blocking(Inner::purge_expired_keys).await?;
        tracing::debug!(purged, "idempotency keys purged");
        Ok(purged)
    }

    async fn add_members(
        &self,
        channel: &str,
        users: &[&str],
        now_ms: u64,
    ) -> StoreResult<Vec<String>> {
        let op = im::Op::Add {
            channel: channel.to_owned(),
            users: users.iter().map(|u| (*u).to_owned()).collect(),
            now_ms,
        };
        match self.im_change(op).await? {
            im::Done::Users(users) => Ok(users),
            im::Done::Markers(..) => Err(mismatched()),
        }
    }

    async fn remove_members(
        &self,
        channel: &str,
        users: &[&str],
        now_ms: u64,
    ) -> StoreResult<Vec<String>> {
        let op = im::Op::Remove {
            channel: channel.to_owned(),
            users: users.iter().map(|u| (*u).to_owned()).collect(),
            now_ms,
        };
        match self.im_change(op).await? {
            im::Done::Users(users) => Ok(users),
            im::Done::Markers(..) => Err(mismatched()),
        }
    }

    async fn is_member(&self, channel: &str, user: &str) -> StoreResult<bool> {
        let (channel, user) = (channel.to_owned(), user.to_owned());
        self.blocking(move |inner| inner.is_member(&channel, &user))
            .await
    }

    async fn members(
        &self,
        channel: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, Markers)>> {
        let (channel, after) = (channel.to_owned(), after.to_owned());
        self.blocking(move |inner| inner.members(&channel, &after, limit))
            .await
    }

    async fn advance_markers(
        &self,
        user: &str,
        channel: &str,
        read: u64,
        delivered: u64,
        now_ms: u64,
    ) -> StoreResult<(Markers, bool)> {
        let op = im::Op::Advance {
            user: user.to_owned(),
            channel: channel.to_owned(),
            read,
            delivered,
            now_ms,
        };
        match self.im_change(op).await? {
            im::Done::Markers(markers, moved) => Ok((markers, moved)),
            im::Done::Users(_) => Err(mismatched()),
        }
    }

    async fn markers(&self, user: &str, channel: &str) -> StoreResult<Markers> {
        let (user, channel) = (user.to_owned(), channel.to_owned());
        self.blocking(move |inner| inner.markers(&user, &channel))
            .await
    }

    async fn conversations(&self, user: &str) -> StoreResult<Vec<Conversation>> {
        let user = user.to_owned();
        self.blocking(move |inner| inner.conversations(&user)).await
    }

    async fn put_device(&self, device: &Device) -> StoreResult<Option<Device>> {
        let device = device.clone();
        self.blocking(move |inner| inner.put_device(&device)).await
    }

    async fn remove_device(&self, id: &str) -> StoreResult<Option<Device>> {
        let id = id.to_owned();
        self.blocking(move |inner| inner.remove_device(&id)).await
    }

    async fn device(&self, id: &str) -> StoreResult<Option<Device>> {
        let id = id.to_owned();
        self.blocking(move |inner| inner.device(&id)).await
    }

    async fn user_devices(
        &self,
        user: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<Device>> {
        let (user, after) = (user.to_owned(), after.to_owned());
        self.blocking(move |inner| inner.indexed_devices(false, &user, &after, limit))
            .await
    }

    async fn topic_devices(
        &self,
        topic: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<Device>> {
        let (topic, after) = (topic.to_owned(), after.to_owned());
        self.blocking(move |inner| inner.indexed_devices(true, &topic, &after, limit))
            .await
    }

    /// One blocking call and one snapshot for all of them.
    async fn positions(&self, channels: &[&str]) -> StoreResult<Vec<Position>> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let channels: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        self.blocking(move |inner| {
            let snapshot = inner.db.snapshot();
            channels
                .iter()
                .map(|channel| {
                    let value = snapshot
                        .get(&inner.channels, channel.as_bytes())
                        .map_err(|e| map_err("reading a channel head", e))?;
                    match value {
                        Some(v) => decode_position(&v).ok_or_else(|| corrupt_position(channel)),
                        None => Ok(inner.empty_position(channel)),
                    }
                })
                .collect()
        })
        .await
    }
}

/// The store's identity: read from `meta`, or created (random, persisted
/// before use) when the store is new.
fn identity(db: &Database, meta: &Keyspace) -> Result<String, fjall::Error> {
    if let Some(v) = db.snapshot().get(meta, IDENTITY_KEY)? {
        return Ok(String::from_utf8_lossy(&v).into_owned());
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    meta.insert(IDENTITY_KEY, id.as_bytes())?;
    db.persist(fjall::PersistMode::SyncAll)?;
    Ok(id)
}

impl Inner {
    /// The position of a channel never stored: head 0, its initial epoch.
    fn empty_position(&self, channel: &str) -> Position {
        Position {
            epoch: super::initial_epoch(&self.identity, channel),
            ..Position::default()
        }
    }
}

/// The IM committer answered a call with another call's kind of result.
fn mismatched() -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        "the IM committer answered with the wrong kind of result",
    )
}

impl Drop for EmbeddedStore {
    /// Stops the committer once the queue is empty and waits for it, so the
    /// directory lock is free when this returns (a reopen in the same
    /// process succeeds). Blocks for at most the commit in hand.
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.expiry.take() {
            drop(stop);
            if thread.join().is_err() {
                tracing::error!("the store's expiry thread panicked");
            }
        }
        drop(self.commits.take());
        if let Some(committer) = self.committer.take()
            && committer.join().is_err()
        {
            tracing::error!("the store's committer thread panicked");
        }
        drop(self.im_commits.take());
        if let Some(committer) = self.im_committer.take()
            && committer.join().is_err()
        {
            tracing::error!("the store's IM committer thread panicked");
        }
    }
}

impl Inner {
    /// The committer thread: waits for an append, takes every other one
    /// queued meanwhile, commits them as one group and answers each. Ends
    /// when the store is dropped. A panic inside a commit fails that group's
    /// calls (`Unavailable`) and the thread carries on.
    fn commit_loop(&self, jobs: &mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let (batches, waiters): (Vec<_>, Vec<_>) =
                std::iter::once(first).chain(jobs.try_iter()).unzip();
            let n = batches.len();
            let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.commit_group(batches)
            }))
            .unwrap_or_else(|_| {
                tracing::error!("a group commit panicked; its appends failed");
                (0..n)
                    .map(|_| {
                        Err(StoreError::new(
                            StoreErrorKind::Unavailable,
                            "the group commit failed unexpectedly",
                        ))
                    })
                    .collect()
            });
            for (waiter, result) in waiters.into_iter().zip(results) {
                // A caller that gave up no longer waits; its batch stands.
                let _ = waiter.send(result);
            }
        }
    }

    /// Checks every batch against the stored heads (and the heads the
    /// batches before it in this group leave), then writes the batches that
    /// passed as one fjall batch with one fsync. Returns each batch's result,
    /// in order.
    fn commit_group(&self, batches: Vec<Vec<Prepared>>) -> Vec<StoreResult<()>> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut heads: HashMap<String, Position> = HashMap::new();
        let mut results = Vec::with_capacity(batches.len());
        let mut accepted = Vec::with_capacity(batches.len());
        for prepared in batches {
            match self.check(&prepared, &heads) {
                Ok(moved) => {
                    heads.extend(moved);
                    results.push(Ok(()));
                    accepted.push(prepared);
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if accepted.is_empty() {
            return results;
        }
        let stored_at = now_ms();
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        for p in accepted.iter().flatten() {
            for (key, value) in &p.rows {
                batch.insert(&self.messages, key.as_slice(), value.as_slice());
            }
            for (primary, offset) in &p.keys {
                batch.insert(
                    &self.keys,
                    primary.as_slice(),
                    encode_key_value(*offset, stored_at),
                );
                batch.insert(
                    &self.keys_by_time,
                    key_time_key(stored_at, primary),
                    Vec::new(),
                );
            }
        }
        for (channel, pos) in &heads {
            batch.insert(&self.channels, channel.as_bytes(), encode_position(pos));
        }
        if let Err(e) = batch.commit().map_err(|e| map_err("committing a batch", e)) {
            // Nothing of the group was written: every batch that passed its
            // check fails with the commit's error.
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(StoreError::new(e.kind, e.message.clone()));
            }
        }
        results
    }

    /// Checks that one batch continues each of its channels densely from the
    /// head it has (`group` first: what earlier batches of this commit leave;
    /// then the stored head). Returns the heads the batch leaves, or the
    /// conflict; `group` is not changed.
    fn check(
        &self,
        prepared: &[Prepared],
        group: &HashMap<String, Position>,
    ) -> StoreResult<HashMap<String, Position>> {
        // A channel may appear more than once in one batch.
        let mut heads: HashMap<String, Position> = HashMap::new();
        for p in prepared {
            let stored = match heads.get(&p.channel).or_else(|| group.get(&p.channel)) {
                Some(pos) => Some(pos.clone()),
                None => self.stored_position(&p.channel)?,
            };
            match stored {
                None if p.first != 1 => {
                    return Err(conflict(format!(
                        "channel {:?} is new but the batch starts at offset {}",
                        p.channel, p.first
                    )));
                }
                Some(pos) if pos.epoch != p.epoch => {
                    return Err(conflict(format!(
                        "channel {:?} has epoch {:?}, the batch has {:?}",
                        p.channel, pos.epoch, p.epoch
                    )));
                }
                Some(pos) if Some(p.first) != pos.head.checked_add(1) => {
                    return Err(conflict(format!(
                        "channel {:?} has head {}, the batch starts at offset {}",
                        p.channel, pos.head, p.first
                    )));
                }
                _ => {}
            }
            heads.insert(
                p.channel.clone(),
                Position {
                    head: p.last,
                    epoch: p.epoch.clone(),
                    time_ms: p.last_time_ms,
                },
            );
        }
        Ok(heads)
    }

    fn stored_position(&self, channel: &str) -> StoreResult<Option<Position>> {
        let value = self
            .channels
            .get(channel.as_bytes())
            .map_err(|e| map_err("reading a channel head", e))?;
        value
            .map(|v| decode_position(&v).ok_or_else(|| corrupt_position(channel)))
            .transpose()
    }

    fn read(&self, channel: &str, range: ReadRange) -> StoreResult<Vec<StoredPublication>> {
        let Some(low) = range.after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let high = match range.before {
            Some(before) if before <= low => return Ok(Vec::new()),
            Some(before) => before - 1,
            None => u64::MAX,
        };
        if range.limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = channel_prefix(channel);
        let start = message_key(&prefix, low);
        let end = message_key(&prefix, high);
        let iter = self.db.snapshot().range(&self.messages, start..=end);
        let iter: Box<dyn Iterator<Item = fjall::Guard>> = match range.direction {
            Direction::Forward => Box::new(iter),
            Direction::Backward => Box::new(iter.rev()),
        };
        let mut out = Vec::with_capacity(range.limit.min(READ_PREALLOC));
        for guard in iter.take(range.limit) {
            let (key, value) = guard
                .into_inner()
                .map_err(|e| map_err("reading publications", e))?;
            let publication = key
                .get(prefix.len()..)
                .and_then(|suffix| <[u8; 8]>::try_from(suffix).ok())
                .and_then(|offset| decode_publication(u64::from_be_bytes(offset), &value))
                .ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Corrupt,
                        format!("undecodable publication in channel {channel:?}"),
                    )
                })?;
            out.push(publication);
        }
        Ok(out)
    }

    fn flush(&self) -> StoreResult<()> {
        for keyspace in [
            &self.messages,
            &self.channels,
            &self.keys,
            &self.keys_by_time,
            &self.members,
            &self.conversations,
        ] {
            keyspace
                .rotate_memtable_and_wait()
                .map_err(|e| map_err("flushing a memtable", e))?;
        }
        Ok(())
    }

    /// One expiry pass (see the module docs for its bounds).
    fn expire(&self, channels: &ChannelsConfig) -> StoreResult<ExpiryPass> {
        self.expire_bounded(channels, EXPIRY_CHANNELS_PER_PASS, EXPIRY_PER_PASS)
    }

    /// [`Inner::expire`] with its bounds given (the unit tests use small ones).
    fn expire_bounded(
        &self,
        channels: &ChannelsConfig,
        max_channels: usize,
        max_deleted: u64,
    ) -> StoreResult<ExpiryPass> {
        let mut pass = ExpiryPass::default();
        let any_retention = channels.default.history_retention.is_some()
            || channels
                .namespaces
                .values()
                .any(|n| n.history_retention.is_some());
        if any_retention {
            let start = self
                .expiry_state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .0
                .clone();
            let now = now_ms();
            let mut next = Vec::new();
            for guard in self.db.snapshot().range(&self.channels, start..) {
                let name = guard.key().map_err(|e| map_err("scanning channels", e))?;
                if pass.channels_visited >= max_channels {
                    next = name.to_vec();
                    break;
                }
                pass.channels_visited += 1;
                let Ok(channel) = std::str::from_utf8(&name) else {
                    continue;
                };
                let Some(retention) = crate::channel::history_retention_of(channel, channels)
                else {
                    continue;
                };
                let (publications, keys) = self.expire_channel(
                    channel,
                    expiry_cutoff(now, retention),
                    max_deleted - pass.publications_deleted,
                )?;
                pass.publications_deleted += publications;
                pass.keys_deleted += keys;
                if pass.publications_deleted >= max_deleted {
                    // This channel may have more: the next pass starts here.
                    next = name.to_vec();
                    break;
                }
            }
            let since_compaction = {
                let mut state = self
                    .expiry_state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                state.0 = next;
                state.1 += pass.publications_deleted;
                state.1
            };
            if since_compaction >= COMPACT_AFTER {
                self.compact()?;
                self.expiry_state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .1 = 0;
                pass.compacted = true;
            }
        }
        pass.keys_purged = self.purge_expired_keys()?;
        Ok(pass)
    }

    /// Deletes the publications of `channel` stored at or before `cutoff`
    /// (ms), oldest first, at most `budget`, and each one's idempotency key
    /// while it still points at that publication; returns how many of each.
    fn expire_channel(&self, channel: &str, cutoff: u64, budget: u64) -> StoreResult<(u64, u64)> {
        let prefix = channel_prefix(channel);
        let (start, end) = (message_key(&prefix, 0), message_key(&prefix, u64::MAX));
        let mut deleted = 0u64;
        let mut keys_deleted = 0u64;
        loop {
            let _guard = self
                .write_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut batch = self.db.batch();
            let mut in_batch = 0usize;
            let mut reached_kept = false;
            let room = usize::try_from(budget - deleted)
                .unwrap_or(usize::MAX)
                .min(PURGE_CHUNK);
            for guard in self
                .db
                .snapshot()
                .range(&self.messages, start.as_slice()..=end.as_slice())
                .take(room)
            {
                let (key, value) = guard
                    .into_inner()
                    .map_err(|e| map_err("scanning publications", e))?;
                let time_ms = value
                    .get(2..10)
                    .and_then(|t| <[u8; 8]>::try_from(t).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| {
                        StoreError::new(
                            StoreErrorKind::Corrupt,
                            format!("undecodable publication in channel {channel:?}"),
                        )
                    })?;
                if time_ms > cutoff {
                    reached_kept = true;
                    break;
                }
                if let Some(idempotency_key) = publication_key(&value) {
                    let offset = key
                        .get(prefix.len()..)
                        .and_then(|o| <[u8; 8]>::try_from(o).ok())
                        .map(u64::from_be_bytes);
                    let primary = key_key(channel, idempotency_key);
                    // Under the write lock: no commit stores this key again
                    // between the read and the delete.
                    let stored = self
                        .keys
                        .get(&primary)
                        .map_err(|e| map_err("reading an idempotency key", e))?
                        .as_deref()
                        .and_then(decode_key_value);
                    if let Some((key_offset, stored_at)) = stored
                        && Some(key_offset) == offset
                    {
                        batch.remove(&self.keys_by_time, key_time_key(stored_at, &primary));
                        batch.remove(&self.keys, primary);
                        keys_deleted += 1;
                    }
                }
                batch.remove(&self.messages, key);
                in_batch += 1;
            }
            if in_batch > 0 {
                batch
                    .commit()
                    .map_err(|e| map_err("deleting expired publications", e))?;
            }
            deleted += in_batch as u64;
            if reached_kept || in_batch < room || deleted >= budget {
                return Ok((deleted, keys_deleted));
            }
        }
    }

    /// Flushes every memtable (so the journal can go) and rewrites the
    /// publications without what was deleted.
    ///
    /// The journal is fjall's: segments of 64 MB (sparse files), sealed ones
    /// removed once every memtable they hold is flushed, at most fjall's
    /// `max_journaling_size` (512 MiB) in all; expiry frees the tables. The
    /// files of the tables a compaction replaced are removed at fjall's next
    /// memtable flush (after the next writes).
    fn compact(&self) -> StoreResult<()> {
        self.flush()?;
        self.messages
            .major_compact()
            .map_err(|e| map_err("compacting publications", e))
    }

    fn purge_expired_keys(&self) -> StoreResult<u64> {
        let cutoff = expiry_cutoff(now_ms(), self.retention);
        let end = cutoff.saturating_add(1).to_be_bytes();
        let mut purged = 0u64;
        loop {
            let _guard = self
                .write_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut batch = self.db.batch();
            let mut seen = 0usize;
            for guard in self
                .db
                .snapshot()
                .range(&self.keys_by_time, ..end.as_slice())
                .take(PURGE_CHUNK)
            {
                seen += 1;
                let time_key = guard
                    .key()
                    .map_err(|e| map_err("scanning idempotency keys", e))?;
                let primary = time_key.get(8..).unwrap_or_default();
                // The key may have been stored again later; only an entry at
                // least as old as the cutoff goes.
                let current = self
                    .keys
                    .get(primary)
                    .map_err(|e| map_err("reading an idempotency key", e))?;
                let expired = current.as_deref().is_some_and(|v| {
                    decode_key_value(v).is_none_or(|(_, stored_at)| stored_at <= cutoff)
                });
                if expired {
                    batch.remove(&self.keys, primary);
                    purged += 1;
                }
                batch.remove(&self.keys_by_time, time_key);
            }
            batch
                .commit()
                .map_err(|e| map_err("purging idempotency keys", e))?;
            if seen < PURGE_CHUNK {
                return Ok(purged);
            }
        }
    }
}

/// One channel of a batch, validated and encoded outside the write lock.
struct Prepared {
    channel: String,
    epoch: String,
    first: u64,
    last: u64,
    /// `time_ms` of the last publication: the head's, stored with it.
    last_time_ms: u64,
    /// (message key, publication value)
    rows: Vec<(Vec<u8>, Vec<u8>)>,
    /// (idempotency key in the `idempotency` keyspace, offset)
    keys: Vec<(Vec<u8>, u64)>,
}

/// Checks what can be checked without the stored heads — each channel's
/// offsets are contiguous, its epoch is set, its keys point into the batch —
/// and encodes the rows.
fn prepare(batch: &[ChannelAppend]) -> StoreResult<Vec<Prepared>> {
    batch
        .iter()
        .map(|append| {
            let channel = &append.channel;
            let (Some(first_pub), Some(last_pub)) = (append.publications.first(), append.publications.last()) else {
                return Err(conflict(format!("channel {channel:?}: an append without publications")));
            };
            if append.epoch.is_empty() {
                return Err(conflict(format!("channel {channel:?}: an append without an epoch")));
            }
            let (first, last) = (first_pub.offset, last_pub.offset);
            let prefix = channel_prefix(channel);
            let key_of: HashMap<u64, &str> =
                append.idempotency_keys.iter().map(|(key, offset)| (*offset, key.as_str())).collect();
            let mut rows = Vec::with_capacity(append.publications.len());
            for (i, publication) in append.publications.iter().enumerate() {
                if u64::try_from(i).ok().and_then(|i| first.checked_add(i)) != Some(publication.offset) {
                    return Err(conflict(format!(
                        "channel {channel:?}: offsets not contiguous at {} (batch starts at {first})",
                        publication.offset
                    )));
                }
                rows.push((
                    message_key(&prefix, publication.offset),
                    encode_publication(publication, key_of.get(&publication.offset).copied()),
                ));
            }
            let keys = append
                .idempotency_keys
                .iter()
                .map(|(key, offset)| {
                    if (first..=last).contains(offset) {
                        Ok((key_key(channel, key), *offset))
                    } else {
                        Err(conflict(format!(
                            "channel {channel:?}: idempotency key for offset {offset} outside the batch {first}..={last}"
                        )))
                    }
                })
                .collect::<StoreResult<_>>()?;
            Ok(Prepared {
                channel: channel.clone(),
                epoch: append.epoch.clone(),
                first,
                last,
                last_time_ms: last_pub.time_ms,
                rows,
                keys,
            })
        })
        .collect()
}

/// The channel as a key prefix that no other channel's prefix starts with and
/// that keeps byte order: each 0x00 becomes 0x00 0xFF, then 0x00 0x00 ends it.
fn channel_prefix(channel: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(channel.len() + 2);
    for &b in channel.as_bytes() {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
    out
}

fn message_key(prefix: &[u8], offset: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 8);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// Key in the `idempotency` keyspace: the escaped channel, then the key as is
/// (the last component needs no terminator).
fn key_key(channel: &str, key: &str) -> Vec<u8> {
    let mut out = channel_prefix(channel);
    out.extend_from_slice(key.as_bytes());
    out
}

fn key_time_key(stored_at: u64, primary: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + primary.len());
    out.extend_from_slice(&stored_at.to_be_bytes());
    out.extend_from_slice(primary);
    out
}

/// v1: version, flags, time_ms (u64 BE), [info length (u32 BE), info], data;
/// v2 (with an idempotency key): the same with [key length (u32 BE), key]
/// after the info.
fn encode_publication(p: &StoredPublication, key: Option<&str>) -> Vec<u8> {
    let info_len = p.info.as_ref().map_or(0, |i| 4 + i.len());
    let key_len = key.map_or(0, |k| 4 + k.len());
    let mut out = Vec::with_capacity(10 + info_len + key_len + p.data.len());
    out.push(if key.is_some() { VALUE_V2 } else { VALUE_V1 });
    let mut flags = 0;
    if p.info.is_some() {
        flags |= HAS_INFO;
    }
    if key.is_some() {
        flags |= HAS_KEY;
    }
    out.push(flags);
    out.extend_from_slice(&p.time_ms.to_be_bytes());
    // Messages are bounded far below 4 GiB by the ingest size limit.
    let len_of = |b: &[u8]| u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes();
    if let Some(info) = &p.info {
        out.extend_from_slice(&len_of(info));
        out.extend_from_slice(info);
    }
    if let Some(key) = key {
        out.extend_from_slice(&len_of(key.as_bytes()));
        out.extend_from_slice(key.as_bytes());
    }
    out.extend_from_slice(&p.data);
    out
}

/// A v1 or v2 publication value split into time, info, idempotency key and
/// data.
struct PublicationParts<'a> {
    time_ms: u64,
    info: Option<&'a [u8]>,
    key: Option<&'a [u8]>,
    data: &'a [u8],
}

fn split_publication(value: &[u8]) -> Option<PublicationParts<'_>> {
    let (&version, rest) = value.split_first()?;
    if version != VALUE_V1 && version != VALUE_V2 {
        return None;
    }
    let (&flags, rest) = rest.split_first()?;
    let (time, rest) = rest.split_first_chunk::<8>()?;
    let (info, rest) = length_prefixed(flags & HAS_INFO != 0, rest)?;
    let has_key = version == VALUE_V2 && flags & HAS_KEY != 0;
    let (key, data) = length_prefixed(has_key, rest)?;
    Some(PublicationParts {
        time_ms: u64::from_be_bytes(*time),
        info,
        key,
        data,
    })
}

/// A field of `rest` (u32 BE length, bytes) when `present`, and what follows.
fn length_prefixed(present: bool, rest: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    if !present {
        return Some((None, rest));
    }
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    let (field, rest) = rest.split_at_checked(len)?;
    Some((Some(field), rest))
}

fn decode_publication(offset: u64, value: &[u8]) -> Option<StoredPublication> {
    let parts = split_publication(value)?;
    Some(StoredPublication {
        offset,
        data: Bytes::copy_from_slice(parts.data),
        info: parts.info.map(Bytes::copy_from_slice),
        time_ms: parts.time_ms,
    })
}

/// The idempotency key a publication value carries, if any.
fn publication_key(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(split_publication(value)?.key?).ok()
}

/// v2: version, head (u64 BE), time_ms of the head (u64 BE), epoch (UTF-8,
/// the rest). (v1, still read: version, head, epoch; time_ms reads 0.)
fn encode_position(pos: &Position) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + pos.epoch.len());
    out.push(POSITION_V2);
    out.extend_from_slice(&pos.head.to_be_bytes());
    out.extend_from_slice(&pos.time_ms.to_be_bytes());
    out.extend_from_slice(pos.epoch.as_bytes());
    out
}

fn decode_position(value: &[u8]) -> Option<Position> {
    let (&version, rest) = value.split_first()?;
    let (head, rest) = rest.split_first_chunk::<8>()?;
    let (time_ms, epoch) = match version {
        VALUE_V1 => (0, rest),
        POSITION_V2 => {
            let (time, epoch) = rest.split_first_chunk::<8>()?;
            (u64::from_be_bytes(*time), epoch)
        }
        _ => return None,
    };
    Some(Position {
        head: u64::from_be_bytes(*head),
        epoch: String::from_utf8(epoch.to_vec()).ok()?,
        time_ms,
    })
}

/// v1: version, offset (u64 BE), stored-at ms (u64 BE).
fn encode_key_value(offset: u64, stored_at: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(VALUE_V1);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&stored_at.to_be_bytes());
    out
}

fn decode_key_value(value: &[u8]) -> Option<(u64, u64)> {
    let (&VALUE_V1, rest) = value.split_first()? else {
        return None;
    };
    let (offset, rest) = rest.split_first_chunk::<8>()?;
    let stored_at = <[u8; 8]>::try_from(rest).ok()?;
    Some((u64::from_be_bytes(*offset), u64::from_be_bytes(stored_at)))
}

/// Keys stored at or before this time (ms) are expired.
fn expiry_cutoff(now_ms: u64, retention: Duration) -> u64 {
    now_ms.saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn conflict(message: String) -> StoreError {
    StoreError::new(StoreErrorKind::Conflict, message)
}

fn corrupt_position(channel: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!("undecodable head of channel {channel:?}"),
    )
}

fn map_err(context: &str, e: fjall::Error) -> StoreError {
    let kind = match &e {
        fjall::Error::Io(_) | fjall::Error::Storage(fjall::LsmError::Io(_)) => StoreErrorKind::Io,
        // Poisoned: an earlier fsync failed and fjall refuses writes until
        // the process restarts and recovers the journal.
        fjall::Error::Locked | fjall::Error::Poisoned | fjall::Error::KeyspaceDeleted => {
            StoreErrorKind::Unavailable
        }
        _ => StoreErrorKind::Corrupt,
    };
    StoreError::new(kind, format!("{context}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(channel: &str, offset: u64) -> Vec<u8> {
        message_key(&channel_prefix(channel), offset)
    }

    #[test]
    fn offsets_sort_numerically_within_a_channel() {
        assert!(key("a", 255) < key("a", 256));
        assert!(key("a", 1) < key("a", 2));
        assert!(key("a", 4095) < key("a", 4096));
        assert!(key("a", u64::MAX - 1) < key("a", u64::MAX));
    }

    #[test]
    fn channels_that_prefix_each_other_do_not_interleave() {
        // Every key of "a" sorts before every key of "ab" and of "a\0".
        for other in ["ab", "a\0", "a\0b", "a\u{1}"] {
            assert!(key("a", u64::MAX) < key(other, 0), "a vs {other:?}");
            assert!(
                !key(other, 7).starts_with(&channel_prefix("a")),
                "a vs {other:?}"
            );
        }
        assert!(key("a\0", u64::MAX) < key("a\0b", 0));
        assert_ne!(channel_prefix("a\0"), channel_prefix("a"));
    }

    #[test]
    fn values_round_trip() {
        let with_info = StoredPublication {
            offset: 9,
            data: Bytes::from_static(br#"{"x": "\u00e9 \u2713"}"#),
            info: Some(Bytes::from_static(br#"{"user":"42"}"#)),
            time_ms: 1_700_000_000_123,
        };
        let without_info = StoredPublication {
            info: None,
            data: Bytes::new(),
            ..with_info.clone()
        };
        for p in [with_info, without_info] {
            for key in [None, Some("k-1")] {
                let value = encode_publication(&p, key);
                assert_eq!(value[0], if key.is_some() { VALUE_V2 } else { VALUE_V1 });
                assert_eq!(publication_key(&value), key);
                assert_eq!(decode_publication(9, &value), Some(p.clone()));
            }
        }
        let pos = Position {
            head: 4097,
            epoch: "ép".into(),
            time_ms: 1_700_000_000_456,
        };
        assert_eq!(decode_position(&encode_position(&pos)), Some(pos));
        // A head stored before `time_ms` was (v1) still reads, with time 0.
        let mut v1 = vec![VALUE_V1];
        v1.extend_from_slice(&7u64.to_be_bytes());
        v1.extend_from_slice(b"ep");
        assert_eq!(
            decode_position(&v1),
            Some(Position {
                head: 7,
                epoch: "ep".into(),
                time_ms: 0
            })
        );
        assert_eq!(decode_key_value(&encode_key_value(5, 77)), Some((5, 77)));
        assert_eq!(decode_publication(1, &[2, 0, 0]), None);
        assert_eq!(decode_key_value(&[1, 0]), None);
    }

    #[test]
    fn prepare_refuses_non_contiguous_offsets() {
        let publication = |offset| StoredPublication {
            offset,
            data: Bytes::from_static(b"1"),
            info: None,
            time_ms: 0,
        };
        let append = |offsets: &[u64]| ChannelAppend {
            channel: "c".into(),
            epoch: "e".into(),
            publications: offsets.iter().copied().map(publication).collect(),
            idempotency_keys: vec![],
        };
        assert!(prepare(&[append(&[3, 4, 5])]).is_ok());
        let err = prepare(&[append(&[1, 2, 4])]).err().map(|e| e.kind);
        assert_eq!(err, Some(StoreErrorKind::Conflict));
        let err = prepare(&[append(&[])]).err().map(|e| e.kind);
        assert_eq!(err, Some(StoreErrorKind::Conflict));
    }
}

#[cfg(test)]
mod expiry_tests {
    use super::*;

    /// `short:` keeps history 1 ms; everything else forever.
    fn namespaces() -> ChannelsConfig {
        let mut channels = crate::config::Config::defaults().channels;
        let mut short = channels.default.clone();
        short.history_retention = Some(Duration::from_millis(1));
        channels.namespaces.insert("short".into(), short);
        channels
    }

    fn store_with(dir: &Path, channels: &[&str], n: u64) -> EmbeddedStore {
        let store = EmbeddedStore::open(
            dir,
            StoreOptions {
                idempotency_retention: Duration::from_secs(3600),
            },
        )
        .expect("open");
        let batch: Vec<ChannelAppend> = channels
            .iter()
            .map(|c| ChannelAppend {
                channel: (*c).to_string(),
                epoch: "e".into(),
                publications: (1..=n)
                    .map(|offset| StoredPublication {
                        offset,
                        data: Bytes::from_static(b"{}"),
                        info: None,
                        time_ms: now_ms() - 1000,
                    })
                    .collect(),
                idempotency_keys: vec![("k".into(), 1)],
            })
            .collect();
        let prepared = prepare(&batch).expect("prepare");
        for r in store.inner.commit_group(vec![prepared]) {
            r.expect("commit");
        }
        store
    }

    fn left(store: &EmbeddedStore, channel: &str) -> usize {
        let all = ReadRange {
            after: 0,
            before: None,
            limit: 1000,
            direction: Direction::Forward,
        };
        store.inner.read(channel, all).expect("read").len()
    }

    #[test]
    fn a_store_created_anew_gives_empty_channels_other_epochs() {
        let (a, b) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let epoch = |dir: &Path| {
            let store = store_with(dir, &[], 0);
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime")
                .block_on(store.position("news"))
                .expect("position")
                .epoch
        };
        let first = epoch(a.path());
        assert_eq!(epoch(a.path()), first, "the identity survives a reopen");
        assert_ne!(epoch(b.path()), first, "another store, another identity");
    }

    #[test]
    fn a_pass_visits_at_most_its_channels_and_the_next_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = [
            "short:a", "short:b", "short:c", "short:d", "short:e", "keep",
        ];
        let store = store_with(dir.path(), &names, 10);
        let ns = namespaces();
        let visited: Vec<(usize, u64)> = (0..3)
            .map(|_| {
                let p = store.inner.expire_bounded(&ns, 2, 1000).expect("pass");
                (p.channels_visited, p.publications_deleted)
            })
            .collect();
        // keep, short:a | short:b, short:c | short:d, short:e (byte order).
        assert_eq!(visited, vec![(2, 10), (2, 20), (2, 20)]);
        for c in &names[..5] {
            assert_eq!(left(&store, c), 0, "{c}");
        }
        assert_eq!(left(&store, "keep"), 10, "no retention, nothing deleted");
        let head = store.inner.stored_position("short:a").expect("head");
        assert_eq!(
            head.map(|p| (p.head, p.epoch, p.time_ms > 0)),
            Some((10, "e".into(), true))
        );
    }

    #[test]
    fn a_pass_deletes_at_most_its_budget_and_the_next_resumes_in_the_channel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with(dir.path(), &["short:a", "short:b"], 10);
        let ns = namespaces();
        let deleted: Vec<u64> = (0..4)
            .map(|_| {
                store
                    .inner
                    .expire_bounded(&ns, 100, 7)
                    .expect("pass")
                    .publications_deleted
            })
            .collect();
        assert_eq!(deleted, vec![7, 7, 6, 0]);
        assert_eq!(left(&store, "short:a") + left(&store, "short:b"), 0);
    }

    /// Issue 16 §6: the key of an expired publication goes with it (from
    /// both keyspaces); the key of a kept publication stays; a late retry
    /// with the expired key is then a new publication.
    #[tokio::test]
    async fn a_pass_deletes_the_keys_of_the_publications_it_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with(dir.path(), &["short:a", "keep"], 3);
        assert_eq!(
            store.idempotent_offset("short:a", "k").await.expect("key"),
            Some(1)
        );
        let pass = store
            .inner
            .expire_bounded(&namespaces(), 100, 1000)
            .expect("pass");
        assert_eq!(
            store.idempotent_offset("short:a", "k").await.expect("key"),
            None
        );
        assert_eq!((pass.publications_deleted, pass.keys_deleted), (3, 1));
        assert_eq!(
            store.idempotent_offset("keep", "k").await.expect("key"),
            Some(1)
        );
        let primary = key_key("short:a", "k");
        assert_eq!(store.inner.keys.get(&primary).expect("get"), None);
        let indexed = store
            .inner
            .db
            .snapshot()
            .iter(&store.inner.keys_by_time)
            .filter_map(|g| g.key().ok())
            .filter(|k| k.get(8..) == Some(primary.as_slice()))
            .count();
        assert_eq!(indexed, 0, "the key's time index entry goes too");

        let retry = ChannelAppend {
            channel: "short:a".into(),
            epoch: "e".into(),
            publications: vec![StoredPublication {
                offset: 4,
                data: Bytes::from_static(b"{}"),
                info: None,
                time_ms: now_ms(),
            }],
            idempotency_keys: vec![("k".into(), 4)],
        };
        store
            .append(&[retry])
            .await
            .expect("a late retry is stored anew");
        assert_eq!(
            store.idempotent_offset("short:a", "k").await.expect("key"),
            Some(4)
        );
    }
}

#[cfg(test)]
mod group_commit_tests {
    use super::*;

    fn append_of(channel: &str, first: u64, n: u64) -> ChannelAppend {
        ChannelAppend {
            channel: channel.to_string(),
            epoch: "e".to_string(),
            publications: (first..first + n)
                .map(|offset| StoredPublication {
                    offset,
                    data: Bytes::from(format!("{channel}:{offset}")),
                    info: None,
                    time_ms: 1,
                })
                .collect(),
            idempotency_keys: Vec::new(),
        }
    }

    /// Many threads appending at once share commits; a batch that does not
    /// continue its channel fails alone, and every other batch is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_commit_together_and_fail_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(
            EmbeddedStore::open(
                dir.path(),
                StoreOptions {
                    idempotency_retention: Duration::from_secs(3600),
                },
            )
            .expect("open store"),
        );
        let mut tasks = Vec::new();
        for c in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let channel = format!("ch{c}");
                for round in 0..20u64 {
                    store
                        .append(&[append_of(&channel, round * 3 + 1, 3)])
                        .await
                        .expect("a dense append is stored");
                }
            }));
        }
        // Interleaved with them: batches that skip an offset.
        let bad = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut refused = 0;
                for round in 0..20u64 {
                    let e = store
                        .append(&[append_of("ch0", 1000 + round, 1)])
                        .await
                        .expect_err("a gap is refused");
                    assert_eq!(e.kind, StoreErrorKind::Conflict);
                    refused += 1;
                }
                refused
            })
        };
        for t in tasks {
            t.await.expect("appender");
        }
        assert_eq!(bad.await.expect("bad appender"), 20);
        for c in 0..16 {
            let channel = format!("ch{c}");
            let rows = store
                .read(
                    &channel,
                    ReadRange {
                        after: 0,
                        before: None,
                        limit: 1000,
                        direction: Direction::Forward,
                    },
                )
                .await
                .expect("read");
            let offsets: Vec<u64> = rows.iter().map(|p| p.offset).collect();
            assert_eq!(offsets, (1..=60).collect::<Vec<_>>(), "{channel}");
            let head = store.position(&channel).await.expect("position");
            assert_eq!(head.head, 60, "{channel}");
        }
    }

    /// `ordered_appends`: an append issued while the one it continues is
    /// still queued or being committed is stored behind it; one continuing
    /// an append that fails is refused with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_are_applied_in_the_order_they_are_issued() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(
            dir.path(),
            StoreOptions {
                idempotency_retention: Duration::from_secs(3600),
            },
        )
        .expect("open store");
        assert!(store.ordered_appends());
        for round in 0..50u64 {
            let (a, b, c) = (
                [append_of("x", round * 4 + 1, 2)],
                [append_of("x", round * 4 + 3, 1)],
                [append_of("x", round * 4 + 4, 1)],
            );
            // Issued (first polled) in order; awaited only afterwards.
            let mut issued = Vec::new();
            for batch in [&a[..], &b[..], &c[..]] {
                let mut append = store.append(batch);
                let early = (&mut append).now_or_never();
                issued.push((append, early));
            }
            for (i, (append, early)) in issued.into_iter().enumerate() {
                let result = match early {
                    Some(r) => r,
                    None => append.await,
                };
                result.unwrap_or_else(|e| panic!("append {i} of round {round}: {e}"));
            }
        }
        assert_eq!(store.position("x").await.expect("position").head, 200);
        // A gap first: what was sequenced on top of it is refused too.
        let gap = [append_of("x", 202, 1)];
        let on_top = [append_of("x", 203, 1)];
        let mut first = store.append(&gap);
        let early = (&mut first).now_or_never();
        let on_top = store.append(&on_top).await;
        let gap = match early {
            Some(r) => r,
            None => first.await,
        };
        assert_eq!(gap.expect_err("gap").kind, StoreErrorKind::Conflict);
        assert_eq!(on_top.expect_err("on top").kind, StoreErrorKind::Conflict);
        assert_eq!(store.position("x").await.expect("position").head, 200);
    }
}
