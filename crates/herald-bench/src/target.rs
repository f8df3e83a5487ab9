//! What the bench measures, started by the bench itself: a nats-server with
//! JetStream for Herald (free port, temporary directory), and `herald serve`
//! as a child process (this very executable) with a temporary data dir and a
//! secret and API key chosen here; the peers' nats-servers (WebSocket
//! listener, JetStream, JetStream with `sync_interval: always`); and the
//! server API client that Herald and Centrifugo ([`super::centrifugo`])
//! share.
//!
//! Every child dies with the bench (kill on drop; nats-servers also get
//! PR_SET_PDEATHSIG), and temporary directories are removed on drop.
//!
//! Knows how to start, probe, restart and stop processes; nothing of what a
//! scenario sends them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::BenchError;
use super::http::HttpConn;
use herald::bus::server::NatsServer;

/// How long Herald may take to answer /health and store a first publish.
const STARTUP: Duration = Duration::from_secs(30);
/// How long Herald may take to exit after SIGTERM.
const STOP: Duration = Duration::from_secs(20);

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Result<Self, BenchError> {
        let path = std::env::temp_dir().join(format!(
            "herald-bench-{what}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| BenchError::setup("a temporary directory", e))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::setup("a free port", e))
}

/// A nats-server child in its own temporary directory.
pub struct Nats {
    pub server: NatsServer,
    /// The WebSocket listener, when configured.
    pub ws_addr: Option<SocketAddr>,
    _dir: TempDir,
}

impl Nats {
    /// JetStream on, nothing else: Herald's bus, or the JetStream peer.
    pub async fn start(bin: &Path) -> Result<Self, BenchError> {
        let dir = TempDir::new("nats")?;
        let server = NatsServer::start(bin, dir.path())
            .await
            .map_err(|e| BenchError::setup("nats-server", e))?;
        Ok(Self {
            server,
            ws_addr: None,
            _dir: dir,
        })
    }

    /// The equal-durability JetStream peer: JetStream with
    /// `sync_interval: always`, so the server fsyncs every write before it
    /// acknowledges it, as Herald's store commit does (the default syncs
    /// every two minutes).
    pub async fn start_sync_always(bin: &Path) -> Result<Self, BenchError> {
        let dir = TempDir::new("nats-sync")?;
        let conf = dir.path().join("peer.conf");
        std::fs::write(&conf, "jetstream {\n  sync_interval: always\n}\n")
            .map_err(|e| BenchError::setup("the peer's config", e))?;
        let server = NatsServer::start_with_config(bin, dir.path(), &conf)
            .await
            .map_err(|e| BenchError::setup("nats-server (sync_interval: always)", e))?;
        Ok(Self {
            server,
            ws_addr: None,
            _dir: dir,
        })
    }

    /// The WebSocket peer: nats-server's own WebSocket listener (no TLS),
    /// pinging clients every `ping_interval` like Herald does.
    pub async fn start_websocket(bin: &Path, ping_interval: Duration) -> Result<Self, BenchError> {
        let dir = TempDir::new("nats-ws")?;
        let port = free_port()?;
        let conf = dir.path().join("peer.conf");
        let text = format!(
            "ping_interval: \"{}s\"\nmax_payload: 1048576\nwebsocket {{\n  listen: \"127.0.0.1:{port}\"\n  no_tls: true\n}}\n",
            ping_interval.as_secs().max(1)
        );
        std::fs::write(&conf, text).map_err(|e| BenchError::setup("the peer's config", e))?;
        let server = NatsServer::start_with_config(bin, dir.path(), &conf)
            .await
            .map_err(|e| BenchError::setup("nats-server (websocket peer)", e))?;
        let ws_addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(ws_addr).await?;
        Ok(Self {
            server,
            ws_addr: Some(ws_addr),
            _dir: dir,
        })
    }

    pub fn pid(&self) -> Result<u32, BenchError> {
        self.server
            .pid()
            .ok_or_else(|| BenchError::Server("nats-server has exited".into()))
    }
}

async fn wait_for_port(addr: SocketAddr) -> Result<(), BenchError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if tokio::time::Instant::now() > deadline {
            return Err(BenchError::Server(format!("nothing listens on {addr}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// How the Herald child is configured beyond the bench's own choices.
#[derive(Debug, Clone, Default)]
pub struct HeraldOptions {
    /// Extra options (README keys) passed as `HERALD_<KEY>`.
    pub options: Vec<(&'static str, String)>,
    /// TOML appended to the configuration file (e.g. namespaces).
    pub toml: String,
}

/// `herald serve` as a child process, with its bus.
pub struct Herald {
    pub addr: SocketAddr,
    pub secret: String,
    pub api_key: String,
    child: Child,
    pid: u32,
    command: Vec<(String, String)>,
    config_file: PathBuf,
    log_path: PathBuf,
    _bus: Nats,
    /// Data dir, config and log; removed when Herald is dropped.
    _dir: TempDir,
}

impl Herald {
    /// Starts a nats-server and `herald serve` against it, waits until
    /// Herald answers /health and has stored a first publication.
    pub async fn start(nats_bin: &Path, opts: &HeraldOptions) -> Result<Self, BenchError> {
        let bus = Nats::start(nats_bin).await?;
        let dir = TempDir::new("herald")?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let secret = uuid::Uuid::new_v4().simple().to_string();
        let api_key = uuid::Uuid::new_v4().simple().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("listen".into(), addr.to_string()),
            (
                "data_dir".into(),
                dir.path().join("data").display().to_string(),
            ),
            ("nats_url".into(), bus.server.url.clone()),
            ("nats_autostart".into(), "false".into()),
            ("token_hmac_secret".into(), secret.clone()),
            ("api_key".into(), api_key.clone()),
            // The bench's clients publish (off by default).
            ("channel_client_publish".into(), "true".into()),
            // The transport scenarios compare the durable publish with
            // peers that keep no read markers; what a marker per publish
            // costs is the conversations scenario's `open` row.
            ("channel_track_publishers".into(), "false".into()),
            // The bench measures capacity, not abuse limits: every load
            // comes from one IP, and the tier below limits nothing.
            ("api_rate_per_ip".into(), String::new()),
            ("api_rate_per_key".into(), String::new()),
            ("sync_http_rate_per_ip".into(), String::new()),
            ("sync_http_rate_per_key".into(), String::new()),
            ("rate_limit_default_tier".into(), "bench".into()),
        ];
        for (k, v) in &opts.options {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_string(), v.clone()));
        }
        let config_file = dir.path().join("herald.toml");
        let toml = format!("{}\n[rate_limits.tiers.bench]\n", opts.toml);
        std::fs::write(&config_file, toml)
            .map_err(|e| BenchError::setup("Herald's config file", e))?;
        let log_path = dir.path().join("herald.log");
        let (child, pid) = spawn(&env, &config_file, &log_path)?;
        let mut herald = Self {
            addr,
            secret,
            api_key,
            child,
            pid,
            command: env,
            config_file,
            log_path,
            _bus: bus,
            _dir: dir,
        };
        herald.wait_ready().await?;
        Ok(herald)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A connection token for `user`, valid for a day.
    pub fn token(&self, user: &str) -> String {
        herald::auth::mint(&self.secret, user, None, Duration::from_secs(86_400))
    }

    /// Stops Herald with SIGTERM and starts it again on the same port and
    /// data dir (its in-process caches are then cold).
    pub async fn restart(&mut self) -> Result<(), BenchError> {
        self.terminate().await?;
        let (child, pid) = spawn(&self.command, &self.config_file, &self.log_path)?;
        self.child = child;
        self.pid = pid;
        self.wait_ready().await
    }

    /// SIGTERM, then wait for the exit.
    pub async fn terminate(&mut self) -> Result<(), BenchError> {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(STOP, self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(BenchError::Server(format!(
                    "herald did not stop within {STOP:?} after SIGTERM"
                )))
            }
        }
    }

    /// An error naming the exit and the log's end if Herald has exited.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        exited("herald", &mut self.child, &self.log_path)
    }

    async fn wait_ready(&mut self) -> Result<(), BenchError> {
        let deadline = tokio::time::Instant::now() + STARTUP;
        wait_health(
            "herald",
            self.addr,
            &mut self.child,
            &self.log_path,
            STARTUP,
        )
        .await?;
        // A first stored publication: the writer owns its partitions.
        let mut api = self.api(None).await?;
        loop {
            let r = api.publish("bench-warmup", &json!({"warmup": true})).await;
            if r.is_ok() {
                return Ok(());
            }
            self.check_alive()?;
            if tokio::time::Instant::now() > deadline {
                return Err(BenchError::Server(format!(
                    "herald did not store a first publication within {STARTUP:?}: {r:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A server API client on its own connection.
    pub async fn api(&self, source: Option<std::net::IpAddr>) -> Result<Api, BenchError> {
        Api::open(self.addr, &self.api_key, source).await
    }
}

/// The `herald` binary measured: `--herald`, else `herald` beside this
/// executable (`cargo build --release --workspace` puts both in
/// target/release).
static HERALD_BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Sets the binary [`Herald::start`] runs (once, before any start).
pub fn set_herald_bin(path: Option<std::path::PathBuf>) {
    let _ = HERALD_BIN.set(path.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("herald")))
            .unwrap_or_else(|| "herald".into())
    }));
}

fn herald_bin() -> Result<std::path::PathBuf, BenchError> {
    let bin = HERALD_BIN.get().cloned().unwrap_or_else(|| "herald".into());
    if !bin.exists() {
        return Err(BenchError::setup(
            "herald",
            format!(
                "{} does not exist: build the server (`cargo build --release -p herald`) or pass --herald PATH",
                bin.display()
            ),
        ));
    }
    Ok(bin)
}

fn spawn(
    env: &[(String, String)],
    config_file: &Path,
    log_path: &Path,
) -> Result<(Child, u32), BenchError> {
    let exe = herald_bin()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| BenchError::setup("Herald's log file", e))?;
    let mut command = Command::new(exe);
    command.arg("serve").arg("--config").arg(config_file);
    for (name, _) in std::env::vars() {
        if name.starts_with("HERALD_") {
            command.env_remove(name);
        }
    }
    command.env("NO_COLOR", "1");
    for (k, v) in env {
        command.env(format!("HERALD_{}", k.to_ascii_uppercase()), v);
    }
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and only asks the kernel to
    // SIGTERM the child when the spawning thread exits.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::setup("herald serve", e))?;
    let pid = child
        .id()
        .ok_or_else(|| BenchError::Server("herald exited at once".into()))?;
    Ok((child, pid))
}

/// The server API over one keep-alive connection: Herald's, or Centrifugo's
/// (the same paths, `X-API-Key` header and `result` objects).
pub struct Api {
    conn: HttpConn,
    key: String,
}

/// A failed server API call: the transport, or Herald's error object.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Http(#[from] super::http::HttpError),
    #[error("status {status}: {body}")]
    Answer { status: u16, body: String },
}

impl Api {
    /// Connects to the server API at `addr` (from `source` when given).
    pub async fn open(
        addr: SocketAddr,
        key: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<Self, BenchError> {
        let conn = HttpConn::open(addr, source)
            .await
            .map_err(|e| BenchError::Server(format!("connecting to the server API: {e}")))?;
        Ok(Self {
            conn,
            key: key.into(),
        })
    }

    /// `publish {channel, data}`; the `result` object (offset and epoch for
    /// a history channel).
    pub async fn publish(&mut self, channel: &str, data: &Value) -> Result<Value, ApiError> {
        let body = json!({ "channel": channel, "data": data });
        self.call("publish", body.to_string().into_bytes().into())
            .await
    }

    /// `history {channel, limit: 0}`: the channel's latest offset (0 when
    /// nothing was published into it).
    pub async fn top_offset(&mut self, channel: &str) -> Result<u64, ApiError> {
        let body = json!({ "channel": channel, "limit": 0 });
        let r = self
            .call("history", body.to_string().into_bytes().into())
            .await?;
        Ok(r["offset"].as_u64().unwrap_or(0))
    }

    /// `publish` with `data` given as JSON text (no re-encoding).
    pub async fn publish_raw(&mut self, channel: &str, data: &str) -> Result<Value, ApiError> {
        let channel = serde_json::to_string(channel).unwrap_or_default();
        let body = format!(r#"{{"channel":{channel},"data":{data}}}"#);
        self.call("publish", body.into_bytes().into()).await
    }

    /// Any method with a JSON body; the `result` object.
    pub async fn method(&mut self, method: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(method, body.to_string().into_bytes().into())
            .await
    }

    async fn call(&mut self, method: &str, body: bytes::Bytes) -> Result<Value, ApiError> {
        let path = format!("/api/{method}");
        let (status, text) = self
            .conn
            .request("POST", &path, &[("x-api-key", &self.key)], Some(body))
            .await?;
        let v: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
        match v.get("result") {
            Some(r) if status == 200 => Ok(r.clone()),
            _ => Err(ApiError::Answer {
                status,
                body: String::from_utf8_lossy(&text).into_owned(),
            }),
        }
    }
}

/// A server child's end: `Err` naming `what` with its log's last lines once
/// it has exited.
pub(crate) fn exited(what: &str, child: &mut Child, log: &Path) -> Result<(), BenchError> {
    match child.try_wait() {
        Ok(Some(status)) => Err(BenchError::Server(format!(
            "{what} exited ({status}); the end of its log:\n{}",
            log_tail(log)
        ))),
        _ => Ok(()),
    }
}

/// The last 20 lines of a child's log file.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits until the server at `addr` answers `GET /health` with 200, failing
/// when its child exits or after `within`.
pub(crate) async fn wait_health(
    what: &str,
    addr: SocketAddr,
    child: &mut Child,
    log: &Path,
    within: Duration,
) -> Result<(), BenchError> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        exited(what, child, log)?;
        if let Ok(mut c) = HttpConn::open(addr, None).await
            && let Ok((200, _)) = c.request("GET", "/health", &[], None).await
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(BenchError::Server(format!(
                "{what} did not answer /health within {within:?}:\n{}",
                log_tail(log)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
