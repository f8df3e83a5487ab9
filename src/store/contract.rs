//! The store contract suite: what every `Store` backend must do, as async
//! functions with real assertions (they panic on failure, like tests).
//!
//! Compiled into the library so each backend's integration test calls the same
//! cases. A backend runs the suite with a factory that opens the *same*
//! underlying storage on every call (same directory, same keyspace) with the
//! options it is given; the suite drops every handle it holds before calling
//! the factory again, so backends that lock their storage (the embedded one)
//! can reopen it:
//!
//! ```text
//! #[tokio::test(flavor = "multi_thread")]
//! async fn contract() {
//!     let dir = tempfile::tempdir().unwrap();
//!     let path = dir.path().to_path_buf();
//!     herald::store::contract::run_all(move |options| {
//!         let path = path.clone();
//!         async move { Arc::new(MyStore::open(&path, options).unwrap()) as SharedStore }
//!     })
//!     .await;
//! }
//! ```
//!
//! Every case uses channel names unique to the run, so the suite can run
//! against storage that keeps data from earlier runs (a shared ScyllaDB
//! keyspace). It does not know any backend.

pub mod device;
pub mod im;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    AppendHook, AppendStep, ChannelAppend, Direction, Position, ReadRange, SharedStore, StoreError,
    StoreErrorKind, StoreOptions, StoredPublication,
};

/// The retention most cases open the store with.
pub const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Publications in the dense-paging case: more than one 4096-offset bucket.
pub const DENSE_COUNT: u64 = 5000;

/// Runs every case in turn.
pub async fn run_all<F, Fut>(open: F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    append_and_read_back(&open).await;
    dense_offsets_and_paging(&open).await;
    paging_while_appending(&open).await;
    heads_and_epochs(&open).await;
    conflicts_store_nothing(&open).await;
    idempotency_lookup(&open).await;
    idempotency_expiry(&open).await;
    concurrent_appends(&open).await;
    restart_keeps_everything(&open).await;
    unknown_channel(&open).await;
    bytes_round_trip(&open).await;
    // Boxed: inline, the IM cases' futures would grow this one's stack
    // frame in a debug build past what a test thread has.
    Box::pin(im::run_all(&open)).await;
    Box::pin(device::run_all(&open)).await;
}

/// The cases for a backend on which several handles (processes) can append
/// to one store at once, each handle opened by `open` with an optional
/// [`AppendHook`]. The embedded store cannot have two handles (its directory
/// lock), and it checks and commits under one mutex, so no append can
/// interleave with another there; it does not run these.
pub async fn run_shared<F, Fut>(open: F)
where
    F: Fn(StoreOptions, Option<AppendHook>) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    stale_writer_cannot_overwrite(&open).await;
    leftover_key_never_answers_for_another_message(&open).await;
    failed_appends_are_retried(&open).await;
    // Markers and memberships changed through several handles at once.
    let handles = vec![
        open(options(DAY), None).await,
        open(options(DAY), None).await,
        open(options(DAY), None).await,
    ];
    Box::pin(im::run_shared(&handles)).await;
}

/// What the writer does after an append error: it retries the same batch.
/// (1) The append failed before its commit: the retry stores the batch.
/// (2) The append timed out but was applied: the retry is a `Conflict`, and
/// the batch's keys answer their offsets (the writer's re-sequencing turns
/// its messages into duplicates of what is stored).
pub async fn failed_appends_are_retried<F, Fut>(open: &F)
where
    F: Fn(StoreOptions, Option<AppendHook>) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let inject = |at: AppendStep, failures: usize| -> (AppendHook, Arc<AtomicUsize>) {
        let failures = Arc::new(AtomicUsize::new(failures));
        let left = failures.clone();
        let hook: AppendHook = Arc::new(move |step| {
            let fail = step == at
                && left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            Box::pin(async move {
                if fail {
                    return Err(StoreError::new(StoreErrorKind::Timeout, "injected timeout"));
                }
                Ok(())
            })
        });
        (hook, failures)
    };

    let ch = channel("retry-before-commit");
    let (hook, _) = inject(AppendStep::KeysWritten, 1);
    let store = open(options(DAY), Some(hook)).await;
    store
        .append(&[append(&ch, "e", 1..=2)])
        .await
        .expect_err("injected");
    assert_eq!(store.position(&ch).await.expect("position").head, 0);
    store
        .append(&[with_key(append(&ch, "e", 1..=2), "k", 2)])
        .await
        .expect("the retry stores the batch");
    assert_eq!(
        store.read(&ch, forward(0, None, 10)).await.expect("read"),
        (1..=2).map(|o| publication(&ch, o)).collect::<Vec<_>>()
    );
    assert_eq!(
        store.idempotent_offset(&ch, "k").await.expect("key"),
        Some(2)
    );
    drop(store);

    let ch = channel("retry-after-commit");
    let (hook, failures) = inject(AppendStep::Committed, 0);
    let store = open(options(DAY), Some(hook)).await;
    store
        .append(&[append(&ch, "e", 1..=2)])
        .await
        .expect("append 1..=2");
    failures.store(1, Ordering::SeqCst);
    let batch = [with_key(append(&ch, "e", 3..=4), "k3", 3)];
    let err = store
        .append(&batch)
        .await
        .expect_err("injected after the commit");
    assert_eq!(err.kind, StoreErrorKind::Timeout, "{err}");
    let err = store
        .append(&batch)
        .await
        .expect_err("the retry of an applied batch");
    assert_eq!(err.kind, StoreErrorKind::Conflict, "{err}");
    assert_eq!(
        store.position(&ch).await.expect("position"),
        position(4, "e")
    );
    assert_eq!(
        store.idempotent_offset(&ch, "k3").await.expect("key"),
        Some(3)
    );
    assert_eq!(
        store.read(&ch, forward(0, None, 10)).await.expect("read"),
        (1..=4).map(|o| publication(&ch, o)).collect::<Vec<_>>()
    );
    store
        .append(&[append(&ch, "e", 5..=5)])
        .await
        .expect("continues at 5");
}

/// Split brain (I8: the store enforces the fence). Writer A reads head 2 and
/// stalls; writer B appends 3..=5 (acknowledged); A resumes with its own
/// offset 3. A must get `Conflict`, and 3 must still hold B's publication,
/// the head stay 5, A's key point nowhere. Twice: A stored 1..=2 itself (it
/// may keep state from that commit), and A's first append.
pub async fn stale_writer_cannot_overwrite<F, Fut>(open: &F)
where
    F: Fn(StoreOptions, Option<AppendHook>) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    for a_stored_before in [true, false] {
        stale_writer_case(open, a_stored_before).await;
    }
}

async fn stale_writer_case<F, Fut>(open: &F, a_stored_before: bool)
where
    F: Fn(StoreOptions, Option<AppendHook>) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let ch = channel(&format!("split-brain-{a_stored_before}"));
    let armed = Arc::new(AtomicBool::new(false));
    let reached = Arc::new(tokio::sync::Notify::new());
    let resume = Arc::new(tokio::sync::Semaphore::new(0));
    let hook: AppendHook = {
        let (armed, reached, resume) = (armed.clone(), reached.clone(), resume.clone());
        Arc::new(move |step| {
            let pause = step == AppendStep::HeadsRead && armed.load(Ordering::SeqCst);
            let (reached, resume) = (reached.clone(), resume.clone());
            Box::pin(async move {
                if pause {
                    reached.notify_one();
                    let _permit = resume.acquire().await;
                }
                Ok(())
            })
        })
    };
    let a = open(options(DAY), Some(hook)).await;
    let b = open(options(DAY), None).await;
    let first = if a_stored_before { &a } else { &b };
    first
        .append(&[append(&ch, "e", 1..=2)])
        .await
        .expect("append 1..=2");
    armed.store(true, Ordering::SeqCst);

    let mine = StoredPublication {
        offset: 3,
        data: Bytes::from_static(br#"{"from":"stale writer A"}"#),
        info: None,
        time_ms: 1,
    };
    let stale = ChannelAppend {
        channel: ch.clone(),
        epoch: "e".into(),
        publications: vec![mine],
        idempotency_keys: vec![("key-of-a".into(), 3)],
    };
    let task = tokio::spawn(async move { a.append(&[stale]).await });
    reached.notified().await;
    b.append(&[with_key(append(&ch, "e", 3..=5), "key-of-b", 3)])
        .await
        .expect("B appends 3..=5 while A is stalled");
    resume.add_permits(1);
    let result = task.await.expect("A's append task");
    let err = result.expect_err("A, stalled past B's commit, must not append");
    assert_eq!(err.kind, StoreErrorKind::Conflict, "{err}");

    assert_eq!(b.position(&ch).await.expect("position"), position(5, "e"));
    assert_eq!(
        b.read(&ch, forward(0, None, 100)).await.expect("read"),
        (1..=5).map(|o| publication(&ch, o)).collect::<Vec<_>>(),
        "offset 3 holds B's publication"
    );
    assert_eq!(
        b.idempotent_offset(&ch, "key-of-b").await.expect("key"),
        Some(3)
    );
    assert_eq!(
        b.idempotent_offset(&ch, "key-of-a").await.expect("key"),
        None
    );
    // A (after reloading the head, as the writer does) continues at 6.
    let a = open(options(DAY), None).await;
    a.append(&[append(&ch, "e", 6..=6)])
        .await
        .expect("append 6");
    assert_eq!(
        offsets(&a.read(&ch, forward(0, None, 100)).await.expect("read")),
        (1..=6).collect::<Vec<_>>()
    );
}

/// An append fails between writing its idempotency key K1 (for offset 3) and
/// committing; another publication is then committed at 3. K1 must not answer
/// 3 (that is another message); stored again later, it answers its new offset.
pub async fn leftover_key_never_answers_for_another_message<F, Fut>(open: &F)
where
    F: Fn(StoreOptions, Option<AppendHook>) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    let ch = channel("leftover-key");
    let hook: AppendHook = std::sync::Arc::new(|step| {
        Box::pin(async move {
            if step == AppendStep::KeysWritten {
                return Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    "injected: the process dies before the head is written",
                ));
            }
            Ok(())
        })
    });
    let crashing = open(options(DAY), Some(hook)).await;
    let store = open(options(DAY), None).await;
    store
        .append(&[append(&ch, "e", 1..=2)])
        .await
        .expect("append 1..=2");

    let err = crashing
        .append(&[with_key(append(&ch, "e", 3..=3), "k1", 3)])
        .await
        .expect_err("the injected failure");
    assert_eq!(err.kind, StoreErrorKind::Unavailable, "{err}");
    assert_eq!(
        store.position(&ch).await.expect("position"),
        position(2, "e")
    );
    assert_eq!(store.idempotent_offset(&ch, "k1").await.expect("key"), None);

    // The partition's new owner (another process) commits another message
    // at 3.
    drop(crashing);
    let store = open(options(DAY), None).await;
    let other = StoredPublication {
        offset: 3,
        data: Bytes::from_static(br#"{"another":"message"}"#),
        info: None,
        time_ms: 3,
    };
    store
        .append(&[ChannelAppend {
            channel: ch.clone(),
            epoch: "e".into(),
            publications: vec![other.clone()],
            idempotency_keys: vec![("k2".into(), 3)],
        }])
        .await
        .expect("another message at 3");
    assert_eq!(
        store.idempotent_offset(&ch, "k1").await.expect("key"),
        None,
        "k1's leftover key must not answer offset 3, which holds another message"
    );
    assert_eq!(
        store.idempotent_offset(&ch, "k2").await.expect("key"),
        Some(3)
    );
    assert_eq!(
        store
            .idempotent_offsets(&[(&ch, "k1"), (&ch, "k2")])
            .await
            .expect("keys"),
        vec![None, Some(3)]
    );

    // K1 redelivered: stored at 4, and from then on it answers 4.
    store
        .append(&[with_key(append(&ch, "e", 4..=4), "k1", 4)])
        .await
        .expect("k1 again at 4");
    assert_eq!(
        store.idempotent_offset(&ch, "k1").await.expect("key"),
        Some(4)
    );
    let stored = store.read(&ch, forward(0, None, 10)).await.expect("read");
    assert_eq!(offsets(&stored), vec![1, 2, 3, 4]);
    assert_eq!(stored[2], other);
}

/// A reader pages forward (and backward from the head it saw) while a writer
/// appends batches of varying size to the same channel: every page is dense,
/// in order, and never shows an offset the writer has not finished. With the
/// ScyllaDB test buckets (8 offsets) this crosses hundreds of bucket edges.
pub async fn paging_while_appending<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    const TOTAL: u64 = 1500;
    let store = open(options(DAY)).await;
    let ch = channel("paging-while-appending");
    let writer = {
        let store = store.clone();
        let ch = ch.clone();
        tokio::spawn(async move {
            let mut next = 1;
            let mut size = 1;
            while next <= TOTAL {
                let last = (next + size - 1).min(TOTAL);
                store
                    .append(&[append(&ch, "e", next..=last)])
                    .await
                    .expect("append");
                next = last + 1;
                size = size % 23 + 5;
            }
        })
    };
    let mut after = 0;
    let mut rounds = 0u64;
    while after < TOTAL {
        let page = store
            .read(&ch, forward(after, None, 37))
            .await
            .expect("page while appending");
        assert_eq!(
            page,
            (after + 1..=after + page.len() as u64)
                .map(|o| publication(&ch, o))
                .collect::<Vec<_>>(),
            "a forward page is dense and continues the previous one"
        );
        after += page.len() as u64;
        let head = store.position(&ch).await.expect("position").head;
        assert!(head >= after, "a page never passes the head");
        let back = store
            .read(&ch, backward(0, None, 9))
            .await
            .expect("backward page while appending");
        if let (Some(first), Some(last)) = (back.first(), back.last()) {
            assert!(
                first.offset >= head,
                "a backward page starts at the head or later"
            );
            assert_eq!(first.offset - last.offset + 1, back.len() as u64, "dense");
        }
        rounds += 1;
        if page.is_empty() {
            tokio::task::yield_now().await;
        }
        assert!(rounds < 1_000_000, "the reader makes progress");
    }
    writer.await.expect("writer task");
    assert_eq!(store.position(&ch).await.expect("position").head, TOTAL);
}

/// Appends two batches and reads them back, whole and in parts.
pub async fn append_and_read_back<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    let store = open(options(DAY)).await;
    let ch = channel("read-back");
    store
        .append(&[append(&ch, "e1", 1..=3)])
        .await
        .expect("first append");
    store
        .append(&[append(&ch, "e1", 4..=5)])
        .await
        .expect("second append");

    let all = store
        .read(&ch, forward(0, None, 100))
        .await
        .expect("read forward");
    assert_eq!(
        all,
        (1..=5).map(|o| publication(&ch, o)).collect::<Vec<_>>()
    );
    let back = store
        .read(&ch, backward(0, None, 100))
        .await
        .expect("read backward");
    assert_eq!(offsets(&back), vec![5, 4, 3, 2, 1]);

    assert_eq!(
        offsets(&store.read(&ch, forward(2, None, 2)).await.expect("read")),
        vec![3, 4]
    );
    assert_eq!(
        offsets(
            &store
                .read(&ch, forward(0, Some(3), 100))
                .await
                .expect("read")
        ),
        vec![1, 2]
    );
    assert_eq!(
        offsets(&store.read(&ch, backward(0, None, 2)).await.expect("read")),
        vec![5, 4]
    );
    assert_eq!(
        offsets(
            &store
                .read(&ch, backward(1, Some(5), 100))
                .await
                .expect("read")
        ),
        vec![4, 3, 2]
    );
    assert!(
        store
            .read(&ch, forward(0, None, 0))
            .await
            .expect("read")
            .is_empty(),
        "limit 0"
    );
    assert!(
        store
            .read(&ch, forward(5, None, 10))
            .await
            .expect("read")
            .is_empty(),
        "after head"
    );
    assert!(
        store
            .read(&ch, forward(3, Some(4), 10))
            .await
            .expect("read")
            .is_empty(),
        "empty window"
    );
    assert!(
        store
            .read(&ch, backward(4, Some(2), 10))
            .await
            .expect("read")
            .is_empty(),
        "inverted window"
    );
}

/// Thousands of publications in many batches, paged in both directions across
/// what would be a 4096-offset bucket boundary, reproduce 1..n exactly.
pub async fn dense_offsets_and_paging<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    let store = open(options(DAY)).await;
    let ch = channel("dense");
    let mut next = 1u64;
    let mut size = 1u64;
    while next <= DENSE_COUNT {
        let last = (next + size - 1).min(DENSE_COUNT);
        store
            .append(&[append(&ch, "e", next..=last)])
            .await
            .expect("append");
        next = last + 1;
        // Varying batch sizes, up to a few hundred.
        size = size % 397 + 61;
    }
    let position = store.position(&ch).await.expect("position");
    assert_eq!(position.head, DENSE_COUNT);

    for limit in [333usize, 1000] {
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let page = store
                .read(&ch, forward(after, None, limit))
                .await
                .expect("page forward");
            assert!(page.len() <= limit, "forward page over its limit");
            let Some(last) = page.last() else { break };
            after = last.offset;
            seen.extend(offsets(&page));
        }
        assert_eq!(
            seen,
            (1..=DENSE_COUNT).collect::<Vec<_>>(),
            "forward paging, limit {limit}"
        );

        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .read(&ch, backward(0, before, limit))
                .await
                .expect("page backward");
            assert!(page.len() <= limit, "backward page over its limit");
            let Some(last) = page.last() else { break };
            before = Some(last.offset);
            seen.extend(offsets(&page));
        }
        assert_eq!(
            seen,
            (1..=DENSE_COUNT).rev().collect::<Vec<_>>(),
            "backward paging, limit {limit}"
        );
    }

    let window = store
        .read(&ch, forward(4090, Some(4100), 100))
        .await
        .expect("window");
    assert_eq!(offsets(&window), (4091..4100).collect::<Vec<_>>());
    let window = store
        .read(&ch, backward(4090, Some(4100), 100))
        .await
        .expect("window");
    assert_eq!(offsets(&window), (4091..4100).rev().collect::<Vec<_>>());
    let window = store
        .read(&ch, forward(4094, None, 4))
        .await
        .expect("window");
    assert_eq!(offsets(&window), vec![4095, 4096, 4097, 4098]);
    let window = store
        .read(&ch, backward(0, Some(4098), 4))
        .await
        .expect("window");
    assert_eq!(offsets(&window), vec![4097, 4096, 4095, 4094]);
    let tail = store.read(&ch, backward(0, None, 3)).await.expect("tail");
    assert_eq!(
        offsets(&tail),
        vec![DENSE_COUNT, DENSE_COUNT - 1, DENSE_COUNT - 2]
    );
    assert_eq!(tail[0], publication(&ch, DENSE_COUNT));
}

/// The epoch is fixed by the first append; the head follows each append.
pub async fn heads_and_epochs<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    let store = open(options(DAY)).await;
    let ch = channel("epochs");
    store
        .append(&[append(&ch, "first", 1..=2)])
        .await
        .expect("append");
    assert_eq!(
        store.position(&ch).await.expect("position"),
        position(2, "first")
    );
    store
        .append(&[append(&ch, "first", 3..=3)])
        .await
        .expect("append");
    assert_eq!(
        store.position(&ch).await.expect("position"),
        position(3, "first")
    );

    let err = store
        .append(&[append(&ch, "second", 4..=4)])
        .await
        .expect_err("another epoch");
    assert_eq!(err.kind, StoreErrorKind::Conflict, "{err}");
    assert!(!err.kind.retryable());
    assert_eq!(
        store.position(&ch).await.expect("position"),
        position(3, "first")
    );
    assert_eq!(
        offsets(&store.read(&ch, forward(0, None, 10)).await.expect("read")),
        vec![1, 2, 3]
    );

    // Channels keep their own epochs, also within one batch.
    let other = channel("epochs-other");
    store
        .append(&[append(&ch, "first", 4..=4), append(&other, "other", 1..=1)])
        .await
        .expect("two channels");
    assert_eq!(
        store.position(&ch).await.expect("position"),
        position(4, "first")
    );
    assert_eq!(
        store.position(&other).await.expect("position"),
        position(1, "other")
    );
}

/// Batches that do not continue a channel densely are refused with
/// `Conflict`, and nothing of a refused batch is stored, in any channel.
pub async fn conflicts_store_nothing<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    let store = open(options(DAY)).await;
    let a = channel("conflict-a");
    let b = channel("conflict-b");
    let fresh = channel("conflict-fresh");
    store
        .append(&[append(&a, "e", 1..=3)])
        .await
        .expect("append a");
    store
        .append(&[append(&b, "e", 1..=3)])
        .await
        .expect("append b");

    let mut non_contiguous = append(&a, "e", 4..=5);
    non_contiguous.publications.push(publication(&a, 7));
    let cases = [
        ("gap", vec![append(&a, "e", 5..=6)]),
        ("duplicate first offset", vec![append(&a, "e", 3..=4)]),
        ("rewrite from 1", vec![append(&a, "e", 1..=4)]),
        ("non-contiguous", vec![non_contiguous]),
        ("new channel not at 1", vec![append(&fresh, "e", 2..=3)]),
        (
            "second channel conflicts",
            vec![
                with_key(append(&a, "e", 4..=5), "ka", 4),
                append(&b, "e", 5..=5),
            ],
        ),
        (
            "first channel conflicts",
            vec![
                append(&b, "x", 4..=4),
                with_key(append(&a, "e", 4..=4), "ka", 4),
            ],
        ),
        (
            "same channel twice, not continued",
            vec![append(&a, "e", 4..=5), append(&a, "e", 7..=7)],
        ),
        (
            "new channel with a conflicting one",
            vec![append(&fresh, "e", 1..=2), append(&b, "e", 3..=3)],
        ),
    ];
    for (name, batch) in cases {
        let err = store.append(&batch).await.expect_err(name);
        assert_eq!(err.kind, StoreErrorKind::Conflict, "{name}: {err}");
        for ch in [&a, &b] {
            assert_eq!(
                store.position(ch).await.expect("position"),
                position(3, "e"),
                "{name}"
            );
            let stored = store.read(ch, forward(0, None, 100)).await.expect("read");
            assert_eq!(
                stored,
                (1..=3).map(|o| publication(ch, o)).collect::<Vec<_>>(),
                "{name}"
            );
        }
        assert_eq!(
            store.position(&fresh).await.expect("position").head,
            0,
            "{name}"
        );
        assert!(
            store
                .read(&fresh, forward(0, None, 10))
                .await
                .expect("read")
                .is_empty(),
            "{name}"
        );
        assert_eq!(
            store.idempotent_offset(&a, "ka").await.expect("key"),
            None,
            "{name}"
        );
    }

    // The same channel twice in one batch is fine when it continues itself.
    store
        .append(&[append(&a, "e", 4..=5), append(&a, "e", 6..=6)])
        .await
        .expect("same channel twice, continued");
    assert_eq!(
        store.position(&a).await.expect("position"),
        position(6, "e")
    );
    assert_eq!(
        offsets(&store.read(&a, forward(0, None, 100)).await.expect("read")),
        (1..=6).collect::<Vec<_>>()
    );
}

/// A stored key yields its offset, per channel.
pub async fn idempotency_lookup<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    let store = open(options(DAY)).await;
    let ch = channel("keys");
    let other = channel("keys-other");
    let batch = with_key(with_key(append(&ch, "e", 1..=3), "k1", 1), "k3", 3);
    store.append(&[batch]).await.expect("append");
    store
        .append(&[with_key(append(&ch, "e", 4..=4), "k4", 4)])
        .await
        .expect("append");

    assert_eq!(
        store.idempotent_offset(&ch, "k1").await.expect("key"),
        Some(1)
    );
    assert_eq!(
        store.idempotent_offset(&ch, "k3").await.expect("key"),
        Some(3)
    );
    assert_eq!(
        store.idempotent_offset(&ch, "k4").await.expect("key"),
        Some(4)
    );
    assert_eq!(store.idempotent_offset(&ch, "k2").await.expect("key"), None);
    assert_eq!(
        store.idempotent_offset(&other, "k1").await.expect("key"),
        None
    );
    // A key that extends another is a different key.
    assert_eq!(store.idempotent_offset(&ch, "k").await.expect("key"), None);
    assert_eq!(
        store.idempotent_offset(&ch, "k11").await.expect("key"),
        None
    );

    // The batch lookup answers the same, in the order asked, repeats included.
    assert_eq!(
        store
            .idempotent_offsets(&[
                (&ch, "k4"),
                (&ch, "k2"),
                (&other, "k1"),
                (&ch, "k1"),
                (&ch, "k"),
                (&ch, "k4"),
            ])
            .await
            .expect("keys"),
        vec![Some(4), None, None, Some(1), None, Some(4)]
    );
    assert_eq!(
        store.idempotent_offsets(&[]).await.expect("no keys"),
        Vec::<Option<u64>>::new()
    );

    // Young keys survive a purge.
    store.purge_expired_keys().await.expect("purge");
    assert_eq!(
        store.idempotent_offset(&ch, "k1").await.expect("key"),
        Some(1)
    );
}

/// Keys older than the retention are not returned and are purged; the
/// publications they pointed at stay.
pub async fn idempotency_expiry<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    let ch = channel("expiry");
    let store = open(options(DAY)).await;
    store
        .append(&[with_key(append(&ch, "e", 1..=1), "old", 1)])
        .await
        .expect("append");
    store.purge_expired_keys().await.expect("purge");
    assert_eq!(
        store.idempotent_offset(&ch, "old").await.expect("key"),
        Some(1)
    );
    drop(store);

    let retention = Duration::from_secs(1);
    let store = open(options(retention)).await;
    let deadline = Instant::now() + retention + Duration::from_secs(10);
    while store
        .idempotent_offset(&ch, "old")
        .await
        .expect("key")
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "key not expired 10 s after its retention"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        store
            .idempotent_offsets(&[(&ch, "old")])
            .await
            .expect("keys"),
        vec![None],
        "an expired key is not returned by the batch lookup either"
    );
    let purged = store.purge_expired_keys().await.expect("purge");
    assert!(purged >= 1, "purged {purged}");
    assert_eq!(
        store.idempotent_offset(&ch, "old").await.expect("key"),
        None
    );
    drop(store);

    // Purged for good: a long retention does not bring it back.
    let store = open(options(DAY)).await;
    assert_eq!(
        store.idempotent_offset(&ch, "old").await.expect("key"),
        None
    );
    assert_eq!(
        store.position(&ch).await.expect("position"),
        position(1, "e")
    );
    assert_eq!(
        store.read(&ch, forward(0, None, 10)).await.expect("read"),
        vec![publication(&ch, 1)]
    );
}

/// Many tasks append to their own channels at once.
pub async fn concurrent_appends<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    const TASKS: usize = 16;
    const BATCHES: u64 = 20;
    const PER_BATCH: u64 = 5;
    let store = open(options(DAY)).await;
    let channels: Vec<String> = (0..TASKS)
        .map(|i| channel(&format!("concurrent-{i}")))
        .collect();
    let tasks: Vec<_> = channels
        .iter()
        .cloned()
        .map(|ch| {
            let store = store.clone();
            tokio::spawn(async move {
                for b in 0..BATCHES {
                    let first = b * PER_BATCH + 1;
                    let batch = with_key(
                        append(&ch, "e", first..=first + PER_BATCH - 1),
                        &format!("k{b}"),
                        first,
                    );
                    store.append(&[batch]).await.expect("concurrent append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("append task");
    }
    let total = BATCHES * PER_BATCH;
    for ch in &channels {
        assert_eq!(
            store.position(ch).await.expect("position"),
            position(total, "e")
        );
        let stored = store.read(ch, forward(0, None, 1000)).await.expect("read");
        assert_eq!(
            stored,
            (1..=total).map(|o| publication(ch, o)).collect::<Vec<_>>()
        );
        assert_eq!(
            store.idempotent_offset(ch, "k7").await.expect("key"),
            Some(7 * PER_BATCH + 1)
        );
    }
}

/// Data, heads, epochs and keys survive closing and reopening the store, and
/// appends continue from the stored head.
pub async fn restart_keeps_everything<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    let ch = channel("restart");
    let store = open(options(DAY)).await;
    store
        .append(&[with_key(append(&ch, "before", 1..=10), "k5", 5)])
        .await
        .expect("append");
    drop(store);

    let store = open(options(DAY)).await;
    assert_eq!(
        store.position(&ch).await.expect("position"),
        position(10, "before")
    );
    let stored = store.read(&ch, forward(0, None, 100)).await.expect("read");
    assert_eq!(
        stored,
        (1..=10).map(|o| publication(&ch, o)).collect::<Vec<_>>()
    );
    assert_eq!(
        store.idempotent_offset(&ch, "k5").await.expect("key"),
        Some(5)
    );

    let err = store
        .append(&[append(&ch, "before", 1..=1)])
        .await
        .expect_err("rewrite after restart");
    assert_eq!(err.kind, StoreErrorKind::Conflict, "{err}");
    let err = store
        .append(&[append(&ch, "after", 11..=11)])
        .await
        .expect_err("new epoch after restart");
    assert_eq!(err.kind, StoreErrorKind::Conflict, "{err}");
    store
        .append(&[append(&ch, "before", 11..=12)])
        .await
        .expect("continue after restart");
    drop(store);

    let store = open(options(DAY)).await;
    assert_eq!(
        store.position(&ch).await.expect("position"),
        position(12, "before")
    );
    assert_eq!(
        offsets(&store.read(&ch, backward(0, None, 100)).await.expect("read")),
        (1..=12).rev().collect::<Vec<_>>()
    );
}

/// An unknown channel reads empty and has no keys; its position is head 0
/// with an epoch already (8 hex digits, the same on every read and after a
/// reopen, another for another channel), which an append keeps.
pub async fn unknown_channel<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    let store = open(options(DAY)).await;
    let ch = channel("unknown");
    let pos = store.position(&ch).await.expect("position");
    assert_eq!((pos.head, pos.time_ms), (0, 0), "{pos:?}");
    assert_eq!(pos.epoch.len(), 8, "{pos:?}");
    assert!(pos.epoch.bytes().all(|b| b.is_ascii_hexdigit()), "{pos:?}");
    let other = channel("unknown-other");
    let both = store.positions(&[&ch, &other]).await.expect("positions");
    assert_eq!(both[0], pos, "positions and position agree");
    assert_eq!(both[1].head, 0);
    assert_ne!(both[1].epoch, pos.epoch, "each channel has its own epoch");
    drop(store);
    let store = open(options(DAY)).await;
    assert_eq!(
        store.position(&ch).await.expect("position after a reopen"),
        pos
    );
    store
        .append(&[append(&other, &both[1].epoch, 1..=1)])
        .await
        .expect("the first append with the channel's epoch");
    assert_eq!(
        store.position(&other).await.expect("position").epoch,
        both[1].epoch
    );
    assert!(
        store
            .read(&ch, forward(0, None, 10))
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        store
            .read(&ch, backward(0, None, 10))
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        store
            .read(&ch, forward(5, Some(9), 10))
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(store.idempotent_offset(&ch, "k").await.expect("key"), None);
}

/// Data and info bytes come back exactly as stored — raw JSON with its
/// whitespace, unicode, 64 KiB — and channels whose names extend one another
/// or hold unusual characters stay apart.
pub async fn bytes_round_trip<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    let store = open(options(DAY)).await;
    let ch = channel("bytes");
    let large = format!(
        "\"{}{}\"",
        "0123456789abcdef".repeat(64 * 1024 / 16 - 1),
        "x".repeat(14)
    );
    assert_eq!(large.len(), 64 * 1024);
    let stored = vec![
        raw(
            1,
            r#"{ "a" : [1, 2.50, true] ,"b":null }"#,
            Some(r#"{"user":"42","client":"c1"}"#),
        ),
        raw(2, r#""héllo ✓ 😀 \u00e9 \n""#, None),
        raw(3, &large, Some(r#"{"user":"ü","conn_info":{"x":"😀"}}"#)),
        raw(4, "[]", Some("{}")),
        raw(5, "0", None),
    ];
    store
        .append(&[ChannelAppend {
            channel: ch.clone(),
            epoch: "épоch-1".into(),
            publications: stored.clone(),
            idempotency_keys: vec![("ключ ✓".into(), 2)],
        }])
        .await
        .expect("append");
    assert_eq!(
        store.read(&ch, forward(0, None, 10)).await.expect("read"),
        stored
    );
    assert_eq!(
        store.position(&ch).await.expect("position"),
        position(5, "épоch-1")
    );
    assert_eq!(
        store.idempotent_offset(&ch, "ключ ✓").await.expect("key"),
        Some(2)
    );

    // Channel names that extend one another, or carry separators, spaces and
    // NUL, are distinct channels whose offsets never mix.
    let base = channel("p");
    let names = [
        base.clone(),
        format!("{base}b"),
        format!("{base}\0"),
        format!("{base}\0b"),
        format!("{base}.*> /ü"),
    ];
    for (i, name) in names.iter().enumerate() {
        let count = i as u64 + 1;
        store
            .append(&[append(name, "e", 1..=count)])
            .await
            .expect("append");
    }
    for (i, name) in names.iter().enumerate() {
        let count = i as u64 + 1;
        let forward_read = store.read(name, forward(0, None, 100)).await.expect("read");
        assert_eq!(
            forward_read,
            (1..=count)
                .map(|o| publication(name, o))
                .collect::<Vec<_>>(),
            "{name:?}"
        );
        let backward_read = store
            .read(name, backward(0, None, 100))
            .await
            .expect("read");
        assert_eq!(
            offsets(&backward_read),
            (1..=count).rev().collect::<Vec<_>>(),
            "{name:?}"
        );
        assert_eq!(
            store.position(name).await.expect("position"),
            position(count, "e"),
            "{name:?}"
        );
    }
}

/// How long [`history_expiry`] gives a backend to delete publications past
/// their retention.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(30);

/// History retention deletes (issue 16 §6), on a store opened so that the
/// namespace `short` keeps history for [`SHORT_RETENTION`] and `long`
/// forever, with whatever deletes them running (ScyllaDB: the TTL; embedded:
/// the expiry thread). Publications of `short:` disappear within
/// [`EXPIRY_GRACE`]; the head stays; reads (forward, backward, from an
/// expired offset) return what is left, never an error; the idempotency key
/// of an expired publication expired with it (a late retry is a new
/// publication), while a kept publication's key still answers; offsets keep
/// counting at head + 1; `long:` keeps everything.
pub async fn history_expiry(store: &SharedStore) {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    let short = format!("short:{}", channel("expiry"));
    let long = format!("long:{}", channel("expiry"));
    let fresh = |ch: &str, offsets: std::ops::RangeInclusive<u64>| {
        let mut a = append(ch, "e", offsets.clone());
        for p in &mut a.publications {
            p.time_ms = now();
        }
        with_key(a, &format!("k{}", offsets.start()), *offsets.start())
    };
    store
        .append(&[fresh(&short, 1..=20), fresh(&long, 1..=20)])
        .await
        .expect("append");
    assert_eq!(
        offsets(
            &store
                .read(&short, forward(0, None, 100))
                .await
                .expect("read")
        )
        .len(),
        20
    );
    let deadline = Instant::now() + SHORT_RETENTION + EXPIRY_GRACE;
    while !store
        .read(&short, forward(0, None, 100))
        .await
        .expect("read")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "publications outlived their {SHORT_RETENTION:?} retention by {EXPIRY_GRACE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let head = store.position(&short).await.expect("position");
    assert_eq!(
        (head.head, head.epoch.as_str()),
        (20, "e"),
        "the head stays"
    );
    assert!(head.time_ms > 0, "the head keeps its time: {head:?}");
    assert!(
        store
            .read(&short, backward(0, None, 10))
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        store
            .read(&short, forward(5, None, 10))
            .await
            .expect("read from an expired offset")
            .is_empty()
    );
    assert_eq!(
        store.idempotent_offset(&short, "k1").await.expect("key"),
        None,
        "the key of an expired publication expires with it"
    );
    assert_eq!(
        store.idempotent_offset(&long, "k1").await.expect("key"),
        Some(1)
    );

    // Offsets keep counting.
    store
        .append(&[fresh(&short, 21..=22)])
        .await
        .expect("append after expiry");
    assert_eq!(
        offsets(
            &store
                .read(&short, forward(0, None, 100))
                .await
                .expect("read")
        ),
        vec![21, 22]
    );
    assert_eq!(
        offsets(
            &store
                .read(&short, forward(10, None, 100))
                .await
                .expect("read")
        ),
        vec![21, 22]
    );
    assert_eq!(
        offsets(
            &store
                .read(&short, backward(0, None, 10))
                .await
                .expect("read")
        ),
        vec![22, 21]
    );
    assert_eq!(
        store
            .append(&[fresh(&short, 21..=21)])
            .await
            .expect_err("offset 21 is taken")
            .kind,
        StoreErrorKind::Conflict
    );
    // A namespace without retention keeps everything.
    assert_eq!(
        store
            .read(&long, forward(0, None, 100))
            .await
            .expect("read")
            .len(),
        20
    );
}

/// The retention of the `short` namespace in [`history_expiry`].
pub const SHORT_RETENTION: Duration = Duration::from_secs(2);

/// A channel name unique to this run of the suite.
fn channel(case: &str) -> String {
    use std::sync::OnceLock;
    static RUN: OnceLock<String> = OnceLock::new();
    let run = RUN.get_or_init(|| uuid::Uuid::new_v4().simple().to_string());
    format!("contract:{run}:{case}")
}

fn options(idempotency_retention: Duration) -> StoreOptions {
    StoreOptions {
        idempotency_retention,
    }
}

/// The position the suite's publications leave: the head's `time_ms` is
/// what [`publication`] and [`raw`] give it (0 when empty).
fn position(head: u64, epoch: &str) -> Position {
    Position {
        head,
        epoch: epoch.into(),
        time_ms: if head == 0 {
            0
        } else {
            PUBLICATION_TIME_MS + head
        },
    }
}

/// `time_ms` of the suite's publication at offset 0 (offset `o` has this + o).
const PUBLICATION_TIME_MS: u64 = 1_700_000_000_000;

/// The publication the suite stores at `offset` of `channel`: its data names
/// both, so a read from the wrong channel or offset cannot pass.
fn publication(channel: &str, offset: u64) -> StoredPublication {
    let data = serde_json::json!({ "channel": channel, "offset": offset }).to_string();
    StoredPublication {
        offset,
        data: Bytes::from(data),
        info: (offset % 2 == 0).then(|| Bytes::from(format!(r#"{{"user":"u{offset}"}}"#))),
        time_ms: PUBLICATION_TIME_MS + offset,
    }
}

fn raw(offset: u64, data: &str, info: Option<&str>) -> StoredPublication {
    StoredPublication {
        offset,
        data: Bytes::copy_from_slice(data.as_bytes()),
        info: info.map(|i| Bytes::copy_from_slice(i.as_bytes())),
        time_ms: PUBLICATION_TIME_MS + offset,
    }
}

fn append(channel: &str, epoch: &str, offsets: std::ops::RangeInclusive<u64>) -> ChannelAppend {
    ChannelAppend {
        channel: channel.into(),
        epoch: epoch.into(),
        publications: offsets.map(|o| publication(channel, o)).collect(),
        idempotency_keys: Vec::new(),
    }
}

fn with_key(mut append: ChannelAppend, key: &str, offset: u64) -> ChannelAppend {
    append.idempotency_keys.push((key.into(), offset));
    append
}

fn forward(after: u64, before: Option<u64>, limit: usize) -> ReadRange {
    ReadRange {
        after,
        before,
        limit,
        direction: Direction::Forward,
    }
}

fn backward(after: u64, before: Option<u64>, limit: usize) -> ReadRange {
    ReadRange {
        after,
        before,
        limit,
        direction: Direction::Backward,
    }
}

fn offsets(page: &[StoredPublication]) -> Vec<u64> {
    page.iter().map(|p| p.offset).collect()
}
