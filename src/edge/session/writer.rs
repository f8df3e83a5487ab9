//! The writer task of a connection: drains its outbox into the socket.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::SinkExt;
use futures::stream::SplitSink;

use super::CLIENT_CLOSED;
use crate::edge::outbox::{Close, Outbox};
use crate::metrics as m;
use crate::protocol::{Disconnect, Encoding};

/// How long the writer spends on the last frames of a closing connection.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Drains the outbox into the socket until the connection closes: one
/// WebSocket frame per drain (text for JSON, binary for Protobuf), then on close the Close frame carrying the
/// disconnect code and reason. As in Centrifugo's WebSocket transport, the
/// Close frame is the only place a disconnect is said: no `disconnect` push
/// before it (SDKs that read such a push take the connection as closed
/// without its code, and reconnect even after a terminal one). Each write records its frames, bytes and the
/// delivery latency of its oldest publication.
///
/// A write blocked by a client that stopped reading is abandoned as soon as
/// the connection is closed as slow (3008): the socket is dropped, so a
/// stalled peer holds neither memory nor a task. Other closes give a blocked
/// write `CLOSE_WRITE_TIMEOUT` to finish.
pub(super) async fn write_loop(mut sink: SplitSink<WebSocket, Message>, outbox: Arc<Outbox>) {
    loop {
        let batch = outbox.next_batch().await;
        if !batch.frame.is_empty() {
            let len = batch.frame.len() as u64;
            let message = match outbox.encoding() {
                Encoding::Protobuf => Message::Binary(batch.frame),
                Encoding::Json => {
                    let Ok(text) = Utf8Bytes::try_from(batch.frame) else {
                        tracing::error!("outbound frame is not UTF-8");
                        outbox.close(Disconnect::SERVER_ERROR);
                        continue;
                    };
                    Message::Text(text)
                }
            };
            let send = sink.send(message);
            tokio::pin!(send);
            let sent = tokio::select! {
                r = &mut send => r.is_ok(),
                _ = outbox.closing() => {
                    if outbox.close_reason() == Some(Close::Named(Disconnect::SLOW)) {
                        metrics::counter!(m::DISCONNECTS_TOTAL, "code" => "3008").increment(1);
                        return;
                    }
                    matches!(tokio::time::timeout(CLOSE_WRITE_TIMEOUT, &mut send).await, Ok(Ok(())))
                }
            };
            if !sent {
                outbox.close(Disconnect::WRITE_ERROR);
                return;
            }
            let io = m::edge_io();
            io.messages_out.increment(batch.frames as u64);
            io.bytes_out.increment(len);
            if let Some(committed_us) = batch.committed_us {
                io.delivery.record(m::seconds_since(committed_us));
            }
        }
        if let Some(d) = batch.close {
            // Custom codes come from the backend: one label keeps the set closed.
            let label = match &d {
                Close::Named(n) => n.code.to_string(),
                Close::Custom { .. } => "custom".to_string(),
            };
            metrics::counter!(m::DISCONNECTS_TOTAL, "code" => label).increment(1);
            if d != Close::Named(CLIENT_CLOSED) {
                let frame = CloseFrame {
                    code: d.code(),
                    reason: d.reason().into(),
                };
                let _ = tokio::time::timeout(
                    CLOSE_WRITE_TIMEOUT,
                    sink.send(Message::Close(Some(frame))),
                )
                .await;
            }
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.close()).await;
            return;
        }
    }
}
