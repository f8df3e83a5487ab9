//! Shared test harness: a real nats-server per test (free port, temp dir),
//! Centrifugo as the conformance reference (`centrifugo`),
//! Herald started in process, and a bounded `eventually` instead of sleeps.
//!
//! nats-server is found at `$HERALD_TEST_NATS_SERVER`, else the project's
//! `.tools/py/bin/nats-server` (installed by scripts/install-tools.sh), else on
//! PATH.

#![allow(dead_code)]

pub mod centrifugo;
pub mod cluster;
pub mod follower;
pub mod ingest;
pub mod load;
pub mod netns;
pub mod node;
pub mod process;
pub mod proxy;
pub mod scylla;
pub mod ws;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use herald::bus::server::NatsServer;

/// The repository's root (where Cargo.toml is).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool `scripts/install-tools.sh` installs under `.tools/`, e.g.
/// `prometheus/usr/bin/promtool`; a missing one fails the test saying so.
pub fn tool(relative: &str) -> PathBuf {
    let path = root().join(".tools").join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-tools.sh",
        path.display()
    );
    path
}

pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HERALD_TEST_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/py/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// A nats-server with JetStream in its own temp dir; killed on drop.
pub struct TestNats {
    pub server: NatsServer,
    pub dir: tempfile::TempDir,
}

impl TestNats {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = NatsServer::start(&nats_server_bin(), dir.path())
            .await
            .expect("start nats-server (run scripts/install-tools.sh)");
        Self { server, dir }
    }

    pub fn url(&self) -> &str {
        &self.server.url
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test nats")
    }

    /// The port clients connect to; kept across [`TestNats::restart`].
    pub fn port(&self) -> u16 {
        self.url()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("nats url ends with a port")
    }

    /// Kills the server with SIGKILL (no goodbye to its clients) and waits
    /// until its port refuses connections. Its store stays in `dir`.
    pub async fn kill(&mut self) {
        let pid = self.server.pid().expect("nats-server is running");
        process::signal(pid, "KILL");
        port_refuses(self.port()).await;
    }

    /// Starts the server again on the same port and store (after
    /// [`TestNats::kill`]); its clients reconnect by themselves.
    pub async fn start_again(&mut self) {
        self.server = NatsServer::start_on_port(&nats_server_bin(), self.dir.path(), self.port())
            .await
            .expect("restart nats-server on its port");
    }

    /// Kill and start again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.start_again().await;
    }
}

/// Waits (at most 10 s) until 127.0.0.1:`port` refuses connections, e.g.
/// after its server was killed.
pub async fn port_refuses(port: u16) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    eventually(
        &format!("port {port} refuses connections"),
        Duration::from_secs(10),
        || async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
}

/// Polls `check` until it returns `Some`, at most `limit`; panics with `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("not within {limit:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
