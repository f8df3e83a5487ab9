//! `herald-bench <scenario>` (also reached as `herald bench`): a load generator that measures Herald on this
//! machine and, in the same run, peers doing the same work, and prints
//! Herald's figure, each peer's and the ratio Herald ÷ peer. The peers
//! ([`PeerKind`]; `--peer` picks some, `--no-peer` none):
//! nats-server's own WebSocket listener and Centrifugo for `fanout` and
//! `connections`; raw JetStream publish-with-ack (default `sync_interval`
//! and `sync_interval: always`) and Centrifugo for `ingest`
//! (BENCHMARKS.md holds the results).
//!
//! The bench starts what it measures: a nats-server and `herald serve` (the
//! `herald` binary beside this one, or `--herald PATH`) with temporary
//! directories and a secret and API key of its own, then each peer, one at
//! a time; nothing to set up beforehand.
//!
//! Scenarios, one file each: [`fanout`], [`connections`], [`ingest`],
//! [`recovery`], [`history`], [`presence`]. Client side: `herald_client` (the same
//! protocol client the tests use, also the one that drives Centrifugo),
//! [`nats_ws`] (the NATS peer's protocol), [`http`] (server API and sync
//! HTTP), [`net`] (source addresses, connect limits). [`target`] and
//! [`centrifugo`] start the processes, [`stats`] measures, [`report`] and
//! [`plot`] show.
//!
//! Correctness is checked on every run (lost, duplicated, failed) for Herald
//! and every peer; a run whose checks fail exits 1. Timing is reported,
//! never asserted.

mod centrifugo;
mod connections;
mod conversations;
mod disk;
mod drive;
mod fanout;
mod fill;
mod history;
mod http;
mod ingest;
mod nats_ws;
mod net;
mod payload;
mod plot;
mod presence;
mod recovery;
mod report;
mod stages;
mod stats;
mod stream;
mod sys;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use herald_client::ClientError;

/// What stopped a run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A system limit (file descriptors, ports, memory) stopped it; the
    /// message names which and what to change.
    #[error("stopped by a system limit — {0}")]
    Limit(String),
    #[error("cannot start {what}: {message}")]
    Setup { what: String, message: String },
    /// The server under test failed (exited, refused, answered wrongly).
    #[error("server: {0}")]
    Server(String),
    #[error("after {opened} connections: {source}")]
    Connect {
        opened: usize,
        #[source]
        source: ClientError,
    },
    #[error("{0}")]
    Internal(String),
}

impl BenchError {
    fn setup(what: &str, e: impl std::fmt::Display) -> Self {
        Self::Setup {
            what: what.into(),
            message: e.to_string(),
        }
    }
}

#[derive(Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Measure Herald beside its peers (see BENCHMARKS.md)"
)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand)]
pub enum Scenario {
    /// C connections in R rooms of S subscribers; publishers at a rate or as
    /// fast as possible; deliveries/s, end-to-end latency, loss.
    Fanout(fanout::FanoutArgs),
    /// N idle subscribed connections: server memory per connection, connect
    /// rate, idle CPU with pings.
    Connections(connections::ConnectionsArgs),
    /// Many publishers into many history channels (client protocol and
    /// server API): acknowledged publishes/s, publish→reply latency.
    Ingest(ingest::IngestArgs),
    /// K clients miss M publications per channel and reconnect at once with
    /// recovery: time until all recovered, nothing missing or duplicated.
    Recovery(recovery::RecoveryArgs),
    /// Pages of 100 publications from the sync HTTP API over cold and hot
    /// channels: pages/s and latency.
    History(history::HistoryArgs),
    /// Subscribe/unsubscribe rate with presence on and off; presence_stats
    /// and presence latency in rooms of 100, 1,000 and 10,000 members.
    Presence(presence::PresenceArgs),
    /// Publish rate into 2-member and N-member conversations (markers on)
    /// vs a plain channel; `herald.conversations` and `herald.unread`
    /// latency for a user with many conversations.
    Conversations(conversations::ConversationsArgs),
}

/// The name of a client encoding in reports (`--encoding`).
fn encoding_name(e: herald_client::Encoding) -> &'static str {
    match e {
        herald_client::Encoding::Json => "json",
        herald_client::Encoding::Protobuf => "protobuf",
    }
}

/// The report's note on the clients' encoding, when not JSON.
fn encoding_note(e: herald_client::Encoding) -> Option<String> {
    (e == herald_client::Encoding::Protobuf).then(|| {
        "Herald's and Centrifugo's clients speak Protobuf (subprotocol centrifuge-protobuf); nats-server ws its own protocol".into()
    })
}

/// Options every scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Write the HDR latency percentile distributions to this file.
    #[arg(long, value_name = "FILE")]
    pub hdr: Option<PathBuf>,
    /// Draw the latency distributions into this PNG.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// The nats-server binary (Herald's bus and the peers); default
    /// `.tools/py/bin/nats-server` when present, else `nats-server` on PATH.
    #[arg(long, env = "HERALD_TEST_NATS_SERVER", value_name = "PATH")]
    pub nats_server: Option<PathBuf>,
    /// The herald binary to measure; default: `herald` beside this executable.
    #[arg(long, value_name = "PATH")]
    pub herald: Option<PathBuf>,
    /// The Centrifugo binary (the `centrifugo` peer); default
    /// `.tools/centrifugo/centrifugo` when present, else `centrifugo` on PATH.
    #[arg(long, env = "HERALD_TEST_CENTRIFUGO", value_name = "PATH")]
    pub centrifugo: Option<PathBuf>,
    /// Measure Herald only, no peer.
    #[arg(long, conflicts_with = "peer")]
    pub no_peer: bool,
    /// The peers to measure beside Herald (repeat or separate with commas);
    /// default: every peer of the scenario (fanout and connections:
    /// nats-ws, centrifugo; ingest: jetstream, jetstream-sync, centrifugo).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PEER")]
    pub peer: Vec<PeerKind>,
    /// Loopback source addresses to spread connections over (127.0.0.2, …);
    /// default: one per 10,000 connections, plus one.
    #[arg(long)]
    pub sources: Option<usize>,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
}

/// A program measured beside Herald, doing the same work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerKind {
    /// nats-server's own WebSocket listener (`fanout`, `connections`).
    NatsWs,
    /// Raw JetStream publish-with-ack, nats-server's default `sync_interval`
    /// (fsync every 2 minutes) (`ingest`).
    Jetstream,
    /// The same with `sync_interval: always` (fsync before each ack): the
    /// durability of Herald's commit (`ingest`).
    JetstreamSync,
    /// Centrifugo v6 with its memory engine, driven by the same client
    /// protocol as Herald (`fanout`, `connections`, `ingest`).
    Centrifugo,
}

impl PeerKind {
    /// The peer's name in the table and in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Self::NatsWs => "nats-server ws",
            Self::Jetstream => "jetstream",
            Self::JetstreamSync => "jetstream sync",
            Self::Centrifugo => "centrifugo",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Self::NatsWs => "nats-ws",
            Self::Jetstream => "jetstream",
            Self::JetstreamSync => "jetstream-sync",
            Self::Centrifugo => "centrifugo",
        }
    }
}

impl Common {
    /// The peers to run among those `scenario` has (`available`, in the
    /// order they run): none with `--no-peer`, the `--peer` ones, else all.
    fn peers(&self, scenario: &str, available: &[PeerKind]) -> Result<Vec<PeerKind>, BenchError> {
        if self.no_peer {
            return Ok(Vec::new());
        }
        if let Some(p) = self.peer.iter().find(|p| !available.contains(p)) {
            let names: Vec<&str> = available.iter().map(|p| p.flag()).collect();
            return Err(BenchError::Internal(if names.is_empty() {
                format!("{scenario} has no peer {}; it has none", p.flag())
            } else {
                format!(
                    "{scenario} has no peer {}; its peers: {}",
                    p.flag(),
                    names.join(", ")
                )
            }));
        }
        Ok(available
            .iter()
            .copied()
            .filter(|p| self.peer.is_empty() || self.peer.contains(p))
            .collect())
    }

    fn centrifugo_bin(&self) -> PathBuf {
        if let Some(p) = &self.centrifugo {
            return p.clone();
        }
        let local = PathBuf::from(".tools/centrifugo/centrifugo");
        if local.exists() {
            return local;
        }
        PathBuf::from("centrifugo")
    }

    fn nats_bin(&self) -> PathBuf {
        if let Some(p) = &self.nats_server {
            return p.clone();
        }
        let local = PathBuf::from(".tools/py/bin/nats-server");
        if local.exists() {
            return local;
        }
        PathBuf::from("nats-server")
    }

    /// Raises the open-file limit for `connections` sockets of this process
    /// and of the server child (which inherits it); says so when it cannot.
    fn raise_fd_limit(&self, connections: usize) -> Result<(), BenchError> {
        let wanted = connections as u64 + FD_MARGIN;
        let got = herald::limits::raise_fd_limit_to(wanted)
            .map_err(|e| BenchError::Internal(e.to_string()))?;
        if got.soft < wanted {
            return Err(BenchError::Limit(format!(
                "file descriptors: {connections} connections need about {wanted} descriptors in this \
                 process and in the server, but RLIMIT_NOFILE is soft {} / hard {} and cannot be raised \
                 further (only a process with CAP_SYS_RESOURCE may pass the hard limit, and no process fs.nr_open = {}); \
                 raise it with `ulimit -Hn`, LimitNOFILE=, docker --ulimit nofile= or sysctl fs.nr_open",
                got.soft,
                got.hard,
                std::fs::read_to_string("/proc/sys/fs/nr_open")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "?".into())
            )));
        }
        stats::note(
            self.quiet,
            &format!(
                "open-file limit: soft {} / hard {} (need ~{wanted})",
                got.soft, got.hard
            ),
        );
        Ok(())
    }
}

/// Descriptors beyond one per connection: NATS, HTTP, files, the runtime.
const FD_MARGIN: u64 = 512;

/// A rate: `max` or messages per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    Max,
    PerSec(f64),
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "max" {
            return Ok(Self::Max);
        }
        match s.parse::<f64>() {
            Ok(r) if r > 0.0 => Ok(Self::PerSec(r)),
            _ => Err("expected `max` or a positive number per second".into()),
        }
    }
}

impl Rate {
    /// The pause between two sends of one of `senders` sharing this rate.
    fn interval(self, senders: usize) -> Option<Duration> {
        match self {
            Self::Max => None,
            Self::PerSec(r) => Some(Duration::from_secs_f64(senders.max(1) as f64 / r)),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Max => f.write_str("max"),
            Self::PerSec(r) => write!(f, "{r}"),
        }
    }
}

/// Runs one scenario and prints its report; exit 0 when every check holds,
/// 1 when one fails or the run could not finish.
fn main() -> ExitCode {
    run(BenchArgs::parse())
}

pub fn run(args: BenchArgs) -> ExitCode {
    let common = match &args.scenario {
        Scenario::Fanout(a) => &a.common,
        Scenario::Connections(a) => &a.common,
        Scenario::Ingest(a) => &a.common,
        Scenario::Recovery(a) => &a.common,
        Scenario::History(a) => &a.common,
        Scenario::Presence(a) => &a.common,
        Scenario::Conversations(a) => &a.common,
    };
    target::set_herald_bin(common.herald.clone());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (common, result) = runtime.block_on(async {
        match args.scenario {
            Scenario::Fanout(a) => (a.common.clone(), fanout::run(a).await),
            Scenario::Connections(a) => (a.common.clone(), connections::run(a).await),
            Scenario::Ingest(a) => (a.common.clone(), ingest::run(a).await),
            Scenario::Recovery(a) => (a.common.clone(), recovery::run(a).await),
            Scenario::History(a) => (a.common.clone(), history::run(a).await),
            Scenario::Presence(a) => (a.common.clone(), presence::run(a).await),
            Scenario::Conversations(a) => (a.common.clone(), conversations::run(a).await),
        }
    });
    // Children and connections go before the exit.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(report) => output(&common, &report),
        Err(e) => {
            eprintln!("herald-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn output(common: &Common, report: &report::Report) -> ExitCode {
    eprint!("{}", report.table());
    if common.json {
        println!("{}", report.json());
    }
    if let Some(path) = &common.hdr {
        match report.write_hdr(path) {
            Ok(()) => eprintln!("HDR histograms: {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
    if let Some(path) = &common.plot {
        let title = format!("herald bench {}: latency by percentile", report.scenario);
        match plot::plot(path, &title, &report.curves()) {
            Ok(()) => eprintln!("latency plot: {}", path.display()),
            Err(e) => eprintln!("cannot draw {}: {e}", path.display()),
        }
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
