//! A TCP proxy inside the test process, to make one Herald process lose its
//! NATS connection while the others keep theirs: point that process at
//! [`Proxy::url`], then [`Proxy::cut`] (drop every connection, refuse new
//! ones) and [`Proxy::restore`].
//!
//! Knows nothing of NATS: it copies bytes both ways.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Both under one lock, so a connection accepted during a cut is either
/// refused or dropped by it.
#[derive(Default)]
struct State {
    refusing: bool,
    /// Fires to drop every connection accepted since the last cut; replaced
    /// by a fresh token at each cut.
    generation: CancellationToken,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), target).await
    }

    /// Listens on `bind` (port 0: a free one) and forwards to `target`, e.g.
    /// on a veth address so a process in a network namespace reaches a
    /// server that listens on loopback.
    pub async fn start_on(bind: SocketAddr, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(bind).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let cut = {
                    let state = shared.lock().expect("proxy lock");
                    (!state.refusing).then(|| state.generation.clone())
                };
                match cut {
                    Some(cut) => drop(tokio::spawn(forward(client, target, cut))),
                    None => drop(client),
                }
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    /// A `nats://` URL through the proxy.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Drops every connection now and refuses new ones until `restore`.
    pub fn cut(&self) {
        let mut state = self.state.lock().expect("proxy lock");
        state.refusing = true;
        std::mem::take(&mut state.generation).cancel();
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.state.lock().expect("proxy lock").refusing = false;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.state.lock().expect("proxy lock").generation.cancel();
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, cut: CancellationToken) {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = cut.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
    }
}
