//! The dispatcher: one durable pull consumer on the events stream that POSTs
//! each event to every endpoint, signed, retried with exponential backoff
//! until `webhook_max_age`, and acks it when every endpoint answered 2xx (or
//! when it is given up: counted in `herald_webhook_events_expired_total` and
//! logged).
//!
//! Order: events with one key (see [`super::Event::key`]) form a lane; a
//! lane's next event is sent only after the one before it succeeded or was
//! given up. Lanes run in parallel, at most `webhook_concurrency` at once.
//! Held events are bounded by the consumer's `max_ack_pending`
//! (`webhook_max_pending`): past it JetStream delivers no more until some
//! are acked, and the rest wait in the stream.
//!
//! Start: the consumer is deleted and created again, so the stream redelivers
//! every unacked event at once and in stream order (a dispatcher that died
//! with events in hand does not make the next one wait for `ack_wait`, nor
//! send a newer event of a lane before an older one); it also cuts off a
//! previous dispatcher still running somewhere (its acks and pulls fail). A
//! redelivery of an event still in hand (its `ack_wait` passed during a long
//! outage) is ignored.
//!
//! Knows nothing of who runs it: it runs until its stop token fires (the
//! writer runs it beside ingest partition 0).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::AckPolicy, consumer::pull};
use axum::http::{HeaderValue, Request, Uri, header};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Head, KEY_HEADER};
use crate::config::WebhookConfig;
use crate::metrics as m;

/// The durable consumer's name.
pub const CONSUMER: &str = "herald_webhooks";
/// JetStream redelivers an event not acked within this; the dispatcher
/// ignores redeliveries of events it still holds.
const ACK_WAIT: Duration = Duration::from_secs(60);
/// Pacing of (re)opening the consumer.
const OPEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// Bytes of an endpoint's answer read (and discarded, for keep-alive).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Idle pooled connections per endpoint host, and their idle time.
const MAX_IDLE_PER_HOST: usize = 64;
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

struct Ctx {
    cfg: WebhookConfig,
    endpoints: Vec<Uri>,
    secret: Vec<u8>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// An event in hand.
struct Held {
    msg: jetstream::Message,
    seq: u64,
    head: Head,
}

/// Per-key FIFO lanes of items identified by a sequence number: at most one
/// item per key is out at a time, the next one only after [`Lanes::done`].
/// Pure: no I/O, no time.
struct Lanes<T> {
    lanes: HashMap<String, Lane<T>>,
    /// Keys whose head may go out, in the order they became ready.
    ready: VecDeque<String>,
    /// Sequence numbers in hand (queued or out).
    held: HashSet<u64>,
}

struct Lane<T> {
    queue: VecDeque<(u64, T)>,
    busy: bool,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Self {
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            held: HashSet::new(),
        }
    }
}

impl<T> Lanes<T> {
    fn holds(&self, seq: u64) -> bool {
        self.held.contains(&seq)
    }

    /// Queues `item` behind its key's others; `false` (and nothing queued)
    /// if `seq` is already in hand.
    fn push(&mut self, key: String, seq: u64, item: T) -> bool {
        if !self.held.insert(seq) {
            return false;
        }
        let lane = self.lanes.entry(key.clone()).or_insert_with(|| Lane {
            queue: VecDeque::new(),
            busy: false,
        });
        let idle = !lane.busy && lane.queue.is_empty();
        lane.queue.push_back((seq, item));
        if idle {
            self.ready.push_back(key);
        }
        true
    }

    /// The next item that may go out, its lane now busy.
    fn next(&mut self) -> Option<(String, T)> {
        while let Some(key) = self.ready.pop_front() {
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            if let Some((_, item)) = lane.queue.pop_front() {
                lane.busy = true;
                return Some((key, item));
            }
        }
        None
    }

    /// The item `seq` of `key` is finished: its lane's next may go out.
    fn done(&mut self, key: &str, seq: u64) {
        self.held.remove(&seq);
        if let Some(lane) = self.lanes.get_mut(key) {
            lane.busy = false;
            if lane.queue.is_empty() {
                self.lanes.remove(key);
            } else {
                self.ready.push_back(key.to_string());
            }
        }
    }
}

/// Runs the dispatcher until `stop` fires; errors (NATS down, the consumer
/// gone) are retried inside.
pub async fn run(nats: async_nats::Client, cfg: WebhookConfig, stop: CancellationToken) {
    let endpoints: Vec<Uri> = cfg
        .endpoints
        .iter()
        .filter_map(|e| e.parse().ok())
        .collect();
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .pool_idle_timeout(IDLE_TIMEOUT)
        .build(crate::http_client::connector(cfg.ca_file.as_deref()));
    let ctx = Arc::new(Ctx {
        secret: cfg
            .secret
            .as_ref()
            .map(|s| s.expose().as_bytes().to_vec())
            .unwrap_or_default(),
        endpoints,
        client,
        cfg,
    });
    let js = jetstream::new(nats);
    tracing::info!(stream = %ctx.cfg.stream, "webhook dispatcher started");
    let mut fresh = true;
    let mut delay = OPEN_BACKOFF.0;
    let mut lanes: Lanes<Held> = Lanes::default();
    let mut running: JoinSet<(String, u64)> = JoinSet::new();
    while !stop.is_cancelled() {
        let mut messages = match open(&js, &ctx.cfg, fresh).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "webhook consumer not opened; retrying");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(OPEN_BACKOFF.1);
                continue;
            }
        };
        fresh = false;
        delay = OPEN_BACKOFF.0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok((key, seq)) = done {
                        lanes.done(&key, seq);
                    }
                }
                next = messages.next() => match next {
                    Some(Ok(msg)) => take(msg, &mut lanes).await,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "webhook pull error");
                        continue;
                    }
                    None => break,
                },
            }
            while running.len() < ctx.cfg.concurrency {
                let Some((key, h)) = lanes.next() else { break };
                running.spawn(deliver(ctx.clone(), key, h, stop.clone()));
            }
        }
    }
    running.shutdown().await;
    tracing::info!("webhook dispatcher stopped");
}

/// Puts a delivered message into its lane (or ignores a redelivery of one
/// in hand; terminates one that is not an event).
async fn take(msg: jetstream::Message, lanes: &mut Lanes<Held>) {
    let Ok(seq) = msg.info().map(|i| i.stream_sequence) else {
        return;
    };
    if lanes.holds(seq) {
        return;
    }
    let head: Head = match serde_json::from_slice(&msg.payload) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(seq, error = %e, "not a webhook event; dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let key = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(KEY_HEADER))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    lanes.push(key, seq, Held { msg, seq, head });
}

async fn open(
    js: &jetstream::Context,
    cfg: &WebhookConfig,
    fresh: bool,
) -> Result<pull::Stream, String> {
    let stream = js
        .get_stream(&cfg.stream)
        .await
        .map_err(|e| e.to_string())?;
    if fresh {
        // Unacked events come back at once, in order (see the module doc).
        let _ = stream.delete_consumer(CONSUMER).await;
    }
    let consumer = stream
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.to_string()),
                description: Some("Herald webhook dispatcher".into()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: cfg.max_pending,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let consumer: jetstream::consumer::PullConsumer = consumer;
    consumer
        .stream()
        .max_messages_per_batch(cfg.max_pending.clamp(1, 1000) as usize)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// Sends one event to every endpoint until all took it, it is too old, or
/// `stop` fires (then it stays unacked for the next dispatcher).
async fn deliver(ctx: Arc<Ctx>, key: String, h: Held, stop: CancellationToken) -> (String, u64) {
    let signature = super::signature(&ctx.secret, &h.msg.payload);
    let kind = h.head.kind;
    let mut pending: Vec<usize> = (0..ctx.endpoints.len()).collect();
    let mut delay = ctx.cfg.retry_initial;
    loop {
        let mut failed = Vec::new();
        for i in pending {
            if let Err(e) = post(&ctx, i, &h, &signature).await {
                tracing::debug!(id = %h.head.id, endpoint = i, error = %e, "webhook POST failed");
                failed.push(i);
            }
        }
        if failed.is_empty() {
            if let Err(e) = h.msg.double_ack().await {
                tracing::debug!(error = %e, "webhook ack failed; it may be sent again");
            }
            metrics::counter!(m::WEBHOOK_DELIVERED_TOTAL, "type" => kind.label()).increment(1);
            let age = super::now_ms().saturating_sub(h.head.time_ms);
            metrics::histogram!(m::WEBHOOK_DELIVERY_SECONDS).record(age as f64 / 1000.0);
            return (key, h.seq);
        }
        pending = failed;
        let age = Duration::from_millis(super::now_ms().saturating_sub(h.head.time_ms));
        if age >= ctx.cfg.max_age {
            metrics::counter!(m::WEBHOOK_EXPIRED_TOTAL, "type" => kind.label()).increment(1);
            tracing::warn!(id = %h.head.id, kind = kind.label(), age_s = age.as_secs(), "webhook event given up (webhook_max_age)");
            let _ = h.msg.ack_with(AckKind::Term).await;
            return (key, h.seq);
        }
        metrics::counter!(m::WEBHOOK_RETRIES_TOTAL).increment(1);
        let jitter = 0.8 + (uuid::Uuid::new_v4().as_u128() % 4001) as f64 / 10_000.0;
        let wait = delay
            .mul_f64(jitter)
            .min(ctx.cfg.max_age.saturating_sub(age));
        tokio::select! {
            _ = stop.cancelled() => return (key, h.seq),
            _ = tokio::time::sleep(wait) => {}
        }
        delay = (delay * 2).min(ctx.cfg.retry_max);
    }
}

#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("no answer within webhook_timeout")]
    Timeout,
    #[error("unreachable: {0}")]
    Unavailable(#[source] hyper_util::client::legacy::Error),
    #[error("answered HTTP {0}")]
    Status(axum::http::StatusCode),
    #[error("request: {0}")]
    Request(String),
}

async fn post(ctx: &Ctx, endpoint: usize, h: &Held, signature: &str) -> Result<(), PostError> {
    let started = Instant::now();
    let call = async {
        let mut request = Request::post(ctx.endpoints[endpoint].clone())
            .body(Full::new(h.msg.payload.clone()))
            .map_err(|e| PostError::Request(e.to_string()))?;
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in [
            (super::ID_HTTP_HEADER, h.head.id.as_str()),
            (super::TYPE_HTTP_HEADER, h.head.kind.label()),
            (super::SIGNATURE_HTTP_HEADER, signature),
        ] {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
        let response = ctx
            .client
            .request(request)
            .await
            .map_err(PostError::Unavailable)?;
        let status = response.status();
        let _ = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(PostError::Status(status))
        }
    };
    let outcome = tokio::time::timeout(ctx.cfg.timeout, call)
        .await
        .unwrap_or(Err(PostError::Timeout));
    metrics::histogram!(m::WEBHOOK_REQUEST_SECONDS).record(started.elapsed().as_secs_f64());
    outcome
}

#[cfg(test)]
mod tests {
    use super::Lanes;

    #[test]
    fn one_item_per_key_out_at_a_time_in_order() {
        let mut l = Lanes::default();
        assert!(l.push("alice".into(), 1, "a1"));
        assert!(l.push("bob".into(), 2, "b1"));
        assert!(l.push("alice".into(), 3, "a2"));
        // A redelivery of what is in hand is refused.
        assert!(!l.push("alice".into(), 1, "a1 again"));
        assert_eq!(l.next(), Some(("alice".into(), "a1")));
        assert_eq!(l.next(), Some(("bob".into(), "b1")));
        // a2 waits for a1.
        assert_eq!(l.next(), None);
        l.done("bob", 2);
        assert_eq!(l.next(), None);
        l.done("alice", 1);
        assert_eq!(l.next(), Some(("alice".into(), "a2")));
        assert!(l.holds(3) && !l.holds(1));
        // Pushed while its lane is busy: after it, not before.
        assert!(l.push("alice".into(), 4, "a3"));
        assert_eq!(l.next(), None);
        l.done("alice", 3);
        assert_eq!(l.next(), Some(("alice".into(), "a3")));
        l.done("alice", 4);
        assert!(l.lanes.is_empty() && l.held.is_empty() && l.next().is_none());
        // A finished sequence may come again (a redelivery after the ack).
        assert!(l.push("alice".into(), 1, "a1 late"));
    }
}
