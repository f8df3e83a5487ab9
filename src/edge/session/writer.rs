//! The writer task of a connection: drains its outbox into the WebSocket
//! (`write_loop`) or into a streaming HTTP response body (`stream_loop`, for
//! HTTP-streaming and SSE), and says the disconnect as the transport does.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use futures::stream::SplitSink;
use tokio::sync::mpsc;

use super::CLIENT_CLOSED;
use crate::edge::outbox::{Close, Outbox};
use crate::metrics as m;
use crate::protocol::{Disconnect, Encoding, Push, Reply};

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
///
/// `uni`: the unidirectional WebSocket, whose JSON frames carry pushes only
/// (`uni_batch`), and whose disconnect is said both in a `disconnect` push
/// and in the Close frame, as Centrifugo's.
pub(in crate::edge) async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    outbox: Arc<Outbox>,
    uni: bool,
) {
    loop {
        let batch = outbox.next_batch().await;
        let frame = if uni {
            uni_batch(&batch.frame)
        } else {
            batch.frame.clone()
        };
        if !frame.is_empty() {
            let len = frame.len() as u64;
            let message = match outbox.encoding() {
                Encoding::Protobuf => Message::Binary(frame),
                Encoding::Json => {
                    let Ok(text) = Utf8Bytes::try_from(frame) else {
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
            record_write(batch.frames, len, batch.committed_us);
        }
        if let Some(d) = batch.close {
            count_close(&d);
            if d != Close::Named(CLIENT_CLOSED) {
                if uni {
                    let push = Reply::push(Push::disconnect(d.code(), d.reason()));
                    let said = uni_batch(&crate::protocol::encode_reply(&push));
                    if let Ok(text) = Utf8Bytes::try_from(said) {
                        let _ = tokio::time::timeout(
                            CLOSE_WRITE_TIMEOUT,
                            sink.send(Message::Text(text)),
                        )
                        .await;
                    }
                }
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

/// How a stream transport frames what the outbox holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::edge) enum StreamFormat {
    /// HTTP-streaming: JSON replies one per line, or length-delimited
    /// Protobuf replies back to back.
    HttpStream,
    /// Server-sent events: one `data:` event per JSON reply.
    Sse,
    /// Unidirectional HTTP-streaming: one JSON push per line.
    UniHttpStream,
    /// Unidirectional SSE: one `data:` event per JSON push.
    UniSse,
}

impl StreamFormat {
    /// The bytes of `batch` (frames joined by the connection's encoding) as
    /// this format writes them.
    pub(in crate::edge) fn frame(self, batch: &Bytes, encoding: Encoding) -> Bytes {
        // JSON frames hold no raw newline (Herald writes them compact), so a
        // joined JSON batch splits back into its frames.
        let lines = || batch.split(|b| *b == b'\n');
        let mut out = BytesMut::with_capacity(batch.len() + 16);
        match (self, encoding) {
            (Self::HttpStream, Encoding::Protobuf) => return batch.clone(),
            (Self::HttpStream, Encoding::Json) => {
                out.extend_from_slice(batch);
                out.extend_from_slice(b"\n");
            }
            (Self::Sse, _) => {
                for line in lines() {
                    sse_event(&mut out, line);
                }
            }
            (Self::UniHttpStream, _) => {
                for uni in lines().filter_map(crate::protocol::uni_frame) {
                    out.extend_from_slice(&uni);
                    out.extend_from_slice(b"\n");
                }
            }
            (Self::UniSse, _) => {
                for uni in lines().filter_map(crate::protocol::uni_frame) {
                    sse_event(&mut out, &uni);
                }
            }
        }
        out.freeze()
    }
}

fn sse_event(out: &mut BytesMut, data: &[u8]) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// A JSON batch as the unidirectional WebSocket sends it: pushes only,
/// unwrapped, one per line.
fn uni_batch(batch: &Bytes) -> Bytes {
    let mut out = BytesMut::with_capacity(batch.len());
    for uni in batch
        .split(|b| *b == b'\n')
        .filter_map(crate::protocol::uni_frame)
    {
        if !out.is_empty() {
            out.extend_from_slice(b"\n");
        }
        out.extend_from_slice(&uni);
    }
    out.freeze()
}

/// Drains the outbox into the body of a streaming HTTP response (`body`,
/// which hyper polls while the client reads) until the connection closes.
/// A disconnect is said in-stream as Centrifugo's emulation and
/// unidirectional transports say it: a `disconnect` push, then the end of
/// the body. A write blocked by a client that stopped reading is abandoned
/// when the connection is closed as slow (3008) or after
/// `CLOSE_WRITE_TIMEOUT` for other closes, and `abort` ends its HTTP
/// connection: a stalled peer holds neither memory nor a task.
pub(in crate::edge) async fn stream_loop(
    outbox: Arc<Outbox>,
    body: mpsc::Sender<Bytes>,
    format: StreamFormat,
    abort: Option<crate::http_server::ConnAbort>,
) {
    let encoding = outbox.encoding();
    let abandon = |abort: &Option<crate::http_server::ConnAbort>| {
        if let Some(a) = abort {
            a.abort();
        }
    };
    loop {
        let batch = outbox.next_batch().await;
        if !batch.frame.is_empty() {
            let len = batch.frame.len() as u64;
            let send = body.send(format.frame(&batch.frame, encoding));
            tokio::pin!(send);
            let sent = tokio::select! {
                r = &mut send => r.is_ok(),
                _ = outbox.closing() => {
                    if outbox.close_reason() == Some(Close::Named(Disconnect::SLOW)) {
                        metrics::counter!(m::DISCONNECTS_TOTAL, "code" => "3008").increment(1);
                        abandon(&abort);
                        return;
                    }
                    matches!(tokio::time::timeout(CLOSE_WRITE_TIMEOUT, &mut send).await, Ok(Ok(())))
                }
            };
            if !sent {
                outbox.close(Disconnect::WRITE_ERROR);
                abandon(&abort);
                return;
            }
            record_write(batch.frames, len, batch.committed_us);
        }
        if let Some(d) = batch.close {
            count_close(&d);
            // A client too slow to read its queue will not read a last push:
            // its connection is cut.
            if d == Close::Named(Disconnect::SLOW) {
                abandon(&abort);
                return;
            }
            if d != Close::Named(CLIENT_CLOSED) {
                let push = Reply::push(Push::disconnect(d.code(), d.reason()));
                if let Ok(frame) = encoding.encode_reply(&push) {
                    let last = body.send(format.frame(&frame, encoding));
                    if !matches!(
                        tokio::time::timeout(CLOSE_WRITE_TIMEOUT, last).await,
                        Ok(Ok(()))
                    ) {
                        abandon(&abort);
                    }
                }
            }
            // Dropping `body` ends the response.
            return;
        }
    }
}

/// Counts one socket write: its frames, bytes and the delivery latency of its
/// oldest publication.
fn record_write(frames: usize, len: u64, committed_us: Option<u64>) {
    let io = m::edge_io();
    io.messages_out.increment(frames as u64);
    io.bytes_out.increment(len);
    if let Some(committed_us) = committed_us {
        io.delivery.record(m::seconds_since(committed_us));
    }
}

/// Counts a close by its code; custom codes come from the backend, so one
/// label keeps the set closed.
fn count_close(d: &Close) {
    let label = match d {
        Close::Named(n) => n.code.to_string(),
        Close::Custom { .. } => "custom".to_string(),
    };
    metrics::counter!(m::DISCONNECTS_TOTAL, "code" => label).increment(1);
}
