//! Where a Herald publish spends its time, stage by stage: Herald's own
//! latency histograms (`/metrics`) scraped before and after a run, the
//! difference taken bucket by bucket, and each stage's count, p50 and p99
//! estimated from the buckets as Prometheus' `histogram_quantile` does
//! (linear within a bucket, so a figure is as coarse as the buckets:
//! 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25 ms …).
//!
//! Knows the metric names of the persisted path (from `herald::metrics`) and
//! the Prometheus text format; nothing of how a scenario drives the load.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::http::HttpConn;
use herald::metrics as m;

/// One stage: its label in the report, its JSON key, the histogram and the
/// label pairs a series must carry to count.
struct StageDef {
    label: &'static str,
    key: &'static str,
    metric: &'static str,
    labels: &'static [(&'static str, &'static str)],
}

/// The persisted path in the order a publication crosses it.
const STAGES: &[StageDef] = &[
    StageDef {
        label: "edge publish → JetStream ack",
        key: "ingest_ack",
        metric: m::PUBLISH_INGEST_ACK_SECONDS,
        labels: &[],
    },
    StageDef {
        label: "JetStream stored → writer received",
        key: "writer_receive",
        metric: m::WRITER_RECEIVE_LAG_SECONDS,
        labels: &[],
    },
    StageDef {
        label: "writer: heads and idempotency lookup",
        key: "lookup",
        metric: m::WRITER_LOOKUP_SECONDS,
        labels: &[],
    },
    StageDef {
        label: "writer: store commit (fsync)",
        key: "commit",
        metric: m::WRITER_COMMIT_SECONDS,
        labels: &[],
    },
    StageDef {
        label: "writer: channel publish, replies, acks",
        key: "writer_publish",
        metric: m::WRITER_PUBLISH_SECONDS,
        labels: &[],
    },
    StageDef {
        label: "commit → edge feed received",
        key: "feed",
        metric: m::FEED_LAG_SECONDS,
        labels: &[],
    },
    StageDef {
        label: "commit → socket write (delivery)",
        key: "delivery",
        metric: m::DELIVERY_SECONDS,
        labels: &[],
    },
    StageDef {
        label: "client publish → reply (whole)",
        key: "publish_client",
        metric: m::PUBLISH_SECONDS,
        labels: &[("source", "client")],
    },
    StageDef {
        label: "API publish → reply (whole)",
        key: "publish_api",
        metric: m::PUBLISH_SECONDS,
        labels: &[("source", "api")],
    },
];

/// Cumulative bucket counts of every stage: `le` bound → count.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(Vec<BTreeMap<Bound, u64>>);

/// A bucket bound ordered numerically (`+Inf` last).
#[derive(Debug, Clone, Copy)]
pub struct Bound(f64);

impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One stage's figures over a run.
#[derive(Debug, Clone)]
pub struct Stage {
    pub label: &'static str,
    pub key: &'static str,
    pub count: u64,
    /// Milliseconds; `None` when nothing was recorded.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Reads Herald's `/metrics` at `addr`. An unreachable endpoint is an
/// error: the stages are part of the report.
pub async fn scrape(addr: SocketAddr) -> Result<Snapshot, String> {
    let mut conn = HttpConn::open(addr, None)
        .await
        .map_err(|e| format!("metrics: {e}"))?;
    let (status, body) = conn
        .request("GET", "/metrics", &[], None)
        .await
        .map_err(|e| format!("metrics: {e}"))?;
    if status != 200 {
        return Err(format!("metrics: status {status}"));
    }
    Ok(parse(&String::from_utf8_lossy(&body)))
}

/// The buckets of every stage in a Prometheus text exposition.
fn parse(text: &str) -> Snapshot {
    let mut out = vec![BTreeMap::new(); STAGES.len()];
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let Some(metric) = name.strip_suffix("_bucket") else {
            continue;
        };
        let labels = labels.trim_end_matches('}');
        let pairs: Vec<(&str, &str)> = labels
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        let Some(le) = pairs.iter().find(|(k, _)| *k == "le").map(|(_, v)| *v) else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(b) => b,
                Err(_) => continue,
            }
        };
        let Ok(count) = value.parse::<f64>() else {
            continue;
        };
        for (i, def) in STAGES.iter().enumerate() {
            if def.metric == metric && def.labels.iter().all(|want| pairs.contains(want)) {
                *out[i].entry(Bound(bound)).or_insert(0) += count as u64;
            }
        }
    }
    Snapshot(out)
}

/// Each stage's figures between `before` and `after`.
pub fn between(before: &Snapshot, after: &Snapshot) -> Vec<Stage> {
    STAGES
        .iter()
        .enumerate()
        .map(|(i, def)| {
            let empty = BTreeMap::new();
            let a = after.0.get(i).unwrap_or(&empty);
            let b = before.0.get(i).unwrap_or(&empty);
            let delta: Vec<(f64, u64)> = a
                .iter()
                .map(|(bound, n)| (bound.0, n.saturating_sub(*b.get(bound).unwrap_or(&0))))
                .collect();
            Stage {
                label: def.label,
                key: def.key,
                count: delta.last().map_or(0, |(_, n)| *n),
                p50_ms: quantile(&delta, 0.5).map(|s| s * 1e3),
                p99_ms: quantile(&delta, 0.99).map(|s| s * 1e3),
            }
        })
        .collect()
}

/// `histogram_quantile` over cumulative buckets (bound, count), ascending,
/// the last one `+Inf`: linear within the bucket holding the rank; a rank in
/// `+Inf` answers the largest finite bound.
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut prev = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            if bound.is_infinite() {
                return Some(prev.0);
            }
            let in_bucket = (count - prev.1) as f64;
            let frac = if in_bucket > 0.0 {
                (rank - prev.1 as f64) / in_bucket
            } else {
                1.0
            };
            return Some(prev.0 + (bound - prev.0) * frac);
        }
        prev = (bound, count);
    }
    Some(prev.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(commit: &[(&str, u64)]) -> String {
        let mut s = String::from("# TYPE herald_writer_commit_seconds histogram\n");
        for (le, n) in commit {
            s.push_str(&format!(
                "herald_writer_commit_seconds_bucket{{role=\"serve\",le=\"{le}\"}} {n}\n"
            ));
        }
        s.push_str(
            "herald_edge_publish_seconds_bucket{role=\"serve\",source=\"api\",le=\"0.001\"} 7\n",
        );
        s.push_str(
            "herald_edge_publish_seconds_bucket{role=\"serve\",source=\"client\",le=\"0.001\"} 3\n",
        );
        s
    }

    #[test]
    fn the_difference_of_two_scrapes_gives_the_run_s_quantiles() {
        let before = parse(&exposition(&[("0.001", 10), ("0.01", 10), ("+Inf", 10)]));
        let after = parse(&exposition(&[("0.001", 10), ("0.01", 110), ("+Inf", 110)]));
        let stages = between(&before, &after);
        let commit = stages.iter().find(|s| s.key == "commit").unwrap();
        assert_eq!(commit.count, 100);
        // All 100 of the run fell in (1 ms, 10 ms]: the median is mid-bucket.
        let p50 = commit.p50_ms.unwrap();
        assert!((p50 - 5.5).abs() < 1e-9, "{p50}");
        let p99 = commit.p99_ms.unwrap();
        assert!((p99 - 9.91).abs() < 1e-9, "{p99}");
        let none = stages.iter().find(|s| s.key == "lookup").unwrap();
        assert_eq!((none.count, none.p50_ms), (0, None));
    }

    #[test]
    fn label_filters_pick_their_series() {
        let snap = parse(&exposition(&[]));
        let stages = between(&Snapshot::default(), &snap);
        let api = stages.iter().find(|s| s.key == "publish_api").unwrap();
        let client = stages.iter().find(|s| s.key == "publish_client").unwrap();
        assert_eq!((api.count, client.count), (7, 3));
    }

    #[test]
    fn a_rank_past_the_last_finite_bound_answers_that_bound() {
        let b = [(0.001, 1), (0.01, 1), (f64::INFINITY, 100)];
        assert_eq!(quantile(&b, 0.99), Some(0.01));
        assert_eq!(quantile(&[(f64::INFINITY, 0)], 0.5), None);
    }
}
