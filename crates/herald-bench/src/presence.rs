//! `herald bench presence`: what presence costs (issue 19 §4).
//!
//! Two phases against one `herald serve`:
//! - **churn**: `--concurrency` clients each subscribe to and unsubscribe
//!   from one shared channel `--cycles` times, first in a namespace with
//!   presence and join/leave on, then in one with both off; cycles per
//!   second and cycle latency (subscribe reply + unsubscribe reply) of each.
//! - **rooms**: for each size of `--members` (default 100, 1,000, 10,000)
//!   the room is filled to that many subscribed connections (presence on,
//!   join/leave off: members read nothing), then one client asks
//!   `presence_stats` and `presence` `--queries` times each; latency of
//!   each, and a check that every answer counts every member.
//!
//! 10,000 members need about 10,000 descriptors in this process and in the
//! server: the run says so and stops when the limit is lower. No peer.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::net::{Sources, open_all};
use super::payload::now_us;
use super::report::{Measured, Report, Row};
use super::stats::{Count, Latencies, note};
use super::target::{Herald, HeraldOptions};
use super::{BenchError, Common};
use herald_client::{Client, ClientError, ClientOptions};

#[derive(Args, Clone, Debug)]
pub struct PresenceArgs {
    #[command(flatten)]
    pub common: Common,
    /// Room sizes measured, ascending, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub members: Vec<usize>,
    /// Subscribe/unsubscribe cycles per churning client and mode.
    #[arg(long, default_value_t = 500)]
    pub cycles: usize,
    /// Churning clients.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// `presence_stats` and `presence` calls per room size.
    #[arg(long, default_value_t = 100)]
    pub queries: usize,
}

/// Presence and join/leave on; a namespace with neither; a room namespace
/// with presence only.
const NAMESPACES: &str = "[namespaces.on]\npresence = true\njoin_leave = true\n\
[namespaces.off]\npresence = false\njoin_leave = false\n\
[namespaces.room]\npresence = true\njoin_leave = false\nhistory = false\n";

pub async fn run(args: PresenceArgs) -> Result<Report, BenchError> {
    if args.members.is_empty() || args.concurrency == 0 || args.cycles == 0 || args.queries == 0 {
        return Err(BenchError::Internal(
            "--members, --concurrency, --cycles and --queries must be at least 1".into(),
        ));
    }
    // No peer: a --peer names one this scenario does not have.
    args.common.peers("presence", &[])?;
    let largest = args.members.iter().copied().max().unwrap_or(0);
    args.common.raise_fd_limit(largest + args.concurrency + 1)?;
    let quiet = args.common.quiet;
    note(quiet, "starting nats-server and herald serve…");
    let mut herald = Herald::start(
        &args.common.nats_bin(),
        &HeraldOptions {
            // Members read nothing: no ping may close them mid-run.
            options: vec![
                ("client_ping_interval", "600s".into()),
                ("client_pong_timeout", "60s".into()),
            ],
            toml: NAMESPACES.into(),
        },
    )
    .await?;
    let mut m = Measured::default();
    for mode in ["on", "off"] {
        churn(&args, &herald, mode, &mut m).await?;
        herald.check_alive()?;
    }
    let mut rows = vec![
        Row::herald("subscribe+unsubscribe/s, presence on", "on_cycles_per_sec"),
        Row::herald(
            "subscribe+unsubscribe/s, presence off",
            "off_cycles_per_sec",
        ),
        Row::herald("cycle p50 (ms), presence on", "on_cycle_p50_ms"),
        Row::herald("cycle p50 (ms), presence off", "off_cycle_p50_ms"),
        Row::herald("cycle p99 (ms), presence on", "on_cycle_p99_ms"),
        Row::herald("cycle p99 (ms), presence off", "off_cycle_p99_ms"),
    ];
    let mut sizes = args.members.clone();
    sizes.sort_unstable();
    rooms(&args, &herald, &sizes, &mut m).await?;
    herald.check_alive()?;
    for n in &sizes {
        for (what, key) in [("presence_stats", "stats"), ("presence", "presence")] {
            rows.push(Row::herald(
                &format!("{what} p50 (ms), {n} members"),
                &format!("{key}_{n}_p50_ms"),
            ));
            rows.push(Row::herald(
                &format!("{what} p99 (ms), {n} members"),
                &format!("{key}_{n}_p99_ms"),
            ));
        }
    }
    Ok(Report {
        scenario: "presence",
        params: json!({
            "members": sizes,
            "cycles": args.cycles,
            "concurrency": args.concurrency,
            "queries": args.queries,
        }),
        herald: m,
        peers: Vec::new(),
        rows,
        notes: vec![
            "one herald serve (a single edge: every query gathers one answer over NATS)".into(),
            "churn: subscribe then unsubscribe on one shared channel; on = presence + join/leave"
                .into(),
        ],
    })
}

fn bad(what: &str, v: &serde_json::Value) -> ClientError {
    ClientError::BadFrame(format!("{what}: {v}"))
}

async fn churn(
    args: &PresenceArgs,
    herald: &Herald,
    mode: &str,
    m: &mut Measured,
) -> Result<(), BenchError> {
    note(args.common.quiet, &format!("churn, presence {mode}…"));
    let channel = format!("{mode}:churn");
    let latency = Arc::new(Latencies::default());
    let errors = Arc::new(Count::default());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let (mut client, _) = Client::connect(herald.addr, &herald.token(&format!("c{w}")))
            .await
            .map_err(|e| BenchError::Server(format!("connect: {e}")))?;
        let (latency, errors, channel, cycles) = (
            latency.clone(),
            errors.clone(),
            channel.clone(),
            args.cycles,
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..cycles {
                let sent = now_us();
                let r = async {
                    let s = client
                        .call("subscribe", json!({ "channel": channel }))
                        .await?;
                    if s.get("subscribe").is_none() {
                        return Err(bad("subscribe", &s));
                    }
                    let u = client
                        .call("unsubscribe", json!({ "channel": channel }))
                        .await?;
                    if u.get("unsubscribe").is_none() {
                        return Err(bad("unsubscribe", &u));
                    }
                    // Join/leave pushes of the others are not what is measured.
                    client.take_pushes();
                    Ok(())
                }
                .await;
                latency.record_one(w, now_us().saturating_sub(sent));
                if r.is_err() {
                    errors.add(1);
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| BenchError::Internal(format!("churn task: {e}")))?;
    }
    let secs = started.elapsed().as_secs_f64();
    let cycles = (args.cycles * args.concurrency) as f64;
    m.set(&format!("{mode}_cycles"), cycles);
    m.set(&format!("{mode}_cycles_per_sec"), cycles / secs.max(1e-6));
    m.latency(&format!("{mode}_cycle"), latency.merged());
    m.check(&format!("{mode}_churn_errors"), errors.get());
    Ok(())
}

async fn rooms(
    args: &PresenceArgs,
    herald: &Herald,
    sizes: &[usize],
    m: &mut Measured,
) -> Result<(), BenchError> {
    const ROOM: &str = "room:big";
    let quiet = args.common.quiet;
    let largest = sizes.last().copied().unwrap_or(0);
    let sources = Sources::new(args.common.sources, largest);
    let (mut asker, _) = Client::connect(herald.addr, &herald.token("asker"))
        .await
        .map_err(|e| BenchError::Server(format!("connect: {e}")))?;
    let r = asker
        .call("subscribe", json!({ "channel": ROOM }))
        .await
        .map_err(|e| BenchError::Server(format!("subscribe: {e}")))?;
    if r.get("subscribe").is_none() {
        return Err(BenchError::Server(format!("subscribe refused: {r}")));
    }
    let mut members: Vec<Client> = Vec::new();
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..largest)
            .map(|i| herald.token(&format!("m{i}")))
            .collect(),
    );
    let mut wrong = 0;
    for &n in sizes {
        // The asker is a member too: n - 1 more.
        let more = n.saturating_sub(1).saturating_sub(members.len());
        note(
            quiet,
            &format!("room of {n}: connecting {more} more members…"),
        );
        let base = members.len();
        let (tokens, sources, addr) = (tokens.clone(), sources.clone(), herald.addr);
        let (opened, took) = open_all(
            more,
            args.common.connect_concurrency,
            Arc::new(Count::default()),
            move |i| {
                let token = tokens[base + i].clone();
                let opts = ClientOptions {
                    source: Some(sources.pick(base + i)),
                    ..ClientOptions::default()
                };
                async move {
                    let (mut c, _) = Client::connect_with(addr, &token, &opts).await?;
                    let r = c.call("subscribe", json!({ "channel": ROOM })).await?;
                    if r.get("subscribe").is_none() {
                        return Err(bad("subscribe", &r));
                    }
                    Ok(c)
                }
            },
        )
        .await?;
        members.extend(opened);
        if more > 0 {
            m.set(
                &format!("connect_subscribe_{n}_per_sec"),
                more as f64 / took.as_secs_f64().max(1e-6),
            );
        }
        // Presence is eventually complete (one edge here: at once).
        let stats = Latencies::default();
        let full = Latencies::default();
        for _ in 0..args.queries {
            let sent = now_us();
            let r = asker
                .call("presence_stats", json!({ "channel": ROOM }))
                .await
                .map_err(|e| BenchError::Server(format!("presence_stats: {e}")))?;
            stats.record_one(0, now_us().saturating_sub(sent));
            if r["presence_stats"]["num_clients"].as_u64() != Some(n as u64)
                || r["presence_stats"]["num_users"].as_u64() != Some(n as u64)
            {
                wrong += 1;
            }
        }
        for _ in 0..args.queries {
            let sent = now_us();
            let r = asker
                .call("presence", json!({ "channel": ROOM }))
                .await
                .map_err(|e| BenchError::Server(format!("presence: {e}")))?;
            full.record_one(0, now_us().saturating_sub(sent));
            if r["presence"]["presence"].as_object().map(|p| p.len()) != Some(n) {
                wrong += 1;
            }
        }
        m.latency(&format!("stats_{n}"), stats.merged());
        m.latency(&format!("presence_{n}"), full.merged());
    }
    m.check("wrong_presence_answers", wrong);
    drop(members);
    Ok(())
}
