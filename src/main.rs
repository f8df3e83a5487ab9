//! The `herald` binary: parse the command line, load the configuration (exit
//! 64 on any bad value, before binding a port), set up logging and metrics,
//! run a role until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use herald::config::{Config, LogFormat, Sources, StoreBackend};
use herald::roles::{self, Role};
use herald::store::scylla::{self, ScyllaSettings};
use herald::telemetry;

/// mimalloc instead of the system allocator: under `scripts/callgrind-publish.sh`
/// glibc's malloc and free were about a fifth of every durable publish's
/// instructions (BENCHMARKS.md, "Instructions per publish").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad configuration (EX_CONFIG-like usage error, sysexits 64).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Real-time push and IM server (Centrifugo client protocol v2, durable history)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run edge + writer + sync in one process (the default on one machine).
    Serve(RunArgs),
    /// Run only the edge: client WebSockets and the server API.
    Edge(RunArgs),
    /// Run only the writer: sequences and stores publications.
    Writer(RunArgs),
    /// Run only sync: serves history from the store.
    Sync(RunArgs),
    /// Mint an HS256 client token from the configured secret.
    Token(TokenArgs),
    /// Create or update the ScyllaDB schema (store = scylla); idempotent.
    Migrate(ConfigArgs),
    /// Load generator: runs `herald-bench` (built beside this binary by
    /// `cargo build --release --workspace`) with the arguments that follow.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Args)]
struct ConfigArgs {
    /// TOML configuration file (lowest precedence; then HERALD_* env; then flags).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Set any option: `--set key=value` (see README for keys). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Data directory (data_dir).
    #[arg(long)]
    data_dir: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Public listener address (listen).
    #[arg(long)]
    listen: Option<String>,
    /// NATS URL (nats_url).
    #[arg(long)]
    nats_url: Option<String>,
    /// Serve the demo chat at /demo, with an endpoint that mints tokens for
    /// any name (demo = true): never on a server others can reach.
    #[arg(long)]
    demo: bool,
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The user id (`sub` claim).
    #[arg(long)]
    user: String,
    /// Mint a subscription token for this channel instead of a connection token.
    #[arg(long)]
    channel: Option<String>,
    /// Lifetime, e.g. 1h, 30m, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

fn flags(
    args: &ConfigArgs,
    extra: &[(&str, &Option<String>)],
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for kv in &args.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--set {kv}: expected key=value"))?;
        out.push((k.trim().to_string(), v.to_string()));
    }
    if let Some(d) = &args.data_dir {
        out.push(("data_dir".into(), d.clone()));
    }
    for (k, v) in extra {
        if let Some(v) = v {
            out.push((k.to_string(), v.clone()));
        }
    }
    Ok(out)
}

fn load(args: &ConfigArgs, extra: &[(&str, &Option<String>)]) -> Result<Config, ExitCode> {
    let flags = flags(args, extra).map_err(|e| {
        eprintln!("config: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    Sources::from_process(args.config.as_deref(), flags)
        .and_then(|s| Config::load(&s))
        .map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        })
}

/// `herald bench …` → `herald-bench …` beside this executable: the load
/// generator is a crate of its own, so the server does not carry its
/// dependencies.
fn bench(args: &[std::ffi::OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let bench = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("herald-bench")))
        .filter(|p| p.exists());
    let Some(bench) = bench else {
        eprintln!(
            "herald bench: herald-bench is not beside this binary; build it with \
             `cargo build --release -p herald-bench` (or --workspace)"
        );
        return ExitCode::FAILURE;
    };
    let e = std::process::Command::new(&bench).args(args).exec();
    eprintln!("herald bench: cannot run {}: {e}", bench.display());
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (role, args) = match cli.command {
        Command::Token(t) => return token(t),
        Command::Migrate(a) => return migrate(a),
        Command::Bench { args } => return bench(&args),
        Command::Serve(a) => (Role::Serve, a),
        Command::Edge(a) => (Role::Edge, a),
        Command::Writer(a) => (Role::Writer, a),
        Command::Sync(a) => (Role::Sync, a),
    };
    let demo = args.demo.then(|| "true".to_string());
    let config = match load(
        &args.config,
        &[
            ("listen", &args.listen),
            ("nats_url", &args.nats_url),
            ("demo", &demo),
        ],
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match telemetry::init(&config, role.name(), runtime.handle()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("herald {}: {e}", role.name());
            return ExitCode::FAILURE;
        }
    };
    // Every client connection is a descriptor: never stop at a soft 1024.
    match herald::limits::raise_fd_limit() {
        Ok(l) => tracing::info!(soft = l.soft, hard = l.hard, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    let code = runtime.block_on(run(role, config));
    // Exports run on the runtime: flush before it is dropped.
    telemetry.shutdown();
    code
}

async fn run(role: Role, config: Config) -> ExitCode {
    let data_dir = config.data_dir.clone();
    let human = config.log_format == LogFormat::Text;
    let tls = Tls {
        public: config.tls.is_some(),
        internal: config.tls.is_some() && config.tls_internal,
    };
    // Signals are watched from the start, so a standby waiting for the store
    // lock stops cleanly too.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; shutting down");
        token.cancel();
    });
    let running = match roles::start_with_shutdown(role, config, shutdown).await {
        Ok(r) => r,
        Err(e) if e.is::<roles::StoppedWhileWaiting>() => {
            tracing::info!("stopped while waiting for the store");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            if human {
                eprintln!("herald {}: {e:#}", role.name());
            } else {
                tracing::error!(
                    role = role.name(),
                    error = format!("{e:#}"),
                    "herald failed to start"
                );
            }
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(role = role.name(), addr = %running.addr, nats = %herald::secrets::redact_urls(&running.nats_url), "herald started");
    if human {
        announce(role, &running, &data_dir, tls);
    } else {
        // JSON logs: every stderr line is a JSON object, so the hints become events.
        if let Some(url) = &running.notes.started_nats {
            tracing::info!(url = %url, data_dir = %data_dir.display(), "started nats-server");
        }
        if let Some(path) = &running.notes.generated_secret {
            tracing::info!(path = %path.display(), "generated a client token secret");
        }
    }
    running.run_until_stopped().await;
    ExitCode::SUCCESS
}

/// Which listeners speak TLS, for the URLs `announce` prints.
#[derive(Clone, Copy)]
struct Tls {
    public: bool,
    internal: bool,
}

/// What a person starting Herald by hand wants to know (text logs only).
fn announce(role: Role, running: &roles::Running, data_dir: &std::path::Path, tls: Tls) {
    if let Some(url) = &running.notes.started_nats {
        eprintln!(
            "started nats-server at {url} (store in {}); it accepts user `{}` with the password in {}",
            data_dir.join("nats").display(),
            herald::secrets::CHILD_NATS_USER,
            data_dir
                .join(herald::secrets::CHILD_NATS_PASSWORD_FILE)
                .display()
        );
    }
    if let Some(path) = &running.notes.generated_secret {
        eprintln!(
            "generated a client token secret in {} — mint a token with:\n  herald token --data-dir {} --user alice",
            path.display(),
            data_dir.display()
        );
    }
    if matches!(role, Role::Serve | Role::Edge) {
        let (ws, http) = if tls.public {
            ("wss", "https")
        } else {
            ("ws", "http")
        };
        eprintln!(
            "client WebSocket: {ws}://{}/connection/websocket",
            running.addr
        );
        if running.notes.api_enabled {
            match running.api_addr {
                Some(addr) => {
                    let http = if tls.internal { "https" } else { "http" };
                    eprintln!("server API: {http}://{addr}/api/<method> (api_listen)");
                }
                None => eprintln!("server API: {http}://{}/api/<method>", running.addr),
            }
        } else {
            eprintln!("server API disabled: set HERALD_API_KEY to enable it");
        }
        if running.notes.demo {
            eprintln!(
                "demo chat: {http}://{}/demo (open it in two windows; names are not checked: demo only)",
                running.addr
            );
        }
        if running.notes.admin {
            let (addr, http) = match running.internal_addr {
                Some(a) => (a, if tls.internal { "https" } else { "http" }),
                None => (running.addr, http),
            };
            eprintln!("admin console: {http}://{addr}/admin");
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn migrate(args: ConfigArgs) -> ExitCode {
    let config = match load(&args, &[]) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if config.store == StoreBackend::Embedded {
        eprintln!(
            "store = embedded: nothing to migrate (the embedded store lays itself out when it opens); \
             set store = scylla (HERALD_STORE) to migrate a ScyllaDB keyspace"
        );
        return ExitCode::SUCCESS;
    }
    let telemetry = match telemetry::init_logs(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("herald migrate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = ScyllaSettings::from_config(&config.scylla);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(scylla::migrate(&settings));
    telemetry.shutdown();
    match outcome {
        Ok(report) => {
            eprintln!(
                "keyspace {}: applied schema versions {:?}, already present {:?}",
                settings.cluster.keyspace, report.applied, report.already
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token(t: TokenArgs) -> ExitCode {
    let config = match load(&t.config, &[]) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let secret = match &config.token_hmac_secret {
        Some(s) => s.expose().to_string(),
        None => match herald::secrets::read_private(&config.generated_secret_path()) {
            Ok(Some(s)) => s,
            _ => {
                eprintln!(
                    "config: token_hmac_secret (HERALD_TOKEN_HMAC_SECRET) is not set and {} holds no generated secret; \
                     run `herald serve` once or set the secret",
                    config.generated_secret_path().display()
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    println!(
        "{}",
        herald::auth::mint(&secret, &t.user, t.channel.as_deref(), t.ttl)
    );
    ExitCode::SUCCESS
}
