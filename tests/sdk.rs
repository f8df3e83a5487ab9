//! Herald with the unmodified official Centrifugo client SDKs of four
//! runtimes: npm `centrifuge` (JavaScript, on Node), PyPI
//! `centrifuge-python`, `centrifuge-go` (Go module proxy) and
//! `centrifuge-java` (Maven Central).
//!
//! Each test starts a real nats-server and Herald, runs one script from
//! `tests/sdk/` that uses the SDK as an application would, then checks the
//! script's JSON report and what the server stored. Every script does the
//! same steps:
//! 1. connect with a short-lived token that the SDK refreshes through its
//!    token callback (no reconnect);
//! 2. subscribe to a history channel (recoverable, at offset 0);
//! 3. subscribe to a forbidden channel: error 103, the subscription ends;
//! 4. receive another client's publications, publish, receive its own;
//! 5. read history (limit, limit 0, since, reverse, reverse since, since a
//!    position of another epoch: error 112);
//! 6. lose its network (the cuttable [`Proxy`] in front of the server, cut
//!    and restored on the script's request) while the backend publishes
//!    through the server API, reconnect by itself and recover exactly the
//!    missed publications, then receive live ones again.
//!
//! One more Python script (`centrifuge_py_disconnect.py`) checks only that a
//! terminal disconnect from the server API leaves the SDK disconnected.
//!
//! The JavaScript and Python scripts also run over the Protobuf protocol
//! (`HERALD_PROTOBUF=1`: the JS SDK's `centrifuge/build/protobuf`, the
//! Python SDK's `use_protobuf=True`; the WebSocket subprotocol
//! `centrifuge-protobuf`), publishing JSON text as bytes; centrifuge-java
//! speaks only Protobuf. The harness's own checks read over JSON, so they
//! also check that JSON and Protobuf clients share a channel.
//!
//! The scripts depend on nothing Herald-only: they take the server's
//! addresses, key and tokens in the environment (see [`script_env`]), so
//! the same scripts also run against Centrifugo (the `*_against_centrifugo`
//! tests), which checks the scripts themselves. The cut is
//! a line protocol on the script's stdin/stdout: the script prints
//! `{"control":"cut"}` or `{"control":"restore"}` and waits for a line
//! `done`; its last stdout line is its report.
//!
//! The SDKs and the Go and Java script builds are installed by
//! `scripts/install-tools.sh` into `.tools/`; a missing or stale one fails
//! the test saying so.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use common::TestNats;
use common::centrifugo::TestCentrifugo;
use common::node::{API_KEY, SECRET, TestHerald, test_config};
use common::proxy::Proxy;
use common::ws::WsClient;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const CHANNEL: &str = "news";
/// Bob's personal channel: alice may not subscribe (error 103). Against
/// Centrifugo, a user-limited channel (`allow_user_limited_channels`).
const FORBIDDEN_CHANNEL: &str = "#bob";
/// Publications a client misses while its network is down.
const MISSED: u64 = 20;
/// Publications in the channel when a script ends: 3 by the other client, 1
/// by the SDK client itself, the missed ones (server API), 2 live after the
/// recovery (one by the other client, one by the server API).
const TOTAL: u64 = 6 + MISSED;
/// Lifetime of the first connection token: short, so the SDK refreshes it
/// while the script runs, long enough for the client to start and connect.
const SHORT_TOKEN_TTL: Duration = Duration::from_secs(3);
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The server a script runs against: Herald in this file; any server that
/// speaks the client protocol and the server API, checks HS256 tokens with
/// `secret` and treats [`CHANNEL`] and [`FORBIDDEN_CHANNEL`] as Herald's
/// default namespace does. For Centrifugo v6 (tests/common/centrifugo.rs)
/// that is `channel.without_namespace` with `history_size` >= 26, a
/// `history_ttl` longer than a run, `force_recovery`,
/// `allow_subscribe_for_client`, `allow_publish_for_client` (bob publishes
/// without subscribing), `allow_history_for_subscriber` and
/// `allow_user_limited_channels`; `client.token.hmac_secret_key` and
/// `http_api.key` as here.
struct Server {
    /// Where `/connection/websocket` is served.
    addr: SocketAddr,
    /// The server API's base URL (`…/api`).
    api: String,
    api_key: String,
    /// The HMAC secret of connection tokens.
    secret: String,
}

impl Server {
    fn herald(h: &TestHerald) -> Self {
        Self {
            addr: h.addr,
            api: h.url("/api"),
            api_key: API_KEY.to_string(),
            secret: SECRET.to_string(),
        }
    }

    /// Centrifugo configured like [`node`]'s Herald (tests/common/centrifugo.rs).
    fn centrifugo(c: &TestCentrifugo) -> Self {
        Self {
            addr: c.addr,
            api: format!("http://{}/api", c.addr),
            api_key: API_KEY.to_string(),
            secret: SECRET.to_string(),
        }
    }

    fn token(&self, user: &str, ttl: Duration) -> String {
        herald::auth::mint(&self.secret, user, None, ttl)
    }
}

/// One SDK's script and how it is started.
#[derive(Clone, Copy)]
enum Sdk {
    JavaScript,
    Python,
    Go,
    Java,
}

impl Sdk {
    fn name(self) -> &'static str {
        match self {
            Sdk::JavaScript => "centrifuge-js",
            Sdk::Python => "centrifuge-python",
            Sdk::Go => "centrifuge-go",
            Sdk::Java => "centrifuge-java",
        }
    }

    /// The script's command, with what it needs from `.tools/`; fails the
    /// test if that is missing or older than the script's sources.
    fn command(self) -> Command {
        match self {
            Sdk::JavaScript => {
                let modules = installed(".tools/node/node_modules");
                installed(".tools/node/node_modules/centrifuge/package.json");
                installed(".tools/node/node_modules/ws/package.json");
                let mut cmd = Command::new("node");
                cmd.arg(root().join("tests/sdk/centrifuge_js.mjs"))
                    .env("HERALD_NODE_MODULES", modules);
                cmd
            }
            Sdk::Python => {
                let py = installed(".tools/py");
                installed(".tools/py/centrifuge/client.py");
                let mut cmd = Command::new("python3");
                cmd.arg(root().join("tests/sdk/centrifuge_py.py"))
                    .env("PYTHONPATH", prepend_path(&py))
                    .env("PYTHONDONTWRITEBYTECODE", "1");
                cmd
            }
            Sdk::Go => {
                let bin = installed(".tools/sdk-go/centrifuge-go-script");
                built_after_sources(&bin, "tests/sdk/go");
                Command::new(bin)
            }
            Sdk::Java => {
                let jar = installed(".tools/sdk-java/centrifuge-java-script.jar");
                built_after_sources(&jar, "tests/sdk/java");
                let mut cmd = Command::new("java");
                cmd.arg("-cp")
                    .arg(format!("{}/*", root().join(".tools/sdk-java").display()))
                    .arg("herald.SdkScript");
                cmd
            }
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `path` under the project root; fails the test if it is not there.
fn installed(relative: &str) -> PathBuf {
    let path = root().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-tools.sh to install the client SDKs",
        path.display()
    );
    path
}

/// Fails the test if a file under `sources` changed after `built` was built
/// from them (the test would run an old script).
fn built_after_sources(built: &Path, sources: &str) {
    fn newest(dir: &Path) -> SystemTime {
        let mut latest = SystemTime::UNIX_EPOCH;
        for entry in std::fs::read_dir(dir).expect("read sources") {
            let entry = entry.expect("source entry");
            let meta = entry.metadata().expect("source metadata");
            let t = if meta.is_dir() {
                newest(&entry.path())
            } else {
                meta.modified().expect("mtime")
            };
            latest = latest.max(t);
        }
        latest
    }
    let built_at = std::fs::metadata(built)
        .and_then(|m| m.modified())
        .expect("build mtime");
    assert!(
        built_at >= newest(&root().join(sources)),
        "{} is older than {sources}: run scripts/install-tools.sh to rebuild it",
        built.display()
    );
}

async fn node() -> (TestNats, tempfile::TempDir, TestHerald) {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let herald = TestHerald::start(test_config(&nats, dir.path().join("data"))).await;
    (nats, dir, herald)
}

/// Centrifugo with the config [`node`]'s Herald runs with: the scripts'
/// conformance check (they must pass against the reference too).
async fn centrifugo() -> (TestNats, tempfile::TempDir, TestCentrifugo) {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(&nats, dir.path().join("data"));
    let centrifugo = TestCentrifugo::start(&config, &[]).await;
    (nats, dir, centrifugo)
}

/// The environment every script reads (see the header of each script).
/// `cuttable` is the proxy alice connects through.
fn script_env(server: &Server, cuttable: &Proxy) -> Vec<(&'static str, String)> {
    vec![
        (
            "HERALD_WS",
            format!("ws://{}/connection/websocket", server.addr),
        ),
        (
            "HERALD_WS_CUTTABLE",
            format!("ws://{}/connection/websocket", cuttable.addr),
        ),
        ("HERALD_TOKEN_SHORT", server.token("alice", SHORT_TOKEN_TTL)),
        (
            "HERALD_TOKEN",
            server.token("alice", Duration::from_secs(3600)),
        ),
        (
            "HERALD_TOKEN_PUBLISHER",
            server.token("bob", Duration::from_secs(3600)),
        ),
        ("HERALD_API", server.api.clone()),
        ("HERALD_API_KEY", server.api_key.clone()),
        ("HERALD_CHANNEL", CHANNEL.to_string()),
        ("HERALD_FORBIDDEN_CHANNEL", FORBIDDEN_CHANNEL.to_string()),
        ("HERALD_MISSED", MISSED.to_string()),
    ]
}

/// Runs `sdk`'s script against `server` to its end, cutting and restoring
/// alice's network when it asks, and returns its JSON report; fails the
/// test with the script's output unless it exited 0 reporting `"ok": true`.
async fn run(sdk: Sdk, server: &Server) -> Value {
    run_over(sdk, server, false).await
}

/// [`run`], with the SDK speaking Protobuf when `protobuf`.
async fn run_over(sdk: Sdk, server: &Server, protobuf: bool) -> Value {
    run_transports(sdk, server, protobuf, "").await
}

/// [`run_over`], alice connecting over the bidirectional-emulation
/// `transports` (e.g. `http_stream,sse`; the JS script only) when not empty.
async fn run_transports(sdk: Sdk, server: &Server, protobuf: bool, transports: &str) -> Value {
    let what = sdk.name();
    let proxy = Proxy::start(server.addr).await;
    let mut cmd = sdk.command();
    if !transports.is_empty() {
        // Node's EventSource (undici's, the standard one) is behind a flag.
        cmd.env("NODE_OPTIONS", "--experimental-eventsource")
            .env("HERALD_TRANSPORTS", transports);
    }
    cmd.envs(script_env(server, &proxy))
        .env("HERALD_PROTOBUF", if protobuf { "1" } else { "0" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the {what} script: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });

    let mut lines = Vec::new();
    let mut controls = Vec::new();
    let converse = async {
        while let Some(line) = stdout.next_line().await.expect("script stdout") {
            let control = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["control"].as_str().map(str::to_owned));
            match control.as_deref() {
                Some("cut") => proxy.cut(),
                Some("restore") => proxy.restore(),
                Some(other) => panic!("the {what} script asked for an unknown control {other:?}"),
                None => {
                    lines.push(line);
                    continue;
                }
            }
            controls.push(control.unwrap_or_default());
            stdin.write_all(b"done\n").await.expect("script stdin");
            stdin.flush().await.expect("script stdin");
        }
        child.wait().await.expect("script exit")
    };
    let status = tokio::time::timeout(SCRIPT_TIMEOUT, converse)
        .await
        .unwrap_or_else(|_| panic!("the {what} script did not finish within {SCRIPT_TIMEOUT:?}"));
    let stderr = stderr.await.expect("stderr reader");
    let stdout = lines.join("\n");
    let report: Value = lines
        .iter()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    assert!(
        status.success() && report["ok"] == true,
        "{what} script failed ({status}): {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        report["error"]
    );
    assert_eq!(
        controls,
        ["cut", "restore"],
        "the {what} script cut and restored its network once"
    );
    report
}

/// What every script must have seen, and what the server must have stored.
async fn check(server: &Server, report: &Value) {
    let expected: Vec<u64> = (1..=TOTAL).collect();
    assert_eq!(report["offsets"], json!(expected), "{report}");
    let r = &report["recovery"];
    assert_eq!(r["was_recovering"], true, "{report}");
    assert_eq!(r["recovered"], true, "{report}");
    // The position recovered from, as Centrifugo answers; the SDK advances
    // through the recovered publications.
    assert_eq!(r["offset"], 4, "{report}");
    assert!(report["get_token_calls"].as_u64() >= Some(1), "{report}");
    assert_eq!(
        report["forbidden"],
        json!({"channel": FORBIDDEN_CHANNEL, "code": 103}),
        "{report}"
    );

    let token = server.token("carol", Duration::from_secs(3600));
    let (mut c, _) = WsClient::connect(server.addr, &token).await;
    let subscribed = c.call("subscribe", json!({"channel": CHANNEL})).await;
    assert!(subscribed.get("error").is_none(), "{subscribed}");
    let history = c
        .call("history", json!({"channel": CHANNEL, "limit": 100}))
        .await;
    let h = &history["history"];
    assert_eq!(h["epoch"], report["epoch"], "{history}");
    let pubs = h["publications"].as_array().expect("publications");
    let stored: Vec<u64> = pubs.iter().filter_map(|p| p["offset"].as_u64()).collect();
    assert_eq!(
        stored, expected,
        "stored offsets are exactly what the SDK received"
    );
    for (i, p) in pubs[4..4 + MISSED as usize].iter().enumerate() {
        assert_eq!(p["data"], json!({"missed": i}));
        assert_eq!(
            p.get("info"),
            None,
            "a server API publication has no client info"
        );
    }
}

#[tokio::test]
async fn javascript_sdk_connects_publishes_reads_history_and_recovers() {
    let (_nats, _dir, h) = node().await;
    let server = Server::herald(&h);
    let report = run(Sdk::JavaScript, &server).await;
    check(&server, &report).await;
    assert_eq!(report["recovery"]["has_recovered_publications"], true);
}

/// The JS SDK with `transports: [http_stream, sse]` (the fallback list of a
/// browser whose WebSocket is blocked): it takes HTTP-streaming, the first;
/// every command after the connect goes through `/emulation`, and the cut
/// ends the stream.
#[tokio::test]
async fn javascript_sdk_over_http_stream() {
    let (_nats, _dir, h) = node().await;
    let server = Server::herald(&h);
    let report = run_transports(Sdk::JavaScript, &server, false, "http_stream,sse").await;
    assert_eq!(report["transport"], "http_stream", "{report}");
    check(&server, &report).await;
}

#[tokio::test]
async fn javascript_sdk_over_http_stream_protobuf() {
    let (_nats, _dir, h) = node().await;
    let server = Server::herald(&h);
    let report = run_transports(Sdk::JavaScript, &server, true, "http_stream").await;
    assert_eq!(report["transport"], "http_stream", "{report}");
    check(&server, &report).await;
}

#[tokio::test]
async fn javascript_sdk_over_sse() {
    let (_nats, _dir, h) = node().await;
    let server = Server::herald(&h);
    let report = run_transports(Sdk::JavaScript, &server, false, "sse").await;
    assert_eq!(report["transport"], "sse", "{report}");
    check(&server, &report).await;
}

/// The same scripts over the same transports against Centrifugo: the
/// scripts' own check, and what Herald's transports must match.
#[tokio::test]
async fn javascript_sdk_over_emulation_against_centrifugo() {
    for (protobuf, transports) in [
        (false, "http_stream,sse"),
        (true, "http_stream"),
        (false, "sse"),
    ] {
        let (_nats, _dir, c) = centrifugo().await;
        let server = Server::centrifugo(&c);
        let report = run_transports(Sdk::JavaScript, &server, protobuf, transports).await;
        let first = transports.split(',').next().unwrap_or_default();
        assert_eq!(report["transport"], first, "{transports}: {report}");
        check(&server, &report).await;
    }
}

#[tokio::test]
async fn python_sdk_connects_publishes_reads_history_and_recovers() {
    let (_nats, _dir, h) = node().await;
    let server = Server::herald(&h);
    let report = run(Sdk::Python, &server).await;
    check(&server, &report).await;
}

#[tokio::test]
async fn go_sdk_connects_publishes_reads_history_and_recovers() {
    let (_nats, _dir, h) = node().await;
    let server = Server::herald(&h);
    let report = run(Sdk::Go, &server).await;
    check(&server, &report).await;
}

/// A server API `disconnect` (3503, terminal) leaves centrifuge-python
/// disconnected. The disconnect is said only by the Close frame, as in
/// Centrifugo: with a `disconnect` push before it, the SDK took the push and
/// then the close as a transport error, and reconnected (issue 14).
#[tokio::test]
async fn python_sdk_stays_disconnected_after_a_terminal_disconnect() {
    let (_nats, _dir, h) = node().await;
    let py = installed(".tools/py");
    installed(".tools/py/centrifuge/client.py");
    let mut child = Command::new("python3")
        .arg(root().join("tests/sdk/centrifuge_py_disconnect.py"))
        .env("PYTHONPATH", prepend_path(&py))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("HERALD_WS", format!("ws://{}/connection/websocket", h.addr))
        .env("HERALD_TOKEN", h.token("alice"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the centrifuge-python disconnect script");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let converse = async {
        let mut last = String::new();
        while let Some(line) = stdout.next_line().await.expect("script stdout") {
            if line.contains(r#""control""#) {
                let r = h.api("disconnect", json!({"user": "alice"})).await;
                assert!(r.get("error").is_none(), "{r}");
                stdin.write_all(b"done\n").await.expect("script stdin");
                stdin.flush().await.expect("script stdin");
            } else {
                last = line;
            }
        }
        child.wait().await.expect("script exit");
        last
    };
    let last = tokio::time::timeout(SCRIPT_TIMEOUT, converse)
        .await
        .expect("the disconnect script finished");
    let report: Value = serde_json::from_str(&last).unwrap_or(Value::Null);
    assert_eq!(report["ok"], true, "{last}");
    assert_eq!(report["event"], "disconnected", "no reconnect: {report}");
    assert_eq!(report["code"], 3503, "{report}");
    assert_eq!(report["state"], "disconnected", "{report}");
}

/// centrifuge-java speaks only the Protobuf flavour of the protocol
/// (WebSocket subprotocol `centrifuge-protobuf`).
#[tokio::test]
async fn java_sdk_connects_publishes_reads_history_and_recovers() {
    let (_nats, _dir, h) = node().await;
    let server = Server::herald(&h);
    let report = run(Sdk::Java, &server).await;
    check(&server, &report).await;
}

#[tokio::test]
async fn javascript_sdk_over_protobuf_connects_publishes_reads_history_and_recovers() {
    let (_nats, _dir, h) = node().await;
    let server = Server::herald(&h);
    let report = run_over(Sdk::JavaScript, &server, true).await;
    check(&server, &report).await;
}

#[tokio::test]
async fn python_sdk_over_protobuf_connects_publishes_reads_history_and_recovers() {
    let (_nats, _dir, h) = node().await;
    let server = Server::herald(&h);
    let report = run_over(Sdk::Python, &server, true).await;
    check(&server, &report).await;
}

/// The same scripts against Centrifugo, checked the same way: a script that
/// passes against Herald but not against the reference tests Herald's
/// reading of the protocol, not the protocol.
#[tokio::test]
async fn javascript_sdk_script_passes_against_centrifugo() {
    let (_nats, _dir, c) = centrifugo().await;
    let server = Server::centrifugo(&c);
    let report = run(Sdk::JavaScript, &server).await;
    check(&server, &report).await;
    assert_eq!(report["recovery"]["has_recovered_publications"], true);
}

#[tokio::test]
async fn python_sdk_script_passes_against_centrifugo() {
    let (_nats, _dir, c) = centrifugo().await;
    let server = Server::centrifugo(&c);
    let report = run(Sdk::Python, &server).await;
    check(&server, &report).await;
}

#[tokio::test]
async fn go_sdk_script_passes_against_centrifugo() {
    let (_nats, _dir, c) = centrifugo().await;
    let server = Server::centrifugo(&c);
    let report = run(Sdk::Go, &server).await;
    check(&server, &report).await;
}

/// centrifuge-java against the reference: it speaks Protobuf.
#[tokio::test]
async fn java_sdk_script_passes_against_centrifugo() {
    let (_nats, _dir, c) = centrifugo().await;
    let server = Server::centrifugo(&c);
    let report = run(Sdk::Java, &server).await;
    check(&server, &report).await;
}

#[tokio::test]
async fn javascript_sdk_over_protobuf_script_passes_against_centrifugo() {
    let (_nats, _dir, c) = centrifugo().await;
    let server = Server::centrifugo(&c);
    let report = run_over(Sdk::JavaScript, &server, true).await;
    check(&server, &report).await;
}

#[tokio::test]
async fn python_sdk_over_protobuf_script_passes_against_centrifugo() {
    let (_nats, _dir, c) = centrifugo().await;
    let server = Server::centrifugo(&c);
    let report = run_over(Sdk::Python, &server, true).await;
    check(&server, &report).await;
}

/// `PYTHONPATH` with `dir` first.
fn prepend_path(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(paths).expect("PYTHONPATH")
}

/// Publications streamed in the delta comparison.
const DELTA_TICKS: u64 = 100;

/// A config whose `state` namespace allows fossil deltas.
fn delta_config(nats: &TestNats, dir: &Path) -> herald::config::Config {
    let mut config = test_config(nats, dir.join("data"));
    let state = herald::config::NamespaceOptions {
        allowed_delta_types: vec!["fossil".into()],
        ..config.channels.default.clone()
    };
    config.channels.namespaces.insert("state".into(), state);
    config
}

/// Runs tests/sdk/delta_js.mjs against `server`; returns its report.
async fn run_delta(server: &Server, protobuf: bool) -> Value {
    let modules = installed(".tools/node/node_modules");
    installed(".tools/node/node_modules/centrifuge/package.json");
    let out = tokio::time::timeout(
        SCRIPT_TIMEOUT * 2,
        Command::new("node")
            .arg(root().join("tests/sdk/delta_js.mjs"))
            .env("HERALD_NODE_MODULES", modules)
            .env(
                "HERALD_WS",
                format!("ws://{}/connection/websocket", server.addr),
            )
            .env(
                "HERALD_TOKEN",
                server.token("alice", Duration::from_secs(3600)),
            )
            .env("HERALD_API", &server.api)
            .env("HERALD_API_KEY", &server.api_key)
            .env("HERALD_CHANNEL", "state:sdk")
            .env("HERALD_TICKS", DELTA_TICKS.to_string())
            .env("HERALD_PROTOBUF", if protobuf { "1" } else { "0" })
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the delta script finishes")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    assert!(
        out.status.success() && report["ok"] == true,
        "delta script failed: {}\n--- stdout\n{stdout}\n--- stderr\n{}",
        report["error"],
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

/// The unmodified JS SDK with `delta: 'fossil'`: what the application sees
/// (every state, live and after a reconnect that recovers three missed
/// ones) is the same against Herald and Centrifugo, in JSON and Protobuf,
/// and deltas cut the bytes received on both. The byte counts are printed
/// (BENCHMARKS.md, delta compression).
#[tokio::test]
async fn javascript_sdk_with_fossil_deltas_sees_what_it_sees_against_centrifugo() {
    for protobuf in [false, true] {
        let encoding = if protobuf { "protobuf" } else { "json" };
        let nats = TestNats::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = delta_config(&nats, dir.path());
        let h = TestHerald::start(config.clone()).await;
        let herald = run_delta(&Server::herald(&h), protobuf).await;
        let c = TestCentrifugo::start(&config, &[]).await;
        let centrifugo = run_delta(&Server::centrifugo(&c), protobuf).await;
        for (name, r) in [("herald", &herald), ("centrifugo", &centrifugo)] {
            let (plain, delta) = (&r["plain"]["live_bytes"], &r["delta"]["live_bytes"]);
            eprintln!(
                "delta {encoding} {name}: {DELTA_TICKS} states of {} bytes: {plain} bytes received without delta, {delta} with",
                r["state_bytes"]
            );
            assert!(
                delta.as_u64().unwrap() * 3 < plain.as_u64().unwrap(),
                "{name} {encoding}: deltas save bandwidth: {r}"
            );
        }
        assert_eq!(
            herald["delta"]["recovery"], centrifugo["delta"]["recovery"],
            "{encoding}: the recovery the SDK reports"
        );
        assert_eq!(
            herald["delta"]["recovery"]["offsets"],
            json!((DELTA_TICKS + 1..=DELTA_TICKS + 5).collect::<Vec<_>>())
        );
    }
}
