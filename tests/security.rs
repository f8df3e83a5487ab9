//! Attacks on a running Herald, black-box over real sockets against a real
//! nats-server: asymmetric tokens and a JWKS endpoint this test serves (key
//! rotation, the endpoint down, a flood of made-up `kid`s), algorithm
//! confusion, a subscription token used to connect, a huge `exp` (token and
//! server API `refresh`), padded and guessed API keys, the API's own
//! listener, the default namespace's client publish, NATS credentials (the
//! auto-started server's and configured ones) and what reaches error texts.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::node::{API_KEY, SECRET, TestHerald, test_config};
use common::ws::WsClient;
use common::{TestNats, eventually, nats_server_bin};
use herald::config::{Config, Secret};
use herald::roles::{self, Role};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(10);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(common::root().join("tests/fixtures/keys").join(name)).expect("key fixture")
}

fn rsa_key(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture(&format!("{name}.key"))).expect("rsa key")
}

/// An RS256 connection token for `user`, naming `kid` when given.
fn rs256(key: &EncodingKey, kid: Option<&str>, user: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    let claims = json!({"sub": user, "exp": herald::auth::now_secs() + 3600});
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

fn hs256(secret: &[u8], claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

fn jwk(name: &str, kid: &str) -> Jwk {
    let mut k = Jwk::from_encoding_key(&rsa_key(name), Algorithm::RS256).expect("jwk");
    k.common.key_id = Some(kid.to_string());
    k
}

/// The JWKS endpoint under test's control: the set it serves, whether it
/// fails (500), and how many requests it got.
#[derive(Clone, Default)]
struct JwksServer {
    set: Arc<Mutex<JwkSet>>,
    failing: Arc<Mutex<bool>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: Vec<Jwk>) -> (Self, String) {
        let server = Self::default();
        server.serve(keys);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .route("/jwks", axum::routing::get(jwks_handler))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (server, format!("http://{addr}/jwks"))
    }

    fn serve(&self, keys: Vec<Jwk>) {
        *self.set.lock().unwrap() = JwkSet { keys };
    }

    fn fail(&self, failing: bool) {
        *self.failing.lock().unwrap() = failing;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn jwks_handler(State(s): State<JwksServer>) -> axum::response::Response {
    s.fetches.fetch_add(1, Ordering::SeqCst);
    if *s.failing.lock().unwrap() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let set = s.set.lock().unwrap().clone();
    axum::Json(set).into_response()
}

/// The status of a sync HTTP read authenticated with `token`: 200 for a
/// token Herald accepts, 401 for one it refuses.
async fn sync_status(h: &TestHerald, token: &str) -> u16 {
    reqwest::Client::new()
        .get(h.url("/api/v1/channels/news/publications"))
        .bearer_auth(token)
        .send()
        .await
        .expect("sync request")
        .status()
        .as_u16()
}

async fn herald_with(
    nats: &TestNats,
    dir: &tempfile::TempDir,
    f: impl FnOnce(&mut Config),
) -> TestHerald {
    let mut config = test_config(nats, dir.path().join("data"));
    f(&mut config);
    TestHerald::start(config).await
}

#[tokio::test]
async fn jwks_keys_rotate_and_survive_the_endpoint_failing() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (jwks, url) = JwksServer::start(vec![jwk("rsa1", "k1")]).await;
    let h = herald_with(&nats, &dir, |c| {
        c.token.jwks_url = Some(url);
        c.token.jwks_refresh_interval = Duration::from_secs(3600);
        c.token.jwks_min_fetch_interval = Duration::from_millis(50);
    })
    .await;
    let (k1, k2) = (rsa_key("rsa1"), rsa_key("rsa2"));

    let t1 = rs256(&k1, Some("k1"), "alice");
    eventually("the first key set is fetched", LIMIT, || async {
        (sync_status(&h, &t1).await == 200).then_some(())
    })
    .await;
    // Also at connect, over the WebSocket.
    let (c, reply) = WsClient::connect(h.addr, &t1).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    c.close().await;
    // Signed by k1's key under another kid, or by another key under k1: no.
    assert_eq!(sync_status(&h, &rs256(&k2, Some("k1"), "alice")).await, 401);
    // HS256 with the public key as the HMAC secret (algorithm confusion).
    let confused = hs256(
        &fixture("rsa1.pub"),
        json!({"sub": "alice", "exp": herald::auth::now_secs() + 60}),
    );
    assert_eq!(sync_status(&h, &confused).await, 401);

    // Rotation: k2 appears, k1 is removed. An unknown kid triggers a fetch.
    jwks.serve(vec![jwk("rsa2", "k2")]);
    let t2 = rs256(&k2, Some("k2"), "alice");
    eventually("the new kid is fetched on first sight", LIMIT, || async {
        (sync_status(&h, &t2).await == 200).then_some(())
    })
    .await;
    assert_eq!(
        sync_status(&h, &t1).await,
        401,
        "the removed kid is refused"
    );

    // The endpoint fails: the last good set stays in use.
    jwks.fail(true);
    let before = jwks.fetches();
    let unknown = rs256(&k2, Some("k3"), "alice");
    assert_eq!(sync_status(&h, &unknown).await, 401);
    eventually("a fetch was attempted", LIMIT, || async {
        (jwks.fetches() > before).then_some(())
    })
    .await;
    assert_eq!(sync_status(&h, &t2).await, 200, "last good set kept");
    let (c, _) = WsClient::connect(h.addr, &t2).await;
    c.close().await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_one_fetch() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (jwks, url) = JwksServer::start(vec![jwk("rsa1", "k1")]).await;
    let h = herald_with(&nats, &dir, |c| {
        c.token.jwks_url = Some(url);
        c.token.jwks_refresh_interval = Duration::from_secs(3600);
        c.token.jwks_min_fetch_interval = Duration::from_secs(3600);
    })
    .await;
    let k1 = rsa_key("rsa1");
    let good = rs256(&k1, Some("k1"), "alice");
    eventually("the key set is fetched", LIMIT, || async {
        (sync_status(&h, &good).await == 200).then_some(())
    })
    .await;
    // 1 (the start-up fetch), or 2 if the first request arrived before that
    // fetch landed (its kid was unknown then, which spent the one triggered
    // fetch the interval allows).
    assert!(jwks.fetches() <= 2, "{}", jwks.fetches());

    for i in 0..200 {
        let t = rs256(&k1, Some(&format!("bogus-{i}")), "alice");
        assert_eq!(sync_status(&h, &t).await, 401);
    }
    eventually("unknown kids caused one fetch", LIMIT, || async {
        (jwks.fetches() == 2).then_some(())
    })
    .await;
    for i in 0..100 {
        let t = rs256(&k1, Some(&format!("more-{i}")), "alice");
        assert_eq!(sync_status(&h, &t).await, 401);
    }
    assert_eq!(jwks.fetches(), 2, "no more fetches within the interval");
    assert_eq!(sync_status(&h, &good).await, 200);
}

#[tokio::test]
async fn configured_public_keys_verify_and_confusion_is_refused() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = common::root().join("tests/fixtures/keys");
    let h = herald_with(&nats, &dir, |c| {
        c.token.public_keys = vec![keys.join("rsa1.pub"), keys.join("ed25519.pub")];
        c.token.audience = Some("herald".into());
    })
    .await;
    let exp = herald::auth::now_secs() + 600;
    let ed = EncodingKey::from_ed_pem(&fixture("ed25519.key")).unwrap();
    let sign = |alg, key: &EncodingKey, claims: Value| {
        jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
    };
    let ok = sign(
        Algorithm::EdDSA,
        &ed,
        json!({"sub": "a", "exp": exp, "aud": "herald"}),
    );
    assert_eq!(sync_status(&h, &ok).await, 200);
    let (c, _) = WsClient::connect(h.addr, &ok).await;
    c.close().await;
    let wrong_aud = sign(
        Algorithm::EdDSA,
        &ed,
        json!({"sub": "a", "exp": exp, "aud": "x"}),
    );
    assert_eq!(sync_status(&h, &wrong_aud).await, 401);
    let rsa = sign(
        Algorithm::RS512,
        &rsa_key("rsa1"),
        json!({"sub": "a", "exp": exp, "aud": "herald"}),
    );
    assert_eq!(sync_status(&h, &rsa).await, 200);
    // The RSA public key as an HMAC secret, PEM as configured.
    let confused = hs256(
        &fixture("rsa1.pub"),
        json!({"sub": "a", "exp": exp, "aud": "herald"}),
    );
    assert_eq!(sync_status(&h, &confused).await, 401);
    let mut c = WsClient::open(h.addr).await;
    c.send("connect", json!({"token": confused})).await;
    assert_eq!(c.closed().await.code, 3500);

    // Subscription tokens are verified the same way (a private channel).
    let user = sign(
        Algorithm::EdDSA,
        &ed,
        json!({"sub": "a", "exp": exp, "aud": "herald"}),
    );
    let sub = sign(
        Algorithm::EdDSA,
        &ed,
        json!({"sub": "a", "channel": "$room", "exp": exp, "aud": "herald"}),
    );
    let read = |sub_token: String| {
        let (url, user) = (h.url("/api/v1/channels/%24room/publications"), user.clone());
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(user)
                .header("x-herald-subscription-token", sub_token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(read(sub.clone()).await, 200);
    let forged = hs256(
        &fixture("ed25519.pub"),
        json!({"sub": "a", "channel": "$room", "exp": exp, "aud": "herald"}),
    );
    assert_eq!(read(forged).await, 403);
    let (mut c, _) = WsClient::connect(h.addr, &user).await;
    let r = c
        .call("subscribe", json!({"channel": "$room", "token": sub}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
}

#[tokio::test]
async fn a_subscription_token_does_not_connect() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let h = herald_with(&nats, &dir, |_| {}).await;
    let sub_token = h.sub_token("alice", "$private");
    let mut c = WsClient::open(h.addr).await;
    c.send("connect", json!({"token": sub_token})).await;
    assert_eq!(c.closed().await.code, 3500);
    assert_eq!(sync_status(&h, &sub_token).await, 401);
    assert_eq!(sync_status(&h, &h.token("alice")).await, 200);
}

#[tokio::test]
async fn a_huge_exp_does_not_kill_the_session() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let h = herald_with(&nats, &dir, |_| {}).await;

    // A signed token with exp = u64::MAX.
    let token = hs256(SECRET.as_bytes(), json!({"sub": "alice", "exp": u64::MAX}));
    let (mut c, reply) = WsClient::connect(h.addr, &token).await;
    assert_eq!(reply["connect"]["expires"], true, "{reply}");
    let r = c.call("ping", json!({})).await;
    assert!(r.get("ping").is_some(), "{r}");

    // The server API's refresh with expire_at = u64::MAX, then a control
    // message after it: the session handled both.
    let (mut bob, _) = WsClient::connect(h.addr, &h.token("bob")).await;
    for body in [
        json!({"user": "bob", "expire_at": u64::MAX}),
        json!({"user": "alice", "expire_at": u64::MAX}),
    ] {
        let r = h.api("refresh", body).await;
        assert_eq!(r, json!({"result": {}}));
    }
    let r = h
        .api("subscribe", json!({"user": "bob", "channel": "news"}))
        .await;
    assert_eq!(r, json!({"result": {}}));
    // The refresh push (the new expiry, as Centrifugo), then the subscribe.
    let p = bob.push().await;
    assert_eq!(p["refresh"]["expires"], true, "{p}");
    let p = bob.push().await;
    assert_eq!(p["channel"], "news", "{p}");
    let r = bob.call("ping", json!({})).await;
    assert!(r.get("ping").is_some(), "{r}");
    let r = c.call("ping", json!({})).await;
    assert!(r.get("ping").is_some(), "{r}");
}

#[tokio::test]
async fn clients_publish_only_where_a_namespace_allows_it() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let h = herald_with(&nats, &dir, |c| c.channels = Config::defaults().channels).await;
    let (mut c, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    let r = c
        .call("publish", json!({"channel": "news", "data": {"x": 1}}))
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    let r = c
        .call(
            "publish",
            json!({"channel": "dm:#alice,bob", "data": {"x": 1}}),
        )
        .await;
    assert_eq!(r["publish"]["offset"], 1, "{r}");
    // The backend still publishes into news.
    let r = h
        .api("publish", json!({"channel": "news", "data": {"x": 2}}))
        .await;
    assert_eq!(r["result"]["offset"], 1, "{r}");
}

async fn api_status(
    addr: SocketAddr,
    key: &str,
    from: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut client = reqwest::Client::builder();
    if let Some(ip) = from {
        client = client.local_address(ip.parse::<std::net::IpAddr>().unwrap());
    }
    let resp = client
        .build()
        .unwrap()
        .post(format!("http://{addr}/api/info"))
        .header("X-API-Key", key)
        .json(&json!({}))
        .send()
        .await
        .expect("api request");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn api_keys_are_trimmed_and_guessing_is_rate_limited() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let h = herald_with(&nats, &dir, |c| {
        // A key read from a file with its trailing newline.
        c.api_key = Some(Secret::new(format!("{API_KEY}\n")));
        c.api_key_failures_per_minute = 3;
    })
    .await;
    let (status, _, body) = api_status(h.addr, API_KEY, None).await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..3 {
        let (status, _, body) = api_status(h.addr, "guess", None).await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, retry, body) = api_status(h.addr, "guess", None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], 111, "{body}");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!(retry >= 1);
    // Blocked before the key is looked at: the right key learns nothing.
    let (status, _, _) = api_status(h.addr, API_KEY, None).await;
    assert_eq!(status, 429);
    // Another address has its own budget.
    let (status, _, body) = api_status(h.addr, API_KEY, Some("127.0.0.2")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_api_can_have_its_own_listener() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let h = herald_with(&nats, &dir, |c| {
        c.api_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let api_addr = h.running.as_ref().unwrap().api_addr.expect("api listener");
    assert_ne!(api_addr, h.addr);
    let (status, _, body) = api_status(api_addr, API_KEY, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = api_status(h.addr, API_KEY, None).await;
    assert_eq!(status, 404, "the public listener serves no API");
}

#[tokio::test]
async fn a_short_hmac_secret_is_refused() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats, dir.path().join("data"));
    config.token_hmac_secret = Some(Secret::new("a"));
    let e = roles::start(Role::Serve, config)
        .await
        .err()
        .expect("refused");
    assert!(format!("{e:#}").contains("at least 32 bytes"), "{e:#}");
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn the_auto_started_nats_server_requires_generated_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = data.clone();
    config.nats.url = "nats://127.0.0.1:1".into();
    config.nats.server_bin = nats_server_bin();
    config.shutdown_drain = Duration::from_millis(50);
    let running = roles::start(Role::Serve, config)
        .await
        .expect("serve starts");
    let url = running
        .notes
        .started_nats
        .clone()
        .expect("a child nats-server");

    assert!(
        async_nats::connect(&url).await.is_err(),
        "the child accepts no anonymous client"
    );
    let password = std::fs::read_to_string(data.join("nats_password")).unwrap();
    let client = async_nats::ConnectOptions::with_user_and_password("herald".into(), password)
        .connect(&url)
        .await
        .expect("the generated credentials work");
    drop(client);

    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("nats_password")), 0o600);
    assert_eq!(mode(&data.join("token_hmac_secret")), 0o600);
    assert_eq!(mode(&data.join("nats/auth.conf")), 0o600);
    running.stop().await;
}

#[tokio::test]
async fn configured_nats_credentials_are_used_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        "authorization {\n  user: edge\n  password: \"s3cret-pass\"\n}\n",
    )
    .unwrap();
    let server = herald::bus::server::NatsServer::start_with_config(
        &nats_server_bin(),
        &dir.path().join("nats"),
        &conf,
    )
    .await
    .expect("nats-server with authorization");
    let base = {
        let mut c = Config::defaults();
        c.listen = "127.0.0.1:0".parse().unwrap();
        c.data_dir = dir.path().join("data");
        c.nats.autostart = false;
        c.token_hmac_secret = Some(Secret::new(SECRET));
        c
    };

    // Wrong password in the URL: refused, and the error does not show it.
    let mut config = base.clone();
    config.nats.url = server.url.replace("nats://", "nats://edge:hunter2-wrong@");
    let e = roles::start(Role::Edge, config)
        .await
        .err()
        .expect("refused");
    let text = format!("{e:#}");
    assert!(!text.contains("hunter2-wrong"), "{text}");
    assert!(text.contains("***@"), "{text}");

    // No credentials: refused.
    let mut config = base.clone();
    config.nats.url = server.url.clone();
    assert!(roles::start(Role::Edge, config).await.is_err());

    // The options.
    let mut config = base;
    config.nats.url = server.url.clone();
    config.nats.auth.user = Some("edge".into());
    config.nats.auth.password = Some(Secret::new("s3cret-pass"));
    let running = roles::start(Role::Edge, config)
        .await
        .expect("edge connects");
    assert!(!running.nats_url.is_empty());
    running.stop().await;
}

#[tokio::test]
async fn a_nats_token_is_passed_on() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, "authorization {\n  token: \"t0ken-for-herald\"\n}\n").unwrap();
    let server = herald::bus::server::NatsServer::start_with_config(
        &nats_server_bin(),
        &dir.path().join("nats"),
        &conf,
    )
    .await
    .expect("nats-server with a token");
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.nats.autostart = false;
    config.nats.url = server.url.clone();
    config.token_hmac_secret = Some(Secret::new(SECRET));
    assert!(roles::start(Role::Edge, config.clone()).await.is_err());
    config.nats.auth.token = Some(Secret::new("t0ken-for-herald"));
    let running = roles::start(Role::Edge, config)
        .await
        .expect("edge connects");
    running.stop().await;
}

/// The NATS URL's credentials never reach stderr (logs and the error text),
/// as the `herald` binary prints them.
#[test]
fn nats_credentials_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    for (name, _) in std::env::vars() {
        if name.starts_with("HERALD_") {
            cmd.env_remove(name);
        }
    }
    let out = cmd
        .arg("edge")
        .env(
            "HERALD_NATS_URL",
            "nats://herald:hunter2-in-url@127.0.0.1:1",
        )
        .env("HERALD_TOKEN_HMAC_SECRET", SECRET)
        .env("HERALD_DATA_DIR", dir.path())
        .env("HERALD_LOG", "debug")
        .output()
        .expect("run herald");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("***@127.0.0.1:1"), "{err}");
    assert!(!err.contains("hunter2-in-url"), "{err}");
}
