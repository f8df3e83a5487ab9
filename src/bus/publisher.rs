//! The publishing side of the data path, shared by edges (client publish) and
//! the server API.
//!
//! History channel: JetStream publish to the channel's ingest partition with
//! `Nats-Msg-Id` = (channel, idempotency key) and a `Herald-Reply` header
//! naming this process's reply inbox; then wait for the writer's
//! [`WriterReply`], which is sent only after the store commit (I2) — for
//! most publishes inside one [`StoredBatch`] message per writer batch, which
//! the reply task splits among the waiting publishes. If
//! JetStream says the message is a duplicate, the original is (or will soon
//! be) stored: its offset is looked up through an [`OffsetLookup`] (sync, I3;
//! this module knows it only through that trait).
//!
//! Channel without history: a core NATS publish to the channel subject, with
//! its publish time in `Herald-Committed` (the edges' delivery latency).
//!
//! Both carry the current span's trace context (`traceparent`) when traces
//! are exported, so the writer and the edges continue the caller's trace.
//!
//! Knows nothing of sessions, HTTP or the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, oneshot};

use super::ingest::{IngestFormat, IngestMessage, StoredBatch, WriterReply};
use super::subjects;
use crate::telemetry;

/// Where a duplicate's stored offset is looked up: sync over NATS in the
/// roles (`sync::client` implements it), so bus, the transport, knows nothing
/// of sync.
pub trait OffsetLookup: Send + Sync {
    /// The stored offset and the epoch of (channel, key), if stored.
    fn idempotent_offset<'a>(
        &'a self,
        channel: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<(u64, String)>, LookupError>>;
}

/// Why a lookup gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Nobody answered in time: asking again may work.
    #[error("offset lookup unanswered")]
    Retry,
    #[error("offset lookup failed: {0}")]
    Failed(String),
}

/// What a successful publish returns. For channels without history `offset`
/// is 0 and `epoch` empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Published {
    pub offset: u64,
    pub epoch: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishErrorKind {
    /// No store commit was confirmed in time: the publication may still be
    /// stored. Retrying with the same idempotency key
    /// ([`PublishError::idempotency_key`], which is the generated one when the
    /// caller gave none) is safe; retrying without it may store a second copy.
    Timeout,
    /// The ingest stream is full or too many publishes are in flight.
    Backpressure,
    /// NATS or the writer could not be reached.
    Unavailable,
    /// The writer refused the message.
    Rejected,
}

#[derive(Debug, thiserror::Error)]
#[error("publish {kind:?}: {message}")]
pub struct PublishError {
    pub kind: PublishErrorKind,
    pub message: String,
    /// On `Timeout`: the idempotency key the publication went out with (the
    /// caller's, or the one generated for it), so the caller can retry
    /// without storing a second copy. `None` otherwise.
    pub idempotency_key: Option<String>,
}

impl PublishError {
    fn new(kind: PublishErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            idempotency_key: None,
        }
    }
}

/// One publish.
pub struct PublishRequest<'a> {
    pub channel: &'a str,
    pub data: &'a RawValue,
    /// `ClientInfo` JSON of the publishing client, if a client published.
    pub info: Option<&'a RawValue>,
    /// Given by the API caller, or `None` to generate one.
    pub idempotency_key: Option<&'a str>,
    pub history: bool,
}

/// Pending publishes waiting for the writer, by reply token. Entries are
/// removed by the reply task when the answer arrives, or by the publisher on
/// timeout; the map size is bounded by `inflight`.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<WriterReply>>>>;

#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    lookup: Arc<dyn OffsetLookup>,
    partitions: u32,
    reply_prefix: String,
    next_token: Arc<AtomicU64>,
    pending: Pending,
    /// Bounds publishes in flight in this process; a publish that cannot get a
    /// permit at once fails with `Backpressure`.
    inflight: Arc<Semaphore>,
    timeout: Duration,
    /// The ingest messages' wire form (`ingest_format`).
    format: IngestFormat,
}

impl Publisher {
    /// Subscribes this process's reply inbox and starts the task that routes
    /// writer replies to waiting publishes. The task ends when the NATS client
    /// is closed.
    pub async fn start(
        client: async_nats::Client,
        lookup: Arc<dyn OffsetLookup>,
        partitions: u32,
        max_inflight: usize,
        timeout: Duration,
        format: IngestFormat,
    ) -> Result<Self, async_nats::SubscribeError> {
        let reply_prefix = subjects::reply_prefix(&uuid::Uuid::new_v4().simple().to_string());
        let mut sub = client.subscribe(format!("{reply_prefix}.*")).await?;
        let pending: Pending = Arc::default();
        let routes = pending.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                route_reply(&routes, &msg.subject, &msg.payload);
            }
        });
        Ok(Self {
            js: jetstream::new(client.clone()),
            client,
            lookup,
            partitions,
            reply_prefix,
            next_token: Arc::new(AtomicU64::new(1)),
            pending,
            inflight: Arc::new(Semaphore::new(max_inflight)),
            timeout,
            format,
        })
    }

    pub async fn publish(&self, req: PublishRequest<'_>) -> Result<Published, PublishError> {
        if !req.history {
            return self.publish_ephemeral(&req).await;
        }
        let _permit = self.inflight.try_acquire().map_err(|_| {
            PublishError::new(
                PublishErrorKind::Backpressure,
                "too many publishes in flight",
            )
        })?;
        let (key, generated) = match req.idempotency_key {
            Some(k) => (k.to_string(), false),
            None => (uuid::Uuid::new_v4().simple().to_string(), true),
        };
        let payload = IngestMessage::encode_as(self.format, req.channel, &key, req.data, req.info)
            .map_err(|e| PublishError::new(PublishErrorKind::Rejected, e.to_string()))?;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(token, tx);
        let guard = PendingGuard {
            pending: &self.pending,
            token,
        };

        let mut headers = HeaderMap::new();
        headers.insert(
            const { subjects::header_name(subjects::MSG_ID_HEADER) },
            subjects::message_id(req.channel, &key),
        );
        headers.insert(
            const { subjects::header_name(subjects::REPLY_HEADER) },
            format!("{}.{token}", self.reply_prefix),
        );
        telemetry::inject_current_nats(&mut headers);
        let subject =
            subjects::ingest_subject(subjects::partition_of(req.channel, self.partitions));

        let outcome = tokio::time::timeout(self.timeout, async {
            let sent = std::time::Instant::now();
            let ack = self
                .js
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| {
                    count_publish_error("ingest");
                    PublishError::new(PublishErrorKind::Unavailable, e.to_string())
                })?
                .await
                .map_err(|e| {
                    count_publish_error("ingest");
                    let text = e.to_string();
                    // A full work-queue stream with DiscardPolicy::New answers
                    // "maximum bytes exceeded" / "maximum messages exceeded".
                    if text.contains("maximum") {
                        PublishError::new(PublishErrorKind::Backpressure, text)
                    } else {
                        PublishError::new(PublishErrorKind::Unavailable, text)
                    }
                })?;
            crate::metrics::edge_io()
                .ingest_ack
                .record(sent.elapsed().as_secs_f64());
            if ack.duplicate {
                drop(guard);
                return self.lookup_duplicate(req.channel, &key).await;
            }
            match rx.await {
                Ok(WriterReply::Stored { offset, epoch }) => Ok(Published { offset, epoch }),
                Ok(WriterReply::Failed { message }) => {
                    Err(PublishError::new(PublishErrorKind::Rejected, message))
                }
                Err(_) => Err(PublishError::new(
                    PublishErrorKind::Unavailable,
                    "reply route closed",
                )),
            }
        })
        .await;
        match outcome {
            Ok(r) => r,
            Err(_) => {
                let message = if generated {
                    format!(
                        "no store commit confirmed in time; the publication may still be stored: \
                         to retry without a second copy, publish again with idempotency key {key}"
                    )
                } else {
                    "no store commit confirmed in time; the publication may still be stored: \
                     retry with the same idempotency key"
                        .to_string()
                };
                Err(PublishError {
                    kind: PublishErrorKind::Timeout,
                    message,
                    idempotency_key: Some(key),
                })
            }
        }
    }

    /// A duplicate's original may still be in the writer's hands: poll the
    /// lookup
    /// until it is stored (bounded by the caller's timeout).
    async fn lookup_duplicate(&self, channel: &str, key: &str) -> Result<Published, PublishError> {
        let mut wait = Duration::from_millis(5);
        loop {
            match self.lookup.idempotent_offset(channel, key).await {
                Ok(Some((offset, epoch))) => return Ok(Published { offset, epoch }),
                Ok(None) | Err(LookupError::Retry) => {}
                Err(e @ LookupError::Failed(_)) => {
                    return Err(PublishError::new(
                        PublishErrorKind::Unavailable,
                        e.to_string(),
                    ));
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(200));
        }
    }

    async fn publish_ephemeral(&self, req: &PublishRequest<'_>) -> Result<Published, PublishError> {
        let payload = crate::protocol::encode_publication(
            req.data.get().as_bytes(),
            req.info.map(|i| i.get().as_bytes()),
            0,
            "",
        );
        // No commit to wait for: deliverable from now.
        let mut headers = HeaderMap::new();
        headers.insert(
            const { subjects::header_name(subjects::COMMITTED_HEADER) },
            crate::metrics::unix_micros().to_string(),
        );
        telemetry::inject_current_nats(&mut headers);
        self.client
            .publish_with_headers(subjects::channel_subject(req.channel), headers, payload)
            .await
            .map_err(|e| {
                count_publish_error("channel");
                PublishError::new(PublishErrorKind::Unavailable, e.to_string())
            })?;
        Ok(Published::default())
    }
}

/// Hands a writer's answer on `subject` to the publishes waiting for it: a
/// batch (`<inbox>.b`, [`StoredBatch`]) to each of its tokens, or one
/// [`WriterReply`] (`<inbox>.<token>`: a refusal, or a writer older than
/// batched replies). An answer nobody waits for any more (timed out) is
/// dropped.
fn route_reply(pending: &Pending, subject: &str, payload: &[u8]) {
    let Some((_, last)) = subject.rsplit_once('.') else {
        return;
    };
    if last == subjects::BATCH_REPLY_TOKEN {
        let Some(entries) = StoredBatch::decode(payload) else {
            tracing::warn!("undecodable batch of writer replies");
            return;
        };
        let waiters: Vec<_> = {
            let mut pending = pending.lock().expect("pending lock");
            entries
                .into_iter()
                .filter_map(|(token, offset, epoch)| {
                    pending.remove(&token).map(|tx| (tx, offset, epoch))
                })
                .collect()
        };
        for (tx, offset, epoch) in waiters {
            let _ = tx.send(WriterReply::Stored {
                offset,
                epoch: epoch.to_string(),
            });
        }
        return;
    }
    let Ok(token) = last.parse::<u64>() else {
        return;
    };
    let Ok(reply) = serde_json::from_slice::<WriterReply>(payload) else {
        tracing::warn!("undecodable writer reply");
        return;
    };
    let waiter = pending.lock().expect("pending lock").remove(&token);
    if let Some(tx) = waiter {
        let _ = tx.send(reply);
    }
}

fn count_publish_error(kind: &'static str) {
    metrics::counter!(crate::metrics::NATS_PUBLISH_ERRORS_TOTAL, "kind" => kind).increment(1);
}

/// Removes a pending entry however the publish ends (reply, error, timeout,
/// or the caller dropping the future).
struct PendingGuard<'a> {
    pending: &'a Pending,
    token: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(pending: &Pending, token: u64) -> oneshot::Receiver<WriterReply> {
        let (tx, rx) = oneshot::channel();
        pending.lock().unwrap().insert(token, tx);
        rx
    }

    #[test]
    fn a_batch_reaches_each_waiting_publish() {
        let pending = Pending::default();
        let prefix = subjects::reply_prefix("p");
        let (mut a, mut b) = (waiting(&pending, 1), waiting(&pending, 2));
        let mut batch = StoredBatch::default();
        batch.push(2, 8, "e2");
        batch.push(1, 7, "e1");
        // A token nobody waits for (timed out) is skipped.
        batch.push(3, 9, "e3");
        route_reply(
            &pending,
            &subjects::batch_reply_subject(&prefix),
            &batch.into_bytes(),
        );
        let stored = |offset, epoch: &str| WriterReply::Stored {
            offset,
            epoch: epoch.into(),
        };
        assert_eq!(a.try_recv().unwrap(), stored(7, "e1"));
        assert_eq!(b.try_recv().unwrap(), stored(8, "e2"));
        assert!(pending.lock().unwrap().is_empty());
    }

    #[test]
    fn single_replies_still_route() {
        // A refusal, or a writer older than batched replies.
        let pending = Pending::default();
        let prefix = subjects::reply_prefix("p");
        let mut rx = waiting(&pending, 5);
        let failed = WriterReply::Failed {
            message: "bad".into(),
        };
        route_reply(
            &pending,
            &format!("{prefix}.5"),
            &serde_json::to_vec(&failed).unwrap(),
        );
        assert_eq!(rx.try_recv().unwrap(), failed);
        // Garbage is dropped without touching anyone waiting.
        let mut other = waiting(&pending, 6);
        route_reply(&pending, &format!("{prefix}.6"), b"not json");
        route_reply(&pending, &subjects::batch_reply_subject(&prefix), b"\x01");
        assert!(other.try_recv().is_err());
        assert_eq!(pending.lock().unwrap().len(), 1);
    }
}
