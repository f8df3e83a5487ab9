//! Herald on a real 3-node NATS cluster (tests/common/cluster.rs): roles
//! connected to different nodes, the ingest stream and the writers' KV bucket
//! with three replicas, one node `kill -9`ed and restarted under publish load,
//! and interest propagation between nodes.
//!
//! Each test prints the figures it measured (`-- --nocapture` shows them).
//! The tests take turns (`SERIAL`): each runs three nats-servers and three
//! Herald processes on a small machine.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::cluster::NatsCluster;
use common::eventually;
use common::follower::{Follower, token};
use common::load::{Load, join_all, verify};
use common::process::{HeraldProcess, Spec};
use common::ws::WsClient;
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the killed node stays down: longer than client_publish_timeout
/// (3 s in the test specs), so some publishes fail and are retried.
const DOWN: Duration = Duration::from_millis(3500);

/// `herald serve` on every node's URL (the client picks one), edge A on
/// node 1 and edge B on node 2 only (they find the others from the
/// cluster's announcements); stream and bucket with three replicas.
async fn herald_on(cluster: &NatsCluster, dir: &std::path::Path) -> [HeraldProcess; 3] {
    let replicated = |s: Spec| s.set("ingest_replicas", 3).set("nats_kv_replicas", 3);
    let serve = HeraldProcess::start(replicated(Spec::serve(
        "serve",
        &cluster.urls(),
        &dir.join("data"),
    )))
    .await;
    let a = HeraldProcess::start(replicated(Spec::edge("edge-a", &cluster.nodes[0].url()))).await;
    let b = HeraldProcess::start(replicated(Spec::edge("edge-b", &cluster.nodes[1].url()))).await;
    [serve, a, b]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_under_load_loses_nothing_acknowledged_and_subscribers_miss_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = NatsCluster::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let [serve, edge_a, edge_b] = herald_on(&cluster, dir.path()).await;
    let serve_node = cluster.node_of("herald-serve").await;
    // The ingest stream and the writers' bucket hold three replicas.
    let js = async_nats::jetstream::new(
        async_nats::connect(cluster.nodes[2].url())
            .await
            .expect("connect to node 3"),
    );
    for stream in [
        herald::bus::subjects::INGEST_STREAM.to_string(),
        format!("KV_{}", herald::bus::subjects::WRITERS_BUCKET),
    ] {
        let info = js
            .get_stream(&stream)
            .await
            .unwrap_or_else(|e| panic!("stream {stream}: {e}"))
            .info()
            .await
            .expect("stream info")
            .clone();
        assert_eq!(info.config.num_replicas, 3, "{stream}");
        let peers = info.cluster.as_ref().map_or(0, |c| c.replicas.len());
        assert!(
            peers >= 2,
            "{stream} has replicas on the other nodes: {peers}"
        );
    }

    let load = Load {
        publishers: 4,
        channels: 4,
        per_publisher: 200,
        window: 1,
    };
    let per_channel = (load.total() / load.channels) as u64;
    let mut followers = Vec::new();
    for (i, node) in [(0, &edge_a), (1, &edge_b), (2, &serve), (3, &edge_a)] {
        let f = Follower::subscribe(node.addr(), &format!("f{i}"), &load.channel(i)).await;
        let addr = node.addr();
        followers.push(tokio::spawn(async move {
            let mut f = f;
            f.follow_until(per_channel, &[addr], Duration::from_secs(120))
                .await;
            f
        }));
    }

    // Half the publishers through edge A, half through edge B; the node
    // killed is the writer's (herald serve's).
    let acked = Arc::new(AtomicUsize::new(0));
    let half = Load {
        publishers: load.publishers / 2,
        ..load
    };
    let mut tasks = half.spawn_as("a-", &edge_a.api(), &acked);
    tasks.extend(half.spawn_as("b-", &edge_b.api(), &acked));
    let third = load.total() / 3;
    eventually("a third acknowledged", Duration::from_secs(60), || async {
        (acked.load(Ordering::SeqCst) >= third).then_some(())
    })
    .await;
    let victim = serve_node.expect("herald-serve is connected to a node");
    let acked_before = acked.load(Ordering::SeqCst);
    cluster.kill(victim).await;
    let killed_at = Instant::now();
    tokio::time::sleep(DOWN).await;
    let acked_while_down = acked.load(Ordering::SeqCst) - acked_before;
    cluster.start_again(victim).await;
    let restarted_after = killed_at.elapsed();
    let acks = join_all(tasks).await;
    let done_after = killed_at.elapsed();

    let channels: Vec<String> = (0..load.channels).map(|i| load.channel(i)).collect();
    let v = verify(&edge_b.api(), &acks, &channels).await;
    let retried = acks.iter().filter(|a| a.attempts > 1).count();
    println!(
        "nats cluster, node n{} (herald serve's; edge A on n1, edge B on n2) kill -9, back after \
         {restarted_after:.2?}: acknowledged {}, stored {}, lost {}, duplicated {}, not dense {}; \
         acknowledged before the kill {acked_before}, while the node was down {acked_while_down}; \
         publishes retried {retried}; all acknowledged {done_after:.2?} after the kill; serve \
         reconnected to node {:?}",
        victim + 1,
        v.acked,
        v.stored,
        v.lost,
        v.duplicated,
        v.not_dense,
        cluster.node_of("herald-serve").await.map(|i| i + 1),
    );
    v.assert_clean(load.total());
    for task in followers {
        let f = task.await.expect("follower");
        f.assert_complete(per_channel);
        assert_eq!(f.reconnects, 0, "{}: no client needs a reconnect", f.user);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_publication_after_a_subscribe_on_another_node_is_delivered() {
    let _serial = SERIAL.lock().await;
    let cluster = NatsCluster::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let [_serve, edge_a, edge_b] = herald_on(&cluster, dir.path()).await;
    let api = edge_b.api();
    let (mut ws, _) = WsClient::connect(edge_a.addr(), &token("sub")).await;
    let rounds = 30;
    let mut waits = Vec::new();
    for round in 0..rounds {
        // A fresh channel each round: the edge subscribes to its subject on
        // node 1 only now; the writer publishes it wherever it is connected.
        let channel = format!("interest-{round}");
        let reply = ws.call("subscribe", json!({"channel": channel})).await;
        assert!(reply.get("error").is_none(), "{reply}");
        let sent = Instant::now();
        let r = api
            .ok(
                "publish",
                &json!({"channel": channel, "data": {"round": round}}),
                Duration::from_secs(20),
            )
            .await;
        assert_eq!(r["offset"], 1, "{r}");
        // Panics when it does not arrive within the client's wait (10 s).
        let publication = ws.publication(&channel).await;
        assert_eq!(publication["offset"], 1, "{publication}");
        assert_eq!(publication["data"]["round"], round, "{publication}");
        waits.push(sent.elapsed());
    }
    waits.sort();
    println!(
        "interest across nodes: {rounds} fresh channels subscribed on edge A (node 1), published \
         through edge B (node 2): all delivered; publish→delivery median {:.2?}, max {:.2?}",
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    );
}
