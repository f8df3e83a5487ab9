//! The disk's share of a persisted run: a probe that appends a small record
//! and fsyncs it every [`INTERVAL`] on the disk the servers keep their data
//! on (the bench's `$TMPDIR`) while one target runs, so a report says
//! whether a tail moved with the disk or with the server.
//!
//! The probe is independent of every server: it stalls when the disk does,
//! and also when the cores are saturated (it times its write and fsync from
//! a thread, so a wait for a core counts too; a peer that writes nothing can
//! show probe stalls). Its own load is one 64-byte write and one `fdatasync`
//! per interval.
//!
//! Knows files and fsync; nothing of what the targets do.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::report::Measured;
use super::stats::ms;

/// How often the probe writes and fsyncs.
pub const INTERVAL: Duration = Duration::from_millis(10);
/// An fsync at least this long counts as a stall.
pub const STALL: Duration = Duration::from_millis(10);

/// A running probe; [`Probe::finish`] stops it and adds its figures.
pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Histogram<u64>>,
    path: std::path::PathBuf,
}

impl Probe {
    /// Starts probing in `dir` (a new file, removed by [`Probe::finish`]).
    pub fn start(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(format!("herald-bench-fsync-probe-{}", std::process::id()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("fsync-probe".into())
            .spawn(move || probe(file, &flag))?;
        Ok(Self { stop, thread, path })
    }

    /// Stops the probe and sets `disk_fsync_p50_ms`, `_p99_ms`, `_max_ms`
    /// and `disk_fsync_stalls` (fsyncs of [`STALL`] or more) on `m`.
    pub fn finish(self, m: &mut Measured) {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.thread.join().unwrap_or_else(|_| empty());
        let _ = std::fs::remove_file(&self.path);
        add(m, &h);
    }
}

/// Starts a probe in the bench's temporary directory (where the servers'
/// data dirs are); a probe that cannot start is reported and skipped.
pub fn start_probe(quiet: bool) -> Option<Probe> {
    match Probe::start(&std::env::temp_dir()) {
        Ok(p) => Some(p),
        Err(e) => {
            if !quiet {
                eprintln!("fsync probe not started ({e}); the report has no disk figures");
            }
            None
        }
    }
}

fn empty() -> Histogram<u64> {
    Histogram::new(3).expect("histogram with 3 significant figures")
}

fn probe(mut file: File, stop: &AtomicBool) -> Histogram<u64> {
    let mut h = empty();
    let record = [b'x'; 63];
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        // Kept small: rewind after 1 MiB so the file never grows.
        if written >= 1 << 20 {
            if file.set_len(0).is_err() {
                break;
            }
            written = 0;
        }
        if file.write_all(&record).is_err() || file.write_all(b"\n").is_err() {
            break;
        }
        written += 64;
        if file.sync_data().is_err() {
            break;
        }
        let took = started.elapsed();
        let _ = h.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1));
        if let Some(rest) = INTERVAL.checked_sub(took) {
            std::thread::sleep(rest);
        }
    }
    h
}

fn add(m: &mut Measured, h: &Histogram<u64>) {
    if h.is_empty() {
        return;
    }
    m.set("disk_fsync_p50_ms", ms(h, 0.5));
    m.set("disk_fsync_p99_ms", ms(h, 0.99));
    m.set("disk_fsync_max_ms", ms(h, 1.0));
    let stall_us = u64::try_from(STALL.as_micros()).unwrap_or(u64::MAX);
    m.set(
        "disk_fsync_stalls",
        h.count_between(stall_us, u64::MAX) as f64,
    );
}

/// The table rows of the probe's figures, for a scenario's report.
pub fn rows() -> Vec<super::report::Row> {
    use super::report::Row;
    vec![
        Row::both("disk fsync p50, probe (ms)", "disk_fsync_p50_ms"),
        Row::both("disk fsync p99, probe (ms)", "disk_fsync_p99_ms"),
        Row::both("disk fsync max, probe (ms)", "disk_fsync_max_ms"),
        Row::both("disk fsync stalls ≥ 10 ms, probe", "disk_fsync_stalls"),
    ]
}

/// The report's note on the probe.
pub fn note() -> String {
    format!(
        "disk probe: a 64-byte append and fdatasync every {} ms in {} (the servers' data dirs) while each target runs",
        INTERVAL.as_millis(),
        std::env::temp_dir().display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_measures_fsyncs_and_reports_them() {
        let dir = tempfile::tempdir().unwrap();
        let probe = Probe::start(dir.path()).unwrap();
        std::thread::sleep(Duration::from_millis(120));
        let mut m = Measured::default();
        probe.finish(&mut m);
        let p50 = m.get("disk_fsync_p50_ms").expect("a p50");
        let max = m.get("disk_fsync_max_ms").expect("a max");
        assert!(p50 > 0.0 && max >= p50, "p50 {p50}, max {max}");
        assert!(m.get("disk_fsync_stalls").is_some());
        // The probe's file is gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
