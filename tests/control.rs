//! Per-user control across nodes (server API `subscribe`, `unsubscribe`,
//! `refresh`, `disconnect` reaching every edge where the user is connected)
//! and the graceful shutdown drain. Two nodes on one real nats-server: a
//! `serve` and a second `edge` in process.

mod common;

use std::time::Duration;

use common::node::{TestHerald, test_config};
use common::ws::WsClient;
use common::{TestNats, eventually};
use herald::roles::{self, Role, Running};
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(300);

struct Cluster {
    _nats: TestNats,
    _dir: tempfile::TempDir,
    serve: TestHerald,
    edge: Running,
}

async fn cluster() -> Cluster {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&nats, dir.path().join("serve"));
    // Tokens live an hour; a refresh's `expire_at` then closes without grace.
    config.client.expired_close_delay = Duration::ZERO;
    let serve = TestHerald::start(config.clone()).await;
    let mut edge_config = config;
    edge_config.data_dir = dir.path().join("edge");
    let edge = roles::start(Role::Edge, edge_config)
        .await
        .expect("edge starts");
    Cluster {
        _nats: nats,
        _dir: dir,
        serve,
        edge,
    }
}

/// Connects `user`; returns the connection and its client id.
async fn connect(addr: std::net::SocketAddr, h: &TestHerald, user: &str) -> (WsClient, String) {
    let (c, reply) = WsClient::connect(addr, &h.token(user)).await;
    let id = reply["connect"]["client"].as_str().expect("client id");
    (c, id.to_string())
}

impl Cluster {
    /// alice on both nodes, bob on the serve node.
    async fn clients(&self) -> ((WsClient, String), (WsClient, String), WsClient) {
        let h = &self.serve;
        let alice1 = connect(h.addr, h, "alice").await;
        let alice2 = connect(self.edge.addr, h, "alice").await;
        let (bob, _) = connect(h.addr, h, "bob").await;
        (alice1, alice2, bob)
    }

    async fn api_ok(&self, method: &str, body: Value) {
        let r = self.serve.api(method, body).await;
        assert_eq!(r, json!({"result": {}}), "{method}");
    }
}

/// The connection got nothing (was not closed) and still answers commands.
async fn untouched(c: &mut WsClient) {
    assert!(c.nothing_for(QUIET).await, "nothing arrived");
    let r = c.call("ping", json!({})).await;
    assert!(r.get("ping").is_some(), "{r}");
}

#[tokio::test]
async fn server_side_subscribe_and_unsubscribe_reach_every_node() {
    let cl = cluster().await;
    let ((mut alice1, _), (mut alice2, id2), mut bob) = cl.clients().await;

    cl.api_ok("subscribe", json!({"user": "alice", "channel": "news"}))
        .await;
    for alice in [&mut alice1, &mut alice2] {
        let p = alice.push().await;
        assert_eq!(p["channel"], "news", "{p}");
        assert_eq!(p["subscribe"]["recoverable"], true, "{p}");
    }
    let r = cl
        .serve
        .api("publish", json!({"channel": "news", "data": {"n": 1}}))
        .await;
    assert_eq!(r["result"]["offset"], 1, "{r}");
    for alice in [&mut alice1, &mut alice2] {
        let p = alice.publication("news").await;
        assert_eq!(p["data"]["n"], 1);
        assert_eq!(p["offset"], 1);
    }
    assert!(bob.nothing_for(QUIET).await, "bob got nothing");

    cl.api_ok("unsubscribe", json!({"user": "alice", "channel": "news"}))
        .await;
    for alice in [&mut alice1, &mut alice2] {
        let p = alice.push().await;
        assert_eq!(p["channel"], "news", "{p}");
        assert_eq!(p["unsubscribe"]["code"], 2000, "{p}");
        assert_eq!(p["unsubscribe"]["reason"], "server unsubscribe", "{p}");
    }
    cl.serve
        .api("publish", json!({"channel": "news", "data": {"n": 2}}))
        .await;
    for alice in [&mut alice1, &mut alice2] {
        assert!(
            alice.nothing_for(QUIET).await,
            "no publication after unsubscribe"
        );
    }
    assert!(bob.nothing_for(QUIET).await, "bob got nothing");

    // Recovering from a position: the subscribe push, then what was missed.
    cl.api_ok(
        "subscribe",
        json!({"user": "alice", "client": id2, "channel": "news",
               "recover_since": {"offset": 0, "epoch": ""}}),
    )
    .await;
    let p = alice2.push().await;
    assert_eq!(p["subscribe"]["recovered"], true, "{p}");
    // As Centrifugo: the offset recovered from (absent when 0); the
    // publications carry their own.
    assert!(p["subscribe"].get("offset").is_none(), "{p}");
    for n in [1, 2] {
        let p = alice2.publication("news").await;
        assert_eq!(p["offset"], n);
    }
    untouched(&mut alice1).await;
}

#[tokio::test]
async fn refresh_expires_connections_on_every_node() {
    let cl = cluster().await;
    let ((mut alice1, _), (mut alice2, _), mut bob) = cl.clients().await;
    cl.api_ok("refresh", json!({"user": "alice", "expired": true}))
        .await;
    for alice in [&mut alice1, &mut alice2] {
        let closed = alice.closed().await;
        assert_eq!(closed.code, 3005, "{closed:?}");
        assert_eq!(closed.reason, "connection expired");
    }
    untouched(&mut bob).await;

    // A new expiry ahead: the clients learn it from a refresh push, as
    // Centrifugo's.
    let ((mut alice1, _), (mut alice2, _), _) = cl.clients().await;
    let later = herald::auth::now_secs() + 3600;
    cl.api_ok("refresh", json!({"user": "alice", "expire_at": later}))
        .await;
    for alice in [&mut alice1, &mut alice2] {
        let p = alice.push().await;
        assert_eq!(p["refresh"]["expires"], true, "{p}");
        assert!(p["refresh"]["ttl"].as_u64() > Some(3000), "{p}");
    }
    untouched(&mut bob).await;

    // A new expiry that has come: closed as expired (no grace here).
    let soon = herald::auth::now_secs();
    cl.api_ok("refresh", json!({"user": "alice", "expire_at": soon}))
        .await;
    for alice in [&mut alice1, &mut alice2] {
        assert_eq!(alice.closed().await.code, 3005);
    }
    untouched(&mut bob).await;
}

#[tokio::test]
async fn disconnect_closes_the_users_connections_everywhere() {
    let cl = cluster().await;
    let ((mut alice1, _), (mut alice2, _), mut bob) = cl.clients().await;
    cl.api_ok(
        "disconnect",
        json!({"user": "alice", "disconnect": {"code": 4500, "reason": "banned"}}),
    )
    .await;
    for alice in [&mut alice1, &mut alice2] {
        let closed = alice.closed().await;
        assert_eq!(closed.code, 4500, "{closed:?}");
        assert_eq!(closed.reason, "banned");
    }
    untouched(&mut bob).await;

    // One client only, then everything but a whitelisted one.
    let ((mut alice1, id1), (mut alice2, id2), _) = cl.clients().await;
    let (mut alice3, _) = connect(cl.edge.addr, &cl.serve, "alice").await;
    cl.api_ok("disconnect", json!({"user": "alice", "client": id2}))
        .await;
    let closed = alice2.closed().await;
    assert_eq!(closed.code, 3503, "{closed:?}");
    assert_eq!(closed.reason, "force disconnect");
    untouched(&mut alice1).await;
    untouched(&mut alice3).await;

    cl.api_ok("disconnect", json!({"user": "alice", "whitelist": [id1]}))
        .await;
    assert_eq!(alice3.closed().await.code, 3503);
    untouched(&mut alice1).await;
    untouched(&mut bob).await;

    // A session id matches no Herald connection: nothing happens.
    cl.api_ok("disconnect", json!({"user": "alice", "session": "s1"}))
        .await;
    untouched(&mut alice1).await;
}

#[tokio::test]
async fn control_methods_validate_their_input() {
    let cl = cluster().await;
    let h = &cl.serve;
    for (method, body) in [
        ("disconnect", json!({})),
        ("refresh", json!({"user": "", "expired": true})),
        ("subscribe", json!({"user": "a", "channel": ""})),
        (
            "disconnect",
            json!({"user": "a", "disconnect": {"code": 1000, "reason": "x"}}),
        ),
        (
            "disconnect",
            json!({"user": "a", "disconnect": {"code": 4000, "reason": "r".repeat(124)}}),
        ),
    ] {
        let r = h.api(method, body.clone()).await;
        assert_eq!(r["error"]["code"], 107, "{method} {body}: {r}");
    }
    let r = h
        .api("unsubscribe", json!({"user": "a", "channel": "nope:x"}))
        .await;
    assert_eq!(r["error"]["code"], 102, "{r}");
}

#[tokio::test]
async fn shutdown_drain_spreads_closes_and_refuses_upgrades() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let drain = Duration::from_secs(1);
    let mut config = test_config(&nats, dir.path().join("data"));
    config.shutdown_drain = drain;
    let mut h = TestHerald::start(config).await;
    let addr = h.addr;

    let mut waiting = Vec::new();
    for i in 0..20 {
        let (mut c, _) = WsClient::connect(addr, &h.token(&format!("u{i}"))).await;
        waiting.push(tokio::spawn(async move {
            let closed = c.closed().await;
            (closed, tokio::time::Instant::now())
        }));
    }
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let first = waiting.remove(0);
    let watcher = tokio::spawn(async move {
        let r = first.await.expect("client task");
        let _ = first_tx.send(());
        r
    });
    let stopping = tokio::spawn(async move {
        h.stop().await;
    });

    // While draining, a new WebSocket is refused.
    first_rx.await.expect("first close");
    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/connection/websocket"))
        .await
        .expect_err("upgrade refused during the drain");
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 503);
        }
        e => panic!("expected HTTP 503, got {e}"),
    }

    let mut times = vec![watcher.await.expect("watcher")];
    for w in waiting {
        times.push(w.await.expect("client task"));
    }
    for (closed, _) in &times {
        assert_eq!(closed.code, 3001, "{closed:?}");
    }
    let first = times.iter().map(|(_, t)| *t).min().expect("closes");
    let last = times.iter().map(|(_, t)| *t).max().expect("closes");
    assert!(
        last - first >= drain / 3,
        "closes spread over the drain, got {:?}",
        last - first
    );
    eventually("stop finished", Duration::from_secs(10), || async {
        stopping.is_finished().then_some(())
    })
    .await;
}
