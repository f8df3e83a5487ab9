//! Bidirectional emulation (HTTP-streaming and SSE, commands through
//! `/emulation`) over real sockets with raw HTTP clients, against a real
//! nats-server: connect, subscribe, publish, history, ping/pong, refresh,
//! recovery after a cut, server-side disconnects said in-stream, the
//! Protobuf HTTP stream, and bad input answered with 4xx. The official JS
//! SDK runs over these transports in tests/sdk.rs (against Centrifugo too).

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use common::TestNats;
use common::node::{SECRET, TestHerald, test_config};
use common::proxy::Proxy;
use common::ws::WsClient;
use herald_client::protobuf::pb;
use prost::Message;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);

async fn node(
    configure: impl FnOnce(&mut herald::config::Config),
) -> (TestNats, tempfile::TempDir, TestHerald) {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&nats, dir.path().join("data"));
    configure(&mut config);
    let h = TestHerald::start(config).await;
    (nats, dir, h)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    HttpStream,
    Sse,
}

/// A JSON client over HTTP-streaming or SSE: reads the stream, sends
/// commands as `/emulation` requests.
struct StreamClient {
    kind: Kind,
    resp: reqwest::Response,
    buf: Vec<u8>,
    replies: VecDeque<Value>,
    /// Where `/emulation` is (the server, or a proxy in front of it).
    addr: SocketAddr,
    session: String,
    node: String,
    next_id: u32,
    http: reqwest::Client,
}

impl StreamClient {
    /// Opens the stream with `first` as its first command; the stream's
    /// HTTP status must be 200.
    async fn open(kind: Kind, addr: SocketAddr, first: Value) -> Self {
        let http = reqwest::Client::new();
        let resp = match kind {
            Kind::HttpStream => http
                .post(format!("http://{addr}/connection/http_stream"))
                .header("content-type", "application/json")
                .body(first.to_string())
                .send()
                .await
                .expect("http_stream request"),
            Kind::Sse => http
                .get(format!("http://{addr}/connection/sse"))
                .query(&[("cf_connect", first.to_string())])
                .send()
                .await
                .expect("sse request"),
        };
        assert_eq!(resp.status(), 200);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        match kind {
            Kind::Sse => assert_eq!(content_type, "text/event-stream; charset=utf-8"),
            Kind::HttpStream => assert_eq!(content_type, "application/json"),
        }
        Self {
            kind,
            resp,
            buf: Vec::new(),
            replies: VecDeque::new(),
            addr,
            session: String::new(),
            node: String::new(),
            next_id: 2,
            http,
        }
    }

    /// Connects with `token`; returns the client and the connect reply.
    async fn connect(kind: Kind, addr: SocketAddr, token: &str) -> (Self, Value) {
        let mut c = Self::open(kind, addr, json!({"id": 1, "connect": {"token": token}})).await;
        let reply = c.next().await.expect("connect reply");
        assert!(reply.get("error").is_none(), "{reply}");
        c.session = reply["connect"]["session"]
            .as_str()
            .expect("session")
            .into();
        c.node = reply["connect"]["node"].as_str().expect("node").into();
        (c, reply)
    }

    /// The next reply or push, or `None` when the stream ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(v) = self.replies.pop_front() {
                return Some(v);
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("stream silent")
                .ok()
                .flatten()?;
            self.buf.extend_from_slice(&chunk);
            self.parse();
        }
    }

    fn parse(&mut self) {
        let sep: &[u8] = match self.kind {
            Kind::HttpStream => b"\n",
            Kind::Sse => b"\n\n",
        };
        while let Some(at) = self.buf.windows(sep.len()).position(|w| w == sep) {
            let item: Vec<u8> = self.buf.drain(..at + sep.len()).collect();
            let text = std::str::from_utf8(&item[..at]).expect("utf-8").trim();
            let text = match self.kind {
                Kind::Sse => match text.strip_prefix("data: ") {
                    Some(t) => t,
                    None => continue,
                },
                Kind::HttpStream => text,
            };
            if !text.is_empty() {
                self.replies
                    .push_back(serde_json::from_str(text).expect("json reply"));
            }
        }
    }

    /// Posts `data` (commands) for this session; returns the status and body.
    async fn emulate_raw(&self, data: &str) -> (u16, String) {
        let body = json!({"session": self.session, "node": self.node, "data": data});
        let r = self
            .http
            .post(format!("http://{}/emulation", self.addr))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("emulation request");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    async fn send(&mut self, method: &str, params: Value) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let (status, body) = self
            .emulate_raw(&json!({"id": id, method: params}).to_string())
            .await;
        assert_eq!(status, 204, "{body}");
        id
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        let mut pushes = Vec::new();
        let reply = loop {
            let v = self.next().await.expect("reply before the stream ended");
            if v["id"] == id {
                break v;
            }
            pushes.push(v);
        };
        for p in pushes.into_iter().rev() {
            self.replies.push_front(p);
        }
        reply
    }

    async fn publication(&mut self, channel: &str) -> Value {
        loop {
            let v = self.next().await.expect("publication before the end");
            if v["push"]["channel"] == channel && v["push"].get("pub").is_some() {
                return v["push"]["pub"].clone();
            }
        }
    }
}

async fn connect_subscribe_publish_history(kind: Kind) {
    let (_nats, _dir, h) = node(|_| {}).await;
    let (mut c, connected) = StreamClient::connect(kind, h.addr, &h.token("alice")).await;
    let r = &connected["connect"];
    assert!(r["client"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    assert!(r["session"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    assert!(r["node"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    assert_eq!(r["pong"], true, "{r}");

    let sub = c.call("subscribe", json!({"channel": "news"})).await;
    assert_eq!(sub["subscribe"]["recoverable"], true, "{sub}");

    // A WebSocket client's publication reaches the stream.
    let (mut ws, _) = WsClient::connect(h.addr, &h.token("bob")).await;
    let p = ws
        .call("publish", json!({"channel": "news", "data": {"n": 1}}))
        .await;
    assert!(p.get("error").is_none(), "{p}");
    let got = c.publication("news").await;
    assert_eq!(got["data"], json!({"n": 1}));
    assert_eq!(got["offset"], 1);

    // The stream client publishes through /emulation.
    let p = c
        .call("publish", json!({"channel": "news", "data": {"n": 2}}))
        .await;
    assert!(p.get("error").is_none(), "{p}");
    assert_eq!(c.publication("news").await["data"], json!({"n": 2}));

    let hist = c
        .call("history", json!({"channel": "news", "limit": 10}))
        .await;
    let offsets: Vec<u64> = hist["history"]["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .filter_map(|p| p["offset"].as_u64())
        .collect();
    assert_eq!(offsets, [1, 2], "{hist}");

    // Two commands in one request run in order.
    let (status, _) = c
        .emulate_raw(
            "{\"id\":50,\"presence_stats\":{\"channel\":\"news\"}}\n{\"id\":51,\"ping\":{}}",
        )
        .await;
    assert_eq!(status, 204);
    let a = c.next().await.expect("first reply");
    let b = c.next().await.expect("second reply");
    assert_eq!((a["id"].as_u64(), b["id"].as_u64()), (Some(50), Some(51)));
}

#[tokio::test]
async fn http_stream_connects_subscribes_publishes_and_reads_history() {
    connect_subscribe_publish_history(Kind::HttpStream).await;
}

#[tokio::test]
async fn sse_connects_subscribes_publishes_and_reads_history() {
    connect_subscribe_publish_history(Kind::Sse).await;
}

/// SSE started by a `POST` with the connect command as its body.
#[tokio::test]
async fn sse_connects_by_post() {
    let (_nats, _dir, h) = node(|_| {}).await;
    let resp = reqwest::Client::new()
        .post(h.url("/connection/sse"))
        .body(json!({"id": 1, "connect": {"token": h.token("alice")}}).to_string())
        .send()
        .await
        .expect("sse post");
    assert_eq!(resp.status(), 200);
    let mut c = StreamClient {
        kind: Kind::Sse,
        resp,
        buf: Vec::new(),
        replies: VecDeque::new(),
        addr: h.addr,
        session: String::new(),
        node: String::new(),
        next_id: 2,
        http: reqwest::Client::new(),
    };
    let reply = c.next().await.expect("connect reply");
    assert_eq!(reply["id"], 1, "{reply}");
    assert!(reply["connect"]["session"].is_string(), "{reply}");
}

/// The server pings in-stream; pongs come through `/emulation` and keep the
/// connection past `client_pong_timeout`; without them it ends with 3012,
/// said in-stream.
#[tokio::test]
async fn pings_are_answered_through_emulation() {
    let (_nats, _dir, h) = node(|c| {
        c.client.ping_interval = Duration::from_millis(300);
        c.client.pong_timeout = Duration::from_millis(300);
    })
    .await;
    let (mut c, _) = StreamClient::connect(Kind::HttpStream, h.addr, &h.token("alice")).await;
    for _ in 0..4 {
        let ping = c.next().await.expect("ping");
        assert_eq!(ping, json!({}), "a ping is an empty object");
        let (status, _) = c.emulate_raw("{}").await;
        assert_eq!(status, 204);
    }
    // Now silent: the server gives up with 3012 (no pong), in-stream.
    let mut last = Value::Null;
    while let Some(v) = c.next().await {
        last = v;
    }
    assert_eq!(last["push"]["disconnect"]["code"], 3012, "{last}");
}

/// A token refresh through `/emulation` keeps the connection past the
/// first token's expiry.
#[tokio::test]
async fn refresh_through_emulation() {
    let (_nats, _dir, h) = node(|c| {
        c.client.expired_close_delay = Duration::ZERO;
    })
    .await;
    let short = herald::auth::mint(SECRET, "alice", None, Duration::from_secs(2));
    let (mut c, connected) = StreamClient::connect(Kind::Sse, h.addr, &short).await;
    assert_eq!(connected["connect"]["expires"], true, "{connected}");
    let r = c.call("refresh", json!({"token": h.token("alice")})).await;
    assert_eq!(r["refresh"]["expires"], true, "{r}");
    assert!(r["refresh"]["ttl"].as_u64() > Some(100), "{r}");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let ping = c.call("ping", json!({})).await;
    assert!(ping.get("error").is_none(), "{ping}");
}

/// A server API `disconnect` ends the stream with a `disconnect` push
/// carrying the code and reason (no close frame on these transports).
#[tokio::test]
async fn server_disconnect_is_said_in_stream() {
    let (_nats, _dir, h) = node(|_| {}).await;
    for kind in [Kind::HttpStream, Kind::Sse] {
        let (mut c, _) = StreamClient::connect(kind, h.addr, &h.token("alice")).await;
        let r = h
            .api(
                "disconnect",
                json!({"user": "alice", "disconnect": {"code": 4501, "reason": "bye"}}),
            )
            .await;
        assert!(r.get("error").is_none(), "{r}");
        let mut seen = Vec::new();
        while let Some(v) = c.next().await {
            seen.push(v);
        }
        assert_eq!(
            seen.last(),
            Some(&json!({"push": {"disconnect": {"code": 4501, "reason": "bye"}}})),
            "{seen:?}"
        );
        // The session is gone: its emulation requests are 204 (as
        // Centrifugo's for a session gone from a live node) and do nothing.
        let (status, _) = c.emulate_raw("{\"id\":9,\"ping\":{}}").await;
        assert_eq!(status, 204);
    }
}

/// A bad token: the connect fails in-stream with 3500.
#[tokio::test]
async fn bad_token_is_said_in_stream() {
    let (_nats, _dir, h) = node(|_| {}).await;
    let mut c = StreamClient::open(
        Kind::HttpStream,
        h.addr,
        json!({"id": 1, "connect": {"token": "not-a-token"}}),
    )
    .await;
    let v = c.next().await.expect("disconnect");
    assert_eq!(v["push"]["disconnect"]["code"], 3500, "{v}");
    assert!(c.next().await.is_none(), "the stream ends");
}

/// The stream through a proxy that is cut: the server notices the end of
/// the stream (the session leaves), and a new stream recovers what was
/// published meanwhile.
#[tokio::test]
async fn recovers_after_a_cut() {
    let (_nats, _dir, h) = node(|_| {}).await;
    let proxy = Proxy::start(h.addr).await;
    let (mut c, _) = StreamClient::connect(Kind::HttpStream, proxy.addr, &h.token("alice")).await;
    let (mut ws, _) = WsClient::connect(h.addr, &h.token("bob")).await;
    ws.call("publish", json!({"channel": "news", "data": {"n": 1}}))
        .await;
    let sub = c.call("subscribe", json!({"channel": "news"})).await;
    let epoch = sub["subscribe"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    assert_eq!(sub["subscribe"]["offset"], 1, "{sub}");

    proxy.cut();
    // The server sees the stream go: alice leaves the channel on this node.
    common::eventually("the cut session leaves", WAIT, || {
        let h = &h;
        async move {
            let r = h.api("info", json!({})).await;
            let clients = r["result"]["nodes"][0]["num_clients"].as_u64();
            (clients == Some(1)).then_some(())
        }
    })
    .await;
    for n in 2..=4 {
        ws.call("publish", json!({"channel": "news", "data": {"n": n}}))
            .await;
    }
    proxy.restore();

    let (mut c, _) = StreamClient::connect(Kind::HttpStream, proxy.addr, &h.token("alice")).await;
    let sub = c
        .call(
            "subscribe",
            json!({"channel": "news", "recover": true, "offset": 1, "epoch": epoch}),
        )
        .await;
    let s = &sub["subscribe"];
    assert_eq!(s["recovered"], true, "{sub}");
    let offsets: Vec<u64> = s["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .filter_map(|p| p["offset"].as_u64())
        .collect();
    assert_eq!(offsets, [2, 3, 4], "{sub}");
}

/// Centrifugo's `EmulationRequest` (protocol `client.proto`).
#[derive(Clone, PartialEq, prost::Message)]
struct EmulationRequest {
    #[prost(string, tag = "1")]
    node: String,
    #[prost(string, tag = "2")]
    session: String,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

/// A Protobuf HTTP stream: length-delimited `Reply`s.
struct PbStream {
    resp: reqwest::Response,
    buf: bytes::BytesMut,
}

impl PbStream {
    async fn next(&mut self) -> pb::Reply {
        loop {
            let mut view = &self.buf[..];
            if let Ok(r) = pb::Reply::decode_length_delimited(&mut view) {
                let used = self.buf.len() - view.len();
                let _ = self.buf.split_to(used);
                return r;
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("stream silent")
                .expect("chunk")
                .expect("stream open");
            self.buf.extend_from_slice(&chunk);
        }
    }
}

/// HTTP-streaming in Protobuf (`application/octet-stream`): length-delimited
/// replies in the body, `EmulationRequest`s in Protobuf.
#[tokio::test]
async fn http_stream_protobuf() {
    let (_nats, _dir, h) = node(|_| {}).await;
    let http = reqwest::Client::new();
    let connect = pb::Command {
        id: 1,
        connect: Some(pb::ConnectRequest {
            token: h.token("alice"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let resp = http
        .post(h.url("/connection/http_stream"))
        .header("content-type", "application/octet-stream")
        .body(connect.encode_length_delimited_to_vec())
        .send()
        .await
        .expect("pb stream");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let mut stream = PbStream {
        resp,
        buf: bytes::BytesMut::new(),
    };
    let reply = stream.next().await;
    let connected = reply.connect.expect("connect result");
    assert!(!connected.session.is_empty() && !connected.node.is_empty());

    let subscribe = pb::Command {
        id: 2,
        subscribe: Some(pb::SubscribeRequest {
            channel: "news".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let emulation = EmulationRequest {
        node: connected.node.clone(),
        session: connected.session.clone(),
        data: subscribe.encode_length_delimited_to_vec(),
    };
    let r = http
        .post(h.url("/emulation"))
        .header("content-type", "application/octet-stream")
        .body(emulation.encode_to_vec())
        .send()
        .await
        .expect("emulation");
    assert_eq!(r.status(), 204);
    let reply = stream.next().await;
    assert_eq!(reply.id, 2);
    assert!(reply.subscribe.expect("subscribe result").recoverable);
    h.api("publish", json!({"channel": "news", "data": {"pb": true}}))
        .await;
    let push = stream.next().await.push.expect("push");
    assert_eq!(push.channel, "news");
    let publication = push.r#pub.expect("publication");
    assert_eq!(
        serde_json::from_slice::<Value>(&publication.data).expect("json data"),
        json!({"pb": true})
    );
}

/// Bad input gets 4xx with a JSON body; nothing panics, the node serves on.
#[tokio::test]
async fn bad_input_is_refused_with_4xx() {
    let (_nats, _dir, h) = node(|c| c.client.message_size_limit = 1024).await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: String| {
        http.post(h.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let json_error = async |r: reqwest::Response, status: u16| {
        assert_eq!(r.status().as_u16(), status);
        let v: Value = r.json().await.expect("json body");
        assert!(v["error"].is_string(), "{v}");
    };
    json_error(post("/emulation", "{".into()).await.unwrap(), 400).await;
    json_error(
        post("/emulation", json!({"session": "s"}).to_string())
            .await
            .unwrap(),
        400,
    )
    .await;
    json_error(
        post(
            "/emulation",
            json!({"session": "s", "node": "nope", "data": "{}"}).to_string(),
        )
        .await
        .unwrap(),
        404,
    )
    .await;
    json_error(post("/emulation", "x".repeat(10_000)).await.unwrap(), 413).await;
    json_error(
        post("/connection/http_stream", "x".repeat(10_000))
            .await
            .unwrap(),
        413,
    )
    .await;
    json_error(
        http.get(h.url("/connection/sse")).send().await.unwrap(),
        400,
    )
    .await;
    json_error(
        http.get(h.url("/connection/http_stream"))
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    // Garbage as the first command: the stream says 3501 and ends.
    let mut c = StreamClient::open(Kind::HttpStream, h.addr, json!("garbage")).await;
    let v = c.next().await.expect("disconnect");
    assert_eq!(v["push"]["disconnect"]["code"], 3501, "{v}");
    // Still serving.
    let (_c, _) = StreamClient::connect(Kind::Sse, h.addr, &h.token("alice")).await;
}

// ------------------------------------------------------- unidirectional

fn jwt(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign a test token")
}

fn channels_token(user: &str, channels: &[&str]) -> String {
    jwt(json!({"sub": user, "exp": herald::auth::now_secs() + 3600, "channels": channels}))
}

#[derive(Clone, Copy, Debug)]
enum Uni {
    HttpStream,
    Sse,
    WebSocket,
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw unidirectional client: pushes in, nothing out.
enum UniClient {
    Stream(StreamClient),
    Ws(RawWs, VecDeque<Value>),
}

impl UniClient {
    /// Connects with `request` (a `ConnectRequest`) as that transport
    /// takes it: the POST body, `cf_connect`, or the first WebSocket message.
    async fn connect(kind: Uni, addr: SocketAddr, request: Value) -> Self {
        match kind {
            Uni::HttpStream => {
                let resp = reqwest::Client::new()
                    .post(format!("http://{addr}/connection/uni_http_stream"))
                    .body(request.to_string())
                    .send()
                    .await
                    .expect("uni_http_stream");
                assert_eq!(resp.status(), 200);
                Self::Stream(StreamClient::raw(Kind::HttpStream, resp, addr))
            }
            Uni::Sse => {
                let resp = reqwest::Client::new()
                    .get(format!("http://{addr}/connection/uni_sse"))
                    .query(&[("cf_connect", request.to_string())])
                    .send()
                    .await
                    .expect("uni_sse");
                assert_eq!(resp.status(), 200);
                assert_eq!(
                    resp.headers()["content-type"],
                    "text/event-stream; charset=utf-8"
                );
                Self::Stream(StreamClient::raw(Kind::Sse, resp, addr))
            }
            Uni::WebSocket => {
                use futures::SinkExt;
                let (mut ws, _) = tokio_tungstenite::connect_async(format!(
                    "ws://{addr}/connection/uni_websocket"
                ))
                .await
                .expect("uni_websocket handshake");
                ws.send(tokio_tungstenite::tungstenite::Message::text(
                    request.to_string(),
                ))
                .await
                .expect("send connect");
                Self::Ws(ws, VecDeque::new())
            }
        }
    }

    /// The next push; `None` once the connection ended.
    async fn next(&mut self) -> Option<Value> {
        match self {
            Self::Stream(s) => s.next().await,
            Self::Ws(ws, queued) => loop {
                use futures::StreamExt;
                use tokio_tungstenite::tungstenite::Message as M;
                if let Some(v) = queued.pop_front() {
                    return Some(v);
                }
                let m = tokio::time::timeout(WAIT, ws.next())
                    .await
                    .expect("uni websocket silent");
                match m {
                    Some(Ok(M::Text(t))) => queued.extend(
                        t.split('\n')
                            .map(|l| serde_json::from_str::<Value>(l).expect("json push")),
                    ),
                    Some(Ok(M::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => {}
                }
            },
        }
    }

    /// The next push that is not a ping.
    async fn next_push(&mut self) -> Option<Value> {
        loop {
            let v = self.next().await?;
            if v != json!({}) {
                return Some(v);
            }
        }
    }
}

impl StreamClient {
    fn raw(kind: Kind, resp: reqwest::Response, addr: SocketAddr) -> Self {
        Self {
            kind,
            resp,
            buf: Vec::new(),
            replies: VecDeque::new(),
            addr,
            session: String::new(),
            node: String::new(),
            next_id: 1,
            http: reqwest::Client::new(),
        }
    }
}

/// Each unidirectional transport: the connect push with the token's
/// channels, publications as bare pushes, a server API subscribe, pings
/// without pongs, recovery from the connect request's `subs`, and a server
/// disconnect said in-stream. `target` is Herald or Centrifugo.
async fn uni_flow(
    kind: Uni,
    addr: SocketAddr,
    api: &(dyn Fn(&'static str, Value) -> futures::future::BoxFuture<'static, Value> + Sync),
) -> Vec<Value> {
    let token = channels_token("uma", &["uni"]);
    // A publication first: the stream has its epoch.
    api("publish", json!({"channel": "uni", "data": {"n": 0}})).await;
    let mut c = UniClient::connect(kind, addr, json!({"token": token})).await;
    let connect = c.next_push().await.expect("connect push");
    let result = &connect["connect"];
    assert!(result["client"].is_string(), "{kind:?}: {connect}");
    let sub = &result["subs"]["uni"];
    assert_eq!(sub["recoverable"], true, "{kind:?}: {connect}");
    let epoch = sub["epoch"].as_str().expect("epoch").to_owned();
    let start = sub["offset"].as_u64().unwrap_or(0);

    let r = api("publish", json!({"channel": "uni", "data": {"n": 1}})).await;
    assert!(r.get("error").is_none(), "{r}");
    let p = c.next_push().await.expect("publication");
    assert_eq!(p["channel"], "uni", "{kind:?}: {p}");
    assert_eq!(p["pub"]["data"], json!({"n": 1}), "{kind:?}: {p}");
    assert_eq!(p["pub"]["offset"], start + 1, "{kind:?}: {p}");

    // A subscription made by the server API.
    let r = api("subscribe", json!({"user": "uma", "channel": "extra"})).await;
    assert!(r.get("error").is_none(), "{r}");
    let s = c.next_push().await.expect("subscribe push");
    assert_eq!(s["channel"], "extra", "{kind:?}: {s}");
    assert!(s.get("subscribe").is_some(), "{kind:?}: {s}");
    drop(c);

    // Missed while away, recovered from the connect request.
    for n in 2..=3 {
        api("publish", json!({"channel": "uni", "data": {"n": n}})).await;
    }
    let mut c = UniClient::connect(
        kind,
        addr,
        json!({"token": token, "subs": {"uni": {"recover": true, "offset": start + 1, "epoch": epoch}}}),
    )
    .await;
    let connect = c.next_push().await.expect("connect push");
    let sub = &connect["connect"]["subs"]["uni"];
    assert_eq!(sub["recovered"], true, "{kind:?}: {connect}");
    let recovered: Vec<Value> = sub["publications"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(
        recovered,
        [json!({"n": 2}), json!({"n": 3})],
        "{kind:?}: {connect}"
    );

    api(
        "disconnect",
        json!({"user": "uma", "disconnect": {"code": 4501, "reason": "bye"}}),
    )
    .await;
    let mut rest = Vec::new();
    while let Some(v) = c.next().await {
        rest.push(v);
    }
    rest
}

fn api_of(
    url: String,
    key: &'static str,
) -> impl Fn(&'static str, Value) -> futures::future::BoxFuture<'static, Value> + Sync {
    move |method, body| {
        let url = format!("{url}/{method}");
        Box::pin(async move {
            reqwest::Client::new()
                .post(url)
                .header("X-API-Key", key)
                .json(&body)
                .send()
                .await
                .expect("api")
                .json()
                .await
                .expect("api json")
        })
    }
}

#[tokio::test]
async fn unidirectional_transports() {
    let (_nats, _dir, h) = node(|c| {
        c.client.ping_interval = Duration::from_millis(500);
        c.client.pong_timeout = Duration::from_millis(300);
    })
    .await;
    let api = api_of(h.url("/api"), common::node::API_KEY);
    for kind in [Uni::HttpStream, Uni::Sse, Uni::WebSocket] {
        let rest = uni_flow(kind, h.addr, &api).await;
        assert_eq!(
            rest.last(),
            Some(&json!({"disconnect": {"code": 4501, "reason": "bye"}})),
            "{kind:?}: {rest:?}"
        );
    }
    // Pings come, no pong is expected: the connection outlives the pong
    // timeout many times over.
    let mut c = UniClient::connect(Uni::HttpStream, h.addr, json!({"token": h.token("pat")})).await;
    assert!(c.next().await.expect("connect")["connect"].is_object());
    for _ in 0..4 {
        assert_eq!(c.next().await, Some(json!({})), "a ping");
    }
    // A bad token ends the connection with a disconnect push.
    let mut c = UniClient::connect(Uni::Sse, h.addr, json!({"token": "bad"})).await;
    assert_eq!(
        c.next().await.expect("disconnect")["disconnect"]["code"],
        3500
    );
    assert_eq!(c.next().await, None);
}

/// The same flow against Centrifugo: what the raw clients above expect is
/// what the reference sends.
#[tokio::test]
async fn unidirectional_transports_against_centrifugo() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(&nats, dir.path().join("data"));
    let c = common::centrifugo::TestCentrifugo::start(&config, &[]).await;
    let api = api_of(format!("http://{}/api", c.addr), common::node::API_KEY);
    for kind in [Uni::HttpStream, Uni::Sse, Uni::WebSocket] {
        let rest = uni_flow(kind, c.addr, &api).await;
        assert_eq!(
            rest.last().map(|v| &v["disconnect"]["code"]),
            Some(&json!(4501)),
            "{kind:?}: {rest:?}"
        );
    }
}

/// The emulation requests of a session held by one edge, sent to another:
/// routed over NATS to the holder, in order, and answered in-stream.
#[tokio::test]
async fn emulation_requests_reach_the_session_on_another_edge() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(&nats, dir.path().join("data"));
    let serve = TestHerald::start(config.clone()).await;
    let mut edge_config = config.clone();
    edge_config.data_dir = dir.path().join("edge");
    let edge = herald::roles::start(herald::roles::Role::Edge, edge_config)
        .await
        .expect("edge starts");

    let (mut c, _) = StreamClient::connect(Kind::HttpStream, serve.addr, &serve.token("al")).await;
    // From now on the commands go to the other edge.
    c.addr = edge.addr;
    // The other edge learns of this one through its presence heartbeats.
    common::eventually("the other edge routes to the session", WAIT, || {
        let c = &c;
        async move { (c.emulate_raw("{}").await.0 == 204).then_some(()) }
    })
    .await;
    let sub = c.call("subscribe", json!({"channel": "far"})).await;
    assert_eq!(sub["subscribe"]["recoverable"], true, "{sub}");
    for n in 0..20 {
        c.send("publish", json!({"channel": "far", "data": {"n": n}}))
            .await;
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        got.push(c.publication("far").await["data"]["n"].as_u64().expect("n"));
    }
    assert_eq!(got, (0..20).collect::<Vec<_>>(), "in the order sent");

    // A node nobody knows: 404.
    let saved = std::mem::replace(&mut c.node, "no-such-node".into());
    assert_eq!(c.emulate_raw("{}").await.0, 404);
    c.node = saved;
    edge.stop().await;
}

/// A stream client that stops reading while its channel is busy: past
/// `client_queue_max_bytes` it is closed as slow (3008) and its HTTP
/// connection is cut, so the socket ends instead of staying open with
/// hyper stuck on a write it cannot finish (EOF well before the keep-alive
/// idle timeout, set far away here).
#[tokio::test]
async fn a_stream_client_that_stops_reading_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_nats, _dir, h) = node(|c| {
        c.client.queue_max_bytes = 64 * 1024;
        c.http.header_read_timeout = Duration::from_secs(120);
    })
    .await;
    let body = json!({"token": channels_token("slow", &["busy"])}).to_string();
    let mut tcp = tokio::net::TcpStream::connect(h.addr).await.expect("tcp");
    let request = format!(
        "POST /connection/uni_http_stream HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.expect("request");
    let mut head = vec![0u8; 4096];
    let n = tcp.read(&mut head).await.expect("response head");
    assert!(
        std::str::from_utf8(&head[..n]).is_ok_and(|t| t.starts_with("HTTP/1.1 200")),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    // Stop reading; flood the channel with far more than the queue holds.
    let big = "x".repeat(32 * 1024);
    for _ in 0..200 {
        h.api("publish", json!({"channel": "busy", "data": {"big": big}}))
            .await;
        let info = h.api("info", json!({})).await;
        if info["result"]["nodes"][0]["num_clients"] == 0 {
            break;
        }
    }
    common::eventually("the slow client is closed", WAIT, || async {
        let info = h.api("info", json!({})).await;
        (info["result"]["nodes"][0]["num_clients"] == 0).then_some(())
    })
    .await;
    // Now drain: the socket ends (cut), long before the idle timeout.
    let mut sink = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the connection of a slow stream client is cut"
    );
}

/// A graceful stop closes stream sessions like WebSocket ones: 3001
/// (shutdown, reconnect) said in-stream, then the end of the stream.
#[tokio::test]
async fn shutdown_is_said_in_stream() {
    let (_nats, _dir, mut h) = node(|_| {}).await;
    let (mut sse, _) = StreamClient::connect(Kind::Sse, h.addr, &h.token("a")).await;
    let mut uni = UniClient::connect(Uni::HttpStream, h.addr, json!({"token": h.token("b")})).await;
    assert!(uni.next_push().await.expect("connect")["connect"].is_object());
    let stopping = tokio::spawn(async move {
        h.stop().await;
        h
    });
    let mut last = Value::Null;
    while let Some(v) = sse.next().await {
        last = v;
    }
    assert_eq!(
        last,
        json!({"push": {"disconnect": {"code": 3001, "reason": "shutdown"}}})
    );
    let mut last = Value::Null;
    while let Some(v) = uni.next().await {
        last = v;
    }
    assert_eq!(
        last,
        json!({"disconnect": {"code": 3001, "reason": "shutdown"}})
    );
    let started = std::time::Instant::now();
    let _h = stopping.await.expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no wait on open streams"
    );
}

/// A page on an allowed origin may use the HTTP transports from another
/// origin: the preflight and the answers carry the CORS headers (as
/// Centrifugo's), a page on another origin gets 403 and none.
#[tokio::test]
async fn allowed_origins_get_cors_headers() {
    let (_nats, _dir, h) = node(|c| c.allowed_origins = vec!["https://app.example".into()]).await;
    let http = reqwest::Client::new();
    let preflight = http
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{}/emulation", h.addr),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("preflight");
    assert_eq!(preflight.status(), 200);
    let headers = preflight.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(headers["access-control-allow-headers"], "content-type");

    let first = json!({"id": 1, "connect": {"token": h.token("cors-user")}});
    let mut stream = http
        .post(format!("http://{}/connection/http_stream", h.addr))
        .header("origin", "https://app.example")
        .header("content-type", "application/json")
        .body(first.to_string())
        .send()
        .await
        .expect("http_stream");
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let chunk = tokio::time::timeout(WAIT, stream.chunk())
        .await
        .expect("connect reply in time")
        .expect("stream")
        .expect("a chunk");
    assert!(
        String::from_utf8_lossy(&chunk).contains("\"connect\""),
        "{chunk:?}"
    );

    let refused = http
        .post(format!("http://{}/connection/http_stream", h.addr))
        .header("origin", "https://evil.example")
        .header("content-type", "application/json")
        .body(first.to_string())
        .send()
        .await
        .expect("http_stream");
    assert_eq!(refused.status(), 403);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
