//! `herald bench connections`: N idle clients, each connected and subscribed
//! to a room; measures the server's resident memory per connection (RSS
//! delta / N, from /proc/<pid>/status of the server the bench started), the
//! connect rate, and the server's CPU while the clients sit idle answering
//! pings. The peers, with the same ping interval and connection count:
//! nats-server's WebSocket listener (rooms as subjects) and Centrifugo
//! (driven as Herald is: the same client protocol, tokens and channels).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::centrifugo::{Centrifugo, CentrifugoOptions};
use super::drive::{Deliveries, HeraldSub, NatsSub, Subscriber, subscriber_loop};
use super::nats_ws::NatsWs;
use super::net::{Sources, open_all};
use super::report::{Measured, Peer, Report, Row};
use super::stats::{Count, Progress, note};
use super::stream::{StreamSub, Transport};
use super::sys::{cpu_seconds, rss_kib};
use super::target::{Herald, HeraldOptions, Nats};
use super::{BenchError, Common, PeerKind, encoding_name, encoding_note};
use herald_client::{Client, ClientError, ClientOptions, Encoding};

const READ_BUFFER: usize = 4096;
/// Herald's default pong timeout, kept unless the ping interval is shorter.
const PONG_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Args, Clone, Debug)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub common: Common,
    /// The client protocol's encoding of Herald's and Centrifugo's clients:
    /// `json`, or `protobuf` (subprotocol `centrifuge-protobuf`; payloads
    /// are the same JSON text, carried as bytes).
    #[arg(long, default_value = "json")]
    pub encoding: Encoding,
    /// How Herald's and Centrifugo's clients connect: `websocket`, or
    /// `http_stream` / `sse` with bidirectional emulation (JSON; each client
    /// then holds two HTTP connections, the stream and its `/emulation` one).
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: Transport,
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Connections per room (each subscribes to one room).
    #[arg(long, default_value_t = 100)]
    pub room_size: usize,
    /// How long the connections stay idle while the server's CPU is measured.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// How long the server's memory is left to settle before and after
    /// connecting.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// The server's ping interval (Herald's client_ping_interval, the
    /// peers' ping_interval).
    #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,
}

pub async fn run(args: ConnectionsArgs) -> Result<Report, BenchError> {
    if args.connections == 0 || args.room_size == 0 {
        return Err(BenchError::Internal(
            "--connections and --room-size must be at least 1".into(),
        ));
    }
    args.common.raise_fd_limit(args.connections)?;
    let sources = Sources::new(args.common.sources, args.connections);
    let kinds = args
        .common
        .peers("connections", &[PeerKind::NatsWs, PeerKind::Centrifugo])?;
    let herald = herald_run(&args, &sources).await?;
    let mut peers = Vec::new();
    for kind in kinds {
        let measured = match kind {
            PeerKind::NatsWs => nats_run(&args, &sources).await?,
            PeerKind::Centrifugo => centrifugo_run(&args, &sources).await?,
            other => {
                return Err(BenchError::Internal(format!(
                    "connections has no peer {other:?}"
                )));
            }
        };
        peers.push(Peer {
            name: kind.name().into(),
            measured,
        });
    }
    Ok(Report {
        scenario: "connections",
        params: json!({
            "connections": args.connections,
            "room_size": args.room_size,
            "encoding": encoding_name(args.encoding),
            "transport": args.transport.name(),
            "idle_s": args.idle.as_secs_f64(),
            "ping_interval_s": args.ping_interval.as_secs_f64(),
            "settle_s": args.settle.as_secs_f64(),
            "sources": sources.len(),
        }),
        herald,
        peers,
        rows: vec![
            Row::both("connections", "connections"),
            Row::both("connect rate (conn/s)", "connect_per_sec"),
            Row::both("server RSS before (MiB)", "rss_before_mib"),
            Row::both("server RSS after (MiB)", "rss_after_mib"),
            Row::both("server RSS per connection (KiB)", "rss_per_connection_kib"),
            Row::both("server CPU while idle (%)", "idle_cpu_percent"),
            Row::both("pings answered", "pings"),
        ],
        notes: std::iter::once(
            "RSS per connection = (server RSS after connecting − before) / connections".into(),
        )
        .chain(encoding_note(args.encoding))
        .chain((args.transport != Transport::Websocket).then(|| {
            format!(
                "clients over {} (bidirectional emulation: the stream plus a keep-alive /emulation connection each; pongs through /emulation)",
                args.transport.name()
            )
        }))
        .collect(),
    })
}

/// The connected clients, each read by its own task from the moment it
/// connected (so it answers pings however long the others take).
struct Readers {
    tasks: Vec<tokio::task::JoinHandle<super::stats::Order>>,
    shared: Arc<Deliveries>,
    stop: CancellationToken,
}

/// Starts reading `sub` at once.
fn read<S: Subscriber>(
    i: usize,
    sub: S,
    shared: &Arc<Deliveries>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<super::stats::Order> {
    tokio::spawn(subscriber_loop(i, sub, 1, shared.clone(), stop.clone()))
}

/// Measures a target whose clients just connected: lets the server settle,
/// takes its memory per connection, then its CPU over the idle period.
async fn measure(
    label: &str,
    args: &ConnectionsArgs,
    pid: u32,
    rss_before_kib: u64,
    readers: Readers,
    connect_per_sec: f64,
) -> Result<Measured, BenchError> {
    let Readers {
        tasks: readers,
        shared,
        stop,
    } = readers;
    let n = readers.len();
    tokio::time::sleep(args.settle).await;
    let rss_after =
        rss_kib(pid).ok_or_else(|| BenchError::Server("the server has exited".into()))?;
    let mut m = Measured::default();
    m.set("connections", n as f64);
    m.set("connect_per_sec", connect_per_sec);
    m.set("rss_before_mib", rss_before_kib as f64 / 1024.0);
    m.set("rss_after_mib", rss_after as f64 / 1024.0);
    m.set(
        "rss_per_connection_kib",
        rss_after.saturating_sub(rss_before_kib) as f64 / n as f64,
    );

    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    let progress = {
        let shared = shared.clone();
        Progress::start(format!("{label} idle"), args.common.quiet, move || {
            format!(
                "pings answered {}, disconnected {}",
                shared.pings.get(),
                shared.disconnected.get()
            )
        })
    };
    tokio::time::sleep(args.idle).await;
    let cpu_after = cpu_seconds(pid).unwrap_or(cpu_before);
    stop.cancel();
    progress.finish().await;
    for r in readers {
        let _ = r.await;
    }
    m.set(
        "idle_cpu_percent",
        (cpu_after - cpu_before) / args.idle.as_secs_f64().max(1e-3) * 100.0,
    );
    m.set("pings", shared.pings.get() as f64);
    m.check("disconnected", shared.disconnected.get());
    m.check("unexpected_deliveries", shared.delivered.get());
    Ok(m)
}

/// The pong timeout both Herald and Centrifugo get: Herald's default,
/// or half the ping interval when that is shorter (both require it below
/// the ping interval).
fn pong_timeout(args: &ConnectionsArgs) -> Duration {
    (args.ping_interval / 2).min(PONG_TIMEOUT)
}

async fn herald_run(args: &ConnectionsArgs, sources: &Sources) -> Result<Measured, BenchError> {
    note(args.common.quiet, "starting nats-server and herald serve…");
    let mut herald = Herald::start(
        &args.common.nats_bin(),
        &HeraldOptions {
            options: vec![
                (
                    "client_ping_interval",
                    format!("{}ms", args.ping_interval.as_millis()),
                ),
                (
                    "client_pong_timeout",
                    format!("{}ms", pong_timeout(args).as_millis()),
                ),
            ],
            toml: String::new(),
        },
    )
    .await?;
    let tokens = (0..args.connections)
        .map(|i| herald.token(&format!("u{i}")))
        .collect();
    let r = protocol_run("herald", args, sources, herald.addr, herald.pid(), tokens).await;
    // A failure because Herald died says so, with its log.
    herald.check_alive()?;
    r
}

async fn centrifugo_run(args: &ConnectionsArgs, sources: &Sources) -> Result<Measured, BenchError> {
    note(args.common.quiet, "starting the peer: centrifugo…");
    let mut centrifugo = Centrifugo::start(
        &args.common.centrifugo_bin(),
        &CentrifugoOptions {
            ping_interval: args.ping_interval,
            pong_timeout: pong_timeout(args),
            ephemeral_namespace: None,
        },
    )
    .await?;
    let tokens = (0..args.connections)
        .map(|i| centrifugo.token(&format!("u{i}")))
        .collect();
    let (addr, pid) = (centrifugo.addr, centrifugo.pid());
    let r = protocol_run("centrifugo", args, sources, addr, pid, tokens).await;
    centrifugo.check_alive()?;
    r
}

/// The run against a server speaking Herald's client protocol (Herald or
/// Centrifugo) at `addr`, process `pid`; one token per connection.
async fn protocol_run(
    label: &str,
    args: &ConnectionsArgs,
    sources: &Sources,
    addr: std::net::SocketAddr,
    pid: u32,
    tokens: Vec<String>,
) -> Result<Measured, BenchError> {
    let quiet = args.common.quiet;
    tokio::time::sleep(args.settle).await;
    let rss_before =
        rss_kib(pid).ok_or_else(|| BenchError::Server(format!("{label} has exited")))?;
    let room_size = args.room_size;
    let tokens = Arc::new(tokens);
    let opened = Arc::new(Count::default());
    let n = args.connections;
    let (shared, stop) = (Arc::new(Deliveries::default()), CancellationToken::new());
    let _stop_guard = stop.clone().drop_guard();
    let progress = progress(label, quiet, opened.clone(), n);
    let encoding = args.encoding;
    let transport = args.transport;
    let connected = {
        let sources = sources.clone();
        let (shared, stop) = (shared.clone(), stop.clone());
        open_all(n, args.common.connect_concurrency, opened, move |i| {
            let (shared, stop) = (shared.clone(), stop.clone());
            let opts = ClientOptions {
                source: Some(sources.pick(i)),
                read_buffer: READ_BUFFER,
                encoding,
                ..ClientOptions::default()
            };
            let token = tokens[i].clone();
            async move {
                let room = format!("idle-{}", i / room_size);
                if transport != Transport::Websocket {
                    let (sub, reply) =
                        StreamSub::connect(addr, opts.source, transport, &token, &room, false)
                            .await?;
                    if reply.get("subscribe").is_none() {
                        return Err(ClientError::BadFrame(format!("subscribe failed: {reply}")));
                    }
                    return Ok(read(i, sub, &shared, &stop));
                }
                let (mut client, _) = Client::connect_with(addr, &token, &opts).await?;
                let reply = client.call("subscribe", json!({ "channel": room })).await?;
                if reply.get("subscribe").is_none() {
                    return Err(ClientError::BadFrame(format!("subscribe failed: {reply}")));
                }
                let sub = HeraldSub {
                    client,
                    by_offset: false,
                };
                Ok(read(i, sub, &shared, &stop))
            }
        })
        .await
    };
    progress.finish().await;
    let (tasks, took) = connected?;
    let readers = Readers {
        tasks,
        shared,
        stop,
    };
    measure(
        label,
        args,
        pid,
        rss_before,
        readers,
        n as f64 / took.as_secs_f64(),
    )
    .await
}

async fn nats_run(args: &ConnectionsArgs, sources: &Sources) -> Result<Measured, BenchError> {
    let quiet = args.common.quiet;
    note(
        quiet,
        "starting the peer: nats-server with its WebSocket listener…",
    );
    let nats = Nats::start_websocket(&args.common.nats_bin(), args.ping_interval).await?;
    let addr = nats
        .ws_addr
        .ok_or_else(|| BenchError::Internal("the peer has no websocket listener".into()))?;
    let pid = nats.pid()?;
    tokio::time::sleep(args.settle).await;
    let rss_before =
        rss_kib(pid).ok_or_else(|| BenchError::Server("nats-server has exited".into()))?;
    let room_size = args.room_size;
    let opened = Arc::new(Count::default());
    let n = args.connections;
    let (shared, stop) = (Arc::new(Deliveries::default()), CancellationToken::new());
    let _stop_guard = stop.clone().drop_guard();
    let progress = progress("nats-server ws", quiet, opened.clone(), n);
    let connected = {
        let sources = sources.clone();
        let (shared, stop) = (shared.clone(), stop.clone());
        open_all(n, args.common.connect_concurrency, opened, move |i| {
            let source = sources.pick(i);
            let (shared, stop) = (shared.clone(), stop.clone());
            async move {
                let mut c = NatsWs::connect(addr, Some(source), READ_BUFFER).await?;
                c.subscribe(&format!("idle.{}", i / room_size), 1).await?;
                Ok(read(i, NatsSub(c), &shared, &stop))
            }
        })
        .await
    };
    progress.finish().await;
    let (tasks, took) = connected?;
    let readers = Readers {
        tasks,
        shared,
        stop,
    };
    let m = measure(
        "nats-server ws",
        args,
        pid,
        rss_before,
        readers,
        n as f64 / took.as_secs_f64(),
    )
    .await?;
    Ok(m)
}

fn progress(label: &str, quiet: bool, opened: Arc<Count>, n: usize) -> Progress {
    Progress::start(format!("{label} connect"), quiet, move || {
        format!("{} / {n} connected and subscribed", opened.get())
    })
}
