//! The backlog of a partition this process runs: its durable consumer's
//! pending (not yet delivered) and ack-pending (delivered, not acked) counts,
//! polled from JetStream every [`POLL_EVERY`] into
//! `herald_writer_consumer_pending_messages{partition}` and
//! `herald_writer_consumer_ack_pending_messages{partition}`.
//!
//! A [`Poll`] lives as long as the partition's task; when it is dropped the
//! poller stops and sets both gauges to 0, so a partition now owned by
//! another writer is reported only there.
//!
//! Knows the consumer's name, nothing of what the partition task does.

use std::time::Duration;

use async_nats::jetstream;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::bus::subjects;
use crate::metrics as m;

/// How often the consumer's counts are read (one JetStream request each).
const POLL_EVERY: Duration = Duration::from_secs(5);

/// The poller of one partition; stops it when dropped.
pub(super) struct Poll {
    _stop: DropGuard,
}

impl Poll {
    pub(super) fn start(js: jetstream::Context, partition: u32) -> Self {
        let stop = CancellationToken::new();
        tokio::spawn(run(js, partition, stop.clone()));
        Self {
            _stop: stop.drop_guard(),
        }
    }
}

async fn run(js: jetstream::Context, partition: u32, stop: CancellationToken) {
    let label = partition.to_string();
    let pending = metrics::gauge!(m::WRITER_CONSUMER_PENDING, "partition" => label.clone());
    let ack_pending = metrics::gauge!(m::WRITER_CONSUMER_ACK_PENDING, "partition" => label);
    let consumer = subjects::writer_consumer(partition);
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let info = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            info = read(&js, &consumer) => info,
        };
        match info {
            Ok(info) => {
                pending.set(info.num_pending as f64);
                ack_pending.set(info.num_ack_pending as f64);
            }
            // The consumer may not exist yet (its task creates it), or NATS
            // is down: keep the last figures until the next poll.
            Err(error) => tracing::debug!(partition, %error, "consumer info not read"),
        }
    }
    pending.set(0.0);
    ack_pending.set(0.0);
}

async fn read(
    js: &jetstream::Context,
    consumer: &str,
) -> Result<jetstream::consumer::Info, String> {
    let stream = js
        .get_stream_no_info(subjects::INGEST_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .consumer_info(consumer)
        .await
        .map_err(|e| e.to_string())
}
