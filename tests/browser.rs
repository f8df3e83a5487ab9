//! The demo chat and the admin console in a real browser: Debian's
//! `chromium` driven by npm `playwright-core` (both installed by
//! scripts/install-tools.sh; Playwright's own browser download is never
//! used), against a real nats-server and Herald started here with `demo`
//! and `admin_password`.
//!
//! Each test runs one script of `tests/browser/` with Node and checks its
//! JSON report (its last stdout line) and what the server stored. A script
//! that needs a network cut prints `{"control":"cut"}` / `{"control":"restore"}`
//! and waits for a line `done`, as the SDK scripts of tests/sdk.rs do: the
//! harness then cuts the cuttable [`Proxy`] the page was loaded through
//! (every TCP connection dropped, new ones refused). Screenshots go to
//! `target/tmp/browser/`.
//!
//! Without `/usr/bin/chromium` (not root, no apt-get) the browser tests print
//! `SKIPPED` and pass; everything else missing fails them.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::node::{TestHerald, test_config};
use common::proxy::Proxy;
use common::{TestNats, root, tool};
use herald::config::Secret;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";
const ADMIN_PASSWORD: &str = "browser-test-admin-password";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Publications in `room:random` before the page opens: more than two of
/// the demo's history pages (30), so scrolling back takes two steps.
const ROOM_FILL: u64 = 45;

/// One browser at a time: two cores, and each script starts a Chromium.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// False (and a visible note) when Chromium is missing.
fn chromium_present(test: &str) -> bool {
    if std::path::Path::new(CHROMIUM).exists() {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: {CHROMIUM} is missing (scripts/install-tools.sh installs Debian's chromium as root)"
    );
    false
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

async fn herald() -> (TestNats, tempfile::TempDir, TestHerald) {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&nats, dir.path().join("data"));
    config.demo = true;
    config.admin_password = Some(Secret::new(ADMIN_PASSWORD));
    let herald = TestHerald::start(config).await;
    (nats, dir, herald)
}

/// Fills `room:random` with [`ROOM_FILL`] publications from the server API
/// (`{"text": "fill N"}`).
async fn fill_room(h: &TestHerald) {
    for i in 1..=ROOM_FILL {
        let r = h
            .api(
                "publish",
                json!({"channel": "room:random", "data": {"text": format!("fill {i}")}}),
            )
            .await;
        assert_eq!(r["result"]["offset"], i, "fill publish: {r}");
    }
}

/// Runs `tests/browser/<script>` with `env` to its end, cutting and
/// restoring `cuttable` when it asks; returns its report and the controls
/// it asked for. Fails the test unless it exited 0 reporting `"ok": true`.
async fn run(
    script: &str,
    env: &[(&str, String)],
    cuttable: Option<&Proxy>,
) -> (Value, Vec<String>) {
    let _one = BROWSER.lock().await;
    let modules = tool("node/node_modules");
    tool("node/node_modules/playwright-core/package.json");
    let mut child = Command::new("node")
        .arg(root().join("tests/browser").join(script))
        .env("HERALD_NODE_MODULES", &modules)
        .env("HERALD_CHROMIUM", CHROMIUM)
        .env("HERALD_ARTIFACTS", artifacts())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node for {script}: {e}"));
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
            let Some(control) = control else {
                lines.push(line);
                continue;
            };
            let proxy =
                cuttable.unwrap_or_else(|| panic!("{script} asked for {control} without a proxy"));
            match control.as_str() {
                "cut" => proxy.cut(),
                "restore" => proxy.restore(),
                other => panic!("{script} asked for an unknown control {other:?}"),
            }
            controls.push(control);
            stdin.write_all(b"done\n").await.expect("script stdin");
            stdin.flush().await.expect("script stdin");
        }
        child.wait().await.expect("script exit")
    };
    let status = tokio::time::timeout(SCRIPT_TIMEOUT, converse)
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {SCRIPT_TIMEOUT:?}"));
    let stderr = stderr.await.expect("stderr reader");
    let report: Value = lines
        .iter()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    assert!(
        status.success() && report["ok"] == true,
        "{script} failed ({status}): {}\n--- stdout\n{}\n--- stderr\n{stderr}",
        report["error"],
        lines.join("\n")
    );
    (report, controls)
}

/// Texts of a channel's stored publications, oldest first.
async fn stored_texts(h: &TestHerald, channel: &str) -> Vec<String> {
    let r = h
        .api("history", json!({"channel": channel, "limit": 1000}))
        .await;
    r["result"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("history of {channel}: {r}"))
        .iter()
        .map(|p| p["data"]["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Two browser contexts chat in a room and a DM: messages both ways,
/// presence, typing, the unread badge (per conversation and in the title)
/// that clears on reading, read receipts, and scrolling back through a
/// room's history by cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_in_a_room_and_a_dm() {
    if !chromium_present("two_people_chat_in_a_room_and_a_dm") {
        return;
    }
    let (_nats, _dir, h) = herald().await;
    fill_room(&h).await;
    let (report, _) = run(
        "chat.mjs",
        &[
            ("HERALD_URL", h.url("")),
            ("HERALD_ROOM_FILL", ROOM_FILL.to_string()),
        ],
        None,
    )
    .await;
    assert_eq!(report["olderPages"], json!([30, ROOM_FILL]), "{report}");
    let lobby = stored_texts(&h, "room:lobby").await;
    assert!(lobby.contains(&"hello room".to_string()), "{lobby:?}");
    assert_eq!(
        stored_texts(&h, "dm:#alice,bob").await,
        ["hi alice", "hi bob"],
        "the DM holds what the pages sent"
    );
    // What alice's page read is what the server keeps as her marker.
    let unread = h.api("unread", json!({"user": "alice"})).await;
    let dm = h
        .api("conversations", json!({"user": "alice", "limit": 50}))
        .await;
    let dm = dm["result"]["conversations"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["channel"] == "dm:#alice,bob").cloned())
        .expect("alice's DM is in her list");
    assert_eq!(
        dm["unread"], 0,
        "alice read the DM in the page: {dm} {unread}"
    );
}

/// One page loses its network (its TCP connections cut at the proxy it was
/// loaded through, new ones refused) while the other sends; it shows itself
/// disconnected, reconnects by itself and shows exactly the missed messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_lost_its_network_recovers_the_missed_messages() {
    if !chromium_present("a_page_that_lost_its_network_recovers_the_missed_messages") {
        return;
    }
    let (_nats, _dir, h) = herald().await;
    let proxy = Proxy::start(h.addr).await;
    let (report, controls) = run(
        "reconnect.mjs",
        &[
            ("HERALD_URL", h.url("")),
            ("HERALD_URL_CUTTABLE", format!("http://{}", proxy.addr)),
        ],
        Some(&proxy),
    )
    .await;
    assert_eq!(controls, ["cut", "restore"]);
    let missed: Vec<String> = (1..=3).map(|i| format!("missed {i}")).collect();
    assert_eq!(report["recovered"], json!(missed), "{report}");
    let stored = stored_texts(&h, "dm:#carol,dave").await;
    assert_eq!(stored[1..4], missed[..], "{stored:?}");
}

/// The admin console: a wrong password is refused; logged in, the overview
/// shows NATS and the writers, the channel page shows the demo users in the
/// lobby's presence and pages a room's history both ways, the user page
/// shows a demo user online and revoking another's tokens closes that
/// user's page for good, and a publish from the console shows its
/// offset and appears in the chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_console_finds_users_browses_history_and_publishes() {
    if !chromium_present("the_admin_console_finds_users_browses_history_and_publishes") {
        return;
    }
    let (_nats, _dir, h) = herald().await;
    fill_room(&h).await;
    let (report, _) = run(
        "admin.mjs",
        &[
            ("HERALD_URL", h.url("")),
            ("HERALD_ADMIN_PASSWORD", ADMIN_PASSWORD.to_string()),
            ("HERALD_ROOM_FILL", ROOM_FILL.to_string()),
        ],
        None,
    )
    .await;
    assert_eq!(report["frankState"], "disconnected", "{report}");
    let published = report["publishedOffset"].as_u64().expect("an offset");
    let lobby = stored_texts(&h, "room:lobby").await;
    assert_eq!(
        lobby.get(published as usize - 1).map(String::as_str),
        Some("announcement from admin"),
        "the offset the console showed holds its publication: {lobby:?}"
    );
    assert_eq!(
        report["ranges"],
        json!([
            "offsets 26–45 of 45",
            "offsets 6–25 of 45",
            "offsets 26–45 of 45",
            "offsets 1–20 of 45"
        ])
    );
}

/// The vendored centrifuge-js bundle is the installed npm package's, byte
/// for byte, at the version install-tools.sh pins.
#[test]
fn the_vendored_sdk_is_the_pinned_npm_package() {
    let package = tool("node/node_modules/centrifuge");
    let installed = std::fs::read_to_string(package.join("dist/centrifuge.js")).expect("bundle");
    assert!(
        installed == herald::web::CENTRIFUGE_JS,
        "src/web/assets/vendor/centrifuge.js differs from the npm package's dist/centrifuge.js: copy it again"
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(package.join("package.json")).expect("package.json"),
    )
    .expect("package.json");
    assert_eq!(manifest["version"], herald::web::CENTRIFUGE_JS_VERSION);
    let script = std::fs::read_to_string(root().join("scripts/install-tools.sh")).expect("script");
    assert!(
        script.contains(&format!(
            "CENTRIFUGE_JS_VERSION={}",
            herald::web::CENTRIFUGE_JS_VERSION
        )),
        "install-tools.sh pins another centrifuge version"
    );
    let license = std::fs::read_to_string(package.join("LICENSE")).expect("LICENSE");
    let vendored = std::fs::read_to_string(root().join("src/web/assets/vendor/centrifuge.LICENSE"))
        .expect("license");
    assert_eq!(license, vendored, "the SDK's license is kept beside it");
}
