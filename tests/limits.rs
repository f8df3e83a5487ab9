//! Abuse limits, black box over real sockets against a real nats-server:
//! slow-loris request heads and idle keep-alive connections are closed after
//! `http_header_read_timeout`; past `http_max_connections` a new connection
//! is answered 503 while the open ones keep working; the `channels` claim of
//! a connection token counts against `client_channel_limit`, each name once.

mod common;

use std::time::{Duration, Instant};

use common::node::{SECRET, TestHerald, test_config};
use common::ws::WsClient;
use common::{TestNats, eventually};
use herald::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn herald_with(
    nats: &TestNats,
    dir: &tempfile::TempDir,
    f: impl FnOnce(&mut Config),
) -> TestHerald {
    let mut config = test_config(nats, dir.path().join("data"));
    f(&mut config);
    TestHerald::start(config).await
}

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Reads until the server closes the connection (bounded); returns what it
/// sent before closing.
async fn read_to_close(tcp: &mut TcpStream, bound: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(bound, tcp.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "the server kept the connection open past {bound:?}"
    );
    got
}

#[tokio::test]
async fn half_sent_heads_and_idle_keep_alives_are_closed() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let h = herald_with(&nats, &dir, |c| {
        c.http.header_read_timeout = Duration::from_secs(1);
    })
    .await;

    // A request head that never ends.
    let started = Instant::now();
    let mut slow = TcpStream::connect(h.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let got = read_to_close(&mut slow, Duration::from_secs(20)).await;
    println!(
        "half-sent head closed after {:?}, answer {:?}",
        started.elapsed(),
        String::from_utf8_lossy(&got)
    );
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"));

    // Nothing sent at all.
    let started = Instant::now();
    let mut silent = TcpStream::connect(h.addr).await.unwrap();
    read_to_close(&mut silent, Duration::from_secs(20)).await;
    println!("silent connection closed after {:?}", started.elapsed());

    // One complete request, then idle on keep-alive.
    let mut idle = TcpStream::connect(h.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let got = read_to_close(&mut idle, Duration::from_secs(20)).await;
    println!("idle keep-alive closed after {:?}", started.elapsed());
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));

    // A WebSocket (past its head) is not affected by the header timeout.
    let (mut c, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = c.call("ping", json!({})).await;
    assert!(r.get("ping").is_some(), "{r}");
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_get_503_and_others_keep_working() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let h = herald_with(&nats, &dir, |c| {
        c.http.max_connections = 3;
    })
    .await;

    // Three connections: two WebSockets and one idle TCP connection.
    let (mut a, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    let (mut b, _) = WsClient::connect(h.addr, &h.token("bob")).await;
    let held = TcpStream::connect(h.addr).await.unwrap();

    // The fourth is answered 503 and closed, without reading its request.
    let mut extra = TcpStream::connect(h.addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let got = read_to_close(&mut extra, Duration::from_secs(10)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");

    // The open ones are unaffected.
    for c in [&mut a, &mut b] {
        let r = c.call("ping", json!({})).await;
        assert!(r.get("ping").is_some(), "{r}");
    }

    // A connection closing frees its place.
    drop(held);
    let metrics = eventually(
        "a new connection is served once one closed",
        Duration::from_secs(10),
        || async {
            let r = reqwest::get(h.url("/metrics")).await.ok()?;
            (r.status() == 200).then_some(())?;
            r.text().await.ok()
        },
    )
    .await;
    let hits = common::process::metric_value(
        &metrics,
        "herald_limit_hits_total",
        &[("limit", "http_connections")],
    )
    .unwrap_or(0.0);
    assert!(hits >= 1.0, "{hits}");
}

#[tokio::test]
async fn the_channels_claim_counts_against_the_channel_limit_once_per_name() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let h = herald_with(&nats, &dir, |c| c.client.channel_limit = 2).await;

    // A name listed twice is one subscription, delivered once.
    let token = hs256(json!({"sub": "alice", "channels": ["news", "news", "sport"]}));
    let (mut c, reply) = WsClient::connect(h.addr, &token).await;
    let subs = reply["connect"]["subs"].as_object().expect("subs");
    assert_eq!(subs.len(), 2, "{reply}");
    let r = h
        .api("publish", json!({"channel": "news", "data": {"n": 1}}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let r = h
        .api("publish", json!({"channel": "sport", "data": {"n": 2}}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let first = c.push().await;
    assert_eq!(first["channel"], "news", "{first}");
    let second = c.push().await;
    assert_eq!(second["channel"], "sport", "{second}");
    assert!(c.nothing_for(Duration::from_millis(300)).await);
    // At the limit: one more subscribe is error 106.
    let r = c.call("subscribe", json!({"channel": "extra"})).await;
    assert_eq!(r["error"]["code"], 106, "{r}");

    // More distinct names than the limit: closed with 3505 (channel limit).
    let token = hs256(json!({"sub": "bob", "channels": ["a", "b", "c"]}));
    let mut c = WsClient::open(h.addr).await;
    c.send("connect", json!({"token": token})).await;
    assert_eq!(c.closed().await.code, 3505);
}

/// A `tight` tier: per connection 3 publishes, per user 4 history reads and
/// 2 connects, none refilled within the test (per hour); disconnect past 2×.
fn tight_tier(c: &mut Config) {
    let rate = |s: &str| herald::config::parse_rate(s).unwrap();
    let mut t = herald::config::TierLimits::default();
    t.connection.insert("publish".into(), rate("3/1h"));
    t.user.insert("history".into(), rate("4/1h"));
    t.user.insert("connect".into(), rate("2/1h"));
    c.rate_limits.tiers.insert("tight".into(), t);
    c.rate_limits.disconnect_multiple = 2;
}

fn code(reply: &Value) -> u64 {
    reply["error"]["code"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn command_rates_answer_111_then_close_3013_with_exact_counts() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let h = herald_with(&nats, &dir, tight_tier).await;

    // Per connection: publishes 1..=3 pass, 4..=6 get 111, the 7th closes.
    let token = hs256(json!({"sub": "alice", "tier": "tight"}));
    let (mut c, _) = WsClient::connect(h.addr, &token).await;
    let mut codes = Vec::new();
    for n in 0..6 {
        let r = c
            .call("publish", json!({"channel": "room", "data": {"n": n}}))
            .await;
        codes.push(code(&r));
    }
    assert_eq!(codes, [0, 0, 0, 111, 111, 111]);
    c.send("publish", json!({"channel": "room", "data": {"n": 7}}))
        .await;
    assert_eq!(c.closed().await.code, 3013);

    // Per user across two connections: history 1..=4 pass, 5..=8 get 111,
    // the 9th closes the connection that sent it.
    let token = hs256(json!({"sub": "bob", "tier": "tight"}));
    let (mut b1, _) = WsClient::connect(h.addr, &token).await;
    let (mut b2, _) = WsClient::connect(h.addr, &token).await;
    let mut codes = Vec::new();
    for n in 0..8 {
        let c = if n % 2 == 0 { &mut b1 } else { &mut b2 };
        let r = c
            .call("history", json!({"channel": "news", "limit": 1}))
            .await;
        codes.push(code(&r));
    }
    assert_eq!(codes, [0, 0, 0, 0, 111, 111, 111, 111]);
    b2.send("history", json!({"channel": "news", "limit": 1}))
        .await;
    assert_eq!(b2.closed().await.code, 3013);
    // Other kinds and the other connection are not refused.
    let r = b1
        .call("publish", json!({"channel": "room", "data": {}}))
        .await;
    assert_eq!(code(&r), 0, "{r}");

    // Per user connects: a third connect of the same user gets 111.
    let token = hs256(json!({"sub": "dave", "tier": "tight"}));
    let _d1 = WsClient::connect(h.addr, &token).await;
    let _d2 = WsClient::connect(h.addr, &token).await;
    let mut d3 = WsClient::open(h.addr).await;
    let r = d3.call("connect", json!({"token": token})).await;
    assert_eq!(code(&r), 111, "{r}");

    // No tier claim, or an unknown one: the default tier, far above these.
    for claims in [
        json!({"sub": "carol"}),
        json!({"sub": "erin", "tier": "nonexistent"}),
    ] {
        let (mut c, _) = WsClient::connect(h.addr, &hs256(claims)).await;
        for n in 0..10 {
            let r = c
                .call("publish", json!({"channel": "room", "data": {"n": n}}))
                .await;
            assert_eq!(code(&r), 0, "{r}");
        }
    }

    let metrics = reqwest::get(h.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let hits = |limit: &str| {
        common::process::metric_value(&metrics, "herald_limit_hits_total", &[("limit", limit)])
            .unwrap_or(0.0)
    };
    // At least: the recorder is shared by the tests of this binary.
    assert!(hits("connection_rate") >= 3.0);
    assert!(hits("user_rate") >= 4.0);
    assert!(hits("rate_disconnect") >= 2.0);
    assert!(hits("user_connect") >= 1.0);
}

#[tokio::test]
async fn http_apis_answer_429_with_retry_after_per_ip_and_per_credential() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rate = |s: &str| Some(herald::config::parse_rate(s).unwrap());
    let h = herald_with(&nats, &dir, |c| {
        c.api_rate_per_ip = rate("5/1h");
        c.sync_http_rate_per_key = rate("3/1h");
    })
    .await;
    let http = reqwest::Client::new();

    // Server API, per IP: 5 pass (right key or not), the 6th is 429.
    let mut statuses = Vec::new();
    for n in 0..6 {
        let key = if n == 2 {
            "wrong"
        } else {
            common::node::API_KEY
        };
        let r = http
            .post(h.url("/api/info"))
            .header("X-API-Key", key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let after: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(after >= 1, "{after}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], 111, "{body}");
        }
    }
    assert_eq!(statuses, [200, 200, 401, 200, 200, 429]);

    // Sync HTTP, per token: 3 pass, the 4th is 429; another token passes.
    let read = |token: String| {
        let http = http.clone();
        let url = h.url("/api/v1/channels/news/publications");
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let alice = h.token("alice");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(read(alice.clone()).await);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(read(h.token("bob")).await, 200);
    // Other routes are not limited.
    let r = http.get(h.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Opens a WebSocket with extra request headers: the socket, or the HTTP
/// status and `Retry-After` of a refused upgrade.
async fn upgrade(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    (u16, Option<String>),
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/connection/websocket")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err((
            r.status().as_u16(),
            r.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string()),
        )),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

#[tokio::test]
async fn node_and_ip_caps_refuse_upgrades_before_the_websocket() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let h = herald_with(&nats, &dir, |c| {
        c.connection_limits.max_connections = Some(4);
        c.connection_limits.max_per_ip = Some(2);
        c.connection_limits.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        c.connection_limits.ip_header = Some("x-forwarded-for".into());
    })
    .await;
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];

    // Per IP (from the trusted proxy's header): 2, the third is 429.
    let _a1 = upgrade(h.addr, &xff("192.0.2.1")).await.unwrap();
    let _a2 = upgrade(h.addr, &xff("203.0.113.9, 192.0.2.1"))
        .await
        .unwrap();
    let refused = upgrade(h.addr, &xff("192.0.2.1")).await.err();
    assert_eq!(refused.map(|r| r.0), Some(429));
    // A client cannot forge its way out: the rightmost untrusted entry counts.
    let refused = upgrade(h.addr, &xff("198.51.100.1, 192.0.2.1")).await.err();
    assert_eq!(refused.map(|r| r.0), Some(429));

    // Node-wide: 4 in all, the fifth is 503; the open ones keep working.
    let (mut b, _) = WsClient::connect(h.addr, &h.token("bob")).await;
    let _c = upgrade(h.addr, &xff("192.0.2.3")).await.unwrap();
    let refused = upgrade(h.addr, &xff("192.0.2.4")).await.err();
    assert_eq!(refused.map(|r| r.0), Some(503));
    let r = b.call("ping", json!({})).await;
    assert!(r.get("ping").is_some(), "{r}");
    // A closed connection frees its place.
    b.close().await;
    eventually("a place frees up", Duration::from_secs(10), || async {
        upgrade(h.addr, &xff("192.0.2.4")).await.ok().map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn an_untrusted_peer_cannot_pick_its_ip_and_the_connect_rate_is_per_ip() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let h = herald_with(&nats, &dir, |c| {
        c.connection_limits.connect_rate_per_ip = herald::config::parse_rate("3/1h").ok();
        c.connection_limits.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        c.connection_limits.ip_header = Some("x-forwarded-for".into());
    })
    .await;
    // The peer (127.0.0.1) is no trusted proxy: every header is ignored and
    // all four count against 127.0.0.1: 3 pass, the 4th is 429.
    let mut held = Vec::new();
    for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        held.push(upgrade(h.addr, &[("x-forwarded-for", ip)]).await.unwrap());
    }
    let Err(refused) = upgrade(h.addr, &[("x-forwarded-for", "192.0.2.4")]).await else {
        panic!("the fourth connect is not refused");
    };
    assert_eq!(refused.0, 429);
    let after: u64 = refused.1.expect("Retry-After").parse().unwrap();
    assert!(after >= 1, "{after}");
}

#[tokio::test]
async fn the_per_user_cap_closes_the_newest_or_the_oldest() {
    let nats = TestNats::start().await;
    for (policy, dir) in [
        (
            herald::config::UserLimitPolicy::RefuseNew,
            tempfile::tempdir().unwrap(),
        ),
        (
            herald::config::UserLimitPolicy::CloseOldest,
            tempfile::tempdir().unwrap(),
        ),
    ] {
        let h = herald_with(&nats, &dir, |c| {
            c.connection_limits.max_per_user = Some(2);
            c.connection_limits.user_policy = policy;
        })
        .await;
        let token = h.token("alice");
        let (mut first, _) = WsClient::connect(h.addr, &token).await;
        let (mut second, _) = WsClient::connect(h.addr, &token).await;
        let (mut bob, _) = WsClient::connect(h.addr, &h.token("bob")).await;
        let mut third = WsClient::open(h.addr).await;
        third.send("connect", json!({"token": token})).await;
        match policy {
            herald::config::UserLimitPolicy::RefuseNew => {
                assert_eq!(third.closed().await.code, 3504);
                let r = first.call("ping", json!({})).await;
                assert!(r.get("ping").is_some(), "{r}");
            }
            herald::config::UserLimitPolicy::CloseOldest => {
                assert_eq!(first.closed().await.code, 3504);
                let r = third.call("ping", json!({})).await;
                assert!(r.get("ping").is_some(), "{r}");
            }
        }
        for c in [&mut second, &mut bob] {
            let r = c.call("ping", json!({})).await;
            assert!(r.get("ping").is_some(), "{r}");
        }
    }
}

#[tokio::test]
async fn forged_origins_are_refused_with_403() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let h = herald_with(&nats, &dir, |_| {}).await;
    let own = format!("http://{}", h.addr);
    let status = |r: Result<_, (u16, Option<String>)>| r.err().map_or(101, |e| e.0);

    // None configured: same origin, or no Origin at all.
    assert_eq!(status(upgrade(h.addr, &[]).await), 101);
    assert_eq!(
        status(upgrade(h.addr, &[("origin", own.as_str())]).await),
        101
    );
    for forged in ["https://evil.example", "null", "http://127.0.0.1:1"] {
        assert_eq!(
            status(upgrade(h.addr, &[("origin", forged)]).await),
            403,
            "{forged}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let h = herald_with(&nats, &dir, |c| {
        c.allowed_origins = vec!["https://*.example.com".into()];
    })
    .await;
    let own = format!("http://{}", h.addr);
    assert_eq!(
        status(upgrade(h.addr, &[("origin", "https://app.example.com")]).await),
        101
    );
    assert_eq!(status(upgrade(h.addr, &[]).await), 101);
    for forged in [
        "https://example.com.evil.net",
        "http://app.example.com",
        own.as_str(),
    ] {
        assert_eq!(
            status(upgrade(h.addr, &[("origin", forged)]).await),
            403,
            "{forged}"
        );
    }
}
