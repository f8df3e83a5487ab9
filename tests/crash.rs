//! Crashes and restarts with real processes and real signals: `kill -9` of
//! the writer (a `herald serve`) under publish load, of an edge, of sync;
//! nats-server killed and restarted on its port and store; a client that
//! stops reading at the real outbound bound; SIGTERM of every role.
//!
//! Every process is the built `herald` binary (tests/common/process.rs)
//! configured through `HERALD_*`; clients are real WebSockets and HTTP.
//! Each test prints the figures it measured (`-- --nocapture` shows them).
//! The tests take turns (`SERIAL`): they load a small machine and their
//! figures mean more alone.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::follower::{Conn, Follower, Step, token};
use common::load::{Ack, Load, history, join_all, publish_retrying, verify};
use common::process::{Api, HeraldProcess, STARTUP, Spec, metric_value};
use common::{TestNats, eventually};
use futures::StreamExt;
use serde_json::json;
use tokio::task::JoinHandle;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How a process is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Kill9,
    Sigterm,
}

/// Who serves the store after the active `serve` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takeover {
    /// The same process started again on the same data dir and port.
    Restart,
    /// A second `serve` with `store_wait_for_lock = true`, waiting from the
    /// start.
    Standby,
}

/// The active `serve` and, for [`Takeover::Standby`], its standby.
struct StoreHolder {
    active: HeraldProcess,
    standby: Option<HeraldProcess>,
    takeover: Takeover,
    /// Processes that were stopped; kept for their logs.
    stopped: Vec<HeraldProcess>,
}

impl StoreHolder {
    async fn start(nats_url: &str, data_dir: &std::path::Path, takeover: Takeover) -> Self {
        Self::start_spec(Spec::serve("serve-1", nats_url, data_dir), takeover).await
    }

    async fn start_spec(spec: Spec, takeover: Takeover) -> Self {
        let active = HeraldProcess::start(spec.clone()).await;
        let standby = (takeover == Takeover::Standby).then(|| {
            HeraldProcess::spawn(
                spec.on_new_port("serve-2 (standby)")
                    .set("store_wait_for_lock", true),
            )
        });
        Self {
            active,
            standby,
            takeover,
            stopped: Vec::new(),
        }
    }

    /// Stops the active process with `stop`; returns once the successor
    /// answers `/health`.
    async fn fail_over(&mut self, stop: Stop) -> Outage {
        if let Some(standby) = self.standby.as_mut() {
            assert!(standby.try_status().is_none(), "the standby is waiting");
            assert!(!standby.healthy().await, "the standby does not serve yet");
        }
        let signalled = Instant::now();
        let status = match stop {
            Stop::Kill9 => self.active.kill9().await,
            Stop::Sigterm => self.active.sigterm().await,
        };
        let gone = Instant::now();
        let successor = match self.takeover {
            Takeover::Restart => {
                let mut spec = self.active.spec.clone();
                spec.name = format!("{} (restarted)", spec.name);
                HeraldProcess::start(spec).await
            }
            Takeover::Standby => {
                let mut s = self.standby.take().expect("a standby");
                s.wait_healthy(STARTUP).await;
                s
            }
        };
        self.stopped
            .push(std::mem::replace(&mut self.active, successor));
        Outage {
            status,
            stopping: gone - signalled,
            gone,
            successor_healthy: gone.elapsed(),
        }
    }
}

/// How a stop went.
struct Outage {
    status: std::process::ExitStatus,
    /// From the signal to the process's exit.
    stopping: Duration,
    /// When the process had exited: failover is measured from here.
    gone: Instant,
    /// From `gone` to the successor answering `/health`.
    successor_healthy: Duration,
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// The writer (inside `herald serve`, with sync) stopped by `stop` in the
/// middle of a publish load that goes through a separate `herald edge`;
/// `takeover` brings the store back. Every acknowledged publish must be
/// stored exactly once at the offset its reply named, every channel dense.
async fn writer_stopped_under_load(stop: Stop, takeover: Takeover, load: Load) {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = StoreHolder::start(nats.url(), &dir.path().join("data"), takeover).await;
    let edge = HeraldProcess::start(Spec::edge("edge", nats.url())).await;
    let api = edge.api();

    let acked = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks = load.spawn(&api, &acked);
    let half = load.total() / 2;
    eventually(
        "half the load acknowledged",
        Duration::from_secs(90),
        || async { (acked.load(Ordering::SeqCst) >= half).then_some(()) },
    )
    .await;
    let acked_before = acked.load(Ordering::SeqCst);
    let outage = store.fail_over(stop).await;
    let (status, gone) = (outage.status, outage.gone);
    match stop {
        Stop::Kill9 => assert_eq!(status.signal(), Some(9), "{status}"),
        Stop::Sigterm => assert_eq!(status.code(), Some(0), "graceful exit: {status}"),
    }
    let acks = join_all(tasks).await;
    let load_time = started.elapsed();
    let failover = acks
        .iter()
        .filter(|a| a.sent >= gone)
        .map(|a| a.acked - gone)
        .min();
    let retried = acks.iter().filter(|a| a.attempts > 1).count();
    let slowest = acks.iter().map(|a| a.acked - a.sent).max();
    let channels: Vec<String> = (0..load.channels).map(|i| load.channel(i)).collect();
    let v = verify(&api, &acks, &channels).await;
    println!(
        "writer {stop:?} + {takeover:?} under load: {load:?}; {} messages in {load_time:.1?} \
         ({acked_before} acknowledged before the stop); acknowledged {}, stored {}, lost {}, \
         duplicated {}, channels not dense {}; publishes retried {retried}, slowest successful \
         attempt {slowest:.2?}; exit {:.2?} after the signal, successor healthy {:.2?} later; \
         failover (exit -> first success of a publish sent after it) {failover:.2?}",
        load.total(),
        v.acked,
        v.stored,
        v.lost,
        v.duplicated,
        v.not_dense,
        outage.stopping,
        outage.successor_healthy
    );
    v.assert_clean(load.total());
    assert!(failover.is_some(), "publishes succeeded after the stop");
    drop(store);
}

/// Issue 3 §2a: 8 publishers, 200 channels, 20 000 messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_writer_under_load_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    writer_stopped_under_load(
        Stop::Kill9,
        Takeover::Restart,
        Load {
            publishers: 8,
            channels: 200,
            per_publisher: 2500,
            window: 8,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_writer_with_a_standby_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    writer_stopped_under_load(
        Stop::Kill9,
        Takeover::Standby,
        Load {
            publishers: 8,
            channels: 200,
            per_publisher: 2500,
            window: 8,
        },
    )
    .await;
}

/// Issue 3 §2f: SIGTERM of a writer mid-load: it finishes and acknowledges
/// the batch in hand and exits 0; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_writer_under_load_exits_0_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    writer_stopped_under_load(
        Stop::Sigterm,
        Takeover::Restart,
        Load {
            publishers: 8,
            channels: 50,
            per_publisher: 250,
            window: 4,
        },
    )
    .await;
}

/// Issue 18: `kill -9` of a writer while its partitions hold several
/// batches in flight (pipeline depth 4, batches of 8, four hot channels), the
/// same process restarted on the store. Every acknowledged publish is stored
/// exactly once at its acknowledged offset, every channel dense, and each
/// subscriber receives exactly the stored publications (the data stored at
/// each offset it got), once each and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_writer_mid_pipeline_loses_duplicates_and_shows_nothing_unstored() {
    let _serial = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = Spec::serve("serve-1", nats.url(), &dir.path().join("data"))
        .set("writer_pipeline_depth", 4)
        .set("writer_batch_size", 8);
    let mut store = StoreHolder::start_spec(spec, Takeover::Restart).await;
    let edge = HeraldProcess::start(Spec::edge("edge", nats.url())).await;
    let api = edge.api();
    let load = Load {
        publishers: 16,
        channels: 4,
        per_publisher: 500,
        window: 8,
    };
    // Publisher p writes to channel p % 4 only: each channel gets a quarter.
    let per_channel = (load.total() / load.channels) as u64;
    let mut followers = Vec::new();
    for i in 0..load.channels {
        let f = Follower::subscribe(edge.addr(), &format!("f{i}"), &load.channel(i)).await;
        let addr = edge.addr();
        followers.push(tokio::spawn(async move {
            let mut f = f;
            f.follow_until(per_channel, &[addr], Duration::from_secs(120))
                .await;
            f
        }));
    }

    let acked = Arc::new(AtomicUsize::new(0));
    let tasks = load.spawn(&api, &acked);
    let half = load.total() / 2;
    eventually(
        "half the load acknowledged",
        Duration::from_secs(90),
        || async { (acked.load(Ordering::SeqCst) >= half).then_some(()) },
    )
    .await;
    // Batches are being appended behind others in flight right now: the
    // counter moves between two scrapes just before the kill, and the last
    // scrape sees several batches sequenced and not yet acknowledged.
    let active = &store.active;
    let before = active.metric("herald_writer_pipelined_total", &[]).await;
    let (pipelined, in_flight) = eventually(
        "batches appended behind others in flight",
        Duration::from_secs(20),
        || async {
            let text = active.metrics().await;
            let now = metric_value(&text, "herald_writer_pipelined_total", &[]).unwrap_or(0.0);
            let in_flight =
                metric_value(&text, "herald_writer_pipeline_batches", &[]).unwrap_or(0.0);
            (now > before && in_flight >= 2.0).then_some((now, in_flight))
        },
    )
    .await;
    let acked_before = acked.load(Ordering::SeqCst);
    let outage = store.fail_over(Stop::Kill9).await;
    assert_eq!(outage.status.signal(), Some(9), "{}", outage.status);
    let acks = join_all(tasks).await;
    let channels: Vec<String> = (0..load.channels).map(|i| load.channel(i)).collect();
    let v = verify(&api, &acks, &channels).await;
    println!(
        "writer kill -9 mid-pipeline: {load:?}; {acked_before} acknowledged before the kill, \
         {pipelined} batches pipelined so far and {in_flight} in flight at the last scrape; \
         acknowledged {}, stored {}, lost {}, duplicated {}, channels not dense {}; successor \
         healthy {:.2?} after the exit",
        v.acked, v.stored, v.lost, v.duplicated, v.not_dense, outage.successor_healthy
    );
    v.assert_clean(load.total());
    for (i, task) in followers.into_iter().enumerate() {
        let f = task.await.expect("follower");
        let stored = history(&api, &load.channel(i)).await;
        for r in &f.got {
            let at = stored.get(r.offset as usize - 1).map(|p| &p["data"]);
            assert_eq!(
                at,
                Some(&r.data),
                "{} got offset {} that is not what is stored there",
                f.user,
                r.offset
            );
        }
        f.assert_complete(per_channel);
    }
    drop(store);
}

/// Publishes `n` messages to `channel` at a steady pace; returns the
/// acknowledged offsets.
fn steady_publisher(api: Api, channel: &str, n: usize, every: Duration) -> JoinHandle<Vec<Ack>> {
    let channel = channel.to_string();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut acks = Vec::with_capacity(n);
        for i in 0..n {
            tick.tick().await;
            let key = format!("steady-{i}");
            let data = json!({"key": key, "i": i, "t": micros_now()});
            acks.push(publish_retrying(&api, channel.clone(), key, data).await);
        }
        acks
    })
}

/// Issue 3 §2b: `kill -9` of the edge a client is on; the client reconnects
/// to another edge with its position and recovers every publication exactly
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_an_edge_the_client_recovers_on_another() {
    let _serial = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let serve =
        HeraldProcess::start(Spec::serve("serve", nats.url(), &dir.path().join("data"))).await;
    let mut edge_a = HeraldProcess::start(Spec::edge("edge-a", nats.url())).await;
    let edge_b = HeraldProcess::start(Spec::edge("edge-b", nats.url())).await;
    let ch = "ticker";
    let total = 600;
    let mut f = Follower::subscribe(edge_a.addr(), "walker", ch).await;
    let publisher = steady_publisher(serve.api(), ch, total, Duration::from_millis(5));

    f.follow_until(150, &[edge_a.addr()], Duration::from_secs(30))
        .await;
    let status = edge_a.kill9().await;
    assert_eq!(status.signal(), Some(9));
    let killed_at = Instant::now();
    let at_kill = f.last;
    // The follower notices, reconnects to B and recovers while publishing
    // goes on.
    f.follow_until(at_kill + 50, &[edge_b.addr()], Duration::from_secs(30))
        .await;
    let resumed_after = killed_at.elapsed();
    let acks = publisher.await.expect("publisher");
    let head = acks.iter().map(|a| a.offset).max().expect("acks");
    f.follow_until(head, &[edge_b.addr()], Duration::from_secs(30))
        .await;
    let t = f.tally(head);
    println!(
        "edge kill -9: {total} published at 200/s, killed at offset {at_kill}; client on edge B \
         {resumed_after:.2?} later: {t:?}, reconnects {}, recovered:false {}, errors {}",
        f.reconnects, f.unrecovered, f.errors
    );
    assert_eq!(head, total as u64);
    assert_eq!(t.received, total, "{t:?}");
    assert_eq!(t.missed, 0, "{t:?}");
    assert_eq!(t.duplicated, 0, "{t:?}");
    assert_eq!(t.out_of_order, 0, "{t:?}");
    assert_eq!(f.reconnects, 1);
    assert_eq!(f.unrecovered, 0, "recovered within the recovery limit");
}

/// How long nats-server stays down in the restart test.
const DOWN: Duration = Duration::from_millis(3500);

/// Issue 3 §2c: nats-server killed and started again on its port and store
/// while `serve` and an edge run, publishers publish and clients follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_every_role_reconnects_and_nothing_acknowledged_is_lost() {
    let _serial = SERIAL.lock().await;
    let mut nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let serve =
        HeraldProcess::start(Spec::serve("serve", nats.url(), &dir.path().join("data"))).await;
    let edge = HeraldProcess::start(Spec::edge("edge", nats.url())).await;
    let load = Load {
        publishers: 4,
        channels: 4,
        per_publisher: 150,
        window: 1,
    };
    let per_channel = (load.total() / load.channels) as u64;
    let mut followers = Vec::new();
    for (i, node) in [(0, &edge), (1, &serve), (2, &edge)] {
        let f = Follower::subscribe(node.addr(), &format!("f{i}"), &load.channel(i)).await;
        let addr = node.addr();
        followers.push(tokio::spawn(async move {
            let mut f = f;
            f.follow_until(per_channel, &[addr], Duration::from_secs(90))
                .await;
            f
        }));
    }

    let api = edge.api();
    let acked = Arc::new(AtomicUsize::new(0));
    let tasks = load.spawn(&api, &acked);
    let third = load.total() / 3;
    eventually("a third acknowledged", Duration::from_secs(30), || async {
        (acked.load(Ordering::SeqCst) >= third).then_some(())
    })
    .await;
    nats.kill().await;
    let killed_at = Instant::now();
    // /health reports the lost NATS connection (503) on every node.
    for node in [&serve, &edge] {
        eventually(
            "/health answers 503 while NATS is down",
            Duration::from_secs(5),
            || async { (!node.healthy().await).then_some(()) },
        )
        .await;
    }
    // Longer than client_publish_timeout (3 s): publishes fail and are retried.
    tokio::time::sleep(DOWN.saturating_sub(killed_at.elapsed())).await;
    nats.start_again().await;
    let restarted_at = Instant::now();
    // Every role reconnects by itself: each node answers /health again and a
    // publish through each node's API succeeds.
    for node in [&serve, &edge] {
        eventually(
            "/health answers 200 again",
            Duration::from_secs(30),
            || async { node.healthy().await.then_some(()) },
        )
        .await;
        node.api()
            .ok(
                "publish",
                &json!({"channel": "probe", "data": node.spec.name}),
                Duration::from_secs(30),
            )
            .await;
    }
    let reconnected_after = restarted_at.elapsed();
    let acks = join_all(tasks).await;
    let first_after = acks
        .iter()
        .filter(|a| a.sent >= killed_at)
        .map(|a| a.acked - killed_at)
        .min();
    let acked_while_down = acks
        .iter()
        .filter(|a| a.acked >= killed_at && a.acked < restarted_at)
        .count();
    let retried = acks.iter().filter(|a| a.attempts > 1).count();
    let channels: Vec<String> = (0..load.channels).map(|i| load.channel(i)).collect();
    let v = verify(&api, &acks, &channels).await;
    let mut filled = Vec::new();
    for node in [&edge, &serve] {
        filled.push(
            node.metric("herald_edge_gaps_filled_total", &[("result", "filled")])
                .await,
        );
    }
    println!(
        "nats kill -9 + restart (down {DOWN:?}): acknowledged {}, stored {}, lost {}, duplicated {}, \
         not dense {}; acknowledged while down {acked_while_down}, \
         publishes retried {retried}; both nodes publish again {reconnected_after:.2?} after the \
         restart; first success of a publish sent after the kill {first_after:.2?}; gaps filled \
         by edge/serve {filled:?}",
        v.acked, v.stored, v.lost, v.duplicated, v.not_dense,
    );
    v.assert_clean(load.total());
    for task in followers {
        let f = task.await.expect("follower");
        f.assert_complete(per_channel);
    }
}

/// History and recovery requests through an edge, each retried (after an
/// error reply, as an SDK does) until it succeeds, checked against the
/// channel's `n` publications.
struct Reader {
    errors: usize,
    /// When each successful attempt was sent and when its reply came.
    successes: Vec<(Instant, Instant)>,
}

async fn read_until_stopped(
    addr: std::net::SocketAddr,
    channel: &str,
    n: u64,
    epoch: String,
    ok: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Reader {
    let mut conn = Conn::open(addr, &token("reader")).await.expect("connect");
    let mut r = Reader {
        errors: 0,
        successes: Vec::new(),
    };
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        let after = (i * 7) % (n - 10);
        let since = json!({"offset": after, "epoch": epoch});
        let (method, params) = if i % 2 == 0 {
            (
                "history",
                json!({"channel": channel, "limit": 10, "since": since}),
            )
        } else {
            (
                "subscribe",
                json!({"channel": channel, "recover": true, "offset": after, "epoch": epoch}),
            )
        };
        let reply = conn
            .call(method, params)
            .await
            .expect("the edge keeps the connection");
        if reply.get("error").is_some() {
            r.errors += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let pubs = if method == "history" {
            reply["history"]["publications"].clone()
        } else {
            assert_eq!(reply["subscribe"]["recovered"], true, "{reply}");
            let u = conn
                .call("unsubscribe", json!({"channel": channel}))
                .await
                .expect("unsubscribe");
            assert!(u.get("error").is_none(), "{u}");
            reply["subscribe"]["publications"].clone()
        };
        let offsets: Vec<u64> = pubs
            .as_array()
            .expect("publications")
            .iter()
            .map(|p| p["offset"].as_u64().expect("offset"))
            .collect();
        let last = if method == "history" { after + 10 } else { n };
        assert_eq!(
            offsets,
            (after + 1..=last).collect::<Vec<_>>(),
            "{method} after {after}"
        );
        r.successes.push((sent, Instant::now()));
        ok.fetch_add(1, Ordering::SeqCst);
        i += 1;
    }
    conn.close().await;
    r
}

async fn sync_killed(takeover: Takeover) {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = StoreHolder::start(nats.url(), &dir.path().join("data"), takeover).await;
    let edge = HeraldProcess::start(Spec::edge("edge", nats.url())).await;
    let ch = "archive";
    let n = 100;
    let mut epoch = String::new();
    for i in 0..n {
        let r = edge
            .api()
            .ok(
                "publish",
                &json!({"channel": ch, "data": i}),
                Duration::from_secs(10),
            )
            .await;
        epoch = r["epoch"].as_str().expect("epoch").to_string();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn(read_until_stopped(
        edge.addr(),
        ch,
        n,
        epoch,
        ok.clone(),
        stop.clone(),
    ));
    eventually("reads succeed", Duration::from_secs(10), || async {
        (ok.load(Ordering::SeqCst) >= 20).then_some(())
    })
    .await;
    let outage = store.fail_over(Stop::Kill9).await;
    assert_eq!(outage.status.signal(), Some(9));
    let (killed_at, healthy_after) = (outage.gone, outage.successor_healthy);
    let before = ok.load(Ordering::SeqCst);
    eventually(
        "reads succeed again after the takeover",
        Duration::from_secs(30),
        || async { (ok.load(Ordering::SeqCst) >= before + 20).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let r = reader.await.expect("reader");
    let first_after = r
        .successes
        .iter()
        .filter(|(sent, _)| *sent >= killed_at)
        .map(|(_, done)| *done - killed_at)
        .min();
    let slowest = r
        .successes
        .iter()
        .map(|(sent, done)| *done - *sent)
        .max()
        .unwrap_or_default();
    println!(
        "sync kill -9 + {takeover:?}: {} history/recovery reads succeeded, {} error replies \
         retried; successor healthy after {healthy_after:.2?}; first success of a read sent after \
         the kill {first_after:.2?}; slowest successful read {slowest:.2?}",
        r.successes.len(),
        r.errors
    );
    assert!(first_after.is_some());
    drop(store);
}

/// Issue 3 §2d: with the embedded store sync lives in `serve`; `kill -9` of
/// it, then a restart on the same data dir: history and recovery through
/// the edge succeed again (after error replies while no sync answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_sync_reads_succeed_again_after_restart() {
    let _serial = SERIAL.lock().await;
    sync_killed(Takeover::Restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_sync_reads_succeed_again_on_the_standby() {
    let _serial = SERIAL.lock().await;
    sync_killed(Takeover::Standby).await;
}

/// Issue 3 §2e: a client that stops reading while its channel receives
/// thousands of messages per second, at the default 1 MiB outbound bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_cut_at_the_real_bound_and_others_keep_receiving() {
    let _serial = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let serve =
        HeraldProcess::start(Spec::serve("serve", nats.url(), &dir.path().join("data"))).await;
    let edge = HeraldProcess::start(Spec::edge("edge", nats.url())).await;
    let ch = "firehose";
    let phase1 = 3000usize;
    // The channel's last offset, once publishing is over.
    let head = Arc::new(AtomicU64::new(u64::MAX));
    let mut healthy = Vec::new();
    for i in 0..3 {
        let mut f = Follower::subscribe(edge.addr(), &format!("reader-{i}"), ch).await;
        let head = head.clone();
        healthy.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while f.last < head.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "{} fell behind", f.user);
                if let Step::Ended(code) = f.step(Duration::from_millis(200)).await {
                    panic!("{}: a reading client was disconnected ({code})", f.user);
                }
            }
            f
        }));
    }
    let pad = "x".repeat(1000);
    let api = serve.api();
    let blast = |phase: u64, from: usize, n: usize| {
        let (api, pad) = (api.clone(), pad.clone());
        async move {
            let started = Instant::now();
            futures::stream::iter(from..from + n)
                .map(|i| {
                    let (api, pad) = (&api, &pad);
                    async move {
                        let key = format!("fire-{i}");
                        let data =
                            json!({"key": key, "phase": phase, "t": micros_now(), "pad": pad});
                        publish_retrying(api, ch.to_string(), key, data).await
                    }
                })
                .buffer_unordered(32)
                .for_each(|_| async {})
                .await;
            n as f64 / started.elapsed().as_secs_f64()
        }
    };

    let rate1 = blast(1, 0, phase1).await;
    eventually("3 connections", Duration::from_secs(10), || async {
        (edge.metric("herald_edge_connections", &[]).await == 3.0).then_some(())
    })
    .await;
    let rss_before = edge.memory_kib("VmRSS");

    // A client with a 4 KiB receive buffer subscribes, then never reads.
    let mut stalled = Conn::open_with_recv_buffer(edge.addr(), &token("stalled"), 4096)
        .await
        .expect("connect");
    let r = stalled
        .call("subscribe", json!({"channel": ch}))
        .await
        .expect("subscribe");
    assert!(r.get("subscribe").is_some(), "{r}");
    assert_eq!(edge.metric("herald_edge_connections", &[]).await, 4.0);
    let slow = || async {
        edge.metric("herald_edge_disconnects_total", &[("code", "3008")])
            .await
    };
    let slow_before = slow().await;
    // Publish in chunks until the edge cuts the stalled client: how much it
    // takes depends on the kernel's socket buffers, not only the 1 MiB queue.
    let started = Instant::now();
    let mut phase2 = 0;
    while slow().await == slow_before {
        assert!(
            phase2 < 40_000,
            "the stalled client was not cut after {phase2} messages"
        );
        blast(2, phase1 + phase2, 1000).await;
        phase2 += 1000;
    }
    let rate2 = phase2 as f64 / started.elapsed().as_secs_f64();
    head.store((phase1 + phase2) as u64, Ordering::SeqCst);
    eventually(
        "the stalled client's connection is gone",
        Duration::from_secs(10),
        || async { (edge.metric("herald_edge_connections", &[]).await == 3.0).then_some(()) },
    )
    .await;
    let rss_after = edge.memory_kib("VmRSS");
    let rss_peak = edge.memory_kib("VmHWM");

    let mut latencies: BTreeMap<u64, Vec<Duration>> = BTreeMap::new();
    for task in healthy {
        let f = task.await.expect("follower");
        let t = f.tally((phase1 + phase2) as u64);
        assert_eq!(t.missed, 0, "{}: {t:?}", f.user);
        assert_eq!(t.duplicated, 0, "{}: {t:?}", f.user);
        assert_eq!(t.out_of_order, 0, "{}: {t:?}", f.user);
        assert_eq!(f.resubscribes + f.reconnects, 0, "{} was never cut", f.user);
        for r in &f.got {
            let sent = UNIX_EPOCH + Duration::from_micros(r.data["t"].as_u64().expect("t"));
            let phase = r.data["phase"].as_u64().expect("phase");
            let latency = r.at.duration_since(sent).unwrap_or_default();
            latencies.entry(phase).or_default().push(latency);
        }
    }
    drop(stalled);
    let mut figures = Vec::new();
    for (phase, mut l) in latencies {
        l.sort();
        figures.push(format!(
            "phase {phase}: p50 {:.1?} p99 {:.1?} ({} deliveries)",
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l.len()
        ));
    }
    println!(
        "slow client at the 1 MiB bound: cut with 3008 within {phase2} messages of ~1.1 KB; edge RSS {} KiB before, {} KiB after, \
         peak {} KiB; publish rate {rate1:.0}/s without, {rate2:.0}/s with the stalled client; \
         3 healthy clients' latency (publish -> receive) {}",
        rss_before,
        rss_after,
        rss_peak,
        figures.join("; ")
    );
    assert!(
        rss_peak < rss_before + 128 * 1024,
        "the stalled client cost the edge at most a bounded amount of memory"
    );
}

/// Issue 3 §2f: SIGTERM of an edge closes its clients with 3001 and exits
/// 0; SIGTERM of `serve` does too and keeps everything acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_3001_and_exits_0() {
    let _serial = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut serve =
        HeraldProcess::start(Spec::serve("serve", nats.url(), &dir.path().join("data"))).await;
    let mut edge = HeraldProcess::start(Spec::edge("edge", nats.url())).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let r = edge
            .api()
            .ok(
                "publish",
                &json!({"channel": "kept", "data": i}),
                Duration::from_secs(10),
            )
            .await;
        acked.push(r["offset"].as_u64().expect("offset"));
    }

    let mut clients = Vec::new();
    for i in 0..20 {
        let node = if i % 4 == 0 { &serve } else { &edge };
        let mut c = Conn::open(node.addr(), &token(&format!("u{i}")))
            .await
            .expect("connect");
        let r = c
            .call("subscribe", json!({"channel": "kept"}))
            .await
            .expect("subscribe");
        assert!(r.get("subscribe").is_some(), "{r}");
        clients.push((i % 4 == 0, c));
    }
    // Each client reads until its connection ends; the close code.
    let closes = |conns: Vec<Conn>| {
        futures::future::join_all(conns.into_iter().map(|mut c| async move {
            loop {
                match c.push(Duration::from_secs(30)).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return 0,
                    Err(e) => return e.0,
                }
            }
        }))
    };
    let (serve_clients, edge_clients): (Vec<_>, Vec<_>) =
        clients.into_iter().partition(|(on_serve, _)| *on_serve);
    let serve_clients: Vec<Conn> = serve_clients.into_iter().map(|(_, c)| c).collect();
    let edge_clients: Vec<Conn> = edge_clients.into_iter().map(|(_, c)| c).collect();

    let t = Instant::now();
    edge.send_sigterm();
    let codes = closes(edge_clients).await;
    let closed_in = t.elapsed();
    let status = edge.wait(Duration::from_secs(20)).await;
    let exited_in = t.elapsed();
    println!(
        "edge SIGTERM: {} clients closed with {:?} within {closed_in:.2?}; exit code {:?} after \
         {exited_in:.2?}",
        codes.len(),
        codes.iter().collect::<std::collections::BTreeSet<_>>(),
        status.code()
    );
    assert!(codes.iter().all(|c| *c == 3001), "{codes:?}");
    assert_eq!(status.code(), Some(0), "{status}");

    let t = Instant::now();
    serve.send_sigterm();
    let codes = closes(serve_clients).await;
    let status = serve.wait(Duration::from_secs(20)).await;
    println!(
        "serve SIGTERM: {} clients closed with {codes:?}; exit code {:?} after {:.2?}",
        codes.len(),
        status.code(),
        t.elapsed()
    );
    assert!(codes.iter().all(|c| *c == 3001), "{codes:?}");
    assert_eq!(status.code(), Some(0), "{status}");

    let serve = HeraldProcess::start(serve.spec.clone()).await;
    let pubs = history(&serve.api(), "kept").await;
    let stored: Vec<u64> = pubs
        .iter()
        .map(|p| p["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(
        stored, acked,
        "everything acknowledged is stored after the restart"
    );
}

/// Issue 3 §2f for the single roles: `herald writer` and `herald sync`
/// (which share the embedded store only in turn) exit 0 on SIGTERM, and
/// what the writer acknowledged is what sync serves afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_writer_and_sync_roles_with_exit_0() {
    let _serial = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let edge = HeraldProcess::start(Spec::edge("edge", nats.url())).await;
    let mut writer = HeraldProcess::start(
        Spec::new("writer", "writer", nats.url()).set("data_dir", data.display()),
    )
    .await;
    let mut acked = Vec::new();
    for i in 0..10 {
        let r = edge
            .api()
            .ok(
                "publish",
                &json!({"channel": "roles", "data": i}),
                Duration::from_secs(10),
            )
            .await;
        acked.push(r["offset"].as_u64().expect("offset"));
    }
    // A standby waiting for the store lock stops cleanly too.
    let mut standby = HeraldProcess::spawn(
        Spec::serve("standby", nats.url(), &data).set("store_wait_for_lock", true),
    );
    eventually(
        "the standby waits for the store lock",
        Duration::from_secs(10),
        || async { standby.log().contains("waiting as a standby").then_some(()) },
    )
    .await;
    let status = standby.sigterm().await;
    assert_eq!(status.code(), Some(0), "waiting standby: {status}");

    let status = writer.sigterm().await;
    assert_eq!(status.code(), Some(0), "writer: {status}");

    let mut sync =
        HeraldProcess::start(Spec::new("sync", "sync", nats.url()).set("data_dir", data.display()))
            .await;
    let stored: Vec<u64> = history(&edge.api(), "roles")
        .await
        .iter()
        .map(|p| p["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(stored, acked);
    let status = sync.sigterm().await;
    assert_eq!(status.code(), Some(0), "sync: {status}");
    println!(
        "writer, sync and a waiting standby: SIGTERM -> exit 0; {} acknowledged, all served",
        acked.len()
    );
}
