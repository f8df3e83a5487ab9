//! The durable pull consumer of one ingest partition and the message stream
//! pulled from it.
//!
//! Knows the consumer's configuration and how messages are pulled; knows
//! nothing of what a message means.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::pull};

use super::WriterSettings;
use crate::bus::subjects;

/// How long one pull request waits on the server. Messages are delivered as
/// soon as they arrive, so this bounds only how often an idle partition
/// re-issues its pull request, not latency.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Idle heartbeat the server sends on a waiting pull request; a missed one is
/// reported as an error (e.g. during a NATS outage) and the pull resumes.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(super) enum OpenError {
    #[error("ingest stream: {0}")]
    Stream(String),
    #[error("consumer: {0}")]
    Consumer(String),
    #[error("pull: {0}")]
    Pull(String),
}

/// The durable consumer of `partition`: explicit ack, bounded unacked
/// messages, filter on the partition's subject.
///
/// Explicit ack, one per message, because the ingest stream is a work queue
/// and nats-server refuses `AckPolicy::All` there ("workqueue stream requires
/// explicit ack", 10098); a stream's retention cannot change in place
/// (10052), and interest retention would drop a publish that no consumer is
/// there to see. BENCHMARKS.md ("Instructions per publish") has the figures.
pub(super) fn config(partition: u32, settings: &WriterSettings) -> pull::Config {
    pull::Config {
        durable_name: Some(subjects::writer_consumer(partition)),
        description: Some(format!("Herald writer, ingest partition {partition}")),
        filter_subject: subjects::ingest_subject(partition),
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_ack_pending: settings.max_ack_pending,
        ..Default::default()
    }
}

/// Creates the partition's consumer, or updates it to the current settings
/// (`ack_wait` and `max_ack_pending` are editable), and starts pulling.
///
/// The stream prefetches up to `batch_size` messages and asks for more when
/// half are taken, so the next batch is usually waiting when a commit ends.
/// Everything it holds is bounded by the consumer's `max_ack_pending`.
pub(super) async fn open(
    js: &jetstream::Context,
    partition: u32,
    settings: &WriterSettings,
) -> Result<pull::Stream, OpenError> {
    let stream = js
        .get_stream(subjects::INGEST_STREAM)
        .await
        .map_err(|e| OpenError::Stream(e.to_string()))?;
    let consumer = stream
        .create_consumer(config(partition, settings))
        .await
        .map_err(|e| OpenError::Consumer(e.to_string()))?;
    consumer
        .stream()
        .max_messages_per_batch(settings.batch_size)
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(|e| OpenError::Pull(e.to_string()))
}
