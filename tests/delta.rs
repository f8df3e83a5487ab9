//! Delta compression (`delta: "fossil"`), black box over real sockets and a
//! real nats-server: a namespace with `allowed_delta_types = ["fossil"]`
//! grants it, and applying each delta to what the client had reproduces
//! every publication, in JSON and Protobuf; the first publication, one whose
//! delta would not be smaller, and the first after recovery come full;
//! recovered publications come full then as deltas; a namespace without it
//! ignores the request and an unknown delta type closes with 3501, as
//! Centrifugo. The SDK and Centrifugo comparisons are in tests/sdk.rs.

mod common;

use common::TestNats;
use common::node::{TestHerald, test_config};
use common::ws::WsClient;
use herald::config::NamespaceOptions;
use herald::protocol::fossil;
use serde_json::{Value, json};

async fn node() -> (TestNats, tempfile::TempDir, TestHerald) {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&nats, dir.path().join("data"));
    let state = NamespaceOptions {
        allowed_delta_types: vec!["fossil".into()],
        ..config.channels.default.clone()
    };
    config.channels.namespaces.insert("state".into(), state);
    let h = TestHerald::start(config).await;
    (nats, dir, h)
}

/// A realistic state object (~1 KB) of which each tick changes a few
/// fields: the tick, one player's position, another's health.
fn state(tick: u64) -> Value {
    let players: Vec<Value> = (0..12u64)
        .map(|i| {
            let moving = i == tick % 12;
            let hurt = i == (tick + 5) % 12;
            json!({
                "hp": 100 - if hurt { tick % 7 } else { 0 },
                "id": i,
                "name": format!("player-{i}"),
                "x": if moving { (i * 37 + tick * 5) % 1000 } else { i * 37 },
                "y": if moving { (i * 91 + tick * 3) % 1000 } else { i * 91 },
            })
        })
        .collect();
    json!({"game": "g1", "players": players, "status": "running", "tick": tick})
}

/// What a delta subscription's client keeps: the last data it rebuilt.
#[derive(Default)]
struct Applier {
    prev: Vec<u8>,
}

impl Applier {
    /// Rebuilds the data of `bytes` (delta or full); returns it.
    fn take(&mut self, bytes: &[u8], delta: bool) -> Vec<u8> {
        self.prev = if delta {
            fossil::apply(&self.prev, bytes).expect("the delta applies to the previous data")
        } else {
            bytes.to_vec()
        };
        self.prev.clone()
    }

    /// A JSON publication of a delta subscription: `data` is a string.
    fn json(&mut self, publication: &Value) -> (Vec<u8>, bool) {
        let delta = publication["delta"].as_bool().unwrap_or(false);
        let text = publication["data"]
            .as_str()
            .unwrap_or_else(|| panic!("data as a string: {publication}"));
        (self.take(text.as_bytes(), delta), delta)
    }
}

fn text(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

async fn publish(h: &TestHerald, channel: &str, data: &Value) {
    let r = h
        .api("publish", json!({"channel": channel, "data": data}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
}

/// The next Protobuf publication of a Protobuf client, raw.
async fn pb_publication(c: &mut WsClient) -> herald_client::protobuf::pb::Publication {
    loop {
        let f = c.recv().await.expect("a frame");
        if let Some(p) = f
            .replies()
            .iter()
            .find_map(|r| r.push.as_ref()?.r#pub.clone())
        {
            return p;
        }
    }
}

#[tokio::test]
async fn deltas_rebuild_every_publication_in_json_and_protobuf() {
    let (_nats, _dir, h) = node().await;
    let (mut js, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    let (mut pbc, _) = WsClient::connect_protobuf(h.addr, &h.token("bob")).await;
    let (mut plain, _) = WsClient::connect(h.addr, &h.token("carol")).await;
    for c in [&mut js, &mut pbc] {
        let r = c
            .call(
                "subscribe",
                json!({"channel": "state:g1", "delta": "fossil"}),
            )
            .await;
        assert_eq!(r["subscribe"]["delta"], true, "{r}");
    }
    let r = plain
        .call("subscribe", json!({"channel": "state:g1"}))
        .await;
    assert!(r["subscribe"].get("delta").is_none(), "not asked: {r}");

    let (mut a_js, mut a_pb) = (Applier::default(), Applier::default());
    let (mut json_bytes, mut plain_bytes, mut deltas) = (0, 0, 0);
    for tick in 1..=30 {
        publish(&h, "state:g1", &state(tick)).await;
        let want = text(&state(tick));
        let p = js.publication("state:g1").await;
        let (got, delta) = a_js.json(&p);
        assert_eq!(got, want, "JSON, tick {tick}");
        assert_eq!(p["offset"], tick, "{p}");
        assert_eq!(delta, tick > 1, "only the first goes full: tick {tick}");
        json_bytes += p["data"].as_str().unwrap().len();
        deltas += usize::from(delta);

        let p = pb_publication(&mut pbc).await;
        assert_eq!(a_pb.take(&p.data, p.delta), want, "Protobuf, tick {tick}");
        assert_eq!(p.delta, tick > 1);
        assert_eq!(p.offset, tick);

        let p = plain.publication("state:g1").await;
        assert_eq!(p["data"], state(tick), "a plain subscription as before");
        assert!(p.get("delta").is_none(), "{p}");
        plain_bytes += want.len();
    }
    assert_eq!(deltas, 29);
    assert!(
        json_bytes * 4 < plain_bytes,
        "deltas save bandwidth: {json_bytes} bytes of data against {plain_bytes}"
    );

    // A delta that would not be smaller is not sent: the publication goes full.
    let other = json!({"reset": true});
    publish(&h, "state:g1", &other).await;
    let p = js.publication("state:g1").await;
    assert_eq!(a_js.json(&p), (text(&other), false), "{p}");
    let p = pb_publication(&mut pbc).await;
    assert!(!p.delta);
    assert_eq!(a_pb.take(&p.data, p.delta), text(&other));
    // And the chain goes on from it.
    publish(&h, "state:g1", &state(31)).await;
    let p = js.publication("state:g1").await;
    assert_eq!(a_js.json(&p).0, text(&state(31)));
    let p = pb_publication(&mut pbc).await;
    assert_eq!(a_pb.take(&p.data, p.delta), text(&state(31)));
}

/// Subscribes `c` to `state:r` with delta, recovering from `offset`.
async fn recover(c: &mut WsClient, offset: u64, epoch: &str) -> Value {
    let r = c
        .call(
            "subscribe",
            json!({"channel": "state:r", "delta": "fossil", "recover": true,
                   "offset": offset, "epoch": epoch}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    assert_eq!(r["subscribe"]["delta"], true, "{r}");
    r
}

#[tokio::test]
async fn recovery_sends_full_then_deltas_and_live_deltas_follow() {
    let (_nats, _dir, h) = node().await;
    // Another subscriber keeps the edge's feed of the channel running.
    let (mut keeper, _) = WsClient::connect(h.addr, &h.token("keeper")).await;
    keeper
        .call("subscribe", json!({"channel": "state:r"}))
        .await;
    let (mut c, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    let r = c
        .call(
            "subscribe",
            json!({"channel": "state:r", "delta": "fossil"}),
        )
        .await;
    let epoch = r["subscribe"]["epoch"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut a = Applier::default();
    for tick in 1..=3 {
        publish(&h, "state:r", &state(tick)).await;
        let p = c.publication("state:r").await;
        assert_eq!(a.json(&p).0, text(&state(tick)));
    }
    c.close().await;
    for tick in 4..=7 {
        publish(&h, "state:r", &state(tick)).await;
    }

    let (mut c, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    let r = recover(&mut c, 3, &epoch).await;
    let recovered = r["subscribe"]["publications"]
        .as_array()
        .expect("publications");
    assert_eq!(recovered.len(), 4, "{r}");
    // As a fresh client: the first recovered publication must be full.
    let mut fresh = Applier::default();
    for (p, tick) in recovered.iter().zip(4..) {
        let (got, delta) = fresh.json(p);
        assert_eq!(got, text(&state(tick)), "recovered tick {tick}");
        assert_eq!(delta, tick > 4, "full first, then deltas: {p}");
        assert_eq!(p["offset"], tick);
    }
    // Live: a delta against the last recovered one.
    publish(&h, "state:r", &state(8)).await;
    let p = c.publication("state:r").await;
    assert_eq!(fresh.json(&p), (text(&state(8)), true), "{p}");

    // Recovering with nothing missed: the next publication is full (Herald
    // does not assume the client kept its data across the resubscribe;
    // Centrifugo sends a delta there).
    c.close().await;
    let (mut c, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    let r = recover(&mut c, 8, &epoch).await;
    assert!(r["subscribe"].get("publications").is_none(), "{r}");
    publish(&h, "state:r", &state(9)).await;
    let p = c.publication("state:r").await;
    assert_eq!(Applier::default().json(&p), (text(&state(9)), false), "{p}");

    // Nobody left on the channel, then a recovery: the feed starts again
    // without the previous publication, so the first live one goes full,
    // then deltas again.
    c.close().await;
    keeper.close().await;
    publish(&h, "state:r", &state(10)).await;
    let (mut c, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    let r = recover(&mut c, 9, &epoch).await;
    let mut again = Applier::default();
    let recovered = r["subscribe"]["publications"].as_array().expect("pubs");
    assert_eq!(again.json(&recovered[0]), (text(&state(10)), false));
    for (tick, delta) in [(11, false), (12, true)] {
        publish(&h, "state:r", &state(tick)).await;
        let p = c.publication("state:r").await;
        assert_eq!(again.json(&p), (text(&state(tick)), delta), "{p}");
    }
}

#[tokio::test]
async fn not_allowed_is_ignored_and_an_unknown_type_closes_3501() {
    let (_nats, _dir, h) = node().await;
    let (mut c, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    let r = c
        .call("subscribe", json!({"channel": "plain", "delta": "fossil"}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    assert!(r["subscribe"].get("delta").is_none(), "not granted: {r}");
    publish(&h, "plain", &state(1)).await;
    publish(&h, "plain", &state(2)).await;
    for tick in 1..=2 {
        let p = c.publication("plain").await;
        assert_eq!(p["data"], state(tick), "as it is: {p}");
    }

    c.send_text(r#"{"id":7,"subscribe":{"channel":"state:x","delta":"zstd"}}"#)
        .await;
    assert_eq!(c.closed().await.code, 3501);
}
