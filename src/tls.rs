//! TLS on the HTTP listeners (`tls_cert` / `tls_key`, rustls): `wss://` for
//! clients and `https://` for the APIs. Owns the certificate in use, its
//! reload, and the listener that turns accepted TCP connections into TLS
//! streams for axum.
//!
//! Rotation without a restart: every `tls_reload_interval` the two files'
//! modification times are compared with the last load; on a change both are
//! read again, and a pair that parses and matches replaces the certificate
//! for new handshakes (connections already open keep theirs). A bad pair
//! (half-written, mismatched) is logged and the previous one stays.
//!
//! Handshakes run in their own tasks, each bounded by [`HANDSHAKE_TIMEOUT`]
//! and at most [`MAX_HANDSHAKES`] at once, so a slow or silent client holds
//! neither the accept loop nor other handshakes.
//!
//! Knows nothing of routes or roles: it secures a listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most TLS handshakes in progress at once per listener; more connections
/// wait in the kernel's accept queue.
pub const MAX_HANDSHAKES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

/// The certificate files and how often they are checked for changes.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub reload_interval: Duration,
}

/// The certificate handed to new handshakes; replaced on reload.
#[derive(Debug)]
pub struct Certificate {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The modification times of the certificate and key files.
pub type Stamp = (Option<SystemTime>, Option<SystemTime>);

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads and checks a certificate chain and its private key.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let parse = |path: &Path, message: String| TlsError::Parse {
        path: path.display().to_string(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| parse(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(parse(cert, "no certificate in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| parse(key, format!("not a PEM private key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| parse(key, format!("unsupported private key: {e}")))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match()
        .map_err(|e| parse(key, format!("does not match the certificate: {e}")))?;
    Ok(pair)
}

impl Certificate {
    /// Loads the pair once; an error here stops the start.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let pair = load_pair(&files.cert, &files.key)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(pair)),
        }))
    }

    /// A rustls server configuration using this certificate (HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    fn stamp(&self) -> Stamp {
        (modified(&self.files.cert), modified(&self.files.key))
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads the pair again if either file changed since `last`; `Ok(true)`
    /// when replaced. On an error the previous pair stays and `last` is
    /// kept, so the next call tries again (a pair being written one file at
    /// a time settles).
    pub fn reload_if_changed(&self, last: &mut Stamp) -> Result<bool, TlsError> {
        let now = self.stamp();
        if now == *last {
            return Ok(false);
        }
        let pair = load_pair(&self.files.cert, &self.files.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        *last = now;
        Ok(true)
    }

    /// Reloads the pair when either file changes, until `shutdown` fires.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut last = self.stamp();
        let mut tick = tokio::time::interval(self.files.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.reload_if_changed(&mut last) {
                Ok(true) => {
                    tracing::info!(cert = %self.files.cert.display(), "tls certificate reloaded")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "tls certificate not reloaded; keeping the previous one")
                }
            }
        }
    }
}

/// The server configuration for `files`, with its reload task (stopped by
/// `shutdown`); `None` without TLS.
pub fn setup(
    files: Option<&TlsFiles>,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    let Some(files) = files else {
        return Ok(None);
    };
    let cert = Certificate::load(files.clone())?;
    let config = cert.server_config();
    tokio::spawn(cert.watch(shutdown.clone()));
    Ok(Some(config))
}

/// Serves `router` over TLS on `listener` until `shutdown` fires (then
/// gracefully, like the plain listeners), with `ConnectInfo<SocketAddr>` and
/// the listener bounds of [`crate::http_server`].
pub fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: crate::http_server::HttpLimits,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TlsListener::new(listener, config, shutdown.clone())?;
    Ok(crate::http_server::spawn(
        listener, router, limits, shutdown,
    ))
}

/// An axum listener yielding TLS streams: an accept task hands each TCP
/// connection to a handshake task; finished handshakes queue here.
pub struct TlsListener {
    /// Filled by the accept task, which stops when `shutdown` fires or this
    /// receiver drops.
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    r = listener.accept() => r,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task stopped (shutdown): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("k.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
        cert.der().to_vec()
    }

    fn set_mtime(path: &Path, secs: u64) {
        let f = std::fs::File::options().append(true).open(path).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn a_changed_pair_replaces_a_broken_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_pair(dir.path(), "a.test");
        let files = TlsFiles {
            cert: dir.path().join("c.pem"),
            key: dir.path().join("k.pem"),
            reload_interval: Duration::from_secs(1),
        };
        let cert = Certificate::load(files.clone()).unwrap();
        let mut last = cert.stamp();
        assert!(!cert.reload_if_changed(&mut last).unwrap());

        std::fs::write(&files.cert, "not a certificate").unwrap();
        set_mtime(&files.cert, 1_000);
        assert!(cert.reload_if_changed(&mut last).is_err());
        assert_eq!(cert.current().cert[0].as_ref(), &first[..]);

        // A key that does not match the certificate: refused too.
        let second = write_pair(dir.path(), "b.test");
        let other_key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&files.key, other_key.serialize_pem()).unwrap();
        set_mtime(&files.cert, 2_000);
        assert!(cert.reload_if_changed(&mut last).is_err());
        assert_eq!(cert.current().cert[0].as_ref(), &first[..]);

        let second_again = write_pair(dir.path(), "b.test");
        assert_ne!(second, second_again);
        set_mtime(&files.cert, 3_000);
        assert!(cert.reload_if_changed(&mut last).unwrap());
        assert_eq!(cert.current().cert[0].as_ref(), &second_again[..]);
    }
}
