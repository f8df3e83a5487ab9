//! The writer's side of the data path, driven by hand: the ingest stream,
//! raw ingest messages published the way the publisher does (`Nats-Msg-Id`
//! and `Herald-Reply` headers), the writer's replies collected from NATS, and
//! the embedded store read back.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use herald::bus::ingest::{IngestMessage, StoredBatch, WriterReply, ensure_stream};
use herald::bus::subjects;
use herald::config::IngestConfig;
use herald::store::embedded::EmbeddedStore;
use herald::store::{Direction, ReadRange, SharedStore, StoreOptions, StoredPublication};
use serde_json::Value;

use super::eventually;

/// How long a test waits for writer replies.
pub const REPLY_LIMIT: Duration = Duration::from_secs(20);

/// Creates the ingest stream with `partitions` partitions.
pub async fn stream(client: &async_nats::Client, partitions: u32) -> jetstream::Context {
    let js = jetstream::new(client.clone());
    ensure_stream(
        &js,
        &IngestConfig {
            partitions,
            duplicate_window: Duration::from_secs(120),
            max_bytes: 64 << 20,
            max_ack_pending: 1024,
            replicas: 1,
            format: Default::default(),
        },
    )
    .await
    .expect("ingest stream");
    js
}

pub fn open_store(dir: &Path) -> SharedStore {
    Arc::new(
        EmbeddedStore::open(
            dir,
            StoreOptions {
                idempotency_retention: Duration::from_secs(24 * 3600),
            },
        )
        .expect("open the embedded store"),
    )
}

/// Publishes one ingest message the way the publisher does; `msg_id`
/// overrides the `Nats-Msg-Id` derived from (channel, key).
pub async fn publish(
    js: &jetstream::Context,
    partitions: u32,
    channel: &str,
    key: &str,
    data: Value,
    reply: &str,
    msg_id: Option<&str>,
) -> jetstream::context::PublishAckFuture {
    let body = IngestMessage::encode(channel, key, data.to_string().as_bytes(), None)
        .expect("an encodable ingest message");
    publish_raw(
        js,
        partitions,
        channel,
        body,
        reply,
        msg_id.map_or_else(|| subjects::message_id(channel, key), str::to_string),
    )
    .await
}

pub async fn publish_raw(
    js: &jetstream::Context,
    partitions: u32,
    channel: &str,
    payload: Bytes,
    reply: &str,
    msg_id: String,
) -> jetstream::context::PublishAckFuture {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id.as_str());
    headers.insert(subjects::REPLY_HEADER, reply);
    let subject = subjects::ingest_subject(subjects::partition_of(channel, partitions));
    js.publish_with_headers(subject, headers, payload)
        .await
        .expect("jetstream publish")
}

/// Collects writer replies by reply subject (a batch's by the subject each
/// publication waited on). A subject answered twice with different replies is
/// recorded as a mismatch.
#[derive(Clone, Default)]
pub struct Replies {
    map: Arc<Mutex<HashMap<String, WriterReply>>>,
    mismatches: Arc<Mutex<Vec<(String, WriterReply, WriterReply)>>>,
    messages: Arc<Mutex<usize>>,
}

impl Replies {
    pub async fn listen(client: &async_nats::Client, prefix: &str) -> Self {
        let replies = Self::default();
        let mut sub = client
            .subscribe(format!("{prefix}.>"))
            .await
            .expect("subscribe replies");
        let (map, mismatches, messages) = (
            replies.map.clone(),
            replies.mismatches.clone(),
            replies.messages.clone(),
        );
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                *messages.lock().unwrap() += 1;
                // A batch (`<inbox>.b`) is recorded as the replies it holds,
                // each under `<inbox>.<token>`.
                let answers = match msg.subject.strip_suffix(".b") {
                    Some(inbox) => StoredBatch::decode(&msg.payload)
                        .expect("a batch of writer replies")
                        .into_iter()
                        .map(|(token, offset, epoch)| {
                            let stored = WriterReply::Stored {
                                offset,
                                epoch: epoch.to_string(),
                            };
                            (format!("{inbox}.{token}"), stored)
                        })
                        .collect(),
                    None => vec![(
                        msg.subject.to_string(),
                        serde_json::from_slice(&msg.payload).expect("writer reply JSON"),
                    )],
                };
                for (subject, reply) in answers {
                    let previous = map.lock().unwrap().insert(subject.clone(), reply.clone());
                    if let Some(previous) = previous.filter(|p| *p != reply) {
                        mismatches.lock().unwrap().push((subject, previous, reply));
                    }
                }
            }
        });
        replies
    }

    /// NATS messages received: one per reply, or one per batch of them.
    pub fn messages(&self) -> usize {
        *self.messages.lock().unwrap()
    }

    pub fn get(&self, subject: &str) -> Option<WriterReply> {
        self.map.lock().unwrap().get(subject).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    pub fn mismatches(&self) -> Vec<(String, WriterReply, WriterReply)> {
        self.mismatches.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize) -> HashMap<String, WriterReply> {
        let map = self.map.clone();
        eventually(&format!("{n} writer replies"), REPLY_LIMIT, || {
            let map = map.clone();
            async move {
                let m = map.lock().unwrap();
                (m.len() >= n).then(|| m.clone())
            }
        })
        .await
    }

    pub async fn stored(&self, subject: &str) -> (u64, String) {
        let reply = eventually(&format!("a reply on {subject}"), REPLY_LIMIT, || {
            let reply = self.get(subject);
            async move { reply }
        })
        .await;
        match reply {
            WriterReply::Stored { offset, epoch } => (offset, epoch),
            other => panic!("expected Stored on {subject}, got {other:?}"),
        }
    }
}

/// A channel's whole history, in offset order.
pub async fn history(store: &SharedStore, channel: &str) -> Vec<StoredPublication> {
    store
        .read(
            channel,
            ReadRange {
                after: 0,
                before: None,
                limit: 100_000,
                direction: Direction::Forward,
            },
        )
        .await
        .expect("read history")
}

pub fn data_of(p: &StoredPublication) -> Value {
    serde_json::from_slice(&p.data).expect("stored data is JSON")
}

pub fn offsets(pubs: &[StoredPublication]) -> Vec<u64> {
    pubs.iter().map(|p| p.offset).collect()
}

/// A writer (`writer::run`) on a task of its own, stopped on demand.
pub struct Running {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), herald::writer::WriterError>>,
}

impl Running {
    pub fn start(
        client: &async_nats::Client,
        store: &SharedStore,
        settings: herald::writer::WriterSettings,
    ) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(herald::writer::run(
            client.clone(),
            store.clone(),
            settings,
            stop.clone(),
        ));
        Self { stop, task }
    }

    /// Stops the writer and checks it returned `Ok` within [`REPLY_LIMIT`].
    pub async fn stop(self) {
        self.stop.cancel();
        let result = tokio::time::timeout(REPLY_LIMIT, self.task)
            .await
            .expect("writer stops in time")
            .expect("writer task");
        assert!(result.is_ok(), "writer returned {result:?}");
    }
}
