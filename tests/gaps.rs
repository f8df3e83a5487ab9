//! Gaps at the edge (I4), with real processes: a `herald edge` whose NATS
//! connection goes through a proxy the test cuts, and a `herald serve`
//! (writer + sync + edge) connected directly that keeps publishing. Core NATS
//! does not buffer for a disconnected client, so the edge misses what is
//! published during the cut; after async-nats reconnects and resubscribes,
//! the next publication shows the gap. The edge fills it from sync before
//! delivering further, or, past its fill limit, ends the subscriptions with
//! `unsubscribe` 2500 so clients resubscribe and recover. A history reset
//! (a new epoch) while the edge runs ends its subscriptions the same way.
//! A subscribe in flight when the gap turns out unfillable is told too (on
//! a shared CQL store, so sync can be stopped alone; skipped without one).

mod common;

use std::time::Duration;

use common::TestNats;
use common::follower::{Conn, Follower, token};
use common::process::{HeraldProcess, Spec};
use common::proxy::Proxy;
use common::scylla::{SharedStore, scylla_nodes};
use serde_json::json;

struct Cluster {
    nats: TestNats,
    _dir: tempfile::TempDir,
    serve: HeraldProcess,
    proxy: Proxy,
    edge: HeraldProcess,
}

/// `serve` on NATS directly; `edge` through the proxy, with `recovery_limit`
/// (also the largest gap it fills from sync).
async fn cluster(recovery_limit: usize) -> Cluster {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let serve =
        HeraldProcess::start(Spec::serve("serve", nats.url(), &dir.path().join("data"))).await;
    let target = format!("127.0.0.1:{}", nats.port())
        .parse()
        .expect("nats addr");
    let proxy = Proxy::start(target).await;
    let edge = HeraldProcess::start(
        Spec::edge("edge (proxied)", &proxy.url()).set("client_recovery_limit", recovery_limit),
    )
    .await;
    Cluster {
        nats,
        _dir: dir,
        serve,
        proxy,
        edge,
    }
}

impl Cluster {
    /// Publishes through the serve's API; returns the offset.
    async fn publish(&self, channel: &str, n: u64) -> u64 {
        let r = self
            .serve
            .api()
            .ok(
                "publish",
                &json!({"channel": channel, "data": {"n": n}}),
                Duration::from_secs(10),
            )
            .await;
        r["offset"].as_u64().expect("offset")
    }

    /// After `restore`: publishes one more at a time until the follower's
    /// position reaches the newest (the edge reconnected and resubscribed;
    /// async-nats backs off at most 4 s between attempts). Returns the head.
    async fn publish_until_delivered(&self, f: &mut Follower, channel: &str) -> u64 {
        let started = tokio::time::Instant::now();
        loop {
            let head = self.publish(channel, 0).await;
            let wait = tokio::time::Instant::now() + Duration::from_millis(400);
            while f.last < head && tokio::time::Instant::now() < wait {
                f.step(Duration::from_millis(50)).await;
            }
            if f.last >= head {
                return head;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the proxied edge never delivered again (position {}, head {head})",
                f.last
            );
        }
    }
}

#[tokio::test]
async fn edge_fills_a_gap_after_losing_nats() {
    let c = cluster(300).await;
    let ch = "gap-fill";
    let mut f = Follower::subscribe(c.edge.addr(), "gap-user", ch).await;
    for n in 1..=5 {
        c.publish(ch, n).await;
    }
    f.follow_until(5, &[c.edge.addr()], Duration::from_secs(10))
        .await;

    c.proxy.cut();
    for n in 6..=15 {
        assert_eq!(c.publish(ch, n).await, n, "serve keeps publishing");
    }
    c.proxy.restore();
    let head = c.publish_until_delivered(&mut f, ch).await;

    let tally = f.tally(head);
    let filled = c
        .edge
        .metric("herald_edge_gaps_filled_total", &[("result", "filled")])
        .await;
    println!(
        "gap fill: head {head}, missed during the cut 10 (+{} while reconnecting), client {tally:?}, \
         gaps filled {filled}, resubscribes {}",
        head - 16,
        f.resubscribes
    );
    assert_eq!(tally.missed, 0, "{tally:?}");
    assert_eq!(tally.duplicated, 0, "{tally:?}");
    assert_eq!(tally.out_of_order, 0, "{tally:?}");
    assert_eq!(tally.received as u64, head);
    assert_eq!(f.resubscribes, 0, "the edge filled the gap itself");
    assert!(filled >= 1.0, "the edge counted a filled gap");
    // Later publications keep flowing.
    let next = c.publish(ch, 99).await;
    f.follow_until(next, &[c.edge.addr()], Duration::from_secs(10))
        .await;
    assert_eq!(f.got.last().map(|r| r.offset), Some(next));
    drop(c.nats);
}

#[tokio::test]
async fn gap_past_the_fill_limit_makes_clients_recover() {
    let c = cluster(5).await;
    let ch = "gap-big";
    let mut f = Follower::subscribe(c.edge.addr(), "gap-user", ch).await;
    for n in 1..=3 {
        c.publish(ch, n).await;
    }
    f.follow_until(3, &[c.edge.addr()], Duration::from_secs(10))
        .await;

    c.proxy.cut();
    for n in 4..=13 {
        c.publish(ch, n).await;
    }
    c.proxy.restore();
    let head = c.publish_until_delivered(&mut f, ch).await;

    let tally = f.tally(head);
    let failed = c
        .edge
        .metric("herald_edge_gaps_filled_total", &[("result", "failed")])
        .await;
    println!(
        "gap past the limit (5): head {head}, unsubscribe codes {:?}, resubscribes {}, \
         recovered:false then paged {}, client {tally:?}, failed fills {failed}",
        f.unsubscribe_codes, f.resubscribes, f.unrecovered
    );
    assert_eq!(f.unsubscribe_codes, vec![2500], "insufficient state, once");
    assert_eq!(tally.missed, 0, "{tally:?}");
    assert_eq!(tally.duplicated, 0, "{tally:?}");
    assert_eq!(tally.out_of_order, 0, "{tally:?}");
    assert!(failed >= 1.0, "the edge counted a gap it did not fill");
    let next = c.publish(ch, 99).await;
    f.follow_until(next, &[c.edge.addr()], Duration::from_secs(10))
        .await;
    assert_eq!(f.tally(next).missed, 0);
    drop(c.nats);
}

/// Issue 19 c: a channel's history is reset while an edge runs (here the
/// store is wiped and `serve` started again: a new epoch, offsets from 1). A
/// client live at offset 3 of the old epoch gets `unsubscribe` 2500 when
/// offset 1 of the new epoch arrives, not silence (offsets 1..3 dropped as
/// duplicates), and its recovering subscribe lands in the new epoch.
#[tokio::test]
async fn history_reset_while_an_edge_runs_ends_subscriptions_with_2500() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut serve = HeraldProcess::start(Spec::serve("serve", nats.url(), &data)).await;
    let edge = HeraldProcess::start(Spec::edge("edge", nats.url())).await;
    let ch = "reset";
    let limit = Duration::from_secs(10);
    for n in 1..=3 {
        let r = serve
            .api()
            .ok("publish", &json!({"channel": ch, "data": {"n": n}}), limit)
            .await;
        assert_eq!(r["offset"], n, "{r}");
    }
    let mut conn = Conn::open(edge.addr(), &token("reset-user"))
        .await
        .expect("connect");
    let reply = conn
        .call("subscribe", json!({"channel": ch}))
        .await
        .expect("subscribe reply");
    assert_eq!(reply["subscribe"]["offset"], 3, "{reply}");
    let old_epoch = reply["subscribe"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();

    serve.sigterm().await;
    std::fs::remove_dir_all(&data).expect("wipe the store");
    let serve = HeraldProcess::start(Spec::serve("serve again", nats.url(), &data)).await;
    let r = serve
        .api()
        .ok("publish", &json!({"channel": ch, "data": {"n": 1}}), limit)
        .await;
    assert_eq!(r["offset"], 1, "{r}");
    let new_epoch = r["epoch"].as_str().expect("epoch").to_string();
    assert_ne!(new_epoch, old_epoch, "the wiped store starts a new epoch");

    let push = loop {
        match conn.push(limit).await {
            Ok(Some(p)) if p["channel"] == ch => break p,
            Ok(Some(_)) => {}
            Ok(None) => panic!("nothing for the subscription after the history reset"),
            Err(e) => panic!("connection ended: {e:?}"),
        }
    };
    assert_eq!(push["unsubscribe"]["code"], 2500, "{push}");

    let reply = conn
        .call(
            "subscribe",
            json!({"channel": ch, "recover": true, "offset": 3, "epoch": old_epoch}),
        )
        .await
        .expect("resubscribe reply");
    let s = &reply["subscribe"];
    assert_eq!(s["recovered"], serde_json::Value::Null, "{reply}");
    assert_eq!(s["epoch"], new_epoch.as_str(), "{reply}");
    assert_eq!(s["offset"], 1, "{reply}");
    drop(nats);
}

/// Issue 19 a, black-box: a subscribe in flight when its channel's feed
/// fails must not come back to life. Writer, sync and edges are separate
/// processes on a shared store (so sync alone can be delayed: SIGSTOP, a
/// real stall). Client A is live on the proxied edge; the edge misses
/// offsets 4..=6 (proxy cut); sync is stopped; offset 7 reaches the edge,
/// whose gap fill from sync waits and fails at `sync_timeout` (an unfillable
/// gap) and ends every subscription of the channel. Client B subscribed
/// meanwhile, its position read also waiting on sync; sync resumes right
/// after the failure, so B's read succeeds after its subscription ended.
/// B must be told (an error reply, or its reply then `unsubscribe` 2500),
/// and may subscribe again and receive what follows; it must not be left
/// "subscribed" to a feed that no longer delivers to it.
#[tokio::test]
async fn a_subscribe_in_flight_when_its_feed_fails_is_told() {
    let test = "a_subscribe_in_flight_when_its_feed_fails_is_told";
    let Some(nodes) = scylla_nodes(test) else {
        return;
    };
    let nats = TestNats::start().await;
    let store = SharedStore::create(nodes, "herald_gap_a").await;
    let url = nats.url();
    let _writer = HeraldProcess::start(store.spec("writer", "writer", url)).await;
    let sync = HeraldProcess::start(store.spec("sync", "sync (stopped)", url)).await;
    let publisher = HeraldProcess::start(store.spec("edge", "edge (publishes)", url)).await;
    let target = format!("127.0.0.1:{}", nats.port())
        .parse()
        .expect("nats addr");
    let proxy = Proxy::start(target).await;
    let sync_timeout = Duration::from_secs(3);
    let edge = HeraldProcess::start(
        store
            .spec("edge", "edge (proxied)", &proxy.url())
            .set("client_recovery_limit", 100)
            .set("sync_timeout", format!("{}s", sync_timeout.as_secs())),
    )
    .await;
    let api = publisher.api();
    let limit = Duration::from_secs(10);
    let publish = |channel: &'static str, n: u64| {
        let api = api.clone();
        async move {
            let r = api
                .ok(
                    "publish",
                    &json!({"channel": channel, "data": {"n": n}}),
                    limit,
                )
                .await;
            r["offset"].as_u64().expect("offset")
        }
    };
    let ch = "gap-in-flight";
    let mut a = Conn::open(edge.addr(), &token("user-a"))
        .await
        .expect("connect A");
    a.call("subscribe", json!({"channel": ch}))
        .await
        .expect("A subscribes");
    let mut probe = Conn::open(edge.addr(), &token("user-probe"))
        .await
        .expect("connect the probe");
    probe
        .call("subscribe", json!({"channel": "gap-probe"}))
        .await
        .expect("probe subscribes");
    for n in 1..=3 {
        publish(ch, n).await;
    }
    let offset_of = |p: &serde_json::Value| p["pub"]["offset"].as_u64();
    while a
        .push(limit)
        .await
        .expect("A connected")
        .and_then(|p| offset_of(&p))
        != Some(3)
    {}

    proxy.cut();
    for n in 4..=6 {
        assert_eq!(publish(ch, n).await, n);
    }
    proxy.restore();
    // The edge is back on NATS once a probe publication (published after
    // the restore) reaches it: as a publication, or as `unsubscribe` 2500
    // when the first ones were missed while reconnecting.
    let reconnected = tokio::time::Instant::now();
    loop {
        publish("gap-probe", 0).await;
        let mut delivered = false;
        while let Some(p) = probe.push(Duration::from_millis(300)).await.expect("probe") {
            delivered |= p["channel"] == "gap-probe";
        }
        if delivered {
            break;
        }
        assert!(
            reconnected.elapsed() < Duration::from_secs(20),
            "the edge never reconnected"
        );
    }

    common::process::signal(sync.pid, "STOP");
    let stopped = tokio::time::Instant::now();
    assert_eq!(publish(ch, 7).await, 7, "the writer commits without sync");
    // The edge's fill of 4..=6 now waits on sync; B subscribes half-way.
    tokio::time::sleep(sync_timeout / 2).await;
    let mut b = Conn::open(edge.addr(), &token("user-b"))
        .await
        .expect("connect B");
    let b_subscribe = tokio::spawn(async move {
        let reply = b.call("subscribe", json!({"channel": ch})).await;
        (b, reply)
    });
    let failed = loop {
        match a.push(limit).await.expect("A connected") {
            Some(p) if p["unsubscribe"].is_object() => break p,
            Some(_) => {}
            None => panic!("the unfillable gap did not end A's subscription"),
        }
    };
    common::process::signal(sync.pid, "CONT");
    let resumed = stopped.elapsed();
    assert_eq!(failed["unsubscribe"]["code"], 2500, "{failed}");

    let (mut b, reply) = b_subscribe.await.expect("B's task");
    let reply = reply.expect("B gets a reply to its subscribe");
    let told = if reply.get("error").is_some() {
        format!("error reply {}", reply["error"])
    } else {
        assert!(reply["subscribe"].is_object(), "{reply}");
        let push = b
            .push(Duration::from_secs(5))
            .await
            .expect("B connected")
            .unwrap_or_else(|| {
                panic!("B was left subscribed after its feed failed (reply {reply}, no push)")
            });
        assert_eq!(push["channel"], ch, "{push}");
        assert_eq!(push["unsubscribe"]["code"], 2500, "{push}");
        format!("reply then unsubscribe {}", push["unsubscribe"])
    };
    // Told, B subscribes again (not "already subscribed") and is live.
    let again = b
        .call("subscribe", json!({"channel": ch}))
        .await
        .expect("B resubscribes");
    assert_eq!(again["subscribe"]["offset"], 7, "{again}");
    let next = publish(ch, 8).await;
    let got = b.push(limit).await.expect("B connected");
    println!(
        "{test}: sync stopped {:.2?} (the edge's sync_timeout {sync_timeout:?}); B was told: \
         {told}; B live again at offset 7, then received {:?}",
        resumed,
        got.as_ref().and_then(offset_of)
    );
    assert_eq!(got.as_ref().and_then(offset_of), Some(next), "{got:?}");
    drop(nats);
}
