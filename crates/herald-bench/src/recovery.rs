//! `herald bench recovery`: K clients subscribe to history channels and
//! remember their position; all disconnect; M publications per channel are
//! published through the server API; then all reconnect at once and
//! subscribe with `recover: true` from their position. Measures the time
//! until every client has recovered (and each one's reconnect → recovered
//! latency), and checks each got exactly the M missed publications, in
//! order, with `recovered: true`.
//!
//! No peer: nats-server has no per-subscriber recovery to compare with.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::fill::{self, Fill};
use super::net::{Sources, open_all};
use super::payload::{self, now_us};
use super::report::{Measured, Report, Row};
use super::stats::{Count, Latencies, Progress, note};
use super::target::{Herald, HeraldOptions};
use super::{BenchError, Common};
use herald_client::{Client, ClientError, ClientOptions};

const READ_BUFFER: usize = 4096;

#[derive(Args, Clone, Debug)]
pub struct RecoveryArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients that disconnect and recover.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// History channels the clients are spread over.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Publications each channel gets while the clients are away.
    #[arg(long, default_value_t = 100)]
    pub missed: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
}

/// What one client found when it recovered.
#[derive(Default)]
struct Outcome {
    recovered: bool,
    missing: u64,
    duplicates: u64,
    /// Offsets outside the missed range.
    unexpected: u64,
    out_of_order: bool,
}

pub async fn run(args: RecoveryArgs) -> Result<Report, BenchError> {
    if args.clients == 0 || args.channels == 0 {
        return Err(BenchError::Internal(
            "--clients and --channels must be at least 1".into(),
        ));
    }
    // No peer: a --peer names one this scenario does not have.
    args.common.peers("recovery", &[])?;
    // The first connections are closed before the reconnects open, so the
    // descriptors needed are one per client; the closed sockets linger in
    // TIME_WAIT holding their ports (not descriptors) while the same number
    // reconnect, hence the source addresses for twice as many.
    args.common.raise_fd_limit(args.clients + fill::WORKERS)?;
    let sources = Sources::new(args.common.sources, args.clients * 2);
    let quiet = args.common.quiet;
    note(quiet, "starting nats-server and herald serve…");
    let limit = args.missed.max(300);
    let mut herald = Herald::start(
        &args.common.nats_bin(),
        &HeraldOptions {
            options: vec![("client_recovery_limit", limit.to_string())],
            toml: String::new(),
        },
    )
    .await?;
    let r = measure(&args, &herald, &sources).await;
    herald.check_alive()?;
    Ok(Report {
        scenario: "recovery",
        params: json!({
            "clients": args.clients,
            "channels": args.channels,
            "missed_per_channel": args.missed,
            "payload_bytes": args.payload,
            "connect_concurrency": args.common.connect_concurrency,
            "sources": sources.len(),
        }),
        herald: r?,
        peers: Vec::new(),
        rows: vec![
            Row::herald("clients", "clients"),
            Row::herald("publications recovered", "recovered_publications"),
            Row::herald("time until all recovered (s)", "all_recovered_s"),
            Row::herald("recoveries/s", "recoveries_per_sec"),
            Row::herald("reconnect→recovered p50 (ms)", "recovery_p50_ms"),
            Row::herald("reconnect→recovered p99 (ms)", "recovery_p99_ms"),
            Row::herald("reconnect→recovered max (ms)", "recovery_max_ms"),
        ],
        notes: vec![format!(
            "reconnects are opened {} at a time (--connect-concurrency)",
            args.common.connect_concurrency
        )],
    })
}

fn channel(i: usize, channels: usize) -> String {
    format!("rec-{}", i % channels)
}

async fn measure(
    args: &RecoveryArgs,
    herald: &Herald,
    sources: &Sources,
) -> Result<Measured, BenchError> {
    let quiet = args.common.quiet;
    let addr = herald.addr;
    let channels = args.channels;
    let mut api = herald.api(None).await?;
    // One publication per channel first, so every channel has an epoch.
    for c in 0..channels {
        api.publish_raw(&channel(c, channels), &payload::encode(0, args.payload))
            .await
            .map_err(|e| BenchError::Server(format!("publish: {e}")))?;
    }
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..args.clients)
            .map(|i| herald.token(&format!("r{i}")))
            .collect(),
    );
    let opts = {
        let sources = sources.clone();
        move |i: usize| ClientOptions {
            source: Some(sources.pick(i)),
            read_buffer: READ_BUFFER,
            ..ClientOptions::default()
        }
    };

    // Subscribe, remember the position, disconnect.
    let opened = Arc::new(Count::default());
    let progress = {
        let (opened, n) = (opened.clone(), args.clients);
        Progress::start("herald subscribe".into(), quiet, move || {
            format!("{} / {n} subscribed", opened.get())
        })
    };
    let (positions, _) = {
        let (tokens, opts) = (tokens.clone(), opts.clone());
        open_all(
            args.clients,
            args.common.connect_concurrency,
            opened,
            move |i| {
                let (token, opts) = (tokens[i].clone(), opts(i));
                async move {
                    let (mut c, _) = Client::connect_with(addr, &token, &opts).await?;
                    let reply = c
                        .call("subscribe", json!({ "channel": channel(i, channels) }))
                        .await?;
                    let sub = &reply["subscribe"];
                    let (Some(offset), Some(epoch)) =
                        (sub["offset"].as_u64(), sub["epoch"].as_str())
                    else {
                        return Err(ClientError::BadFrame(format!("subscribe failed: {reply}")));
                    };
                    let epoch = epoch.to_string();
                    c.close().await;
                    Ok((offset, epoch))
                }
            },
        )
        .await?
    };
    progress.finish().await;

    // Publish what they miss.
    let what = Fill {
        label: "herald publish missed",
        quiet,
        channels,
        per_channel: args.missed,
        size: args.payload,
        name: move |c| channel(c, channels),
    };
    fill::run(herald, what, |w| Some(sources.pick(w))).await?;

    // Everyone back at once, recovering.
    let recovered = Arc::new(Count::default());
    let latency = Arc::new(Latencies::default());
    let progress = {
        let (recovered, n) = (recovered.clone(), args.clients);
        Progress::start("herald recover".into(), quiet, move || {
            format!("{} / {n} recovered", recovered.get())
        })
    };
    let positions = Arc::new(positions);
    let started = Instant::now();
    let outcomes = {
        let (tokens, latency, recovered, missed) = (
            tokens.clone(),
            latency.clone(),
            recovered.clone(),
            args.missed,
        );
        open_all(
            args.clients,
            args.common.connect_concurrency,
            Arc::new(Count::default()),
            move |i| {
                let (token, opts) = (tokens[i].clone(), opts(i));
                let (positions, latency, recovered) =
                    (positions.clone(), latency.clone(), recovered.clone());
                async move {
                    let began = now_us();
                    let (offset, epoch) = positions[i].clone();
                    let (mut c, _) = Client::connect_with(addr, &token, &opts).await?;
                    let reply = c
                        .call(
                            "subscribe",
                            json!({
                                "channel": channel(i, channels),
                                "recover": true,
                                "offset": offset,
                                "epoch": epoch,
                            }),
                        )
                        .await?;
                    let outcome = check(&reply["subscribe"], offset, missed);
                    latency.record_one(i, now_us().saturating_sub(began));
                    recovered.add(1);
                    c.close().await;
                    Ok(outcome)
                }
            },
        )
        .await?
        .0
    };
    let took = started.elapsed().as_secs_f64();
    progress.finish().await;

    let mut m = Measured::default();
    m.set("clients", args.clients as f64);
    m.set(
        "recovered_publications",
        (args.clients as u64 * args.missed) as f64,
    );
    m.set("all_recovered_s", took);
    m.set("recoveries_per_sec", args.clients as f64 / took.max(1e-6));
    m.latency("recovery", latency.merged());
    m.check(
        "not_recovered",
        outcomes.iter().filter(|o| !o.recovered).count() as u64,
    );
    m.check("missing", outcomes.iter().map(|o| o.missing).sum());
    m.check("duplicates", outcomes.iter().map(|o| o.duplicates).sum());
    m.check("unexpected", outcomes.iter().map(|o| o.unexpected).sum());
    m.check(
        "out_of_order",
        outcomes.iter().filter(|o| o.out_of_order).count() as u64,
    );
    Ok(m)
}

/// Checks a recovering subscribe result: `recovered: true` and exactly the
/// offsets after `offset`, `missed` of them, in order.
fn check(result: &serde_json::Value, offset: u64, missed: u64) -> Outcome {
    let mut offsets: Vec<u64> = result["publications"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["offset"].as_u64()).collect())
        .unwrap_or_default();
    let in_order = offsets.windows(2).all(|w| w[0] < w[1]);
    offsets.sort_unstable();
    let received = offsets.len();
    offsets.dedup();
    let range = offset + 1..=offset + missed;
    Outcome {
        recovered: result["recovered"].as_bool().unwrap_or(false),
        missing: range
            .clone()
            .filter(|o| offsets.binary_search(o).is_err())
            .count() as u64,
        duplicates: (received - offsets.len()) as u64,
        unexpected: offsets.iter().filter(|o| !range.contains(o)).count() as u64,
        out_of_order: !in_order,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_check() {
        let r = json!({"recovered": true, "publications": [{"offset": 6}, {"offset": 7}, {"offset": 7}, {"offset": 9}]});
        let o = check(&r, 5, 3);
        assert!(o.recovered);
        assert_eq!((o.missing, o.duplicates, o.unexpected), (1, 1, 1));
        assert!(o.out_of_order);
        let ok = check(
            &json!({"recovered": true, "publications": [{"offset": 2}]}),
            1,
            1,
        );
        assert_eq!(
            (ok.missing, ok.duplicates, ok.unexpected, ok.out_of_order),
            (0, 0, 0, false)
        );
    }
}
