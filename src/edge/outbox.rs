//! A connection's outbound queue: frames waiting to be written to its socket.
//!
//! Bounded in bytes (`client_queue_max_bytes`). Overflow policy: the client is
//! too slow, the queue is dropped and the connection closed with 3008 (I7).
//! The writer task drains everything queued into one WebSocket frame
//! (newline-separated JSON, or Protobuf frames back to back, as the
//! connection's [`Encoding`] joins them), so a burst costs one write.
//!
//! Producers: the session (replies), the registry's subscribers (publications), the edge (close,
//! also on a server API `disconnect`). The only consumer is the connection's
//! writer task. Knows nothing of the protocol beyond the close codes.
//!
//! Metrics: queued bytes move `herald_edge_outbound_queued_bytes` up on push
//! and down once the batch holding them is written or dropped; the oldest
//! publication time queued (`push_stamped`) rides with the batch so the
//! writer can record the delivery latency of each socket write.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::edge_io;
use crate::protocol::{Disconnect, Encoding};

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection is closing; the frame is dropped.
    Closed,
    /// The queue would pass its bound: the connection is now closing with 3008.
    Overflow,
}

/// Why a connection closes: one of the protocol's named codes, or a code and
/// reason the backend chose through the server API `disconnect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    Named(Disconnect),
    Custom { code: u16, reason: Box<str> },
}

impl From<Disconnect> for Close {
    fn from(d: Disconnect) -> Self {
        Self::Named(d)
    }
}

impl Close {
    pub fn code(&self) -> u16 {
        match self {
            Self::Named(d) => d.code,
            Self::Custom { code, .. } => *code,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Named(d) => d.reason,
            Self::Custom { reason, .. } => reason,
        }
    }
}

/// What the writer takes out in one go.
pub struct Batch {
    /// Everything queued, joined as the encoding joins frames; empty when
    /// nothing was queued.
    pub frame: Bytes,
    pub frames: usize,
    /// Set when the connection must close after writing `frame`.
    pub close: Option<Close>,
    /// When the oldest publication in `frame` became deliverable (unix
    /// microseconds, see `metrics::unix_micros`), if it carried a time.
    pub committed_us: Option<u64>,
    /// The queued bytes gauge holds `frame` until the batch is dropped.
    _queued: QueuedBytes,
}

/// Bytes counted in the outbound queued bytes gauge; uncounted on drop.
struct QueuedBytes(usize);

impl Drop for QueuedBytes {
    fn drop(&mut self) {
        if self.0 > 0 {
            edge_io().queued_bytes.decrement(self.0 as f64);
        }
    }
}

struct Inner {
    queue: VecDeque<Bytes>,
    bytes: usize,
    close: Option<Close>,
    /// The oldest publication time among the queued frames.
    committed_us: Option<u64>,
}

pub struct Outbox {
    inner: Mutex<Inner>,
    limit: usize,
    /// The connection's encoding: every frame queued is in it.
    encoding: Encoding,
    /// Wakes the writer task; a permit is stored if it is not waiting.
    wake: Notify,
    /// Fires once the connection starts closing, for the session's read loop.
    closing: CancellationToken,
}

impl Outbox {
    /// The outbox of a JSON connection.
    pub fn new(limit: usize) -> Self {
        Self::with_encoding(limit, Encoding::Json)
    }

    pub fn with_encoding(limit: usize, encoding: Encoding) -> Self {
        Self {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                bytes: 0,
                close: None,
                committed_us: None,
            }),
            limit,
            encoding,
            wake: Notify::new(),
            closing: CancellationToken::new(),
        }
    }

    /// The encoding of every frame queued here.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Queues one frame (one JSON object without a trailing newline, or one
    /// length-delimited Protobuf `Reply`).
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        self.push_stamped(frame, None)
    }

    /// Queues one publication frame that became deliverable at
    /// `committed_us` (unix microseconds), if known.
    pub fn push_stamped(&self, frame: Bytes, committed_us: Option<u64>) -> Result<(), PushError> {
        let mut inner = self.inner.lock().expect("outbox lock");
        if inner.close.is_some() {
            return Err(PushError::Closed);
        }
        if inner.bytes + frame.len() > self.limit {
            inner.queue.clear();
            edge_io().queued_bytes.decrement(inner.bytes as f64);
            inner.bytes = 0;
            inner.committed_us = None;
            inner.close = Some(Disconnect::SLOW.into());
            drop(inner);
            metrics::counter!(crate::metrics::SLOW_DISCONNECTS_TOTAL).increment(1);
            self.closing.cancel();
            self.wake.notify_one();
            return Err(PushError::Overflow);
        }
        inner.bytes += frame.len();
        if let Some(t) = committed_us {
            inner.committed_us = Some(inner.committed_us.map_or(t, |o| o.min(t)));
        }
        edge_io().queued_bytes.increment(frame.len() as f64);
        inner.queue.push_back(frame);
        drop(inner);
        self.wake.notify_one();
        Ok(())
    }

    /// Asks the writer to close with `d` after writing what is queued. The
    /// first close wins.
    pub fn close(&self, d: impl Into<Close>) {
        let mut inner = self.inner.lock().expect("outbox lock");
        if inner.close.is_none() {
            inner.close = Some(d.into());
        }
        drop(inner);
        self.closing.cancel();
        self.wake.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Resolves once the connection starts closing.
    pub async fn closing(&self) {
        self.closing.cancelled().await
    }

    /// Why the connection is closing, once it is.
    pub fn close_reason(&self) -> Option<Close> {
        self.inner.lock().expect("outbox lock").close.clone()
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.inner.lock().expect("outbox lock").bytes
    }

    /// Waits until something is queued or the connection closes, then takes
    /// it all.
    pub async fn next_batch(&self) -> Batch {
        loop {
            if let Some(batch) = self.take() {
                return batch;
            }
            self.wake.notified().await;
        }
    }

    fn take(&self) -> Option<Batch> {
        let mut inner = self.inner.lock().expect("outbox lock");
        if inner.queue.is_empty() && inner.close.is_none() {
            return None;
        }
        let frames = inner.queue.len();
        let frame = match frames {
            0 => Bytes::new(),
            1 => inner.queue.pop_front().unwrap_or_default(),
            _ => {
                let bytes = inner.bytes;
                self.encoding.join(inner.queue.drain(..), bytes)
            }
        };
        let queued = QueuedBytes(std::mem::take(&mut inner.bytes));
        Some(Batch {
            frame,
            frames,
            close: inner.close.clone(),
            committed_us: inner.committed_us.take(),
            _queued: queued,
        })
    }
}

impl Drop for Outbox {
    /// Frames still queued when the connection is gone leave the gauge too.
    fn drop(&mut self) {
        let bytes = self.inner.get_mut().map_or(0, |i| i.bytes);
        if bytes > 0 {
            edge_io().queued_bytes.decrement(bytes as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn coalesces_frames_with_newlines() {
        let o = Outbox::new(1024);
        o.push(Bytes::from_static(b"{\"a\":1}")).unwrap();
        o.push(Bytes::from_static(b"{\"b\":2}")).unwrap();
        let b = o.next_batch().await;
        assert_eq!(&b.frame[..], b"{\"a\":1}\n{\"b\":2}");
        assert_eq!(b.frames, 2);
        assert!(b.close.is_none());
        assert_eq!(o.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn protobuf_frames_are_concatenated_without_separator() {
        let o = Outbox::with_encoding(1024, Encoding::Protobuf);
        o.push(Bytes::from_static(&[1, 0x08])).unwrap();
        o.push(Bytes::from_static(&[0])).unwrap();
        let b = o.next_batch().await;
        assert_eq!(&b.frame[..], &[1, 0x08, 0]);
        assert_eq!(b.frames, 2);
    }

    #[tokio::test]
    async fn a_batch_carries_its_oldest_publication_time() {
        let o = Outbox::new(1024);
        o.push_stamped(Bytes::from_static(b"a"), Some(50)).unwrap();
        o.push_stamped(Bytes::from_static(b"b"), Some(30)).unwrap();
        o.push(Bytes::from_static(b"reply")).unwrap();
        assert_eq!(o.next_batch().await.committed_us, Some(30));
        o.push(Bytes::from_static(b"reply")).unwrap();
        assert_eq!(o.next_batch().await.committed_us, None);
    }

    #[tokio::test]
    async fn overflow_closes_slow() {
        let o = Outbox::new(10);
        o.push(Bytes::from_static(b"123456")).unwrap();
        assert_eq!(
            o.push(Bytes::from_static(b"123456")),
            Err(PushError::Overflow)
        );
        assert!(o.is_closing());
        let b = o.next_batch().await;
        assert!(b.frame.is_empty(), "a slow client's queue is dropped");
        assert_eq!(b.close, Some(Disconnect::SLOW.into()));
        assert_eq!(o.push(Bytes::from_static(b"1")), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn close_flushes_queued_first() {
        let o = Outbox::new(100);
        o.push(Bytes::from_static(b"x")).unwrap();
        o.close(Disconnect::SHUTDOWN);
        o.close(Disconnect::NO_PONG);
        let b = o.next_batch().await;
        assert_eq!(&b.frame[..], b"x");
        assert_eq!(b.close, Some(Disconnect::SHUTDOWN.into()));
    }

    #[test]
    fn custom_close_keeps_its_code_and_reason() {
        let c = |code| Close::Custom {
            code,
            reason: "r".into(),
        };
        assert_eq!(c(4500).code(), 4500);
        assert_eq!(c(4500).reason(), "r");
        assert_eq!(Close::from(Disconnect::SHUTDOWN).code(), 3001);
    }
}
