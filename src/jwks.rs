//! The keys of a JWKS endpoint (`token_jwks_url`), by `kid`, for
//! [`crate::auth::Verifier`]. Owns the cached key set and the one task that
//! refreshes it: at start, every `token_jwks_refresh_interval`, and when a
//! token names a `kid` the set lacks — at most once per
//! `token_jwks_min_fetch_interval`, so a flood of made-up `kid`s costs the
//! JWKS server one request per interval, however many tokens arrive. The
//! token naming the unknown `kid` is refused; the client's retry after the
//! refresh succeeds. A failed fetch (endpoint down, bad JSON) keeps the last
//! good set.
//!
//! Only asymmetric keys are taken (RSA, EC P-256/P-384, Ed25519): a
//! symmetric (`oct`) key in the set is ignored, since a published HMAC
//! secret would let anyone sign. Bounds: a response body of at most
//! [`MAX_JWKS_BYTES`], at most [`MAX_JWKS_KEYS`] keys kept, each fetch bounded
//! by [`FETCH_TIMEOUT`].
//!
//! Knows nothing of claims or sessions: it maps a `kid` to a key.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::PublicKey;

/// Largest JWKS response body read.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most keys kept from one JWKS response; the rest are ignored.
pub const MAX_JWKS_KEYS: usize = 64;
/// Bound on one fetch (connect, TLS, request, body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how often to fetch.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    pub url: String,
    pub refresh_interval: Duration,
    pub min_fetch_interval: Duration,
}

/// The cached key set; cheap to clone (shared).
#[derive(Clone)]
pub struct Jwks {
    shared: Arc<Shared>,
}

struct Shared {
    keys: RwLock<Arc<HashMap<String, PublicKey>>>,
    /// Woken by [`Jwks::key`] on an unknown `kid`; waited on by the refresh
    /// task only (one stored permit, so a flood coalesces into one wake).
    unknown_kid: Notify,
    settings: JwksSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad JWKS URL: {0}")]
    Url(String),
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[source] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("body larger than {MAX_JWKS_BYTES} bytes or unreadable")]
    Body,
    #[error("not a JWK set: {0}")]
    Json(#[from] serde_json::Error),
    #[error("timed out after {FETCH_TIMEOUT:?}")]
    Timeout,
}

impl Jwks {
    pub fn new(settings: JwksSettings) -> Self {
        Self {
            shared: Arc::new(Shared {
                keys: RwLock::new(Arc::new(HashMap::new())),
                unknown_kid: Notify::new(),
                settings,
            }),
        }
    }

    /// The key named `kid`; on a miss, asks the refresh task for a fetch.
    pub fn key(&self, kid: &str) -> Option<PublicKey> {
        let keys = self
            .shared
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let found = keys.get(kid).cloned();
        if found.is_none() {
            self.shared.unknown_kid.notify_one();
        }
        found
    }

    fn replace(&self, keys: HashMap<String, PublicKey>) {
        *self.shared.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    /// Fetches once (start-up), then refreshes until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) {
        let settings = self.shared.settings.clone();
        let mut last_triggered: Option<Instant> = None;
        loop {
            match tokio::time::timeout(FETCH_TIMEOUT, fetch(&settings.url)).await {
                Ok(Ok(set)) => {
                    let keys = keys_of(&set);
                    tracing::info!(keys = keys.len(), "jwks fetched");
                    self.replace(keys);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "jwks fetch failed; keeping the last good key set")
                }
                Err(_) => tracing::warn!(
                    error = %FetchError::Timeout,
                    "jwks fetch failed; keeping the last good key set"
                ),
            }
            let next_refresh = Instant::now() + settings.refresh_interval;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next_refresh) => {}
                _ = self.shared.unknown_kid.notified() => {
                    // Rate limit: one triggered fetch per min_fetch_interval.
                    if let Some(at) = last_triggered {
                        let allowed = at + settings.min_fetch_interval;
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep_until(allowed.min(next_refresh)) => {}
                        }
                    }
                    last_triggered = Some(Instant::now());
                }
            }
        }
    }
}

/// The usable keys of a set, by `kid`: asymmetric, with a `kid`, at most
/// [`MAX_JWKS_KEYS`].
fn keys_of(set: &JwkSet) -> HashMap<String, PublicKey> {
    let mut out = HashMap::new();
    for jwk in &set.keys {
        if out.len() >= MAX_JWKS_KEYS {
            break;
        }
        let Some(kid) = &jwk.common.key_id else {
            continue;
        };
        let by_family: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => {
                vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]
            }
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                vec![Algorithm::EdDSA]
            }
            _ => continue,
        };
        let algorithms = match jwk.common.key_algorithm {
            None => by_family,
            Some(ka) => match algorithm_of(ka) {
                Some(a) if by_family.contains(&a) => vec![a],
                _ => continue,
            },
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        out.insert(kid.clone(), PublicKey { key, algorithms });
    }
    out
}

fn algorithm_of(ka: KeyAlgorithm) -> Option<Algorithm> {
    Some(match ka {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// One GET of the JWKS URL (http or https; https verified against the
/// system's root certificates).
async fn fetch(url: &str) -> Result<JwkSet, FetchError> {
    let uri: Uri = url.parse().map_err(|_| FetchError::Url(url.into()))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(FetchError::Url("expected http:// or https://".into())),
    };
    let host = uri
        .host()
        .ok_or_else(|| FetchError::Url("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(FetchError::Connect)?;
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| FetchError::Url(e.to_string()))?;
    let response = if tls {
        let stream = tls_connect(&host, tcp).await?;
        send(stream, request).await?
    } else {
        send(tcp, request).await?
    };
    serde_json::from_slice(&response).map_err(FetchError::from)
}

async fn send<S>(
    stream: S,
    request: hyper::Request<Empty<bytes::Bytes>>,
) -> Result<bytes::Bytes, FetchError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "jwks connection ended");
        }
    });
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        return Err(FetchError::Status(response.status().as_u16()));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|_| FetchError::Body)?;
    Ok(body.to_bytes())
}

async fn tls_connect(
    host: &str,
    tcp: tokio::net::TcpStream,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, FetchError> {
    let tls_err = |m: String| FetchError::Tls(std::io::Error::other(m));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls_err(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| tls_err(e.to_string()))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(FetchError::Tls)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::Jwk;

    use super::*;

    #[test]
    fn symmetric_and_kidless_keys_are_ignored() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "lies", "alg": "RS256", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]}))
        .unwrap();
        let keys = keys_of(&set);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys["ed"].algorithms, vec![Algorithm::EdDSA]);
    }

    #[test]
    fn at_most_max_keys_are_kept() {
        let jwk: Jwk = serde_json::from_value(serde_json::json!(
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ))
        .unwrap();
        let set = JwkSet {
            keys: (0..MAX_JWKS_KEYS + 10)
                .map(|i| {
                    let mut k = jwk.clone();
                    k.common.key_id = Some(format!("k{i}"));
                    k
                })
                .collect(),
        };
        assert_eq!(keys_of(&set).len(), MAX_JWKS_KEYS);
    }
}
