//! Partition ownership among writer instances (I8), black-box: a real
//! nats-server, one embedded store in a temp dir shared by several writer
//! instances in this process, each with its own NATS connection. Ownership is
//! sampled all along (each instance's running partitions and the lease keys):
//! no partition may run in two instances at once.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use common::ingest::{Replies, data_of, history, offsets, open_store, publish, stream};
use common::{TestNats, eventually};
use herald::bus::ingest::WriterReply;
use herald::bus::subjects;
use herald::store::SharedStore;
use herald::writer::{WriterError, WriterHandle, WriterInstance, WriterSettings};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const PARTITIONS: u32 = 16;
const FAILOVER: Duration = Duration::from_secs(2);
const LIMIT: Duration = Duration::from_secs(20);

fn settings() -> WriterSettings {
    WriterSettings {
        partitions: PARTITIONS,
        batch_size: 32,
        pipeline_depth: 2,
        max_ack_pending: 256,
        ack_wait: FAILOVER,
        head_cache_capacity: 1000,
        failover_timeout: FAILOVER,
        kv_replicas: 1,
    }
}

/// One writer instance on its own NATS connection.
struct Instance {
    handle: WriterHandle,
    stop: CancellationToken,
    task: JoinHandle<Result<(), WriterError>>,
    client: async_nats::Client,
}

impl Instance {
    async fn start(nats: &TestNats, store: &SharedStore) -> Self {
        let client = nats.client().await;
        let instance =
            WriterInstance::new(client.clone(), store.clone(), settings()).expect("valid settings");
        let handle = instance.handle();
        let stop = CancellationToken::new();
        let task = tokio::spawn(instance.run(stop.clone()));
        Self {
            handle,
            stop,
            task,
            client,
        }
    }

    /// Graceful stop: the batch in hand finishes, leases are released.
    async fn stop(self) {
        self.stop.cancel();
        let result = tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("writer stops in time")
            .expect("writer task");
        assert!(result.is_ok(), "writer returned {result:?}");
    }

    /// A crash: the task is dropped mid-flight (nothing released, nothing
    /// acked) and its connection closed.
    async fn crash(self) {
        self.task.abort();
        assert!(self.task.await.unwrap_err().is_cancelled());
        self.client.drain().await.ok();
    }
}

/// Who holds each lease key now.
async fn lease_holders(store: &kv::Store) -> HashMap<u32, String> {
    let reads = (0..PARTITIONS).map(|p| async move {
        let value = store.get(subjects::partition_lease_key(p)).await;
        (p, value)
    });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .filter_map(|(p, v)| Some((p, String::from_utf8_lossy(&v.ok()??).into_owned())))
        .collect()
}

/// Samples ownership until stopped: the running partitions of the live
/// instances must never overlap, and a partition an instance runs (before and
/// after reading the keys) must be leased to it.
struct Sampler {
    live: Arc<Mutex<Vec<WriterHandle>>>,
    violations: Arc<Mutex<Vec<String>>>,
    samples: Arc<Mutex<usize>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Sampler {
    fn start(bucket: kv::Store) -> Self {
        let live: Arc<Mutex<Vec<WriterHandle>>> = Arc::default();
        let violations: Arc<Mutex<Vec<String>>> = Arc::default();
        let samples: Arc<Mutex<usize>> = Arc::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (live, violations, samples, stop) = (
                live.clone(),
                violations.clone(),
                samples.clone(),
                stop.clone(),
            );
            async move {
                while !stop.is_cancelled() {
                    let handles = live.lock().unwrap().clone();
                    let before: Vec<BTreeSet<u32>> = handles.iter().map(|h| h.owned()).collect();
                    let holders = lease_holders(&bucket).await;
                    let after: Vec<BTreeSet<u32>> = handles.iter().map(|h| h.owned()).collect();
                    let mut found = Vec::new();
                    for (i, a) in before.iter().enumerate() {
                        for (j, b) in before.iter().enumerate().skip(i + 1) {
                            let both: Vec<_> = a.intersection(b).collect();
                            if !both.is_empty() {
                                found.push(format!(
                                    "partitions {both:?} run in two writers ({i}, {j})"
                                ));
                            }
                        }
                        for p in a.intersection(&after[i]) {
                            if holders.get(p).map(String::as_str) != Some(handles[i].id()) {
                                found.push(format!(
                                    "writer {i} runs partition {p} leased to {:?}",
                                    holders.get(p)
                                ));
                            }
                        }
                    }
                    violations.lock().unwrap().extend(found);
                    *samples.lock().unwrap() += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        Self {
            live,
            violations,
            samples,
            stop,
            task,
        }
    }

    fn watch(&self, handle: &WriterHandle) {
        self.live.lock().unwrap().push(handle.clone());
    }

    fn forget(&self, handle: &WriterHandle) {
        self.live.lock().unwrap().retain(|h| h.id() != handle.id());
    }

    async fn finish(self) {
        self.stop.cancel();
        self.task.await.unwrap();
        let samples = *self.samples.lock().unwrap();
        let violations = self.violations.lock().unwrap().clone();
        assert!(samples > 2, "only {samples} ownership samples");
        assert!(violations.is_empty(), "{violations:#?}");
    }
}

async fn bucket(client: &async_nats::Client) -> kv::Store {
    let js = jetstream::new(client.clone());
    eventually("the writers bucket", LIMIT, || {
        let js = js.clone();
        async move { js.get_key_value(subjects::WRITERS_BUCKET).await.ok() }
    })
    .await
}

/// Waits until the instances own every partition between them, with these
/// counts (in any order); returns how long it took.
async fn converged(instances: &[&WriterHandle], counts: &[usize]) -> Duration {
    let started = Instant::now();
    let mut want = counts.to_vec();
    want.sort_unstable();
    eventually(&format!("ownership split {counts:?}"), LIMIT, || {
        let owned: Vec<BTreeSet<u32>> = instances.iter().map(|h| h.owned()).collect();
        let mut sizes: Vec<usize> = owned.iter().map(BTreeSet::len).collect();
        sizes.sort_unstable();
        let all: BTreeSet<u32> = owned.into_iter().flatten().collect();
        let ok = sizes == want && all.len() == PARTITIONS as usize;
        async move { ok.then_some(()) }
    })
    .await;
    started.elapsed()
}

#[tokio::test]
async fn partitions_spread_over_joining_writers_without_overlap() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    stream(&client, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());

    let a = Instance::start(&nats, &store).await;
    let sampler = Sampler::start(bucket(&client).await);
    sampler.watch(&a.handle);
    converged(&[&a.handle], &[16]).await;

    let b = Instance::start(&nats, &store).await;
    sampler.watch(&b.handle);
    let took = converged(&[&a.handle, &b.handle], &[8, 8]).await;
    println!("second writer joined: 8/8 after {took:?}");

    let c = Instance::start(&nats, &store).await;
    sampler.watch(&c.handle);
    let took = converged(&[&a.handle, &b.handle, &c.handle], &[6, 5, 5]).await;
    println!("third writer joined: 6/5/5 after {took:?}");

    // The keys agree with what each instance runs.
    let holders = lease_holders(&bucket(&client).await).await;
    for inst in [&a, &b, &c] {
        for p in inst.handle.owned() {
            assert_eq!(holders.get(&p).map(String::as_str), Some(inst.handle.id()));
        }
    }
    sampler.finish().await;
    for inst in [a, b, c] {
        inst.stop().await;
    }
}

#[tokio::test]
async fn a_writer_leaving_gracefully_hands_its_partitions_over_at_once() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    stream(&client, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let (kv, a, b, c) = three_writers(&nats, &store).await;
    let sampler = Sampler::start(kv.clone());
    for inst in [&a, &b, &c] {
        sampler.watch(&inst.handle);
    }
    converged(&[&a.handle, &b.handle, &c.handle], &[6, 5, 5]).await;

    let leaving = c.handle.clone();
    sampler.forget(&leaving);
    let started = Instant::now();
    c.stop().await;
    // Released, not left to expire: no lease names it, its member key is gone.
    let holders = lease_holders(&kv).await;
    assert!(
        holders.values().all(|h| h != leaving.id()),
        "leases left behind: {holders:?}"
    );
    assert!(
        kv.get(subjects::writer_member_key(leaving.id()))
            .await
            .unwrap()
            .is_none()
    );
    assert!(leaving.owned().is_empty());
    // Well before a lease could have expired.
    eventually("the others own every partition", FAILOVER, || {
        let all: BTreeSet<u32> = a.handle.owned().union(&b.handle.owned()).copied().collect();
        async move { (all.len() == PARTITIONS as usize).then_some(()) }
    })
    .await;
    println!(
        "graceful leave: partitions taken over after {:?}",
        started.elapsed()
    );
    converged(&[&a.handle, &b.handle], &[8, 8]).await;
    sampler.finish().await;
    a.stop().await;
    b.stop().await;
}

/// Starts three instances; returns the bucket and them.
async fn three_writers(
    nats: &TestNats,
    store: &SharedStore,
) -> (kv::Store, Instance, Instance, Instance) {
    let a = Instance::start(nats, store).await;
    let kv = bucket(&a.client).await;
    let b = Instance::start(nats, store).await;
    let c = Instance::start(nats, store).await;
    (kv, a, b, c)
}

/// A writer crashes while publishers keep publishing (each retrying with a
/// fresh message id, same key, until it gets a reply): its partitions are
/// taken over, and every acknowledged publication is stored exactly once at
/// the offset its reply named, in dense channels.
#[tokio::test]
async fn a_crashed_writers_partitions_are_taken_over_and_nothing_is_lost_or_doubled() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    stream(&client, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let replies = Replies::listen(&client, "rep").await;
    let (kv, a, b, c) = three_writers(&nats, &store).await;
    let sampler = Sampler::start(kv.clone());
    for inst in [&a, &b, &c] {
        sampler.watch(&inst.handle);
    }
    converged(&[&a.handle, &b.handle, &c.handle], &[6, 5, 5]).await;

    let channels: Vec<String> = (0..32).map(|i| format!("load:{i}")).collect();
    let publishing = CancellationToken::new();
    let retries = Arc::new(Mutex::new(0usize));
    let mut publishers = Vec::new();
    for (n, chunk) in channels.chunks(4).enumerate() {
        let (js, replies, stop, retries) = (
            jetstream::new(nats.client().await),
            replies.clone(),
            publishing.clone(),
            retries.clone(),
        );
        let chunk = chunk.to_vec();
        publishers.push(tokio::spawn(async move {
            let mut sent: Vec<(String, String)> = Vec::new();
            let mut i = 0usize;
            while !stop.is_cancelled() {
                let channel = &chunk[i % chunk.len()];
                let key = format!("p{n}-{i}");
                let reply = format!("rep.{key}");
                let mut attempt = 0;
                loop {
                    let msg_id = format!("{key}-{attempt}");
                    publish(
                        &js,
                        PARTITIONS,
                        channel,
                        &key,
                        json!({"key": key}),
                        &reply,
                        Some(&msg_id),
                    )
                    .await
                    .await
                    .expect("stream ack");
                    let deadline = Instant::now() + Duration::from_millis(1500);
                    while replies.get(&reply).is_none() && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if replies.get(&reply).is_some() {
                        break;
                    }
                    attempt += 1;
                    *retries.lock().unwrap() += 1;
                }
                sent.push((channel.clone(), key));
                i += 1;
            }
            sent
        }));
    }

    // Let traffic flow through all three, then crash one.
    let before = replies.wait_for(200).await.len();
    let victim = c.handle.clone();
    let lost = victim.owned();
    sampler.forget(&victim);
    let crashed_at = Instant::now();
    c.crash().await;
    assert!(
        victim.owned().is_empty(),
        "the crashed writer's tasks are gone"
    );
    eventually(
        "the crashed writer's partitions taken over",
        FAILOVER * 3,
        || {
            let all: BTreeSet<u32> = a.handle.owned().union(&b.handle.owned()).copied().collect();
            async move { (all.len() == PARTITIONS as usize).then_some(()) }
        },
    )
    .await;
    let took = crashed_at.elapsed();
    println!(
        "crash: {} partitions taken over after {took:?} (failover_timeout {FAILOVER:?})",
        lost.len()
    );
    converged(&[&a.handle, &b.handle], &[8, 8]).await;
    // Traffic keeps flowing on the survivors.
    replies.wait_for(replies.len() + 200).await;
    publishing.cancel();
    let mut sent = Vec::new();
    for p in publishers {
        sent.extend(tokio::time::timeout(LIMIT, p).await.unwrap().unwrap());
    }
    println!(
        "{} publications acknowledged ({before} before the crash), {} retries",
        sent.len(),
        retries.lock().unwrap()
    );

    let mut per_channel: HashMap<&str, usize> = HashMap::new();
    for (channel, key) in &sent {
        let Some(WriterReply::Stored { offset, .. }) = replies.get(&format!("rep.{key}")) else {
            panic!("{key}: no Stored reply");
        };
        let stored = history(&store, channel).await;
        assert_eq!(
            data_of(&stored[offset as usize - 1]),
            json!({"key": key}),
            "{key} not at the offset its reply named"
        );
        *per_channel.entry(channel).or_default() += 1;
    }
    for channel in &channels {
        let stored = history(&store, channel).await;
        let n = per_channel.get(channel.as_str()).copied().unwrap_or(0);
        assert_eq!(
            offsets(&stored),
            (1..=n as u64).collect::<Vec<_>>(),
            "{channel} dense, each key once"
        );
    }
    assert!(
        replies.mismatches().is_empty(),
        "{:?}",
        replies.mismatches()
    );
    sampler.finish().await;
    a.stop().await;
    b.stop().await;
}

/// NATS stops answering (the server process is frozen): the writer cannot
/// renew, so it stops its partitions once the leases expire locally, without
/// exiting; when NATS answers again it takes the partitions back and stores.
#[tokio::test]
async fn a_writer_cut_off_from_nats_stops_its_partitions_and_resumes_after() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let js = stream(&client, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let replies = Replies::listen(&client, "rep").await;
    let a = Instance::start(&nats, &store).await;
    converged(&[&a.handle], &[16]).await;

    let pid = nats.server.pid().expect("nats-server pid").to_string();
    signal("-STOP", &pid).await;
    let frozen = Instant::now();
    eventually("partitions stopped after the leases expired", LIMIT, || {
        let empty = a.handle.owned().is_empty();
        async move { empty.then_some(()) }
    })
    .await;
    println!(
        "NATS frozen: partitions stopped after {:?}",
        frozen.elapsed()
    );
    assert!(!a.task.is_finished(), "the writer must not exit");
    signal("-CONT", &pid).await;
    let resumed = converged(&[&a.handle], &[16]).await;
    println!("NATS back: all partitions owned again after {resumed:?}");

    publish(&js, PARTITIONS, "after", "k", json!(1), "rep.after", None)
        .await
        .await
        .unwrap();
    assert_eq!(replies.stored("rep.after").await.0, 1);
    a.stop().await;
}

async fn signal(sig: &str, pid: &str) {
    let status = tokio::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .await
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}
