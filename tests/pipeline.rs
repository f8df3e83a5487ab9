//! The writer's pipeline (`writer_pipeline_depth` > 1), black-box: a real
//! nats-server, the real embedded store, a backlog of ingest messages to a
//! few hot channels so that several batches of one partition are in flight
//! at once. Dense offsets, each publisher's order, durable before visible
//! (I2, checked at the moment a live publication arrives), and recovery when
//! a batch in the middle of the pipeline meets a `Conflict`.
//!
//! The tests take turns (`SERIAL`): they read the process's writer metrics
//! (pipelined batches, conflicts) before and after, and no other test of
//! this binary may move them meanwhile.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use common::ingest::{Replies, Running, data_of, history, offsets, open_store, publish, stream};
use common::process::metric_value;
use common::{TestNats, eventually};
use futures::StreamExt;
use herald::bus::ingest::WriterReply;
use herald::bus::subjects;
use herald::store::{
    ChannelAppend, Conversation, Device, Markers, Position, ReadRange, SharedStore, Store,
    StoreErrorKind, StoreResult, StoredPublication,
};
use herald::writer::WriterSettings;
use serde_json::json;
use tokio::task::JoinHandle;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LIMIT: Duration = Duration::from_secs(60);
const PARTITIONS: u32 = 2;
const HOT: usize = 4;
const PUBLISHERS: usize = 8;
const PER_PUBLISHER: usize = 300;

fn settings(depth: usize) -> WriterSettings {
    WriterSettings {
        partitions: PARTITIONS,
        // Small batches: a backlog becomes many batches, several in flight.
        batch_size: 16,
        pipeline_depth: depth,
        max_ack_pending: 1024,
        ack_wait: Duration::from_secs(30),
        head_cache_capacity: 1000,
        failover_timeout: Duration::from_secs(10),
        kv_replicas: 1,
    }
}

fn hot(i: usize) -> String {
    format!("hot.{}", i % HOT)
}

/// The writer process's own metric `name{labels}` (0 when absent).
fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = herald::metrics::install(herald::roles::Role::Writer).render();
    metric_value(&text, name, labels).unwrap_or(0.0)
}

/// Publishes the burst into JetStream: publisher `p`'s message `s` goes to
/// channel `hot(p + s)` with data `{"p", "s"}` and waits on `rep.<p>.<s>`.
async fn burst(js: &jetstream::Context) {
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let js = js.clone();
        publishers.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for s in 0..PER_PUBLISHER {
                acks.push(
                    publish(
                        &js,
                        PARTITIONS,
                        &hot(p + s),
                        &format!("p{p}-s{s}"),
                        json!({"p": p, "s": s}),
                        &format!("rep.{p}.{s}"),
                        None,
                    )
                    .await,
                );
            }
            for ack in acks {
                assert!(!ack.await.expect("stream ack").duplicate);
            }
        }));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
}

/// Records every channel publication of the hot channels as it arrives and
/// checks, at that moment, that the store already holds its offset (I2).
struct Live {
    offsets: Arc<std::sync::Mutex<HashMap<String, Vec<u64>>>>,
    not_yet_stored: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Live {
    async fn watch(client: &async_nats::Client, store: &SharedStore) -> Self {
        let offsets = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let not_yet_stored = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..HOT {
            let channel = hot(i);
            let mut sub = client
                .subscribe(subjects::channel_subject(&channel))
                .await
                .expect("subscribe");
            let (offsets, not_yet_stored, store) =
                (offsets.clone(), not_yet_stored.clone(), store.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let offset: u64 = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(subjects::OFFSET_HEADER))
                        .and_then(|v| v.as_str().parse().ok())
                        .expect("an offset header");
                    let head = store.position(&channel).await.expect("position").head;
                    if head < offset {
                        not_yet_stored.fetch_add(1, Ordering::SeqCst);
                    }
                    offsets
                        .lock()
                        .unwrap()
                        .entry(channel.clone())
                        .or_insert_with(Vec::new)
                        .push(offset);
                }
            }));
        }
        Self {
            offsets,
            not_yet_stored,
            tasks,
        }
    }

    fn of(&self, channel: &str) -> Vec<u64> {
        self.offsets
            .lock()
            .unwrap()
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Every reply names the stored publication holding its data; each
/// publisher's messages to one channel got increasing offsets; every
/// channel's `n` writer publications (plus `extra` stored beside the writer)
/// are dense. Returns the writer publications per channel.
async fn check_stored(
    store: &SharedStore,
    all: &HashMap<String, WriterReply>,
    extra: &HashMap<String, usize>,
) -> HashMap<String, usize> {
    let mut per_channel: HashMap<String, usize> = HashMap::new();
    let mut histories = HashMap::new();
    for i in 0..HOT {
        let stored = history(store, &hot(i)).await;
        assert_eq!(
            offsets(&stored),
            (1..=stored.len() as u64).collect::<Vec<_>>(),
            "{} is dense",
            hot(i)
        );
        let mut seen = HashSet::new();
        for p in &stored {
            assert!(
                seen.insert(data_of(p).to_string()),
                "{} stores {} twice",
                hot(i),
                data_of(p)
            );
        }
        histories.insert(hot(i), stored);
    }
    for p in 0..PUBLISHERS {
        let mut last: HashMap<String, u64> = HashMap::new();
        for s in 0..PER_PUBLISHER {
            let channel = hot(p + s);
            let offset = match &all[&format!("rep.{p}.{s}")] {
                WriterReply::Stored { offset, .. } => *offset,
                other => panic!("publisher {p} message {s}: {other:?}"),
            };
            let stored = &histories[&channel][offset as usize - 1];
            assert_eq!(data_of(stored), json!({"p": p, "s": s}));
            let before = last.insert(channel.clone(), offset).unwrap_or(0);
            assert!(
                offset > before,
                "publisher {p} on {channel}: {offset} after {before}"
            );
            *per_channel.entry(channel).or_default() += 1;
        }
    }
    for (channel, stored) in &histories {
        let writer = per_channel.get(channel).copied().unwrap_or(0);
        let beside = extra.get(channel).copied().unwrap_or(0);
        assert_eq!(stored.len(), writer + beside, "{channel}");
    }
    per_channel
}

/// A burst to the hot channels, queued before a depth-4 pipelined writer
/// starts on the store `open` makes in a fresh directory: every publication
/// is stored once, densely and in each publisher's order, published live
/// once each in offset order and never before it is stored (I2), and every
/// reply names what was stored. Returns the batches appended behind another
/// in flight and the store conflicts met, over the run.
async fn pipelined_burst(open: impl FnOnce(&std::path::Path) -> SharedStore) -> (f64, f64) {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let js = stream(&client, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let replies = Replies::listen(&client, "rep").await;
    let live = Live::watch(&client, &store).await;
    // The backlog first: the writer then meets many ready batches at once.
    burst(&js).await;
    let conflicts_before = metric("herald_writer_errors_total", &[("kind", "store_conflict")]);
    let pipelined_before = metric("herald_writer_pipelined_total", &[]);
    let writer = Running::start(&client, &store, settings(4));
    let all = replies.wait_for(PUBLISHERS * PER_PUBLISHER).await;
    let pipelined = metric("herald_writer_pipelined_total", &[]) - pipelined_before;
    let conflicts =
        metric("herald_writer_errors_total", &[("kind", "store_conflict")]) - conflicts_before;

    let per_channel = check_stored(&store, &all, &HashMap::new()).await;
    for (channel, n) in &per_channel {
        let n = *n as u64;
        eventually(
            &format!("{n} live publications of {channel}"),
            LIMIT,
            || async { (live.of(channel).len() as u64 >= n).then_some(()) },
        )
        .await;
        assert_eq!(
            live.of(channel),
            (1..=n).collect::<Vec<_>>(),
            "{channel}: published once each, in offset order"
        );
    }
    assert_eq!(live.not_yet_stored.load(Ordering::SeqCst), 0, "I2");
    assert!(
        replies.mismatches().is_empty(),
        "{:?}",
        replies.mismatches()
    );
    writer.stop().await;
    (pipelined, conflicts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_burst_to_hot_channels_keeps_offsets_dense_and_in_order() {
    let _serial = SERIAL.lock().await;
    let (pipelined, conflicts) = pipelined_burst(open_store).await;
    println!(
        "pipelined burst: {} messages to {HOT} channels, {pipelined} batches appended behind \
         another in flight",
        PUBLISHERS * PER_PUBLISHER
    );
    assert!(pipelined > 0.0, "batches were in flight together");
    // Each batch was sequenced on the plans in flight before it, never on a
    // head the store had already passed.
    assert_eq!(conflicts, 0.0, "a writer alone meets no conflict");
}

/// Appends one publication to `channel` behind the writer's back, as a
/// second writer would: the writer's next batch there meets `Conflict`.
async fn append_beside(store: &SharedStore, channel: &str, n: usize) -> bool {
    let position = store.position(channel).await.expect("position");
    let offset = position.head + 1;
    let key = format!("beside-{n}");
    let result = store
        .append(&[ChannelAppend {
            channel: channel.to_string(),
            epoch: position.epoch,
            publications: vec![StoredPublication {
                offset,
                data: Bytes::from(json!({"beside": n}).to_string()),
                info: None,
                time_ms: 1,
            }],
            idempotency_keys: vec![(key, offset)],
        }])
        .await;
    match result {
        Ok(()) => true,
        Err(e) if e.kind == StoreErrorKind::Conflict => false,
        Err(e) => panic!("appending beside the writer: {e}"),
    }
}

/// Heads moved under a pipelined writer (a second writer appending to the
/// hot channels, what an ownership overlap can cause): batches in the middle
/// of the pipeline meet `Conflict`, the pipeline is recovered, and still no
/// offset is given twice, no key is stored twice, every reply names its
/// data, each publisher keeps its order and nothing is published before it
/// is stored or published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_moved_under_a_pipelined_writer_are_recovered_without_a_gap_or_a_duplicate() {
    let _serial = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let js = stream(&client, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let replies = Replies::listen(&client, "rep").await;
    let live = Live::watch(&client, &store).await;
    burst(&js).await;
    let conflicts_before = metric("herald_writer_errors_total", &[("kind", "store_conflict")]);
    let pipelined_before = metric("herald_writer_pipelined_total", &[]);
    let writer = Running::start(&client, &store, settings(4));

    let done = Arc::new(AtomicBool::new(false));
    let beside = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut stored: HashMap<String, usize> = HashMap::new();
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                let channel = hot(n);
                if append_beside(&store, &channel, n).await {
                    *stored.entry(channel).or_default() += 1;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            stored
        })
    };
    let all = replies.wait_for(PUBLISHERS * PER_PUBLISHER).await;
    done.store(true, Ordering::SeqCst);
    let extra = beside.await.expect("appender");
    let conflicts =
        metric("herald_writer_errors_total", &[("kind", "store_conflict")]) - conflicts_before;
    let pipelined = metric("herald_writer_pipelined_total", &[]) - pipelined_before;

    let per_channel = check_stored(&store, &all, &extra).await;
    // Live: what the writer stored, in increasing order, once each (the
    // publications appended beside it are not published: gaps there).
    for (channel, n) in &per_channel {
        let n = *n;
        eventually(
            &format!("{n} live publications of {channel}"),
            LIMIT,
            || async { (live.of(channel).len() >= n).then_some(()) },
        )
        .await;
        let got = live.of(channel);
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{channel}: live offsets increase: {got:?}"
        );
        let stored = history(&store, channel).await;
        let by_writer: Vec<u64> = stored
            .iter()
            .filter(|p| data_of(p).get("beside").is_none())
            .map(|p| p.offset)
            .collect();
        assert_eq!(
            got, by_writer,
            "{channel}: exactly what the writer stored is published"
        );
    }
    assert_eq!(live.not_yet_stored.load(Ordering::SeqCst), 0, "I2");
    assert!(
        replies.mismatches().is_empty(),
        "{:?}",
        replies.mismatches()
    );
    let beside_total: usize = extra.values().sum();
    println!(
        "heads moved under the pipeline: {beside_total} publications appended beside the writer, \
         {conflicts} conflicts met by the writer, {pipelined} batches pipelined"
    );
    assert!(beside_total > 0, "the second writer got in");
    assert!(conflicts > 0.0, "the writer met conflicts");
    assert!(pipelined > 0.0, "batches were in flight together");
    writer.stop().await;
}

/// The real embedded store, declaring that it does not apply appends in
/// call order (as ScyllaDB does not): the writer then issues a batch's
/// append only after the one before it succeeded.
struct Unordered(SharedStore);

#[async_trait::async_trait]
impl Store for Unordered {
    async fn append(&self, batch: &[ChannelAppend]) -> StoreResult<()> {
        self.0.append(batch).await
    }
    fn ordered_appends(&self) -> bool {
        false
    }
    async fn read(&self, channel: &str, range: ReadRange) -> StoreResult<Vec<StoredPublication>> {
        self.0.read(channel, range).await
    }
    async fn position(&self, channel: &str) -> StoreResult<Position> {
        self.0.position(channel).await
    }
    async fn idempotent_offset(&self, channel: &str, key: &str) -> StoreResult<Option<u64>> {
        self.0.idempotent_offset(channel, key).await
    }
    async fn idempotent_offsets(&self, keys: &[(&str, &str)]) -> StoreResult<Vec<Option<u64>>> {
        self.0.idempotent_offsets(keys).await
    }
    async fn purge_expired_keys(&self) -> StoreResult<u64> {
        self.0.purge_expired_keys().await
    }
    async fn add_members(
        &self,
        channel: &str,
        users: &[&str],
        now_ms: u64,
    ) -> StoreResult<Vec<String>> {
        self.0.add_members(channel, users, now_ms).await
    }
    async fn remove_members(
        &self,
        channel: &str,
        users: &[&str],
        now_ms: u64,
    ) -> StoreResult<Vec<String>> {
        self.0.remove_members(channel, users, now_ms).await
    }
    async fn is_member(&self, channel: &str, user: &str) -> StoreResult<bool> {
        self.0.is_member(channel, user).await
    }
    async fn members(
        &self,
        channel: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, Markers)>> {
        self.0.members(channel, after, limit).await
    }
    async fn advance_markers(
        &self,
        user: &str,
        channel: &str,
        read: u64,
        delivered: u64,
        now_ms: u64,
    ) -> StoreResult<(Markers, bool)> {
        self.0
            .advance_markers(user, channel, read, delivered, now_ms)
            .await
    }
    async fn markers(&self, user: &str, channel: &str) -> StoreResult<Markers> {
        self.0.markers(user, channel).await
    }
    async fn conversations(&self, user: &str) -> StoreResult<Vec<Conversation>> {
        self.0.conversations(user).await
    }
    async fn put_device(&self, device: &Device) -> StoreResult<Option<Device>> {
        self.0.put_device(device).await
    }
    async fn remove_device(&self, id: &str) -> StoreResult<Option<Device>> {
        self.0.remove_device(id).await
    }
    async fn device(&self, id: &str) -> StoreResult<Option<Device>> {
        self.0.device(id).await
    }
    async fn user_devices(
        &self,
        user: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<Device>> {
        self.0.user_devices(user, after, limit).await
    }
    async fn topic_devices(
        &self,
        topic: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<Device>> {
        self.0.topic_devices(topic, after, limit).await
    }
}

/// On a store without ordered appends (ScyllaDB's case) the pipeline still
/// overlaps a batch's append with the next one's sequencing and the previous
/// one's completion, chaining the appends: nothing meets a conflict, and
/// offsets stay dense and in each publisher's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ordered_appends_the_pipeline_chains_them_without_conflicts() {
    let _serial = SERIAL.lock().await;
    let (pipelined, conflicts) = pipelined_burst(|dir| {
        let store: SharedStore = Arc::new(Unordered(open_store(dir)));
        assert!(!store.ordered_appends());
        store
    })
    .await;
    println!(
        "unordered store: {pipelined} batches appended while the one before was completing, \
         {conflicts} conflicts"
    );
    assert_eq!(conflicts, 0.0, "chained appends never conflict");
    assert!(
        pipelined > 0.0,
        "appends were issued behind batches in flight"
    );
}
