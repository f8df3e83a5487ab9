//! The read side shared by both transports: one page of a channel from the
//! store, clipped to what is served (at most the head read with it, nothing
//! older than the namespace's history retention), encoded once as protocol
//! publications; and idempotency-key lookups. Every store call is made under
//! the store timeout, so a stuck store turns into a `timeout` error instead
//! of a hung request.
//!
//! History retention (`history_retention` of the namespace) cuts a prefix:
//! `first_available` is the lowest offset whose publication is younger than
//! the retention (by the writer's `time_ms`), found by binary search over
//! `1..=head` with one-publication reads (O(log head) store reads, only in
//! namespaces with a retention). Everything from `first_available` to the
//! head is served, nothing below it. The search assumes `time_ms` does not
//! decrease with the offset, which holds while one writer at a time sequences
//! a channel; a writer failover between machines with skewed clocks can make
//! a few publications near the boundary expire a little early or late, never
//! makes the served range non-contiguous. An offset the store no longer has
//! counts as expired.
//!
//! A bounded history (`history_size` of the namespace, Centrifugo's
//! `history_size`) cuts a prefix too: only the newest `history_size`
//! offsets are served, so `first_available` is at least
//! `head - history_size + 1`. Nothing is deleted; offsets keep counting.
//!
//! Knows nothing of HTTP, NATS, tokens or coalescing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;

use super::wire::Page;
use crate::protocol::encode_publication;
use crate::store::{
    Direction, Position, ReadRange, SharedStore, StoreError, StoreErrorKind, StoreResult,
    StoredPublication,
};

/// Why a read was not answered with a page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("invalid channel name")]
    BadChannel,
    #[error("unknown channel namespace")]
    UnknownNamespace,
    #[error("the channel's namespace keeps no history")]
    NoHistory,
    #[error("store {}: {message}", kind.label())]
    Store {
        kind: StoreErrorKind,
        message: String,
    },
    #[error("the read task failed")]
    Internal,
}

impl ReadError {
    /// The `kind` of a `SyncReply::Error`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadChannel => "bad_request",
            Self::UnknownNamespace => "unknown_channel",
            Self::NoHistory => "not_available",
            Self::Store { kind, .. } => kind.label(),
            Self::Internal => "internal",
        }
    }

    /// The result label of the request metrics (a closed set shared by both
    /// transports).
    pub fn result_label(&self) -> &'static str {
        match self {
            Self::BadChannel => "bad_request",
            Self::UnknownNamespace | Self::NoHistory => "not_found",
            Self::Store { kind, .. } if kind.retryable() => "unavailable",
            Self::Store { .. } | Self::Internal => "internal",
        }
    }
}

impl From<&StoreError> for ReadError {
    fn from(e: &StoreError) -> Self {
        Self::Store {
            kind: e.kind,
            message: e.message.clone(),
        }
    }
}

/// A page as read, before it is put on a wire.
#[derive(Debug)]
pub struct ReadPage {
    pub page: Page,
    /// Offset of the last publication in the page (in the order read).
    pub last_offset: Option<u64>,
}

/// The store, its timeout, and a count of the calls made to it.
pub struct Reader {
    store: SharedStore,
    timeout: Duration,
    /// Store calls made; lets tests see what coalescing saves.
    store_calls: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The lowest offset a history bounded to `size` publications serves.
fn size_floor(head: u64, size: Option<u64>) -> u64 {
    match size {
        Some(size) if head > size => head - size + 1,
        _ => 1,
    }
}

/// The part of `range` that is served given the head and the first available
/// offset, or `None` when that part is empty.
fn served(range: ReadRange, head: u64, first_available: u64) -> Option<ReadRange> {
    let after = range.after.max(first_available.saturating_sub(1));
    let before = range.before.map_or(head + 1, |b| b.min(head + 1));
    if range.limit == 0 || after.saturating_add(1) >= before {
        return None;
    }
    Some(ReadRange {
        after,
        before: Some(before),
        ..range
    })
}

impl Reader {
    pub fn new(store: SharedStore, timeout: Duration) -> Self {
        Self {
            store,
            timeout,
            store_calls: AtomicU64::new(0),
        }
    }

    pub fn store_calls(&self) -> u64 {
        self.store_calls.load(Ordering::Relaxed)
    }

    /// The store, for the IM calls (`super::im`), which go through [`Self::timed`].
    pub(super) fn store(&self) -> &SharedStore {
        &self.store
    }

    pub(super) async fn timed<T>(
        &self,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        self.store_calls.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!("no answer within {:?}", self.timeout),
            )),
        }
    }

    /// One store read, counted in `herald_sync_rows_read_total`.
    async fn read(&self, channel: &str, range: ReadRange) -> StoreResult<Vec<StoredPublication>> {
        let rows = self.timed(self.store.read(channel, range)).await?;
        metrics::counter!(crate::metrics::SYNC_ROWS_READ_TOTAL).increment(rows.len() as u64);
        Ok(rows)
    }

    /// Reads the served part of `range`: the position first, then the range
    /// clipped to the head read, so the page never holds offsets beyond the
    /// `head` it reports.
    pub async fn page(
        &self,
        channel: &str,
        retention: Option<Duration>,
        size: Option<u64>,
        range: ReadRange,
    ) -> StoreResult<ReadPage> {
        let position = self.timed(self.store.position(channel)).await?;
        let first_available = match retention {
            Some(retention) if position.head > 0 => {
                let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
                self.first_available(channel, position.head, cutoff).await?
            }
            _ => 1,
        };
        let first_available = first_available.max(size_floor(position.head, size));
        let publications = match served(range, position.head, first_available) {
            Some(clipped) => self.read(channel, clipped).await?,
            None => Vec::new(),
        };
        encode(publications, position, first_available)
    }

    /// Is `offset` stored and younger than `cutoff_ms`?
    async fn live(&self, channel: &str, offset: u64, cutoff_ms: u64) -> StoreResult<bool> {
        let range = ReadRange {
            after: offset - 1,
            before: None,
            limit: 1,
            direction: Direction::Forward,
        };
        let found = self.read(channel, range).await?;
        Ok(found
            .first()
            .is_some_and(|p| p.offset == offset && p.time_ms >= cutoff_ms))
    }

    /// The lowest live offset in `1..=head`, or `head + 1` when none is.
    async fn first_available(&self, channel: &str, head: u64, cutoff_ms: u64) -> StoreResult<u64> {
        if self.live(channel, 1, cutoff_ms).await? {
            return Ok(1);
        }
        let (mut lo, mut hi) = (2, head + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.live(channel, mid, cutoff_ms).await? {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// The offset stored under (channel, key), if any, and the channel's epoch.
    pub async fn idempotency(
        &self,
        channel: &str,
        key: &str,
    ) -> StoreResult<(Option<u64>, String)> {
        let offset = self
            .timed(self.store.idempotent_offset(channel, key))
            .await?;
        let position = self.timed(self.store.position(channel)).await?;
        Ok((offset, position.epoch))
    }
}

fn encode(
    publications: Vec<StoredPublication>,
    position: Position,
    first_available: u64,
) -> StoreResult<ReadPage> {
    let last_offset = publications.last().map(|p| p.offset);
    let mut encoded = Vec::with_capacity(publications.len());
    for p in publications {
        // History pages carry the epoch once, beside the page; only the live
        // push of a stream's first publication repeats it (the writer's).
        let bytes = encode_publication(&p.data, p.info.as_deref(), p.offset, "");
        // The store holds the JSON it was given; text that is not JSON (or
        // not UTF-8) means a damaged record.
        let text = String::from_utf8(Vec::from(bytes)).map_err(|_| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                format!("offset {} is not UTF-8", p.offset),
            )
        })?;
        let raw = RawValue::from_string(text).map_err(|_| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                format!("offset {} is not JSON", p.offset),
            )
        })?;
        encoded.push(raw);
    }
    Ok(ReadPage {
        page: Page {
            publications: encoded,
            epoch: position.epoch,
            head: position.head,
            first_available,
        },
        last_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(after: u64, before: Option<u64>, limit: usize, direction: Direction) -> ReadRange {
        ReadRange {
            after,
            before,
            limit,
            direction,
        }
    }

    #[test]
    fn a_bounded_history_serves_the_newest() {
        assert_eq!(size_floor(0, Some(3)), 1);
        assert_eq!(size_floor(3, Some(3)), 1);
        assert_eq!(size_floor(5, Some(3)), 3);
        assert_eq!(size_floor(5, None), 1);
    }

    #[test]
    fn served_clips_to_head_and_retention() {
        let f = Direction::Forward;
        assert_eq!(served(range(0, None, 10, f), 0, 1), None, "empty channel");
        assert_eq!(
            served(range(0, None, 10, f), 5, 1),
            Some(range(0, Some(6), 10, f))
        );
        assert_eq!(
            served(range(0, Some(100), 10, f), 5, 1),
            Some(range(0, Some(6), 10, f))
        );
        assert_eq!(
            served(range(0, Some(3), 10, f), 5, 1),
            Some(range(0, Some(3), 10, f))
        );
        assert_eq!(
            served(range(0, None, 10, f), 5, 3),
            Some(range(2, Some(6), 10, f))
        );
        assert_eq!(
            served(range(4, None, 10, f), 5, 3),
            Some(range(4, Some(6), 10, f))
        );
        assert_eq!(
            served(range(5, None, 10, f), 5, 1),
            None,
            "nothing after the head"
        );
        assert_eq!(served(range(0, None, 10, f), 5, 6), None, "all expired");
        assert_eq!(served(range(2, Some(3), 10, f), 5, 1), None, "empty window");
        assert_eq!(served(range(0, Some(0), 10, f), 5, 1), None);
        assert_eq!(
            served(range(0, None, 0, f), 5, 1),
            None,
            "limit 0 reads nothing"
        );
        let b = Direction::Backward;
        assert_eq!(
            served(range(0, None, 10, b), 5, 2),
            Some(range(1, Some(6), 10, b))
        );
    }

    #[test]
    fn encodes_publications_verbatim() {
        let p = StoredPublication {
            offset: 3,
            data: bytes::Bytes::from_static(br#"{"t":"hi"}"#),
            info: Some(bytes::Bytes::from_static(br#"{"user":"u","client":"c"}"#)),
            time_ms: 0,
        };
        let position = Position {
            head: 3,
            epoch: "e".into(),
            time_ms: 0,
        };
        let page = encode(vec![p], position, 1).unwrap();
        assert_eq!(page.last_offset, Some(3));
        assert_eq!(
            page.page.publications[0].get(),
            r#"{"data":{"t":"hi"},"info":{"user":"u","client":"c"},"offset":3}"#
        );
        let bad = StoredPublication {
            offset: 4,
            data: bytes::Bytes::from_static(b"{not json"),
            info: None,
            time_ms: 0,
        };
        let err = encode(vec![bad], Position::default(), 1).unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Corrupt);
    }
}
