//! Proxies to the application backend (README, Proxies), black box: a
//! backend the test runs (axum, in this process) answers Herald's proxy
//! calls the way its request asks — a result, a refusal (`error`), a
//! `disconnect`, too late (past the proxy timeout), garbage, or HTTP 500 —
//! for each kind: connect, refresh, subscribe, publish, sub_refresh, rpc.
//!
//! The same script runs against a real Centrifugo v6 configured the same way
//! (`tests/common/centrifugo.rs`) with its own instance of the backend, and
//! what each backend received and what each client saw must agree once
//! client ids, epochs, versions and times are normalised: compatibility is
//! measured, not assumed. Herald's observations are also checked against
//! what the backend said (so both servers being wrong the same way fails
//! too), and its metrics against the calls made.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use common::centrifugo::{TestCentrifugo, centrifugo_bin};
use common::node::{SECRET, TestHerald, test_config};
use herald::config::{Config, NamespaceOptions, NamespaceProxies, ProxiesConfig, ProxyConfig};

/// Every proxy's timeout here; the backend's `slow` answers take longer.
const PROXY_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a `slow` backend answer takes.
const SLOW: Duration = Duration::from_secs(5);
/// Bounds a wait for messages; only a step expecting more than arrives
/// waits it out.
const COLLECT: Duration = Duration::from_secs(4);
/// Connections and subscriptions the backend grants for this long are
/// refreshed (server side) within the script.
const SHORT_EXPIRY_SECS: u64 = 2;
/// Headers the recorded requests keep.
const RECORDED_HEADERS: &[&str] = &["content-type", "cookie", "x-static"];

fn now() -> u64 {
    herald::auth::now_secs()
}

// ---------------------------------------------------------------- backend

/// The application backend: records each call and answers as the request
/// asks (`mode`: ok, refuse, disconnect, slow, garbage, status).
#[derive(Clone, Default)]
struct Backend {
    calls: Arc<Mutex<Vec<Value>>>,
    /// The client port of every call, in order: how many connections the
    /// calls came over (keep-alive pooling).
    peers: Arc<Mutex<Vec<u16>>>,
}

impl Backend {
    async fn start() -> (Self, SocketAddr) {
        let backend = Self::default();
        let app = axum::Router::new()
            .route("/{kind}", axum::routing::post(answer))
            .with_state(backend.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        (backend, addr)
    }

    /// The calls since the last `take`.
    fn take(&self) -> Vec<Value> {
        std::mem::take(&mut *self.calls.lock().expect("calls"))
    }

    /// (calls, distinct connections) so far.
    fn connections(&self) -> (usize, usize) {
        let peers = self.peers.lock().expect("peers");
        let distinct: std::collections::BTreeSet<u16> = peers.iter().copied().collect();
        (peers.len(), distinct.len())
    }
}

/// The mode a request asks for: connect and publish say it in `data.mode`,
/// rpc in `method`, subscribe and sub_refresh in the channel (`ns:mode-n`),
/// refresh in the user (`mode-name`).
fn mode(kind: &str, body: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let prefix = |v: String| v.split('-').next().unwrap_or_default().to_string();
    match kind {
        "connect" | "publish" => s(&body["data"]["mode"]),
        "rpc" => s(&body["method"]),
        "subscribe" | "sub_refresh" => prefix(
            s(&body["channel"])
                .split(':')
                .nth(1)
                .unwrap_or_default()
                .into(),
        ),
        "refresh" => prefix(s(&body["user"])),
        _ => String::new(),
    }
}

async fn answer(
    State(backend): State<Backend>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or_else(|_| json!({ "unparsable": body }));
    let recorded: BTreeMap<&str, &str> = RECORDED_HEADERS
        .iter()
        .filter_map(|h| Some((*h, headers.get(*h)?.to_str().ok()?)))
        .collect();
    backend.peers.lock().expect("peers").push(peer.port());
    backend
        .calls
        .lock()
        .expect("calls")
        .push(json!({ "kind": kind, "headers": recorded, "body": body }));
    let mode = mode(&kind, &body);
    let ok = match kind.as_str() {
        "connect" => {
            let d = &body["data"];
            let mut r = json!({
                "user": d["user"],
                "info": { "name": d["user"] },
                "data": { "welcome": d["user"] },
                "meta": { "tenant": "t1" },
            });
            if let Some(ch) = d.get("channels") {
                r["channels"] = ch.clone();
            }
            if let Some(n) = d["expire_in"].as_u64() {
                r["expire_at"] = json!(now() + n);
            }
            json!({ "result": r })
        }
        "refresh" => match mode.as_str() {
            "gone" => json!({ "result": { "expired": true } }),
            _ => json!({ "result": { "expire_at": now() + 60, "info": { "refreshed": true } } }),
        },
        "subscribe" => {
            let channel = body["channel"].as_str().unwrap_or_default();
            let mut r = json!({ "info": { "role": "reader" }, "data": { "hello": channel } });
            if channel.starts_with("pxr:") {
                r["expire_at"] = json!(now() + SHORT_EXPIRY_SECS);
            }
            json!({ "result": r })
        }
        "sub_refresh" => match mode.as_str() {
            "gone" => json!({ "result": { "expired": true } }),
            _ => json!({ "result": { "expire_at": now() + 60 } }),
        },
        "publish" if mode == "skip" => json!({ "result": { "skip_history": true } }),
        "publish" => json!({ "result": { "data": { "replaced": body["data"]["text"] } } }),
        // `{"b64":true}` base64-encoded.
        "rpc" if mode == "b64" => json!({ "result": { "b64data": "eyJiNjQiOnRydWV9" } }),
        "rpc" => json!({ "result": { "data": { "echo": body["data"] } } }),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    match mode.as_str() {
        "refuse" => axum::Json(json!({
            "error": { "code": 1001, "message": "refused by backend" }
        }))
        .into_response(),
        "disconnect" => axum::Json(json!({
            "disconnect": { "code": 4501, "reason": "backend says bye" }
        }))
        .into_response(),
        "slow" => {
            tokio::time::sleep(SLOW).await;
            axum::Json(ok).into_response()
        }
        "garbage" => "this is not a proxy response".into_response(),
        "status" => (StatusCode::INTERNAL_SERVER_ERROR, "backend broke").into_response(),
        _ => axum::Json(ok).into_response(),
    }
}

// ---------------------------------------------------------------- config

/// One proxy per kind, named after it, at `backend`, and `down` where
/// nothing listens (`down_port`); the namespaces `px` (subscribe and publish
/// proxied), `pxr` (subscribe and sub_refresh proxied), `pxdown` (publish
/// to `down`) and `plain` (none).
fn proxies(backend: SocketAddr, down_port: u16) -> ProxiesConfig {
    let proxy = |name: &str| ProxyConfig {
        name: name.to_string(),
        endpoint: format!("http://{backend}/{name}"),
        timeout: PROXY_TIMEOUT,
        http_headers: vec!["cookie".into()],
        static_http_headers: BTreeMap::from([("x-static".into(), "s1".into())]),
        include_connection_meta: name != "connect",
    };
    let names = [
        "connect",
        "refresh",
        "subscribe",
        "publish",
        "sub_refresh",
        "rpc",
    ];
    let mut all: Vec<ProxyConfig> = names.iter().map(|n| proxy(n)).collect();
    all.push(ProxyConfig {
        endpoint: format!("http://127.0.0.1:{down_port}/publish"),
        ..proxy("down")
    });
    ProxiesConfig {
        proxies: all,
        ca_file: None,
        connect: Some("connect".into()),
        refresh: Some("refresh".into()),
        rpc: Some("rpc".into()),
        default_namespace: NamespaceProxies::default(),
        namespaces: BTreeMap::from([
            (
                "px".to_string(),
                NamespaceProxies {
                    subscribe: Some("subscribe".into()),
                    publish: Some("publish".into()),
                    sub_refresh: None,
                },
            ),
            (
                "pxdown".to_string(),
                NamespaceProxies {
                    subscribe: None,
                    publish: Some("down".into()),
                    sub_refresh: None,
                },
            ),
            (
                "pxr".to_string(),
                NamespaceProxies {
                    subscribe: Some("subscribe".into()),
                    publish: None,
                    sub_refresh: Some("sub_refresh".into()),
                },
            ),
        ]),
    }
}

fn config(
    nats: &common::TestNats,
    dir: std::path::PathBuf,
    backend: SocketAddr,
    down_port: u16,
) -> Config {
    let mut c = test_config(nats, dir);
    let base = NamespaceOptions {
        client_publish: true,
        ..c.channels.default.clone()
    };
    for ns in ["px", "pxr", "pxdown", "plain"] {
        c.channels.namespaces.insert(ns.into(), base.clone());
    }
    c.proxies = proxies(backend, down_port);
    // Expired subscriptions are refreshed after this grace (both servers).
    c.client.expired_close_delay = Duration::from_secs(1);
    c
}

// ---------------------------------------------------------------- client

/// A raw protocol client that sends a cookie with its upgrade.
struct Ws {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u32,
    closed: bool,
}

impl Ws {
    async fn open(addr: SocketAddr) -> Self {
        let mut request = format!("ws://{addr}/connection/websocket")
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("cookie", "session=abc".parse().expect("header"));
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket handshake");
        Self {
            ws,
            next_id: 0,
            closed: false,
        }
    }

    async fn send(&mut self, method: &str, params: Value) {
        self.next_id += 1;
        let frame = json!({ "id": self.next_id, method: params });
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    /// Up to `n` messages (pings answered and left out), or fewer if the
    /// server closes (then `{"closed": {code, reason}}` ends the list) or
    /// `COLLECT` passes.
    async fn collect(&mut self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + COLLECT;
        let mut out = Vec::new();
        while out.len() < n && !self.closed {
            let Ok(msg) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                break;
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    for line in t.as_str().split('\n').map(str::trim) {
                        if line.is_empty() {
                            continue;
                        }
                        if line == "{}" {
                            let _ = self.ws.send(Message::text("{}")).await;
                            continue;
                        }
                        out.push(serde_json::from_str(line).unwrap_or(json!({ "text": line })));
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    self.closed = true;
                    out.push(json!({ "closed": f.map(|f| json!({
                        "code": u16::from(f.code), "reason": f.reason.as_str()
                    })) }));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    self.closed = true;
                    out.push(json!({ "closed": "abnormally" }));
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------- script

/// What one step saw: the client's messages and the backend's calls.
type Observations = Vec<(&'static str, Value)>;

struct Run<'a> {
    backend: &'a Backend,
    seen: Observations,
}

impl Run<'_> {
    fn record(&mut self, step: &'static str, client: Vec<Value>) {
        self.seen.push((
            step,
            json!({ "client": client, "backend": self.backend.take() }),
        ));
    }
}

/// The script, against one server at `addr` whose proxies call `backend`.
async fn script(addr: SocketAddr, backend: &Backend) -> Observations {
    let mut run = Run {
        backend,
        seen: Vec::new(),
    };
    let connect = |mode: &str, user: &str| json!({ "data": { "mode": mode, "user": user }, "name": "proxy-test" });

    // connect: granted (with info, data, meta, a server-side channel).
    let mut alice = Ws::open(addr).await;
    alice
        .send(
            "connect",
            json!({ "data": { "mode": "ok", "user": "alice", "channels": ["plain:news"] },
                    "name": "proxy-test", "version": "1.0" }),
        )
        .await;
    let got = alice.collect(1).await;
    run.record("connect granted", got);
    for mode in ["refuse", "disconnect", "slow", "garbage", "status"] {
        let mut c = Ws::open(addr).await;
        c.send("connect", connect(mode, "zed")).await;
        let got = c.collect(2).await;
        run.record(
            match mode {
                "refuse" => "connect refused",
                "disconnect" => "connect disconnected",
                "slow" => "connect timed out",
                "garbage" => "connect garbage",
                _ => "connect http 500",
            },
            got,
        );
    }
    // With a token the token decides: the backend hears nothing.
    let mut t = Ws::open(addr).await;
    t.send(
        "connect",
        json!({ "token": herald::auth::mint(SECRET, "tom", None, Duration::from_secs(3600)) }),
    )
    .await;
    let got = t.collect(1).await;
    run.record("connect with a token", got);

    // subscribe.
    alice
        .send(
            "subscribe",
            json!({ "channel": "px:ok-1", "data": { "want": "all" } }),
        )
        .await;
    let got = alice.collect(1).await;
    run.record("subscribe granted", got);
    for (step, channel) in [
        ("subscribe refused", "px:refuse-1"),
        ("subscribe timed out", "px:slow-1"),
        ("subscribe garbage", "px:garbage-1"),
        ("subscribe http 500", "px:status-1"),
    ] {
        alice.send("subscribe", json!({ "channel": channel })).await;
        let got = alice.collect(1).await;
        run.record(step, got);
    }

    // publish: the backend replaces the data; the subscriber (alice
    // herself) gets the replaced one.
    alice
        .send(
            "publish",
            json!({ "channel": "px:ok-1", "data": { "mode": "ok", "text": "hi" } }),
        )
        .await;
    let got = alice.collect(2).await;
    run.record("publish replaced", got);
    // Kept out of history: delivered, and a history read does not have it.
    alice
        .send(
            "publish",
            json!({ "channel": "px:ok-1", "data": { "mode": "skip", "text": "ephemeral" } }),
        )
        .await;
    let mut got = alice.collect(2).await;
    alice
        .send("history", json!({ "channel": "px:ok-1", "limit": 10 }))
        .await;
    got.extend(alice.collect(1).await);
    run.record("publish skip_history", got);
    for mode in ["refuse", "slow", "garbage", "status"] {
        alice
            .send(
                "publish",
                json!({ "channel": "px:ok-1", "data": { "mode": mode, "text": "no" } }),
            )
            .await;
        let got = alice.collect(1).await;
        run.record(
            match mode {
                "refuse" => "publish refused",
                "slow" => "publish timed out",
                "garbage" => "publish garbage",
                _ => "publish http 500",
            },
            got,
        );
    }

    // A backend that cannot be reached.
    alice
        .send(
            "publish",
            json!({ "channel": "pxdown:x", "data": { "text": "no" } }),
        )
        .await;
    let got = alice.collect(1).await;
    run.record("publish backend down", got);

    // rpc.
    for (step, method) in [
        ("rpc answered", "ok"),
        ("rpc answered in base64", "b64"),
        ("rpc refused", "refuse"),
        ("rpc timed out", "slow"),
        ("rpc garbage", "garbage"),
        ("rpc http 500", "status"),
    ] {
        alice
            .send("rpc", json!({ "method": method, "data": { "x": 1 } }))
            .await;
        let got = alice.collect(1).await;
        run.record(step, got);
    }

    // A backend disconnect from subscribe, publish and rpc closes the
    // connection with its code and reason.
    for (step, method, params) in [
        (
            "subscribe disconnected",
            "subscribe",
            json!({ "channel": "px:disconnect-1" }),
        ),
        (
            "publish disconnected",
            "publish",
            json!({ "channel": "px:ok-1", "data": { "mode": "disconnect" } }),
        ),
        ("rpc disconnected", "rpc", json!({ "method": "disconnect" })),
    ] {
        let mut c = Ws::open(addr).await;
        c.send("connect", connect("ok", "bob")).await;
        c.collect(1).await;
        backend.take();
        c.send(method, params).await;
        let got = c.collect(2).await;
        run.record(step, got);
    }

    // refresh: the connection's expiry comes, the backend prolongs it (or
    // says it expired: 3005).
    let mut dave = Ws::open(addr).await;
    dave.send(
        "connect",
        json!({ "data": { "mode": "ok", "user": "keep-dave", "expire_in": SHORT_EXPIRY_SECS } }),
    )
    .await;
    let mut got = dave.collect(1).await;
    let mut gone = Ws::open(addr).await;
    gone.send(
        "connect",
        json!({ "data": { "mode": "ok", "user": "gone-gus", "expire_in": SHORT_EXPIRY_SECS } }),
    )
    .await;
    got.extend(gone.collect(1).await);
    // Past the expiry: gus is closed, dave is not.
    got.extend(gone.collect(1).await);
    got.extend(dave.collect(1).await);
    run.record("refresh", got);

    // sub_refresh: two subscriptions expire; one is prolonged, the other
    // ends with an unsubscribe push.
    let mut erin = Ws::open(addr).await;
    erin.send("connect", connect("ok", "erin")).await;
    let mut got = erin.collect(1).await;
    erin.send("subscribe", json!({ "channel": "pxr:keep-1" }))
        .await;
    erin.send("subscribe", json!({ "channel": "pxr:gone-1" }))
        .await;
    got.extend(erin.collect(3).await);
    // Then nothing more: pxr:keep-1 lives on (its refresh may come after
    // the unsubscribe of the other).
    got.extend(erin.collect(1).await);
    run.record("sub_refresh", got);

    // Refreshed server side, a client's own refresh is a bad request.
    erin.send(
        "sub_refresh",
        json!({ "channel": "pxr:keep-1", "token": "anything" }),
    )
    .await;
    let got = erin.collect(1).await;
    run.record("client sub_refresh of a proxied subscription", got);
    t.send(
        "refresh",
        json!({ "token": herald::auth::mint(SECRET, "tom", None, Duration::from_secs(3600)) }),
    )
    .await;
    let got = t.collect(1).await;
    run.record("client refresh with a refresh proxy", got);
    run.seen
}

// ---------------------------------------------------------------- checks

/// Values that differ between runs or servers, replaced by placeholders.
fn normalise(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match k.as_str() {
                    "client" if x.is_string() => *x = json!("<client>"),
                    "version" if x.is_string() => *x = json!("<version>"),
                    "epoch" if x.is_string() => *x = json!("<epoch>"),
                    "ttl" | "expire_at" if x.is_number() => *x = json!("<t>"),
                    _ => normalise(x),
                }
            }
            // Herald's publish reply carries the offset and epoch
            // (docs/compatibility.md, publish-reply-offset-epoch);
            // Centrifugo's is empty.
            if let Some(Value::Object(p)) = m.get_mut("publish") {
                p.remove("offset");
                p.remove("epoch");
            }
            // The publication at offset 1 in a history reply has no epoch
            // in Herald (history-first-publication-epoch).
            if m.contains_key("data") && m.get("offset") == Some(&json!(1)) {
                m.remove("epoch");
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalise),
        _ => {}
    }
}

/// The client's messages as replies and pushes, each in arrival order:
/// whether a publication overtakes the reply to the publish that caused it
/// is not specified (Centrifugo's broker delivers first, Herald replies
/// first), as in tests/conformance.rs.
/// Applied after `normalise`. The expiry steps' calls are sorted: which of two connections or
/// subscriptions expiring in the same second is refreshed first is not
/// specified.
fn split(step: &str, v: &Value) -> Value {
    let client = v["client"].as_array().cloned().unwrap_or_default();
    let (pushes, replies): (Vec<Value>, Vec<Value>) =
        client.into_iter().partition(|m| m.get("push").is_some());
    let mut backend = v["backend"].as_array().cloned().unwrap_or_default();
    if step.contains("refresh") {
        backend.sort_by_key(|c| c.to_string());
    }
    json!({ "backend": backend, "replies": replies, "pushes": pushes })
}

fn step<'a>(seen: &'a Observations, name: &str) -> &'a Value {
    &seen
        .iter()
        .find(|(s, _)| *s == name)
        .unwrap_or_else(|| panic!("no step {name}"))
        .1
}

/// Herald's own observations against what the backend said.
fn check_herald(seen: &Observations) {
    let error_100 = json!({ "code": 100, "message": "internal server error", "temporary": true });
    let s = step(seen, "connect granted");
    let reply = &s["client"][0]["connect"];
    assert_eq!(reply["data"], json!({ "welcome": "alice" }), "{s}");
    assert!(reply["subs"]["plain:news"].is_object(), "{s}");
    let call = &s["backend"][0];
    assert_eq!(call["kind"], "connect", "{s}");
    assert_eq!(call["body"]["data"]["user"], "alice", "{s}");
    assert_eq!(call["body"]["name"], "proxy-test", "{s}");
    assert_eq!(call["body"]["transport"], "websocket", "{s}");
    assert_eq!(call["headers"]["cookie"], "session=abc", "{s}");
    assert_eq!(call["headers"]["x-static"], "s1", "{s}");
    let s = step(seen, "connect refused");
    assert_eq!(s["client"][0]["error"]["code"], 1001, "{s}");
    let s = step(seen, "connect disconnected");
    assert_eq!(
        s["client"][0]["closed"],
        json!({ "code": 4501, "reason": "backend says bye" }),
        "{s}"
    );
    for name in ["connect timed out", "connect garbage", "connect http 500"] {
        let s = step(seen, name);
        assert_eq!(s["client"][0]["error"], error_100, "{name}: {s}");
    }
    let s = step(seen, "connect with a token");
    assert!(s["client"][0]["connect"].is_object(), "{s}");
    assert_eq!(s["backend"], json!([]), "{s}");

    let s = step(seen, "subscribe granted");
    assert_eq!(
        s["client"][0]["subscribe"]["data"],
        json!({ "hello": "px:ok-1" }),
        "{s}"
    );
    assert_eq!(
        s["backend"][0]["body"]["data"],
        json!({ "want": "all" }),
        "{s}"
    );
    assert_eq!(
        s["backend"][0]["body"]["meta"],
        json!({ "tenant": "t1" }),
        "{s}"
    );
    assert_eq!(s["backend"][0]["body"]["user"], "alice", "{s}");
    assert_eq!(
        step(seen, "subscribe refused")["client"][0]["error"]["code"],
        1001
    );
    for name in [
        "subscribe timed out",
        "subscribe garbage",
        "subscribe http 500",
    ] {
        let s = step(seen, name);
        assert_eq!(s["client"][0]["error"], error_100, "{name}: {s}");
    }

    let s = step(seen, "publish replaced");
    let publication = s["client"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m.get("push").is_some()))
        .unwrap_or_else(|| panic!("no publication: {s}"));
    assert_eq!(
        publication["push"]["pub"]["data"],
        json!({ "replaced": "hi" }),
        "{s}"
    );
    assert_eq!(
        publication["push"]["pub"]["info"]["chan_info"],
        json!({ "role": "reader" }),
        "{s}"
    );
    assert_eq!(
        step(seen, "publish refused")["client"][0]["error"]["code"],
        1001
    );
    for name in [
        "publish timed out",
        "publish garbage",
        "publish http 500",
        "publish backend down",
    ] {
        let s = step(seen, name);
        assert_eq!(s["client"][0]["error"], error_100, "{name}: {s}");
    }

    let s = step(seen, "rpc answered");
    assert_eq!(
        s["client"][0]["rpc"]["data"],
        json!({ "echo": { "x": 1 } }),
        "{s}"
    );
    let s = step(seen, "rpc answered in base64");
    assert_eq!(s["client"][0]["rpc"]["data"], json!({ "b64": true }), "{s}");
    let s = step(seen, "publish skip_history");
    let client = s["client"].as_array().expect("list");
    let publication = client
        .iter()
        .find(|m| m.get("push").is_some())
        .unwrap_or_else(|| panic!("no publication: {s}"));
    assert_eq!(
        publication["push"]["pub"]["data"],
        json!({ "mode": "skip", "text": "ephemeral" }),
        "{s}"
    );
    let history = client
        .iter()
        .find(|m| m.get("history").is_some())
        .unwrap_or_else(|| panic!("no history reply: {s}"));
    assert_eq!(
        history["history"]["publications"].as_array().map(Vec::len),
        Some(1),
        "only the replaced publication is in history: {s}"
    );
    assert_eq!(
        step(seen, "rpc refused")["client"][0]["error"]["code"],
        1001
    );
    for name in ["rpc timed out", "rpc garbage", "rpc http 500"] {
        let s = step(seen, name);
        assert_eq!(s["client"][0]["error"], error_100, "{name}: {s}");
    }
    for name in [
        "subscribe disconnected",
        "publish disconnected",
        "rpc disconnected",
    ] {
        let s = step(seen, name);
        assert_eq!(
            s["client"][0]["closed"],
            json!({ "code": 4501, "reason": "backend says bye" }),
            "{name}: {s}"
        );
    }

    let s = step(seen, "refresh");
    let client = s["client"].as_array().expect("list");
    assert!(
        client[0]["connect"]["expires"].is_null(),
        "server-side refresh is not announced: {s}"
    );
    assert_eq!(client[2]["closed"]["code"], 3005, "{s}");
    assert_eq!(
        client.len(),
        3,
        "dave stays connected and hears nothing: {s}"
    );
    let refreshed: Vec<&Value> = s["backend"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|c| c["kind"] == "refresh")
        .collect();
    assert_eq!(refreshed.len(), 2, "{s}");
    assert!(
        refreshed
            .iter()
            .all(|c| c["body"]["meta"] == json!({ "tenant": "t1" })),
        "{s}"
    );

    for name in [
        "client sub_refresh of a proxied subscription",
        "client refresh with a refresh proxy",
    ] {
        let s = step(seen, name);
        assert_eq!(s["client"][0]["closed"]["code"], 3501, "{name}: {s}");
    }
    let s = step(seen, "sub_refresh");
    let client = s["client"].as_array().expect("list");
    let unsub = client
        .iter()
        .find(|m| m["push"]["unsubscribe"].is_object())
        .unwrap_or_else(|| panic!("no unsubscribe push: {s}"));
    assert_eq!(unsub["push"]["channel"], "pxr:gone-1", "{s}");
    assert_eq!(unsub["push"]["unsubscribe"]["code"], 2501, "{s}");
    let channels: Vec<&Value> = s["backend"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|c| c["kind"] == "sub_refresh")
        .map(|c| &c["body"]["channel"])
        .collect();
    assert_eq!(channels.len(), 2, "{s}");
}

/// The counters of Herald's `/metrics` for a proxy, kind and result.
async fn proxy_count(herald: &TestHerald, proxy: &str, kind: &str, result: &str) -> f64 {
    let text = reqwest::get(herald.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| {
            l.starts_with("herald_proxy_requests_total{")
                && l.contains(&format!("proxy=\"{proxy}\""))
                && l.contains(&format!("kind=\"{kind}\""))
                && l.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxies_answer_as_centrifugo() {
    let nats = common::TestNats::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (herald_backend, herald_backend_addr) = Backend::start().await;
    // Nothing listens there (a free port, not bound).
    let down_port = common::process::free_port();
    let herald_config = config(
        &nats,
        dir.path().to_path_buf(),
        herald_backend_addr,
        down_port,
    );
    let herald = TestHerald::start(herald_config.clone()).await;

    let have_centrifugo = centrifugo_bin().exists();
    let (centrifugo_backend, centrifugo_backend_addr) = Backend::start().await;
    let centrifugo = if have_centrifugo {
        let mut c = herald_config.clone();
        c.proxies = proxies(centrifugo_backend_addr, down_port);
        Some(TestCentrifugo::start(&c, &[]).await)
    } else {
        eprintln!(
            "SKIPPED: the comparison with Centrifugo ({} missing: run scripts/install-tools.sh); \
             Herald's own checks still run",
            centrifugo_bin().display()
        );
        None
    };

    let started = Instant::now();
    let (herald_seen, centrifugo_seen) =
        tokio::join!(script(herald.addr, &herald_backend), async {
            match &centrifugo {
                Some(c) => Some(script(c.addr, &centrifugo_backend).await),
                None => None,
            }
        });
    eprintln!("script ran in {:?} on each server", started.elapsed());

    check_herald(&herald_seen);
    // One captured request per kind, for the record (`--nocapture`).
    for kind in [
        "connect",
        "refresh",
        "subscribe",
        "publish",
        "sub_refresh",
        "rpc",
    ] {
        let call = herald_seen
            .iter()
            .flat_map(|(_, o)| o["backend"].as_array().cloned().unwrap_or_default())
            .find(|c| c["kind"] == kind);
        eprintln!("captured {kind}: {}", call.unwrap_or_default());
    }
    // Keep-alive: the calls share pooled connections (only a call given up
    // at its timeout loses its connection).
    let (calls, connections) = herald_backend.connections();
    eprintln!("herald: {calls} proxy calls over {connections} connections");
    assert!(
        calls >= 30 && connections * 4 <= calls,
        "{calls} calls over {connections} connections"
    );
    // `herald.*` RPCs are Herald's own, never proxied.
    let mut c = Ws::open(herald.addr).await;
    c.send(
        "connect",
        json!({ "data": { "mode": "ok", "user": "hal" } }),
    )
    .await;
    c.collect(1).await;
    herald_backend.take();
    c.send(
        "rpc",
        json!({ "method": "herald.user_status", "data": { "users": ["hal"] } }),
    )
    .await;
    let got = c.collect(1).await;
    assert_eq!(got[0]["error"]["code"], 108, "{got:?}");
    assert_eq!(herald_backend.take(), Vec::<Value>::new());
    // Every failed call was counted, by result.
    for (proxy, kind, result) in [
        ("connect", "connect", "ok"),
        ("connect", "connect", "error"),
        ("connect", "connect", "disconnect"),
        ("connect", "connect", "timeout"),
        ("connect", "connect", "invalid"),
        ("connect", "connect", "status"),
        ("publish", "publish", "timeout"),
        ("down", "publish", "unavailable"),
        ("rpc", "rpc", "invalid"),
        ("refresh", "refresh", "ok"),
        ("sub_refresh", "sub_refresh", "ok"),
    ] {
        let n = proxy_count(&herald, proxy, kind, result).await;
        assert!(
            n >= 1.0,
            "herald_proxy_requests_total {proxy}/{kind}/{result} = {n}"
        );
    }

    if let Some(centrifugo_seen) = centrifugo_seen {
        let mut differences = Vec::new();
        for ((step, h), (_, c)) in herald_seen.iter().zip(&centrifugo_seen) {
            let (mut h, mut c) = (h.clone(), c.clone());
            normalise(&mut h);
            normalise(&mut c);
            let (h, c) = (split(step, &h), split(step, &c));
            if h != c {
                differences.push(format!(
                    "step {step:?}:\n  herald:     {h}\n  centrifugo: {c}"
                ));
            }
        }
        assert!(
            differences.is_empty(),
            "Herald and Centrifugo differ:\n{}",
            differences.join("\n")
        );
    }
}
