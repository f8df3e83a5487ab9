//! Centrifugo v6 as a child process, configured like a given Herald: the
//! reference the conformance runner (tests/conformance.rs) compares Herald
//! with.
//!
//! [`config_for`] translates a Herald [`Config`] into Centrifugo's JSON
//! config: the same token secret and API key, the same client limits, and
//! each namespace with the equivalent options (history large and long
//! enough to hold every test's publications, `force_recovery` like Herald's
//! recoverable history, publish/history/presence for clients as Herald
//! allows them, anonymous users where the namespace allows them,
//! user-limited channels, private namespaces needing a subscription token,
//! the allowed delta types;
//! Herald's `proxies` as Centrifugo's named `proxies`, the connect and
//! refresh proxies inline under `client.proxy`, each namespace's
//! `*_proxy_enabled`/`_name`, and the RPC proxy for methods without
//! namespace). The binary is `$HERALD_TEST_CENTRIFUGO`, else
//! `.tools/centrifugo/centrifugo` (scripts/install-tools.sh builds it).
//!
//! Knows nothing of what a test checks: how to configure, start and stop it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use herald::config::{Config, NamespaceOptions, NamespaceProxies, ProxyConfig};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::eventually;
use super::process::free_port;

/// History kept per channel where Herald's is unbounded: more than any
/// test publishes into one channel.
const HISTORY_SIZE: u64 = 10_000;
/// History TTL when the Herald namespace keeps history forever.
const HISTORY_TTL_FOREVER: &str = "720h";

/// The binary the tests run: `$HERALD_TEST_CENTRIFUGO` or `.tools/`'s.
pub fn centrifugo_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HERALD_TEST_CENTRIFUGO") {
        return PathBuf::from(p);
    }
    super::tool("centrifugo/centrifugo")
}

fn duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// One namespace's options in Centrifugo's terms: Herald's `presence`,
/// `join_leave` and `force_push_join_leave` are Centrifugo's; `presence`
/// turns all three on whatever Herald's options say.
fn namespace_options(o: &NamespaceOptions, presence: bool) -> Value {
    let mut v = json!({
        "allow_user_limited_channels": true,
        "allow_subscribe_for_client": !o.private,
        "allow_history_for_subscriber": true,
        "allow_history_for_client": !o.private,
        "allow_presence_for_subscriber": true,
        "allow_presence_for_client": !o.private,
        "allow_publish_for_subscriber": o.client_publish,
        "allow_publish_for_client": o.client_publish && !o.private,
        "allow_subscribe_for_anonymous": o.anonymous && !o.private,
        "allow_history_for_anonymous": o.anonymous && !o.private,
        "allow_presence_for_anonymous": o.anonymous && !o.private,
        "allow_publish_for_anonymous": o.anonymous && o.client_publish && !o.private,
    });
    if o.history {
        let ttl = o
            .history_retention
            .map(duration)
            .unwrap_or_else(|| HISTORY_TTL_FOREVER.into());
        v["history_size"] = json!(o.history_size.unwrap_or(HISTORY_SIZE));
        v["history_ttl"] = json!(ttl);
        v["force_recovery"] = json!(true);
        v["force_positioning"] = json!(false);
    }
    v["presence"] = json!(presence || o.presence);
    v["join_leave"] = json!(presence || o.join_leave);
    v["force_push_join_leave"] = json!(presence || o.force_push_join_leave);
    if !o.allowed_delta_types.is_empty() {
        v["allowed_delta_types"] = json!(o.allowed_delta_types);
        // Herald makes every publication of such a namespace a delta
        // candidate; Centrifugo only those published with `delta` (API) or
        // in a namespace with `delta_publish`.
        v["delta_publish"] = json!(true);
    }
    v
}

/// One proxy in Centrifugo's terms (the fields of its `Proxy` type).
fn proxy(p: &ProxyConfig) -> Value {
    json!({
        "endpoint": p.endpoint,
        "timeout": duration(p.timeout),
        "http_headers": p.http_headers,
        "include_connection_meta": p.include_connection_meta,
        "http": { "static_headers": p.static_http_headers },
    })
}

/// A namespace's `*_proxy_enabled` and `*_proxy_name`.
fn namespace_proxies(v: &mut Value, p: &NamespaceProxies) {
    for (kind, name) in [
        ("subscribe", &p.subscribe),
        ("publish", &p.publish),
        ("sub_refresh", &p.sub_refresh),
    ] {
        if let Some(name) = name {
            v[format!("{kind}_proxy_enabled")] = json!(true);
            v[format!("{kind}_proxy_name")] = json!(name);
        }
    }
}

/// Centrifugo's config equivalent to `herald`, listening on `port`; the
/// namespaces in `presence` also get presence and join/leave.
pub fn config_for(herald: &Config, port: u16, presence: &[&str]) -> Value {
    let c = &herald.client;
    let namespaces: Vec<Value> = herald
        .channels
        .namespaces
        .iter()
        .map(|(name, o)| {
            let mut v = namespace_options(o, presence.contains(&name.as_str()));
            v["name"] = json!(name);
            namespace_proxies(&mut v, herald.proxies.namespace(Some(name)));
            v
        })
        .collect();
    let proxies = &herald.proxies;
    let named = |n: &Option<String>| {
        n.as_ref()
            .and_then(|n| proxies.proxies.iter().find(|p| p.name == *n))
    };
    let inline = |n: &Option<String>| match named(n) {
        Some(p) => {
            let mut v = proxy(p);
            v["enabled"] = json!(true);
            v
        }
        None => json!({ "enabled": false }),
    };
    let mut without_namespace = namespace_options(&herald.channels.default, presence.contains(&""));
    namespace_proxies(&mut without_namespace, &proxies.default_namespace);
    let named_proxies: Vec<Value> = proxies
        .proxies
        .iter()
        .map(|p| {
            let mut v = proxy(p);
            v["name"] = json!(p.name);
            v
        })
        .collect();
    // Centrifugo checks subscription expiry (and so calls sub_refresh
    // proxies) only on its presence update interval (27 s by default).
    let sub_refresh = proxies.default_namespace.sub_refresh.is_some()
        || proxies.namespaces.values().any(|p| p.sub_refresh.is_some());
    let presence_update = if sub_refresh { "1s" } else { "27s" };
    json!({
        "proxies": named_proxies,
        "rpc": {
            "without_namespace": match &proxies.rpc {
                Some(n) => json!({ "proxy_enabled": true, "proxy_name": n }),
                None => json!({}),
            },
        },
        "http_server": { "address": "127.0.0.1", "port": port },
        "log": { "level": "info" },
        "health": { "enabled": true },
        "client": {
            "token": {
                "hmac_secret_key": herald.token_hmac_secret.as_ref().map(|s| s.expose()).unwrap_or_default(),
            },
            "allowed_origins": ["*"],
            "ping_interval": duration(c.ping_interval),
            "pong_timeout": duration(c.pong_timeout),
            "stale_close_delay": duration(c.stale_timeout),
            "expired_close_delay": duration(c.expired_close_delay),
            "expired_sub_close_delay": duration(c.expired_close_delay),
            "channel_limit": c.channel_limit,
            "queue_max_size": c.queue_max_bytes,
            "history_max_publication_limit": c.history_page_limit,
            "recovery_max_publication_limit": c.recovery_limit,
            "subscribe_to_user_personal_channel": { "enabled": c.subscribe_to_personal },
            "presence_update_interval": presence_update,
            "proxy": {
                "connect": inline(&proxies.connect),
                "refresh": inline(&proxies.refresh),
            },
        },
        "websocket": { "message_size_limit": c.message_size_limit },
        // Herald always serves the emulation and unidirectional transports.
        "http_stream": { "enabled": true },
        "sse": { "enabled": true },
        "uni_http_stream": { "enabled": true },
        "uni_sse": { "enabled": true },
        "uni_websocket": { "enabled": true },
        "http_api": {
            "key": herald.api_key.as_ref().map(|s| s.expose()).unwrap_or_default(),
        },
        "channel": {
            "without_namespace": without_namespace,
            "namespaces": namespaces,
        },
    })
}

/// A running Centrifugo; killed on drop.
pub struct TestCentrifugo {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl TestCentrifugo {
    /// Writes `config_for(herald, …)` and starts Centrifugo on a free port;
    /// returns once `/health` answers.
    pub async fn start(herald: &Config, presence: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&config_for(herald, port, presence)).expect("json"),
        )
        .expect("write centrifugo config");
        let log = std::fs::File::create(dir.path().join("centrifugo.log")).expect("log file");
        let bin = centrifugo_bin();
        let mut command = Command::new(&bin);
        // Only the generated file configures it, not the test's environment.
        for (name, _) in std::env::vars() {
            if name.starts_with("CENTRIFUGO_") {
                command.env_remove(name);
            }
        }
        let child = command
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "spawn {} ({e}): run scripts/install-tools.sh",
                    bin.display()
                )
            });
        let mut c = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            dir,
        };
        let http = reqwest::Client::new();
        let url = format!("http://{}/health", c.addr);
        let child = &mut c.child;
        let log_path = c.dir.path().join("centrifugo.log");
        eventually(
            "centrifugo answers /health",
            Duration::from_secs(20),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "centrifugo exited: {status}\n{}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                let req = http.get(&url).send();
                async move {
                    req.await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| ())
                }
            },
        )
        .await;
        c
    }

    /// What Centrifugo logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("centrifugo.log")).unwrap_or_default()
    }
}

impl Drop for TestCentrifugo {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- centrifugo (port {}) log -----\n{}----- end of centrifugo -----",
                self.addr.port(),
                self.log()
            );
        }
    }
}
