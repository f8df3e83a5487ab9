//! Many writers and syncs on one shared store, a writer cut off from NATS
//! (issue 16 §3, §4), and recovery from an expired offset (§6, on both
//! backends): `store = scylla` against the CQL node named by
//! `HERALD_SCYLLA_NODES` (scripts/test.sh starts a Cassandra node and sets
//! it), a fresh keyspace per test created by the real `herald migrate`.
//!
//! Every process is the built `herald` binary (tests/common/process.rs);
//! publishes go through the server API with an idempotency key and are
//! retried with it until acknowledged (tests/common/load.rs), and history
//! is read back to count what was lost, duplicated or not dense. Each test
//! prints its figures (`-- --nocapture` shows them) and skips, saying why on
//! the real stderr, when `HERALD_SCYLLA_NODES` is not set.
//!
//! The embedded store runs only the expiry case: one process holds its
//! directory (the standby/restart cases are tests/crash.rs), so there is no
//! second writer to take over and no split brain to fence.
//!
//! The network-namespace partition test runs its cut writer in its own
//! namespace (tests/common/netns.rs, root and `ip netns` needed, else it
//! says it skips) against a 3-node NATS cluster.
//!
//! Resources: one nats-server (three for the namespace test), at most seven
//! herald processes, modest loads (a few thousand publishes); the tests take
//! turns (`SERIAL`).

mod common;

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::cluster::NatsCluster;
use common::follower::{Conn, token};
use common::load::{Ack, Load, join_all, verify};
use common::netns::Netns;
use common::process::{HeraldProcess, Spec, metric_value};
use common::proxy::Proxy;
use common::scylla::{SharedStore, scylla_nodes};
use common::{TestNats, eventually};
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Ingest partitions, as `SharedStore::spec` sets them.
const PARTITIONS: usize = 4;
const OWNED: &str = "herald_writer_partitions_owned";
/// Successful store appends (one per batch) of a writer.
const COMMITS: &str = "herald_writer_commit_seconds_count";

async fn owned(p: &HeraldProcess) -> f64 {
    p.metric(OWNED, &[]).await
}

/// Polls until the writers' owned partitions add up to all of them and
/// `each` holds for every writer's count.
async fn wait_shares(what: &str, writers: &[&HeraldProcess], each: impl Fn(f64) -> bool) {
    eventually(what, Duration::from_secs(60), || async {
        let mut counts = Vec::new();
        for w in writers {
            counts.push(owned(w).await);
        }
        (counts.iter().sum::<f64>() == PARTITIONS as f64 && counts.iter().all(|c| each(*c)))
            .then_some(counts)
    })
    .await;
}

/// When writer-1 last committed, when it dropped its partitions, when
/// writer-2 first took one (with writer-1's commit count then), and when
/// writer-2 held every partition: both partition tests' timeline.
struct Takeover {
    w1_last_commit: (Instant, f64),
    w1_dropped: Option<Instant>,
    took_at: Instant,
    w1_commits_at_takeover: f64,
    all_moved: Duration,
}

/// Samples both writers from `cut` until writer-2 (which held `w2_share`
/// partitions before) holds every partition.
async fn sample_takeover(
    w1: &HeraldProcess,
    w2: &HeraldProcess,
    w2_share: f64,
    cut: Instant,
    commits_at_cut: f64,
) -> Takeover {
    let mut w1_last_commit = (cut, commits_at_cut);
    let mut w1_dropped: Option<Instant> = None;
    let mut w2_took: Option<(Instant, f64)> = None;
    let deadline = cut + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "writer-2 never took every partition"
        );
        let m1 = w1.metrics().await;
        let c1 = metric_value(&m1, COMMITS, &[]).unwrap_or(0.0);
        let o1 = metric_value(&m1, OWNED, &[]).unwrap_or(0.0);
        let o2 = owned(w2).await;
        let now = Instant::now();
        if c1 > w1_last_commit.1 {
            w1_last_commit = (now, c1);
        }
        if o1 == 0.0 && w1_dropped.is_none() {
            w1_dropped = Some(now);
        }
        if o2 > w2_share && w2_took.is_none() {
            w2_took = Some((now, c1));
        }
        if o2 == PARTITIONS as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (took_at, w1_commits_at_takeover) = w2_took.expect("writer-2 took a partition");
    Takeover {
        w1_last_commit,
        w1_dropped,
        took_at,
        w1_commits_at_takeover,
        all_moved: cut.elapsed(),
    }
}

/// The longest stretch without any acknowledgement between the first and
/// the last one: how long publishers paused.
fn longest_pause(acks: &[Ack]) -> Duration {
    let mut times: Vec<Instant> = acks.iter().map(|a| a.acked).collect();
    times.sort();
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// §3: two writers, two syncs, two edges on one keyspace. The partitions
/// spread over both writers; `kill -9` of one under publish load moves its
/// partitions to the other; nothing acknowledged is lost or duplicated and
/// offsets stay dense; a writer started later takes a share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_share_partitions_and_kill9_of_one_loses_nothing() {
    let test = "two_writers_share_partitions_and_kill9_of_one_loses_nothing";
    let Some(nodes) = scylla_nodes(test) else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let store = SharedStore::create(nodes, "herald_writers").await;
    let url = nats.url();
    let mut w1 = HeraldProcess::start(store.spec("writer", "writer-1", url)).await;
    let w2 = HeraldProcess::start(store.spec("writer", "writer-2", url)).await;
    let _s1 = HeraldProcess::start(store.spec("sync", "sync-1", url)).await;
    let _s2 = HeraldProcess::start(store.spec("sync", "sync-2", url)).await;
    let e1 = HeraldProcess::start(store.spec("edge", "edge-1", url)).await;
    let e2 = HeraldProcess::start(store.spec("edge", "edge-2", url)).await;

    wait_shares(
        "the partitions spread over both writers",
        &[&w1, &w2],
        |c| c >= 1.0,
    )
    .await;
    let spread = (owned(&w1).await, owned(&w2).await);

    let load = Load {
        publishers: 2,
        channels: 20,
        per_publisher: 500,
        window: 4,
    };
    let acked = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = load.spawn_as("a", &e1.api(), &acked);
    tasks.extend(load.spawn_as("b", &e2.api(), &acked));
    let total = 2 * load.total();
    eventually(
        "a third of the load acknowledged",
        Duration::from_secs(120),
        || async { (acked.load(Ordering::SeqCst) >= total / 3).then_some(()) },
    )
    .await;
    let acked_before = acked.load(Ordering::SeqCst);
    let status = w1.kill9().await;
    let gone = Instant::now();
    assert_eq!(status.signal(), Some(9), "{status}");
    wait_shares("writer-2 holds every partition", &[&w2], |_| true).await;
    let moved = gone.elapsed();

    // A writer started later (while the load goes on) takes a share.
    let w3 = HeraldProcess::start(store.spec("writer", "writer-3", url)).await;
    let w3_started = Instant::now();
    wait_shares("writer-3 takes a share from writer-2", &[&w2, &w3], |c| {
        c >= 1.0
    })
    .await;
    let w3_share_after = w3_started.elapsed();
    let later = (owned(&w2).await, owned(&w3).await);

    let acks = join_all(tasks).await;
    let load_time = started.elapsed();
    let w3_appends = w3.metric(COMMITS, &[]).await;
    let failover = acks
        .iter()
        .filter(|a| a.sent >= gone)
        .map(|a| a.acked - gone)
        .min();
    let retried = acks.iter().filter(|a| a.attempts > 1).count();
    let pause = longest_pause(&acks);
    let channels: Vec<String> = (0..load.channels).map(|i| load.channel(i)).collect();
    let v = verify(&e2.api(), &acks, &channels).await;
    println!(
        "{test}: partitions (writer-1, writer-2) {spread:?}; {total} publishes through 2 edges in \
         {load_time:.1?} ({acked_before} acknowledged before the kill); acknowledged {}, stored {}, \
         lost {}, duplicated {}, channels not dense {}; publishes retried {retried}; writer-1 kill \
         -9 -> writer-2 owns all {PARTITIONS} partitions after {moved:.2?} \
         (writer_failover_timeout 2s); first success of a publish sent after the kill \
         {failover:.2?}; longest pause between two acknowledgements {pause:.2?}; writer-3 started \
         later: (writer-2, writer-3) {later:?} after {w3_share_after:.2?}, store appends by \
         writer-3 {w3_appends}",
        v.acked, v.stored, v.lost, v.duplicated, v.not_dense
    );
    v.assert_clean(total);
    assert!(failover.is_some(), "publishes succeeded after the kill");
}

/// Reads (history pages and subscribes with recovery) through `addr` until
/// `stop`; returns (successes as (sent, done), error replies).
async fn recover_until_stopped(
    addr: std::net::SocketAddr,
    channel: &str,
    n: u64,
    epoch: String,
    ok: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> (Vec<(Instant, Instant)>, usize) {
    let mut conn = Conn::open(addr, &token("recoverer"))
        .await
        .expect("connect");
    let (mut successes, mut errors) = (Vec::new(), 0);
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        let after = (i * 7) % (n - 10);
        let (method, params) = if i % 2 == 0 {
            (
                "subscribe",
                json!({"channel": channel, "recover": true, "offset": after, "epoch": epoch}),
            )
        } else {
            (
                "history",
                json!({"channel": channel, "limit": 10, "since": {"offset": after, "epoch": epoch}}),
            )
        };
        let reply = conn
            .call(method, params)
            .await
            .expect("the edge keeps the connection");
        if reply.get("error").is_some() {
            errors += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let pubs = if method == "subscribe" {
            assert_eq!(reply["subscribe"]["recovered"], true, "{reply}");
            let u = conn
                .call("unsubscribe", json!({"channel": channel}))
                .await
                .expect("unsubscribe");
            assert!(u.get("error").is_none(), "{u}");
            reply["subscribe"]["publications"].clone()
        } else {
            reply["history"]["publications"].clone()
        };
        let offsets: Vec<u64> = pubs
            .as_array()
            .expect("publications")
            .iter()
            .map(|p| p["offset"].as_u64().expect("offset"))
            .collect();
        let last = if method == "subscribe" { n } else { after + 10 };
        assert_eq!(
            offsets,
            (after + 1..=last).collect::<Vec<_>>(),
            "{method} after {after}"
        );
        successes.push((sent, Instant::now()));
        ok.fetch_add(1, Ordering::SeqCst);
        i += 1;
    }
    conn.close().await;
    (successes, errors)
}

/// §3: two syncs on the shared store; `kill -9` of one while clients
/// recover through both edges: their recoveries still succeed (answered by
/// the other sync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_sync_during_recovery_reads_clients_still_recover() {
    let test = "kill9_of_a_sync_during_recovery_reads_clients_still_recover";
    let Some(nodes) = scylla_nodes(test) else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let store = SharedStore::create(nodes, "herald_syncs").await;
    let url = nats.url();
    let _w = HeraldProcess::start(store.spec("writer", "writer", url)).await;
    let mut s1 = HeraldProcess::start(store.spec("sync", "sync-1", url)).await;
    let s2 = HeraldProcess::start(store.spec("sync", "sync-2", url)).await;
    let e1 = HeraldProcess::start(store.spec("edge", "edge-1", url)).await;
    let e2 = HeraldProcess::start(store.spec("edge", "edge-2", url)).await;
    let ch = "archive";
    let n = 100u64;
    let mut epoch = String::new();
    for i in 0..n {
        let r = e1
            .api()
            .ok(
                "publish",
                &json!({"channel": ch, "data": i}),
                Duration::from_secs(20),
            )
            .await;
        epoch = r["epoch"].as_str().expect("epoch").to_string();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = [e1.addr(), e2.addr()]
        .into_iter()
        .map(|addr| {
            tokio::spawn(recover_until_stopped(
                addr,
                ch,
                n,
                epoch.clone(),
                ok.clone(),
                stop.clone(),
            ))
        })
        .collect();
    eventually("reads succeed", Duration::from_secs(20), || async {
        (ok.load(Ordering::SeqCst) >= 20).then_some(())
    })
    .await;
    let served_before = (
        s1.metric("herald_sync_requests_total", &[]).await,
        s2.metric("herald_sync_requests_total", &[]).await,
    );
    let status = s1.kill9().await;
    let killed = Instant::now();
    assert_eq!(status.signal(), Some(9), "{status}");
    let before = ok.load(Ordering::SeqCst);
    eventually(
        "recoveries succeed after the kill",
        Duration::from_secs(30),
        || async { (ok.load(Ordering::SeqCst) >= before + 40).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let (mut successes, mut errors) = (Vec::new(), 0);
    for r in readers {
        let (s, e) = r.await.expect("reader");
        successes.extend(s);
        errors += e;
    }
    let after_kill: Vec<Duration> = successes
        .iter()
        .filter(|(sent, _)| *sent >= killed)
        .map(|(_, done)| *done - killed)
        .collect();
    let first_after = after_kill.iter().min().copied();
    let slowest = successes
        .iter()
        .map(|(sent, done)| *done - *sent)
        .max()
        .unwrap_or_default();
    let mut times: Vec<Instant> = successes.iter().map(|(_, done)| *done).collect();
    times.sort();
    let pause = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    println!(
        "{test}: requests served before the kill (sync-1, sync-2) {served_before:?}; {} \
         recoveries/history reads succeeded ({} sent after the kill), {errors} error replies \
         retried; first success of a read sent after the kill {first_after:.2?}; slowest \
         successful read {slowest:.2?}; longest pause between two successful reads {pause:.2?} \
         (sync_timeout 2s)",
        successes.len(),
        after_kill.len()
    );
    assert!(first_after.is_some(), "reads succeed after the kill");
    assert!(s2.healthy().await);
}

/// §4: a writer cut off from NATS (a TCP proxy between it and nats-server,
/// cut) while it holds leases, and kept alive with its store connection up:
/// it stops committing before the other writer takes its partitions (I8's
/// fence); after the heal the store holds no duplicate and no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_cut_from_nats_stops_committing_before_another_takes_over() {
    let test = "writer_cut_from_nats_stops_committing_before_another_takes_over";
    let Some(nodes) = scylla_nodes(test) else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let store = SharedStore::create(nodes, "herald_split").await;
    let url = nats.url();
    let proxy = Proxy::start(format!("127.0.0.1:{}", nats.port()).parse().unwrap()).await;
    let mut w1 =
        HeraldProcess::start(store.spec("writer", "writer-1 (behind the proxy)", &proxy.url()))
            .await;
    let w2 = HeraldProcess::start(store.spec("writer", "writer-2", url)).await;
    let _sync = HeraldProcess::start(store.spec("sync", "sync", url)).await;
    let edge = HeraldProcess::start(store.spec("edge", "edge", url)).await;
    wait_shares("both writers hold partitions", &[&w1, &w2], |c| c >= 1.0).await;
    let w2_share = owned(&w2).await;

    let load = Load {
        publishers: 4,
        channels: 20,
        per_publisher: 400,
        window: 4,
    };
    let api = edge.api();
    let acked = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let tasks = load.spawn(&api, &acked);
    eventually(
        "a third of the load acknowledged",
        Duration::from_secs(120),
        || async { (acked.load(Ordering::SeqCst) >= load.total() / 3).then_some(()) },
    )
    .await;
    let commits_at_cut = w1.metric(COMMITS, &[]).await;
    assert!(commits_at_cut > 0.0, "writer-1 committed before the cut");
    proxy.cut();
    let cut = Instant::now();

    // Sample both writers until writer-2 holds every partition: when
    // writer-1 last committed, when writer-1 dropped its partitions, when
    // writer-2 first took one of them.
    let Takeover {
        w1_last_commit,
        w1_dropped,
        took_at,
        w1_commits_at_takeover,
        all_moved,
    } = sample_takeover(&w1, &w2, w2_share, cut, commits_at_cut).await;
    // Writer-1 stays cut a while longer, alive, with its store up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let w1_commits_before_heal = w1.metric(COMMITS, &[]).await;
    assert!(w1.try_status().is_none(), "writer-1 is still running");
    proxy.restore();
    let healed = Instant::now();
    wait_shares(
        "writer-1 takes a share again after the heal",
        &[&w1, &w2],
        |c| c >= 1.0,
    )
    .await;
    let rebalanced = healed.elapsed();
    let acks = join_all(tasks).await;
    let load_time = t0.elapsed();
    let pause = longest_pause(&acks);
    let retried = acks.iter().filter(|a| a.attempts > 1).count();
    let channels: Vec<String> = (0..load.channels).map(|i| load.channel(i)).collect();
    let v = verify(&api, &acks, &channels).await;
    let since_cut = |t: Instant| t - cut;
    println!(
        "{test}: timeline from the cut (writer_failover_timeout 2s, lease 2/3 of it): writer-1 \
         last commit {:.2?} ({} store appends before the cut, {} at the end of the cut); writer-1 \
         owned 0 partitions at {:?}; writer-2 first took one of writer-1's at {:.2?} (writer-1's \
         appends then {}); writer-2 owned all {PARTITIONS} at {all_moved:.2?}; heal at {:.2?}; \
         writer-1 back with a share {rebalanced:.2?} after the heal. Load: {} publishes in \
         {load_time:.1?}, acknowledged {}, stored {}, lost {}, duplicated {}, channels not dense \
         {}; retried {retried}; longest pause between two acknowledgements {pause:.2?}",
        since_cut(w1_last_commit.0),
        commits_at_cut,
        w1_commits_before_heal,
        w1_dropped.map(since_cut),
        since_cut(took_at),
        w1_commits_at_takeover,
        since_cut(healed),
        load.total(),
        v.acked,
        v.stored,
        v.lost,
        v.duplicated,
        v.not_dense
    );
    // I8: nothing committed by writer-1 once writer-2 held its partitions.
    assert_eq!(
        w1_commits_before_heal, w1_commits_at_takeover,
        "writer-1 committed after writer-2 took over"
    );
    assert!(
        w1_last_commit.0 <= took_at,
        "writer-1's last commit was seen before writer-2's takeover"
    );
    v.assert_clean(load.total());
}

/// Issue 16 §6 end to end: a namespace with a 2 s `history_retention`; once
/// its publications expired (embedded: deleted by the expiry thread;
/// ScyllaDB: by their TTL), a client recovering from an expired offset gets
/// `recovered: false` with the head, a history page from it starts at the
/// first kept offset, and offsets keep counting.
async fn recovery_from_an_expired_offset(name: &str, serve: Spec) {
    let serve = HeraldProcess::start(serve.set("channel_history_retention", "2s")).await;
    let api = serve.api();
    let ch = "expiring";
    let mut epoch = String::new();
    for i in 0..30 {
        let r = api
            .ok(
                "publish",
                &json!({"channel": ch, "data": {"i": i}}),
                Duration::from_secs(20),
            )
            .await;
        epoch = r["epoch"].as_str().expect("epoch").to_string();
    }
    let published = Instant::now();
    let mut conn = Conn::open(serve.addr(), &token("late"))
        .await
        .expect("connect");
    let recovered = json!({"channel": ch, "recover": true, "offset": 5, "epoch": epoch});
    let fresh = conn
        .call("subscribe", recovered.clone())
        .await
        .expect("subscribe");
    assert_eq!(fresh["subscribe"]["recovered"], true, "{fresh}");
    conn.call("unsubscribe", json!({"channel": ch}))
        .await
        .expect("unsubscribe");
    // Served history ends at the retention at once (sync's time cut); the
    // rows go when the store deletes them.
    eventually(
        "no expired publication is served",
        Duration::from_secs(40),
        || async {
            let r = api
                .call(
                    "history",
                    &json!({"channel": ch, "limit": 100, "since": {"offset": 0, "epoch": epoch}}),
                )
                .await
                .ok()?;
            r["result"]["publications"]
                .as_array()
                .is_some_and(|p| p.is_empty())
                .then_some(())
        },
    )
    .await;
    let expired_after = published.elapsed();
    let late = conn
        .call("subscribe", recovered.clone())
        .await
        .expect("subscribe");
    // `recovered: false` is omitted on the wire (Centrifugo's JSON).
    assert_ne!(late["subscribe"]["recovered"], true, "{late}");
    assert_eq!(late["subscribe"]["was_recovering"], true, "{late}");
    assert_eq!(late["subscribe"]["offset"], 30, "{late}");
    conn.call("unsubscribe", json!({"channel": ch}))
        .await
        .expect("unsubscribe");
    let r = api
        .ok(
            "publish",
            &json!({"channel": ch, "data": {"i": 30}}),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(r["offset"], 31, "offsets keep counting: {r}");
    let page = conn
        .call(
            "history",
            json!({"channel": ch, "limit": 10, "since": {"offset": 5, "epoch": epoch}}),
        )
        .await
        .expect("history");
    let offsets: Vec<u64> = page["history"]["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .filter_map(|p| p["offset"].as_u64())
        .collect();
    println!(
        "{name}: 30 publications in a 2 s retention namespace; history empty {expired_after:.2?} \
         after the last publish; recovery from offset 5: {}; page from offset 5 after one more \
         publish: {offsets:?}",
        late["subscribe"]
    );
    assert_eq!(
        offsets,
        vec![31],
        "the page starts at the first kept offset"
    );
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_recovery_from_an_expired_offset_is_not_recovered() {
    let _serial = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = Spec::serve("serve", nats.url(), &dir.path().join("data"))
        .set("store_expiry_interval", "200ms");
    recovery_from_an_expired_offset("embedded_recovery_from_an_expired_offset", spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_recovery_from_an_expired_offset_is_not_recovered() {
    let test = "scylla_recovery_from_an_expired_offset_is_not_recovered";
    let Some(nodes) = scylla_nodes(test) else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let store = SharedStore::create(nodes, "herald_expiry").await;
    recovery_from_an_expired_offset(test, store.spec("serve", "serve", nats.url())).await;
}

/// §4, the other split brain: a writer frozen (SIGSTOP, as a long GC pause
/// or a stalled VM would) while it holds leases and has batches in hand,
/// its partitions taken over, then resumed (SIGCONT) believing it still
/// holds them. Whatever it was doing when frozen must not overwrite or
/// reorder what the other writer committed meanwhile (its fence is closed
/// by time; an append already past the fence meets the store's own fence):
/// no acknowledged publish lost, none duplicated, offsets dense.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_frozen_and_resumed_after_takeover_overwrites_nothing() {
    let test = "writer_frozen_and_resumed_after_takeover_overwrites_nothing";
    let Some(nodes) = scylla_nodes(test) else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let store = SharedStore::create(nodes, "herald_frozen").await;
    let url = nats.url();
    let w1 = HeraldProcess::start(store.spec("writer", "writer-1 (frozen)", url)).await;
    let w2 = HeraldProcess::start(store.spec("writer", "writer-2", url)).await;
    let _sync = HeraldProcess::start(store.spec("sync", "sync", url)).await;
    let edge = HeraldProcess::start(store.spec("edge", "edge", url)).await;
    wait_shares("both writers hold partitions", &[&w1, &w2], |c| c >= 1.0).await;
    let load = Load {
        publishers: 4,
        channels: 20,
        per_publisher: 400,
        window: 4,
    };
    let api = edge.api();
    let acked = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let tasks = load.spawn(&api, &acked);
    eventually(
        "a third of the load acknowledged",
        Duration::from_secs(120),
        || async { (acked.load(Ordering::SeqCst) >= load.total() / 3).then_some(()) },
    )
    .await;
    let appends_before = w1.metric(COMMITS, &[]).await;
    common::process::signal(w1.pid, "STOP");
    let frozen = Instant::now();
    wait_shares("writer-2 holds every partition", &[&w2], |_| true).await;
    let taken = frozen.elapsed();
    // Writer-2 commits on the taken partitions for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    common::process::signal(w1.pid, "CONT");
    let resumed = frozen.elapsed();
    wait_shares(
        "writer-1 takes a share again after resuming",
        &[&w1, &w2],
        |c| c >= 1.0,
    )
    .await;
    let rebalanced = frozen.elapsed();
    let acks = join_all(tasks).await;
    let load_time = t0.elapsed();
    let m1 = w1.metrics().await;
    let appends_after = metric_value(&m1, COMMITS, &[]).unwrap_or(0.0);
    let errors: Vec<&str> = m1
        .lines()
        .filter(|l| {
            (l.starts_with("herald_writer_errors_total")
                || l.starts_with("herald_writer_lease_events_total"))
                && !l.ends_with(" 0")
        })
        .collect();
    let pause = longest_pause(&acks);
    let channels: Vec<String> = (0..load.channels).map(|i| load.channel(i)).collect();
    let v = verify(&api, &acks, &channels).await;
    println!(
        "{test}: timeline from SIGSTOP of writer-1 ({appends_before} store appends before): \
         writer-2 held every partition at {taken:.2?}; SIGCONT at {resumed:.2?}; writer-1 back \
         with a share at {rebalanced:.2?}; writer-1 afterwards: {appends_after} store appends in \
         all; its non-zero error and lease counters {errors:?}. Load: {} publishes in \
         {load_time:.1?}, acknowledged {}, stored {}, lost {}, duplicated {}, channels not dense \
         {}; longest pause between two acknowledgements {pause:.2?}",
        load.total(),
        v.acked,
        v.stored,
        v.lost,
        v.duplicated,
        v.not_dense
    );
    v.assert_clean(load.total());
}

/// §4 with a real partition: writer-1 runs in its own network namespace and
/// reaches the 3-node NATS cluster through one veth pair and Cassandra (and
/// the test, for its metrics) through another. Setting the NATS link down
/// drops every packet silently while writer-1 stays alive with its store
/// up: it must stop committing before writer-2 takes its partitions (I8's
/// fence); after the heal the store holds no duplicate and no gap. Skips,
/// saying why, when not root or `ip netns` does not work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_partitioned_by_netns_stops_committing_before_another_takes_over() {
    let test = "writer_partitioned_by_netns_stops_committing_before_another_takes_over";
    let Some(nodes) = scylla_nodes(test) else {
        return;
    };
    let _serial = SERIAL.lock().await;
    // Dropped last: the namespace and veths go even when an assert fails.
    let Some(netns) = Netns::create(test, 2) else {
        return;
    };
    const NATS_LINK: usize = 0;
    const KEPT_LINK: usize = 1;
    let cluster = NatsCluster::start().await;
    let store = SharedStore::create(nodes.clone(), "herald_netns").await;
    let (nats_side, kept_side) = (&netns.links[NATS_LINK], &netns.links[KEPT_LINK]);
    // Forwarders on the root ends of the links (the servers listen on
    // loopback); the cut is the link, not these.
    let mut forwarders = Vec::new();
    let mut nats_urls = Vec::new();
    for node in &cluster.nodes {
        let to = SocketAddr::from(([127, 0, 0, 1], node.port));
        let p = Proxy::start_on((nats_side.root, 0).into(), to).await;
        nats_urls.push(format!("nats://{}", p.addr));
        forwarders.push(p);
    }
    let mut cql = Vec::new();
    for node in nodes.split(',') {
        let to = std::net::ToSocketAddrs::to_socket_addrs(node.trim())
            .ok()
            .and_then(|mut a| a.next())
            .expect("HERALD_SCYLLA_NODES: host:port");
        let p = Proxy::start_on((kept_side.root, 0).into(), to).await;
        cql.push(p.addr.to_string());
        forwarders.push(p);
    }
    let replicated = |s: Spec| s.set("ingest_replicas", 3).set("nats_kv_replicas", 3);
    let urls = cluster.urls();
    let mut w1 = HeraldProcess::start(
        replicated(store.spec("writer", "writer-1 (in its netns)", &nats_urls.join(",")))
            .set("scylla_nodes", cql.join(","))
            .in_netns(&netns.name, kept_side.inside),
    )
    .await;
    let w2 = HeraldProcess::start(replicated(store.spec("writer", "writer-2", &urls))).await;
    let _sync = HeraldProcess::start(replicated(store.spec("sync", "sync", &urls))).await;
    let edge = HeraldProcess::start(replicated(store.spec("edge", "edge", &urls))).await;
    wait_shares("both writers hold partitions", &[&w1, &w2], |c| c >= 1.0).await;
    let w2_share = owned(&w2).await;

    let load = Load {
        publishers: 4,
        channels: 20,
        per_publisher: 200,
        window: 4,
    };
    let api = edge.api();
    let acked = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let tasks = load.spawn(&api, &acked);
    eventually(
        "a quarter of the load acknowledged",
        Duration::from_secs(120),
        || async { (acked.load(Ordering::SeqCst) >= load.total() / 4).then_some(()) },
    )
    .await;
    let commits_at_cut = w1.metric(COMMITS, &[]).await;
    assert!(commits_at_cut > 0.0, "writer-1 committed before the cut");
    netns.cut(NATS_LINK);
    let cut = Instant::now();
    let acked_at_cut = acked.load(Ordering::SeqCst);

    // Sample both writers (writer-1 over the kept link) until writer-2
    // holds every partition.
    let Takeover {
        w1_last_commit,
        w1_dropped,
        took_at,
        w1_commits_at_takeover,
        all_moved,
    } = sample_takeover(&w1, &w2, w2_share, cut, commits_at_cut).await;
    // Publications continue through writer-2 while writer-1 stays cut,
    // alive, with its store up.
    let acked_at_takeover = acked.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked_while_cut = acked.load(Ordering::SeqCst) - acked_at_takeover;
    let w1_commits_before_heal = w1.metric(COMMITS, &[]).await;
    assert!(w1.try_status().is_none(), "writer-1 is still running");
    netns.heal(NATS_LINK);
    let healed = Instant::now();
    wait_shares(
        "writer-1 takes a share again after the heal",
        &[&w1, &w2],
        |c| c >= 1.0,
    )
    .await;
    let rebalanced = healed.elapsed();
    let acks = join_all(tasks).await;
    let load_time = t0.elapsed();
    let pause = longest_pause(&acks);
    let retried = acks.iter().filter(|a| a.attempts > 1).count();
    let channels: Vec<String> = (0..load.channels).map(|i| load.channel(i)).collect();
    let v = verify(&api, &acks, &channels).await;
    let since_cut = |t: Instant| t - cut;
    println!(
        "{test}: timeline (link down at {:.2?} after the load began, {acked_at_cut} acknowledged \
         then; writer_failover_timeout 2s): writer-1 last commit {:.2?} after the cut \
         ({commits_at_cut} store appends before the cut, {w1_commits_before_heal} at the end of \
         the cut); writer-1 owned 0 partitions at {:?}; writer-2 took over (first of writer-1's \
         partitions) at {:.2?}, writer-1's appends then {w1_commits_at_takeover}; writer-2 owned \
         all {PARTITIONS} at {all_moved:.2?}; {acked_while_cut} acknowledged in the 2 s after; \
         heal at {:.2?}; writer-1 back with a share {rebalanced:.2?} after the heal. Load: {} \
         publishes in {load_time:.1?}, acknowledged {}, stored {}, lost {}, duplicated {}, \
         channels not dense {}; retried {retried}; longest pause between two acknowledgements \
         {pause:.2?}",
        cut - t0,
        since_cut(w1_last_commit.0),
        w1_dropped.map(since_cut),
        since_cut(took_at),
        since_cut(healed),
        load.total(),
        v.acked,
        v.stored,
        v.lost,
        v.duplicated,
        v.not_dense
    );
    assert!(acked_while_cut > 0, "publications continued during the cut");
    // I8: nothing committed by writer-1 once writer-2 held its partitions.
    assert_eq!(
        w1_commits_before_heal, w1_commits_at_takeover,
        "writer-1 committed after writer-2 took over"
    );
    assert!(
        w1_last_commit.0 <= took_at,
        "writer-1's last commit was seen before writer-2's takeover"
    );
    v.assert_clean(load.total());
}
