//! What a run found and how it is shown: the figures and checks of Herald
//! and of the peer, the table at the end (Herald, peer, ratio), `--json`,
//! and the HDR percentile distribution file (`--hdr`).
//!
//! Knows the output formats, not how figures were measured.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

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

/// One line of the table: a Herald figure and, when there is one, the
/// peer's figure it is compared with.
pub struct Row {
    pub label: String,
    pub key: String,
    pub peer_key: Option<String>,
}

impl Row {
    /// Herald's `key` beside the peer's same `key`.
    pub fn both(label: &str, key: &str) -> Self {
        Self {
            label: label.into(),
            key: key.into(),
            peer_key: Some(key.into()),
        }
    }

    /// Herald's `key` beside the peer's `peer_key`.
    pub fn versus(label: &str, key: &str, peer_key: &str) -> Self {
        Self {
            label: label.into(),
            key: key.into(),
            peer_key: Some(peer_key.into()),
        }
    }

    /// A Herald figure without a peer counterpart.
    pub fn herald(label: &str, key: &str) -> Self {
        Self {
            label: label.into(),
            key: key.into(),
            peer_key: None,
        }
    }
}

/// A whole run.
pub struct Report {
    pub scenario: &'static str,
    pub params: Value,
    pub herald: Measured,
    /// The peer's name and figures, when it ran.
    pub peer: Option<(String, Measured)>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.herald.ok() && self.peer.as_ref().is_none_or(|(_, p)| p.ok())
    }

    fn ratio(&self, row: &Row) -> Option<f64> {
        let h = self.herald.get(&row.key)?;
        let p = self.peer.as_ref()?.1.get(row.peer_key.as_deref()?)?;
        (p != 0.0).then(|| h / p)
    }

    pub fn json(&self) -> Value {
        let ratios: Map<String, Value> = self
            .rows
            .iter()
            .filter_map(|r| Some((r.key.clone(), json_number(self.ratio(r)?))))
            .collect();
        json!({
            "scenario": self.scenario,
            "command": command_line(),
            "date": utc_now(),
            "machine": Machine::read(),
            "params": self.params,
            "herald": self.herald.json(),
            "peer": self.peer.as_ref().map(|(name, p)| {
                let mut v = p.json();
                v["name"] = json!(name);
                v
            }),
            "ratios": ratios,
            "notes": self.notes,
            "ok": self.ok(),
        })
    }

    /// The table printed at the end.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n{}", command_line());
        let _ = writeln!(out, "{} — {}", utc_now(), Machine::read().summary());
        let peer_name = self.peer.as_ref().map(|(n, _)| n.as_str());
        let label_w = self
            .rows
            .iter()
            .map(|r| r.label.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let col = peer_name.map_or(12, |n| n.len().max(12));
        let _ = write!(out, "{:<label_w$}  {:>12}", "", "herald");
        if let Some(n) = peer_name {
            let _ = write!(out, "  {n:>col$}  {:>7}", "ratio");
        }
        out.push('\n');
        for row in &self.rows {
            let h = self.herald.get(&row.key);
            let _ = write!(out, "{:<label_w$}  {:>12}", row.label, fmt(h));
            if self.peer.is_some() {
                let p = row
                    .peer_key
                    .as_deref()
                    .and_then(|k| self.peer.as_ref()?.1.get(k));
                let ratio = self.ratio(row).map_or("".into(), |r| format!("{r:.2}"));
                let _ = write!(out, "  {:>col$}  {:>7}", fmt(p), ratio);
            }
            out.push('\n');
        }
        let checks = |m: &Measured| {
            m.checks
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out, "checks (herald): {}", checks(&self.herald));
        if let Some((n, p)) = &self.peer {
            let _ = writeln!(out, "checks ({n}): {}", checks(p));
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

    /// Every latency distribution of the run, Herald's then the peer's.
    pub fn curves(&self) -> Vec<(String, &Histogram<u64>)> {
        let mut out: Vec<(String, &Histogram<u64>)> = self
            .herald
            .latencies
            .iter()
            .map(|(k, h)| (format!("herald {k}"), h))
            .collect();
        if let Some((name, p)) = &self.peer {
            out.extend(p.latencies.iter().map(|(k, h)| (format!("{name} {k}"), h)));
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
        h.check("lost", 0);
        let mut p = Measured::default();
        p.set("rate", 100.0);
        p.check("lost", 1);
        let r = Report {
            scenario: "x",
            params: json!({}),
            herald: h,
            peer: Some(("peer".into(), p)),
            rows: vec![Row::both("rate", "rate")],
            notes: vec![],
        };
        let j = r.json();
        assert_eq!(j["ratios"]["rate"], 2);
        assert_eq!(j["peer"]["checks"]["lost"], 1);
        assert_eq!(j["ok"], false);
        assert!(r.table().contains("2.00"));
    }
}
