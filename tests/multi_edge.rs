//! Several edges against one NATS: every edge delivers a channel's
//! publications in the same offset order, whichever edge they were published
//! through.

mod common;

use common::TestNats;
use common::node::{TestHerald, test_config};
use common::ws::WsClient;
use herald::roles::{self, Role};
use serde_json::json;

#[tokio::test]
async fn clients_on_different_edges_see_the_same_order() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(&nats, dir.path().join("data"));
    let serve = TestHerald::start(config.clone()).await;
    let mut edge_config = config.clone();
    edge_config.data_dir = dir.path().join("edge");
    let edge = roles::start(Role::Edge, edge_config)
        .await
        .expect("edge starts");

    let (mut on_serve, _) = WsClient::connect(serve.addr, &serve.token("a")).await;
    let (mut on_edge, _) = WsClient::connect(edge.addr, &serve.token("b")).await;
    for c in [&mut on_serve, &mut on_edge] {
        let r = c.call("subscribe", json!({"channel": "room"})).await;
        assert_eq!(r["subscribe"]["recoverable"], true, "{r}");
    }
    // Publishers on both edges, interleaved and concurrent.
    let (mut p1, _) = WsClient::connect(serve.addr, &serve.token("p1")).await;
    let (mut p2, _) = WsClient::connect(edge.addr, &serve.token("p2")).await;
    let t1 = tokio::spawn(async move {
        for i in 0..100 {
            let r = p1
                .call(
                    "publish",
                    json!({"channel": "room", "data": {"from": 1, "i": i}}),
                )
                .await;
            assert!(r["publish"]["offset"].as_u64().is_some(), "{r}");
        }
    });
    let t2 = tokio::spawn(async move {
        for i in 0..100 {
            let r = p2
                .call(
                    "publish",
                    json!({"channel": "room", "data": {"from": 2, "i": i}}),
                )
                .await;
            assert!(r["publish"]["offset"].as_u64().is_some(), "{r}");
        }
    });
    t1.await.expect("publisher 1");
    t2.await.expect("publisher 2");

    let mut seen = Vec::new();
    for c in [&mut on_serve, &mut on_edge] {
        let mut got = Vec::new();
        for _ in 0..200 {
            let p = c.publication("room").await;
            got.push((p["offset"].as_u64().expect("offset"), p["data"].clone()));
        }
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (1..=200).collect::<Vec<_>>(), "dense and in order");
        seen.push(got);
    }
    assert_eq!(
        seen[0], seen[1],
        "both edges delivered the same publications at the same offsets"
    );
    edge.stop().await;
}
