//! `herald bench ingest`: many publishers into many history channels, through
//! the client protocol (WebSocket `publish`, answered after the store
//! commit) and through the server API (`POST /api/publish`); measures
//! acknowledged publishes per second and publish→reply latency, and checks
//! that the offsets each channel handed out are exactly 1..n.
//!
//! The peers:
//! - `jetstream`: raw JetStream publish-with-ack (async-nats) into a stream
//!   created by the very code that creates Herald's ingest stream
//!   (`bus::ingest::ensure_stream`, same settings), with the same payload
//!   (an `IngestMessage`), the same `Nats-Msg-Id` deduplication header and
//!   the same number of concurrent publishers, each waiting for its ack;
//! - `jetstream sync`: the same against a nats-server with
//!   `sync_interval: always` (every write fsynced before its ack, as Herald's
//!   commit is): the equal-durability cost beside the transport speed;
//! - `centrifugo`: Herald's own paths (client protocol `publish`, server API
//!   `publish`) against Centrifugo's memory engine with history on.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_nats::HeaderMap;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;

use super::centrifugo::{Centrifugo, CentrifugoOptions};
use super::disk;
use super::net::{Sources, open_all};
use super::payload::{self, now_us};
use super::report::{Measured, Peer, Report, Row};
use super::stages;
use super::stats::{Count, Latencies, Progress, note};
use super::target::{Api, Herald, HeraldOptions, Nats};
use super::{BenchError, Common, PeerKind};
use herald::bus::ingest::{IngestMessage, ensure_stream};
use herald::bus::subjects;
use herald::config::Config;
use herald_client::{Client, ClientOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    Client,
    Api,
    Both,
}

#[derive(Args, Clone, Debug)]
pub struct IngestArgs {
    #[command(flatten)]
    pub common: Common,
    /// Concurrent publishers (connections), each with one publish in flight.
    #[arg(long, default_value_t = 32)]
    pub publishers: usize,
    /// History channels published into (round-robin).
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    /// Publications per path (client protocol, server API, peer).
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Which Herald path to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub via: Via,
    /// Herald's `writer_pipeline_depth` (default: the server's default).
    #[arg(long, value_name = "N")]
    pub writer_pipeline_depth: Option<usize>,
}

/// What one publisher path produced.
struct PathResult {
    acked: u64,
    errors: u64,
    secs: f64,
    latency: Histogram<u64>,
    /// (channel index, offset) of every acknowledged publish.
    offsets: Vec<(usize, u64)>,
}

/// The table rows of one publish path (`label` in the table, `key` the
/// prefix of its JSON fields), each against the peer's figure.
fn path_rows(label: &str, key: &str) -> Vec<Row> {
    [
        ("publishes/s", "publishes_per_sec"),
        ("publish p50 (ms)", "publish_p50_ms"),
        ("publish p99 (ms)", "publish_p99_ms"),
        ("publish p99.9 (ms)", "publish_p999_ms"),
    ]
    .into_iter()
    .map(|(what, field)| Row::versus(&format!("{label} {what}"), &format!("{key}_{field}"), field))
    .collect()
}

pub async fn run(args: IngestArgs) -> Result<Report, BenchError> {
    if args.publishers == 0 || args.channels == 0 {
        return Err(BenchError::Internal(
            "--publishers and --channels must be at least 1".into(),
        ));
    }
    args.common.raise_fd_limit(args.publishers * 2)?;
    let sources = Sources::new(args.common.sources, args.publishers);
    let kinds = args.common.peers(
        "ingest",
        &[
            PeerKind::Jetstream,
            PeerKind::JetstreamSync,
            PeerKind::Centrifugo,
        ],
    )?;
    let quiet = args.common.quiet;
    note(quiet, "starting nats-server and herald serve…");
    let opts = HeraldOptions {
        options: args
            .writer_pipeline_depth
            .map(|n| ("writer_pipeline_depth", n.to_string()))
            .into_iter()
            .collect(),
        ..HeraldOptions::default()
    };
    let mut herald = Herald::start(&args.common.nats_bin(), &opts).await?;
    let mut m = Measured::default();
    let mut rows = Vec::new();
    // The disk's share: an fsync probe beside each target (both of Herald's paths together).
    let probe = disk::start_probe(quiet);
    if matches!(args.via, Via::Client | Via::Both) {
        let tokens = (0..args.publishers)
            .map(|i| herald.token(&format!("pub{i}")))
            .collect();
        let before = stages::scrape(herald.addr)
            .await
            .map_err(BenchError::Server)?;
        let r = client_path("herald", &args, herald.addr, tokens, true, &sources).await;
        herald.check_alive()?;
        add_path(&mut m, "client", r?, true);
        let after = stages::scrape(herald.addr)
            .await
            .map_err(BenchError::Server)?;
        m.stages
            .push(("client".into(), stages::between(&before, &after)));
        rows.extend(path_rows("client", "client"));
    }
    if matches!(args.via, Via::Api | Via::Both) {
        let mut apis = Vec::with_capacity(args.publishers);
        for i in 0..args.publishers {
            apis.push(herald.api(Some(sources.pick(i))).await?);
        }
        let before = stages::scrape(herald.addr)
            .await
            .map_err(BenchError::Server)?;
        let r = api_path("herald", &args, apis).await;
        herald.check_alive()?;
        add_path(&mut m, "api", r?, true);
        let after = stages::scrape(herald.addr)
            .await
            .map_err(BenchError::Server)?;
        m.stages
            .push(("api".into(), stages::between(&before, &after)));
        rows.extend(path_rows("API", "api"));
    }
    drop(herald);
    if let Some(p) = probe {
        p.finish(&mut m);
    }
    rows.extend(disk::rows());
    let mut peers = Vec::new();
    let mut notes = vec![
        "Herald acknowledges after its store commit (fsync)".to_string(),
        disk::note(),
    ];
    for kind in kinds {
        let probe = disk::start_probe(quiet);
        let (mut measured, note) = match kind {
            PeerKind::Jetstream => (
                jetstream_run(&args, false).await?,
                "jetstream acknowledges after its write, fsynced within sync_interval (default 2 minutes)",
            ),
            PeerKind::JetstreamSync => (
                jetstream_run(&args, true).await?,
                "jetstream sync (sync_interval: always) acknowledges after fsyncing the write: Herald's durability",
            ),
            PeerKind::Centrifugo => (
                centrifugo_run(&args, &sources).await?,
                "centrifugo acknowledges after appending to its in-memory history (memory engine, no disk); its client publish reply carries no offset, so each channel's history offset is checked instead",
            ),
            other => {
                return Err(BenchError::Internal(format!(
                    "ingest has no peer {other:?}"
                )));
            }
        };
        if let Some(p) = probe {
            p.finish(&mut measured);
        }
        notes.push(note.into());
        peers.push(Peer {
            name: kind.name().into(),
            measured,
        });
    }
    Ok(Report {
        scenario: "ingest",
        params: json!({
            "publishers": args.publishers,
            "channels": args.channels,
            "messages_per_path": args.messages,
            "payload_bytes": args.payload,
            "via": format!("{:?}", args.via).to_lowercase(),
        }),
        herald: m,
        peers,
        rows,
        notes,
    })
}

/// The figures and checks of one path; `by_offset`: the replies carried
/// offsets, checked 1..n per channel (all but Centrifugo's client publish).
fn add_path(m: &mut Measured, path: &str, r: PathResult, by_offset: bool) {
    m.set(&format!("{path}_publishes"), r.acked as f64);
    m.set(
        &format!("{path}_publishes_per_sec"),
        r.acked as f64 / r.secs.max(1e-6),
    );
    m.latency(&format!("{path}_publish"), r.latency);
    m.check(&format!("{path}_errors"), r.errors);
    if by_offset {
        let (gaps, duplicates) = offset_check(&r.offsets);
        m.check(&format!("{path}_offset_gaps"), gaps);
        m.check(&format!("{path}_offset_duplicates"), duplicates);
    }
}

/// Per channel, the offsets handed out must be exactly 1..n: counts the
/// offsets missing from that range and those given twice.
fn offset_check(offsets: &[(usize, u64)]) -> (u64, u64) {
    let mut by_channel: HashMap<usize, Vec<u64>> = HashMap::new();
    for (c, o) in offsets {
        by_channel.entry(*c).or_default().push(*o);
    }
    let (mut gaps, mut duplicates) = (0u64, 0u64);
    for (_, mut list) in by_channel {
        list.sort_unstable();
        let before = list.len();
        list.dedup();
        duplicates += (before - list.len()) as u64;
        let top = list.last().copied().unwrap_or(0);
        gaps += top - list.len() as u64;
    }
    (gaps, duplicates)
}

/// Which publications publisher `p` of `publishers` sends: every
/// `publishers`-th of `messages`, into channel `j % channels`.
fn share(p: usize, publishers: usize, messages: u64) -> impl Iterator<Item = u64> {
    (p as u64..messages).step_by(publishers)
}

fn progress(label: &str, quiet: bool, acked: Arc<Count>, total: u64) -> Progress {
    let started = Instant::now();
    Progress::start(label.to_string(), quiet, move || {
        format!(
            "{} / {total} acknowledged ({:.0}/s)",
            acked.get(),
            acked.get() as f64 / started.elapsed().as_secs_f64().max(1e-3)
        )
    })
}

/// What one publish came to.
enum Outcome {
    /// Herald's reply: stored at this offset of the channel.
    Stored(u64),
    /// The peer's ack (no per-channel offset).
    Acked,
    /// Answered with an error.
    Refused,
}

/// One publisher of a path, with one publish in flight: sends `data` into
/// channel index `c` and waits for its answer. An `Err` is a broken
/// connection and ends the run.
trait PathPublisher: Send + 'static {
    fn publish(
        &mut self,
        c: usize,
        data: String,
    ) -> impl Future<Output = Result<Outcome, String>> + Send;
}

/// Client protocol `publish` on one WebSocket, into `ingc-<c>`.
struct ClientPublisher {
    client: Client,
    /// The reply must carry the offset (Herald's extension); Centrifugo's
    /// is an empty object.
    offsets: bool,
}

impl PathPublisher for ClientPublisher {
    async fn publish(&mut self, c: usize, data: String) -> Result<Outcome, String> {
        let channel = serde_json::to_string(&format!("ingc-{c}")).unwrap_or_default();
        let id = self
            .client
            .send_raw(
                "publish",
                &format!(r#"{{"channel":{channel},"data":{data}}}"#),
            )
            .await
            .map_err(|e| e.to_string())?;
        let reply = self.client.reply(id).await.map_err(|e| e.to_string())?;
        Ok(match reply.get("publish") {
            Some(r) => match r["offset"].as_u64() {
                Some(o) => Outcome::Stored(o),
                None if !self.offsets => Outcome::Acked,
                None => Outcome::Refused,
            },
            None => Outcome::Refused,
        })
    }
}

/// `POST /api/publish` on one keep-alive HTTP connection, into `inga-<c>`.
struct ApiPublisher(Api);

impl PathPublisher for ApiPublisher {
    async fn publish(&mut self, c: usize, data: String) -> Result<Outcome, String> {
        let r = self.0.publish_raw(&format!("inga-{c}"), &data).await;
        Ok(match r.ok().as_ref().and_then(|v| v["offset"].as_u64()) {
            Some(o) => Outcome::Stored(o),
            None => Outcome::Refused,
        })
    }
}

/// The peer: JetStream publish-with-ack of an `IngestMessage`, with the
/// `Nats-Msg-Id` Herald's publisher sets, on the ingest partition Herald
/// would use for `ingc-<c>`.
struct JetStreamPublisher {
    js: async_nats::jetstream::Context,
    partitions: u32,
    info: Box<serde_json::value::RawValue>,
}

impl PathPublisher for JetStreamPublisher {
    async fn publish(&mut self, c: usize, data: String) -> Result<Outcome, String> {
        let channel = format!("ingc-{c}");
        let key = uuid::Uuid::new_v4().simple().to_string();
        let bytes = IngestMessage::encode(
            &channel,
            &key,
            data.as_bytes(),
            Some(self.info.get().as_bytes()),
        )
        .map_err(|e| e.to_string())?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", subjects::message_id(&channel, &key).as_str());
        let subject = subjects::ingest_subject(subjects::partition_of(&channel, self.partitions));
        let ack = match self.js.publish_with_headers(subject, headers, bytes).await {
            Ok(f) => f.await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        Ok(match ack {
            Ok(a) if !a.duplicate => Outcome::Acked,
            _ => Outcome::Refused,
        })
    }
}

/// The client protocol path against `addr` (Herald, or Centrifugo without
/// `offsets` in its replies), one token per publisher.
async fn client_path(
    label: &str,
    args: &IngestArgs,
    addr: std::net::SocketAddr,
    tokens: Vec<String>,
    offsets: bool,
    sources: &Sources,
) -> Result<PathResult, BenchError> {
    let (clients, _) = {
        let sources = sources.clone();
        open_all(
            args.publishers,
            args.common.connect_concurrency,
            Arc::new(Count::default()),
            move |i| {
                let opts = ClientOptions {
                    source: Some(sources.pick(i)),
                    ..ClientOptions::default()
                };
                let token = tokens[i].clone();
                async move {
                    Client::connect_with(addr, &token, &opts)
                        .await
                        .map(|(c, _)| c)
                }
            },
        )
        .await?
    };
    let publishers = clients
        .into_iter()
        .map(|client| ClientPublisher { client, offsets })
        .collect();
    drive(&format!("{label} client publish"), args, publishers).await
}

/// The server API path: `publishers` connections to Herald's or
/// Centrifugo's API.
async fn api_path(
    label: &str,
    args: &IngestArgs,
    publishers: Vec<Api>,
) -> Result<PathResult, BenchError> {
    let publishers = publishers.into_iter().map(ApiPublisher).collect();
    drive(&format!("{label} API publish"), args, publishers).await
}

/// Runs every publisher on its share of `--messages` (one publish in flight
/// each) and collects what they were answered.
async fn drive<P: PathPublisher>(
    label: &str,
    args: &IngestArgs,
    publishers: Vec<P>,
) -> Result<PathResult, BenchError> {
    let acked = Arc::new(Count::default());
    let latency = Arc::new(Latencies::default());
    let progress = progress(label, args.common.quiet, acked.clone(), args.messages);
    let started = Instant::now();
    let tasks: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, mut publisher)| {
            let (acked, latency) = (acked.clone(), latency.clone());
            let (publishers, messages, channels, size) =
                (args.publishers, args.messages, args.channels, args.payload);
            tokio::spawn(async move {
                let mut offsets = Vec::new();
                let mut errors = 0u64;
                for j in share(p, publishers, messages) {
                    let c = (j % channels as u64) as usize;
                    let data = payload::encode(j, size);
                    let sent = now_us();
                    let outcome = publisher.publish(c, data).await?;
                    latency.record_one(p, now_us().saturating_sub(sent));
                    match outcome {
                        Outcome::Stored(o) => {
                            offsets.push((c, o));
                            acked.add(1);
                        }
                        Outcome::Acked => acked.add(1),
                        Outcome::Refused => errors += 1,
                    }
                }
                Ok::<_, String>((offsets, errors))
            })
        })
        .collect();
    let mut offsets = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok((o, e))) => {
                offsets.extend(o);
                errors += e;
            }
            Ok(Err(e)) => {
                return Err(BenchError::Server(format!("a publisher failed: {e}")));
            }
            Err(e) => return Err(BenchError::Internal(format!("publisher task: {e}"))),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    progress.finish().await;
    Ok(PathResult {
        acked: acked.get(),
        errors,
        secs,
        latency: latency.merged(),
        offsets,
    })
}

/// A JetStream peer: the default `sync_interval`, or `always` (`sync`).
async fn jetstream_run(args: &IngestArgs, sync: bool) -> Result<Measured, BenchError> {
    note(
        args.common.quiet,
        if sync {
            "starting the peer: nats-server (sync_interval: always) for JetStream publish-with-ack…"
        } else {
            "starting the peer: nats-server for raw JetStream publish-with-ack…"
        },
    );
    let nats = if sync {
        Nats::start_sync_always(&args.common.nats_bin()).await?
    } else {
        Nats::start(&args.common.nats_bin()).await?
    };
    let client = async_nats::connect(&nats.server.url)
        .await
        .map_err(|e| BenchError::setup("a NATS connection to the peer", e))?;
    let js = async_nats::jetstream::new(client);
    // The same settings as Herald's ingest stream, by the same code.
    let ingest = Config::defaults().ingest;
    let mut stream = ensure_stream(&js, &ingest)
        .await
        .map_err(|e| BenchError::setup("the peer's ingest stream", e))?;
    let publishers = (0..args.publishers)
        .map(|p| {
            let info =
                json!({"user": format!("pub{p}"), "client": uuid::Uuid::new_v4().to_string()});
            serde_json::value::to_raw_value(&info).map(|info| JetStreamPublisher {
                js: js.clone(),
                partitions: ingest.partitions,
                info,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BenchError::Internal(format!("peer client info: {e}")))?;
    let label = if sync {
        "jetstream sync publish"
    } else {
        "jetstream publish"
    };
    let r = drive(label, args, publishers).await?;
    let stored = stream
        .info()
        .await
        .map(|i| i.state.messages)
        .map_err(|e| BenchError::Server(format!("peer stream info: {e}")))?;
    let mut m = Measured::default();
    m.set("publishes", r.acked as f64);
    m.set("publishes_per_sec", r.acked as f64 / r.secs.max(1e-6));
    m.latency("publish", r.latency);
    m.check("errors", r.errors);
    m.check("not_in_stream", r.acked.saturating_sub(stored));
    drop(nats);
    Ok(m)
}

/// Centrifugo: the same paths as Herald's (`--via`), into the same channels.
/// Its client publish reply carries no offset, so after that path every
/// channel's history must end at the number of publications sent into it.
async fn centrifugo_run(args: &IngestArgs, sources: &Sources) -> Result<Measured, BenchError> {
    note(args.common.quiet, "starting the peer: centrifugo…");
    let mut centrifugo =
        Centrifugo::start(&args.common.centrifugo_bin(), &CentrifugoOptions::default()).await?;
    let mut m = Measured::default();
    if matches!(args.via, Via::Client | Via::Both) {
        let tokens = (0..args.publishers)
            .map(|i| centrifugo.token(&format!("pub{i}")))
            .collect();
        let r = client_path("centrifugo", args, centrifugo.addr, tokens, false, sources).await;
        centrifugo.check_alive()?;
        add_path(&mut m, "client", r?, false);
        let mut api = centrifugo.api(None).await?;
        let mut mismatch = 0u64;
        for c in 0..args.channels {
            let top = api
                .top_offset(&format!("ingc-{c}"))
                .await
                .map_err(|e| BenchError::Server(format!("centrifugo history: {e}")))?;
            mismatch += top.abs_diff(sent_into(c, args.channels, args.messages));
        }
        m.check("client_history_mismatch", mismatch);
    }
    if matches!(args.via, Via::Api | Via::Both) {
        let mut apis = Vec::with_capacity(args.publishers);
        for i in 0..args.publishers {
            apis.push(centrifugo.api(Some(sources.pick(i))).await?);
        }
        let r = api_path("centrifugo", args, apis).await;
        centrifugo.check_alive()?;
        add_path(&mut m, "api", r?, true);
    }
    Ok(m)
}

/// How many of `messages` go into channel `c` of `channels` (see [`share`]:
/// publication `j` goes into channel `j % channels`).
fn sent_into(c: usize, channels: usize, messages: u64) -> u64 {
    let (c, channels) = (c as u64, channels as u64);
    if c >= messages {
        0
    } else {
        (messages - c).div_ceil(channels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_into_counts_each_channels_share() {
        for (channels, messages) in [(4usize, 30u64), (1000, 20_000), (7, 3), (1, 5)] {
            let mut counted = vec![0u64; channels];
            for j in 0..messages {
                counted[(j % channels as u64) as usize] += 1;
            }
            for (c, n) in counted.iter().enumerate() {
                assert_eq!(sent_into(c, channels, messages), *n, "{c} of {channels}");
            }
        }
    }
}
