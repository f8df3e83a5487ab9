//! Herald started in process (`roles::start`) against a test nats-server,
//! on 127.0.0.1:0 with its own data dir, and stopped or restarted on demand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herald::config::{Config, Secret};
use herald::roles::{self, Role, Running};

use super::TestNats;

/// At least 32 bytes, as Herald requires of HMAC secrets.
pub const SECRET: &str = "test-secret-0123456789-0123456789";
pub const API_KEY: &str = "test-api-key";

pub struct TestHerald {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub config: Config,
}

/// The configuration tests start from: everything on, small timeouts.
pub fn test_config(nats: &TestNats, data_dir: PathBuf) -> Config {
    let mut c = Config::defaults();
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.data_dir = data_dir;
    c.nats.url = nats.url().to_string();
    c.nats.autostart = false;
    c.token_hmac_secret = Some(Secret::new(SECRET));
    c.api_key = Some(Secret::new(API_KEY));
    // The tests' clients publish; the default namespace forbids it.
    c.channels.default.client_publish = true;
    c.ingest.partitions = 4;
    c.sync.timeout = Duration::from_secs(5);
    c.shutdown_drain = Duration::from_millis(100);
    c
}

impl TestHerald {
    pub async fn start(config: Config) -> Self {
        let running = roles::start(Role::Serve, config.clone())
            .await
            .expect("herald starts");
        Self {
            addr: running.addr,
            data_dir: config.data_dir.clone(),
            running: Some(running),
            config,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// Stops and starts again with the same configuration and data dir (a
    /// new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        let running = roles::start(Role::Serve, self.config.clone())
            .await
            .expect("herald restarts");
        self.addr = running.addr;
        self.running = Some(running);
    }

    pub fn token(&self, user: &str) -> String {
        herald::auth::mint(SECRET, user, None, Duration::from_secs(3600))
    }

    pub fn sub_token(&self, user: &str, channel: &str) -> String {
        herald::auth::mint(SECRET, user, Some(channel), Duration::from_secs(3600))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Calls the server API; returns the JSON body.
    pub async fn api(&self, method: &str, body: serde_json::Value) -> serde_json::Value {
        let resp = reqwest::Client::new()
            .post(self.url(&format!("/api/{method}")))
            .header("X-API-Key", API_KEY)
            .json(&body)
            .send()
            .await
            .expect("api request");
        resp.json().await.expect("api json")
    }
}
