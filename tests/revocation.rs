//! Token revocation across two edges (a `serve` and an `edge` sharing a real
//! nats-server): `revoke_token` and `invalidate_user_tokens` sent to one
//! edge's server API close the live connections holding those tokens on
//! both edges with 3500 (terminal), and the tokens no longer connect,
//! refresh or subscribe anywhere; other tokens are untouched. The entries
//! are in the replicated KV bucket, so an edge started afterwards enforces
//! them too.

mod common;

use std::time::{Duration, Instant};

use common::node::{SECRET, TestHerald, test_config};
use common::ws::WsClient;
use common::{TestNats, eventually};
use herald::roles::{self, Role};
use serde_json::{Value, json};

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn api(addr: std::net::SocketAddr, method: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("http://{addr}/api/{method}"))
        .header("X-API-Key", common::node::API_KEY)
        .json(&body)
        .send()
        .await
        .expect("api request")
        .json()
        .await
        .expect("api json")
}

fn now() -> u64 {
    herald::auth::now_secs()
}

#[tokio::test]
async fn revoked_tokens_are_closed_and_refused_on_every_edge() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&nats, dir.path().join("data"));
    let serve = TestHerald::start(config.clone()).await;
    let mut edge_config = config.clone();
    edge_config.data_dir = dir.path().join("edge");
    let edge = roles::start(Role::Edge, edge_config.clone())
        .await
        .expect("edge starts");
    let exp = now() + 3600;

    // One token (jti t1) connected on both edges, another token of the same
    // user (jti t2) and one of another user.
    let t1 = hs256(json!({"sub": "alice", "jti": "t1", "iat": now(), "exp": exp}));
    let t2 = hs256(json!({"sub": "alice", "jti": "t2", "iat": now(), "exp": exp}));
    let (mut a_serve, _) = WsClient::connect(serve.addr, &t1).await;
    let (mut a_edge, _) = WsClient::connect(edge.addr, &t1).await;
    let (mut a2, _) = WsClient::connect(edge.addr, &t2).await;
    let (mut bob, _) = WsClient::connect(edge.addr, &serve.token("bob")).await;

    let sent = Instant::now();
    let r = serve
        .api("revoke_token", json!({"jti": "t1", "expire_at": exp}))
        .await;
    assert_eq!(r, json!({"result": {}}));
    for c in [&mut a_serve, &mut a_edge] {
        assert_eq!(c.closed().await.code, 3500);
    }
    println!(
        "revoke_token closed both connections within {:?}",
        sent.elapsed()
    );
    for c in [&mut a2, &mut bob] {
        let r = c.call("ping", json!({})).await;
        assert!(r.get("ping").is_some(), "{r}");
    }
    // The revoked token no longer connects on either edge, nor refreshes.
    for addr in [serve.addr, edge.addr] {
        let mut c = WsClient::open(addr).await;
        c.send("connect", json!({"token": t1})).await;
        assert_eq!(c.closed().await.code, 3500);
    }
    a2.send("refresh", json!({"token": t1})).await;
    assert_eq!(a2.closed().await.code, 3500);

    // A revoked subscription token is refused (103).
    let sub = hs256(json!({"sub": "bob", "channel": "$secret", "jti": "s1", "exp": exp}));
    let r = serve
        .api("revoke_token", json!({"jti": "s1", "expire_at": exp}))
        .await;
    assert_eq!(r, json!({"result": {}}));
    let r = eventually(
        "the subscription token is refused",
        Duration::from_secs(10),
        || {
            let sub = sub.clone();
            let addr = edge.addr;
            let bob = serve.token("bob");
            async move {
                let (mut c, _) = WsClient::connect(addr, &bob).await;
                let r = c
                    .call("subscribe", json!({"channel": "$secret", "token": sub}))
                    .await;
                (r["error"]["code"] == 103).then_some(r)
            }
        },
    )
    .await;
    assert_eq!(r["error"]["code"], 103);
    let other = hs256(json!({"sub": "bob", "channel": "$secret", "jti": "s2", "exp": exp}));
    let r = bob
        .call("subscribe", json!({"channel": "$secret", "token": other}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");

    // invalidate_user_tokens: every token of carol issued before now.
    let old = hs256(json!({"sub": "carol", "iat": now() - 10, "exp": exp}));
    let (mut c_serve, _) = WsClient::connect(serve.addr, &old).await;
    let (mut c_edge, _) = WsClient::connect(edge.addr, &old).await;
    let sent = Instant::now();
    // Sent to the other edge's API this time.
    let r = api(
        edge.addr,
        "invalidate_user_tokens",
        json!({"user": "carol", "issued_before": now() - 1, "expire_at": exp}),
    )
    .await;
    assert_eq!(r, json!({"result": {}}));
    for c in [&mut c_serve, &mut c_edge] {
        assert_eq!(c.closed().await.code, 3500);
    }
    println!(
        "invalidate_user_tokens closed both connections within {:?}",
        sent.elapsed()
    );
    // A token issued after it connects.
    let fresh = hs256(json!({"sub": "carol", "iat": now(), "exp": exp}));
    let (mut c, _) = WsClient::connect(edge.addr, &fresh).await;
    let r = c.call("ping", json!({})).await;
    assert!(r.get("ping").is_some(), "{r}");

    // Bad requests.
    let r = serve.api("revoke_token", json!({"jti": "x"})).await;
    assert_eq!(r["error"]["code"], 107, "{r}");
    let r = serve
        .api("invalidate_user_tokens", json!({"expire_at": exp}))
        .await;
    assert_eq!(r["error"]["code"], 107, "{r}");

    // Durable: an edge started now enforces what was stored before.
    let mut late_config = edge_config.clone();
    late_config.data_dir = dir.path().join("late");
    let late = roles::start(Role::Edge, late_config)
        .await
        .expect("late edge starts");
    eventually(
        "the late edge refuses t1",
        Duration::from_secs(10),
        || async {
            let mut c = WsClient::open(late.addr).await;
            c.send("connect", json!({"token": t1})).await;
            (c.closed().await.code == 3500).then_some(())
        },
    )
    .await;
}

/// A sync HTTP page request: status, JSON body and `WWW-Authenticate`.
async fn page(
    addr: std::net::SocketAddr,
    channel: &str,
    token: &str,
    sub_token: Option<&str>,
) -> (u16, Value, Option<String>) {
    let channel =
        percent_encoding::utf8_percent_encode(channel, percent_encoding::NON_ALPHANUMERIC);
    let mut req = reqwest::Client::new()
        .get(format!(
            "http://{addr}/api/v1/channels/{channel}/publications"
        ))
        .bearer_auth(token);
    if let Some(s) = sub_token {
        req = req.header("X-Herald-Subscription-Token", s);
    }
    let resp = req.send().await.expect("sync request");
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (status, resp.json().await.expect("sync json"), www)
}

/// The sync HTTP API refuses tokens revoked by `revoke_token` and
/// `invalidate_user_tokens` exactly as it refuses invalid ones: connection
/// tokens 401 "invalid token" (with `WWW-Authenticate: Bearer`), subscription
/// tokens 403 "invalid subscription token". Other tokens still read.
#[tokio::test]
async fn revoked_tokens_are_refused_by_the_sync_http_api() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let serve = TestHerald::start(test_config(&nats, dir.path().join("data"))).await;
    let addr = serve.addr;
    let exp = now() + 3600;
    let invalid = page(addr, "news", "not.a.token", None).await;
    assert_eq!(invalid.0, 401, "{invalid:?}");
    assert_eq!(
        invalid.1,
        json!({"error": {"code": 401, "message": "invalid token"}})
    );

    let h1 = hs256(json!({"sub": "alice", "jti": "h1", "iat": now(), "exp": exp}));
    let h2 = hs256(json!({"sub": "alice", "jti": "h2", "iat": now(), "exp": exp}));
    assert_eq!(page(addr, "news", &h1, None).await.0, 200);
    let r = serve
        .api("revoke_token", json!({"jti": "h1", "expire_at": exp}))
        .await;
    assert_eq!(r, json!({"result": {}}));
    let refused = eventually("h1 is refused", Duration::from_secs(10), || {
        let h1 = h1.clone();
        async move {
            let r = page(addr, "news", &h1, None).await;
            (r.0 != 200).then_some(r)
        }
    })
    .await;
    assert_eq!(
        refused, invalid,
        "a revoked token is answered as an invalid one"
    );
    assert_eq!(refused.2.as_deref(), Some("Bearer"));
    assert_eq!(page(addr, "news", &h2, None).await.0, 200, "h2 not revoked");

    // invalidate_user_tokens: carol's token issued before, not the one after.
    let old = hs256(json!({"sub": "carol", "iat": now() - 10, "exp": exp}));
    assert_eq!(page(addr, "news", &old, None).await.0, 200);
    let r = serve
        .api(
            "invalidate_user_tokens",
            json!({"user": "carol", "issued_before": now() - 1, "expire_at": exp}),
        )
        .await;
    assert_eq!(r, json!({"result": {}}));
    let refused = eventually(
        "carol's old token is refused",
        Duration::from_secs(10),
        || {
            let old = old.clone();
            async move {
                let r = page(addr, "news", &old, None).await;
                (r.0 != 200).then_some(r)
            }
        },
    )
    .await;
    assert_eq!(refused, invalid);
    let fresh = hs256(json!({"sub": "carol", "iat": now() + 1, "exp": exp}));
    assert_eq!(page(addr, "news", &fresh, None).await.0, 200);

    // A revoked subscription token for a private channel.
    let bob = serve.token("bob");
    let bad_sub = page(addr, "$secret", &bob, Some("not.a.token")).await;
    assert_eq!(bad_sub.0, 403, "{bad_sub:?}");
    let s1 = hs256(json!({"sub": "bob", "channel": "$secret", "jti": "hs1", "exp": exp}));
    let s2 = hs256(json!({"sub": "bob", "channel": "$secret", "jti": "hs2", "exp": exp}));
    assert_eq!(page(addr, "$secret", &bob, Some(&s1)).await.0, 200);
    let r = serve
        .api("revoke_token", json!({"jti": "hs1", "expire_at": exp}))
        .await;
    assert_eq!(r, json!({"result": {}}));
    let refused = eventually("hs1 is refused", Duration::from_secs(10), || {
        let (bob, s1) = (bob.clone(), s1.clone());
        async move {
            let r = page(addr, "$secret", &bob, Some(&s1)).await;
            (r.0 != 200).then_some(r)
        }
    })
    .await;
    assert_eq!(
        refused, bad_sub,
        "a revoked subscription token is answered as an invalid one"
    );
    assert_eq!(page(addr, "$secret", &bob, Some(&s2)).await.0, 200);
}
