//! `herald bench fanout`: C = rooms × subscribers connections, each
//! subscribed to one room; one publisher connection per room publishes at a
//! share of `--rate` (or as fast as its window of unconfirmed publishes
//! allows). Measures deliveries per second, end-to-end latency (the send
//! time travels in the payload), and checks every delivery per subscriber:
//! by offset for history channels, by sequence number otherwise.
//!
//! The peers: nats-server's WebSocket listener (rooms are subjects, the
//! publisher's PUB is confirmed by a PONG), and Centrifugo driven exactly as
//! Herald is (the same client protocol, channels, namespace without history
//! for the ephemeral mode, history channels checked by offset).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::centrifugo::{Centrifugo, CentrifugoOptions};
use super::disk;
use super::drive::{
    Deliveries, HeraldPub, HeraldSub, NatsPub, NatsSub, Pace, Published, publisher_loop,
    subscriber_loop,
};
use super::nats_ws::NatsWs;
use super::net::{Sources, open_all};
use super::payload::now_us;
use super::report::{Measured, Peer, Report, Row};
use super::stages;
use super::stats::{Count, Latencies, Order, Progress, note};
use super::stream::{StreamSub, Transport};
use super::target::{Herald, HeraldOptions, Nats};
use super::{BenchError, Common, PeerKind, Rate, encoding_name, encoding_note};
use herald_client::{Client, ClientError, ClientOptions, Encoding};

/// The namespace of channels without history the bench configures.
const EPHEMERAL_NAMESPACE: &str = "bench_eph";
/// tungstenite read buffer per bench connection.
const READ_BUFFER: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Channels without history: a publication goes straight to subscribers.
    Ephemeral,
    /// History channels: every publication is stored before delivery.
    History,
}

#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// The client protocol's encoding of Herald's and Centrifugo's clients:
    /// `json`, or `protobuf` (subprotocol `centrifuge-protobuf`; payloads
    /// are the same JSON text, carried as bytes).
    #[arg(long, default_value = "json")]
    pub encoding: Encoding,
    /// How Herald's and Centrifugo's subscribers connect: `websocket`, or
    /// `http_stream` / `sse` with bidirectional emulation (JSON; the
    /// publishers stay on WebSockets).
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: Transport,
    #[arg(long, value_enum, default_value = "ephemeral")]
    pub mode: Mode,
    /// Rooms (channels; subjects for the peer).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Subscribers per room (connections = rooms × subscribers).
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Publications per second over all rooms, or `max`.
    #[arg(long, default_value = "max")]
    pub rate: Rate,
    /// How long publishers publish (unless --messages).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Publications per room instead of a duration.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Payload size in bytes (the JSON data carrying sequence and send time).
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Unconfirmed publishes each publisher may have in flight.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// After publishing ends, how long to wait without progress for the last
    /// deliveries.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
}

impl FanoutArgs {
    fn connections(&self) -> usize {
        self.rooms * self.subscribers
    }

    fn pace(&self) -> Pace {
        let now = tokio::time::Instant::now();
        Pace {
            count: self.messages,
            until: match self.messages {
                Some(_) => now + Duration::from_secs(86_400),
                None => now + self.duration,
            },
            interval: self.rate.interval(self.rooms),
            window: self.window.max(1),
            payload: self.payload,
            phase: Duration::ZERO,
        }
    }
}

pub async fn run(args: FanoutArgs) -> Result<Report, BenchError> {
    if args.rooms == 0 || args.subscribers == 0 {
        return Err(BenchError::Internal(
            "--rooms and --subscribers must be at least 1".into(),
        ));
    }
    let total = args.connections() + args.rooms;
    args.common.raise_fd_limit(total)?;
    let sources = Sources::new(args.common.sources, total);
    let kinds = args
        .common
        .peers("fanout", &[PeerKind::NatsWs, PeerKind::Centrifugo])?;
    // The disk's share of a persisted run: an fsync probe beside each target.
    let probing = args.mode == Mode::History;
    let probe = || {
        probing
            .then(|| disk::start_probe(args.common.quiet))
            .flatten()
    };
    let running = probe();
    let mut herald = herald_run(&args, &sources).await?;
    if let Some(p) = running {
        p.finish(&mut herald);
    }
    let mut peers = Vec::new();
    for kind in kinds.iter().copied() {
        let running = probe();
        let mut measured = match kind {
            PeerKind::NatsWs => nats_run(&args, &sources).await?,
            PeerKind::Centrifugo => centrifugo_run(&args, &sources).await?,
            other => {
                return Err(BenchError::Internal(format!(
                    "fanout has no peer {other:?}"
                )));
            }
        };
        if let Some(p) = running {
            p.finish(&mut measured);
        }
        peers.push(Peer {
            name: kind.name().into(),
            measured,
        });
    }
    let mut rows = vec![
        Row::both("connections", "connections"),
        Row::both("connect rate (conn/s)", "connect_per_sec"),
        Row::both("published", "published"),
        Row::both("publish rate (msg/s)", "publish_per_sec"),
        Row::both("deliveries", "deliveries"),
        Row::both("deliveries/s", "deliveries_per_sec"),
    ];
    for (label, key) in [
        ("delivery p50 (ms)", "delivery_p50_ms"),
        ("delivery p99 (ms)", "delivery_p99_ms"),
        ("delivery p99.9 (ms)", "delivery_p999_ms"),
        ("delivery max (ms)", "delivery_max_ms"),
        ("publish→confirm p99 (ms)", "publish_p99_ms"),
    ] {
        rows.push(Row::both(label, key));
    }
    let mut notes = vec![format!(
        "{} mode",
        match args.mode {
            Mode::Ephemeral => "ephemeral",
            Mode::History => "history",
        }
    )];
    notes.extend(encoding_note(args.encoding));
    if args.transport != Transport::Websocket {
        notes.push(format!(
            "subscribers over {} (bidirectional emulation: subscribe and pongs through /emulation); publishers over WebSockets",
            args.transport.name()
        ));
    }
    if kinds.contains(&PeerKind::NatsWs) {
        notes.push(
            "nats-server ws publishes to NATS subjects (no history) and counts a PONG after each PUB as its confirmation"
                .into(),
        );
    }
    if kinds.contains(&PeerKind::Centrifugo) {
        notes.push(match args.mode {
            Mode::Ephemeral => {
                "centrifugo: the same client protocol and generator as Herald, memory engine, a namespace without history".into()
            }
            Mode::History => {
                "centrifugo: the same client protocol and generator as Herald, memory engine, history kept in memory (recoverable, checked by offset)".into()
            }
        });
    }
    if probing {
        rows.extend(disk::rows());
        notes.push(
            "Herald stores (fsync) every publication before delivering it; the peers do not".into(),
        );
        notes.push(disk::note());
    }
    Ok(Report {
        scenario: "fanout",
        params: json!({
            "mode": format!("{:?}", args.mode).to_lowercase(),
            "encoding": encoding_name(args.encoding),
            "transport": args.transport.name(),
            "rooms": args.rooms,
            "subscribers_per_room": args.subscribers,
            "connections": args.connections(),
            "rate": args.rate.to_string(),
            "duration_s": args.messages.is_none().then_some(args.duration.as_secs_f64()),
            "messages_per_room": args.messages,
            "payload_bytes": args.payload,
            "window": args.window,
            "sources": sources.len(),
        }),
        herald,
        peers,
        rows,
        notes,
    })
}

fn channel(mode: Mode, room: usize) -> String {
    match mode {
        Mode::Ephemeral => format!("{EPHEMERAL_NAMESPACE}:room-{room}"),
        Mode::History => format!("room-{room}"),
    }
}

async fn herald_run(args: &FanoutArgs, sources: &Sources) -> Result<Measured, BenchError> {
    note(args.common.quiet, "starting nats-server and herald serve…");
    let mut herald = Herald::start(
        &args.common.nats_bin(),
        &HeraldOptions {
            options: vec![],
            toml: format!("[namespaces.{EPHEMERAL_NAMESPACE}]\nhistory = false\n"),
        },
    )
    .await?;
    let tokens = (0..args.connections() + args.rooms)
        .map(|i| herald.token(&format!("u{i}")))
        .collect();
    let before = stages::scrape(herald.addr)
        .await
        .map_err(BenchError::Server)?;
    let r = protocol_run("herald", args, sources, herald.addr, tokens).await;
    // A failure because Herald died says so, with its log.
    herald.check_alive()?;
    let mut m = r?;
    let after = stages::scrape(herald.addr)
        .await
        .map_err(BenchError::Server)?;
    m.stages
        .push(("run".into(), stages::between(&before, &after)));
    Ok(m)
}

async fn centrifugo_run(args: &FanoutArgs, sources: &Sources) -> Result<Measured, BenchError> {
    note(args.common.quiet, "starting the peer: centrifugo…");
    let mut centrifugo = Centrifugo::start(
        &args.common.centrifugo_bin(),
        &CentrifugoOptions {
            ephemeral_namespace: Some(EPHEMERAL_NAMESPACE),
            ..CentrifugoOptions::default()
        },
    )
    .await?;
    let tokens = (0..args.connections() + args.rooms)
        .map(|i| centrifugo.token(&format!("u{i}")))
        .collect();
    let r = protocol_run("centrifugo", args, sources, centrifugo.addr, tokens).await;
    centrifugo.check_alive()?;
    r
}

/// The run against a server speaking Herald's client protocol (Herald or
/// Centrifugo) at `addr`; `tokens` holds one per subscriber, then one per
/// publisher.
async fn protocol_run(
    label: &str,
    args: &FanoutArgs,
    sources: &Sources,
    addr: std::net::SocketAddr,
    tokens: Vec<String>,
) -> Result<Measured, BenchError> {
    let quiet = args.common.quiet;
    let (rooms, mode, encoding) = (args.rooms, args.mode, args.encoding);
    let transport = args.transport;
    let tokens = Arc::new(tokens);
    let opened = Arc::new(Count::default());
    let n = args.connections();
    let shared = Arc::new(Deliveries::default());
    let stop = CancellationToken::new();
    // Subscribers left behind by a failed run stop with it.
    let _stop_guard = stop.clone().drop_guard();
    let progress = connect_progress(label, quiet, opened.clone(), n);
    let (readers, took) = {
        let (sources, tokens) = (sources.clone(), tokens.clone());
        let (shared, stop) = (shared.clone(), stop.clone());
        open_all(
            n,
            args.common.connect_concurrency,
            opened.clone(),
            move |i| {
                let opts = options(sources.pick(i), encoding);
                let token = tokens[i].clone();
                let (shared, stop) = (shared.clone(), stop.clone());
                async move {
                    let room = i % rooms;
                    let by_offset = mode == Mode::History;
                    let first = |sub: &Value| {
                        if by_offset {
                            sub["offset"].as_u64().unwrap_or(0) + 1
                        } else {
                            1
                        }
                    };
                    if transport != Transport::Websocket {
                        let (sub, reply) = StreamSub::connect(
                            addr,
                            opts.source,
                            transport,
                            &token,
                            &channel(mode, room),
                            by_offset,
                        )
                        .await?;
                        let Some(result) = reply.get("subscribe") else {
                            return Err(ClientError::BadFrame(format!(
                                "subscribe failed: {reply}"
                            )));
                        };
                        let first = first(result);
                        return Ok((
                            room,
                            tokio::spawn(subscriber_loop(i, sub, first, shared, stop)),
                        ));
                    }
                    let (mut client, _) = Client::connect_with(addr, &token, &opts).await?;
                    let reply = client
                        .call("subscribe", json!({ "channel": channel(mode, room) }))
                        .await?;
                    let Some(sub) = reply.get("subscribe") else {
                        return Err(ClientError::BadFrame(format!("subscribe failed: {reply}")));
                    };
                    let first = first(sub);
                    // Read at once: the client answers pings from now on.
                    let sub = HeraldSub { client, by_offset };
                    Ok((
                        room,
                        tokio::spawn(subscriber_loop(i, sub, first, shared, stop)),
                    ))
                }
            },
        )
        .await?
    };
    progress.finish().await;

    let publishers = {
        let (sources, tokens) = (sources.clone(), tokens.clone());
        open_all(
            rooms,
            args.common.connect_concurrency,
            Arc::new(Count::default()),
            move |r| {
                let opts = options(sources.pick(r), encoding);
                let token = tokens[n + r].clone();
                async move {
                    let (client, _) = Client::connect_with(addr, &token, &opts).await?;
                    Ok(HeraldPub::new(client, &channel(mode, r)))
                }
            },
        )
        .await?
        .0
    };
    measure(
        label,
        args,
        readers,
        shared,
        stop,
        publishers,
        n as f64 / took.as_secs_f64(),
    )
    .await
}

async fn nats_run(args: &FanoutArgs, sources: &Sources) -> Result<Measured, BenchError> {
    let quiet = args.common.quiet;
    note(
        quiet,
        "starting the peer: nats-server with its WebSocket listener…",
    );
    let nats = Nats::start_websocket(&args.common.nats_bin(), Duration::from_secs(25)).await?;
    let addr = nats
        .ws_addr
        .ok_or_else(|| BenchError::Internal("the peer has no websocket listener".into()))?;
    let rooms = args.rooms;
    let n = args.connections();
    let opened = Arc::new(Count::default());
    let shared = Arc::new(Deliveries::default());
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let progress = connect_progress("nats-server ws", quiet, opened.clone(), n);
    let (readers, took) = {
        let sources = sources.clone();
        let (shared, stop) = (shared.clone(), stop.clone());
        open_all(
            n,
            args.common.connect_concurrency,
            opened.clone(),
            move |i| {
                let source = sources.pick(i);
                let (shared, stop) = (shared.clone(), stop.clone());
                async move {
                    let room = i % rooms;
                    let mut c = NatsWs::connect(addr, Some(source), READ_BUFFER).await?;
                    c.subscribe(&subject(room), 1).await?;
                    Ok((
                        room,
                        tokio::spawn(subscriber_loop(i, NatsSub(c), 1, shared, stop)),
                    ))
                }
            },
        )
        .await?
    };
    progress.finish().await;
    let publishers = {
        let sources = sources.clone();
        open_all(
            rooms,
            args.common.connect_concurrency,
            Arc::new(Count::default()),
            move |r| {
                let source = sources.pick(r);
                async move {
                    let conn = NatsWs::connect(addr, Some(source), READ_BUFFER).await?;
                    Ok(NatsPub {
                        conn,
                        subject: subject(r),
                    })
                }
            },
        )
        .await?
        .0
    };
    let m = measure(
        "nats-server ws",
        args,
        readers,
        shared,
        stop,
        publishers,
        n as f64 / took.as_secs_f64(),
    )
    .await;
    drop(nats);
    m
}

fn subject(room: usize) -> String {
    format!("bench.room.{room}")
}

fn options(source: std::net::IpAddr, encoding: Encoding) -> ClientOptions {
    ClientOptions {
        source: Some(source),
        read_buffer: READ_BUFFER,
        encoding,
        ..ClientOptions::default()
    }
}

fn connect_progress(label: &str, quiet: bool, opened: Arc<Count>, n: usize) -> Progress {
    Progress::start(format!("{label} connect"), quiet, move || {
        format!("{} / {n} connected", opened.get())
    })
}

type Reader = (usize, tokio::task::JoinHandle<Order>);

/// Runs the publishers, waits for the deliveries, stops the subscribers and
/// computes the figures of one target.
async fn measure<P: super::drive::Publisher>(
    label: &str,
    args: &FanoutArgs,
    readers: Vec<Reader>,
    shared: Arc<Deliveries>,
    stop: CancellationToken,
    publishers: Vec<P>,
    connect_per_sec: f64,
) -> Result<Measured, BenchError> {
    let quiet = args.common.quiet;
    let publish_latency = Arc::new(Latencies::default());
    let pace = args.pace();
    let rooms = args.rooms.max(1) as u32;
    let started_us = now_us();
    let started = Instant::now();
    let progress = {
        let shared = shared.clone();
        Progress::start(label.to_string(), quiet, move || {
            let secs = (now_us() - started_us) as f64 / 1e6;
            format!(
                "deliveries {} ({:.0}/s) p99 {:.2} ms lost-connections {}",
                shared.delivered.get(),
                shared.delivered.get() as f64 / secs.max(0.001),
                shared.latency.p99_ms(),
                shared.disconnected.get()
            )
        })
    };
    let tasks: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(r, p)| {
            let pace = Pace {
                phase: pace
                    .interval
                    .map_or(Duration::ZERO, |iv| iv * r as u32 / rooms),
                ..pace
            };
            tokio::spawn(publisher_loop(r, p, pace, publish_latency.clone()))
        })
        .collect();
    let mut per_room = Vec::with_capacity(tasks.len());
    let mut publish_failures = 0u64;
    for t in tasks {
        match t.await {
            Ok(Ok(p)) => per_room.push(p),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "publisher failed");
                publish_failures += 1;
                per_room.push(Published::default());
            }
            Err(_) => {
                publish_failures += 1;
                per_room.push(Published::default());
            }
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let confirmed: u64 = per_room.iter().map(|p| p.confirmed).sum();
    // Refused, or never confirmed.
    let refused: u64 = per_room.iter().map(|p| p.sent - p.confirmed).sum();
    let expected: u64 = readers
        .iter()
        .map(|(room, _)| per_room[*room].confirmed)
        .sum();

    // Wait for the deliveries, as long as they keep coming.
    let mut last = (shared.delivered.get(), Instant::now());
    while shared.delivered.get() < expected {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = shared.delivered.get();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > args.drain {
            break;
        }
    }
    stop.cancel();
    progress.finish().await;

    let mut lost = 0u64;
    let mut duplicates = 0u64;
    let mut gaps = 0u64;
    for (room, handle) in readers {
        let order = handle
            .await
            .map_err(|e| BenchError::Internal(format!("subscriber task: {e}")))?;
        lost += per_room[room].confirmed.saturating_sub(order.unique());
        duplicates += order.duplicates;
        gaps += order.skipped;
    }
    let delivered = shared.delivered.get();
    let window_s = (shared.last_us.get().saturating_sub(started_us)) as f64 / 1e6;
    let mut m = Measured::default();
    m.set("connections", (args.connections()) as f64);
    m.set("connect_per_sec", connect_per_sec);
    m.set("published", confirmed as f64);
    m.set("publish_per_sec", confirmed as f64 / publish_secs.max(1e-6));
    m.set("deliveries", delivered as f64);
    m.set(
        "deliveries_per_sec",
        if window_s > 0.0 {
            delivered as f64 / window_s
        } else {
            0.0
        },
    );
    m.set("expected_deliveries", expected as f64);
    m.latency("delivery", shared.latency.merged());
    m.latency("publish", publish_latency.merged());
    m.check("lost", lost);
    m.check("duplicates", duplicates);
    m.check("gaps", gaps);
    m.check("publish_errors", refused + publish_failures);
    m.check("disconnected", shared.disconnected.get());
    Ok(m)
}
