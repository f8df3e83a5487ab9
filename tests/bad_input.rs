//! Bad input gets the protocol's error or disconnect code, never a panic, and
//! harms nobody else: after every case a healthy client still publishes and
//! receives, and stored history is intact.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::node::{SECRET, TestHerald, test_config};
use common::ws::WsClient;
use common::{TestNats, eventually};
use serde_json::json;

struct Fixture {
    _nats: TestNats,
    _dir: tempfile::TempDir,
    h: TestHerald,
    /// A client connected before any bad input, subscribed to `watch`.
    bystander: WsClient,
}

async fn fixture() -> Fixture {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&nats, dir.path().join("data"));
    config.client.stale_timeout = Duration::from_secs(1);
    config.client.channel_limit = 3;
    config.client.message_size_limit = 1024;
    let h = TestHerald::start(config).await;
    let (mut bystander, _) = WsClient::connect(h.addr, &h.token("bystander")).await;
    bystander
        .call("subscribe", json!({"channel": "watch"}))
        .await;
    let r = h
        .api("publish", json!({"channel": "watch", "data": "before"}))
        .await;
    assert_eq!(r["result"]["offset"], 1);
    assert_eq!(bystander.publication("watch").await["data"], "before");
    Fixture {
        _nats: nats,
        _dir: dir,
        h,
        bystander,
    }
}

impl Fixture {
    /// The bystander still works and history holds exactly what it should.
    async fn unharmed(&mut self) {
        let r = self
            .bystander
            .call("publish", json!({"channel": "watch", "data": "after"}))
            .await;
        let offset = r["publish"]["offset"]
            .as_u64()
            .expect("bystander can publish");
        let p = self.bystander.publication("watch").await;
        assert_eq!(p["offset"], offset);
        let hist = self
            .h
            .api("history", json!({"channel": "watch", "limit": 100}))
            .await;
        let pubs = hist["result"]["publications"]
            .as_array()
            .expect("history")
            .clone();
        assert_eq!(
            pubs.len() as u64,
            offset,
            "history is dense and nothing was added by bad input"
        );
        assert_eq!(pubs[0]["data"], "before");
    }
}

fn token_with(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

#[tokio::test]
async fn malformed_json_disconnects_with_bad_request() {
    let mut f = fixture().await;
    let mut c = WsClient::open(f.h.addr).await;
    c.send_text("{\"id\":1,\"connect\":").await;
    assert_eq!(c.closed().await.code, 3501);
    let (mut c, _) = WsClient::connect(f.h.addr, &f.h.token("x")).await;
    c.send_text("not json at all").await;
    assert_eq!(c.closed().await.code, 3501);
    f.unharmed().await;
}

#[tokio::test]
async fn a_disconnect_is_said_only_by_the_close_frame() {
    // As Centrifugo's WebSocket transport: no `disconnect` push before the
    // Close frame (SDKs reading one took the close as having no code).
    let mut f = fixture().await;
    let (mut c, _) = WsClient::connect(f.h.addr, &f.h.token("x")).await;
    c.send_text("not json").await;
    assert_eq!(c.closed().await.code, 3501);
    assert!(c.take_pushes().is_empty(), "no push before the close");
    let (mut c, _) = WsClient::connect(f.h.addr, &f.h.token("leaving")).await;
    let r = f.h.api("disconnect", json!({"user": "leaving"})).await;
    assert!(r.get("error").is_none(), "{r}");
    let closed = c.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (3503, "force disconnect")
    );
    assert!(c.take_pushes().is_empty(), "no push before the close");
    f.unharmed().await;
}

#[tokio::test]
async fn unknown_command_disconnects_with_bad_request() {
    // As Centrifugo: a command with an id and no method it knows is an
    // empty command expecting a reply, a bad request.
    let mut f = fixture().await;
    let (mut c, _) = WsClient::connect(f.h.addr, &f.h.token("x")).await;
    c.send("teleport", json!({"to": "mars"})).await;
    assert_eq!(c.closed().await.code, 3501);
    f.unharmed().await;
}

#[tokio::test]
async fn commands_without_id_and_early_pongs_disconnect() {
    // As Centrifugo: only `send` goes without an id, and a pong (`{}`) is
    // for an authenticated connection only.
    let mut f = fixture().await;
    let mut c = WsClient::open(f.h.addr).await;
    c.send_text(&json!({"connect": {"token": f.h.token("x")}}).to_string())
        .await;
    assert_eq!(c.closed().await.code, 3501, "connect without id");
    let (mut c, _) = WsClient::connect(f.h.addr, &f.h.token("x")).await;
    c.send_text(&json!({"subscribe": {"channel": "watch"}}).to_string())
        .await;
    assert_eq!(c.closed().await.code, 3501, "subscribe without id");
    let mut c = WsClient::open(f.h.addr).await;
    c.send_text("{}").await;
    assert_eq!(c.closed().await.code, 3501, "pong before connect");
    f.unharmed().await;
}

#[tokio::test]
async fn send_without_a_handler_is_not_available() {
    let mut f = fixture().await;
    let (mut c, _) = WsClient::connect(f.h.addr, &f.h.token("x")).await;
    c.send_text(&json!({"send": {"data": {"x": 1}}}).to_string())
        .await;
    let closed = c.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (3508, "not available")
    );
    f.unharmed().await;
}

#[tokio::test]
async fn command_before_connect_disconnects() {
    let mut f = fixture().await;
    let mut c = WsClient::open(f.h.addr).await;
    c.send("subscribe", json!({"channel": "watch"})).await;
    assert_eq!(c.closed().await.code, 3501);
    f.unharmed().await;
}

#[tokio::test]
async fn missing_fields_are_bad_request() {
    let mut f = fixture().await;
    let (mut c, _) = WsClient::connect(f.h.addr, &f.h.token("x")).await;
    let r = c.call("publish", json!({"channel": "watch"})).await;
    assert_eq!(r["error"]["code"], 107, "publish without data: {r}");
    let r = c.call("history", json!({})).await;
    assert_eq!(r["error"]["code"], 107, "{r}");
    // A subscribe without a channel is malformed: closed, as Centrifugo.
    c.send("subscribe", json!({})).await;
    assert_eq!(c.closed().await.code, 3501);
    f.unharmed().await;
}

#[tokio::test]
async fn frame_over_the_size_limit_closes() {
    // The limit is 1 KiB. Just over it the frame is read and refused; far
    // over it (past twice the limit) it is refused from its header, unread.
    // Either way the close is Centrifugo's: 1009 with an empty reason.
    let mut f = fixture().await;
    for size in [2000, 200_000] {
        let (mut c, _) = WsClient::connect(f.h.addr, &f.h.token("x")).await;
        let big = "x".repeat(size);
        c.send("publish", json!({"channel": "watch", "data": big}))
            .await;
        let closed = c.closed().await;
        assert_eq!((closed.code, closed.reason.as_str()), (1009, ""), "{size}");
    }
    f.unharmed().await;
}

#[tokio::test]
async fn invalid_tokens_are_refused() {
    let mut f = fixture().await;
    let exp = herald::auth::now_secs() + 600;
    let cases = [
        ("garbage", "not.a.jwt".to_string()),
        (
            "wrong secret",
            token_with(json!({"sub": "x", "exp": exp}), "other-secret"),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
                URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"x","exp":{exp}}}"#))
            ),
        ),
        (
            // HMAC-signed with the secret, but the header claims RSA (the
            // algorithm confusion a pinned family prevents).
            "alg RS256",
            {
                let hs = token_with(json!({"sub": "x", "exp": exp}), SECRET);
                let (_, rest) = hs.split_once('.').expect("a JWT");
                format!(
                    "{}.{rest}",
                    URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#)
                )
            },
        ),
    ];
    for (what, token) in cases {
        let mut c = WsClient::open(f.h.addr).await;
        c.send("connect", json!({"token": token})).await;
        assert_eq!(c.closed().await.code, 3500, "{what}");
    }
    // No token at all: no credentials, a bad request (as Centrifugo).
    let mut c = WsClient::open(f.h.addr).await;
    c.send("connect", json!({"token": ""})).await;
    assert_eq!(c.closed().await.code, 3501, "empty token");
    f.unharmed().await;
}

#[tokio::test]
async fn expired_token_is_error_109() {
    let mut f = fixture().await;
    let token = token_with(
        json!({"sub": "x", "exp": herald::auth::now_secs() - 60}),
        SECRET,
    );
    let mut c = WsClient::open(f.h.addr).await;
    let r = c.call("connect", json!({"token": token})).await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    // The SDK then connects again with a fresh token on the same socket.
    let r = c.call("connect", json!({"token": f.h.token("x")})).await;
    assert!(r.get("connect").is_some(), "{r}");
    f.unharmed().await;
}

#[tokio::test]
async fn forbidden_and_invalid_channels() {
    let mut f = fixture().await;
    let (mut c, _) = WsClient::connect(f.h.addr, &f.h.token("mallory")).await;
    for ch in ["#bystander", "dm:#alice,bob", "$private"] {
        let r = c.call("subscribe", json!({"channel": ch})).await;
        assert_eq!(r["error"]["code"], 103, "{ch}: {r}");
    }
    let r = c
        .call("publish", json!({"channel": "#bystander", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    let r = c
        .call("history", json!({"channel": "#bystander", "limit": 10}))
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    let long = "x".repeat(256);
    for ch in [long.as_str(), "a\u{0}b", "dm:"] {
        let r = c.call("subscribe", json!({"channel": ch})).await;
        assert_eq!(r["error"]["code"], 107, "{ch:?}: {r}");
    }
    let r = c.call("subscribe", json!({"channel": "nosuchns:x"})).await;
    assert_eq!(r["error"]["code"], 102, "{r}");
    // An empty channel is a malformed command: closed, as Centrifugo.
    c.send("subscribe", json!({"channel": ""})).await;
    assert_eq!(c.closed().await.code, 3501);
    f.unharmed().await;
}

#[tokio::test]
async fn subscription_limit_and_double_subscribe() {
    let mut f = fixture().await;
    let (mut c, _) = WsClient::connect(f.h.addr, &f.h.token("x")).await;
    for i in 0..3 {
        let r = c
            .call("subscribe", json!({"channel": format!("c{i}")}))
            .await;
        assert!(r.get("subscribe").is_some(), "{r}");
    }
    let r = c.call("subscribe", json!({"channel": "c0"})).await;
    assert_eq!(r["error"]["code"], 105, "{r}");
    let r = c.call("subscribe", json!({"channel": "c3"})).await;
    assert_eq!(r["error"]["code"], 106, "{r}");
    c.call("unsubscribe", json!({"channel": "c0"})).await;
    let r = c.call("subscribe", json!({"channel": "c3"})).await;
    assert!(
        r.get("subscribe").is_some(),
        "room again after unsubscribe: {r}"
    );
    f.unharmed().await;
}

#[tokio::test]
async fn silent_connection_is_closed_as_stale() {
    let mut f = fixture().await;
    let mut c = WsClient::open(f.h.addr).await;
    assert_eq!(c.closed().await.code, 3502);
    f.unharmed().await;
}

#[tokio::test]
async fn methods_not_available_yet_answer_108() {
    let mut f = fixture().await;
    let (mut c, _) = WsClient::connect(f.h.addr, &f.h.token("x")).await;
    for method in ["presence", "presence_stats", "rpc"] {
        let r = c.call(method, json!({"channel": "watch"})).await;
        assert_eq!(r["error"]["code"], 108, "{method}: {r}");
    }
    f.unharmed().await;
}

#[tokio::test]
async fn missing_pong_disconnects_with_3012() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&nats, dir.path().join("data"));
    config.client.ping_interval = Duration::from_millis(300);
    config.client.pong_timeout = Duration::from_millis(200);
    let h = TestHerald::start(config).await;
    let (mut quiet, _) = WsClient::connect(h.addr, &h.token("quiet")).await;
    quiet.auto_pong = false;
    let (mut polite, _) = WsClient::connect(h.addr, &h.token("polite")).await;
    // The client that answers pings stays connected through several pings.
    let polite = tokio::spawn(async move {
        let quiet_period = polite.nothing_for(Duration::from_millis(1500)).await;
        (quiet_period, polite)
    });
    assert_eq!(quiet.closed().await.code, 3012);
    assert!(quiet.pings_seen >= 1);
    let (quiet_period, mut polite) = polite.await.expect("polite task");
    assert!(quiet_period, "the polite client was not disconnected");
    assert!(polite.pings_seen >= 2, "saw {} pings", polite.pings_seen);
    let r = polite
        .call("subscribe", json!({"channel": "still-here"}))
        .await;
    assert!(r.get("subscribe").is_some());
}

#[tokio::test]
async fn slow_client_is_disconnected_with_3008() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&nats, dir.path().join("data"));
    config.client.queue_max_bytes = 256 * 1024;
    let mut live = config.channels.default.clone();
    live.history = false;
    config.channels.namespaces.insert("live".into(), live);
    let h = TestHerald::start(config).await;
    // Subscribes, then never reads again: the kernel buffers fill, then the
    // server's outbound queue passes its bound.
    let (mut stalled, _) = WsClient::connect(h.addr, &h.token("stalled")).await;
    stalled
        .call("subscribe", json!({"channel": "live:firehose"}))
        .await;
    let (mut healthy, _) = WsClient::connect(h.addr, &h.token("healthy")).await;
    healthy
        .call("subscribe", json!({"channel": "live:firehose"}))
        .await;
    // The healthy client reads all along and checks order and completeness.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen_by_reader = seen.clone();
    let reader = tokio::spawn(async move {
        let mut next = 0u64;
        loop {
            let p = healthy.publication("live:firehose").await;
            if p["data"] == "end" {
                return (next, healthy);
            }
            assert_eq!(p["data"]["i"], next, "in order, nothing missing");
            next += 1;
            seen_by_reader.store(next, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // Bursts smaller than the queue bound, each waiting for the healthy
    // client to catch up: only a client that stopped reading can overflow.
    let pad = "y".repeat(8 * 1024);
    let mut sent = 0u64;
    let mut stalled_gone = false;
    while sent < 20_000 && !stalled_gone {
        for _ in 0..20 {
            let r = h
                .api(
                    "publish",
                    json!({"channel": "live:firehose", "data": {"i": sent, "pad": pad}}),
                )
                .await;
            assert_eq!(r["result"], json!({}), "{r}");
            sent += 1;
        }
        eventually("the healthy client catches up", Duration::from_secs(30), || {
            let seen = seen.clone();
            async move { (seen.load(std::sync::atomic::Ordering::SeqCst) == sent).then_some(()) }
        })
        .await;
        let info = h.api("info", json!({})).await;
        stalled_gone = info["result"]["nodes"][0]["num_clients"] == 1;
    }
    assert!(
        stalled_gone,
        "the stalled client was not disconnected after {sent} messages"
    );
    h.api(
        "publish",
        json!({"channel": "live:firehose", "data": "end"}),
    )
    .await;
    let (received, mut healthy) = reader.await.expect("healthy reader");
    assert_eq!(received, sent, "the healthy client got every message");
    let metrics = reqwest::get(h.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let count = |name: &str, labels: &[(&str, &str)]| {
        common::process::metric_value(&metrics, name, labels).unwrap_or(0.0)
    };
    assert!(
        count("herald_edge_disconnects_total", &[("code", "3008")]) >= 1.0,
        "3008 recorded"
    );
    assert!(count("herald_edge_slow_disconnects_total", &[]) >= 1.0);
    drop(stalled);
    let r = healthy
        .call(
            "publish",
            json!({"channel": "live:firehose", "data": "still fine"}),
        )
        .await;
    assert_eq!(r["publish"], json!({}));
}
