//! Measurement plumbing shared by the scenarios: latency histograms that
//! thousands of connection tasks record into, the per-subscriber ordering
//! check, and the progress line on stderr.
//!
//! Knows nothing of Herald or NATS: numbers in, numbers out.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Largest latency recorded (longer ones are clamped): one minute in µs.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Histogram shards: tasks record into `index % SHARDS`, so a lock is rarely
/// contended and memory stays small with tens of thousands of recorders.
const SHARDS: usize = 32;

/// A new latency histogram in microseconds, 1 µs to a minute, three
/// significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// Latencies recorded concurrently by many tasks.
pub struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        }
    }
}

impl Latencies {
    /// Records the latencies (µs) of one batch from the task numbered `who`.
    pub fn record(&self, who: usize, values_us: &[u64]) {
        if values_us.is_empty() {
            return;
        }
        let mut h = self.shards[who % SHARDS]
            .lock()
            .expect("histogram lock poisoned");
        for v in values_us {
            h.saturating_record((*v).max(1));
        }
    }

    pub fn record_one(&self, who: usize, value_us: u64) {
        self.record(who, &[value_us]);
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut out = histogram();
        for s in &self.shards {
            let h = s.lock().expect("histogram lock poisoned");
            // Same bounds on both sides: adding cannot fail.
            let _ = out.add(&*h);
        }
        out
    }

    /// The current p99 in ms (for the progress line).
    pub fn p99_ms(&self) -> f64 {
        let h = self.merged();
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(0.99) as f64 / 1000.0
        }
    }
}

/// A counter shared by tasks.
#[derive(Default)]
pub struct Count(AtomicU64);

impl Count {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Keeps the largest value seen (e.g. the time of the last delivery).
    pub fn max(&self, v: u64) {
        self.0.fetch_max(v, Ordering::Relaxed);
    }
}

/// The ordering check of one subscriber on one stream of numbers that must
/// arrive as `first, first+1, …` (sequence numbers or offsets).
#[derive(Debug, Clone, Copy, Default)]
pub struct Order {
    next: u64,
    /// Everything received, duplicates included.
    pub received: u64,
    /// Numbers received again (or late, after a later one).
    pub duplicates: u64,
    /// Numbers skipped over (a later one arrived first).
    pub skipped: u64,
}

impl Order {
    /// Expects `first` next.
    pub fn starting_at(first: u64) -> Self {
        Self {
            next: first,
            ..Self::default()
        }
    }

    pub fn see(&mut self, n: u64) {
        self.received += 1;
        if n == self.next {
            self.next += 1;
        } else if n > self.next {
            self.skipped += n - self.next;
            self.next = n + 1;
        } else {
            self.duplicates += 1;
        }
    }

    /// Distinct numbers received.
    pub fn unique(&self) -> u64 {
        self.received - self.duplicates
    }
}

/// Percentiles of a histogram in milliseconds, as reports show them.
pub fn ms(h: &Histogram<u64>, quantile: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(quantile) as f64 / 1000.0
}

/// A progress line on stderr, redrawn in place on a terminal and printed
/// every few seconds otherwise, until dropped.
pub struct Progress {
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    tty: bool,
}

impl Progress {
    /// Shows `label` and what `status` returns; `quiet` shows nothing.
    pub fn start<F>(label: String, quiet: bool, status: F) -> Self
    where
        F: Fn() -> String + Send + 'static,
    {
        let stop = tokio_util::sync::CancellationToken::new();
        let tty = std::io::stderr().is_terminal();
        let task = (!quiet).then(|| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let every = if tty {
                    Duration::from_millis(500)
                } else {
                    Duration::from_secs(5)
                };
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(every) => {}
                    }
                    let line = format!(
                        "[{label}] {:>5.1}s {}",
                        started.elapsed().as_secs_f64(),
                        status()
                    );
                    let mut err = std::io::stderr().lock();
                    if tty {
                        let _ = write!(err, "\r\x1b[2K{line}");
                    } else {
                        let _ = writeln!(err, "{line}");
                    }
                    let _ = err.flush();
                }
            })
        });
        Self { stop, task, tty }
    }

    /// Stops the line (and ends it on a terminal).
    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
            if self.tty {
                eprintln!();
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Prints a phase note on stderr unless quiet.
pub fn note(quiet: bool, text: &str) {
    if !quiet {
        eprintln!("{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_counts_gaps_and_duplicates() {
        let mut o = Order::starting_at(1);
        for n in [1, 2, 2, 4, 5, 3] {
            o.see(n);
        }
        assert_eq!(o.received, 6);
        assert_eq!(o.duplicates, 2);
        assert_eq!(o.skipped, 1);
        assert_eq!(o.unique(), 4);
    }

    #[test]
    fn shards_merge() {
        let l = Latencies::default();
        l.record(0, &[1000, 2000]);
        l.record(7, &[3000]);
        let h = l.merged();
        assert_eq!(h.len(), 3);
        assert!((ms(&h, 1.0) - 3.0).abs() < 0.01);
    }
}
