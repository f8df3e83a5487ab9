//! Herald as a real child process: the built `herald` binary started with a
//! role and its configuration in `HERALD_*` environment variables, probed
//! over HTTP (`/health`, `/metrics`, the server API) and stopped with real
//! signals (SIGKILL, SIGTERM).
//!
//! Each process writes its stderr (the logs) to a temp file; when the test
//! panics the file is printed as the handle drops, so a CI failure shows
//! what every process logged. A handle dropping kills its process.
//!
//! Knows nothing of what a test checks: only how to run, probe and stop a
//! process.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use super::eventually;
use super::node::{API_KEY, SECRET};

/// How long a process may take to answer `/health` after it is spawned.
pub const STARTUP: Duration = Duration::from_secs(20);
/// How long a process may take to exit after SIGTERM.
pub const STOP: Duration = Duration::from_secs(20);

/// A port that was free a moment ago: bind 127.0.0.1:0, read it, drop it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Sends `signal` (a name such as `TERM`, `KILL`) with procps `kill`.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill (procps)");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// What to start: a role, a name for the logs, a listen port and options.
/// Cloning it and starting the clone runs the same process again (same port,
/// same data dir).
#[derive(Clone, Debug)]
pub struct Spec {
    pub role: &'static str,
    pub name: String,
    pub port: u16,
    /// The address it listens on (with `port`): loopback, or its address in
    /// `netns`.
    pub host: IpAddr,
    /// A network namespace to run it in (`ip netns exec`), see
    /// [`Spec::in_netns`].
    pub netns: Option<String>,
    /// Option key (`client_recovery_limit`) → value; passed as `HERALD_<KEY>`.
    pub options: BTreeMap<String, String>,
}

impl Spec {
    /// A role connected to `nats_url` with the test secret and API key, a
    /// free port and the small timeouts crash tests want.
    pub fn new(role: &'static str, name: &str, nats_url: &str) -> Self {
        let port = free_port();
        let mut s = Self {
            role,
            name: name.to_string(),
            port,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            netns: None,
            options: BTreeMap::new(),
        };
        for (k, v) in [
            ("listen", format!("127.0.0.1:{port}")),
            ("nats_url", nats_url.to_string()),
            ("nats_autostart", "false".into()),
            ("token_hmac_secret", SECRET.into()),
            ("api_key", API_KEY.into()),
            // The tests' clients publish; the default namespace forbids it.
            ("channel_client_publish", "true".into()),
            ("ingest_partitions", "4".into()),
            ("writer_failover_timeout", "2s".into()),
            ("client_publish_timeout", "3s".into()),
            ("shutdown_drain", "500ms".into()),
            ("sync_timeout", "2s".into()),
            ("log", "info,lsm_tree=warn,fjall=warn".into()),
        ] {
            s.options.insert(k.to_string(), v);
        }
        s
    }

    /// `herald serve` (edge + writer + sync) with its store in `data_dir`.
    pub fn serve(name: &str, nats_url: &str, data_dir: &Path) -> Self {
        Self::new("serve", name, nats_url).set("data_dir", data_dir.display())
    }

    /// `herald edge`: client WebSockets and the server API, no store.
    pub fn edge(name: &str, nats_url: &str) -> Self {
        Self::new("edge", name, nats_url)
    }

    /// Sets option `key` (as in README's table) to `value`.
    pub fn set(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.options.insert(key.to_string(), value.to_string());
        self
    }

    /// The same process on another free port (e.g. a standby beside the
    /// active one).
    pub fn on_new_port(mut self, name: &str) -> Self {
        self.port = free_port();
        self.name = name.to_string();
        let listen = format!("127.0.0.1:{}", self.port);
        self.set("listen", listen)
    }

    /// Runs in the network namespace `netns` (tests/common/netns.rs),
    /// listening on `host`, its address there that the test reaches.
    pub fn in_netns(mut self, netns: &str, host: Ipv4Addr) -> Self {
        self.netns = Some(netns.to_string());
        self.host = IpAddr::V4(host);
        let listen = format!("{host}:{}", self.port);
        self.set("listen", listen)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

/// The server API of one process, cheap to clone into publisher tasks.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("http client"),
        }
    }

    /// Calls `method`. Err when the request itself fails (the process is
    /// down or restarting); the JSON body otherwise, `{"error": …}` included.
    pub async fn call(&self, method: &str, body: &Value) -> Result<Value, String> {
        let resp = self
            .http
            .post(format!("{}/api/{method}", self.base))
            .header("X-API-Key", API_KEY)
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        resp.json().await.map_err(|e| e.to_string())
    }

    /// Calls `method` until it answers `{"result": …}`, at most `limit`.
    pub async fn ok(&self, method: &str, body: &Value, limit: Duration) -> Value {
        eventually(&format!("{method} succeeds"), limit, || async {
            match self.call(method, body).await {
                Ok(v) if v.get("result").is_some() => Some(v["result"].clone()),
                _ => None,
            }
        })
        .await
    }
}

/// A running (or exited) `herald` child process.
pub struct HeraldProcess {
    pub spec: Spec,
    pub pid: u32,
    child: Child,
    status: Option<ExitStatus>,
    log: tempfile::NamedTempFile,
    http: reqwest::Client,
}

impl HeraldProcess {
    /// Spawns the process and waits until it answers `/health`.
    pub async fn start(spec: Spec) -> Self {
        let mut p = Self::spawn(spec);
        p.wait_healthy(STARTUP).await;
        p
    }

    /// Spawns the process without waiting for it (e.g. a standby that
    /// listens only once it holds the store).
    pub fn spawn(spec: Spec) -> Self {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let stderr = log.reopen().expect("log file handle");
        let herald = env!("CARGO_BIN_EXE_herald");
        let mut command = match &spec.netns {
            // `ip netns exec` execs herald: the pid stays the same.
            Some(netns) => {
                let mut c = Command::new(super::netns::ip_bin());
                c.args(["netns", "exec", netns, herald]);
                c
            }
            None => Command::new(herald),
        };
        command.arg(spec.role);
        // Only the spec configures the process, not the test's environment.
        for (name, _) in std::env::vars() {
            if name.starts_with("HERALD_") {
                command.env_remove(name);
            }
        }
        command.env("NO_COLOR", "1");
        for (k, v) in &spec.options {
            command.env(format!("HERALD_{}", k.to_ascii_uppercase()), v);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the herald binary");
        let pid = child.id().expect("a just-spawned child has a pid");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("http client");
        Self {
            spec,
            pid,
            child,
            status: None,
            log,
            http,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.spec.addr()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// True when `/health` answers 200 now.
    pub async fn healthy(&self) -> bool {
        matches!(
            self.http
                .get(self.url("/health"))
                .timeout(Duration::from_secs(2))
                .send()
                .await,
            Ok(r) if r.status().is_success()
        )
    }

    /// Waits until `/health` answers; panics (with the log) if the process
    /// exits first or `limit` passes.
    pub async fn wait_healthy(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.try_status() {
                panic!(
                    "{} ({}) exited before answering /health: {status}\n{}",
                    self.spec.name,
                    self.spec.role,
                    self.log()
                );
            }
            if self.healthy().await {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{} did not answer /health within {limit:?}\n{}",
                    self.spec.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The exit status if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// SIGKILL, then reap it.
    pub async fn kill9(&mut self) -> ExitStatus {
        if self.try_status().is_none() {
            signal(self.pid, "KILL");
        }
        self.wait(STOP).await
    }

    /// SIGTERM (graceful stop), then wait for the exit.
    pub async fn sigterm(&mut self) -> ExitStatus {
        self.send_sigterm();
        self.wait(STOP).await
    }

    /// SIGTERM without waiting.
    pub fn send_sigterm(&mut self) {
        if self.try_status().is_none() {
            signal(self.pid, "TERM");
        }
    }

    /// Waits for the exit; panics with the log after `limit`.
    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(s)) => {
                self.status = Some(s);
                s
            }
            Ok(Err(e)) => panic!("waiting for {}: {e}", self.spec.name),
            Err(_) => panic!(
                "{} did not exit within {limit:?}\n{}",
                self.spec.name,
                self.log()
            ),
        }
    }

    /// A memory figure of the process in KiB from /proc/<pid>/status:
    /// `VmRSS` (resident now) or `VmHWM` (resident peak).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/<pid>/status"))
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of one series of `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels).unwrap_or(0.0)
    }

    /// The server API of this process.
    pub fn api(&self) -> Api {
        Api::new(self.addr())
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {} (herald {}, pid {}, port {}) stderr -----\n{}----- end of {} -----",
                self.spec.name,
                self.spec.role,
                self.pid,
                self.spec.port,
                self.log(),
                self.spec.name
            );
        }
    }
}

/// The value of the series `name{labels}` in Prometheus text; labels not
/// given may have any value (their series are summed).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let all = labels.iter().all(|(k, v)| {
            series_labels
                .split(',')
                .any(|l| l == format!("{k}=\"{v}\""))
        });
        if let (true, Ok(v)) = (all, value.parse::<f64>()) {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}
