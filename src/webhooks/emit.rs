//! The emitting side: the edge's non-blocking hand-off ([`Emitter`]) with its
//! publishing task, the online/offline check, and the writer's `published`
//! events ([`PublishedEvents`]).
//!
//! Overflow policy: the hand-off queue holds `webhook_emit_queue` events; an
//! event that finds it full is dropped and counted
//! (`herald_webhook_events_dropped_total{reason="queue_full"}`), the caller
//! never waits. The queue fills only while JetStream refuses or does not
//! answer publishes (NATS down, the stream full): the publishing task retries
//! the event in hand with backoff and takes no more meanwhile.
//!
//! Order: one task publishes a process's events in queue order on one NATS
//! connection, so the stream holds them in that order. A publish refused
//! while a later one of the same round was stored is retried after it
//! (JetStream drops a repeated id): only a JetStream error can reorder.
//!
//! Knows nothing of sessions or presence beyond [`StatusSource`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Encoded, Event, Kind, subject};
use crate::config::{ChannelsConfig, WebhookConfig};
use crate::metrics as m;
use crate::store::ChannelAppend;

/// Events one publish round sends before awaiting their acks.
const PUBLISH_BATCH: usize = 256;
/// Retry pacing of a refused or unanswered publish.
const PUBLISH_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));
/// After shutdown, how long the task keeps publishing what is queued.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// Online/offline checks waiting, and running at once.
const STATUS_QUEUE: usize = 65_536;
const STATUS_CONCURRENCY: usize = 32;
/// Tries of a writer's `published` events before they count as dropped: the
/// writer must not stall its partition on the events stream.
const WRITER_TRIES: u32 = 5;

/// Whether a user is connected through another edge than this one. The
/// edge's presence implements it (a scatter-gather status query).
#[async_trait::async_trait]
pub trait StatusSource: Send + Sync {
    /// `None`: the edges could not be asked.
    async fn online_elsewhere(&self, user: &str) -> Option<bool>;
}

struct Inner {
    tx: mpsc::Sender<Encoded>,
    status: mpsc::Sender<(Arc<str>, Option<u64>)>,
    kinds: BTreeSet<Kind>,
}

/// The edge's hand-off: cheap to clone; an `Emitter::default()` is off and
/// every call on it does nothing.
#[derive(Clone, Default)]
pub struct Emitter {
    inner: Option<Arc<Inner>>,
}

impl Emitter {
    /// An emitter that emits nothing.
    pub const OFF: Emitter = Emitter { inner: None };

    /// Starts the publishing task (and the online/offline checks, asked of
    /// `status`); both run until `shutdown`, then publish what is queued for
    /// at most a few seconds.
    pub fn start(
        nats: async_nats::Client,
        cfg: &WebhookConfig,
        status: Arc<dyn StatusSource>,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.emit_queue);
        let (status_tx, status_rx) = mpsc::channel(STATUS_QUEUE);
        let emitter = Self {
            inner: Some(Arc::new(Inner {
                tx,
                status: status_tx,
                kinds: cfg.events.iter().filter_map(|k| Kind::parse(k)).collect(),
            })),
        };
        let js = jetstream::new(nats);
        let checks = tokio::spawn(check_status(
            status,
            status_rx,
            emitter.clone(),
            shutdown.clone(),
        ));
        let cfg = cfg.clone();
        let task = tokio::spawn(async move {
            publish_loop(js, cfg, rx, checks, shutdown).await;
        });
        (emitter, task)
    }

    fn wants(&self, kind: Kind) -> Option<&Inner> {
        self.inner.as_deref().filter(|i| i.kinds.contains(&kind))
    }

    fn emit(&self, e: &Event<'_>) {
        let Some(inner) = self.wants(e.kind) else {
            return;
        };
        let Some(enc) = Encoded::new(e) else { return };
        match inner.tx.try_send(enc) {
            Ok(()) => {}
            Err(_) => {
                metrics::counter!(m::WEBHOOK_DROPPED_TOTAL, "reason" => "queue_full").increment(1);
                tracing::debug!(kind = e.kind.label(), "webhook queue full; event dropped");
            }
        }
    }

    pub fn connected(&self, client: &str, user: &str, info: Option<&RawValue>) {
        let mut e = Event::new(Kind::Connected);
        e.client = Some(client);
        e.user = Some(user);
        e.info = info;
        self.emit(&e);
    }

    pub fn disconnected(&self, client: &str, user: &str, code: u16, reason: &str) {
        let mut e = Event::new(Kind::Disconnected);
        e.client = Some(client);
        e.user = Some(user);
        e.code = Some(code);
        e.reason = Some(reason);
        self.emit(&e);
    }

    /// Emits `subscribed`; the guard returned emits `unsubscribed` when it
    /// drops (keep it with the subscription).
    pub fn subscribed(&self, client: &str, user: &str, channel: &str) -> Option<Unsubscribed> {
        self.wants(Kind::Subscribed)
            .or_else(|| self.wants(Kind::Unsubscribed))?;
        let mut e = Event::new(Kind::Subscribed);
        e.client = Some(client);
        e.user = Some(user);
        e.channel = Some(channel);
        self.emit(&e);
        Some(Unsubscribed {
            emitter: self.clone(),
            client: client.into(),
            user: user.into(),
            channel: channel.into(),
        })
    }

    /// A user's first connection on this edge (`last_seen: None`) or last
    /// one gone: checked against the other edges, then emitted as
    /// `user_online` / `user_offline` if no other edge has the user.
    pub fn user_changed(&self, user: &Arc<str>, offline_at: Option<u64>) {
        let kind = if offline_at.is_some() {
            Kind::UserOffline
        } else {
            Kind::UserOnline
        };
        let Some(inner) = self.wants(kind) else {
            return;
        };
        if user.is_empty() {
            return;
        }
        if inner.status.try_send((user.clone(), offline_at)).is_err() {
            metrics::counter!(m::WEBHOOK_DROPPED_TOTAL, "reason" => "queue_full").increment(1);
        }
    }
}

/// Emits `unsubscribed` when dropped.
pub struct Unsubscribed {
    emitter: Emitter,
    client: Box<str>,
    user: Box<str>,
    channel: Box<str>,
}

impl Drop for Unsubscribed {
    fn drop(&mut self) {
        let mut e = Event::new(Kind::Unsubscribed);
        e.client = Some(&self.client);
        e.user = Some(&self.user);
        e.channel = Some(&self.channel);
        self.emitter.emit(&e);
    }
}

/// Asks the other edges about each change, at most [`STATUS_CONCURRENCY`]
/// at once, and emits in the order the changes came (so a user's offline
/// and a following online leave in that order).
async fn check_status(
    status: Arc<dyn StatusSource>,
    mut rx: mpsc::Receiver<(Arc<str>, Option<u64>)>,
    emitter: Emitter,
    shutdown: CancellationToken,
) {
    let changes = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let checked = changes
        .map(|(user, offline_at)| {
            let status = status.clone();
            async move {
                // Unknown: emitted (a duplicate is better than a loss).
                let elsewhere = status.online_elsewhere(&user).await.unwrap_or(false);
                (user, offline_at, elsewhere)
            }
        })
        .buffered(STATUS_CONCURRENCY)
        // Past shutdown, a little longer: the closing sessions' users.
        .take_until(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_DRAIN / 2).await;
        });
    futures::pin_mut!(checked);
    while let Some((user, offline_at, elsewhere)) = checked.next().await {
        if elsewhere {
            continue;
        }
        let mut e = Event::new(if offline_at.is_some() {
            Kind::UserOffline
        } else {
            Kind::UserOnline
        });
        e.user = Some(&user);
        e.last_seen = offline_at;
        emitter.emit(&e);
    }
}

async fn publish_loop(
    js: jetstream::Context,
    cfg: WebhookConfig,
    mut rx: mpsc::Receiver<Encoded>,
    checks: JoinHandle<()>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, PUBLISH_BATCH) => if n == 0 { return },
            _ = shutdown.cancelled() => break,
        }
        publish_all(&js, &cfg, &mut batch, None).await;
    }
    // Shutdown: what the closing sessions emitted, for a bounded time.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
    let _ = tokio::time::timeout_at(deadline, checks).await;
    while let Ok(e) = rx.try_recv() {
        batch.push(e);
    }
    publish_all(&js, &cfg, &mut batch, Some(deadline)).await;
}

/// Publishes `batch` (pipelined, acks awaited in order), retrying each
/// refused one until it is stored or `deadline` passes (then dropped and
/// counted). Empties `batch`.
async fn publish_all(
    js: &jetstream::Context,
    cfg: &WebhookConfig,
    batch: &mut Vec<Encoded>,
    deadline: Option<tokio::time::Instant>,
) {
    let mut acks = Vec::with_capacity(batch.len());
    for e in batch.iter() {
        acks.push(
            js.publish_with_headers(subject(cfg, e.kind), e.headers(), e.body.clone())
                .await,
        );
    }
    let mut failed = Vec::new();
    for (e, ack) in batch.drain(..).zip(acks) {
        let stored = match ack {
            Ok(f) => f.await.is_ok(),
            Err(_) => false,
        };
        if stored {
            metrics::counter!(m::WEBHOOK_EMITTED_TOTAL, "type" => e.kind.label()).increment(1);
        } else {
            failed.push(e);
        }
    }
    for e in failed {
        let mut delay = PUBLISH_BACKOFF.0;
        loop {
            if publish_one(js, cfg, &e).await {
                metrics::counter!(m::WEBHOOK_EMITTED_TOTAL, "type" => e.kind.label()).increment(1);
                break;
            }
            metrics::counter!(m::NATS_PUBLISH_ERRORS_TOTAL, "kind" => "webhook").increment(1);
            if deadline.is_some_and(|d| tokio::time::Instant::now() + delay > d) {
                metrics::counter!(m::WEBHOOK_DROPPED_TOTAL, "reason" => "publish_failed")
                    .increment(1);
                tracing::warn!(id = %e.id, kind = e.kind.label(), "webhook event not stored before shutdown; dropped");
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(PUBLISH_BACKOFF.1);
        }
    }
}

async fn publish_one(js: &jetstream::Context, cfg: &WebhookConfig, e: &Encoded) -> bool {
    match js
        .publish_with_headers(subject(cfg, e.kind), e.headers(), e.body.clone())
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

/// The writer's `published` events: for each new publication in a namespace
/// with `publish_events`, one event published and stored before the writer
/// acks the batch (a few tries; then dropped and counted, so a full or
/// unreachable events stream never stalls the writer for long).
pub struct PublishedEvents {
    js: jetstream::Context,
    cfg: WebhookConfig,
    channels: ChannelsConfig,
}

impl PublishedEvents {
    /// `None` when webhooks are off or `published` is not among
    /// `webhook_events`.
    pub fn new(
        nats: async_nats::Client,
        cfg: &WebhookConfig,
        channels: &ChannelsConfig,
    ) -> Option<Self> {
        (cfg.enabled() && cfg.events.contains(Kind::Published.label())).then(|| Self {
            js: jetstream::new(nats),
            cfg: cfg.clone(),
            channels: channels.clone(),
        })
    }

    fn wanted(&self, channel: &str) -> bool {
        let ns = match channel.split_once(crate::channel::NAMESPACE_SEPARATOR) {
            None => Some(&self.channels.default),
            Some((ns, _)) => self.channels.namespaces.get(ns),
        };
        ns.is_some_and(|o| o.publish_events)
    }

    /// Emits the events of `appends` (just committed at `committed_ms`).
    pub async fn published(&self, appends: &[ChannelAppend], committed_ms: u64) {
        let mut batch = Vec::new();
        for a in appends.iter().filter(|a| self.wanted(&a.channel)) {
            for p in &a.publications {
                let data: Option<Box<RawValue>> = serde_json::from_slice(&p.data).ok();
                let info: Option<Box<RawValue>> =
                    p.info.as_ref().and_then(|i| serde_json::from_slice(i).ok());
                let user = info.as_ref().and_then(|i| {
                    #[derive(serde::Deserialize)]
                    struct U<'a> {
                        #[serde(borrow)]
                        user: Option<std::borrow::Cow<'a, str>>,
                    }
                    serde_json::from_str::<U<'_>>(i.get())
                        .ok()
                        .and_then(|u| u.user.map(|u| u.into_owned()))
                });
                let mut e = Event::with_id(
                    Kind::Published,
                    super::publication_id(&a.channel, &a.epoch, p.offset),
                    committed_ms,
                );
                e.channel = Some(&a.channel);
                e.offset = Some(p.offset);
                e.epoch = Some(&a.epoch);
                e.data = data.as_deref();
                e.info = info.as_deref();
                e.user = user.as_deref();
                if let Some(enc) = Encoded::new(&e) {
                    batch.push(enc);
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        // Every try sends what is still unstored, pipelined; a duplicate id
        // (stored by an earlier try whose ack was lost) is acked as stored.
        let mut delay = PUBLISH_BACKOFF.0;
        for attempt in 1..=WRITER_TRIES {
            let mut acks = Vec::with_capacity(batch.len());
            for e in &batch {
                acks.push(
                    self.js
                        .publish_with_headers(
                            subject(&self.cfg, e.kind),
                            e.headers(),
                            e.body.clone(),
                        )
                        .await,
                );
            }
            let mut failed = Vec::new();
            for (e, ack) in batch.into_iter().zip(acks) {
                let stored = match ack {
                    Ok(f) => f.await.is_ok(),
                    Err(_) => false,
                };
                if stored {
                    metrics::counter!(m::WEBHOOK_EMITTED_TOTAL, "type" => "published").increment(1);
                } else {
                    failed.push(e);
                }
            }
            batch = failed;
            if batch.is_empty() {
                return;
            }
            metrics::counter!(m::NATS_PUBLISH_ERRORS_TOTAL, "kind" => "webhook")
                .increment(batch.len() as u64);
            if attempt < WRITER_TRIES {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(PUBLISH_BACKOFF.1);
            }
        }
        metrics::counter!(m::WEBHOOK_DROPPED_TOTAL, "reason" => "publish_failed")
            .increment(batch.len() as u64);
        tracing::warn!(events = batch.len(), "published events not stored; dropped");
    }
}
