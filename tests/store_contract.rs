//! The store contract suite against the embedded (fjall) backend in a temp
//! dir, plus what only the embedded backend promises: its directory lock.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald::store::embedded::EmbeddedStore;
use herald::store::{SharedStore, StoreErrorKind, StoreOptions, contract};

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
