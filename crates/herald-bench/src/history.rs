//! `herald bench history`: pages of publications from the sync HTTP API
//! (`GET /api/v1/channels/{channel}/publications`). Channels are filled
//! through the server API, Herald is restarted (its caches start cold), then
//! two phases run: cold — pages at random positions of random channels;
//! hot — every reader asks for the newest page of a few channels. Measures
//! pages per second and page latency, and checks every page holds the
//! expected offsets in order.
//!
//! No peer: nats-server has no paged history API to compare with.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::fill::{self, Fill};
use super::http::HttpConn;
use super::payload::now_us;
use super::report::{Measured, Report, Row};
use super::stats::{Count, Latencies, Progress, note};
use super::target::{Herald, HeraldOptions};
use super::{BenchError, Common, Rate};

#[derive(Args, Clone, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub common: Common,
    /// History channels to fill.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Publications per channel.
    #[arg(long, default_value_t = 1000)]
    pub fill: u64,
    /// Publications per page.
    #[arg(long, default_value_t = 100)]
    pub page_size: u64,
    /// Pages requested in each phase (cold, hot).
    #[arg(long, default_value_t = 10_000)]
    pub pages: u64,
    /// Concurrent readers (HTTP connections).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Pages per second over all readers, or `max`.
    #[arg(long, default_value = "max")]
    pub rate: Rate,
    /// Channels the hot phase reads.
    #[arg(long, default_value_t = 1)]
    pub hot_channels: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Cold,
    Hot,
}

pub async fn run(args: HistoryArgs) -> Result<Report, BenchError> {
    if args.channels == 0 || args.fill == 0 || args.page_size == 0 || args.concurrency == 0 {
        return Err(BenchError::Internal(
            "--channels, --fill, --page-size and --concurrency must be at least 1".into(),
        ));
    }
    // No peer: a --peer names one this scenario does not have.
    args.common.peers("history", &[])?;
    args.common
        .raise_fd_limit(args.concurrency + fill::WORKERS)?;
    let quiet = args.common.quiet;
    note(quiet, "starting nats-server and herald serve…");
    let mut herald = Herald::start(
        &args.common.nats_bin(),
        &HeraldOptions {
            options: vec![("history_page_limit", args.page_size.max(1000).to_string())],
            toml: String::new(),
        },
    )
    .await?;
    fill(&args, &herald).await?;
    note(quiet, "restarting herald so its caches start cold…");
    herald.restart().await?;
    let mut m = Measured::default();
    for phase in [Phase::Cold, Phase::Hot] {
        read(&args, &herald, phase, &mut m).await?;
        herald.check_alive()?;
    }
    let mut rows = Vec::new();
    for p in ["cold", "hot"] {
        rows.push(Row::herald(
            &format!("{p} pages/s"),
            &format!("{p}_pages_per_sec"),
        ));
        rows.push(Row::herald(
            &format!("{p} page p50 (ms)"),
            &format!("{p}_page_p50_ms"),
        ));
        rows.push(Row::herald(
            &format!("{p} page p99 (ms)"),
            &format!("{p}_page_p99_ms"),
        ));
        rows.push(Row::herald(
            &format!("{p} page p99.9 (ms)"),
            &format!("{p}_page_p999_ms"),
        ));
    }
    Ok(Report {
        scenario: "history",
        params: json!({
            "channels": args.channels,
            "fill": args.fill,
            "page_size": args.page_size,
            "pages_per_phase": args.pages,
            "concurrency": args.concurrency,
            "rate": args.rate.to_string(),
            "hot_channels": args.hot_channels,
            "payload_bytes": args.payload,
        }),
        herald: m,
        peers: Vec::new(),
        rows,
        notes: vec![
            "cold: random pages of random channels right after a restart; hot: the newest page of the hot channels".into(),
        ],
    })
}

fn channel(c: usize) -> String {
    format!("hist-{c}")
}

async fn fill(args: &HistoryArgs, herald: &Herald) -> Result<(), BenchError> {
    let what = Fill {
        label: "herald fill",
        quiet: args.common.quiet,
        channels: args.channels,
        per_channel: args.fill,
        size: args.payload,
        name: channel,
    };
    fill::run(herald, what, |_| None).await
}

/// A small deterministic generator (xorshift) for page positions.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if below == 0 { 0 } else { self.0 % below }
    }
}

/// The request of one page and the first offset it must start with
/// (descending from it when backward).
fn page_request(args: &HistoryArgs, phase: Phase, rng: &mut Xorshift) -> (String, u64, bool) {
    let limit = args.page_size;
    match phase {
        Phase::Cold => {
            let c = rng.next(args.channels as u64) as usize;
            let after = rng.next(args.fill.saturating_sub(limit) + 1);
            (
                format!(
                    "/api/v1/channels/{}/publications?after={after}&limit={limit}",
                    channel(c)
                ),
                after + 1,
                false,
            )
        }
        Phase::Hot => {
            let c = rng.next(args.hot_channels.clamp(1, args.channels) as u64) as usize;
            (
                format!(
                    "/api/v1/channels/{}/publications?direction=backward&limit={limit}",
                    channel(c)
                ),
                args.fill,
                true,
            )
        }
    }
}

/// True when `body` is a page of `expected` publications starting at
/// `first`, ascending (or descending when `backward`).
fn page_ok(body: &[u8], first: u64, expected: u64, backward: bool) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let Some(pubs) = v["publications"].as_array() else {
        return false;
    };
    if pubs.len() as u64 != expected {
        return false;
    }
    pubs.iter().enumerate().all(|(i, p)| {
        let want = if backward {
            first.checked_sub(i as u64)
        } else {
            Some(first + i as u64)
        };
        p["offset"].as_u64().is_some() && p["offset"].as_u64() == want
    })
}

async fn read(
    args: &HistoryArgs,
    herald: &Herald,
    phase: Phase,
    m: &mut Measured,
) -> Result<(), BenchError> {
    let name = match phase {
        Phase::Cold => "cold",
        Phase::Hot => "hot",
    };
    let token = format!("Bearer {}", herald.token("bench-reader"));
    let done = Arc::new(Count::default());
    let errors = Arc::new(Count::default());
    let latency = Arc::new(Latencies::default());
    let interval = args.rate.interval(args.concurrency);
    let progress = {
        let done = done.clone();
        let started = Instant::now();
        let total = args.pages;
        Progress::start(
            format!("herald {name} pages"),
            args.common.quiet,
            move || {
                format!(
                    "{} / {total} pages ({:.0}/s)",
                    done.get(),
                    done.get() as f64 / started.elapsed().as_secs_f64().max(1e-3)
                )
            },
        )
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let mut conn = HttpConn::open(herald.addr, None)
            .await
            .map_err(|e| BenchError::Server(format!("connecting to sync HTTP: {e}")))?;
        let (done, errors, latency, token, args) = (
            done.clone(),
            errors.clone(),
            latency.clone(),
            token.clone(),
            args.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 0x2545_F491));
            let mut next_at = tokio::time::Instant::now();
            let mine = (w as u64..args.pages).step_by(args.concurrency).count();
            for _ in 0..mine {
                if let Some(iv) = interval {
                    tokio::time::sleep_until(next_at).await;
                    next_at += iv;
                }
                let (path, first, backward) = page_request(&args, phase, &mut rng);
                let expected = if backward {
                    args.page_size.min(args.fill)
                } else {
                    args.page_size.min(args.fill - (first - 1))
                };
                let sent = now_us();
                let r = conn
                    .request("GET", &path, &[("authorization", &token)], None)
                    .await;
                latency.record_one(w, now_us().saturating_sub(sent));
                match r {
                    Ok((200, body)) if page_ok(&body, first, expected, backward) => {}
                    _ => errors.add(1),
                }
                done.add(1);
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| BenchError::Internal(format!("reader task: {e}")))?;
    }
    let secs = started.elapsed().as_secs_f64();
    progress.finish().await;
    m.set(&format!("{name}_pages"), done.get() as f64);
    m.set(
        &format!("{name}_pages_per_sec"),
        done.get() as f64 / secs.max(1e-6),
    );
    m.latency(&format!("{name}_page"), latency.merged());
    m.check(&format!("{name}_bad_pages"), errors.get());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_checked() {
        let body = br#"{"publications":[{"offset":3},{"offset":4}]}"#;
        assert!(page_ok(body, 3, 2, false));
        assert!(!page_ok(body, 2, 2, false));
        assert!(!page_ok(body, 3, 3, false));
        let back = br#"{"publications":[{"offset":9},{"offset":8}]}"#;
        assert!(page_ok(back, 9, 2, true));
    }
}
