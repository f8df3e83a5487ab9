//! Smoke runs of `herald-bench`: every scenario with tiny parameters, the
//! real binary starting its own nats-server, Herald (the `herald` binary
//! beside it, which `cargo test --workspace` builds) and peer. Correctness
//! only — nothing lost, duplicated or failed, counts equal to what was sent,
//! the peer's figures present — never timing.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The repository's nats-server: `$HERALD_TEST_NATS_SERVER`, else the one
/// scripts/install-tools.sh puts in `.tools/`.
fn nats_server_bin() -> PathBuf {
    std::env::var_os("HERALD_TEST_NATS_SERVER").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../.tools/py/bin/nats-server"
            ))
        },
        PathBuf::from,
    )
}

/// The server binary beside herald-bench (built by `cargo test --workspace`).
fn herald_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_herald-bench")).with_file_name("herald");
    assert!(
        bin.exists(),
        "{} is missing: run the workspace's tests (`cargo test --workspace`) or `cargo build -p herald` first",
        bin.display()
    );
    bin
}

/// Runs `herald-bench <args> --json --quiet` and returns the report.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(args)
        .arg("--herald")
        .arg(herald_bin())
        .args(["--json", "--quiet", "--nats-server"])
        .arg(nats_server_bin())
        .output()
        .expect("run herald-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "herald bench {args:?} failed ({}):\n{stderr}",
        out.status
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bench printed no JSON report ({e}):\n{stderr}"))
}

/// Every correctness check of `side` ("herald" or "peer") is zero.
fn checks_zero(report: &Value, side: &str) {
    let checks = report[side]["checks"]
        .as_object()
        .unwrap_or_else(|| panic!("{side} has no checks: {report}"));
    assert!(!checks.is_empty(), "{side} has no checks");
    for (name, v) in checks {
        assert_eq!(v, 0, "{side} check {name} is {v}: {report}");
    }
    assert_eq!(report["ok"], true);
}

fn figure(report: &Value, side: &str, key: &str) -> f64 {
    report[side][key]
        .as_f64()
        .unwrap_or_else(|| panic!("{side}.{key} missing: {report}"))
}

fn fanout(mode: &str) {
    let r = bench(&[
        "fanout",
        "--mode",
        mode,
        "--rooms",
        "2",
        "--subscribers",
        "3",
        "--messages",
        "5",
    ]);
    for side in ["herald", "peer"] {
        checks_zero(&r, side);
        assert_eq!(figure(&r, side, "connections"), 6.0);
        assert_eq!(figure(&r, side, "published"), 10.0, "2 rooms × 5");
        assert_eq!(figure(&r, side, "deliveries"), 30.0, "10 × 3 subscribers");
        assert!(figure(&r, side, "delivery_p99_ms") > 0.0);
    }
    assert_eq!(r["peer"]["name"], "nats-server ws");
    assert!(r["ratios"]["deliveries_per_sec"].as_f64().is_some());
}

#[test]
fn fanout_ephemeral() {
    fanout("ephemeral");
}

#[test]
fn fanout_history() {
    fanout("history");
}

#[test]
fn connections() {
    let r = bench(&[
        "connections",
        "--connections",
        "12",
        "--room-size",
        "4",
        "--idle",
        "2s",
        "--ping-interval",
        "1s",
    ]);
    for side in ["herald", "peer"] {
        checks_zero(&r, side);
        assert_eq!(figure(&r, side, "connections"), 12.0);
        assert!(figure(&r, side, "rss_after_mib") > 0.0);
        assert!(
            figure(&r, side, "pings") >= 12.0,
            "every client answered a ping"
        );
    }
}

#[test]
fn ingest() {
    let r = bench(&[
        "ingest",
        "--publishers",
        "3",
        "--channels",
        "4",
        "--messages",
        "30",
    ]);
    checks_zero(&r, "herald");
    checks_zero(&r, "peer");
    assert_eq!(figure(&r, "herald", "client_publishes"), 30.0);
    assert_eq!(figure(&r, "herald", "api_publishes"), 30.0);
    assert_eq!(figure(&r, "peer", "publishes"), 30.0);
    assert_eq!(r["peer"]["name"], "jetstream");
    assert!(r["ratios"]["client_publishes_per_sec"].as_f64().is_some());
}

#[test]
fn recovery() {
    let r = bench(&[
        "recovery",
        "--clients",
        "8",
        "--channels",
        "2",
        "--missed",
        "5",
    ]);
    checks_zero(&r, "herald");
    assert_eq!(figure(&r, "herald", "clients"), 8.0);
    assert_eq!(figure(&r, "herald", "recovered_publications"), 40.0);
    assert!(r["peer"].is_null());
}

#[test]
fn history() {
    let r = bench(&[
        "history",
        "--channels",
        "2",
        "--fill",
        "150",
        "--pages",
        "20",
        "--concurrency",
        "2",
    ]);
    checks_zero(&r, "herald");
    assert_eq!(figure(&r, "herald", "cold_pages"), 20.0);
    assert_eq!(figure(&r, "herald", "hot_pages"), 20.0);
}

#[test]
fn presence() {
    let r = bench(&[
        "presence",
        "--members",
        "3,10",
        "--cycles",
        "5",
        "--concurrency",
        "2",
        "--queries",
        "3",
    ]);
    checks_zero(&r, "herald");
    assert_eq!(figure(&r, "herald", "on_cycles"), 10.0);
    assert_eq!(figure(&r, "herald", "off_cycles"), 10.0);
    assert!(figure(&r, "herald", "stats_10_p50_ms") > 0.0);
    assert!(figure(&r, "herald", "presence_10_p99_ms") > 0.0);
}

#[test]
fn conversations() {
    let r = bench(&[
        "conversations",
        "--publishes",
        "5",
        "--concurrency",
        "2",
        "--members",
        "3",
        "--conversations",
        "60",
        "--with-messages",
        "7",
        "--queries",
        "3",
    ]);
    checks_zero(&r, "herald");
    for kind in ["plain", "dm", "group"] {
        assert_eq!(figure(&r, "herald", &format!("{kind}_publishes")), 10.0);
    }
    assert!(figure(&r, "herald", "list_p50_ms") > 0.0);
    assert!(figure(&r, "herald", "unread_p99_ms") > 0.0);
}

#[test]
fn plot_and_hdr_files_are_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (png, hdr) = (dir.path().join("lat.png"), dir.path().join("lat.hdr"));
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(["fanout", "--rooms", "1", "--subscribers", "2"])
        .args(["--messages", "3", "--no-peer", "--quiet", "--nats-server"])
        .arg(nats_server_bin())
        .arg("--plot")
        .arg(&png)
        .arg("--hdr")
        .arg(&hdr)
        .output()
        .expect("run herald-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let picture = std::fs::read(&png).expect("the plot was written");
    assert_eq!(&picture[1..4], b"PNG");
    let text = std::fs::read_to_string(&hdr).expect("the histogram was written");
    assert!(text.contains("# herald delivery (ms)"), "{text}");
    assert!(text.contains("Total count = 6"), "{text}");
}

#[test]
fn a_system_limit_is_named() {
    // More connections than the kernel lets any process have descriptors
    // (fs.nr_open), so even root cannot raise the limit far enough: the
    // bench must say which limit stops it, before starting anything. Run
    // through the server's `herald bench` forwarder.
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .expect("read fs.nr_open")
        .trim()
        .parse()
        .expect("a number");
    let n = (nr_open + 1).to_string();
    let out = Command::new(herald_bin())
        .args(["bench", "connections", "--connections", &n, "--quiet"])
        .output()
        .expect("run herald-bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("system limit"), "{stderr}");
    assert!(stderr.contains("file descriptors"), "{stderr}");
}
