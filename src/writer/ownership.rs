//! Partition ownership among writer instances (I8): which partitions this
//! instance consumes, decided through leases in the NATS KV bucket
//! [`subjects::WRITERS_BUCKET`].
//!
//! Keys: `member.<id>` is the heartbeat of a live instance (JSON: id, host,
//! start time); `lease.<partition>` holds the id of the instance allowed to
//! consume the partition. The bucket's `max_age` is the lease time: a key
//! not rewritten within it disappears, so a dead instance's membership and
//! leases end by themselves. Each instance sets `max_age` to two thirds of its
//! `failover_timeout` (so lease expiry plus a survivor's next look fit inside
//! it) when it starts and follows the bucket's current value, read from the
//! server after every round of renewals, so a fence never outlasts a lease
//! another instance shortened.
//!
//! Every period (a third of the lease time, jittered), and soon after the
//! watch on the bucket shows a member joining or leaving or a lease freed, an
//! instance: refreshes its member key; renews each lease it holds by
//! compare-and-set on the revision it last wrote (refused = the lease is gone:
//! the partition stops at once and commits nothing more); lists the live
//! members and the leases; computes its fair share (P / members, one more for
//! the first P mod members by id); releases extras (stop the partition, let it
//! finish its batch in hand, then delete the lease by revision); and creates
//! leases on free partitions up to its share.
//!
//! A partition task commits only while its lease's local expiry (the send
//! time of the last successful renewal + the lease time, never later than the
//! server's expiry) lies ahead ([`Fence`]), and a watchdog stops it when that
//! passes, even while this loop waits on an unreachable NATS.
//!
//! Knows nothing of what a partition task does beyond starting and stopping
//! it. The lease is advisory timing; the store's head check keeps I1.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::stream::StorageType;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::{Fence, Writer, WriterError};
use crate::bus::subjects::{self, WritersKey};
use crate::metrics as m;

/// Delay between a watch event that may change the shares and the tick it
/// triggers, so a burst of events (a leaving writer freeing all its leases)
/// is handled by one tick.
const SETTLE: Duration = Duration::from_millis(20);
/// Retry pacing while the bucket cannot be opened.
const OPEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// A lease this instance holds.
struct Lease {
    /// The revision of our last write of the key: the next renewal's
    /// compare-and-set and the release's revision check.
    revision: u64,
    /// Local expiry; read by the partition's [`Fence`] and watchdog.
    expiry: watch::Sender<Instant>,
    stop: CancellationToken,
    /// Stopping to hand the partition over; the key is deleted once the task
    /// has finished its batch in hand. Renewed meanwhile.
    releasing: bool,
}

/// A lease key as last listed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Listed {
    Held {
        holder: String,
        revision: u64,
    },
    /// A delete marker: released gracefully.
    Released,
}

/// The bucket as listed in one tick.
struct View {
    max_age: Duration,
    members: BTreeSet<String>,
    leases: HashMap<u32, Listed>,
}

/// What one renewal attempt found.
enum Renewal {
    Renewed {
        revision: u64,
        sent: Instant,
    },
    /// Refused: someone else holds the key, or it expired.
    Lost,
    Failed(String),
}

struct Ownership {
    writer: Writer,
    id: Arc<str>,
    partitions: u32,
    failover_timeout: Duration,
    /// min(failover_timeout, the bucket's max_age): the local lease time,
    /// re-read from the server after every round of renewals.
    lease_time: Duration,
    kv: kv::Store,
    leases: BTreeMap<u32, Lease>,
    /// Partition tasks; each ends after its stop token fires or its lease's
    /// local expiry passes. Dropping the set (the instance's future dropped)
    /// aborts them.
    tasks: JoinSet<()>,
    task_partitions: HashMap<tokio::task::Id, u32>,
    /// Partitions with a task (including ones finishing after a loss), as
    /// this loop knows them; [`Running`] guards publish the same to handles
    /// the moment a task ends.
    running: BTreeSet<u32>,
    owned: Arc<watch::Sender<BTreeSet<u32>>>,
    /// Member ids of the last listing (self included): a watch event about
    /// another id changes the shares.
    members: BTreeSet<String>,
    /// Other instances' leases in the last listing: taking one of these
    /// partitions without a release marker in between is a failover.
    others: HashMap<u32, String>,
    member_value: Bytes,
}

/// The body of [`super::WriterInstance::run`].
pub(super) async fn run(
    writer: Writer,
    id: Arc<str>,
    owned: watch::Sender<BTreeSet<u32>>,
    shutdown: CancellationToken,
) -> Result<(), WriterError> {
    let settings = &writer.shared.settings;
    let partitions = settings.partitions;
    // Below, "failover_timeout" is the lease target: two thirds of the
    // configured bound, so expiry plus the survivor's next look (≤ 1.1·lease/3)
    // still fits inside the bound (≈ 0.91·bound).
    let failover_timeout = lease_target(settings.failover_timeout);
    let js = writer.shared.js.clone();
    let Some(kv) = open_bucket(&js, failover_timeout, settings.kv_replicas, &shutdown).await else {
        return Ok(());
    };
    let lease_time = effective_lease_time(failover_timeout, kv.stream.cached_info().config.max_age);
    let member_value = Bytes::from(
        serde_json::json!({
            "id": &*id,
            "host": host_name(),
            "started": SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
        })
        .to_string(),
    );
    tracing::info!(writer_id = %id, partitions, ?lease_time, "writer started");
    let mut own = Ownership {
        writer,
        id,
        partitions,
        failover_timeout,
        lease_time,
        kv,
        leases: BTreeMap::new(),
        tasks: JoinSet::new(),
        task_partitions: HashMap::new(),
        running: BTreeSet::new(),
        owned: Arc::new(owned),
        members: BTreeSet::new(),
        others: HashMap::new(),
        member_value,
    };
    let result = own.run(&shutdown).await;
    own.leave().await;
    tracing::info!(writer_id = %own.id, "writer stopped");
    result
}

/// Creates the bucket, or updates its `max_age` to this instance's
/// `failover_timeout` and its replicas to `replicas`; retries until it works
/// or `shutdown` fires.
async fn open_bucket(
    js: &async_nats::jetstream::Context,
    failover_timeout: Duration,
    replicas: usize,
    shutdown: &CancellationToken,
) -> Option<kv::Store> {
    let config = kv::Config {
        bucket: subjects::WRITERS_BUCKET.to_string(),
        description: "Herald writers: membership and partition leases".to_string(),
        history: 1,
        max_age: failover_timeout,
        storage: StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    let mut delay = OPEN_BACKOFF.0;
    loop {
        match js.create_or_update_key_value(config.clone()).await {
            Ok(kv) => return Some(kv),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the writers bucket; retrying");
                count_error();
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(OPEN_BACKOFF.1);
    }
}

impl Ownership {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), WriterError> {
        let mut watch: Option<kv::Watch> = None;
        let mut next_tick = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                Some(done) = self.tasks.join_next_with_id() => self.task_ended(done).await?,
                () = sleep_until(next_tick) => {
                    self.tick().await;
                    // After the renewals, so a slow watch never delays them.
                    if watch.is_none() {
                        watch = self.open_watch().await;
                    }
                    next_tick = Instant::now() + jittered(self.period());
                }
                event = next_event(&mut watch) => match event {
                    Some(Ok(entry)) => {
                        if self.changes_shares(&entry) {
                            next_tick = next_tick.min(Instant::now() + SETTLE);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "writers bucket watch failed; reopening it");
                        watch = None;
                    }
                    None => watch = None,
                },
            }
        }
    }

    fn period(&self) -> Duration {
        self.lease_time / 3
    }

    /// Bounds one KV operation: a third of the lease time, so a tick stuck on
    /// an unreachable NATS still ends.
    async fn bounded<T, E: std::fmt::Display>(
        &self,
        op: impl Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.period(), op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_string()),
        }
    }

    async fn open_watch(&self) -> Option<kv::Watch> {
        match self.bounded(self.kv.watch_all()).await {
            Ok(w) => Some(w),
            Err(error) => {
                tracing::debug!(%error, "cannot watch the writers bucket; polling only");
                None
            }
        }
    }

    /// Whether a watch event may change who should own what: a member other
    /// than us joined or left, or a lease was freed.
    fn changes_shares(&self, entry: &kv::Entry) -> bool {
        let put = entry.operation == Operation::Put;
        match subjects::parse_writers_key(&entry.key) {
            Some(WritersKey::Member(id)) if id != &*self.id => !put || !self.members.contains(id),
            Some(WritersKey::Lease(_)) => !put,
            _ => false,
        }
    }

    async fn tick(&mut self) {
        let (alive, renewals) = tokio::join!(self.heartbeat(), self.renew_all());
        // The bucket's max_age now, read after the renewals were sent: the
        // fences they open never outlast the shortest lease any instance set.
        let lease_time = if renewals.is_empty() {
            Ok(self.lease_time)
        } else {
            self.bounded(current_lease_time(&self.kv, self.failover_timeout))
                .await
        };
        let lease_time = match lease_time {
            Ok(lease_time) => {
                self.lease_time = lease_time;
                Some(lease_time)
            }
            Err(error) => {
                tracing::warn!(%error, "reading the writers bucket's max_age failed; fences not extended");
                count_error();
                None
            }
        };
        self.apply_renewals(renewals, lease_time);
        if !alive {
            return;
        }
        if let Some(view) = self.list().await {
            self.rebalance(view).await;
        }
    }

    async fn heartbeat(&self) -> bool {
        let key = subjects::writer_member_key(&self.id);
        match self
            .bounded(self.kv.put(key, self.member_value.clone()))
            .await
        {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "writer heartbeat failed; leases expire unless it recovers");
                count_error();
                false
            }
        }
    }

    async fn renew_all(&self) -> Vec<(u32, Renewal)> {
        join_all(
            self.leases
                .iter()
                .map(|(p, lease)| async move { (*p, self.renew(*p, lease.revision).await) }),
        )
        .await
    }

    /// Renews one lease by compare-and-set. A refusal is double-checked:
    /// an earlier write of ours may have landed without its ack reaching us,
    /// and then the key still names us under a newer revision.
    async fn renew(&self, partition: u32, revision: u64) -> Renewal {
        let key = subjects::partition_lease_key(partition);
        let value = Bytes::from(self.id.to_string());
        let sent = Instant::now();
        let refused = match tokio::time::timeout(
            self.period(),
            self.kv.update(&key, value.clone(), revision),
        )
        .await
        {
            Ok(Ok(revision)) => return Renewal::Renewed { revision, sent },
            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => e,
            Ok(Err(e)) => return Renewal::Failed(e.to_string()),
            Err(_) => return Renewal::Failed("timed out".to_string()),
        };
        match self.bounded(self.kv.entry(key.clone())).await {
            Ok(Some(entry)) if entry.operation == Operation::Put && entry.value == value => {
                let sent = Instant::now();
                match self
                    .bounded(self.kv.update(&key, value, entry.revision))
                    .await
                {
                    Ok(revision) => Renewal::Renewed { revision, sent },
                    Err(error) => Renewal::Failed(error),
                }
            }
            Ok(_) => {
                tracing::debug!(partition, error = %refused, "lease renewal refused");
                Renewal::Lost
            }
            Err(error) => Renewal::Failed(error),
        }
    }

    /// Records the renewals; a renewed lease's fence moves to its send time +
    /// `lease_time`, or stays where it is when `lease_time` is unknown (the
    /// bucket's current `max_age` could not be read).
    fn apply_renewals(&mut self, renewals: Vec<(u32, Renewal)>, lease_time: Option<Duration>) {
        let mut lost = Vec::new();
        let mut failed = 0usize;
        let mut first_error = None;
        for (p, renewal) in renewals {
            let Some(lease) = self.leases.get_mut(&p) else {
                continue;
            };
            match renewal {
                Renewal::Renewed { revision, sent } => {
                    lease.revision = revision;
                    let Some(lease_time) = lease_time else {
                        continue;
                    };
                    let until = sent + lease_time;
                    lease.expiry.send_if_modified(|e| {
                        let later = until > *e;
                        if later {
                            *e = until;
                        }
                        later
                    });
                }
                Renewal::Lost => lost.push(p),
                Renewal::Failed(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(error) = first_error {
            tracing::warn!(failed, %error, "renewing partition leases failed; retrying");
            count_error();
        }
        if !lost.is_empty() {
            for p in &lost {
                self.lose(*p);
            }
            tracing::info!(partitions = ?lost, "partition leases lost: renewal refused");
        }
    }

    /// Forgets a lost lease and stops its partition; its fence closes now,
    /// so the task hands its batch back instead of committing it.
    fn lose(&mut self, partition: u32) {
        if let Some(lease) = self.leases.remove(&partition) {
            lease.expiry.send_replace(Instant::now());
            lease.stop.cancel();
            count_lease_event("lost");
        }
    }

    /// Lists live members and leases (with the bucket's current `max_age`).
    async fn list(&mut self) -> Option<View> {
        let filter = format!("{}>", self.kv.prefix);
        let listed = self
            .bounded(async {
                let mut info = self.kv.stream.info_with_subjects(filter).await?;
                let mut keys = Vec::new();
                while let Some(item) = info.next().await {
                    let (subject, _count) = item?;
                    if let Some(key) = subject.strip_prefix(&self.kv.prefix) {
                        keys.push(key.to_string());
                    }
                }
                Ok::<_, async_nats::jetstream::stream::InfoError>((info.info.config.max_age, keys))
            })
            .await;
        let (max_age, keys) = match listed {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, "listing the writers bucket failed");
                count_error();
                return None;
            }
        };
        let this = &*self;
        let entries = join_all(
            keys.into_iter()
                .map(|key| async move { this.bounded(this.kv.entry(key)).await }),
        )
        .await;
        let mut view = View {
            max_age,
            members: BTreeSet::new(),
            leases: HashMap::new(),
        };
        for entry in entries {
            let entry = match entry {
                Ok(Some(entry)) => entry,
                // Expired between the listing and the read.
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, "reading the writers bucket failed");
                    count_error();
                    return None;
                }
            };
            let put = entry.operation == Operation::Put;
            match subjects::parse_writers_key(&entry.key) {
                Some(WritersKey::Member(id)) if put => {
                    view.members.insert(id.to_string());
                }
                Some(WritersKey::Lease(p)) if p < self.partitions => {
                    let listed = if put {
                        Listed::Held {
                            holder: String::from_utf8_lossy(&entry.value).into_owned(),
                            revision: entry.revision,
                        }
                    } else {
                        Listed::Released
                    };
                    view.leases.insert(p, listed);
                }
                _ => {}
            }
        }
        Some(view)
    }

    async fn rebalance(&mut self, view: View) {
        self.lease_time = effective_lease_time(self.failover_timeout, view.max_age);
        let mut members = view.members;
        members.insert(self.id.to_string());
        let share = fair_share(self.partitions, &members, &self.id);
        let rank = members.iter().position(|m| **m == *self.id).unwrap_or(0);
        let count = members.len();
        self.members = members;

        let held = self.leases.values().filter(|l| !l.releasing).count();
        if held > share {
            self.release_extras(held - share);
        } else if held < share {
            // Rotating the starting point by rank keeps instances that start
            // together from all trying the same partitions first.
            let start = (rank * self.partitions as usize / count.max(1)) as u32;
            self.acquire(share - held, start, &view.leases).await;
        }
        // Leases naming us that we neither track nor took back (a write whose
        // ack was lost): give them back rather than let them block others.
        let orphans: Vec<(u32, u64)> = view
            .leases
            .iter()
            .filter_map(|(p, l)| match l {
                Listed::Held { holder, revision }
                    if *holder == *self.id
                        && !self.leases.contains_key(p)
                        && !self.running.contains(p) =>
                {
                    Some((*p, *revision))
                }
                _ => None,
            })
            .collect();
        for (p, revision) in orphans {
            self.release(p, revision).await;
        }
        self.others = view
            .leases
            .into_iter()
            .filter_map(|(p, l)| match l {
                Listed::Held { holder, .. } if holder != *self.id => Some((p, holder)),
                _ => None,
            })
            .collect();
    }

    /// Stops the highest-numbered partitions beyond the share; each lease is
    /// deleted when its task has finished its batch in hand.
    fn release_extras(&mut self, extra: usize) {
        let extras: Vec<u32> = self
            .leases
            .iter()
            .rev()
            .filter(|(_, l)| !l.releasing)
            .take(extra)
            .map(|(p, _)| *p)
            .collect();
        for p in &extras {
            if let Some(lease) = self.leases.get_mut(p) {
                lease.releasing = true;
                lease.stop.cancel();
            }
        }
        tracing::info!(partitions = ?extras, "releasing partition leases over the fair share");
    }

    /// Takes up to `need` free partitions, in order from `start`: first any
    /// lease still naming us that we no longer track (a write whose ack was
    /// lost), then unheld ones.
    async fn acquire(&mut self, need: usize, start: u32, leases: &HashMap<u32, Listed>) {
        let p_count = self.partitions;
        let mut candidates = (0..p_count)
            .map(|i| (start + i) % p_count)
            .filter(|p| !self.running.contains(p) && !self.leases.contains_key(p))
            .filter_map(|p| match leases.get(&p) {
                Some(Listed::Held { holder, revision }) => {
                    (*holder == *self.id).then_some((p, *revision))
                }
                Some(Listed::Released) | None => Some((p, 0)),
            })
            .collect::<Vec<_>>();
        // Our own orphaned leases first.
        candidates.sort_by_key(|(_, revision)| *revision == 0);
        let mut acquired = Vec::new();
        let mut failures = Vec::new();
        let mut rest = candidates.into_iter();
        while acquired.len() < need {
            let round: Vec<(u32, u64)> = rest.by_ref().take(need - acquired.len()).collect();
            if round.is_empty() {
                break;
            }
            let this = &*self;
            let results = join_all(
                round
                    .iter()
                    .map(|(p, revision)| async move { (*p, this.take(*p, *revision).await) }),
            )
            .await;
            let mut transient = false;
            for (p, result) in results {
                match result {
                    Ok((revision, sent)) => {
                        if self.others.contains_key(&p) && !leases.contains_key(&p) {
                            metrics::counter!(m::WRITER_FAILOVERS_TOTAL).increment(1);
                            tracing::info!(
                                partition = p,
                                previous = %self.others[&p],
                                "took over a partition whose lease expired"
                            );
                        }
                        self.start(p, revision, sent);
                        acquired.push(p);
                    }
                    // Someone was faster: not an error.
                    Err(None) => {}
                    Err(Some(e)) => {
                        transient = true;
                        failures.push(e);
                    }
                }
            }
            if transient {
                break;
            }
        }
        if !acquired.is_empty() {
            tracing::info!(partitions = ?acquired, "partition leases acquired");
        }
        if let Some(error) = failures.first() {
            tracing::warn!(failed = failures.len(), %error, "acquiring partition leases failed");
            count_error();
        }
    }

    /// Writes our id on a partition's lease key: a create, or for a key still
    /// naming us (`revision` > 0) a compare-and-set. Returns the new revision
    /// and when the write was sent; `Err(None)` when someone else holds it.
    async fn take(&self, partition: u32, revision: u64) -> Result<(u64, Instant), Option<String>> {
        let key = subjects::partition_lease_key(partition);
        let value = Bytes::from(self.id.to_string());
        let sent = Instant::now();
        let written = if revision == 0 {
            match tokio::time::timeout(self.period(), self.kv.create(key, value)).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(None),
                Ok(Err(e)) => Err(Some(e.to_string())),
                Err(_) => Err(Some("timed out".to_string())),
            }
        } else {
            match tokio::time::timeout(self.period(), self.kv.update(key, value, revision)).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => Err(None),
                Ok(Err(e)) => Err(Some(e.to_string())),
                Err(_) => Err(Some("timed out".to_string())),
            }
        };
        written.map(|r| (r, sent))
    }

    /// Starts the task of a partition whose lease we just wrote at `sent`.
    fn start(&mut self, partition: u32, revision: u64, sent: Instant) {
        let (expiry, expiry_rx) = watch::channel(sent + self.lease_time);
        let stop = CancellationToken::new();
        self.spawn(partition, &stop, expiry_rx);
        self.leases.insert(
            partition,
            Lease {
                revision,
                expiry,
                stop,
                releasing: false,
            },
        );
        count_lease_event("acquired");
    }

    fn spawn(
        &mut self,
        partition: u32,
        stop: &CancellationToken,
        expiry: watch::Receiver<Instant>,
    ) {
        let run = self
            .writer
            .partition(partition, stop.clone(), Fence::new(expiry.clone()));
        let running = Running::new(partition, self.owned.clone());
        let handle = self
            .tasks
            .spawn(supervise(run, stop.clone(), expiry, running));
        self.task_partitions.insert(handle.id(), partition);
        self.running.insert(partition);
    }

    async fn task_ended(
        &mut self,
        done: Result<(tokio::task::Id, ()), JoinError>,
    ) -> Result<(), WriterError> {
        let (id, failed) = match done {
            Ok((id, ())) => (id, None),
            Err(e) => (e.id(), Some(e)),
        };
        let Some(partition) = self.task_partitions.remove(&id) else {
            return Ok(());
        };
        self.running.remove(&partition);
        if let Some(e) = failed {
            tracing::error!(partition, error = %e, "writer partition task failed");
            return Err(WriterError::PartitionPanicked { partition });
        }
        let Some(lease) = self.leases.get(&partition) else {
            // Lost earlier; already counted.
            return Ok(());
        };
        if lease.releasing {
            let revision = lease.revision;
            self.leases.remove(&partition);
            self.release(partition, revision).await;
            tracing::info!(partition, "partition lease released");
        } else if *lease.expiry.borrow() > Instant::now() {
            // The watchdog fired just before a renewal moved the expiry:
            // still ours, so run the partition again.
            let (stop, expiry) = (CancellationToken::new(), lease.expiry.subscribe());
            self.spawn(partition, &stop, expiry);
            if let Some(lease) = self.leases.get_mut(&partition) {
                lease.stop = stop;
            }
        } else {
            self.lose(partition);
            tracing::info!(partition, "partition lease lost: expired before a renewal");
        }
        Ok(())
    }

    /// Deletes a lease we hold, if it is still the revision we wrote.
    async fn release(&self, partition: u32, revision: u64) {
        let key = subjects::partition_lease_key(partition);
        match self
            .bounded(self.kv.delete_expect_revision(key, Some(revision)))
            .await
        {
            Ok(()) => count_lease_event("released"),
            Err(error) => {
                tracing::warn!(partition, %error, "releasing a partition lease failed; it expires by itself");
                count_error();
            }
        }
    }

    /// Shutdown: stops every partition (each finishes its batch in hand),
    /// releases the leases and deletes the member key.
    async fn leave(&mut self) {
        for lease in self.leases.values_mut() {
            lease.releasing = true;
            lease.stop.cancel();
        }
        while let Some(done) = self.tasks.join_next_with_id().await {
            let id = match &done {
                Ok((id, _)) => *id,
                Err(e) => e.id(),
            };
            if let Some(partition) = self.task_partitions.remove(&id) {
                self.running.remove(&partition);
                if let Err(e) = done {
                    tracing::error!(partition, error = %e, "writer partition task failed");
                }
            }
        }
        let leases = std::mem::take(&mut self.leases);
        join_all(leases.iter().map(|(p, l)| self.release(*p, l.revision))).await;
        if !leases.is_empty() {
            tracing::info!(partitions = ?leases.keys().collect::<Vec<_>>(), "partition leases released");
        }
        let key = subjects::writer_member_key(&self.id);
        if let Err(error) = self.bounded(self.kv.delete(key)).await {
            tracing::warn!(%error, "leaving the writers group failed; the member key expires by itself");
            count_error();
        }
    }
}

/// Marks a partition as running for as long as its task lives, ended,
/// panicked or aborted: in the handles' owned set and the gauge.
struct Running {
    partition: u32,
    owned: Arc<watch::Sender<BTreeSet<u32>>>,
}

impl Running {
    fn new(partition: u32, owned: Arc<watch::Sender<BTreeSet<u32>>>) -> Self {
        owned.send_modify(|s| {
            s.insert(partition);
        });
        metrics::gauge!(m::WRITER_PARTITIONS_OWNED).increment(1.0);
        Self { partition, owned }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.owned.send_modify(|s| {
            s.remove(&self.partition);
        });
        metrics::gauge!(m::WRITER_PARTITIONS_OWNED).decrement(1.0);
    }
}

/// Runs a partition task, and stops it when its lease's local expiry passes
/// before a renewal moves it.
async fn supervise(
    run: impl Future<Output = ()>,
    stop: CancellationToken,
    mut expiry: watch::Receiver<Instant>,
    _running: Running,
) {
    tokio::pin!(run);
    loop {
        let until = *expiry.borrow_and_update();
        tokio::select! {
            () = &mut run => return,
            () = sleep_until(until) => break,
            // An error: the lease was dropped (its owner stopped the task).
            changed = expiry.changed() => if changed.is_err() {
                break;
            },
        }
    }
    stop.cancel();
    run.await;
}

async fn next_event(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// This instance's share: `partitions / members`, plus one for the first
/// `partitions % members` ids in order.
fn fair_share(partitions: u32, members: &BTreeSet<String>, id: &str) -> usize {
    let n = members.len().max(1);
    let rank = members.iter().position(|m| m == id).unwrap_or(n - 1);
    let p = partitions as usize;
    p / n + usize::from(rank < p % n)
}

/// The lease time that keeps a takeover within `failover_timeout`: a lease
/// expires at most its length after the last renewal and a survivor notices
/// within one loop period (a third of it, +10 % jitter), so the lease is two
/// thirds of the bound.
fn lease_target(failover_timeout: Duration) -> Duration {
    failover_timeout.mul_f64(2.0 / 3.0)
}

/// The lease time a writer counts with: never longer than the bucket's
/// `max_age`, after which the server forgets the lease.
/// The lease time a renewal may count on: min(this instance's target, the
/// bucket's `max_age` as the server has it now). Read after every round of
/// renewals, not taken from the last listing: another instance with a
/// shorter `writer_failover_timeout` may have shortened `max_age` since, and
/// the server expires our keys by the current value.
async fn current_lease_time(
    kv: &kv::Store,
    failover_timeout: Duration,
) -> Result<Duration, String> {
    let info = kv.stream.get_info().await.map_err(|e| e.to_string())?;
    Ok(effective_lease_time(failover_timeout, info.config.max_age))
}

fn effective_lease_time(failover_timeout: Duration, max_age: Duration) -> Duration {
    if max_age.is_zero() {
        failover_timeout
    } else {
        failover_timeout.min(max_age)
    }
}

/// `period` ± 10 %, so instances started together do not tick in step.
fn jittered(period: Duration) -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() % 2001) as f64 / 10_000.0;
    period.mul_f64(0.9 + r)
}

/// The host name for the member key, or "unknown" where the OS does not say.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

fn count_lease_event(event: &'static str) {
    metrics::counter!(m::WRITER_LEASE_EVENTS_TOTAL, "event" => event).increment(1);
}

fn count_error() {
    metrics::counter!(m::WRITER_ERRORS_TOTAL, "kind" => "lease").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16 §5d: another instance shrinks the bucket's `max_age` from 10 s
    /// to 2 s; this instance, configured for 10 s, renews: the fence that
    /// renewal opens ends at most 2 s after it was sent (the server expires
    /// the key by the current `max_age`). A real nats-server.
    #[tokio::test]
    async fn a_max_age_shrunk_by_another_instance_bounds_the_next_renewal() {
        let bin = std::env::var("HERALD_TEST_NATS_SERVER").map_or_else(
            |_| {
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join(".tools/py/bin/nats-server")
            },
            std::path::PathBuf::from,
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let server = crate::bus::server::NatsServer::start(&bin, dir.path())
            .await
            .expect("start nats-server (HERALD_TEST_NATS_SERVER)");
        let client = async_nats::connect(&server.url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let shutdown = CancellationToken::new();
        let ten = Duration::from_secs(10);
        let two = Duration::from_secs(2);

        let kv = open_bucket(&js, ten, 1, &shutdown).await.expect("bucket");
        assert_eq!(current_lease_time(&kv, ten).await.expect("lease time"), ten);
        let key = subjects::partition_lease_key(0);
        let revision = kv.create(&key, "me".into()).await.expect("take a lease");

        // Another instance, configured for 2 s, opens the bucket.
        let other = open_bucket(&js, two, 1, &shutdown).await.expect("bucket");
        assert_eq!(other.stream.cached_info().config.max_age, two);

        let sent = Instant::now();
        kv.update(&key, "me".into(), revision).await.expect("renew");
        let lease_time = current_lease_time(&kv, ten).await.expect("lease time");
        let expiry = sent + lease_time;
        assert!(
            expiry <= sent + two,
            "the fence would end {lease_time:?} after the renewal, past the server's 2 s"
        );
        server.stop().await;
    }

    #[test]
    fn takeover_fits_the_configured_bound() {
        for secs in [1u64, 2, 10, 60] {
            let bound = Duration::from_secs(secs);
            let lease = lease_target(bound);
            // Expiry after the last renewal, plus the longest loop period.
            let worst = lease + (lease / 3).mul_f64(1.1);
            assert!(worst < bound, "{worst:?} >= {bound:?}");
        }
    }

    fn ids(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("w{i}")).collect()
    }

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for partitions in [1u32, 2, 7, 16, 64] {
            for n in 1..=9 {
                let members = ids(n);
                let shares: Vec<usize> = members
                    .iter()
                    .map(|id| fair_share(partitions, &members, id))
                    .collect();
                assert_eq!(shares.iter().sum::<usize>(), partitions as usize);
                let (min, max) = (shares.iter().min(), shares.iter().max());
                assert!(
                    max.unwrap() - min.unwrap() <= 1,
                    "{partitions}/{n}: {shares:?}"
                );
            }
        }
        let three = ids(3);
        let shares: Vec<usize> = three.iter().map(|id| fair_share(16, &three, id)).collect();
        assert_eq!(shares, [6, 5, 5]);
    }

    #[test]
    fn lease_time_never_exceeds_the_buckets_max_age() {
        let ten = Duration::from_secs(10);
        assert_eq!(effective_lease_time(ten, Duration::ZERO), ten);
        assert_eq!(
            effective_lease_time(ten, Duration::from_secs(4)),
            Duration::from_secs(4)
        );
        assert_eq!(effective_lease_time(ten, Duration::from_secs(40)), ten);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let period = Duration::from_millis(1000);
        for _ in 0..200 {
            let j = jittered(period);
            assert!(
                j >= Duration::from_millis(900) && j <= Duration::from_millis(1100),
                "{j:?}"
            );
        }
    }
}
