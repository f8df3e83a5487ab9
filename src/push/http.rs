//! The HTTPS clients the push senders share: one pooled hyper-util client
//! that speaks HTTP/1.1 or HTTP/2 by ALPN (FCM, Web Push), and one that
//! speaks only HTTP/2 (APNs; h2c over plain `http://`, for a local test
//! server). TLS is rustls with the system's roots plus `push_ca_file`.
//!
//! Every call is bounded by `push_timeout` and answers status, headers and
//! a body of at most [`MAX_RESPONSE_BYTES`]. Knows no provider.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The most of a provider's answer read (error bodies are small JSON).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Idle connections kept per provider host.
const MAX_IDLE_PER_HOST: usize = 16;
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A provider's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a request got no answer: worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("push provider request timed out")]
    Timeout,
    #[error("push provider request failed: {0}")]
    Request(String),
}

#[derive(Debug, thiserror::Error)]
#[error("push TLS setup: {0}")]
pub struct SetupError(pub String);

type Inner = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The two clients and the timeout.
#[derive(Clone)]
pub struct Http {
    any: Inner,
    h2: Inner,
    timeout: Duration,
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, SetupError> {
    crate::http_client::tls_config(ca_file).map_err(SetupError)
}

impl Http {
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<Self, SetupError> {
        let tls = tls_config(ca_file)?;
        let connector = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .build()
        };
        let any = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(connector());
        let h2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .http2_only(true)
            .build(connector());
        Ok(Self { any, h2, timeout })
    }

    /// Sends `request` (HTTP/2 only when `h2`), bounded by the timeout.
    pub async fn send(&self, request: Request<Full<Bytes>>, h2: bool) -> Result<Answer, HttpError> {
        let client = if h2 { &self.h2 } else { &self.any };
        let call = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| HttpError::Request(error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| HttpError::Request(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| HttpError::Timeout)?
    }
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `Retry-After` in seconds, if the answer has one.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(hyper::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
