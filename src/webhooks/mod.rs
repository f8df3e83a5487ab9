//! Durable event webhooks: what happened to connections, subscriptions, users
//! and (per namespace) publications, POSTed to the application backend at
//! least once, in order per user.
//!
//! The path of one event:
//! - **emit** ([`emit`]): the edge (connected, disconnected, subscribed,
//!   unsubscribed, user online / offline) hands the event to a bounded queue
//!   without waiting ([`Emitter`]; full: dropped and counted); one task per
//!   process publishes the queue to the events stream (JetStream,
//!   `Nats-Msg-Id` = the event id). The writer publishes `published` events
//!   itself, after the commit and before it acks the ingest messages
//!   ([`emit::PublishedEvents`]), so a committed publication's event is in the
//!   stream or counted as dropped.
//! - **store**: the events stream ([`ensure_stream`]), work-queue retention:
//!   an event leaves it when the dispatcher acks it (delivered, or given up).
//! - **dispatch** ([`dispatch`]): one durable consumer, run by the writer
//!   instance that holds ingest partition 0 (so exactly one dispatcher runs,
//!   and it fails over with the partition). Each event goes to every endpoint
//!   with the HMAC-SHA256 signature of its exact body; a failed POST is
//!   retried with exponential backoff until `webhook_max_age`, then given up
//!   (counted, logged). Events of one key (the user; the channel for
//!   `published`; the client for anonymous connections) go one at a time in
//!   stream order; different keys in parallel, bounded.
//!
//! Knows nothing of sessions, the registry or the writer's batches: callers
//! hand it plain values, and the edge's presence answers "online elsewhere"
//! through [`StatusSource`].

pub mod dispatch;
pub mod emit;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

pub use emit::{Emitter, PublishedEvents, StatusSource, Unsubscribed};

use crate::config::WebhookConfig;

/// Header of a stream message carrying the event's ordering key.
pub const KEY_HEADER: &str = "Herald-Event-Key";
/// HTTP headers of a delivery.
pub const ID_HTTP_HEADER: &str = "x-herald-event-id";
pub const TYPE_HTTP_HEADER: &str = "x-herald-event-type";
pub const SIGNATURE_HTTP_HEADER: &str = "x-herald-signature";
/// How long JetStream remembers an event id against a second publish.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Connected,
    Disconnected,
    Subscribed,
    Unsubscribed,
    UserOnline,
    UserOffline,
    Published,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Connected,
        Kind::Disconnected,
        Kind::Subscribed,
        Kind::Unsubscribed,
        Kind::UserOnline,
        Kind::UserOffline,
        Kind::Published,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Connected => "connected",
            Kind::Disconnected => "disconnected",
            Kind::Subscribed => "subscribed",
            Kind::Unsubscribed => "unsubscribed",
            Kind::UserOnline => "user_online",
            Kind::UserOffline => "user_offline",
            Kind::Published => "published",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.label() == s)
    }
}

/// One event, as POSTed (the body is this object's JSON, byte for byte as it
/// sits in the stream; the signature covers exactly those bytes).
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    /// Unique per event, stable across retries and redeliveries: the
    /// idempotency id (also the `X-Herald-Event-Id` header).
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Unix milliseconds when it happened (for `published`, when committed).
    pub time_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
    /// `disconnected`: the disconnect code and reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// `published`: its place in the channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<&'a str>,
    /// `published`: the data; `connected`, `published`: the `info`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
    /// `user_offline`: unix ms of the disconnect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

impl<'a> Event<'a> {
    /// An event with a fresh random id, now.
    pub fn new(kind: Kind) -> Self {
        Self::with_id(kind, uuid::Uuid::new_v4().to_string(), now_ms())
    }

    pub fn with_id(kind: Kind, id: String, time_ms: u64) -> Self {
        Self {
            id,
            kind,
            time_ms,
            user: None,
            client: None,
            channel: None,
            code: None,
            reason: None,
            offset: None,
            epoch: None,
            data: None,
            info: None,
            last_seen: None,
        }
    }

    /// The ordering key: the user; the client for an anonymous connection;
    /// the channel for `published`.
    pub fn key(&self) -> &str {
        match (self.kind, self.user, self.client, self.channel) {
            (Kind::Published, _, _, Some(ch)) => ch,
            (_, Some(u), _, _) if !u.is_empty() => u,
            (_, _, Some(c), _) => c,
            _ => "",
        }
    }
}

/// What the writer role does for webhooks: emit `published` events after
/// each commit, and run the dispatcher beside ingest partition 0.
pub struct WriterHooks {
    published: Option<PublishedEvents>,
    nats: async_nats::Client,
    cfg: WebhookConfig,
}

impl WriterHooks {
    /// `None` when webhooks are off.
    pub fn new(
        nats: async_nats::Client,
        cfg: &WebhookConfig,
        channels: &crate::config::ChannelsConfig,
    ) -> Option<Self> {
        cfg.enabled().then(|| Self {
            published: PublishedEvents::new(nats.clone(), cfg, channels),
            nats,
            cfg: cfg.clone(),
        })
    }

    /// The `published` events of a committed batch.
    pub async fn published(&self, appends: &[crate::store::ChannelAppend], committed_ms: u64) {
        if let Some(p) = &self.published {
            p.published(appends, committed_ms).await;
        }
    }

    /// The dispatcher, until `stop`.
    pub fn dispatcher(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        dispatch::run(self.nats.clone(), self.cfg.clone(), stop)
    }
}

/// The part of a stored event the dispatcher reads.
#[derive(Debug, Deserialize)]
pub struct Head {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub time_ms: u64,
}

/// A `published` event's id: derived from (channel, epoch, offset), so the
/// writer emitting it again after a retry makes the same event.
pub fn publication_id(channel: &str, epoch: &str, offset: u64) -> String {
    let mut h = Sha256::new();
    h.update(channel.as_bytes());
    h.update([0]);
    h.update(epoch.as_bytes());
    h.update([0]);
    h.update(offset.to_be_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid().to_string()
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The subject of an event of `kind` under the configured prefix.
pub fn subject(cfg: &WebhookConfig, kind: Kind) -> String {
    format!("{}.{}", cfg.subject, kind.label())
}

/// An event encoded for the stream.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub kind: Kind,
    pub id: String,
    pub key: String,
    pub body: Bytes,
}

impl Encoded {
    pub fn new(e: &Event<'_>) -> Option<Self> {
        let body = serde_json::to_vec(e).ok()?;
        Some(Self {
            kind: e.kind,
            id: e.id.clone(),
            key: e.key().to_string(),
            body: body.into(),
        })
    }

    fn headers(&self) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", self.id.as_str());
        h.insert(KEY_HEADER, self.key.as_str());
        h
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Creates the events stream if missing and brings its replicas, age and
/// size bounds to the configuration.
///
/// Work-queue retention: an event leaves when the dispatcher acks it.
/// `DiscardPolicy::New`: a full stream (`webhook_stream_max_bytes`) refuses
/// new events (counted as dropped where they are emitted) rather than
/// deleting undelivered ones; `max_age` deletes what the dispatcher has not
/// acked by then (set it above `webhook_max_age`).
pub async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &WebhookConfig,
) -> Result<stream::Stream, String> {
    let want = stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![format!("{}.>", cfg.subject)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        max_bytes: cfg.stream_max_bytes,
        max_age: cfg.stream_max_age,
        duplicate_window: DUPLICATE_WINDOW.min(cfg.stream_max_age),
        num_replicas: cfg.stream_replicas,
        description: Some("Herald webhook events waiting for delivery".into()),
        ..Default::default()
    };
    let mut stream = js
        .get_or_create_stream(want.clone())
        .await
        .map_err(|e| e.to_string())?;
    let info = stream.info().await.map_err(|e| e.to_string())?;
    let have = &info.config;
    if have.num_replicas != want.num_replicas
        || have.max_age != want.max_age
        || have.max_bytes != want.max_bytes
    {
        let mut config = have.clone();
        config.num_replicas = want.num_replicas;
        config.max_age = want.max_age;
        config.max_bytes = want.max_bytes;
        config.duplicate_window = want.duplicate_window;
        tracing::info!(stream = %cfg.stream, "updating the webhook events stream's bounds");
        js.update_stream(config).await.map_err(|e| e.to_string())?;
        stream = js
            .get_stream(&cfg.stream)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn publication_ids_are_stable_and_distinct() {
        let a = publication_id("news", "e1", 7);
        assert_eq!(a, publication_id("news", "e1", 7));
        assert_ne!(a, publication_id("news", "e1", 8));
        assert_ne!(a, publication_id("news", "e2", 7));
        assert_ne!(publication_id("ab", "c", 1), publication_id("a", "bc", 1));
    }

    #[test]
    fn keys_and_body() {
        let mut e = Event::with_id(Kind::Connected, "i".into(), 5);
        e.user = Some("alice");
        e.client = Some("c1");
        assert_eq!(e.key(), "alice");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"id":"i","type":"connected","time_ms":5,"user":"alice","client":"c1"}"#
        );
        e.user = Some("");
        assert_eq!(e.key(), "c1");
        let mut p = Event::with_id(Kind::Published, "p".into(), 1);
        p.channel = Some("news");
        p.user = Some("bob");
        assert_eq!(p.key(), "news");
        let head: Head = serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!((head.kind, head.time_ms), (Kind::Published, 1));
        assert!(Kind::ALL.iter().all(|k| Kind::parse(k.label()) == Some(*k)));
        let labels: Vec<&str> = Kind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels, crate::config::WEBHOOK_EVENT_TYPES);
        assert_eq!(labels, crate::metrics::labels::WEBHOOK_TYPES);
    }
}
