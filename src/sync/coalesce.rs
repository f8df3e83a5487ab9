//! Request coalescing: identical concurrent reads share one execution.
//!
//! Per key there is at most one *running* execution and at most one *pending*
//! one. A caller joins the pending execution if there is one; otherwise it
//! creates it, and the pending execution starts once the running one (if any)
//! has finished. A caller never joins an execution that has already started,
//! so every answer reflects the store as of some moment after the caller
//! arrived: coalescing never serves a result older than the request (an edge
//! filling a gap it just saw is guaranteed to get the publications it missed).
//! Under load a hot key costs at most one execution per execution time, however
//! many callers wait.
//!
//! Executions run in their own task, so a caller that goes away (an HTTP client
//! hanging up) never strands the others; the work itself must be bounded in
//! time (the reader wraps it in the store timeout). Entries leave the map when
//! their last execution finishes; when the map holds `capacity` keys, further
//! keys run uncoalesced in the caller.
//!
//! Knows nothing of stores or channels: keys and values are opaque. A caller
//! that joins counts in `herald_sync_coalesced_total`.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

type Outcome<V> = watch::Receiver<Option<V>>;

/// The executions of one key. The receivers let callers wait for a result;
/// the senders are held by the execution tasks.
struct Slot<V> {
    running: Option<Outcome<V>>,
    pending: Option<Outcome<V>>,
}

/// What a caller does for its key.
enum Plan<V> {
    /// Wait for the pending execution.
    Join(Outcome<V>),
    /// Start the pending execution, after the running one if any.
    Lead(Option<Outcome<V>>, watch::Sender<Option<V>>),
    /// The map is full: run in the caller.
    Inline,
}

type Flights<K, V> = Arc<Mutex<HashMap<K, Slot<V>>>>;

pub struct Coalescer<K, V> {
    flights: Flights<K, V>,
    capacity: usize,
}

fn lock<K, V>(flights: &Mutex<HashMap<K, Slot<V>>>) -> MutexGuard<'_, HashMap<K, Slot<V>>> {
    // The map is consistent at every unlock; a panic elsewhere does not
    // invalidate it.
    flights
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Marks the running execution of `key` finished, even if the work panicked;
/// removes the key when nothing is pending behind it.
struct Finish<K: Hash + Eq, V> {
    flights: Flights<K, V>,
    key: Option<K>,
}

impl<K: Hash + Eq, V> Drop for Finish<K, V> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut flights = lock(&self.flights);
        if let Some(slot) = flights.get_mut(&key) {
            slot.running = None;
            if slot.pending.is_none() {
                flights.remove(&key);
            }
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// At most `capacity` keys are coalesced at once.
    pub fn new(capacity: usize) -> Self {
        Self {
            flights: Arc::new(Mutex::new(HashMap::new())),
            capacity: capacity.max(1),
        }
    }

    /// Keys with a running or pending execution now.
    pub fn in_flight(&self) -> usize {
        lock(&self.flights).len()
    }

    /// Runs `work` for `key`, or joins an identical execution that has not
    /// started yet. `None` when the execution died without a result (its
    /// work panicked).
    pub async fn run<F, Fut>(&self, key: K, work: F) -> Option<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = V> + Send + 'static,
    {
        // Decided under the lock, acted on after it.
        let plan = {
            let mut flights = lock(&self.flights);
            let full = flights.len() >= self.capacity;
            match flights.get_mut(&key) {
                Some(Slot {
                    pending: Some(pending),
                    ..
                }) => Plan::Join(pending.clone()),
                Some(slot) => {
                    let (tx, rx) = watch::channel(None);
                    slot.pending = Some(rx);
                    Plan::Lead(slot.running.clone(), tx)
                }
                None if full => Plan::Inline,
                None => {
                    let (tx, rx) = watch::channel(None);
                    let slot = Slot {
                        running: None,
                        pending: Some(rx),
                    };
                    flights.insert(key.clone(), slot);
                    Plan::Lead(None, tx)
                }
            }
        };
        let mut outcome = match plan {
            Plan::Join(outcome) => {
                metrics::counter!(crate::metrics::SYNC_COALESCED_TOTAL).increment(1);
                outcome
            }
            Plan::Lead(behind, tx) => {
                let outcome = tx.subscribe();
                self.spawn(key, behind, tx, work);
                outcome
            }
            Plan::Inline => return Some(work().await),
        };
        let result = outcome.wait_for(Option::is_some).await.ok()?;
        result.clone()
    }

    /// The execution task of a pending entry: waits for the running one
    /// (`behind`) to finish, becomes the running one, works, publishes.
    fn spawn<F, Fut>(
        &self,
        key: K,
        behind: Option<Outcome<V>>,
        tx: watch::Sender<Option<V>>,
        work: F,
    ) where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = V> + Send + 'static,
    {
        let flights = self.flights.clone();
        tokio::spawn(async move {
            if let Some(mut behind) = behind {
                // An error means that execution died: it is finished too.
                let _ = behind.wait_for(Option::is_some).await;
            }
            {
                let mut map = lock(&flights);
                if let Some(slot) = map.get_mut(&key) {
                    slot.running = slot.pending.take();
                }
            }
            let finish = Finish {
                flights,
                key: Some(key),
            };
            let value = work().await;
            // Unregister first: once the value is out, newcomers must not
            // find this execution.
            drop(finish);
            // Nobody waiting is fine: callers may have gone away.
            let _ = tx.send(Some(value));
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn callers_before_the_start_share_one_execution() {
        let c: Coalescer<&str, u32> = Coalescer::new(16);
        let runs = Arc::new(AtomicUsize::new(0));
        let calls = (0..20).map(|_| {
            let runs = runs.clone();
            c.run("k", move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                7
            })
        });
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(|r| *r == Some(7)));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn callers_during_a_running_execution_get_a_fresh_one() {
        let c = Arc::new(Coalescer::<&str, u32>::new(16));
        let runs = Arc::new(AtomicUsize::new(0));
        let (started_tx, started_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel::<()>();

        let first = tokio::spawn({
            let (c, runs) = (c.clone(), runs.clone());
            async move {
                c.run("k", move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _ = started_tx.send(());
                    let _ = release_rx.await;
                    1
                })
                .await
            }
        });
        started_rx.await.unwrap();

        let later: Vec<_> = (2..5)
            .map(|v| {
                let (c, runs) = (c.clone(), runs.clone());
                tokio::spawn(async move {
                    c.run("k", move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        v
                    })
                    .await
                })
            })
            .collect();
        // Let the later callers register behind the running execution.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "nothing runs beside the first"
        );
        release_tx.send(()).unwrap();

        assert_eq!(first.await.unwrap(), Some(1));
        let mut values = Vec::new();
        for h in later {
            values.push(h.await.unwrap());
        }
        // All later callers joined one execution, started after the first.
        assert!(
            values.iter().all(|v| *v == values[0] && *v != Some(1)),
            "{values:?}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_full_map_runs_new_keys_uncoalesced() {
        let c = Arc::new(Coalescer::<u32, u32>::new(1));
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let held = tokio::spawn({
            let c = c.clone();
            async move {
                c.run(1, move || async move {
                    let _ = release_rx.await;
                    1
                })
                .await
            }
        });
        tokio::task::yield_now().await;
        assert_eq!(c.in_flight(), 1);
        assert_eq!(c.run(2, || async { 2 }).await, Some(2));
        assert_eq!(c.in_flight(), 1);
        release_tx.send(()).unwrap();
        assert_eq!(held.await.unwrap(), Some(1));
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_panicking_execution_answers_none_and_unregisters() {
        let c: Coalescer<&str, u32> = Coalescer::new(4);
        let r = c.run("k", || async { panic!("work failed") }).await;
        assert_eq!(r, None);
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.run("k", || async { 3 }).await, Some(3));
    }
}
