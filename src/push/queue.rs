//! The durable send queue: the JetStream stream `HERALD_PUSH` and the push
//! worker that drains it.
//!
//! - `send_push_notification` publishes a [`Job`] on `herald.push.job`
//!   (`Nats-Msg-Id` = the job id) and answers its id ([`Enqueuer`]).
//! - The worker's jobs consumer fans a job out: it resolves the recipients
//!   (users' devices, device ids, topics' devices; at most
//!   [`MAX_DEVICES_PER_JOB`]) in the store and publishes one [`DeviceSend`]
//!   per device on `herald.push.send` (`Nats-Msg-Id` = job:device, so a job
//!   fanned out again after a crash sends nothing twice within the
//!   stream's duplicate window), then acks the job.
//! - The sends consumer sends each through its provider's [`Sender`], at
//!   most `push_rate_per_provider` per provider (a governor bucket each;
//!   while one waits its message's ack deadline is pushed back), at most
//!   `push_concurrency` in flight. Sent → ack; invalid token → the device is
//!   removed (if it still holds that token) and acked; retry → redelivered
//!   after max(`Retry-After`, `push_retry_backoff` · 2^(attempt-1), capped
//!   at `push_retry_max_backoff`); a message older than
//!   `push_retry_max_age` is dropped (`expired`), and so does the stream
//!   itself (`max_age`); failed → dropped.
//!
//! Everything waiting is in the stream (file storage, at most
//! `push_queue_max_messages`; when full a new job is refused with 106), so
//! a restart loses nothing: the durable consumers redeliver what was not
//! acked. Knows the store trait and the senders; not the API or sessions.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{self, AckKind, stream};
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::sender::{Notification, Outcome, Sender};
use crate::bus::subjects;
use crate::config::Rate;
use crate::metrics as m;
use crate::store::{Device, Provider, SharedStore};

/// Most devices one job reaches; past it the rest are left out (logged).
pub const MAX_DEVICES_PER_JOB: usize = 100_000;
/// Names (users + devices + topics) one job may list.
pub const MAX_RECIPIENTS: usize = 1000;
/// Devices read per store page when fanning out.
const PAGE: usize = 1000;
/// Jobs fanned out at once.
const FANOUT_CONCURRENCY: usize = 4;
/// Publishes of one fan-out in flight at once.
const PUBLISH_CONCURRENCY: usize = 256;
/// JetStream's memory of message ids: a job fanned out again within it
/// publishes no device twice.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Who a job goes to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default)]
    pub topics: Vec<String>,
}

impl Recipient {
    pub fn len(&self) -> usize {
        self.users.len() + self.devices.len() + self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One `send_push_notification`, as queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub recipient: Recipient,
    pub notification: Notification,
    pub created_ms: u64,
}

/// One device to send a job's notification to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSend {
    pub job: String,
    pub device: String,
    pub notification: Notification,
    pub created_ms: u64,
}

/// The queue's settings (`push_*` options).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub rate_per_provider: Option<Rate>,
    pub max_age: Duration,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub max_messages: i64,
    pub concurrency: usize,
    pub replicas: usize,
    /// How long a consumer waits for an ack before redelivering: longer
    /// than one send (`push_timeout`) with its token exchange.
    pub ack_wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("push stream: {0}")]
    Stream(String),
    /// The stream is full (`push_queue_max_messages`).
    #[error("the push queue is full")]
    Full,
    #[error("push queue publish: {0}")]
    Publish(String),
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Creates the stream, or updates its limits to the settings.
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &QueueSettings,
) -> Result<stream::Stream, QueueError> {
    let config = stream::Config {
        name: subjects::PUSH_STREAM.to_string(),
        subjects: vec![subjects::PUSH_WILDCARD.to_string()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        max_messages: settings.max_messages,
        max_age: settings.max_age,
        duplicate_window: DUPLICATE_WINDOW.min(settings.max_age),
        num_replicas: settings.replicas,
        description: Some("Herald push notifications waiting to be sent".into()),
        ..Default::default()
    };
    let stream = js
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| QueueError::Stream(e.to_string()))?;
    let current = stream.cached_info().config.clone();
    if current.max_messages != config.max_messages
        || current.max_age != config.max_age
        || current.duplicate_window != config.duplicate_window
    {
        js.update_stream(config)
            .await
            .map_err(|e| QueueError::Stream(e.to_string()))?;
    }
    Ok(stream)
}

/// Publishes with a message id and waits for the stream's ack.
async fn publish(
    js: &jetstream::Context,
    subject: &'static str,
    id: &str,
    body: Vec<u8>,
) -> Result<(), QueueError> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    let ack = js
        .publish_with_headers(subject, headers, body.into())
        .await
        .map_err(|e| QueueError::Publish(e.to_string()))?;
    match ack.await {
        Ok(_) => Ok(()),
        Err(e) if store_full(&e) => Err(QueueError::Full),
        Err(e) => Err(QueueError::Publish(e.to_string())),
    }
}

/// Whether JetStream refused a publish because the stream is at its
/// limits (`discard: new`; error code 10077).
fn store_full(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| j.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED)
}

/// The API's side: queues jobs.
#[derive(Clone)]
pub struct Enqueuer {
    js: jetstream::Context,
}

impl Enqueuer {
    /// Ensures the stream exists (with `settings`' limits).
    pub async fn new(js: jetstream::Context, settings: &QueueSettings) -> Result<Self, QueueError> {
        ensure_stream(&js, settings).await?;
        Ok(Self { js })
    }

    pub async fn enqueue(&self, job: &Job) -> Result<(), QueueError> {
        let body = serde_json::to_vec(job).map_err(|e| QueueError::Publish(e.to_string()))?;
        let result = publish(&self.js, subjects::PUSH_JOBS, &job.id, body).await;
        let label = if result.is_ok() { "queued" } else { "refused" };
        metrics::counter!(m::PUSH_JOBS_TOTAL, "result" => label).increment(1);
        result
    }
}

/// The configured senders, each with its rate limit.
pub struct Senders {
    by_provider: HashMap<Provider, (Arc<dyn Sender>, Option<DefaultDirectRateLimiter>)>,
}

impl Senders {
    pub fn new(senders: Vec<Arc<dyn Sender>>, rate: Option<Rate>) -> Self {
        let quota = rate.and_then(|r| {
            let burst = NonZeroU32::new(r.burst)?;
            Quota::with_period(r.per / r.burst).map(|q| q.allow_burst(burst))
        });
        Self {
            by_provider: senders
                .into_iter()
                .map(|s| {
                    (
                        s.provider(),
                        (s, quota.map(DefaultDirectRateLimiter::direct)),
                    )
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_provider.is_empty()
    }
}

/// The delay before attempt `delivered + 1` of a send that asked to retry.
pub fn backoff(
    settings: &QueueSettings,
    delivered: i64,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = u32::try_from(delivered.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let computed = settings
        .backoff
        .saturating_mul(2u32.saturating_pow(exp))
        .min(settings.max_backoff);
    computed.max(retry_after.unwrap_or_default())
}

/// Registers the push metric series at zero (edge and sync roles).
pub fn register_metrics() {
    for p in Provider::ALL {
        let _ = metrics::histogram!(m::PUSH_SEND_SECONDS, "provider" => p.label());
        for r in [
            "sent",
            "invalid_token",
            "retry",
            "failed",
            "expired",
            "no_device",
            "no_sender",
        ] {
            metrics::counter!(m::PUSH_SENDS_TOTAL, "provider" => p.label(), "result" => r)
                .increment(0);
        }
        metrics::counter!(m::PUSH_DEVICES_REMOVED_TOTAL, "provider" => p.label()).increment(0);
    }
    for r in [
        "queued",
        "refused",
        "fanned_out",
        "retry",
        "expired",
        "invalid",
    ] {
        metrics::counter!(m::PUSH_JOBS_TOTAL, "result" => r).increment(0);
    }
    for r in ["queued", "dropped"] {
        metrics::counter!(m::PUSH_UNREAD_TOTAL, "result" => r).increment(0);
    }
}

struct Worker {
    js: jetstream::Context,
    store: SharedStore,
    senders: Senders,
    settings: QueueSettings,
}

/// Runs the push worker until `shutdown`: both consumers, created (or
/// updated) durable. Returns an error only when the stream or a consumer
/// cannot be set up.
pub async fn run(
    js: jetstream::Context,
    store: SharedStore,
    senders: Senders,
    settings: QueueSettings,
    shutdown: CancellationToken,
) -> Result<(), QueueError> {
    let stream = ensure_stream(&js, &settings).await?;
    let consumer = |name: &str, filter: &str, pending: usize| pull::Config {
        durable_name: Some(name.to_string()),
        filter_subject: filter.to_string(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_ack_pending: i64::try_from(pending).unwrap_or(i64::MAX),
        max_deliver: -1,
        ..Default::default()
    };
    let jobs = stream
        .create_consumer(consumer(
            subjects::PUSH_JOBS_CONSUMER,
            subjects::PUSH_JOBS,
            FANOUT_CONCURRENCY * 2,
        ))
        .await
        .map_err(|e| QueueError::Stream(e.to_string()))?;
    let sends = stream
        .create_consumer(consumer(
            subjects::PUSH_SENDS_CONSUMER,
            subjects::PUSH_SENDS,
            settings.concurrency,
        ))
        .await
        .map_err(|e| QueueError::Stream(e.to_string()))?;
    let concurrency = settings.concurrency.max(1);
    let worker = Arc::new(Worker {
        js,
        store,
        senders,
        settings,
    });
    let pull = |c: &jetstream::consumer::Consumer<pull::Config>, batch: usize| {
        let c = c.clone();
        async move {
            c.stream()
                .max_messages_per_batch(batch)
                .expires(PULL_EXPIRES)
                .messages()
                .await
                .map_err(|e| QueueError::Stream(e.to_string()))
        }
    };
    let job_messages = pull(&jobs, FANOUT_CONCURRENCY).await?;
    let send_messages = pull(&sends, concurrency).await?;
    tracing::info!(stream = subjects::PUSH_STREAM, "push worker started");
    let w = worker.clone();
    let fanout = job_messages.for_each_concurrent(FANOUT_CONCURRENCY, move |msg| {
        let w = w.clone();
        async move {
            match msg {
                Ok(msg) => w.fan_out(msg).await,
                Err(e) => tracing::warn!(error = %e, "push job pull failed"),
            }
        }
    });
    let w = worker.clone();
    let send = send_messages.for_each_concurrent(concurrency, move |msg| {
        let w = w.clone();
        async move {
            match msg {
                Ok(msg) => w.send(msg).await,
                Err(e) => tracing::warn!(error = %e, "push send pull failed"),
            }
        }
    });
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = fanout => tracing::warn!("push job pull ended"),
        () = send => tracing::warn!("push send pull ended"),
    }
    tracing::info!("push worker stopped");
    Ok(())
}

fn age(created_ms: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(created_ms))
}

impl Worker {
    /// Resolves a job's devices (at most [`MAX_DEVICES_PER_JOB`]).
    async fn devices(&self, r: &Recipient) -> Result<Vec<String>, crate::store::StoreError> {
        let mut ids: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut add = |id: String, ids: &mut Vec<String>| {
            if ids.len() < MAX_DEVICES_PER_JOB && seen.insert(id.clone()) {
                ids.push(id);
            }
        };
        for id in &r.devices {
            if self.store.device(id).await?.is_some() {
                add(id.clone(), &mut ids);
            }
        }
        for (owners, by_topic) in [(&r.users, false), (&r.topics, true)] {
            for owner in owners {
                let mut after = String::new();
                loop {
                    let page = if by_topic {
                        self.store.topic_devices(owner, &after, PAGE).await?
                    } else {
                        self.store.user_devices(owner, &after, PAGE).await?
                    };
                    let full = page.len() == PAGE;
                    if let Some(last) = page.last() {
                        after = last.id.clone();
                    }
                    for d in page {
                        add(d.id, &mut ids);
                    }
                    if !full || ids.len() >= MAX_DEVICES_PER_JOB {
                        break;
                    }
                }
            }
        }
        if ids.len() >= MAX_DEVICES_PER_JOB {
            tracing::warn!(
                max = MAX_DEVICES_PER_JOB,
                "a push job reached more devices than one job may; the rest left out"
            );
        }
        Ok(ids)
    }

    async fn fan_out(&self, msg: jetstream::Message) {
        let delivered = msg.info().map_or(1, |i| i.delivered);
        let Ok(job) = serde_json::from_slice::<Job>(&msg.payload) else {
            metrics::counter!(m::PUSH_JOBS_TOTAL, "result" => "invalid").increment(1);
            tracing::warn!("undecodable push job dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        if age(job.created_ms) > self.settings.max_age {
            metrics::counter!(m::PUSH_JOBS_TOTAL, "result" => "expired").increment(1);
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        let result = async {
            let ids = self
                .devices(&job.recipient)
                .await
                .map_err(|e| e.to_string())?;
            let publishes = ids.into_iter().map(|device| {
                let send = DeviceSend {
                    job: job.id.clone(),
                    device,
                    notification: job.notification.clone(),
                    created_ms: job.created_ms,
                };
                async move {
                    let id = format!("{}:{}", send.job, send.device);
                    let body = serde_json::to_vec(&send).map_err(|e| e.to_string())?;
                    publish(&self.js, subjects::PUSH_SENDS, &id, body)
                        .await
                        .map_err(|e| e.to_string())
                }
            });
            futures::stream::iter(publishes)
                .buffer_unordered(PUBLISH_CONCURRENCY)
                .collect::<Vec<Result<(), String>>>()
                .await
                .into_iter()
                .collect::<Result<(), String>>()
        }
        .await;
        match result {
            Ok(()) => {
                metrics::counter!(m::PUSH_JOBS_TOTAL, "result" => "fanned_out").increment(1);
                let _ = msg.ack().await;
            }
            Err(e) => {
                metrics::counter!(m::PUSH_JOBS_TOTAL, "result" => "retry").increment(1);
                let delay = backoff(&self.settings, delivered, None);
                tracing::warn!(error = %e, ?delay, "push job fan-out failed; retried");
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }

    async fn send(&self, msg: jetstream::Message) {
        let delivered = msg.info().map_or(1, |i| i.delivered);
        let Ok(send) = serde_json::from_slice::<DeviceSend>(&msg.payload) else {
            tracing::warn!("undecodable push send dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        let count = |provider: Provider, result: &'static str| {
            metrics::counter!(m::PUSH_SENDS_TOTAL, "provider" => provider.label(), "result" => result)
                .increment(1);
        };
        let device = match self.store.device(&send.device).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                // Removed since the fan-out: nothing to send to.
                let _ = msg.ack().await;
                return;
            }
            Err(e) => {
                let delay = backoff(&self.settings, delivered, None);
                tracing::warn!(error = %e, "push device read failed; retried");
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                return;
            }
        };
        if age(send.created_ms) > self.settings.max_age {
            count(device.provider, "expired");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        let Some((sender, limiter)) = self.senders.by_provider.get(&device.provider) else {
            count(device.provider, "no_sender");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        if let Some(limiter) = limiter {
            // While the bucket makes it wait, keep the message ours.
            let mut progress = tokio::time::interval(self.settings.ack_wait / 2);
            progress.tick().await;
            let ready = limiter.until_ready();
            tokio::pin!(ready);
            loop {
                tokio::select! {
                    () = &mut ready => break,
                    _ = progress.tick() => {
                        let _ = msg.ack_with(AckKind::Progress).await;
                    }
                }
            }
        }
        let started = Instant::now();
        let outcome = sender.send(&device, &send.notification).await;
        metrics::histogram!(m::PUSH_SEND_SECONDS, "provider" => device.provider.label())
            .record(started.elapsed().as_secs_f64());
        count(device.provider, outcome.label());
        match outcome {
            Outcome::Sent => {
                let _ = msg.ack().await;
            }
            Outcome::InvalidToken => {
                self.remove_invalid(&device).await;
                let _ = msg.ack().await;
            }
            Outcome::Retry(after, why) => {
                let delay = backoff(&self.settings, delivered, after);
                if age(send.created_ms) + delay > self.settings.max_age {
                    count(device.provider, "expired");
                    let _ = msg.ack_with(AckKind::Term).await;
                } else {
                    tracing::debug!(why, ?delay, "push send retried");
                    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                }
            }
            Outcome::Failed(why) => {
                tracing::warn!(why, provider = device.provider.label(), "push send failed");
                let _ = msg.ack_with(AckKind::Term).await;
            }
        }
    }

    /// Removes a device the provider called invalid, unless it was
    /// registered again with another token meanwhile.
    async fn remove_invalid(&self, sent_to: &Device) {
        match self.store.device(&sent_to.id).await {
            Ok(Some(d)) if d.token == sent_to.token => {
                if let Err(e) = self.store.remove_device(&d.id).await {
                    tracing::warn!(error = %e, "invalid push device not removed");
                    return;
                }
                metrics::counter!(m::PUSH_DEVICES_REMOVED_TOTAL, "provider" => d.provider.label())
                    .increment(1);
                tracing::info!(provider = d.provider.label(), "invalid push device removed");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "invalid push device not removed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let s = QueueSettings {
            rate_per_provider: None,
            max_age: Duration::from_secs(3600),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_messages: 10,
            concurrency: 1,
            replicas: 1,
            ack_wait: Duration::from_secs(30),
        };
        assert_eq!(backoff(&s, 1, None), Duration::from_secs(1));
        assert_eq!(backoff(&s, 2, None), Duration::from_secs(2));
        assert_eq!(backoff(&s, 4, None), Duration::from_secs(8));
        assert_eq!(backoff(&s, 30, None), Duration::from_secs(60));
        assert_eq!(
            backoff(&s, 1, Some(Duration::from_secs(9))),
            Duration::from_secs(9)
        );
    }
}
