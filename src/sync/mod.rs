//! The sync role: read-only history by offset cursor, over HTTP for clients
//! ([`SyncService::router`]) and over NATS request/reply for edges and
//! publishers ([`SyncService::serve_nats`], the client side is [`client`]).
//!
//! Both transports go through [`SyncService::read`] and
//! [`SyncService::idempotency`]: channel validation, the page-size cap,
//! coalescing of identical concurrent reads (`coalesce`) and the store reads
//! with their timeout and history retention (`reader`).
//!
//! It also answers IM conversation requests (`im`: membership, markers, the
//! conversation list composed by `conversations`), the only writes it makes
//! to the store — membership and marker rows, never publications — and
//! push device requests (`device`: the device registry's rows).
//!
//! The HTTP API refuses revoked tokens once [`SyncService::set_revocations`]
//! was given the process's revocations.
//!
//! Owns no state but the in-flight reads; does not know how offsets are
//! assigned.

pub mod client;
mod coalesce;
pub mod conversations;
pub mod device;
mod http;
mod im;
mod reader;
mod responder;
pub mod wire;

pub use http::{RequestBytes, check_request as check_http_request};

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::channel::Channel;
use crate::config::{ChannelsConfig, SyncConfig};
use crate::protocol::ProtocolError;
use crate::store::{Direction, ReadRange, SharedStore};
use coalesce::Coalescer;
use reader::Reader;
pub use reader::{ReadError, ReadPage};

/// NATS requests handled at once per instance; more wait for a slot.
pub const DEFAULT_CONCURRENCY: usize = 256;
/// Distinct reads coalesced at once; more run uncoalesced.
pub const DEFAULT_COALESCE_CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Largest page served; larger limits are capped to it.
    pub page_limit: usize,
    /// Bound of every store call. Shorter than the edges' `sync_timeout` so
    /// a stuck store is answered with an error before the edge gives up.
    pub store_timeout: Duration,
    /// NATS requests handled concurrently.
    pub concurrency: usize,
    /// Keys the coalescing map holds at most.
    pub coalesce_capacity: usize,
    /// Push devices one user may have (`push::registry::register`).
    pub max_devices_per_user: usize,
}

impl SyncSettings {
    /// From the config: the store timeout is three quarters of `sync_timeout`.
    pub fn from_config(config: &SyncConfig) -> Self {
        Self {
            page_limit: config.page_limit,
            store_timeout: config.timeout * 3 / 4,
            concurrency: DEFAULT_CONCURRENCY,
            coalesce_capacity: DEFAULT_COALESCE_CAPACITY,
            max_devices_per_user: config.max_devices_per_user,
        }
    }
}

/// The identity of a read for coalescing: channel and range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PageKey {
    channel: String,
    after: u64,
    before: Option<u64>,
    limit: usize,
    backward: bool,
}

type PageResult = Result<Arc<ReadPage>, ReadError>;

pub struct SyncService {
    channels: ChannelsConfig,
    settings: SyncSettings,
    reader: Arc<Reader>,
    pages: Coalescer<PageKey, PageResult>,
    /// True while the NATS responder's queue subscription is in place
    /// (readiness of the sync role).
    ready: std::sync::atomic::AtomicBool,
    /// The revocations the HTTP API enforces, once set.
    revocations: std::sync::OnceLock<Arc<crate::revocation::Revocations>>,
}

impl SyncService {
    pub fn new(store: SharedStore, channels: ChannelsConfig, settings: SyncSettings) -> Self {
        Self {
            channels,
            reader: Arc::new(Reader::new(store, settings.store_timeout)),
            pages: Coalescer::new(settings.coalesce_capacity),
            settings,
            ready: std::sync::atomic::AtomicBool::new(false),
            revocations: std::sync::OnceLock::new(),
        }
    }

    /// The HTTP API refuses these revoked tokens from now on (set once).
    pub fn set_revocations(&self, r: Arc<crate::revocation::Revocations>) {
        let _ = self.revocations.set(r);
    }

    fn revocations(&self) -> Option<&crate::revocation::Revocations> {
        self.revocations.get().map(|r| &**r)
    }

    /// Whether this instance answers NATS requests (for `/health`).
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn settings(&self) -> &SyncSettings {
        &self.settings
    }

    /// Store calls made so far (a page read is one or more; coalesced
    /// readers share them).
    pub fn store_calls(&self) -> u64 {
        self.reader.store_calls()
    }

    /// Distinct reads running or waiting to run now (0 when idle).
    pub fn reads_in_flight(&self) -> usize {
        self.pages.in_flight()
    }

    pub(crate) fn channel<'a>(&self, name: &'a str) -> Result<Channel<'a>, ReadError> {
        Channel::parse(name, &self.channels).map_err(|e| match e {
            ProtocolError::UnknownChannel => ReadError::UnknownNamespace,
            _ => ReadError::BadChannel,
        })
    }

    /// A page of `channel`: `range.limit` is capped at the page limit (0
    /// reads only the head, epoch and first available offset). Identical
    /// concurrent reads share one execution that started after each of them
    /// arrived.
    pub async fn read(&self, channel: &str, range: ReadRange) -> PageResult {
        let parsed = self.channel(channel)?;
        if !parsed.options.history {
            return Err(ReadError::NoHistory);
        }
        let retention = parsed.options.history_retention;
        let size = parsed.options.history_size;
        let range = ReadRange {
            limit: range.limit.min(self.settings.page_limit),
            ..range
        };
        let key = PageKey {
            channel: channel.to_string(),
            after: range.after,
            before: range.before,
            limit: range.limit,
            backward: range.direction == Direction::Backward,
        };
        let reader = self.reader.clone();
        let channel = key.channel.clone();
        let work = move || async move {
            match reader.page(&channel, retention, size, range).await {
                Ok(page) => Ok(Arc::new(page)),
                Err(e) => Err(ReadError::from(&e)),
            }
        };
        self.pages
            .run(key, work)
            .await
            .unwrap_or(Err(ReadError::Internal))
    }

    /// The offset stored under (channel, key), if any, and the channel's epoch.
    pub async fn idempotency(
        &self,
        channel: &str,
        key: &str,
    ) -> Result<(Option<u64>, String), ReadError> {
        self.channel(channel)?;
        self.reader
            .idempotency(channel, key)
            .await
            .map_err(|e| ReadError::from(&e))
    }

    /// HTTP routes: `GET /api/v1/channels/{channel}/publications` (see
    /// `http` for the contract).
    pub fn router(self: &Arc<Self>, verifier: Verifier) -> Router {
        http::router(self.clone(), verifier)
    }

    /// Answers `subjects::SYNC` requests (queue group `sync`) until
    /// `shutdown`, then finishes the requests in hand.
    pub async fn serve_nats(
        self: Arc<Self>,
        client: async_nats::Client,
        shutdown: CancellationToken,
    ) -> Result<(), async_nats::SubscribeError> {
        responder::serve(self, client, shutdown).await
    }
}
