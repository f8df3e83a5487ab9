//! The metrics catalogue, black box: a real nats-server and the real
//! `herald serve` binary (so the `process_*` figures are herald's own) under
//! light load that touches every role — WebSocket clients connect, subscribe,
//! publish and read history, the server API publishes, a client reads a
//! history page over sync HTTP, a client disconnects — then one scrape taken
//! while publishes are still running must:
//! - pass `promtool check metrics` (Debian's Prometheus, installed into
//!   `.tools/` by scripts/install-tools.sh) with no output at all;
//! - hold every name of `herald::metrics::HELP` with `# HELP`, `# TYPE` and
//!   the `role` label;
//! - show values that follow from the load.
//!
//! After a NATS restart the connection metrics show the reconnect.
//!
//! The metered store wrapper keeps the store contract and labels what it
//! measures; README's `### Metrics` table lists exactly the catalogue.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use common::node::SECRET;
use common::process::{HeraldProcess, Spec, metric_value};
use common::ws::WsClient;
use common::{TestNats, eventually};
use herald::metrics::HELP;
use herald::store::embedded::EmbeddedStore;
use herald::store::metered;

const CHANNEL: &str = "room";
/// Where the background load publishes: no subscriber, so the idle test
/// clients' sockets do not fill up.
const LOAD_CHANNEL: &str = "load";
/// Publishes of each kind in the first, synchronous part of the load.
const PUBLISHES: u64 = 10;

fn promtool() -> PathBuf {
    common::tool("prometheus/usr/bin/promtool")
}

fn token(user: &str) -> String {
    herald::auth::mint(SECRET, user, None, Duration::from_secs(3600))
}

/// Sum of the series `name{labels}` in `text` (0 when absent).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(text, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_under_load_is_valid_complete_and_follows_the_load() {
    let promtool = promtool();
    let mut nats = TestNats::start().await;
    let data = tempfile::tempdir().expect("temp dir");
    let mut spec = Spec::serve("serve", nats.url(), data.path());
    // A configured proxy (never called here): its series exist at 0.
    spec.options.insert(
        "proxies".into(),
        r#"[{"name":"backend","endpoint":"http://127.0.0.1:9/proxy"}]"#.into(),
    );
    let herald = HeraldProcess::start(spec).await;
    let addr = herald.addr();
    let api = herald.api();

    // Three subscribers; one of them publishes and reads history.
    let mut clients = Vec::new();
    for user in ["ann", "bob", "cid"] {
        let (mut c, _) = WsClient::connect(addr, &token(user)).await;
        let r = c.call("subscribe", json!({ "channel": CHANNEL })).await;
        assert!(r.get("subscribe").is_some(), "{r}");
        clients.push(c);
    }
    for i in 0..PUBLISHES {
        let r = clients[0]
            .call(
                "publish",
                json!({ "channel": CHANNEL, "data": { "client": i } }),
            )
            .await;
        assert!(r.get("publish").is_some(), "{r}");
        api.ok(
            "publish",
            &json!({ "channel": CHANNEL, "data": { "api": i } }),
            Duration::from_secs(10),
        )
        .await;
    }
    for c in &mut clients {
        for _ in 0..2 * PUBLISHES {
            c.publication(CHANNEL).await;
        }
    }
    let r = clients[0]
        .call("history", json!({ "channel": CHANNEL, "limit": 5 }))
        .await;
    assert_eq!(
        r["history"]["publications"].as_array().map(Vec::len),
        Some(5),
        "{r}"
    );
    let page: Value = reqwest::Client::new()
        .get(herald.url(&format!("/api/v1/channels/{CHANNEL}/publications?limit=5")))
        .bearer_auth(token("ann"))
        .send()
        .await
        .expect("sync http")
        .json()
        .await
        .expect("sync json");
    assert_eq!(
        page["publications"].as_array().map(Vec::len),
        Some(5),
        "{page}"
    );
    // A fourth client comes and goes (disconnect code 3000).
    let (leaving, _) = WsClient::connect(addr, &token("dan")).await;
    leaving.close().await;

    // Publishes keep running while the scrape is taken.
    let running = Arc::new(AtomicBool::new(true));
    let published = Arc::new(AtomicU64::new(2 * PUBLISHES));
    let load = tokio::spawn({
        let (running, published, api) = (running.clone(), published.clone(), api.clone());
        async move {
            let mut i = 0u64;
            while running.load(Ordering::SeqCst) && i < 1000 {
                let body = json!({ "channel": LOAD_CHANNEL, "data": { "load": i } });
                if matches!(api.call("publish", &body).await, Ok(v) if v.get("result").is_some()) {
                    published.fetch_add(1, Ordering::SeqCst);
                }
                i += 1;
            }
        }
    });
    eventually("the load is running", Duration::from_secs(10), || async {
        (published.load(Ordering::SeqCst) > 2 * PUBLISHES + 5).then_some(())
    })
    .await;
    // Settled figures: the leaver is gone, deliveries are recorded.
    let scrape = eventually(
        "three connections and recorded deliveries",
        Duration::from_secs(10),
        || async {
            let t = herald.metrics().await;
            (value(&t, "herald_edge_connections", &[]) == 3.0
                && value(&t, "herald_edge_delivery_seconds_count", &[]) > 0.0)
                .then_some(t)
        },
    )
    .await;
    let published_before_scrape = published.load(Ordering::SeqCst);
    running.store(false, Ordering::SeqCst);
    load.await.expect("load task");
    // Everything queued has been written: the gauge comes back to zero.
    eventually(
        "no outbound bytes queued once idle",
        Duration::from_secs(10),
        || async {
            (herald
                .metric("herald_edge_outbound_queued_bytes", &[])
                .await
                == 0.0)
                .then_some(())
        },
    )
    .await;

    // (a) promtool reports nothing.
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(scrape.as_bytes())
        .expect("write the scrape to promtool");
    let out = check.wait_with_output().expect("promtool output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.is_empty(),
        "promtool check metrics: {}\n{report}",
        out.status
    );

    // (b) every name: help, type, and samples labelled with the role.
    for (name, _) in HELP {
        assert!(
            scrape.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
        assert!(
            scrape.contains(&format!("# TYPE {name} ")),
            "no TYPE for {name}"
        );
        let labelled = scrape.lines().any(|l| {
            l.split(['{', ' '])
                .next()
                .is_some_and(|series| series.strip_prefix(name).is_some_and(is_sample_suffix))
                && l.contains("role=\"serve\"")
        });
        assert!(labelled, "no sample of {name} with role=\"serve\"");
    }

    // (c) values that follow from the load.
    let v = |name: &str, labels: &[(&str, &str)]| value(&scrape, name, labels);
    assert_eq!(
        v(
            "herald_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(v("herald_edge_connections", &[]), 3.0);
    assert_eq!(v("herald_edge_subscriptions", &[]), 3.0);
    assert_eq!(v("herald_edge_channels", &[]), 1.0, "{CHANNEL} only");
    // One per channel with local interest, plus the control subscription
    // and presence's two (queries, heartbeats).
    assert_eq!(v("herald_edge_nats_subscriptions", &[]), 4.0);
    assert_eq!(v("herald_edge_connects_total", &[]), 4.0);
    assert!(v("herald_edge_disconnects_total", &[("code", "3000")]) >= 1.0);
    assert!(v("herald_edge_messages_in_total", &[]) >= (3 * 2 + PUBLISHES + 1) as f64);
    assert!(v("herald_edge_messages_out_total", &[]) >= (3 * 2 * PUBLISHES) as f64);
    assert!(v("herald_edge_bytes_in_total", &[]) > 0.0);
    assert!(v("herald_edge_bytes_out_total", &[]) > 0.0);
    assert_eq!(
        v(
            "herald_edge_commands_total",
            &[("method", "publish"), ("result", "ok")]
        ),
        PUBLISHES as f64
    );
    assert_eq!(
        v("herald_edge_publish_seconds_count", &[("source", "client")]),
        PUBLISHES as f64
    );
    assert!(v("herald_edge_publish_seconds_count", &[("source", "api")]) >= PUBLISHES as f64);
    assert!(v("herald_edge_delivery_seconds_count", &[]) > 0.0);
    assert!(v("herald_edge_outbound_queued_bytes", &[]) >= 0.0);
    assert_eq!(v("herald_edge_slow_disconnects_total", &[]), 0.0);
    let sequenced = v("herald_writer_sequenced_total", &[]);
    assert!(
        sequenced >= 2.0 * PUBLISHES as f64,
        "sequenced {sequenced} of at least {} published",
        2 * PUBLISHES
    );
    assert!(sequenced <= published_before_scrape as f64 + 1.0);
    assert!(v("herald_writer_batches_total", &[]) >= 1.0);
    assert!(v("herald_writer_commit_seconds_count", &[]) >= 1.0);
    assert!(v("herald_writer_ack_seconds_count", &[]) >= 1.0);
    assert!(v("herald_writer_ingest_lag_seconds_count", &[]) >= sequenced);
    // The stages of the persisted path (issue 18): every history publish
    // got JetStream's ack, every message was received and every batch looked
    // up and published by the writer, and the subscribers' feed received
    // what was committed.
    assert!(v("herald_edge_publish_ingest_ack_seconds_count", &[]) >= 2.0 * PUBLISHES as f64);
    assert!(v("herald_writer_receive_lag_seconds_count", &[]) >= sequenced);
    let batches = v("herald_writer_batches_total", &[]);
    assert!(v("herald_writer_lookup_seconds_count", &[]) >= batches);
    assert!(v("herald_writer_publish_seconds_count", &[]) >= batches);
    assert!(v("herald_edge_feed_lag_seconds_count", &[]) >= PUBLISHES as f64);
    assert_eq!(v("herald_writer_partitions_owned", &[]), 4.0);
    for partition in ["0", "1", "2", "3"] {
        assert!(
            metric_value(
                &scrape,
                "herald_writer_consumer_pending_messages",
                &[("partition", partition)]
            )
            .is_some(),
            "consumer pending of partition {partition}"
        );
    }
    assert!(
        v(
            "herald_sync_requests_total",
            &[("source", "http"), ("result", "ok")]
        ) >= 1.0
    );
    assert!(
        v(
            "herald_sync_requests_total",
            &[("source", "nats"), ("result", "ok")]
        ) >= 1.0
    );
    assert!(v("herald_sync_rows_read_total", &[]) >= 10.0);
    assert!(
        v(
            "herald_store_operation_seconds_count",
            &[("op", "append"), ("backend", "embedded")]
        ) >= 1.0
    );
    assert!(
        v(
            "herald_store_operation_seconds_count",
            &[("op", "read"), ("backend", "embedded")]
        ) >= 1.0
    );
    assert_eq!(v("herald_store_errors_total", &[]), 0.0);
    assert!(
        v(
            "herald_api_requests_total",
            &[("method", "publish"), ("result", "ok")]
        ) >= PUBLISHES as f64
    );
    assert_eq!(v("herald_nats_connected", &[]), 1.0);
    assert_eq!(v("herald_nats_reconnects_total", &[]), 0.0);
    assert!(v("process_resident_memory_bytes", &[]) > 1e6);
    assert!(v("process_open_fds", &[]) > 0.0);
    assert!(v("process_cpu_seconds_total", &[]) > 0.0);
    assert!(v("herald_tokio_workers", &[]) >= 1.0);
    assert!(v("herald_tokio_alive_tasks", &[]) >= 1.0);
    assert!(v("herald_tokio_busy_seconds_total", &[]) > 0.0);

    // NATS goes away and comes back: one reconnect, connected again.
    nats.restart().await;
    eventually(
        "herald reconnects to NATS",
        Duration::from_secs(20),
        || async {
            let t = herald.metrics().await;
            (value(&t, "herald_nats_reconnects_total", &[]) == 1.0
                && value(&t, "herald_nats_connected", &[]) == 1.0)
                .then_some(())
        },
    )
    .await;
}

/// The metered wrapper is a transparent `Store` (the whole contract suite
/// passes through it) that measures every call, and labels failures with
/// their kind (the suite provokes conflicts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metered_store_keeps_the_contract_and_measures_it() {
    let metrics = herald::metrics::install(herald::roles::Role::Writer);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store");
    herald::store::contract::run_all(|options| {
        let path = path.clone();
        async move {
            let store = EmbeddedStore::open(&path, options).expect("open the embedded store");
            metered::wrap(Arc::new(store), "embedded")
        }
    })
    .await;
    let text = metrics.render();
    for op in herald::metrics::labels::STORE_OPS {
        assert!(
            value(
                &text,
                "herald_store_operation_seconds_count",
                &[("op", op), ("backend", "embedded")]
            ) >= 1.0,
            "{op} measured"
        );
    }
    assert!(
        value(
            &text,
            "herald_store_errors_total",
            &[
                ("op", "append"),
                ("backend", "embedded"),
                ("kind", "conflict")
            ]
        ) >= 1.0,
        "conflicts counted"
    );
    assert_eq!(
        value(&text, "herald_store_errors_total", &[("op", "read")]),
        0.0
    );
}

/// What may follow a metric's name in a sample line: nothing, or a
/// histogram's series suffix.
fn is_sample_suffix(rest: &str) -> bool {
    matches!(rest, "" | "_bucket" | "_sum" | "_count")
}

#[test]
fn readme_lists_exactly_the_catalogue() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .expect("read README.md");
    let start = readme
        .find("\n### Metrics\n")
        .expect("README has a `### Metrics` section");
    let section = &readme[start + 1..];
    let end = section[4..]
        .find("\n## ")
        .into_iter()
        .chain(section[4..].find("\n### "))
        .min()
        .map_or(section.len(), |e| e + 4);
    let section = &section[..end];
    let listed: BTreeSet<&str> = section
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            (w.starts_with("herald_") || w.starts_with("process_")) && w.len() > "process_".len()
        })
        .collect();
    let catalogue: BTreeSet<&str> = HELP.iter().map(|(n, _)| *n).collect();
    let missing: Vec<_> = catalogue.difference(&listed).collect();
    let unknown: Vec<_> = listed.difference(&catalogue).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "README ### Metrics: missing {missing:?}, not in the catalogue {unknown:?}"
    );
}
