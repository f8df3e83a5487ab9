//! Serves a router on a listener (plain TCP or [`crate::tls::TlsListener`])
//! with the bounds `axum::serve` lacks: a header-read timeout, which hyper
//! also applies while a keep-alive connection waits idle for its next request
//! head (so it is the idle timeout too), and a cap on the connections open at
//! once on the listener.
//!
//! Slow-loris: without these, every half-sent request head holds a
//! descriptor and a header buffer for as long as the client likes. With
//! them, a connection that has not sent a complete head within
//! `http_header_read_timeout` is closed, and past `http_max_connections` open
//! connections a new one is answered `503` and closed at once (counted in
//! `herald_http_connections_refused_total`) while the open ones keep working.
//!
//! The cap counts a connection from accept to close, WebSocket sessions
//! included: the permit travels with the socket into the upgrade. With TLS a
//! connection counts once its handshake is done; handshakes in progress are
//! bounded by [`crate::tls`] (`MAX_HANDSHAKES`, `HANDSHAKE_TIMEOUT`).
//!
//! Knows nothing of routes or roles.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The answer to a connection over the cap; written without reading the
/// request, then the connection is closed.
const REFUSAL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n";
/// How long writing [`REFUSAL`] may take before the socket is dropped.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a graceful stop waits for requests in flight.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// The bounds of one listener (`http_*` options).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Longest time to send a complete request head; also the longest a
    /// keep-alive connection may wait idle for its next request.
    pub header_read_timeout: Duration,
    /// Most connections open at once on the listener.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` fires, then stops
/// accepting and waits a bounded time for requests in flight (upgraded
/// WebSockets are closed by the edge itself). Handlers see
/// `ConnectInfo<SocketAddr>`.
pub fn spawn<L>(
    mut listener: L,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    L: Listener<Addr = SocketAddr>,
    L::Io: Unpin,
{
    tokio::spawn(async move {
        // Held by each open connection's `Counted` socket; released when the
        // socket (or the WebSocket that took it over) drops.
        let permits = Arc::new(Semaphore::new(
            limits.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        // Each connection task holds a clone; `recv` returns `None` once the
        // last one ended (mini-redis' shutdown completion).
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        loop {
            let (io, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                metrics::counter!(crate::metrics::LIMIT_HITS_TOTAL, "limit" => "http_connections")
                    .increment(1);
                tokio::spawn(refuse(io));
                continue;
            };
            let io = Counted {
                io,
                _permit: permit,
            };
            let tower = TowerToHyperService::new(router.clone());
            let abort = ConnAbort(CancellationToken::new());
            let aborted = abort.clone();
            let service =
                hyper::service::service_fn(move |mut req: axum::http::Request<Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req.extensions_mut().insert(abort.clone());
                    hyper::service::Service::call(&tower, req)
                });
            let conn = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let (shutdown, done) = (shutdown.clone(), done_tx.clone());
            tokio::spawn(async move {
                let _done = done;
                let mut conn = std::pin::pin!(conn);
                let ended = tokio::select! {
                    r = conn.as_mut() => r,
                    // Dropping the connection closes its socket.
                    _ = aborted.0.cancelled() => Ok(()),
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "http connection ended");
                }
            });
        }
        drop((listener, done_tx));
        if tokio::time::timeout(SHUTDOWN_WAIT, done_rx.recv())
            .await
            .is_err()
        {
            tracing::debug!("http connections still open after the shutdown wait");
        }
    })
}

/// Ends the HTTP connection a request came on, whatever it is doing: a
/// streaming response whose client stopped reading is cut this way (hyper
/// has no write timeout). In every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnAbort(CancellationToken);

impl ConnAbort {
    pub fn abort(&self) {
        self.0.cancel();
    }
}

async fn refuse<I: AsyncWrite + Unpin>(mut io: I) {
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        io.write_all(REFUSAL).await?;
        io.shutdown().await
    })
    .await;
}

/// A socket holding one of the listener's connection permits.
struct Counted<I> {
    io: I,
    _permit: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
