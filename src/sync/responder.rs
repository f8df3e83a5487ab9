//! The NATS side of sync: a queue subscription on `subjects::SYNC` (group
//! `subjects::SYNC_QUEUE`, so each request reaches one instance), each request
//! answered in its own task with a JSON `SyncReply`.
//!
//! At most `concurrency` requests are handled at once; past that the loop
//! waits for a slot before taking the next message (requests queue in the
//! subscription, none is dropped). A request that cannot be decoded is
//! answered with a `bad_request` error when it has a reply subject. On
//! shutdown the subscription is drained (messages NATS already sent us are
//! still answered) and the loop returns when every request in hand is answered.
//!
//! Knows the wire format, not the store.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::wire::{Page, SyncReply, SyncRequest};
use super::{ReadError, SyncService};
use crate::bus::subjects;
use crate::metrics;
use crate::store::{Direction, ReadRange};

const SOURCE: &str = "nats";

/// `SyncReply` with a borrowed page: a coalesced page is shared, not cloned.
/// Serializes exactly as `SyncReply::Page`.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum PageReply<'a> {
    Page(&'a Page),
}

fn error_reply(kind: &str, message: String) -> SyncReply {
    SyncReply::Error {
        kind: kind.to_string(),
        message,
    }
}

fn to_bytes<T: Serialize>(reply: &T) -> Bytes {
    match serde_json::to_vec(reply) {
        Ok(v) => Bytes::from(v),
        // Serializing these plain structs cannot fail; answer something the
        // client decodes rather than nothing.
        Err(_) => {
            Bytes::from_static(br#"{"error":{"kind":"internal","message":"encoding failed"}}"#)
        }
    }
}

/// The reply to one request payload and its metrics result label.
async fn answer(service: &SyncService, payload: &[u8]) -> (Bytes, &'static str) {
    let request: SyncRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            let reply = error_reply("bad_request", format!("undecodable request: {e}"));
            return (to_bytes(&reply), "bad_request");
        }
    };
    let failed = |e: ReadError| {
        (
            to_bytes(&error_reply(e.kind(), e.to_string())),
            e.result_label(),
        )
    };
    let kind = match &request {
        SyncRequest::Read { .. } => "read",
        SyncRequest::Idempotency { .. } => "idempotency",
        SyncRequest::Im(_) => "im",
        SyncRequest::Device(_) => "device",
    };
    tracing::Span::current().record("request", kind);
    match request {
        SyncRequest::Read {
            channel,
            after,
            before,
            limit,
            backward,
        } => {
            let range = ReadRange {
                after,
                before,
                limit,
                direction: if backward {
                    Direction::Backward
                } else {
                    Direction::Forward
                },
            };
            match service.read(&channel, range).await {
                Ok(page) => (to_bytes(&PageReply::Page(&page.page)), "ok"),
                Err(e) => failed(e),
            }
        }
        SyncRequest::Im(req) => match service.im(req).await {
            Ok(reply) => (to_bytes(&reply), "ok"),
            Err(e) => failed(e),
        },
        SyncRequest::Device(req) => match service.device(req).await {
            Ok(reply) => (to_bytes(&reply), "ok"),
            Err(e) => failed(e),
        },
        SyncRequest::Idempotency { channel, key } => {
            match service.idempotency(&channel, &key).await {
                Ok((offset, epoch)) => (to_bytes(&SyncReply::Idempotency { offset, epoch }), "ok"),
                Err(e) => failed(e),
            }
        }
    }
}

async fn handle(
    service: Arc<SyncService>,
    client: async_nats::Client,
    message: async_nats::Message,
) {
    let started = Instant::now();
    let Some(reply_to) = message.reply else {
        tracing::debug!("sync request without a reply subject ignored");
        return;
    };
    let (body, result) = answer(&service, &message.payload).await;
    tracing::Span::current().record("result", result);
    if let Err(e) = client.publish(reply_to, body).await {
        ::metrics::counter!(metrics::NATS_PUBLISH_ERRORS_TOTAL, "kind" => "reply").increment(1);
        tracing::warn!(error = %e, "sync reply not sent");
    }
    ::metrics::counter!(metrics::SYNC_REQUESTS_TOTAL, "source" => SOURCE, "result" => result)
        .increment(1);
    ::metrics::histogram!(metrics::SYNC_SECONDS, "source" => SOURCE)
        .record(started.elapsed().as_secs_f64());
}

pub(super) async fn serve(
    service: Arc<SyncService>,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = client
        .queue_subscribe(subjects::SYNC, subjects::SYNC_QUEUE.to_string())
        .await?;
    service.set_ready(true);
    tracing::info!(
        subject = subjects::SYNC,
        queue = subjects::SYNC_QUEUE,
        "sync responder started"
    );
    // Permits are held by request tasks and returned when they finish.
    let slots = Arc::new(Semaphore::new(service.settings().concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut draining = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                service.set_ready(false);
                if let Err(e) = requests.drain().await {
                    tracing::warn!(error = %e, "sync subscription not drained; stopping");
                    break;
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            message = requests.next() => {
                let Some(message) = message else { break };
                let Ok(permit) = slots.clone().acquire_owned().await else { break };
                let (service, client) = (service.clone(), client.clone());
                let span = tracing::debug_span!(
                    "sync_request",
                    source = SOURCE,
                    request = tracing::field::Empty,
                    result = tracing::field::Empty
                );
                tasks.spawn(
                    async move {
                        handle(service, client, message).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        }
    }
    service.set_ready(false);
    while tasks.join_next().await.is_some() {}
    let _ = client.flush().await;
    tracing::info!("sync responder stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    #[test]
    fn borrowed_page_reply_decodes_as_sync_reply() {
        let page = Page {
            publications: vec![RawValue::from_string(r#"{"data":1,"offset":1}"#.into()).unwrap()],
            epoch: "e".into(),
            head: 1,
            first_available: 1,
        };
        let bytes = to_bytes(&PageReply::Page(&page));
        match serde_json::from_slice::<SyncReply>(&bytes).unwrap() {
            SyncReply::Page(p) => {
                assert_eq!(p.publications[0].get(), r#"{"data":1,"offset":1}"#);
                assert_eq!((p.epoch.as_str(), p.head, p.first_available), ("e", 1, 1));
            }
            other => panic!("{other:?}"),
        }
    }
}
