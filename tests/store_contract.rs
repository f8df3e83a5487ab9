//! The store contract suite against the embedded (fjall) backend in a temp
//! dir, plus what only the embedded backend promises: its directory lock; and
//! against ScyllaDB when `HERALD_SCYLLA_NODES` names a cluster (a fresh
//! keyspace per run, small buckets so the suite crosses bucket boundaries).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald::config::{ScyllaConfig, ScyllaConsistency, Secret};
use herald::store::embedded::EmbeddedStore;
use herald::store::scylla::{self, ScyllaSettings, ScyllaStore};
use herald::store::{AppendHook, SharedStore, StoreErrorKind, StoreOptions, contract};

fn open(dir: &Path, options: StoreOptions) -> SharedStore {
    Arc::new(EmbeddedStore::open(dir, options).expect("open the embedded store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store_passes_the_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store");
    contract::run_all(|options| {
        let path = path.clone();
        async move { open(&path, options) }
    })
    .await;
}

#[tokio::test]
async fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store");
    let options = StoreOptions {
        idempotency_retention: Duration::from_secs(60),
    };
    let first = open(&path, options.clone());

    let err = EmbeddedStore::open(&path, options.clone())
        .err()
        .expect("a second open while the first is held");
    assert_eq!(err.kind, StoreErrorKind::Locked, "{err}");
    assert!(err.message.contains(&path.display().to_string()), "{err}");
    assert!(err.message.contains("another Herald process"), "{err}");

    drop(first);
    let again = open(&path, options);
    assert_eq!(again.position("c").await.expect("position").head, 0);
}

/// Settings for a fresh keyspace on the cluster named by
/// `HERALD_SCYLLA_NODES`; `None` (after saying so on the real stderr, which
/// `cargo test` shows even for passing tests) when it is not set.
fn scylla_settings(prefix: &str) -> Option<ScyllaSettings> {
    let nodes = match std::env::var("HERALD_SCYLLA_NODES") {
        Ok(n) if !n.trim().is_empty() => n,
        _ => {
            let _ = writeln!(std::io::stderr(), "skipped: HERALD_SCYLLA_NODES not set");
            return None;
        }
    };
    Some(ScyllaSettings {
        cluster: ScyllaConfig {
            nodes: nodes.split(',').map(|n| n.trim().to_string()).collect(),
            keyspace: format!("{prefix}_{}", uuid::Uuid::new_v4().simple()),
            local_dc: None,
            consistency: ScyllaConsistency::LocalQuorum,
            username: std::env::var("HERALD_SCYLLA_USERNAME").ok(),
            password: std::env::var("HERALD_SCYLLA_PASSWORD")
                .ok()
                .map(Secret::new),
            tls: false,
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            request_timeout: Duration::from_secs(10),
        },
        // 8 offsets per partition: the 5000-publication case crosses hundreds
        // of bucket boundaries.
        bucket_bits: 3,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scylla_passes_the_contract() {
    let Some(settings) = scylla_settings("herald_test") else {
        return;
    };
    let first = scylla::migrate(&settings).await.expect("migrate");
    assert_eq!(first.applied, vec![1, 2], "{first:?}");
    let again = scylla::migrate(&settings).await.expect("migrate again");
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(again.already, vec![1, 2]);

    contract::run_all(|options| {
        let settings = settings.clone();
        async move {
            Arc::new(
                ScyllaStore::connect(&settings, options)
                    .await
                    .expect("connect to ScyllaDB"),
            ) as SharedStore
        }
    })
    .await;
    // Two handles on one keyspace, one with a pause / failure hook: a stale
    // writer (section 5a) and a leftover idempotency key (5b).
    contract::run_shared(|options, hook: Option<AppendHook>| {
        let settings = settings.clone();
        async move {
            let store = ScyllaStore::connect(&settings, options)
                .await
                .expect("connect to ScyllaDB");
            let store = match hook {
                Some(hook) => store.with_append_hook(hook),
                None => store,
            };
            Arc::new(store) as SharedStore
        }
    })
    .await;
}

#[tokio::test]
async fn scylla_without_the_schema_says_run_migrate() {
    let Some(settings) = scylla_settings("herald_absent") else {
        return;
    };
    let options = StoreOptions {
        idempotency_retention: Duration::from_secs(60),
    };
    let err = ScyllaStore::connect(&settings, options)
        .await
        .err()
        .expect("connecting to a keyspace without the schema fails");
    assert_eq!(err.kind, StoreErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("herald migrate"), "{err}");
}
