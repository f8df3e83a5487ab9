//! A keep-alive HTTP/1.1 client connection for the server API and the sync
//! HTTP API (hyper's low-level client: one connection, one request at a
//! time, no pool), cheap enough to run hundreds beside the server under test.
//!
//! Knows HTTP, nothing of Herald's routes.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use herald_client::{ClientError, tcp_connect};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting: {0}")]
    Connect(#[from] ClientError),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request parts: {0}")]
    Request(#[from] hyper::http::Error),
}

pub struct HttpConn {
    addr: SocketAddr,
    source: Option<IpAddr>,
    sender: SendRequest<Full<Bytes>>,
}

impl HttpConn {
    pub async fn open(addr: SocketAddr, source: Option<IpAddr>) -> Result<Self, HttpError> {
        let sender = handshake(addr, source).await?;
        Ok(Self {
            addr,
            source,
            sender,
        })
    }

    /// Sends one request; reconnects once if the server had closed the idle
    /// connection. Returns the status and the whole body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<(u16, Bytes), HttpError> {
        if self.sender.ready().await.is_err() {
            self.sender = handshake(self.addr, self.source).await?;
        }
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

async fn handshake(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> Result<SendRequest<Full<Bytes>>, HttpError> {
    let stream = tcp_connect(addr, source)
        .await
        .map_err(|source| ClientError::Connect { addr, source })?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the sender drops or the server closes.
        let _ = conn.await;
    });
    Ok(sender)
}
