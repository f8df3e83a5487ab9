//! Proxies to the application backend, compatible with Centrifugo v6's HTTP
//! proxy: one pooled keep-alive HTTP/1.1 client for every configured proxy
//! (`[[proxies]]`), one POST per event with Centrifugo's JSON body
//! ([`wire`]), the whole call bounded by the proxy's `timeout`, and the
//! answer sorted into a result, a backend error or a backend disconnect.
//! Metrics per proxy, kind and result (`herald_proxy_*`).
//!
//! Owns the HTTP side and the per-proxy configuration. Knows nothing of
//! sessions: what a result means for a connection (authorize, refuse,
//! replace data, refresh) is the session's (`edge::session::proxied`).

pub mod wire;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{ProxiesConfig, ProxyConfig};
use crate::metrics as m;

/// Largest backend answer read; a longer one is a failed call (error 100).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Idle keep-alive connections kept per backend host, as Centrifugo's
/// `MaxIdleConnsPerHost`; more concurrent calls open more, which close
/// when done.
const MAX_IDLE_PER_HOST: usize = 255;
/// Idle pooled connections are closed after this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Headers forwarded from one upgrade request, at most (the union of every
/// proxy's `http_headers`, each possibly repeated).
const MAX_FORWARDED_HEADERS: usize = 64;

/// What a proxy is called for (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Refresh,
    Subscribe,
    Publish,
    SubRefresh,
    Rpc,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Connect,
        Kind::Refresh,
        Kind::Subscribe,
        Kind::Publish,
        Kind::SubRefresh,
        Kind::Rpc,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Refresh => "refresh",
            Kind::Subscribe => "subscribe",
            Kind::Publish => "publish",
            Kind::SubRefresh => "sub_refresh",
            Kind::Rpc => "rpc",
        }
    }
}

/// Why a call gave no answer to act on. Every one of them is error 100
/// (Centrifugo's internal error) to the client, or a short extension for a
/// refresh.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Not a configured proxy (`Config::load` refuses such names, so only a
    /// caller's mistake).
    #[error("no proxy named {0:?}")]
    Unknown(String),
    #[error("no answer within the proxy timeout")]
    Timeout,
    #[error("backend unreachable: {0}")]
    Unavailable(#[source] hyper_util::client::legacy::Error),
    #[error("backend answered HTTP {0}")]
    Status(StatusCode),
    #[error("backend answer unreadable: {0}")]
    Body(String),
    #[error("backend answer is not a proxy response: {0}")]
    Invalid(#[source] serde_json::Error),
}

impl CallError {
    fn label(&self) -> &'static str {
        match self {
            CallError::Timeout => "timeout",
            CallError::Unknown(_) | CallError::Unavailable(_) => "unavailable",
            CallError::Status(_) => "status",
            CallError::Body(_) | CallError::Invalid(_) => "invalid",
        }
    }
}

/// A backend's answer.
#[derive(Debug)]
pub enum Answer<R> {
    /// `result` (absent: `None`).
    Result(Option<R>),
    Error(wire::BackendError),
    Disconnect(wire::BackendDisconnect),
}

/// The `result` label of `herald_proxy_requests_total`.
pub const RESULTS: &[&str] = &[
    "ok",
    "error",
    "disconnect",
    "timeout",
    "unavailable",
    "status",
    "invalid",
];

struct Endpoint {
    config: ProxyConfig,
    uri: Uri,
    forward: Vec<HeaderName>,
    statics: HeaderMap,
}

/// Every configured proxy and the shared client. Built once per edge.
pub struct Proxies {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    by_name: HashMap<String, Endpoint>,
    config: ProxiesConfig,
    /// Every header some proxy forwards.
    forwarded: Vec<HeaderName>,
}

impl Proxies {
    /// Proxies of a configuration `Config::load` accepted (names, URLs and
    /// headers valid); registers their metric series at 0.
    pub fn new(config: &ProxiesConfig) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(crate::http_client::connector(config.ca_file.as_deref()));
        let mut by_name = HashMap::new();
        let mut forwarded: Vec<HeaderName> = Vec::new();
        for p in &config.proxies {
            let Ok(uri) = p.endpoint.parse::<Uri>() else {
                tracing::warn!(proxy = %p.name, "proxy endpoint not a URL; proxy left out");
                continue;
            };
            let forward: Vec<HeaderName> = p
                .http_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect();
            for h in &forward {
                if !forwarded.contains(h) {
                    forwarded.push(h.clone());
                }
            }
            let mut statics = HeaderMap::new();
            for (k, v) in &p.static_http_headers {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    statics.insert(k, v);
                }
            }
            for kind in Kind::ALL {
                let _ = metrics::histogram!(m::PROXY_SECONDS, "proxy" => p.name.clone(), "kind" => kind.label());
                for result in RESULTS {
                    metrics::counter!(m::PROXY_REQUESTS_TOTAL, "proxy" => p.name.clone(), "kind" => kind.label(), "result" => *result)
                        .increment(0);
                }
            }
            by_name.insert(
                p.name.clone(),
                Endpoint {
                    config: p.clone(),
                    uri,
                    forward,
                    statics,
                },
            );
        }
        Self {
            client,
            by_name,
            config: config.clone(),
            forwarded,
        }
    }

    /// Where each proxy is used.
    pub fn config(&self) -> &ProxiesConfig {
        &self.config
    }

    /// The upgrade request's headers some proxy forwards (bounded); kept by
    /// the session for its calls.
    pub fn forwarded_headers(&self, headers: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        for name in &self.forwarded {
            for v in headers.get_all(name) {
                if out.len() >= MAX_FORWARDED_HEADERS {
                    return out;
                }
                out.append(name.clone(), v.clone());
            }
        }
        out
    }

    /// Whether `proxy` sends the connection's `meta`.
    pub fn includes_meta(&self, proxy: &str) -> bool {
        self.by_name
            .get(proxy)
            .is_some_and(|e| e.config.include_connection_meta)
    }

    /// One call: POST `body` to `proxy`'s endpoint with its static headers and
    /// the forwarded ones it names, all within its timeout.
    pub async fn call<R: DeserializeOwned>(
        &self,
        proxy: &str,
        kind: Kind,
        body: &impl Serialize,
        forwarded: &HeaderMap,
    ) -> Result<Answer<R>, CallError> {
        let Some(endpoint) = self.by_name.get(proxy) else {
            tracing::warn!(proxy, kind = kind.label(), "no such proxy");
            return Err(CallError::Unknown(proxy.to_string()));
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            endpoint.config.timeout,
            self.send::<R>(endpoint, body, forwarded),
        )
        .await
        .unwrap_or(Err(CallError::Timeout));
        let result = match &outcome {
            Ok(Answer::Result(_)) => "ok",
            Ok(Answer::Error(_)) => "error",
            Ok(Answer::Disconnect(_)) => "disconnect",
            Err(e) => e.label(),
        };
        metrics::histogram!(m::PROXY_SECONDS, "proxy" => endpoint.config.name.clone(), "kind" => kind.label())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(m::PROXY_REQUESTS_TOTAL, "proxy" => endpoint.config.name.clone(), "kind" => kind.label(), "result" => result)
            .increment(1);
        if let Err(e) = &outcome {
            tracing::warn!(proxy = %endpoint.config.name, kind = kind.label(), error = %e, "proxy call failed");
        }
        outcome
    }

    async fn send<R: DeserializeOwned>(
        &self,
        endpoint: &Endpoint,
        body: &impl Serialize,
        forwarded: &HeaderMap,
    ) -> Result<Answer<R>, CallError> {
        let json = serde_json::to_vec(body).map_err(CallError::Invalid)?;
        let mut request = Request::post(endpoint.uri.clone())
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| CallError::Body(e.to_string()))?;
        let headers = request.headers_mut();
        // Static first, forwarded ones override (Centrifugo's order).
        for (k, v) in &endpoint.statics {
            headers.insert(k, v.clone());
        }
        for name in &endpoint.forward {
            let mut values = forwarded.get_all(name).iter().peekable();
            if values.peek().is_some() {
                headers.remove(name);
                for v in values {
                    headers.append(name.clone(), v.clone());
                }
            }
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let response = self
            .client
            .request(request)
            .await
            .map_err(CallError::Unavailable)?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(CallError::Status(status));
        }
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| CallError::Body(e.to_string()))?
            .to_bytes();
        let envelope: wire::Envelope<R> =
            serde_json::from_slice(&bytes).map_err(CallError::Invalid)?;
        Ok(if let Some(d) = envelope.disconnect {
            Answer::Disconnect(d)
        } else if let Some(e) = envelope.error {
            Answer::Error(e)
        } else {
            Answer::Result(envelope.result)
        })
    }
}
