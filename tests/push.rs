//! Offline push notifications black-box (issue 12, section 3): `herald
//! serve` on a real nats-server, the server API over HTTP, clients as real
//! WebSockets, and the three providers played by one local server this test
//! runs, following each provider's documented contract:
//!
//! - FCM: `POST /token` (OAuth2 JWT-bearer grant; the RS256 assertion is
//!   verified against the service account's public key, its `iss`, `aud`
//!   and `scope` checked) and `POST /v1/projects/<id>/messages:send` (the
//!   bearer token it issued, the `message` body);
//! - APNs: `POST /3/device/<token>` over HTTP/2 (h2c), the ES256 provider
//!   token verified against the key's public key with its `kid` and `iss`,
//!   and the `apns-*` headers;
//! - Web Push: `POST /wp/<id>`, the VAPID JWT verified with the key in
//!   `k=` and its `aud`, and the `aes128gcm` body decrypted with the
//!   subscription's private key (a P-256 key and auth secret made here).
//!
//! Tokens starting with `dead` (FCM, APNs) and the Web Push id `gone` are
//! answered as invalid; `flaky` tokens fail with 503 a set number of times.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::TestNats;
use common::follower::token;
use common::process::{HeraldProcess, Spec};
use common::ws::WsClient;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, Version};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const LIMIT: Duration = Duration::from_secs(30);
const PROJECT: &str = "herald-test";
const KEY_ID: &str = "KEYID12345";
const TEAM_ID: &str = "TEAMID6789";
const TOPIC: &str = "com.example.chat";

fn fixture(name: &str) -> PathBuf {
    common::root().join("tests/fixtures/keys").join(name)
}

/// One request a provider accepted or refused, as it understood it.
#[derive(Debug, Clone)]
struct Captured {
    provider: &'static str,
    /// The device token (FCM, APNs) or Web Push id.
    target: String,
    status: u16,
    headers: HashMap<String, String>,
    /// FCM: the `message`; APNs: the payload; Web Push: the decrypted JSON.
    body: Value,
}

/// A Web Push subscription's private half.
struct Subscriber {
    secret: p256::SecretKey,
    auth: [u8; 16],
}

#[derive(Default)]
struct State {
    captured: Vec<Captured>,
    token_exchanges: usize,
    /// Remaining 503 answers per flaky target.
    flaky: HashMap<String, usize>,
    subscribers: HashMap<String, Subscriber>,
    /// Every problem a provider found in a request (must stay empty).
    problems: Vec<String>,
}

#[derive(Clone)]
struct Providers {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(16) {
        let id = uuid::Uuid::new_v4();
        chunk.copy_from_slice(&id.as_bytes()[..chunk.len()]);
    }
    out
}

impl Providers {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let p = Self {
            addr,
            state: Arc::default(),
        };
        let server = p.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, std::convert::Infallible>(server.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
                });
            }
        });
        p
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn captured(&self, provider: &str) -> Vec<Captured> {
        self.state()
            .captured
            .iter()
            .filter(|c| c.provider == provider)
            .cloned()
            .collect()
    }

    /// A new Web Push subscription at this server: its JSON for
    /// `device_register`.
    fn subscribe(&self, id: &str) -> Value {
        let secret = p256::SecretKey::from_slice(&random_bytes::<32>()).expect("a P-256 key");
        let auth = random_bytes::<16>();
        let public = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
            &secret.public_key(),
            false,
        );
        let sub = json!({
            "endpoint": format!("{}/wp/{id}", self.url()),
            "keys": {"p256dh": URL_SAFE_NO_PAD.encode(public.as_bytes()), "auth": URL_SAFE_NO_PAD.encode(auth)},
        });
        self.state()
            .subscribers
            .insert(id.to_string(), Subscriber { secret, auth });
        sub
    }

    fn problem(&self, p: String) {
        self.state().problems.push(p);
    }

    /// A 503 when `target` is flaky and still has failures to give.
    fn flaky_failure(&self, target: &str) -> bool {
        let mut s = self.state();
        match s.flaky.get_mut(target) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let version = req.version();
        let headers: HashMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let (status, answer) = if path == "/token" {
            self.token(&body)
        } else if let Some(rest) = path.strip_prefix(&format!("/v1/projects/{PROJECT}/")) {
            if rest == "messages:send" {
                self.fcm(&headers, &body)
            } else {
                (404, json!({}))
            }
        } else if let Some(device) = path.strip_prefix("/3/device/") {
            if version != Version::HTTP_2 {
                self.problem(format!("APNs request over {version:?}, not HTTP/2"));
            }
            self.apns(device, &headers, &body)
        } else if let Some(id) = path.strip_prefix("/wp/") {
            self.webpush(id, &headers, &body)
        } else {
            (404, json!({}))
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(answer.to_string())))
            .unwrap()
    }

    fn token(&self, body: &[u8]) -> (u16, Value) {
        let form: HashMap<String, String> = String::from_utf8_lossy(body)
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_string(),
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .to_string(),
                )
            })
            .collect();
        if form.get("grant_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        {
            self.problem(format!("token grant_type {:?}", form.get("grant_type")));
            return (400, json!({"error": "unsupported_grant_type"}));
        }
        let key = DecodingKey::from_rsa_pem(&std::fs::read(fixture("rsa1.pub")).unwrap()).unwrap();
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[format!("{}/token", self.url())]);
        v.set_issuer(&["push@herald-test.iam.gserviceaccount.com"]);
        v.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
        match jsonwebtoken::decode::<Value>(
            form.get("assertion").map_or("", String::as_str),
            &key,
            &v,
        ) {
            Ok(t) if t.claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging" => {
                let mut s = self.state();
                s.token_exchanges += 1;
                let n = s.token_exchanges;
                (
                    200,
                    json!({"access_token": format!("at-{n}"), "expires_in": 3599, "token_type": "Bearer"}),
                )
            }
            Ok(t) => {
                self.problem(format!("assertion scope {}", t.claims["scope"]));
                (400, json!({"error": "invalid_scope"}))
            }
            Err(e) => {
                self.problem(format!("assertion refused: {e}"));
                (400, json!({"error": "invalid_grant"}))
            }
        }
    }

    fn record(
        &self,
        provider: &'static str,
        target: &str,
        status: u16,
        headers: &HashMap<String, String>,
        body: Value,
    ) {
        self.state().captured.push(Captured {
            provider,
            target: target.to_string(),
            status,
            headers: headers.clone(),
            body,
        });
    }

    fn fcm(&self, headers: &HashMap<String, String>, body: &[u8]) -> (u16, Value) {
        let auth = headers.get("authorization").cloned().unwrap_or_default();
        if !auth.starts_with("Bearer at-") {
            self.problem(format!("FCM authorization {auth:?}"));
            return (
                401,
                json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
            );
        }
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let message = body["message"].clone();
        let target = message["token"].as_str().unwrap_or_default().to_string();
        let (status, answer) = if target.starts_with("dead") {
            (
                404,
                json!({"error": {"code": 404, "status": "NOT_FOUND", "message": "Requested entity was not found.",
                    "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}),
            )
        } else if self.flaky_failure(&target) {
            (
                503,
                json!({"error": {"code": 503, "status": "UNAVAILABLE"}}),
            )
        } else {
            (
                200,
                json!({"name": format!("projects/{PROJECT}/messages/{}", uuid::Uuid::new_v4())}),
            )
        };
        self.record("fcm", &target, status, headers, message);
        (status, answer)
    }

    fn apns(&self, device: &str, headers: &HashMap<String, String>, body: &[u8]) -> (u16, Value) {
        let auth = headers.get("authorization").cloned().unwrap_or_default();
        let jwt = auth.strip_prefix("bearer ").unwrap_or_default();
        let key = DecodingKey::from_ec_pem(&std::fs::read(fixture("ec256.pub")).unwrap()).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[TEAM_ID]);
        v.set_required_spec_claims(&["iss"]);
        v.validate_exp = false;
        let header = jsonwebtoken::decode_header(jwt);
        let verified = jsonwebtoken::decode::<Value>(jwt, &key, &v);
        match (&header, &verified) {
            (Ok(h), Ok(t)) if h.kid.as_deref() == Some(KEY_ID) && t.claims["iat"].is_u64() => {}
            _ => {
                self.problem(format!(
                    "APNs provider token refused: {header:?} {verified:?}"
                ));
                return (403, json!({"reason": "InvalidProviderToken"}));
            }
        }
        let payload: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (status, answer) = if device.starts_with("dead") {
            (410, json!({"reason": "Unregistered", "timestamp": 0}))
        } else if self.flaky_failure(device) {
            (503, json!({"reason": "ServiceUnavailable"}))
        } else {
            (200, json!({}))
        };
        self.record("apns", device, status, headers, payload);
        (status, answer)
    }

    fn webpush(&self, id: &str, headers: &HashMap<String, String>, body: &[u8]) -> (u16, Value) {
        // Authorization: vapid t=<jwt>, k=<public key>
        let auth = headers.get("authorization").cloned().unwrap_or_default();
        let fields: HashMap<&str, &str> = auth
            .strip_prefix("vapid ")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| p.trim().split_once('='))
            .collect();
        let k = URL_SAFE_NO_PAD
            .decode(fields.get("k").unwrap_or(&""))
            .unwrap_or_default();
        let verified = (k.len() == 65).then(|| {
            let x = URL_SAFE_NO_PAD.encode(&k[1..33]);
            let y = URL_SAFE_NO_PAD.encode(&k[33..]);
            let key = DecodingKey::from_ec_components(&x, &y).unwrap();
            let mut v = Validation::new(Algorithm::ES256);
            v.set_audience(&[self.url()]);
            v.set_required_spec_claims(&["exp", "aud", "sub"]);
            jsonwebtoken::decode::<Value>(fields.get("t").unwrap_or(&""), &key, &v)
        });
        if !matches!(&verified, Some(Ok(t)) if t.claims["sub"] == "mailto:ops@example.com") {
            self.problem(format!("VAPID refused: {auth:?} {verified:?}"));
            return (401, json!({}));
        }
        if headers.get("content-encoding").map(String::as_str) != Some("aes128gcm") {
            self.problem("Web Push without aes128gcm".into());
        }
        let decrypted = {
            let s = self.state();
            s.subscribers.get(id).map(|sub| {
                let auth = web_push_native::Auth::clone_from_slice(&sub.auth);
                web_push_native::decrypt(body.to_vec(), &sub.secret, &auth)
            })
        };
        let payload = match decrypted {
            Some(Ok(plain)) => serde_json::from_slice(&plain).unwrap_or(Value::Null),
            other => {
                self.problem(format!(
                    "Web Push body not decrypted: {:?}",
                    other.map(|r| r.map(|_| ()))
                ));
                Value::Null
            }
        };
        let status = if id == "gone" {
            410
        } else if self.flaky_failure(id) {
            503
        } else {
            201
        };
        self.record("webpush", id, status, headers, payload);
        (status, json!({}))
    }
}

/// `herald serve` with every provider pointed at `providers`.
fn serve_spec(nats: &TestNats, dir: &tempfile::TempDir, providers: &Providers) -> Spec {
    let account = dir.path().join("service-account.json");
    if !account.exists() {
        let key = std::fs::read_to_string(fixture("rsa1.key")).unwrap();
        let json = json!({
            "type": "service_account",
            "project_id": PROJECT,
            "client_email": "push@herald-test.iam.gserviceaccount.com",
            "private_key": key,
            "token_uri": format!("{}/token", providers.url()),
        });
        std::fs::write(&account, json.to_string()).unwrap();
    }
    Spec::serve("serve", nats.url(), &dir.path().join("data"))
        .set("push_fcm_credentials_file", account.display())
        .set("push_fcm_endpoint", providers.url())
        .set("push_apns_key_file", fixture("ec256.key").display())
        .set("push_apns_key_id", KEY_ID)
        .set("push_apns_team_id", TEAM_ID)
        .set("push_apns_topic", TOPIC)
        .set("push_apns_endpoint", providers.url())
        .set(
            "push_webpush_vapid_key_file",
            fixture("ec256.key").display(),
        )
        .set("push_webpush_vapid_subject", "mailto:ops@example.com")
        // The providers' stand-in listens on plain http on 127.0.0.1.
        .set("push_webpush_allowed_hosts", "127.0.0.1")
        .set("push_webpush_allow_http", true)
        .set("push_retry_backoff", "200ms")
        .set("push_retry_max_backoff", "1s")
        .set("push_timeout", "3s")
}

async fn api_ok(p: &HeraldProcess, method: &str, body: Value) -> Value {
    let r = p.api().call(method, &body).await.expect("api call");
    assert!(r.get("error").is_none(), "{method} {body} -> {r}");
    r["result"].clone()
}

async fn api_error(p: &HeraldProcess, method: &str, body: Value) -> u64 {
    let r = p.api().call(method, &body).await.expect("api call");
    r["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("{method} {body}: no error in {r}"))
}

async fn devices(p: &HeraldProcess, user: &str) -> Vec<Value> {
    api_ok(p, "device_list", json!({"user": user})).await["devices"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_api_rpc_bounds_and_bad_input() {
    let _turn = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let providers = Providers::start().await;
    let serve = HeraldProcess::start(
        serve_spec(&nats, &dir, &providers).set("push_max_devices_per_user", 3),
    )
    .await;

    // Bad input: 107 (106 for too many topics), and nothing stored.
    let sub = providers.subscribe("a");
    // A well-formed subscription whose endpoint names a host that
    // push_webpush_allowed_hosts does not list (here: the same server by
    // another name) is refused, and never requested.
    let mut elsewhere = providers.subscribe("elsewhere");
    let endpoint = elsewhere["endpoint"]
        .as_str()
        .unwrap()
        .replace("127.0.0.1", "localhost");
    elsewhere["endpoint"] = json!(endpoint);
    for (body, code) in [
        (
            json!({"user": "alice", "provider": "webpush", "token": elsewhere}),
            107,
        ),
        (
            json!({"user": "alice", "provider": "gcm", "token": "x"}),
            107,
        ),
        (
            json!({"user": "alice", "provider": "fcm", "token": ""}),
            107,
        ),
        (
            json!({"user": "alice", "provider": "apns", "token": "zz-not-hex-zz-zz"}),
            107,
        ),
        (json!({"user": "", "provider": "fcm", "token": "t"}), 107),
        (
            json!({"user": "alice", "provider": "webpush", "token": {"endpoint": "https://x/", "keys": {"p256dh": "AAAA", "auth": "AAAA"}}}),
            107,
        ),
        (
            json!({"user": "alice", "provider": "fcm", "token": "t", "topics": (0..33).map(|i| i.to_string()).collect::<Vec<_>>()}),
            106,
        ),
    ] {
        assert_eq!(
            api_error(&serve, "device_register", body.clone()).await,
            code,
            "{body}"
        );
    }
    assert!(
        devices(&serve, "alice").await.is_empty(),
        "a refused registration stores nothing"
    );

    // Valid registrations of each provider; the same token again is one device.
    let web = api_ok(
        &serve,
        "device_register",
        json!({"user": "alice", "provider": "webpush", "token": sub, "platform": "web"}),
    )
    .await;
    let web_id = web["device"]["id"].as_str().unwrap().to_string();
    assert_eq!(web["device"]["provider"], "webpush");
    assert!(
        web["device"].get("token").is_none(),
        "tokens are never answered"
    );
    api_ok(
        &serve,
        "device_register",
        json!({"user": "alice", "provider": "fcm", "token": "fcm-1", "topics": ["news"]}),
    )
    .await;
    let again = api_ok(
        &serve,
        "device_register",
        json!({"user": "alice", "provider": "fcm", "token": "fcm-1", "topics": ["news", "sport"]}),
    )
    .await;
    assert_eq!(again["evicted"], json!([]));
    let listed = devices(&serve, "alice").await;
    assert_eq!(listed.len(), 2, "{listed:?}");

    // Bound: a fourth device of a user holding three evicts the least
    // recently registered (the Web Push one, registered first).
    api_ok(
        &serve,
        "device_register",
        json!({"user": "alice", "provider": "apns", "token": "aa".repeat(32)}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fourth = api_ok(
        &serve,
        "device_register",
        json!({"user": "alice", "provider": "apns", "token": "bb".repeat(32)}),
    )
    .await;
    assert_eq!(
        fourth["evicted"],
        json!([web_id]),
        "the oldest device is replaced"
    );
    let listed = devices(&serve, "alice").await;
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|d| d["id"] != web_id.as_str()));

    // Paging.
    let page = api_ok(&serve, "device_list", json!({"user": "alice", "limit": 2})).await;
    assert_eq!(page["devices"].as_array().unwrap().len(), 2);
    let cursor = page["cursor"]
        .as_str()
        .expect("a full page has a cursor")
        .to_string();
    let rest = api_ok(
        &serve,
        "device_list",
        json!({"user": "alice", "after": cursor, "limit": 2}),
    )
    .await;
    assert_eq!(rest["devices"].as_array().unwrap().len(), 1);
    assert_eq!(
        api_error(
            &serve,
            "device_list",
            json!({"user": "alice", "limit": 1001})
        )
        .await,
        106
    );

    // The client RPCs: register and remove the caller's own devices only.
    let (mut bob, _) = WsClient::connect(serve.addr(), &token("bob")).await;
    let r = bob
        .call("rpc", json!({"method": "herald.device_register", "data": {"provider": "fcm", "token": "bob-phone", "platform": "android"}}))
        .await;
    let bob_id = r["rpc"]["data"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    assert_eq!(devices(&serve, "bob").await.len(), 1);
    let bad = bob
        .call(
            "rpc",
            json!({"method": "herald.device_register", "data": {"provider": "fcm"}}),
        )
        .await;
    assert_eq!(bad["error"]["code"], 107, "{bad}");
    let alice_device = devices(&serve, "alice").await[0]["id"].clone();
    let r = bob
        .call(
            "rpc",
            json!({"method": "herald.device_remove", "data": {"id": alice_device}}),
        )
        .await;
    assert_eq!(
        r["rpc"]["data"]["removed"], false,
        "another user's device stays"
    );
    assert_eq!(devices(&serve, "alice").await.len(), 3);
    let r = bob
        .call(
            "rpc",
            json!({"method": "herald.device_remove", "data": {"id": bob_id}}),
        )
        .await;
    assert_eq!(r["rpc"]["data"]["removed"], true);
    assert!(devices(&serve, "bob").await.is_empty());

    // The server API removes by id or by provider and token.
    let r = api_ok(
        &serve,
        "device_remove",
        json!({"provider": "fcm", "token": "fcm-1"}),
    )
    .await;
    assert_eq!(r["removed"], true);
    assert_eq!(devices(&serve, "alice").await.len(), 2);
    assert_eq!(
        api_error(&serve, "device_remove", json!({"id": "nothex"})).await,
        107
    );
    // The registry is durable: a restart keeps it.
    let mut serve = serve;
    serve.sigterm().await;
    let serve = HeraldProcess::start(serve.spec.clone()).await;
    assert_eq!(devices(&serve, "alice").await.len(), 2);
    assert!(providers.state().problems.is_empty());
}

/// Sends through every provider and checks what each received.
#[tokio::test(flavor = "multi_thread")]
async fn each_provider_gets_a_verified_request() {
    let _turn = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let providers = Providers::start().await;
    let serve = HeraldProcess::start(serve_spec(&nats, &dir, &providers)).await;
    let apns_token = "ab".repeat(32);
    api_ok(
        &serve,
        "device_register",
        json!({"user": "carol", "provider": "fcm", "token": "fcm-carol"}),
    )
    .await;
    api_ok(
        &serve,
        "device_register",
        json!({"user": "carol", "provider": "apns", "token": apns_token}),
    )
    .await;
    api_ok(
        &serve,
        "device_register",
        json!({"user": "carol", "provider": "webpush", "token": providers.subscribe("carol-web")}),
    )
    .await;

    let sent = api_ok(&serve, "send_push_notification", json!({
        "recipient": {"users": ["carol"]},
        "notification": {"title": "Hi", "body": "You have mail", "data": {"chat": "c1"}, "badge": 7, "collapse_id": "c1", "ttl": 60},
        "overrides": {"fcm": {"android": {"priority": "high"}}, "apns": {"headers": {"apns-priority": "5"}, "payload": {"aps": {"sound": "ping"}}}, "webpush": {"urgency": "low"}},
    })).await;
    assert!(
        sent["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{sent}"
    );

    common::eventually("all three providers called", LIMIT, || async {
        let n = ["fcm", "apns", "webpush"]
            .iter()
            .filter(|p| !providers.captured(p).is_empty())
            .count();
        (n == 3).then_some(())
    })
    .await;
    let problems = providers.state().problems.clone();
    assert!(problems.is_empty(), "{problems:?}");

    let fcm = &providers.captured("fcm")[0];
    println!(
        "FCM request: {} {:?}",
        fcm.body,
        fcm.headers.get("content-type")
    );
    assert_eq!(fcm.status, 200);
    assert_eq!(
        fcm.body,
        json!({"token": "fcm-carol", "notification": {"title": "Hi", "body": "You have mail"},
               "data": {"chat": "c1", "badge": "7"}, "android": {"collapse_key": "c1", "ttl": "60s", "priority": "high"}})
    );
    assert_eq!(providers.state().token_exchanges, 1);

    let apns = &providers.captured("apns")[0];
    println!("APNs request: {} {:?}", apns.body, apns.headers);
    assert_eq!(apns.target, apns_token);
    assert_eq!(
        apns.body,
        json!({"aps": {"alert": {"title": "Hi", "body": "You have mail"}, "badge": 7, "sound": "ping"}, "chat": "c1"})
    );
    assert_eq!(apns.headers["apns-topic"], TOPIC);
    assert_eq!(apns.headers["apns-push-type"], "alert");
    assert_eq!(
        apns.headers["apns-priority"], "5",
        "the override's header wins"
    );
    assert_eq!(apns.headers["apns-collapse-id"], "c1");
    let expiration: u64 = apns.headers["apns-expiration"].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 30..=now + 90).contains(&expiration),
        "{expiration} vs {now}"
    );

    let web = &providers.captured("webpush")[0];
    println!(
        "Web Push request (decrypted): {} {:?}",
        web.body, web.headers
    );
    assert_eq!(web.status, 201);
    assert_eq!(
        web.body,
        json!({"title": "Hi", "body": "You have mail", "data": {"chat": "c1"}, "badge": 7})
    );
    assert_eq!(web.headers["ttl"], "60");
    assert_eq!(web.headers["urgency"], "low");
    assert_eq!(web.headers["topic"], "c1");

    // A second send reuses the FCM access token and the APNs provider token.
    api_ok(&serve, "send_push_notification", json!({"recipient": {"devices": [devices(&serve, "carol").await[0]["id"]]}, "notification": {"title": "again"}})).await;
    api_ok(
        &serve,
        "send_push_notification",
        json!({"recipient": {"users": ["carol"]}, "notification": {"body": "third"}}),
    )
    .await;
    common::eventually("the later sends arrive", LIMIT, || async {
        (providers.captured("fcm").len()
            + providers.captured("apns").len()
            + providers.captured("webpush").len()
            >= 7)
            .then_some(())
    })
    .await;
    assert_eq!(
        providers.state().token_exchanges,
        1,
        "the access token is cached"
    );
    let apns_jwts: std::collections::HashSet<String> = providers
        .captured("apns")
        .iter()
        .map(|c| c.headers["authorization"].clone())
        .collect();
    assert_eq!(apns_jwts.len(), 1, "the provider token is reused");

    // Bad sends: 107 / 106, nothing queued.
    for (body, code) in [
        (
            json!({"recipient": {}, "notification": {"title": "x"}}),
            107,
        ),
        (
            json!({"recipient": {"users": ["carol"]}, "notification": {}}),
            107,
        ),
        (
            json!({"recipient": {"users": [""]}, "notification": {"title": "x"}}),
            107,
        ),
        (
            json!({"recipient": {"users": ["carol"]}, "notification": {"title": "x", "data": {"n": 1}}}),
            107,
        ),
        (
            json!({"recipient": {"users": ["carol"]}, "notification": {"title": "x".repeat(5000)}}),
            106,
        ),
        (
            json!({"recipient": {"users": (0..1001).map(|i| i.to_string()).collect::<Vec<_>>()}, "notification": {"title": "x"}}),
            106,
        ),
    ] {
        assert_eq!(
            api_error(&serve, "send_push_notification", body.clone()).await,
            code,
            "{body}"
        );
    }
    let sends = serve
        .metric(
            "herald_push_sends_total",
            &[("provider", "apns"), ("result", "sent")],
        )
        .await;
    assert!(sends >= 2.0, "metrics count sends: {sends}");
}

/// Invalid tokens reported by each provider remove the device.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_tokens_are_removed_from_the_registry() {
    let _turn = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let providers = Providers::start().await;
    let serve = HeraldProcess::start(serve_spec(&nats, &dir, &providers)).await;
    api_ok(
        &serve,
        "device_register",
        json!({"user": "dan", "provider": "fcm", "token": "dead-fcm"}),
    )
    .await;
    api_ok(
        &serve,
        "device_register",
        json!({"user": "dan", "provider": "apns", "token": format!("dead{}", "0".repeat(60))}),
    )
    .await;
    api_ok(
        &serve,
        "device_register",
        json!({"user": "dan", "provider": "webpush", "token": providers.subscribe("gone")}),
    )
    .await;
    api_ok(
        &serve,
        "device_register",
        json!({"user": "dan", "provider": "fcm", "token": "alive-fcm"}),
    )
    .await;
    assert_eq!(devices(&serve, "dan").await.len(), 4);
    api_ok(
        &serve,
        "send_push_notification",
        json!({"recipient": {"users": ["dan"]}, "notification": {"title": "x"}}),
    )
    .await;
    let left = common::eventually("invalid devices removed", LIMIT, || async {
        let d = devices(&serve, "dan").await;
        (d.len() == 1).then_some(d)
    })
    .await;
    assert_eq!(left[0]["provider"], "fcm");
    assert_eq!(
        providers
            .captured("fcm")
            .iter()
            .filter(|c| c.status == 200)
            .count(),
        1
    );
    for p in ["fcm", "apns", "webpush"] {
        let removed = serve
            .metric("herald_push_devices_removed_total", &[("provider", p)])
            .await;
        assert_eq!(removed, 1.0, "{p}");
    }
    assert!(providers.state().problems.is_empty());
}

/// A send the provider keeps refusing with 503 is retried with backoff,
/// and a kill -9 of the process in between loses nothing and sends once.
#[tokio::test(flavor = "multi_thread")]
async fn retries_survive_a_restart() {
    let _turn = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let providers = Providers::start().await;
    providers.state().flaky.insert("flaky-fcm".into(), 3);
    providers.state().flaky.insert("flaky-web".into(), 3);
    let mut serve = HeraldProcess::start(serve_spec(&nats, &dir, &providers)).await;
    api_ok(
        &serve,
        "device_register",
        json!({"user": "erin", "provider": "fcm", "token": "flaky-fcm"}),
    )
    .await;
    api_ok(
        &serve,
        "device_register",
        json!({"user": "erin", "provider": "webpush", "token": providers.subscribe("flaky-web")}),
    )
    .await;
    api_ok(
        &serve,
        "send_push_notification",
        json!({"recipient": {"users": ["erin"]}, "notification": {"title": "persist"}}),
    )
    .await;
    common::eventually("a first failed attempt", LIMIT, || async {
        (providers.captured("fcm").iter().any(|c| c.status == 503)).then_some(())
    })
    .await;
    serve.kill9().await;
    let failed_before = providers
        .captured("fcm")
        .iter()
        .filter(|c| c.status == 503)
        .count();
    println!("503 answers before the kill: {failed_before}");
    let serve = HeraldProcess::start(serve.spec.clone()).await;
    common::eventually("delivered after the restart", LIMIT, || async {
        let ok = |p: &str| {
            providers
                .captured(p)
                .iter()
                .filter(|c| c.status < 300)
                .count()
        };
        (ok("fcm") >= 1 && ok("webpush") >= 1).then_some(())
    })
    .await;
    // Nothing more arrives: each was delivered once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for p in ["fcm", "webpush"] {
        let c = providers.captured(p);
        let ok = c.iter().filter(|c| c.status < 300).count();
        let failed = c.iter().filter(|c| c.status == 503).count();
        println!("{p}: {failed} failures then {ok} delivery");
        assert_eq!(ok, 1, "{p}: delivered exactly once");
        assert_eq!(failed, 3, "{p}: every failure was retried");
    }
    assert!(
        serve
            .metric(
                "herald_push_sends_total",
                &[("provider", "fcm"), ("result", "sent")]
            )
            .await
            >= 1.0
    );
    assert!(providers.state().problems.is_empty());
}

async fn publish(c: &mut WsClient, channel: &str, data: Value) -> u64 {
    let r = c
        .call("publish", json!({"channel": channel, "data": data}))
        .await;
    r["publish"]["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("publish: {r}"))
}

/// The unread-aware rule with two devices of alice: online → no push;
/// read on one device before the delay → no push; offline past the delay
/// → exactly one push, badge = her total unread.
#[tokio::test(flavor = "multi_thread")]
async fn unread_push_follows_reads_and_presence() {
    let _turn = SERIAL.lock().await;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let providers = Providers::start().await;
    let delay = Duration::from_secs(2);
    let serve = HeraldProcess::start(
        serve_spec(&nats, &dir, &providers).set("channel_push_unread_delay", "2s"),
    )
    .await;
    const DM: &str = "dm:#alice,bob";
    api_ok(
        &serve,
        "device_register",
        json!({"user": "alice", "provider": "fcm", "token": "alice-phone"}),
    )
    .await;
    let pushes = || {
        providers
            .captured("fcm")
            .into_iter()
            .filter(|c| c.target == "alice-phone")
            .collect::<Vec<_>>()
    };
    let (mut bob, _) = WsClient::connect(serve.addr(), &token("bob")).await;
    let (phone, _) = WsClient::connect(serve.addr(), &token("alice")).await;
    let (mut laptop, _) = WsClient::connect(serve.addr(), &token("alice")).await;

    // 1. Alice online on both devices: no push.
    publish(&mut bob, DM, json!({"text": "hi"})).await;
    tokio::time::sleep(delay * 2).await;
    assert!(
        pushes().is_empty(),
        "an online member gets no push: {:?}",
        pushes()
    );

    // 2. Read on the laptop before the delay, then both devices go: no push.
    let offset = publish(&mut bob, DM, json!({"text": "lunch?"})).await;
    let r = laptop
        .call(
            "rpc",
            json!({"method": "herald.read", "data": {"channel": DM, "offset": offset}}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    phone.close().await;
    laptop.close().await;
    tokio::time::sleep(delay * 2).await;
    assert!(
        pushes().is_empty(),
        "a read before the delay cancels the push: {:?}",
        pushes()
    );

    // 3. Offline past the delay: one push for two messages, badge 2.
    let sent = std::time::Instant::now();
    publish(&mut bob, DM, json!({"text": "are you there?"})).await;
    publish(&mut bob, DM, json!({"text": "hello?"})).await;
    let first = common::eventually("the unread push", LIMIT, || async {
        pushes().into_iter().next()
    })
    .await;
    let after = sent.elapsed();
    println!("unread push after {after:?}: {}", first.body);
    assert!(after >= delay, "not before the delay ({after:?})");
    assert_eq!(
        first.body["data"]["badge"], "2",
        "badge = total unread: {}",
        first.body
    );
    assert_eq!(first.body["data"]["channel"], DM);
    tokio::time::sleep(delay * 2).await;
    assert_eq!(pushes().len(), 1, "exactly one push: {:?}", pushes());
    assert!(providers.state().problems.is_empty());
}
