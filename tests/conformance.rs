//! Differential conformance (DESIGN I11): scripted sessions run against real
//! Centrifugo and against Herald, compared structurally.
//!
//! A script is a list of steps: open a WebSocket, send a frame, collect a
//! number of replies and pushes, wait for the close, call the server API.
//! Each step yields one observation per server. Before comparing, values
//! that legitimately differ are normalised: client ids and epochs become
//! `<client-N>` / `<epoch-N>` in order of first appearance (so "the same
//! epoch as before" still compares), the server `version` and token `ttl`
//! (seconds left, which may tick between the two runs) become
//! placeholders, and a step marked `shape` compares only the JSON types.
//! The replies and the pushes a step collects are compared as two lists
//! (see [`split`]).
//!
//! A step whose observations differ fails the run unless the step names an
//! entry of `docs/compatibility.md` (`differs("id")`): the intended
//! differences, and the known deviations not yet fixed. A named difference
//! that no longer occurs fails too, so the document cannot drift from
//! what Herald does; `every_documented_difference_is_exercised` checks the
//! other direction (no entry without a script step).
//!
//! Centrifugo and Herald (with nats-server) are started once per test, from
//! one Herald `Config` (`tests/common/centrifugo.rs` translates it), and
//! every script runs against both at the same time; scripts run one after
//! another and use their own channels and users. The ping scripts get their
//! own pair of servers with a short ping interval.
//!
//! The same scripts also run over the Protobuf protocol (subprotocol
//! `centrifuge-protobuf`): each JSON command a script sends is sent as the
//! equivalent Protobuf `Command` (a frame that is not such commands, bad
//! input, goes as it is), and each `Reply` received is compared as the JSON
//! the JSON protocol would carry (`herald_client::protobuf`). Over Protobuf a
//! documented difference may not show (the Protobuf messages have no field
//! for some of Herald's JSON extensions), so there it is not required to.
//!
//! And over HTTP-streaming and SSE with `/emulation` (JSON): a connection's first
//! frame opens `POST /connection/http_stream` (SSE: `GET /connection/sse`
//! with the frame in `cf_connect`), every later frame is one
//! `/emulation` request for the session the connect reply named, pings are
//! answered through `/emulation`, and the in-stream `disconnect` push is
//! observed as the close (code and reason) a WebSocket's Close frame gives.
//! Scripts that send binary frames or offer a subprotocol are not run there
//! ([`Script::runs_over`]); an oversized frame is an oversized request
//! there, refused with 413 by both.
//!
//! Knows nothing of either server's internals: only what goes over the
//! WebSocket, the HTTP stream and the HTTP API.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use common::centrifugo::TestCentrifugo;
use common::node::{API_KEY, SECRET, TestHerald, test_config};
use herald::config::{Config, NamespaceOptions};
use herald_client::protobuf as pbc;

/// How long a step waits for the replies and pushes it collects. Only a
/// step where one server sends fewer messages than the other waits this
/// long; it bounds a wait, it checks no timing.
const COLLECT: Duration = Duration::from_secs(5);
/// How long a `closed` step waits for the server to close: more than
/// [`STALE_TIMEOUT`], so a stale close is seen.
const CLOSE_WAIT: Duration = Duration::from_secs(6);
/// Both servers close a connection that sent no (successful) connect after
/// this; short, so the scripts that wait for it stay short.
const STALE_TIMEOUT: Duration = Duration::from_secs(3);
/// Per-connection subscription limit of both servers in these scripts.
const CHANNEL_LIMIT: usize = 4;
/// Recovery limit of both servers in these scripts.
const RECOVERY_LIMIT: usize = 5;
/// History page limit of both servers in these scripts.
const HISTORY_LIMIT: usize = 20;
/// Ping interval and pong timeout of the ping scripts' servers.
const PING_INTERVAL: Duration = Duration::from_secs(2);
const PONG_TIMEOUT: Duration = Duration::from_secs(1);
/// History size of the `bounded` namespace.
const BOUNDED_HISTORY: u64 = 3;
/// The namespaces where Centrifugo has presence and join/leave on.
const PRESENCE_NAMESPACES: &[&str] = &["room"];

// ---------------------------------------------------------------- tokens

fn now() -> u64 {
    herald::auth::now_secs()
}

fn jwt_with(secret: &str, alg: Algorithm, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a test token")
}

fn jwt(claims: Value) -> String {
    jwt_with(SECRET, Algorithm::HS256, claims)
}

/// A connection token for `user`, valid for an hour.
fn token(user: &str) -> String {
    jwt(json!({"sub": user, "exp": now() + 3600}))
}

/// A subscription token for `user` and `channel`, valid for an hour.
fn sub_token(user: &str, channel: &str) -> String {
    jwt(json!({"sub": user, "channel": channel, "exp": now() + 3600}))
}

// ---------------------------------------------------------------- scripts

enum Action {
    /// Opens connection `conn`, offering WebSocket subprotocol `protocol`.
    Open {
        conn: usize,
        protocol: Option<&'static str>,
    },
    /// Sends one text frame; `${name}` is replaced by a captured value.
    Send { conn: usize, text: String },
    /// Sends one binary frame.
    SendBinary { conn: usize, bytes: Vec<u8> },
    /// Collects `count` replies and pushes (pings left out and answered).
    Recv { conn: usize, count: usize },
    /// Collects everything until the server closes, and the close; with
    /// `pong: false` the server's pings go unanswered.
    Closed { conn: usize, pong: bool },
    /// Waits for `count` server pings, answering them.
    Pings { conn: usize, count: usize },
    /// Calls the server API.
    Api { method: &'static str, body: Value },
}

struct Step {
    action: Action,
    /// `docs/compatibility.md` id of a documented difference here.
    differs: Option<&'static str>,
    /// Compare only JSON types, not values.
    shape: bool,
    /// (name, JSON pointer into this step's raw observation): captured per
    /// server for later `${name}` in a frame.
    capture: Vec<(&'static str, &'static str)>,
}

struct Script {
    name: &'static str,
    steps: Vec<Step>,
    /// Not run over Protobuf: what it sends has no Protobuf equivalent.
    json_only: bool,
}

/// What a script's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Json,
    Protobuf,
    /// JSON over `POST /connection/http_stream` and `/emulation`.
    HttpStream,
    /// JSON over `GET /connection/sse?cf_connect=…` and `/emulation`.
    Sse,
}

impl Script {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            steps: Vec::new(),
            json_only: false,
        }
    }

    /// Whether it runs over `wire`: binary frames and subprotocols exist on
    /// WebSockets only.
    fn runs_over(&self, wire: Wire) -> bool {
        match wire {
            Wire::Json => true,
            Wire::Protobuf => !self.json_only,
            Wire::HttpStream | Wire::Sse => !self.steps.iter().any(|s| {
                matches!(
                    s.action,
                    Action::SendBinary { .. }
                        | Action::Open {
                            protocol: Some(_),
                            ..
                        }
                )
            }),
        }
    }

    /// Runs over JSON only (e.g. a JSON value of the wrong type, which a
    /// Protobuf field cannot carry).
    fn json_only(mut self) -> Self {
        self.json_only = true;
        self
    }

    fn step(mut self, action: Action) -> Self {
        self.steps.push(Step {
            action,
            differs: None,
            shape: false,
            capture: Vec::new(),
        });
        self
    }

    fn last(&mut self) -> &mut Step {
        self.steps.last_mut().expect("a step to qualify")
    }

    fn open(self, conn: usize) -> Self {
        self.step(Action::Open {
            conn,
            protocol: None,
        })
    }

    fn open_protocol(self, conn: usize, protocol: &'static str) -> Self {
        self.step(Action::Open {
            conn,
            protocol: Some(protocol),
        })
    }

    fn send(self, conn: usize, command: Value) -> Self {
        self.send_text(conn, &command.to_string())
    }

    fn send_text(self, conn: usize, text: &str) -> Self {
        self.step(Action::Send {
            conn,
            text: text.to_string(),
        })
    }

    fn send_binary(self, conn: usize, bytes: Vec<u8>) -> Self {
        self.step(Action::SendBinary { conn, bytes })
    }

    fn recv(self, conn: usize, count: usize) -> Self {
        self.step(Action::Recv { conn, count })
    }

    /// Sends `command` and collects `count` messages.
    fn call(self, conn: usize, command: Value, count: usize) -> Self {
        self.send(conn, command).recv(conn, count)
    }

    fn closed(self, conn: usize) -> Self {
        self.step(Action::Closed { conn, pong: true })
    }

    /// Stops answering pings and collects until the server closes.
    fn closed_without_pong(self, conn: usize) -> Self {
        self.step(Action::Closed { conn, pong: false })
    }

    fn pings(self, conn: usize, count: usize) -> Self {
        self.step(Action::Pings { conn, count })
    }

    fn api(self, method: &'static str, body: Value) -> Self {
        self.step(Action::Api { method, body })
    }

    /// Opens `conn` and connects it with `token`, collecting the reply.
    fn connect(self, conn: usize, token: &str) -> Self {
        self.open(conn)
            .call(conn, json!({"id": 1, "connect": {"token": token}}), 1)
    }

    /// The last step differs as `docs/compatibility.md` entry `id` says.
    fn differs(mut self, id: &'static str) -> Self {
        self.last().differs = Some(id);
        self
    }

    /// The last step is compared by JSON types only.
    fn shape(mut self) -> Self {
        self.last().shape = true;
        self
    }

    /// Captures the value at `pointer` of the last step's observation.
    fn capture(mut self, name: &'static str, pointer: &'static str) -> Self {
        self.last().capture.push((name, pointer));
        self
    }
}

fn scripts() -> Vec<Script> {
    let mut s = Vec::new();
    let expired = now() - 120;

    // -- connect
    s.push(
        Script::new("connect with a token: reply fields, ping/pong")
            .connect(0, &token("u-connect")),
    );
    s.push(
        Script::new("connect with a token without exp").connect(0, &jwt(json!({"sub": "u-noexp"}))),
    );
    s.push(
        Script::new("connect with an expired token: error 109, then the socket closes")
            .connect(0, &jwt(json!({"sub": "u-exp", "exp": expired})))
            .closed(0),
    );
    s.push(
        Script::new("connect with a bad signature: close 3500")
            .open(0)
            .send(
                0,
                json!({"id": 1, "connect": {"token": jwt_with("not-the-secret", Algorithm::HS256, json!({"sub": "u-sig", "exp": now() + 3600}))}}),
            )
            .closed(0),
    );
    let none_token = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"u-none","exp":{}}}"#, now() + 3600))
    );
    s.push(
        Script::new("connect with alg none: close 3500")
            .open(0)
            .send(0, json!({"id": 1, "connect": {"token": none_token}}))
            .closed(0),
    );
    for (alg, user) in [(Algorithm::HS384, "u-384"), (Algorithm::HS512, "u-512")] {
        s.push(Script::new("connect with HS384 and HS512 tokens").connect(
            0,
            &jwt_with(SECRET, alg, json!({"sub": user, "exp": now() + 3600})),
        ));
    }
    s.push(
        Script::new("connect with garbage as token: close 3500")
            .open(0)
            .send(0, json!({"id": 1, "connect": {"token": "not.a.jwt"}}))
            .closed(0),
    );
    s.push(
        Script::new("connect without a token")
            .open(0)
            .send(0, json!({"id": 1, "connect": {}}))
            .closed(0),
    );
    s.push(
        Script::new("an anonymous connection (empty sub): only where the namespace allows it")
            .connect(0, &jwt(json!({"sub": "", "exp": now() + 3600})))
            .call(
                0,
                json!({"id": 2, "subscribe": {"channel": "anon-denied"}}),
                1,
            )
            .call(
                0,
                json!({"id": 3, "history": {"channel": "anon-denied", "limit": 1}}),
                1,
            )
            .call(
                0,
                json!({"id": 4, "publish": {"channel": "anon-denied", "data": 1}}),
                1,
            )
            .call(
                0,
                json!({"id": 5, "subscribe": {"channel": "public:anon"}}),
                1,
            )
            .call(
                0,
                json!({"id": 6, "publish": {"channel": "public:anon", "data": {"a": 1}}}),
                2,
            )
            .differs("publish-reply-offset-epoch")
            .call(
                0,
                json!({"id": 7, "history": {"channel": "public:anon", "limit": 5}}),
                1,
            )
            .differs("history-first-publication-epoch")
            .call(0, json!({"id": 8, "subscribe": {"channel": "#u-anon"}}), 1),
    );
    s.push(
        Script::new("connect twice on one connection")
            .connect(0, &token("u-twice"))
            .send(0, json!({"id": 2, "connect": {"token": token("u-twice")}}))
            .closed(0),
    );
    s.push(
        Script::new("a command before connect")
            .open(0)
            .send(
                0,
                json!({"id": 1, "subscribe": {"channel": "before-connect"}}),
            )
            .closed(0),
    );
    s.push(
        Script::new("a client ping command")
            .connect(0, &token("u-pingcmd"))
            .send(0, json!({"id": 2, "ping": {}}))
            .recv(0, 1)
            .differs("client-ping-command"),
    );
    s.push(
        Script::new("several commands in one frame")
            .open(0)
            .send_text(
                0,
                &format!(
                    "{}\n{}\n{}",
                    json!({"id": 1, "connect": {"token": token("u-frame")}}),
                    json!({"id": 2, "subscribe": {"channel": "feed:frame-a"}}),
                    json!({"id": 3, "publish": {"channel": "feed:frame-a", "data": {"f": 1}}}),
                ),
            )
            .recv(0, 4),
    );

    // -- subscribe and unsubscribe
    s.push(
        Script::new("subscribe errors: unknown namespace, private, user-limited, too long")
            .connect(0, &token("u-sub"))
            .call(0, json!({"id": 2, "subscribe": {"channel": "nope:x"}}), 1)
            .call(0, json!({"id": 3, "subscribe": {"channel": "secret:x"}}), 1)
            .call(0, json!({"id": 4, "subscribe": {"channel": "$x"}}), 1)
            .call(
                0,
                json!({"id": 5, "subscribe": {"channel": "dm:#u-a,u-b"}}),
                1,
            )
            .call(
                0,
                json!({"id": 6, "subscribe": {"channel": "x".repeat(256)}}),
                1,
            ),
    );
    s.push(
        Script::new("subscribe to an empty channel name")
            .connect(0, &token("u-sub-empty"))
            .send(0, json!({"id": 2, "subscribe": {"channel": ""}}))
            .closed(0),
    );
    s.push(
        Script::new("subscribe twice: 105; unsubscribe, unsubscribe again")
            .connect(0, &token("u-sub2"))
            .call(
                0,
                json!({"id": 2, "subscribe": {"channel": "feed:twice"}}),
                1,
            )
            .call(
                0,
                json!({"id": 3, "subscribe": {"channel": "feed:twice"}}),
                1,
            )
            .call(
                0,
                json!({"id": 4, "unsubscribe": {"channel": "feed:twice"}}),
                1,
            )
            .call(
                0,
                json!({"id": 5, "unsubscribe": {"channel": "feed:twice"}}),
                1,
            )
            .call(
                0,
                json!({"id": 6, "unsubscribe": {"channel": "feed:never"}}),
                1,
            ),
    );
    let mut limit = Script::new("per-connection channel limit: 106").connect(0, &token("u-limit"));
    for i in 0..=CHANNEL_LIMIT {
        limit = limit.call(
            0,
            json!({"id": 2 + i, "subscribe": {"channel": format!("feed:limit-{i}")}}),
            1,
        );
    }
    s.push(limit);

    // -- publish
    s.push(
        Script::new("publish from a client: reply and push")
            .connect(0, &token("u-pub-a"))
            .connect(1, &token("u-pub-b"))
            .call(1, json!({"id": 2, "subscribe": {"channel": "feed:pub"}}), 1)
            .call(
                0,
                json!({"id": 2, "publish": {"channel": "feed:pub", "data": {"text": "hi"}}}),
                1,
            )
            .recv(1, 1),
    );
    s.push(
        Script::new("publish into a history channel: reply with offset and epoch")
            .connect(0, &token("u-pub-h"))
            .call(0, json!({"id": 2, "subscribe": {"channel": "pub-h"}}), 1)
            .call(
                0,
                json!({"id": 3, "publish": {"channel": "pub-h", "data": {"n": 1}}}),
                2,
            )
            .differs("publish-reply-offset-epoch")
            .call(
                0,
                json!({"id": 4, "publish": {"channel": "pub-h", "data": {"n": 2}}}),
                2,
            )
            .differs("publish-reply-offset-epoch"),
    );
    s.push(
        Script::new("publish errors: namespace without client publish, private, unknown")
            .connect(0, &token("u-pub-e"))
            .call(
                0,
                json!({"id": 2, "publish": {"channel": "noclient:x", "data": 1}}),
                1,
            )
            .call(
                0,
                json!({"id": 3, "publish": {"channel": "secret:x", "data": 1}}),
                1,
            )
            .call(
                0,
                json!({"id": 4, "publish": {"channel": "nope:x", "data": 1}}),
                1,
            ),
    );

    // -- history
    let mut hist = Script::new("history: limit, since, reverse, wrong epoch, beyond limits");
    for n in 1..=5 {
        hist = hist.api("publish", json!({"channel": "hist-a", "data": {"n": n}}));
    }
    hist = hist
        .connect(0, &token("u-hist"))
        .call(0, json!({"id": 2, "history": {"channel": "hist-a"}}), 1)
        .capture("epoch", "/replies/0/history/epoch")
        .call(
            0,
            json!({"id": 3, "history": {"channel": "hist-a", "limit": 2}}),
            1,
        )
        .differs("history-first-publication-epoch")
        .send_text(
            0,
            r#"{"id":4,"history":{"channel":"hist-a","limit":2,"since":{"offset":2,"epoch":"${epoch}"}}}"#,
        )
        .recv(0, 1)
        .call(
            0,
            json!({"id": 5, "history": {"channel": "hist-a", "limit": 2, "reverse": true}}),
            1,
        )
        .send_text(
            0,
            r#"{"id":6,"history":{"channel":"hist-a","limit":10,"since":{"offset":5,"epoch":"${epoch}"},"reverse":true}}"#,
        )
        .recv(0, 1)
        .differs("history-first-publication-epoch")
        .call(
            0,
            json!({"id": 7, "history": {"channel": "hist-a", "limit": 2, "since": {"offset": 1, "epoch": "wrong"}}}),
            1,
        )
        .call(
            0,
            json!({"id": 8, "history": {"channel": "hist-a", "limit": HISTORY_LIMIT + 1}}),
            1,
        )
        .differs("history-first-publication-epoch")
        .call(
            0,
            json!({"id": 9, "history": {"channel": "hist-a", "limit": -1}}),
            1,
        )
        .differs("history-first-publication-epoch")
        .send_text(
            0,
            r#"{"id":10,"history":{"channel":"hist-a","limit":2,"since":{"offset":9,"epoch":"${epoch}"}}}"#,
        )
        .recv(0, 1)
        .call(
            0,
            json!({"id": 11, "history": {"channel": "feed:nohist", "limit": 2}}),
            1,
        )
        .call(
            0,
            json!({"id": 12, "history": {"channel": "secret:h", "limit": 2}}),
            1,
        )
        .call(
            0,
            json!({"id": 13, "history": {"channel": "nope:h", "limit": 2}}),
            1,
        );
    s.push(hist);
    let mut bounded = Script::new("bounded history: the newest served, older not recoverable");
    bounded = bounded
        .api("publish", json!({"channel": "bounded:a", "data": {"n": 1}}))
        .capture("epoch", "/body/result/epoch");
    for n in 2..=5 {
        bounded = bounded.api("publish", json!({"channel": "bounded:a", "data": {"n": n}}));
    }
    bounded = bounded
        .connect(0, &token("u-bounded"))
        .call(
            0,
            json!({"id": 2, "history": {"channel": "bounded:a", "limit": 10}}),
            1,
        )
        .call(
            0,
            json!({"id": 3, "history": {"channel": "bounded:a", "limit": 10, "reverse": true}}),
            1,
        )
        .send_text(
            0,
            r#"{"id":4,"history":{"channel":"bounded:a","limit":10,"since":{"offset":1,"epoch":"${epoch}"}}}"#,
        )
        .recv(0, 1)
        .send_text(
            0,
            r#"{"id":5,"history":{"channel":"bounded:a","limit":10,"since":{"offset":3,"epoch":"${epoch}"}}}"#,
        )
        .recv(0, 1)
        .send_text(
            0,
            r#"{"id":6,"subscribe":{"channel":"bounded:a","recover":true,"offset":1,"epoch":"${epoch}"}}"#,
        )
        .recv(0, 1)
        .call(0, json!({"id": 7, "unsubscribe": {"channel": "bounded:a"}}), 1)
        .send_text(
            0,
            r#"{"id":8,"subscribe":{"channel":"bounded:a","recover":true,"offset":2,"epoch":"${epoch}"}}"#,
        )
        .recv(0, 1)
        .api("history", json!({"channel": "bounded:a", "limit": 10}));
    s.push(bounded);
    s.push(
        Script::new("history of a history channel with no publications")
            .connect(0, &token("u-hist-e"))
            .call(
                0,
                json!({"id": 2, "history": {"channel": "hist-empty", "limit": 10}}),
                1,
            ),
    );

    // -- recovery
    let mut rec = Script::new("recovery: recovered, too many missed, wrong epoch")
        .connect(0, &token("u-rec"))
        .api("publish", json!({"channel": "rec-a", "data": {"n": 0}}))
        .call(0, json!({"id": 2, "subscribe": {"channel": "rec-a"}}), 1)
        .capture("epoch", "/replies/0/subscribe/epoch")
        .call(0, json!({"id": 3, "unsubscribe": {"channel": "rec-a"}}), 1);
    for n in 1..=3 {
        rec = rec.api("publish", json!({"channel": "rec-a", "data": {"n": n}}));
    }
    rec = rec
        .send_text(
            0,
            r#"{"id":4,"subscribe":{"channel":"rec-a","recover":true,"offset":1,"epoch":"${epoch}"}}"#,
        )
        .recv(0, 1)
        .call(0, json!({"id": 5, "unsubscribe": {"channel": "rec-a"}}), 1);
    for n in 4..=(4 + RECOVERY_LIMIT) {
        rec = rec.api("publish", json!({"channel": "rec-a", "data": {"n": n}}));
    }
    rec = rec
        .send_text(
            0,
            r#"{"id":6,"subscribe":{"channel":"rec-a","recover":true,"offset":4,"epoch":"${epoch}"}}"#,
        )
        .recv(0, 1)
        .call(0, json!({"id": 7, "unsubscribe": {"channel": "rec-a"}}), 1)
        .call(
            0,
            json!({"id": 8, "subscribe": {"channel": "rec-a", "recover": true, "offset": 1, "epoch": "wrong"}}),
            1,
        );
    s.push(rec);

    // -- refresh
    s.push(
        Script::new("refresh with a new token")
            .connect(0, &token("u-ref"))
            .call(0, json!({"id": 2, "refresh": {"token": token("u-ref")}}), 1),
    );
    s.push(
        Script::new("refresh with an expired token")
            .connect(0, &token("u-ref-exp"))
            .send(
                0,
                json!({"id": 2, "refresh": {"token": jwt(json!({"sub": "u-ref-exp", "exp": expired}))}}),
            )
            .closed(0),
    );
    s.push(
        Script::new("refresh with another user's token")
            .connect(0, &token("u-ref-other"))
            .send(
                0,
                json!({"id": 2, "refresh": {"token": token("u-someone")}}),
            )
            .closed(0),
    );

    // -- private channels
    s.push(
        Script::new("private channel: subscription token, sub_refresh, publish")
            .connect(0, &token("u-priv"))
            .call(
                0,
                json!({"id": 2, "subscribe": {"channel": "secret:a", "token": sub_token("u-priv", "secret:a")}}),
                1,
            )
            .call(
                0,
                json!({"id": 3, "sub_refresh": {"channel": "secret:a", "token": sub_token("u-priv", "secret:a")}}),
                1,
            )
            .call(
                0,
                json!({"id": 4, "subscribe": {"channel": "$b", "token": sub_token("u-priv", "$b")}}),
                1,
            )
            .call(
                0,
                json!({"id": 5, "publish": {"channel": "secret:a", "data": "p"}}),
                2,
            )
            .differs("publish-reply-offset-epoch"),
    );
    s.push(
        Script::new("private channel: an expired subscription token is 109")
            .connect(0, &token("u-priv-exp"))
            .call(
                0,
                json!({"id": 2, "subscribe": {"channel": "secret:e", "token": jwt(json!({"sub": "u-priv-exp", "channel": "secret:e", "exp": expired}))}}),
                1,
            ),
    );
    s.push(
        Script::new("private channel: sub_refresh with an expired token")
            .connect(0, &token("u-priv-sre"))
            .call(
                0,
                json!({"id": 2, "subscribe": {"channel": "secret:sre", "token": sub_token("u-priv-sre", "secret:sre")}}),
                1,
            )
            .call(
                0,
                json!({"id": 3, "sub_refresh": {"channel": "secret:sre", "token": jwt(json!({"sub": "u-priv-sre", "channel": "secret:sre", "exp": expired}))}}),
                1,
            ),
    );
    s.push(
        Script::new("private channel: a subscription token for another channel")
            .connect(0, &token("u-priv-w"))
            .send(
                0,
                json!({"id": 2, "subscribe": {"channel": "secret:w1", "token": sub_token("u-priv-w", "secret:w2")}}),
            )
            .closed(0),
    );
    s.push(
        Script::new("private channel: a subscription token of another user")
            .connect(0, &token("u-priv-u"))
            .send(
                0,
                json!({"id": 2, "subscribe": {"channel": "secret:u", "token": sub_token("u-else", "secret:u")}}),
            )
            .closed(0),
    );

    // -- user-limited and personal channels
    s.push(
        Script::new("user-limited channel: members subscribe and publish, others denied")
            .connect(0, &token("u-dm-a"))
            .connect(1, &token("u-dm-b"))
            .connect(2, &token("u-dm-c"))
            .call(
                1,
                json!({"id": 2, "subscribe": {"channel": "dm:#u-dm-a,u-dm-b"}}),
                1,
            )
            .call(
                2,
                json!({"id": 2, "subscribe": {"channel": "dm:#u-dm-a,u-dm-b"}}),
                1,
            )
            .call(
                0,
                json!({"id": 2, "publish": {"channel": "dm:#u-dm-a,u-dm-b", "data": 2}}),
                1,
            )
            .differs("publish-reply-offset-epoch")
            .recv(1, 1),
    );
    s.push(
        Script::new("user-limited channel: a non-member publishes")
            .connect(0, &token("u-dm-x"))
            .call(
                0,
                json!({"id": 2, "publish": {"channel": "dm:#u-dm-y,u-dm-z", "data": 1}}),
                1,
            )
            .differs("publish-needs-subscribe-permission"),
    );
    s.push(
        Script::new("personal channel: its user subscribes, others denied, server API publishes")
            .connect(0, &token("u-me"))
            .connect(1, &token("u-notme"))
            .call(0, json!({"id": 2, "subscribe": {"channel": "#u-me"}}), 1)
            .call(1, json!({"id": 2, "subscribe": {"channel": "#u-me"}}), 1)
            .api("publish", json!({"channel": "#u-me", "data": {"to": "me"}}))
            .recv(0, 1)
            .call(
                0,
                json!({"id": 3, "publish": {"channel": "#u-me", "data": 1}}),
                1,
            )
            .differs("personal-channel-client-publish"),
    );

    // -- presence
    s.push(
        Script::new("presence and presence_stats")
            .connect(0, &token("u-pres"))
            // The reply and the join push (Centrifugo; which comes first is
            // not specified), compared by shape.
            .call(0, json!({"id": 2, "subscribe": {"channel": "room:p"}}), 2)
            .shape()
            .call(0, json!({"id": 3, "presence": {"channel": "room:p"}}), 1)
            .call(
                0,
                json!({"id": 4, "presence_stats": {"channel": "room:p"}}),
                1,
            ),
    );

    // -- server-side subscriptions
    s.push(
        Script::new("server-side subscriptions from the channels claim")
            .connect(
                0,
                &jwt(
                    json!({"sub": "u-ss", "exp": now() + 3600, "channels": ["ss-a", "feed:ss-b"]}),
                ),
            )
            .api(
                "publish",
                json!({"channel": "feed:ss-b", "data": {"ss": 1}}),
            )
            .recv(0, 1)
            .api("publish", json!({"channel": "ss-a", "data": {"ss": 2}}))
            .recv(0, 1),
    );

    // -- server API
    s.push(
        Script::new("server API: publish, broadcast, history, errors")
            .connect(0, &token("u-api"))
            .call(0, json!({"id": 2, "subscribe": {"channel": "api-a"}}), 1)
            .api("publish", json!({"channel": "api-a", "data": {"n": 1}}))
            .recv(0, 1)
            .api(
                "broadcast",
                json!({"channels": ["api-a", "api-b"], "data": {"n": 2}}),
            )
            .recv(0, 1)
            .api("history", json!({"channel": "api-a", "limit": 10}))
            .api(
                "history",
                json!({"channel": "api-a", "limit": 1, "reverse": true}),
            )
            .api("history", json!({"channel": "api-empty", "limit": 1}))
            .api("publish", json!({"channel": "nope:x", "data": 1}))
            .api("publish", json!({"channel": "api-a"}))
            .api("history", json!({"channel": "feed:api-nohist", "limit": 1})),
    );
    s.push(
        Script::new("server API: info")
            .api("info", json!({}))
            .shape()
            .differs("info-node-metrics"),
    );
    s.push(
        Script::new("server API: subscribe, unsubscribe, refresh, disconnect a user")
            .connect(0, &token("u-ctl"))
            .api("subscribe", json!({"user": "u-ctl", "channel": "feed:ctl"}))
            .recv(0, 1)
            .api(
                "unsubscribe",
                json!({"user": "u-ctl", "channel": "feed:ctl"}),
            )
            .recv(0, 1)
            .api(
                "refresh",
                json!({"user": "u-ctl", "expire_at": now() + 7200}),
            )
            .recv(0, 1)
            .api(
                "disconnect",
                json!({"user": "u-ctl", "disconnect": {"code": 4501, "reason": "bye"}}),
            )
            .closed(0),
    );
    s.push(
        Script::new("server API: disconnect with the default code")
            .connect(0, &token("u-ctl2"))
            .api("disconnect", json!({"user": "u-ctl2"}))
            .closed(0),
    );

    // -- bad input
    s.push(
        Script::new("bad input: not JSON")
            .connect(0, &token("u-bad1"))
            .send_text(0, "{not json")
            .closed(0),
    );
    s.push(
        Script::new("bad input: unknown method")
            .connect(0, &token("u-bad2"))
            .send(0, json!({"id": 2, "frobnicate": {}}))
            .closed(0),
    );
    s.push(
        Script::new("bad input: a binary frame")
            .connect(0, &token("u-bad3"))
            .send_binary(0, vec![1, 2, 3])
            .closed(0),
    );
    s.push(
        Script::new("bad input: a 70 KB frame")
            .connect(0, &token("u-bad4"))
            .send(
                0,
                json!({"id": 2, "publish": {"channel": "feed:big", "data": "x".repeat(70_000)}}),
            )
            .closed(0),
    );
    s.push(
        Script::new("bad input: a 200 KB frame")
            .connect(0, &token("u-bad5"))
            .send(
                0,
                json!({"id": 2, "publish": {"channel": "feed:big", "data": "x".repeat(200_000)}}),
            )
            .closed(0),
    );

    // -- more bad input and edge cases of commands
    s.push(
        Script::new("a command without an id")
            .open(0)
            .send(0, json!({"connect": {"token": token("u-noid")}}))
            .closed(0),
    );
    s.push(
        Script::new("a blank frame")
            .connect(0, &token("u-blank"))
            .send_text(0, "\n \n")
            .closed(0),
    );
    s.push(
        Script::new("a pong before connect")
            .open(0)
            .send_text(0, "{}")
            .send(0, json!({"id": 1, "connect": {"token": token("u-pong")}}))
            .recv(0, 1),
    );
    s.push(
        Script::new("publish without data")
            .connect(0, &token("u-nodata"))
            .send(0, json!({"id": 2, "publish": {"channel": "feed:nodata"}}))
            .recv(0, 1),
    );
    s.push(
        Script::new("history with a limit of the wrong type")
            .json_only()
            .connect(0, &token("u-badtype"))
            .send(
                0,
                json!({"id": 2, "history": {"channel": "hist-t", "limit": "ten"}}),
            )
            .closed(0),
    );
    s.push(
        Script::new("rpc and send without a handler")
            .connect(0, &token("u-rpc"))
            .call(0, json!({"id": 2, "rpc": {"method": "m", "data": {}}}), 1)
            .send(0, json!({"send": {"data": {"x": 1}}}))
            .closed(0),
    );
    s.push(
        Script::new("subscribe with recover into a channel without history")
            .connect(0, &token("u-rec-nohist"))
            .call(
                0,
                json!({"id": 2, "subscribe": {"channel": "feed:rec", "recover": true, "offset": 3, "epoch": "e"}}),
                1,
            ),
    );
    s.push(
        Script::new("subscribe with recover from a future offset, and with an empty epoch")
            .api("publish", json!({"channel": "rec-f", "data": 1}))
            .capture("epoch", "/body/result/epoch")
            .connect(0, &token("u-rec-f"))
            .send_text(
                0,
                r#"{"id":2,"subscribe":{"channel":"rec-f","recover":true,"offset":7,"epoch":"${epoch}"}}"#,
            )
            .recv(0, 1)
            .call(0, json!({"id": 3, "unsubscribe": {"channel": "rec-f"}}), 1)
            .call(
                0,
                json!({"id": 4, "subscribe": {"channel": "rec-f", "recover": true, "offset": 0, "epoch": ""}}),
                1,
            )
            .differs("history-first-publication-epoch"),
    );
    s.push(
        Script::new("subscribe asking for delta, a flag, a type")
            .connect(0, &token("u-fields"))
            .call(
                0,
                json!({"id": 2, "subscribe": {"channel": "feed:delta", "delta": "fossil"}}),
                1,
            )
            .call(
                0,
                json!({"id": 3, "subscribe": {"channel": "feed:flag", "flag": 1}}),
                1,
            )
            .call(
                0,
                json!({"id": 4, "subscribe": {"channel": "feed:type", "type": 1}}),
                1,
            )
            // The same in a history channel (with a publication, so it has
            // an epoch), and a publication after: no delta, no filtering.
            .api("publish", json!({"channel": "delta-h", "data": {"n": 1}}))
            .call(
                0,
                json!({"id": 5, "subscribe": {"channel": "delta-h", "delta": "fossil", "flag": 1}}),
                1,
            )
            .api("publish", json!({"channel": "delta-h", "data": {"n": 2}}))
            .recv(0, 1)
            .call(
                0,
                json!({"id": 6, "subscribe": {"channel": "delta-h2", "type": 1}}),
                1,
            ),
    );
    s.push(
        Script::new("server-side subscription recovered at connect")
            .api("publish", json!({"channel": "ssr", "data": {"n": 1}}))
            .capture("epoch", "/body/result/epoch")
            .api("publish", json!({"channel": "ssr", "data": {"n": 2}}))
            .open(0)
            .send_text(
                0,
                &format!(
                    r#"{{"id":1,"connect":{{"token":"{}","subs":{{"ssr":{{"recover":true,"offset":1,"epoch":"${{epoch}}"}}}}}}}}"#,
                    jwt(json!({"sub": "u-ssr", "exp": now() + 3600, "channels": ["ssr"]}))
                ),
            )
            .recv(0, 1),
    );
    s.push(
        Script::new("server API: idempotent publish")
            .api(
                "publish",
                json!({"channel": "idem", "data": {"n": 1}, "idempotency_key": "k1"}),
            )
            .api(
                "publish",
                json!({"channel": "idem", "data": {"n": 1}, "idempotency_key": "k1"}),
            )
            .api("history", json!({"channel": "idem", "limit": 10})),
    );
    s.push(
        Script::new("server API: bad requests")
            .api("publish", json!({"data": 1}))
            .api("frobnicate", json!({}))
            .differs("api-error-body")
            .api("history", json!({"channel": "hist-x", "limit": "ten"}))
            .differs("api-error-body"),
    );

    // -- transport
    s.push(
        Script::new("the centrifuge-protobuf subprotocol")
            .open_protocol(0, "centrifuge-protobuf")
            .call(
                0,
                json!({"id": 1, "connect": {"token": token("u-protobuf")}}),
                1,
            )
            .call(0, json!({"id": 2, "subscribe": {"channel": "feed:pb"}}), 1)
            .call(
                0,
                json!({"id": 3, "publish": {"channel": "feed:pb", "data": {"x": [1, 2.5]}}}),
                2,
            ),
    );
    s.push(
        Script::new("Protobuf: a publish whose data is not JSON")
            .open_protocol(0, "centrifuge-protobuf")
            .call(
                0,
                json!({"id": 1, "connect": {"token": token("u-protobuf-bytes")}}),
                1,
            )
            .send_binary(0, {
                use prost::Message as _;
                pbc::pb::Command {
                    id: 2,
                    publish: Some(pbc::pb::PublishRequest {
                        channel: "feed:bytes".into(),
                        data: bytes::Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]),
                    }),
                    ..pbc::pb::Command::default()
                }
                .encode_length_delimited_to_vec()
            })
            .recv(0, 1)
            .differs("protobuf-binary-data"),
    );
    // -- delta compression: fossil deltas byte for byte, recovery, refusals
    let state = |tick: u64| {
        json!({"players": [{"id": 1, "name": "alpha-player-one", "x": tick * 3},
                           {"id": 2, "name": "beta-player-two", "x": 7}],
               "status": "running", "tick": tick})
    };
    let mut delta =
        Script::new("delta: fossil deltas live and in recovery; not allowed is ignored")
            .connect(0, &token("u-delta"))
            .call(
                0,
                json!({"id": 2, "subscribe": {"channel": "delta:a", "delta": "fossil"}}),
                1,
            )
            .call(
                0,
                json!({"id": 3, "subscribe": {"channel": "delta-off", "delta": "fossil"}}),
                1,
            );
    for tick in 1..=3 {
        delta = delta
            .api(
                "publish",
                json!({"channel": "delta:a", "data": state(tick)}),
            )
            .recv(0, 1);
    }
    delta = delta
        .api(
            "publish",
            json!({"channel": "delta:a", "data": {"reset": true}}),
        )
        .recv(0, 1)
        .api("publish", json!({"channel": "delta-off", "data": state(1)}))
        .recv(0, 1);
    for tick in 4..=6 {
        delta = delta
            .api(
                "publish",
                json!({"channel": "delta:a", "data": state(tick)}),
            )
            .recv(0, 1);
    }
    delta = delta
        .call(
            0,
            json!({"id": 4, "history": {"channel": "delta:a", "limit": 0}}),
            1,
        )
        .capture("epoch", "/replies/0/history/epoch")
        .connect(1, &token("u-delta"))
        .send_text(
            1,
            r#"{"id":2,"subscribe":{"channel":"delta:a","delta":"fossil","recover":true,"offset":4,"epoch":"${epoch}"}}"#,
        )
        .recv(1, 1);
    s.push(delta);
    s.push(
        Script::new("delta: an unknown delta type closes with 3501")
            .connect(0, &token("u-delta-unknown"))
            .send(
                0,
                json!({"id": 2, "subscribe": {"channel": "delta:b", "delta": "zstd"}}),
            )
            .closed(0),
    );
    s.push(
        Script::new("an unknown subprotocol")
            .open_protocol(0, "centrifuge-unknown")
            .call(
                0,
                json!({"id": 1, "connect": {"token": token("u-subproto")}}),
                1,
            ),
    );
    s
}

/// Scripts for servers that ping every [`PING_INTERVAL`].
fn ping_scripts() -> Vec<Script> {
    vec![
        Script::new("pings are answered; an unanswered one closes with 3012")
            .connect(0, &token("u-ping"))
            .pings(0, 2)
            .closed_without_pong(0),
    ]
}

/// Scripts for servers that subscribe every user to their personal channel
/// on connect (`client_subscribe_to_user_personal_channel`).
fn personal_scripts() -> Vec<Script> {
    vec![
        Script::new("every user subscribed to their personal channel on connect")
            .api("publish", json!({"channel": "#u-auto", "data": {"n": 1}}))
            .connect(0, &token("u-auto"))
            .api("publish", json!({"channel": "#u-auto", "data": {"n": 2}}))
            .recv(0, 1)
            .connect(
                1,
                &jwt(json!({"sub": "u-auto2", "exp": now() + 3600, "channels": ["#u-auto2", "feed:auto"]})),
            )
            .call(0, json!({"id": 2, "subscribe": {"channel": "#u-auto"}}), 1)
            .connect(2, &jwt(json!({"sub": "", "exp": now() + 3600}))),
    ]
}

// ---------------------------------------------------------------- running

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One script connection's transport.
enum Io {
    Ws(Ws),
    Stream(Stream),
}

/// An HTTP-streaming connection: no request until its first frame, which
/// opens the stream; later frames go to `/emulation` for the session and
/// node the connect reply named.
struct Stream {
    /// Server-sent events (`data: …` lines) rather than HTTP-streaming.
    sse: bool,
    http: reqwest::Client,
    addr: SocketAddr,
    response: Option<reqwest::Response>,
    buf: Vec<u8>,
    session: String,
    node: String,
}

impl Stream {
    /// Posts `data` (frames' text) to `/emulation` for this session.
    async fn emulate(&self, data: &str) -> Value {
        let body = json!({"session": self.session, "node": self.node, "data": data});
        match self
            .http
            .post(format!("http://{}/emulation", self.addr))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
        {
            Ok(r) if r.status() == 204 => json!("sent"),
            Ok(r) => json!({"send failed": r.status().as_u16()}),
            Err(e) => json!({"send failed": e.to_string()}),
        }
    }
}

struct Conn {
    io: Io,
    /// Speaks Protobuf: commands are sent and replies read as Protobuf.
    protobuf: bool,
    pending: VecDeque<Value>,
    closed: Option<Value>,
    /// Server pings (`{}`) seen so far.
    pings: usize,
    /// Whether pings are answered.
    pong: bool,
}

impl Conn {
    fn new(io: Io, protobuf: bool) -> Self {
        Self {
            io,
            protobuf,
            pending: VecDeque::new(),
            closed: None,
            pings: 0,
            pong: true,
        }
    }

    /// Sends one frame of text (as Protobuf commands on a Protobuf
    /// WebSocket when it is such commands).
    async fn send_text(&mut self, text: &str) -> Value {
        match &mut self.io {
            Io::Ws(ws) => {
                let msg = match protobuf_frame(text).filter(|_| self.protobuf) {
                    Some(bytes) => Message::binary(bytes),
                    None => Message::text(text.to_string()),
                };
                match ws.send(msg).await {
                    Ok(()) => json!("sent"),
                    Err(e) => json!({"send failed": e.to_string()}),
                }
            }
            Io::Stream(s) if s.response.is_none() => {
                let opened = if s.sse {
                    s.http
                        .get(format!("http://{}/connection/sse", s.addr))
                        .query(&[("cf_connect", text)])
                        .send()
                        .await
                } else {
                    s.http
                        .post(format!("http://{}/connection/http_stream", s.addr))
                        .header("content-type", "application/json")
                        .body(text.to_string())
                        .send()
                        .await
                };
                match opened {
                    Ok(r) if r.status() == 200 => {
                        s.response = Some(r);
                        json!("sent")
                    }
                    Ok(r) => json!({"send failed": r.status().as_u16()}),
                    Err(e) => json!({"send failed": e.to_string()}),
                }
            }
            Io::Stream(_) => {
                // Frames sent before the connect reply was read wait for
                // it: `/emulation` needs the session it names.
                let deadline = tokio::time::Instant::now() + COLLECT;
                while matches!(&self.io, Io::Stream(s) if s.session.is_empty())
                    && self.read(deadline).await
                {}
                let Io::Stream(s) = &self.io else {
                    unreachable!("a stream stays a stream")
                };
                s.emulate(text).await
            }
        }
    }

    async fn send_binary(&mut self, bytes: Vec<u8>) -> Value {
        match &mut self.io {
            Io::Ws(ws) => match ws.send(Message::binary(bytes)).await {
                Ok(()) => json!("sent"),
                Err(e) => json!({"send failed": e.to_string()}),
            },
            Io::Stream(_) => json!("no binary frames over HTTP-streaming"),
        }
    }

    /// Reads what arrives next into `pending`, answering pings; false once
    /// closed or past `deadline`.
    async fn read(&mut self, deadline: tokio::time::Instant) -> bool {
        if self.closed.is_some() {
            return false;
        }
        match &mut self.io {
            Io::Ws(_) => self.read_ws(deadline).await,
            Io::Stream(_) => self.read_stream(deadline).await,
        }
    }

    async fn read_stream(&mut self, deadline: tokio::time::Instant) -> bool {
        let Io::Stream(s) = &mut self.io else {
            return false;
        };
        let Some(response) = s.response.as_mut() else {
            // Not opened yet: nothing can arrive.
            tokio::time::sleep_until(deadline).await;
            return false;
        };
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) => return false,
            Ok(Ok(Some(chunk))) => s.buf.extend_from_slice(&chunk),
            Ok(Ok(None)) => {
                self.closed = Some(json!({"code": 1006, "reason": "abnormal: end of stream"}));
                return true;
            }
            Ok(Err(e)) => {
                self.closed = Some(json!({"code": 1006, "reason": format!("abnormal: {e}")}));
                return true;
            }
        }
        while let Some(at) = s.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = s.buf.drain(..=at).collect();
            let line = String::from_utf8_lossy(&line).trim().to_string();
            // An event's payload is its `data:` line; blank lines end events.
            let line = match line.strip_prefix("data:") {
                Some(data) if s.sse => data.trim().to_string(),
                _ if s.sse => continue,
                _ => line,
            };
            if line.is_empty() {
                continue;
            }
            if line == "{}" {
                self.pings += 1;
                if self.pong {
                    let _ = s.emulate("{}").await;
                }
                continue;
            }
            let mut v: Value =
                serde_json::from_str(&line).unwrap_or_else(|_| json!({"unparsable text": line}));
            if let Some(d) = v.pointer("/push/disconnect") {
                // What a WebSocket says in its Close frame.
                self.closed = Some(json!({"code": d["code"], "reason": d["reason"]}));
                continue;
            }
            if let Some(connect) = v.get_mut("connect").and_then(Value::as_object_mut) {
                for (key, kept) in [("session", &mut s.session), ("node", &mut s.node)] {
                    if let Some(Value::String(id)) = connect.get(key) {
                        *kept = id.clone();
                        connect.insert(key.into(), json!(format!("<{key}>")));
                    }
                }
            }
            self.pending.push_back(v);
        }
        true
    }

    async fn read_ws(&mut self, deadline: tokio::time::Instant) -> bool {
        let Io::Ws(ws) = &mut self.io else {
            return false;
        };
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(m) => m,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                for line in t.as_str().split('\n').map(str::trim) {
                    if line.is_empty() {
                        continue;
                    }
                    if line == "{}" {
                        self.pings += 1;
                        if self.pong {
                            let _ = ws.send(Message::text("{}")).await;
                        }
                        continue;
                    }
                    let v = serde_json::from_str(line)
                        .unwrap_or_else(|_| json!({"unparsable text": line}));
                    self.pending.push_back(v);
                }
            }
            Some(Ok(Message::Binary(b))) if self.protobuf => match pbc::replies(b.clone()) {
                Ok(replies) => {
                    for r in replies {
                        if pbc::is_ping(&r) {
                            self.pings += 1;
                            if self.pong {
                                let _ = ws.send(Message::binary(pbc::PONG.to_vec())).await;
                            }
                            continue;
                        }
                        self.pending.push_back(pbc::reply_json(&r));
                    }
                }
                Err(_) => self
                    .pending
                    .push_back(json!({"undecodable binary": b.len()})),
            },
            Some(Ok(Message::Binary(b))) => self.pending.push_back(json!({"binary": b.len()})),
            Some(Ok(Message::Close(frame))) => {
                self.closed = Some(match frame {
                    Some(f) => json!({"code": u16::from(f.code), "reason": f.reason.as_str()}),
                    None => json!({"code": 1005, "reason": "no close frame code"}),
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                self.closed = Some(json!({"code": 1006, "reason": format!("abnormal: {e}")}));
            }
            None => {
                self.closed = Some(json!({"code": 1006, "reason": "abnormal: end of stream"}));
            }
        }
        true
    }

    async fn close(self) {
        if let Io::Ws(mut ws) = self.io {
            let _ = ws.close(None).await;
        }
    }
}

/// Collected messages as `{"replies": […], "pushes": […]}`, each list in
/// arrival order. Whether a publication push overtakes the reply to the
/// publish that caused it is not specified by the protocol (Centrifugo's
/// broker delivers before it replies, Herald replies first): only the order
/// within each list is compared.
fn split(messages: impl Iterator<Item = Value>) -> Value {
    let (pushes, replies): (Vec<Value>, Vec<Value>) =
        messages.partition(|m| m.get("push").is_some());
    json!({"replies": replies, "pushes": pushes})
}

/// A frame of JSON commands (one per line) as the equivalent Protobuf
/// commands; `None` if any line is not one command of a known method.
fn protobuf_frame(text: &str) -> Option<Vec<u8>> {
    use prost::Message as _;
    let mut out = Vec::new();
    for line in text.split('\n').map(str::trim).filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).ok()?;
        let obj = v.as_object()?;
        let id = u32::try_from(obj.get("id").map_or(Some(0), Value::as_u64)?).ok()?;
        let methods: Vec<(&String, &Value)> = obj.iter().filter(|(k, _)| *k != "id").collect();
        match methods.as_slice() {
            [] => out.extend(
                pbc::pb::Command {
                    id,
                    ..pbc::pb::Command::default()
                }
                .encode_length_delimited_to_vec(),
            ),
            [(method, params)] => out.extend(pbc::command(id, method, params)?),
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Runs `script` against the server at `addr` over `wire`: one
/// observation per step (see the module doc).
async fn run(script: &Script, addr: SocketAddr, wire: Wire) -> Vec<Value> {
    let protobuf = wire == Wire::Protobuf;
    let http = reqwest::Client::new();
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut vars: HashMap<&'static str, String> = HashMap::new();
    let mut out = Vec::new();
    for step in &script.steps {
        let obs = match &step.action {
            Action::Open { conn, .. } if matches!(wire, Wire::HttpStream | Wire::Sse) => {
                let stream = Stream {
                    sse: wire == Wire::Sse,
                    http: http.clone(),
                    addr,
                    response: None,
                    buf: Vec::new(),
                    session: String::new(),
                    node: String::new(),
                };
                conns.insert(*conn, Conn::new(Io::Stream(stream), false));
                json!({"opened": true, "protocol": null})
            }
            Action::Open { conn, protocol } => {
                let mut request = format!("ws://{addr}/connection/websocket")
                    .into_client_request()
                    .expect("request");
                let protocol = protocol.or(protobuf.then_some(pbc::SUBPROTOCOL));
                if let Some(p) = protocol {
                    request
                        .headers_mut()
                        .insert("Sec-WebSocket-Protocol", p.parse().expect("header value"));
                }
                let config = WebSocketConfig::default().max_message_size(Some(1 << 24));
                match tokio_tungstenite::connect_async_with_config(request, Some(config), false)
                    .await
                {
                    Ok((ws, response)) => {
                        let protocol = response
                            .headers()
                            .get("Sec-WebSocket-Protocol")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let protobuf = protocol.as_deref() == Some(pbc::SUBPROTOCOL);
                        conns.insert(*conn, Conn::new(Io::Ws(ws), protobuf));
                        json!({"opened": true, "protocol": protocol})
                    }
                    // tungstenite also refuses an upgrade that does not
                    // choose the subprotocol offered.
                    Err(e) => json!({"refused": e.to_string()}),
                }
            }
            Action::Send { conn, text } => {
                let mut text = text.clone();
                for (name, value) in &vars {
                    text = text.replace(&format!("${{{name}}}"), value);
                }
                let Some(c) = conns.get_mut(conn) else {
                    out.push(json!("not open"));
                    continue;
                };
                c.send_text(&text).await
            }
            Action::SendBinary { conn, bytes } => {
                let Some(c) = conns.get_mut(conn) else {
                    out.push(json!("not open"));
                    continue;
                };
                c.send_binary(bytes.clone()).await
            }
            Action::Recv { conn, count } => {
                let Some(c) = conns.get_mut(conn) else {
                    out.push(json!("not open"));
                    continue;
                };
                let deadline = tokio::time::Instant::now() + COLLECT;
                while c.pending.len() < *count && c.read(deadline).await {}
                let n = c.pending.len().min(*count);
                let mut obs = split(c.pending.drain(..n));
                if n < *count {
                    obs["missing"] = json!(count - n);
                    if let Some(closed) = &c.closed {
                        obs["closed"] = closed.clone();
                    }
                }
                obs
            }
            Action::Closed { conn, pong } => {
                let Some(c) = conns.get_mut(conn) else {
                    out.push(json!("not open"));
                    continue;
                };
                c.pong = *pong;
                let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
                while c.read(deadline).await {}
                let mut obs = split(c.pending.drain(..));
                obs["closed"] = c.closed.clone().unwrap_or(json!("not within the wait"));
                obs
            }
            Action::Pings { conn, count } => {
                let Some(c) = conns.get_mut(conn) else {
                    out.push(json!("not open"));
                    continue;
                };
                let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
                let before = c.pings;
                while c.pings < before + count && c.read(deadline).await {}
                let mut obs = split(c.pending.drain(..));
                obs["pings"] = json!((c.pings - before).min(*count));
                if let Some(closed) = &c.closed {
                    obs["closed"] = closed.clone();
                }
                obs
            }
            Action::Api { method, body } => {
                let resp = http
                    .post(format!("http://{addr}/api/{method}"))
                    .header("X-API-Key", API_KEY)
                    .json(body)
                    .send()
                    .await
                    .expect("server API request");
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                let body: Value = serde_json::from_str(&text).unwrap_or(json!({"text": text}));
                json!({"status": status, "body": body})
            }
        };
        for (name, pointer) in &step.capture {
            if let Some(v) = obs.pointer(pointer) {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                vars.insert(name, v);
            }
        }
        out.push(obs);
    }
    for (_, c) in conns {
        c.close().await;
    }
    out
}

// ---------------------------------------------------------------- comparing

/// Replaces what legitimately differs between two servers by placeholders
/// (see the module doc); one per server and script, so placeholders number
/// values in order of first appearance.
#[derive(Default)]
struct Normalizer {
    seen: HashMap<(&'static str, String), usize>,
    counts: HashMap<&'static str, usize>,
}

impl Normalizer {
    fn placeholder(&mut self, kind: &'static str, value: &str) -> Value {
        let next = self.counts.get(kind).copied().unwrap_or(0) + 1;
        let n = *self
            .seen
            .entry((kind, value.to_string()))
            .or_insert_with(|| {
                self.counts.insert(kind, next);
                next
            });
        json!(format!("<{kind}-{n}>"))
    }

    fn normalize(&mut self, v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    match (k.as_str(), &*val) {
                        ("client", Value::String(s)) if !s.is_empty() => {
                            *val = self.placeholder("client", &s.clone());
                        }
                        ("epoch", Value::String(s)) if !s.is_empty() => {
                            *val = self.placeholder("epoch", &s.clone());
                        }
                        ("version", Value::String(_)) => *val = json!("<version>"),
                        // A presence map is keyed by client id.
                        ("presence", Value::Object(members))
                            if members.values().all(|m| m.get("client").is_some()) =>
                        {
                            let members = members.clone();
                            let mut renamed = serde_json::Map::new();
                            for (id, mut member) in members {
                                self.normalize(&mut member);
                                let key = self.placeholder("client", &id);
                                renamed
                                    .insert(key.as_str().unwrap_or_default().to_string(), member);
                            }
                            *val = Value::Object(renamed);
                        }
                        ("ttl", Value::Number(_)) => *val = json!("<ttl>"),
                        _ => self.normalize(val),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.normalize(i)),
            _ => {}
        }
    }
}

/// The JSON types of `v` in its shape (object keys kept, arrays reduced
/// to the shapes of their elements, without duplicates).
fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(items) => {
            let mut shapes: Vec<Value> = Vec::new();
            for s in items.iter().map(shape) {
                if !shapes.contains(&s) {
                    shapes.push(s);
                }
            }
            Value::Array(shapes)
        }
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
    }
}

fn prepare(observations: Vec<Value>, script: &Script) -> Vec<Value> {
    let mut n = Normalizer::default();
    observations
        .into_iter()
        .zip(&script.steps)
        .map(|(mut v, step)| {
            n.normalize(&mut v);
            if step.shape { shape(&v) } else { v }
        })
        .collect()
}

fn describe(action: &Action) -> String {
    match action {
        Action::Open { conn, protocol } => format!("open #{conn} (subprotocol {protocol:?})"),
        Action::Send { conn, text } => {
            let short: String = text.chars().take(160).collect();
            format!("send #{conn} {short}")
        }
        Action::SendBinary { conn, bytes } => format!("send #{conn} binary {} bytes", bytes.len()),
        Action::Recv { conn, count } => format!("recv #{conn} {count}"),
        Action::Closed { conn, pong } => format!("closed #{conn} (pongs: {pong})"),
        Action::Pings { conn, count } => format!("pings #{conn} {count}"),
        Action::Api { method, body } => format!("api {method} {body}"),
    }
}

// ---------------------------------------------------------------- the document

/// The entries of `docs/compatibility.md`: id → true for an intended
/// difference, false for a known deviation not yet fixed.
fn documented() -> BTreeMap<String, bool> {
    let path = common::root().join("docs/compatibility.md");
    let text = std::fs::read_to_string(&path).expect("read docs/compatibility.md");
    let mut entries = BTreeMap::new();
    let mut intended = None;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            intended = if heading.starts_with("Intended differences") {
                Some(true)
            } else if heading.starts_with("Known deviations not yet fixed") {
                Some(false)
            } else {
                None
            };
            continue;
        }
        let Some(kind) = intended else { continue };
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let id = rest.split('`').next().expect("an id").to_string();
        assert!(
            entries.insert(id.clone(), kind).is_none(),
            "docs/compatibility.md lists `{id}` twice"
        );
    }
    entries
}

#[test]
fn every_documented_difference_is_exercised() {
    let documented = documented();
    let used: BTreeSet<&str> = scripts()
        .iter()
        .chain(&ping_scripts())
        .chain(&personal_scripts())
        .flat_map(|s| s.steps.iter().filter_map(|st| st.differs))
        .collect();
    for id in &used {
        assert!(
            documented.contains_key(*id),
            "a script names `{id}`, which docs/compatibility.md does not list"
        );
    }
    for id in documented.keys() {
        assert!(
            used.contains(id.as_str()),
            "docs/compatibility.md lists `{id}`, which no conformance script exercises"
        );
    }
}

/// The Herald configuration both servers get: test defaults, small limits
/// (so the scripts reach them cheaply) and the namespaces the scripts use.
fn conformance_config(nats: &common::TestNats, data_dir: std::path::PathBuf) -> Config {
    let mut config = test_config(nats, data_dir);
    config.client.channel_limit = CHANNEL_LIMIT;
    config.client.stale_timeout = STALE_TIMEOUT;
    config.client.recovery_limit = RECOVERY_LIMIT;
    config.client.history_page_limit = HISTORY_LIMIT;
    config.sync.page_limit = HISTORY_LIMIT;
    let base = config.channels.default.clone();
    let ns = &mut config.channels.namespaces;
    ns.insert(
        "secret".into(),
        NamespaceOptions {
            private: true,
            ..base.clone()
        },
    );
    ns.insert(
        "feed".into(),
        NamespaceOptions {
            history: false,
            ..base.clone()
        },
    );
    ns.insert(
        "noclient".into(),
        NamespaceOptions {
            client_publish: false,
            ..base.clone()
        },
    );
    ns.insert(
        "room".into(),
        NamespaceOptions {
            presence: true,
            join_leave: true,
            force_push_join_leave: true,
            membership: false,
            receipts: true,
            ..base.clone()
        },
    );
    ns.insert(
        "bounded".into(),
        NamespaceOptions {
            history_size: Some(BOUNDED_HISTORY),
            ..base.clone()
        },
    );
    ns.insert(
        "public".into(),
        NamespaceOptions {
            anonymous: true,
            ..base.clone()
        },
    );
    ns.insert(
        "delta".into(),
        NamespaceOptions {
            allowed_delta_types: vec!["fossil".into()],
            ..base.clone()
        },
    );
    config
}

/// Runs every script against both servers (at the same time), one script
/// after another, over `wire`; panics listing every difference not
/// documented at its step.
async fn compare(scripts: Vec<Script>, centrifugo: SocketAddr, herald: SocketAddr, wire: Wire) {
    // Over Protobuf or HTTP-streaming a documented difference may not show
    // (no field for an extension; no WebSocket frame).
    let lenient = wire != Wire::Json;
    let documented = documented();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for script in scripts {
        if !script.runs_over(wire) {
            continue;
        }
        let started = std::time::Instant::now();
        let (c, h) = tokio::join!(run(&script, centrifugo, wire), run(&script, herald, wire));
        println!("ran [{}] in {:?}", script.name, started.elapsed());
        let (c, h) = (prepare(c, &script), prepare(h, &script));
        for (i, ((step, c), h)) in script.steps.iter().zip(&c).zip(&h).enumerate() {
            let what = format!("[{}] step {i}: {}", script.name, describe(&step.action));
            match (c == h, step.differs) {
                (true, None) => {}
                (false, Some(id)) if documented.contains_key(id) => {
                    let kind = if documented[id] {
                        "intended"
                    } else {
                        "known deviation, not yet fixed"
                    };
                    report.push(format!(
                        "{what}\n  documented as `{id}` ({kind})\n  centrifugo: {c}\n  herald:     {h}"
                    ));
                }
                (false, _) => failures.push(format!(
                    "{what}\n  undocumented difference\n  centrifugo: {c}\n  herald:     {h}"
                )),
                (true, Some(_)) if lenient => {}
                (true, Some(id)) => failures.push(format!(
                    "{what}\n  `{id}` is documented here but both answered the same: {c}"
                )),
            }
        }
    }
    println!(
        "documented differences seen ({}):\n{}",
        report.len(),
        report.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} step(s) differ from Centrifugo:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// A Centrifugo and a Herald configured alike (`conformance_config`, then
/// `configure`), with the nats-server and data dir they need.
struct Pair {
    _nats: common::TestNats,
    _dir: tempfile::TempDir,
    centrifugo: TestCentrifugo,
    herald: TestHerald,
}

impl Pair {
    async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        let nats = common::TestNats::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = conformance_config(&nats, dir.path().join("data"));
        configure(&mut config);
        let (centrifugo, herald) = tokio::join!(
            TestCentrifugo::start(&config, PRESENCE_NAMESPACES),
            TestHerald::start(config.clone())
        );
        Self {
            _nats: nats,
            _dir: dir,
            centrifugo,
            herald,
        }
    }

    async fn compare(&self, scripts: Vec<Script>, wire: Wire) {
        compare(scripts, self.centrifugo.addr, self.herald.addr, wire).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_answers_as_centrifugo() {
    Pair::start(|_| {})
        .await
        .compare(scripts(), Wire::Json)
        .await;
}

/// Every script over the Protobuf protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_answers_as_centrifugo_over_protobuf() {
    Pair::start(|_| {})
        .await
        .compare(scripts(), Wire::Protobuf)
        .await;
}

/// Every script that sends no binary frame and offers no subprotocol, over
/// HTTP-streaming with `/emulation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_answers_as_centrifugo_over_http_streaming() {
    Pair::start(|_| {})
        .await
        .compare(scripts(), Wire::HttpStream)
        .await;
}

/// The same over SSE (the first frame in `cf_connect`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_answers_as_centrifugo_over_sse() {
    Pair::start(|_| {})
        .await
        .compare(scripts(), Wire::Sse)
        .await;
}

/// `client_subscribe_to_user_personal_channel` with its own pair of servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_channel_subscription_as_centrifugo() {
    Pair::start(|c| c.client.subscribe_to_personal = true)
        .await
        .compare(personal_scripts(), Wire::Json)
        .await;
}

/// Pings with their own pair of servers: a short ping interval for these
/// scripts would make every other script's connections answer pings in
/// time or be closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_a_missing_pong_as_centrifugo() {
    let pair = Pair::start(|c| {
        c.client.ping_interval = PING_INTERVAL;
        c.client.pong_timeout = PONG_TIMEOUT;
    })
    .await;
    for wire in [Wire::Json, Wire::Protobuf, Wire::HttpStream] {
        pair.compare(ping_scripts(), wire).await;
    }
}
