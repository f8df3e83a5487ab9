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
        channels: None,
    })
}

/// Runs `body` on a runtime whose calling thread has a 16 MiB stack: the
/// driver's session setup takes over 1 MiB of stack in a debug build, and
/// the suite's cases open sessions from deep inside their own futures, which
/// together passed a test thread's 2 MiB.
fn on_big_stack<Fut>(body: impl FnOnce() -> Fut + Send + 'static)
where
    Fut: std::future::Future<Output = ()>,
{
    let thread = std::thread::Builder::new()
        .name("contract".into())
        .stack_size(16 << 20)
        .spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(body())
        })
        .expect("spawn the contract thread");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn scylla_passes_the_contract() {
    let Some(settings) = scylla_settings("herald_test") else {
        return;
    };
    on_big_stack(move || scylla_contract(settings));
}

async fn scylla_contract(settings: ScyllaSettings) {
    let first = scylla::migrate(&settings).await.expect("migrate");
    assert_eq!(first.applied, vec![1, 2, 3, 4], "{first:?}");
    let again = scylla::migrate(&settings).await.expect("migrate again");
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(again.already, vec![1, 2, 3, 4]);

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

/// Not a test: the append rate against the node `HERALD_SCYLLA_NODES` names,
/// for BENCHMARKS.md (the cost of the fence's LWTs). 16 tasks (writer
/// partitions), each appending to its own channel batches of
/// `HERALD_BENCH_BATCH` publications (default 1) with one idempotency key
/// each, for `HERALD_BENCH_SECS` seconds (default 10). Prints appends/s.
/// `HERALD_BENCH_HANDLES=2` alternates two store handles on each channel (a
/// failover every batch: the fence's cold path, read + claim + commit).
///
/// `cargo test --test store_contract scylla_append_rate -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn scylla_append_rate() {
    use herald::store::{ChannelAppend, StoredPublication};
    let Some(settings) = scylla_settings("herald_bench") else {
        return;
    };
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let per_batch = env("HERALD_BENCH_BATCH", 1);
    let secs = env("HERALD_BENCH_SECS", 10);
    let handles = env("HERALD_BENCH_HANDLES", 1).max(1);
    scylla::migrate(&settings).await.expect("migrate");
    let options = StoreOptions {
        idempotency_retention: Duration::from_secs(86400),
    };
    let mut stores: Vec<SharedStore> = Vec::new();
    for _ in 0..handles {
        stores.push(Arc::new(
            ScyllaStore::connect(&settings, options.clone())
                .await
                .expect("connect"),
        ));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let stores = stores.clone();
            tokio::spawn(async move {
                let channel = format!("bench-{t}");
                let mut head = 0u64;
                let mut batches = 0u64;
                while std::time::Instant::now() < deadline {
                    let publications: Vec<_> = (head + 1..=head + per_batch)
                        .map(|offset| StoredPublication {
                            offset,
                            data: bytes::Bytes::from(format!(
                                r#"{{"n":{offset},"pad":"{}"}}"#,
                                "x".repeat(100)
                            )),
                            info: None,
                            time_ms: offset,
                        })
                        .collect();
                    let keys = (head + 1..=head + per_batch)
                        .map(|o| (format!("key-{o}"), o))
                        .collect();
                    stores[batches as usize % stores.len()]
                        .append(&[ChannelAppend {
                            channel: channel.clone(),
                            epoch: "e".into(),
                            publications,
                            idempotency_keys: keys,
                        }])
                        .await
                        .expect("append");
                    head += per_batch;
                    batches += 1;
                }
                batches
            })
        })
        .collect();
    let mut batches = 0;
    for task in tasks {
        batches += task.await.expect("task");
    }
    println!(
        "scylla_append_rate: batch {per_batch}, {handles} handle(s): {:.0} appends/s, {:.0} publications/s over {secs} s",
        batches as f64 / secs as f64,
        (batches * per_batch) as f64 / secs as f64
    );
}

/// Idempotency keys expire by the database's TTL (the retention when they
/// were written), not only by the lookup's age check: written with a 1 s
/// retention, looked up through a handle with a one-day retention (whose age
/// check would keep them), they disappear, and no lookup deleted them.
#[tokio::test]
async fn scylla_keys_expire_by_ttl() {
    use herald::store::{ChannelAppend, StoredPublication};
    let Some(settings) = scylla_settings("herald_ttl") else {
        return;
    };
    scylla::migrate(&settings).await.expect("migrate");
    let short = ScyllaStore::connect(
        &settings,
        StoreOptions {
            idempotency_retention: Duration::from_secs(1),
        },
    )
    .await
    .expect("connect");
    let publication = StoredPublication {
        offset: 1,
        data: bytes::Bytes::from_static(b"{}"),
        info: None,
        time_ms: 1,
    };
    short
        .append(&[ChannelAppend {
            channel: "ttl".into(),
            epoch: "e".into(),
            publications: vec![publication],
            idempotency_keys: vec![("k".into(), 1)],
        }])
        .await
        .expect("append");
    let long = ScyllaStore::connect(
        &settings,
        StoreOptions {
            idempotency_retention: Duration::from_secs(86400),
        },
    )
    .await
    .expect("connect");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while long
        .idempotent_offset("ttl", "k")
        .await
        .expect("lookup")
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the key outlived its 1 s TTL by 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    use herald::store::Store;
    assert_eq!(long.purge_expired_keys().await.expect("purge"), 0);
    assert_eq!(long.position("ttl").await.expect("position").head, 1);
}

/// Namespaces for the retention cases: `short` keeps history for
/// [`contract::SHORT_RETENTION`], `long` forever.
fn retention_namespaces() -> herald::config::ChannelsConfig {
    let mut channels = herald::config::Config::defaults().channels;
    let mut short = channels.default.clone();
    short.history_retention = Some(contract::SHORT_RETENTION);
    channels.namespaces.insert("short".into(), short);
    channels
        .namespaces
        .insert("long".into(), channels.default.clone());
    channels
}

/// Retention frees space (issue 16 §6, ScyllaDB side): publications of a
/// namespace with a `history_retention` are written with it as their TTL, so
/// the database removes them; the contract's expiry semantics hold.
#[tokio::test]
async fn scylla_history_expires_by_ttl() {
    let Some(settings) = scylla_settings("herald_ret") else {
        return;
    };
    let settings = settings.with_history_retention(&retention_namespaces());
    scylla::migrate(&settings).await.expect("migrate");
    let store = ScyllaStore::connect(
        &settings,
        StoreOptions {
            idempotency_retention: Duration::from_secs(86400),
        },
    )
    .await
    .expect("connect");
    contract::history_expiry(&(Arc::new(store) as SharedStore)).await;
}

/// Issue 16 §6, embedded side: the expiry thread deletes publications past
/// their namespace's retention; the contract's expiry semantics hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_history_expires_in_the_background() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = EmbeddedStore::open(
        &dir.path().join("store"),
        StoreOptions {
            idempotency_retention: Duration::from_secs(86400),
        },
    )
    .expect("open");
    store
        .start_expiry(retention_namespaces(), Duration::from_millis(200))
        .expect("start expiry");
    contract::history_expiry(&(Arc::new(store) as SharedStore)).await;
}

/// Bytes the files under `dir` occupy on disk (allocated blocks).
fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            du(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

/// Issue 16 §6: expiry gives the bytes back. 60 000 publications of 300
/// bytes in a 2 s retention namespace; once expired, expiry passes (what the
/// background thread runs) delete them and compact: the store's tables
/// shrink (fjall's journal is its own bounded space: see
/// `EmbeddedStore::compact`'s docs), the head stays and the next offset
/// follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_expiry_frees_disk_space() {
    use herald::store::{ChannelAppend, Direction, ReadRange, Store, StoredPublication};
    const N: u64 = 60_000;
    const BATCH: u64 = 1_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store");
    let store = EmbeddedStore::open(
        &path,
        StoreOptions {
            idempotency_retention: Duration::from_secs(86400),
        },
    )
    .expect("open");
    let ch = "short:big";
    let payload = "x".repeat(300);
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
    };
    let batch = |first: u64, n: u64| ChannelAppend {
        channel: ch.into(),
        epoch: "e".into(),
        idempotency_keys: vec![(format!("k{first}"), first)],
        publications: (first..first + n)
            .map(|offset| StoredPublication {
                offset,
                data: bytes::Bytes::from(format!(r#"{{"o":{offset},"p":"{payload}"}}"#)),
                info: None,
                time_ms: now(),
            })
            .collect(),
    };
    let written = std::time::Instant::now();
    for first in (1..=N).step_by(BATCH as usize) {
        store.append(&[batch(first, BATCH)]).await.expect("append");
    }
    let write_time = written.elapsed();
    store.flush().await.expect("flush");
    let tables = path.join("keyspaces");
    let before = (du(&tables), du(&path));
    tokio::time::sleep(contract::SHORT_RETENTION + Duration::from_millis(200)).await;
    let expiring = std::time::Instant::now();
    let mut passes = Vec::new();
    loop {
        let pass = store
            .expire(retention_namespaces())
            .await
            .expect("expiry pass");
        passes.push(pass);
        if pass.publications_deleted == 0 {
            break;
        }
        assert!(passes.len() < 10, "expiry does not finish: {passes:?}");
    }
    let expiry_time = expiring.elapsed();
    // The compacted-away tables' files go at fjall's next memtable flush
    // (any write traffic brings one; here: one more publication, flushed).
    store
        .append(&[batch(N + 1, 1)])
        .await
        .expect("the next offset");
    store.flush().await.expect("flush");
    let after = (du(&tables), du(&path));
    println!(
        "embedded_expiry_frees_disk_space: {N} publications of ~320 bytes written in \
         {write_time:.1?}; tables {} KiB (whole directory with fjall's journal {} KiB) before \
         expiry, {} KiB ({} KiB) after {} pass(es) in {expiry_time:.2?}: {passes:?}",
        before.0 / 1024,
        before.1 / 1024,
        after.0 / 1024,
        after.1 / 1024,
        passes.len()
    );
    let deleted: u64 = passes.iter().map(|p| p.publications_deleted).sum();
    assert_eq!(deleted, N);
    assert!(passes.iter().any(|p| p.compacted), "{passes:?}");
    assert!(
        after.0 * 2 < before.0,
        "the tables shrank by half at least: {before:?} -> {after:?}"
    );
    let all = ReadRange {
        after: 0,
        before: None,
        limit: 10,
        direction: Direction::Forward,
    };
    assert_eq!(store.position(ch).await.expect("position").head, N + 1);
    let left = store.read(ch, all).await.expect("read");
    assert_eq!(
        left.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![N + 1]
    );
}
