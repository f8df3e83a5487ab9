//! Herald with the unmodified official Centrifugo client SDKs: npm
//! `centrifuge` (JavaScript, on Node) and PyPI `centrifuge-python`.
//!
//! Each test starts a real nats-server and Herald, runs one script from
//! `tests/sdk/` that uses the SDK as an application would (connect with a
//! short-lived token refreshed through the SDK's token callback, subscribe,
//! receive another client's and the server API's publications, publish,
//! history, automatic reconnect with recovery after a cut network), then
//! checks the script's JSON report and what the server stored.
//!
//! The SDKs are installed by `scripts/install-tools.sh` into `.tools/`; a
//! missing SDK fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::TestNats;
use common::node::{API_KEY, SECRET, TestHerald, test_config};
use common::ws::WsClient;
use serde_json::{Value, json};
use tokio::process::Command;

const CHANNEL: &str = "news";
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

async fn node() -> (TestNats, tempfile::TempDir, TestHerald) {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let herald = TestHerald::start(test_config(&nats, dir.path().join("data"))).await;
    (nats, dir, herald)
}

/// The environment every script reads (see the header of each script).
fn script_env(h: &TestHerald) -> Vec<(&'static str, String)> {
    vec![
        ("HERALD_WS", format!("ws://{}/connection/websocket", h.addr)),
        (
            "HERALD_TOKEN_SHORT",
            herald::auth::mint(SECRET, "alice", None, SHORT_TOKEN_TTL),
        ),
        ("HERALD_TOKEN", h.token("alice")),
        ("HERALD_TOKEN_PUBLISHER", h.token("bob")),
        ("HERALD_API", h.url("/api")),
        ("HERALD_API_KEY", API_KEY.to_string()),
        ("HERALD_CHANNEL", CHANNEL.to_string()),
        ("HERALD_MISSED", MISSED.to_string()),
    ]
}

/// Runs a script to its end and returns its JSON report; fails the test with
/// the script's output unless it exited 0 reporting `"ok": true`.
async fn run(mut cmd: Command, what: &str) -> Value {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the {what} script: {e}"));
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the {what} script did not finish within {SCRIPT_TIMEOUT:?}"))
        .expect("script output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    assert!(
        out.status.success() && report["ok"] == true,
        "{what} script failed ({}): {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status,
        report["error"]
    );
    report
}

/// What every script must have seen, and what the server must have stored.
async fn check(h: &TestHerald, report: &Value) {
    let expected: Vec<u64> = (1..=TOTAL).collect();
    assert_eq!(report["offsets"], json!(expected), "{report}");
    let r = &report["recovery"];
    assert_eq!(r["was_recovering"], true, "{report}");
    assert_eq!(r["recovered"], true, "{report}");
    assert_eq!(r["offset"], 4 + MISSED, "{report}");
    assert!(report["get_token_calls"].as_u64() >= Some(1), "{report}");

    let (mut c, _) = WsClient::connect(h.addr, &h.token("carol")).await;
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
    let modules = installed(".tools/node/node_modules");
    installed(".tools/node/node_modules/centrifuge/package.json");
    installed(".tools/node/node_modules/ws/package.json");
    let (_nats, _dir, h) = node().await;
    let mut cmd = Command::new("node");
    cmd.arg(root().join("tests/sdk/centrifuge_js.mjs"))
        .env("HERALD_NODE_MODULES", &modules)
        .envs(script_env(&h));
    let report = run(cmd, "centrifuge-js").await;
    check(&h, &report).await;
    assert_eq!(report["recovery"]["has_recovered_publications"], true);
}

#[tokio::test]
async fn python_sdk_connects_publishes_reads_history_and_recovers() {
    let py = installed(".tools/py");
    installed(".tools/py/centrifuge/client.py");
    let (_nats, _dir, h) = node().await;
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("tests/sdk/centrifuge_py.py"))
        .env("PYTHONPATH", prepend_path(&py))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(script_env(&h));
    let report = run(cmd, "centrifuge-python").await;
    check(&h, &report).await;
}

/// `PYTHONPATH` with `dir` first.
fn prepend_path(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(paths).expect("PYTHONPATH")
}
