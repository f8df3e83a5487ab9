//! What a run found and how it is shown: the figures and checks of Herald
//! and of each peer, the table at the end (Herald, then each peer and the
//! ratio Herald ÷ that peer), `--json`, and the HDR percentile distribution
//! file (`--hdr`).
//!
//! Knows the output formats, not how figures were measured.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use super::stages::Stage;
use super::stats::ms;
use super::sys::{Machine, utc_now};

/// The figures one target produced.
#[derive(Default)]
pub struct Measured {
    figures: Vec<(String, f64)>,
    checks: Vec<(String, u64)>,
    /// Named latency distributions (µs), for the percentiles, `--hdr` and
    /// `--plot`.
    pub latencies: Vec<(String, Histogram<u64>)>,
    /// Herald's per-stage timings (its `/metrics`) over each part of the
    /// run, by part (`client`, `api`, `run`).
    pub stages: Vec<(String, Vec<Stage>)>,
}

impl Measured {
    pub fn set(&mut self, key: &str, value: f64) {
        self.figures.push((key.to_string(), value));
    }

    /// A correctness count that must be zero (lost, duplicated, errors…).
    pub fn check(&mut self, key: &str, value: u64) {
        self.checks.push((key.to_string(), value));
    }

    /// Adds a latency distribution and its `<key>_p50_ms`, `_p99_ms`,
    /// `_p999_ms`, `_max_ms` figures.
    pub fn latency(&mut self, key: &str, h: Histogram<u64>) {
        for (suffix, q) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999), ("max", 1.0)] {
            self.set(&format!("{key}_{suffix}_ms"), ms(&h, q));
        }
        self.latencies.push((key.to_string(), h));
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.figures.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    pub fn ok(&self) -> bool {
        self.checks.iter().all(|(_, v)| *v == 0)
    }

    fn json(&self) -> Value {
        let mut m = Map::new();
        for (k, v) in &self.figures {
            m.insert(k.clone(), json_number(*v));
        }
        let checks: Map<String, Value> = self
            .checks
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        m.insert("checks".into(), Value::Object(checks));
        if !self.stages.is_empty() {
            let stages: Map<String, Value> = self
                .stages
                .iter()
                .map(|(part, stages)| {
                    let by_key: Map<String, Value> = stages
                        .iter()
                        .map(|s| {
                            let v = json!({
                                "count": s.count,
                                "p50_ms": s.p50_ms.map(json_number),
                                "p99_ms": s.p99_ms.map(json_number),
                            });
                            (s.key.to_string(), v)
                        })
                        .collect();
                    (part.clone(), Value::Object(by_key))
                })
                .collect();
            m.insert("stages".into(), Value::Object(stages));
        }
        Value::Object(m)
    }
}

fn json_number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        json!(v as i64)
    } else {
        json!((v * 1000.0).round() / 1000.0)
    }
}

/// One line of the table: a Herald figure and, when peers have one, the
/// peer figure it is compared with.
pub struct Row {
    pub label: String,
    pub key: String,
    /// The keys a peer's figure is looked up under, first found wins: the
    /// same key as Herald's, then a peer's generic one (`ingest`: Herald's
    /// `client_publishes_per_sec` against Centrifugo's same key, else a
    /// JetStream peer's `publishes_per_sec`).
    pub peer_keys: Vec<String>,
}

impl Row {
    /// Herald's `key` beside each peer's same `key`.
    pub fn both(label: &str, key: &str) -> Self {
        Self {
            label: label.into(),
            key: key.into(),
            peer_keys: vec![key.into()],
        }
    }

    /// Herald's `key` beside each peer's same `key`, or its `peer_key` when
    /// it has no such figure.
    pub fn versus(label: &str, key: &str, peer_key: &str) -> Self {
        Self {
            label: label.into(),
            key: key.into(),
            peer_keys: vec![key.into(), peer_key.into()],
        }
    }

    /// A Herald figure without a peer counterpart.
    pub fn herald(label: &str, key: &str) -> Self {
        Self {
            label: label.into(),
            key: key.into(),
            peer_keys: Vec::new(),
        }
    }

    /// `peer`'s figure for this row.
    fn peer_value(&self, peer: &Measured) -> Option<f64> {
        self.peer_keys.iter().find_map(|k| peer.get(k))
    }
}

/// A peer's name (as in the table and the JSON) and figures.
pub struct Peer {
    pub name: String,
    pub measured: Measured,
}

/// A whole run.
pub struct Report {
    pub scenario: &'static str,
    pub params: Value,
    pub herald: Measured,
    /// The peers that ran, in the order they are shown.
    pub peers: Vec<Peer>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.herald.ok() && self.peers.iter().all(|p| p.measured.ok())
    }

    /// Herald ÷ `peer` on `row`.
    fn ratio(&self, row: &Row, peer: &Peer) -> Option<f64> {
        let h = self.herald.get(&row.key)?;
        let p = row.peer_value(&peer.measured)?;
        (p != 0.0).then(|| h / p)
    }

    pub fn json(&self) -> Value {
        let peers: Map<String, Value> = self
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.measured.json()))
            .collect();
        let ratios: Map<String, Value> = self
            .peers
            .iter()
            .map(|p| {
                let by_key: Map<String, Value> = self
                    .rows
                    .iter()
                    .filter_map(|r| Some((r.key.clone(), json_number(self.ratio(r, p)?))))
                    .collect();
                (p.name.clone(), Value::Object(by_key))
            })
            .collect();
        json!({
            "scenario": self.scenario,
            "command": command_line(),
            "date": utc_now(),
            "machine": Machine::read(),
            "params": self.params,
            "herald": self.herald.json(),
            "peers": peers,
            "ratios": ratios,
            "notes": self.notes,
            "ok": self.ok(),
        })
    }

    /// The table printed at the end: Herald's column, then each peer's
    /// column followed by the ratio Herald ÷ that peer.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n{}", command_line());
        let _ = writeln!(out, "{} — {}", utc_now(), Machine::read().summary());
        let label_w = self
            .rows
            .iter()
            .map(|r| r.label.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let widths: Vec<usize> = self
            .peers
            .iter()
            .map(|p| p.name.chars().count().max(12))
            .collect();
        let _ = write!(out, "{:<label_w$}  {:>12}", "", "herald");
        for (p, col) in self.peers.iter().zip(&widths) {
            let _ = write!(out, "  {:>col$}  {:>7}", p.name, "ratio");
        }
        out.push('\n');
        for row in &self.rows {
            let h = self.herald.get(&row.key);
            let _ = write!(out, "{:<label_w$}  {:>12}", row.label, fmt(h));
            for (p, col) in self.peers.iter().zip(&widths) {
                let v = row.peer_value(&p.measured);
                let ratio = self.ratio(row, p).map_or("".into(), |r| format!("{r:.2}"));
                let _ = write!(out, "  {:>col$}  {:>7}", fmt(v), ratio);
            }
            out.push('\n');
        }
        for (part, stages) in &self.herald.stages {
            let _ = writeln!(
                out,
                "herald stages, {part} (its /metrics, interpolated within buckets):\n  {:<40}  {:>9}  {:>8}  {:>8}",
                "", "count", "p50 ms", "p99 ms"
            );
            for s in stages.iter().filter(|s| s.count > 0) {
                let q = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
                let _ = writeln!(
                    out,
                    "  {:<40}  {:>9}  {:>8}  {:>8}",
                    s.label,
                    s.count,
                    q(s.p50_ms),
                    q(s.p99_ms)
                );
            }
        }
        let checks = |m: &Measured| {
            m.checks
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out, "checks (herald): {}", checks(&self.herald));
        for p in &self.peers {
            let _ = writeln!(out, "checks ({}): {}", p.name, checks(&p.measured));
        }
        if !self.peers.is_empty() {
            let _ = writeln!(out, "ratio: herald ÷ the peer on its left");
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        let _ = writeln!(
            out,
            "{}",
            if self.ok() {
                "OK: nothing lost, duplicated or failed"
            } else {
                "FAILED: see the checks above"
            }
        );
        out
    }

    /// Every latency distribution of the run, Herald's then each peer's.
    pub fn curves(&self) -> Vec<(String, &Histogram<u64>)> {
        let mut out: Vec<(String, &Histogram<u64>)> = self
            .herald
            .latencies
            .iter()
            .map(|(k, h)| (format!("herald {k}"), h))
            .collect();
        for p in &self.peers {
            out.extend(
                p.measured
                    .latencies
                    .iter()
                    .map(|(k, h)| (format!("{} {k}", p.name), h)),
            );
        }
        out
    }

    /// Writes the HDR percentile distributions (HdrHistogram's text layout,
    /// values in milliseconds).
    pub fn write_hdr(&self, path: &Path) -> std::io::Result<()> {
        let mut out = String::new();
        for (name, h) in self.curves() {
            let _ = writeln!(out, "# {name} (ms)");
            let _ = writeln!(
                out,
                "{:>12} {:>14} {:>10} {:>14}",
                "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
            );
            let mut total = 0u64;
            for v in h.iter_quantiles(5) {
                total += v.count_since_last_iteration();
                let q = v.quantile_iterated_to();
                let inv = if q < 1.0 {
                    format!("{:.2}", 1.0 / (1.0 - q))
                } else {
                    "inf".into()
                };
                let _ = writeln!(
                    out,
                    "{:>12.3} {:>14.12} {:>10} {:>14}",
                    v.value_iterated_to() as f64 / 1000.0,
                    q,
                    total,
                    inv
                );
            }
            let _ = writeln!(
                out,
                "#[Mean = {:.3}, StdDeviation = {:.3}]\n#[Max = {:.3}, Total count = {}]\n",
                h.mean() / 1000.0,
                h.stdev() / 1000.0,
                h.max() as f64 / 1000.0,
                h.len()
            );
        }
        std::fs::write(path, out)
    }
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 1000.0 => group(v.round() as i64),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// 1234567 → "1,234,567".
fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// How this run was invoked, as one line.
pub fn command_line() -> String {
    let mut args = std::env::args();
    let exe = args.next().map_or("herald".into(), |a| {
        Path::new(&a)
            .file_name()
            .map_or(a.clone(), |f| f.to_string_lossy().into_owned())
    });
    std::iter::once(exe)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(999), "999");
        assert_eq!(fmt(Some(12_345.6)), "12,346");
        assert_eq!(fmt(Some(1.234)), "1.23");
        assert_eq!(fmt(None), "-");
    }

    #[test]
    fn ratios_and_checks() {
        let mut h = Measured::default();
        h.set("rate", 200.0);
        h.set("client_rate", 300.0);
        h.check("lost", 0);
        let mut same = Measured::default();
        same.set("rate", 100.0);
        same.set("client_rate", 150.0);
        same.check("lost", 0);
        let mut generic = Measured::default();
        generic.set("rate", 50.0);
        generic.set("publishes", 600.0);
        generic.check("lost", 1);
        let r = Report {
            scenario: "x",
            params: json!({}),
            herald: h,
            peers: vec![
                Peer {
                    name: "same".into(),
                    measured: same,
                },
                Peer {
                    name: "generic".into(),
                    measured: generic,
                },
            ],
            rows: vec![
                Row::both("rate", "rate"),
                Row::versus("client rate", "client_rate", "publishes"),
            ],
            notes: vec![],
        };
        let j = r.json();
        assert_eq!(j["ratios"]["same"]["rate"], 2);
        assert_eq!(j["ratios"]["generic"]["rate"], 4);
        // A peer's own key first, its generic one otherwise.
        assert_eq!(j["ratios"]["same"]["client_rate"], 2);
        assert_eq!(j["ratios"]["generic"]["client_rate"], 0.5);
        assert_eq!(j["peers"]["same"]["checks"]["lost"], 0);
        assert_eq!(j["peers"]["generic"]["checks"]["lost"], 1);
        assert_eq!(j["ok"], false, "one peer's failed check fails the run");
        let table = r.table();
        assert!(table.contains("2.00") && table.contains("4.00") && table.contains("0.50"));
        assert!(table.contains("checks (generic): lost 1"), "{table}");
    }
}
