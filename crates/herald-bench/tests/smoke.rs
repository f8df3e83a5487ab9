//! Smoke runs of `herald-bench`: every scenario with tiny parameters, the
//! real binary starting its own nats-server, Herald (the `herald` binary
//! beside it, which `cargo test --workspace` builds) and every peer of the
//! scenario (nats-servers, Centrifugo from `.tools/`). Correctness only —
//! nothing lost, duplicated or failed, counts equal to what was sent, each
//! peer's figures and ratios present — never timing.

use std::path::{Path, PathBuf};
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

/// The repository's Centrifugo: `$HERALD_TEST_CENTRIFUGO`, else the one
/// scripts/install-tools.sh puts in `.tools/`.
fn centrifugo_bin() -> PathBuf {
    let bin = std::env::var_os("HERALD_TEST_CENTRIFUGO").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../.tools/centrifugo/centrifugo"
            ))
        },
        PathBuf::from,
    );
    assert!(
        bin.exists(),
        "{} is missing: run scripts/install-tools.sh (the bench's Centrifugo peer)",
        bin.display()
    );
    bin
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

/// `herald-bench <args> --json --quiet` with the repository's binaries.
fn command(args: &[&str]) -> Command {
    command_with(args, &centrifugo_bin())
}

/// [`command`] with this Centrifugo binary.
fn command_with(args: &[&str], centrifugo: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald-bench"));
    c.args(args)
        .arg("--herald")
        .arg(herald_bin())
        .args(["--json", "--quiet", "--nats-server"])
        .arg(nats_server_bin())
        .arg("--centrifugo")
        .arg(centrifugo);
    c
}

/// Runs `herald-bench <args> --json --quiet` and returns the report.
fn bench(args: &[&str]) -> Value {
    report(command(args))
}

/// Runs a bench command and returns its report; it must succeed.
fn report(mut command: Command) -> Value {
    let out = command.output().expect("run herald-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{stderr}",
        out.status
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bench printed no JSON report ({e}):\n{stderr}"))
}

/// The figures of `side`: "herald" or a peer's name.
fn side<'a>(report: &'a Value, side: &str) -> &'a Value {
    let v = if side == "herald" {
        &report["herald"]
    } else {
        &report["peers"][side]
    };
    assert!(v.is_object(), "no figures for {side}: {report}");
    v
}

/// The peers the report holds, by name.
fn peer_names(report: &Value) -> Vec<&str> {
    report["peers"]
        .as_object()
        .unwrap_or_else(|| panic!("no peers object: {report}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// Every correctness check of `side` ("herald" or a peer's name) is zero.
fn checks_zero(report: &Value, side: &str) {
    let checks = self::side(report, side)["checks"]
        .as_object()
        .unwrap_or_else(|| panic!("{side} has no checks: {report}"));
    assert!(!checks.is_empty(), "{side} has no checks");
    for (name, v) in checks {
        assert_eq!(v, 0, "{side} check {name} is {v}: {report}");
    }
    assert_eq!(report["ok"], true);
}

fn figure(report: &Value, side: &str, key: &str) -> f64 {
    self::side(report, side)[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{side}.{key} missing: {report}"))
}

/// Herald ÷ `peer` on `key`.
fn ratio(report: &Value, peer: &str, key: &str) -> f64 {
    report["ratios"][peer][key]
        .as_f64()
        .unwrap_or_else(|| panic!("no ratio {key} for {peer}: {report}"))
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
    assert_eq!(peer_names(&r), ["centrifugo", "nats-server ws"]);
    for side in ["herald", "nats-server ws", "centrifugo"] {
        checks_zero(&r, side);
        assert_eq!(figure(&r, side, "connections"), 6.0);
        assert_eq!(figure(&r, side, "published"), 10.0, "2 rooms × 5");
        assert_eq!(figure(&r, side, "deliveries"), 30.0, "10 × 3 subscribers");
        assert!(figure(&r, side, "delivery_p99_ms") > 0.0);
    }
    for peer in ["nats-server ws", "centrifugo"] {
        assert!(ratio(&r, peer, "deliveries_per_sec") > 0.0);
        assert_eq!(ratio(&r, peer, "deliveries"), 1.0);
    }
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
        "--settle",
        "300ms",
    ]);
    assert_eq!(peer_names(&r), ["centrifugo", "nats-server ws"]);
    for side in ["herald", "nats-server ws", "centrifugo"] {
        checks_zero(&r, side);
        assert_eq!(figure(&r, side, "connections"), 12.0);
        assert!(figure(&r, side, "rss_after_mib") > 0.0);
        assert!(
            figure(&r, side, "pings") >= 12.0,
            "every client answered a ping"
        );
    }
    assert!(ratio(&r, "centrifugo", "rss_after_mib") > 0.0);
    assert!(ratio(&r, "nats-server ws", "rss_after_mib") > 0.0);
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
    assert_eq!(
        peer_names(&r),
        ["centrifugo", "jetstream", "jetstream sync"]
    );
    for side in ["herald", "jetstream", "jetstream sync", "centrifugo"] {
        checks_zero(&r, side);
    }
    for side in ["herald", "centrifugo"] {
        assert_eq!(figure(&r, side, "client_publishes"), 30.0);
        assert_eq!(figure(&r, side, "api_publishes"), 30.0);
    }
    // Centrifugo's client publish reply has no offset: its history is checked.
    assert!(side(&r, "centrifugo")["checks"]["client_history_mismatch"].is_u64());
    for peer in ["jetstream", "jetstream sync"] {
        assert_eq!(figure(&r, peer, "publishes"), 30.0);
    }
    // Each Herald path against each peer: Centrifugo's same path, the
    // JetStream peers' one publish figure.
    for peer in ["jetstream", "jetstream sync", "centrifugo"] {
        assert!(ratio(&r, peer, "client_publishes_per_sec") > 0.0);
        assert!(ratio(&r, peer, "api_publishes_per_sec") > 0.0);
    }
    let expected = figure(&r, "herald", "client_publishes_per_sec")
        / figure(&r, "centrifugo", "client_publishes_per_sec");
    let got = ratio(&r, "centrifugo", "client_publishes_per_sec");
    assert!(
        // The JSON rounds to 3 decimals.
        (got - expected).abs() <= 0.0006 + 0.01 * expected,
        "client path against Centrifugo's client path: {got} vs {expected}"
    );
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
    assert!(peer_names(&r).is_empty(), "recovery has no peer");
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
fn peers_are_chosen_with_peer() {
    // Centrifugo named relative to the working directory, as in
    // BENCHMARKS.md's commands (it runs in a directory of its own).
    centrifugo_bin();
    let mut c = command_with(
        &[
            "ingest",
            "--publishers",
            "2",
            "--channels",
            "2",
            "--messages",
            "10",
            "--peer",
            "jetstream-sync,centrifugo",
        ],
        Path::new(".tools/centrifugo/centrifugo"),
    );
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let r = report(c);
    assert_eq!(peer_names(&r), ["centrifugo", "jetstream sync"]);
    checks_zero(&r, "jetstream sync");
    checks_zero(&r, "centrifugo");
    assert_eq!(figure(&r, "jetstream sync", "publishes"), 10.0);
    assert_eq!(figure(&r, "centrifugo", "client_publishes"), 10.0);

    // A peer the scenario does not have is refused, naming those it has.
    let out = command(&["fanout", "--rooms", "1", "--subscribers", "1"])
        .args(["--messages", "1", "--peer", "jetstream"])
        .output()
        .expect("run herald-bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fanout has no peer jetstream; its peers: nats-ws, centrifugo"),
        "{stderr}"
    );
    let out = command(&["recovery", "--clients", "1", "--peer", "centrifugo"])
        .output()
        .expect("run herald-bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("recovery has no peer centrifugo; it has none"),
        "{stderr}"
    );
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
