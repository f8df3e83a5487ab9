//! Centrifugo v6 as a peer: a child process with its memory engine and a
//! JSON configuration generated here to give it what the bench gives Herald.
//!
//! - the same client limits as Herald's defaults (outbound queue, frame size,
//!   subscriptions per connection, history and recovery page limits), and
//!   the ping interval and pong timeout a scenario sets on both;
//! - no abuse limits: Centrifugo's connection limits and rates are off
//!   (its defaults), as the bench turns Herald's off; a write deadline of
//!   10 s instead of 1 s (Herald has none, only the queue bound);
//! - channels without a namespace keep history, as Herald's default
//!   namespace does: `history_size` and `history_ttl` larger than any run
//!   puts in a channel, `force_recovery` (Herald's history channels are
//!   recoverable); an optional namespace without history (`fanout`'s
//!   ephemeral mode);
//! - clients may subscribe, publish (also without being subscribed, as the
//!   bench's publishers are) and read history, as Herald's
//!   `channel_client_publish = true` allows;
//! - a token secret and server API key of its own.
//!
//! Knows how to configure, start, probe and stop Centrifugo; nothing of what
//! a scenario sends it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::BenchError;
use super::target::{self, Api, TempDir, free_port};
use herald::config::Config;

/// Publications kept per channel: a cap above what any run publishes into
/// one channel (the memory engine holds only what was published).
const HISTORY_SIZE: u64 = 1_000_000;
/// How long a publication stays in history: longer than any run.
const HISTORY_TTL: &str = "24h";
/// Centrifugo's deadline for one socket write (default 1 s). Herald has
/// none, only the queue bound both share; a generator stalled a moment on a
/// loaded machine must not cost Centrifugo connections Herald keeps.
const WRITE_TIMEOUT: &str = "10s";
/// How long Centrifugo may take to answer /health and a first publish.
const STARTUP: Duration = Duration::from_secs(20);

/// What a scenario sets beyond the common configuration.
#[derive(Debug, Clone)]
pub struct CentrifugoOptions {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// A namespace whose channels keep no history.
    pub ephemeral_namespace: Option<&'static str>,
}

impl Default for CentrifugoOptions {
    /// Herald's default ping interval and pong timeout.
    fn default() -> Self {
        let client = Config::defaults().client;
        Self {
            ping_interval: client.ping_interval,
            pong_timeout: client.pong_timeout,
            ephemeral_namespace: None,
        }
    }
}

fn duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Permissions every bench channel gets: clients subscribe, publish and read
/// history, as they may on Herald.
fn channel_options(history: bool) -> Value {
    let mut v = json!({
        "allow_subscribe_for_client": true,
        "allow_publish_for_client": true,
        "allow_publish_for_subscriber": true,
        "allow_history_for_client": true,
        "allow_history_for_subscriber": true,
    });
    if history {
        v["history_size"] = json!(HISTORY_SIZE);
        v["history_ttl"] = json!(HISTORY_TTL);
        v["force_recovery"] = json!(true);
    }
    v
}

/// The configuration file's content.
fn config(port: u16, secret: &str, api_key: &str, opts: &CentrifugoOptions) -> Value {
    let herald = Config::defaults();
    let c = &herald.client;
    let namespaces: Vec<Value> = opts
        .ephemeral_namespace
        .iter()
        .map(|name| {
            let mut v = channel_options(false);
            v["name"] = json!(name);
            v
        })
        .collect();
    json!({
        "http_server": { "address": "127.0.0.1", "port": port },
        "log": { "level": "warn" },
        "health": { "enabled": true },
        "engine": { "type": "memory" },
        "client": {
            "token": { "hmac_secret_key": secret },
            "ping_interval": duration(opts.ping_interval),
            "pong_timeout": duration(opts.pong_timeout),
            "channel_limit": c.channel_limit,
            "queue_max_size": c.queue_max_bytes,
            "history_max_publication_limit": c.history_page_limit,
            "recovery_max_publication_limit": c.recovery_limit,
            "connection_limit": 0,
            "user_connection_limit": 0,
            "connection_rate_limit": 0,
        },
        "websocket": {
            "message_size_limit": c.message_size_limit,
            "write_timeout": WRITE_TIMEOUT,
        },
        // For subscribers over `--transport http_stream|sse`.
        "http_stream": { "enabled": true },
        "sse": { "enabled": true },
        "http_api": { "key": api_key },
        "channel": {
            "without_namespace": channel_options(true),
            "namespaces": namespaces,
        },
    })
}

/// A running Centrifugo in its own temporary directory; killed on drop.
pub struct Centrifugo {
    pub addr: SocketAddr,
    pub secret: String,
    pub api_key: String,
    child: Child,
    pid: u32,
    log_path: PathBuf,
    _dir: TempDir,
}

impl Centrifugo {
    /// Writes the configuration, starts `bin` on a free port and returns
    /// once it answers /health and has accepted a server API publish.
    pub async fn start(bin: &Path, opts: &CentrifugoOptions) -> Result<Self, BenchError> {
        let dir = TempDir::new("centrifugo")?;
        let port = free_port()?;
        let secret = uuid::Uuid::new_v4().simple().to_string();
        let api_key = uuid::Uuid::new_v4().simple().to_string();
        let config_path = dir.path().join("config.json");
        let text = serde_json::to_vec_pretty(&config(port, &secret, &api_key, opts))
            .map_err(|e| BenchError::Internal(e.to_string()))?;
        std::fs::write(&config_path, text)
            .map_err(|e| BenchError::setup("Centrifugo's config file", e))?;
        let log_path = dir.path().join("centrifugo.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| BenchError::setup("Centrifugo's log file", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| BenchError::setup("Centrifugo's log file", e))?;
        // A relative path names a file from here, not from the child's
        // working directory; a bare name is looked up on PATH.
        let bin = if bin.components().count() > 1 {
            std::path::absolute(bin).map_err(|e| BenchError::setup("centrifugo", e))?
        } else {
            bin.to_path_buf()
        };
        let mut command = Command::new(&bin);
        // Only the generated file configures it.
        for (name, _) in std::env::vars() {
            if name.starts_with("CENTRIFUGO_") {
                command.env_remove(name);
            }
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
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                BenchError::setup(
                    "centrifugo",
                    format!(
                        "{} ({e}): run scripts/install-tools.sh or pass --centrifugo PATH",
                        bin.display()
                    ),
                )
            })?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Server("centrifugo exited at once".into()))?;
        let mut c = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            secret,
            api_key,
            child,
            pid,
            log_path,
            _dir: dir,
        };
        c.wait_ready().await?;
        Ok(c)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A connection token for `user`, valid for a day (the same claims as
    /// Herald's tokens).
    pub fn token(&self, user: &str) -> String {
        herald::auth::mint(&self.secret, user, None, Duration::from_secs(86_400))
    }

    /// A server API client on its own connection.
    pub async fn api(&self, source: Option<IpAddr>) -> Result<Api, BenchError> {
        Api::open(self.addr, &self.api_key, source).await
    }

    /// An error naming the exit and the log's end if Centrifugo has exited.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        target::exited("centrifugo", &mut self.child, &self.log_path)
    }

    fn log_tail(&self) -> String {
        target::log_tail(&self.log_path)
    }

    async fn wait_ready(&mut self) -> Result<(), BenchError> {
        target::wait_health(
            "centrifugo",
            self.addr,
            &mut self.child,
            &self.log_path,
            STARTUP,
        )
        .await?;
        // The API key and the history configuration work: a publish into a
        // history channel answers with its offset.
        let mut api = self.api(None).await?;
        match api.publish("bench-warmup", &json!({"warmup": true})).await {
            Ok(r) if r["offset"].as_u64() == Some(1) => Ok(()),
            r => Err(BenchError::Server(format!(
                "centrifugo's first publish answered {r:?}, not offset 1:\n{}",
                self.log_tail()
            ))),
        }
    }
}
