//! The peer's client: the NATS text protocol (CONNECT, SUB, PUB, MSG, PING,
//! PONG) over a WebSocket to nats-server's own WebSocket listener, opened
//! the same way as the Herald client (same source addresses, same small
//! buffers), so both targets are driven by the same generator.
//!
//! nats-server may split a protocol message across WebSocket frames or put
//! several in one, so incoming bytes are buffered and parsed as a stream.
//! Server PINGs are answered by [`NatsWs::next_event`].
//!
//! Knows the protocol's framing, nothing of what a scenario checks.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use herald_client::{ClientError, Closed, tcp_connect, ws_handshake};

const CONNECT: &str = concat!(
    r#"CONNECT {"verbose":false,"pedantic":false,"tls_required":false,"#,
    r#""lang":"rust","version":"herald-bench","protocol":1,"echo":true,"headers":false}"#,
    "\r\n"
);

/// What the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message for subscription `sid`.
    Msg { sid: u64, payload: Bytes },
    /// The answer to our PING.
    Pong,
    /// `-ERR '…'`.
    Err(String),
}

pub struct NatsWs {
    ws: WebSocketStream<TcpStream>,
    buf: BytesMut,
    events: VecDeque<Event>,
    /// A server PING seen and not yet answered.
    pong_due: bool,
    /// Server PINGs answered.
    pub pings_seen: u64,
}

impl NatsWs {
    /// Opens the WebSocket, reads INFO and sends CONNECT.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        read_buffer: usize,
    ) -> Result<Self, ClientError> {
        let stream = tcp_connect(addr, source)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let ws = ws_handshake(addr, stream, "/", read_buffer).await?;
        let mut c = Self {
            ws,
            buf: BytesMut::with_capacity(512),
            events: VecDeque::new(),
            pong_due: false,
            pings_seen: 0,
        };
        c.send(CONNECT.as_bytes()).await?;
        Ok(c)
    }

    /// Sends raw protocol bytes as one WebSocket frame.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.ws
            .send(Message::binary(Bytes::copy_from_slice(bytes)))
            .await
            .map_err(|e| ClientError::Send(Box::new(e)))
    }

    /// SUB and PING; returns once the server answered (the subscription is
    /// in place).
    pub async fn subscribe(&mut self, subject: &str, sid: u64) -> Result<(), ClientError> {
        self.send(format!("SUB {subject} {sid}\r\nPING\r\n").as_bytes())
            .await?;
        loop {
            match self.next_event().await? {
                Event::Pong => return Ok(()),
                Event::Err(e) => return Err(ClientError::BadFrame(format!("-ERR {e}"))),
                Event::Msg { .. } => {}
            }
        }
    }

    /// PUB followed by PING: the PONG that answers it confirms the server
    /// processed the message (its acknowledgement, in this bench).
    pub async fn publish_confirmed(
        &mut self,
        subject: &str,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let mut frame = Vec::with_capacity(payload.len() + subject.len() + 32);
        frame.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\nPING\r\n");
        self.send(&frame).await
    }

    /// The next event; server PINGs are answered on the way. Cancel-safe:
    /// parsed events wait in a queue until returned.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        loop {
            if self.pong_due {
                self.send(b"PONG\r\n").await?;
                self.pong_due = false;
            }
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                Some(Ok(Message::Text(t))) => self.buf.extend_from_slice(t.as_bytes()),
                Some(Ok(Message::Close(f))) => {
                    return Err(ClientError::Closed(f.map_or(
                        Closed {
                            code: 1005,
                            reason: String::new(),
                        },
                        |f| Closed {
                            code: f.code.into(),
                            reason: f.reason.to_string(),
                        },
                    )));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Err(ClientError::Closed(Closed {
                        code: 1006,
                        reason: e.to_string(),
                    }));
                }
                None => {
                    return Err(ClientError::Closed(Closed {
                        code: 1006,
                        reason: "eof".into(),
                    }));
                }
            }
            self.parse()?;
        }
    }

    /// Moves every complete protocol message from the buffer to the queue.
    fn parse(&mut self) -> Result<(), ClientError> {
        loop {
            let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                return Ok(());
            };
            let line = &self.buf[..eol];
            if line.starts_with(b"MSG ") {
                let text = std::str::from_utf8(line)
                    .map_err(|_| ClientError::BadFrame("MSG line is not UTF-8".into()))?;
                let parts: Vec<&str> = text.split_ascii_whitespace().collect();
                // MSG <subject> <sid> [reply-to] <#bytes>
                let (sid, len) = match parts.as_slice() {
                    [_, _, sid, len] | [_, _, sid, _, len] => (sid.parse(), len.parse::<usize>()),
                    _ => return Err(ClientError::BadFrame(format!("bad MSG line: {text}"))),
                };
                let (Ok(sid), Ok(len)) = (sid, len) else {
                    return Err(ClientError::BadFrame(format!("bad MSG line: {text}")));
                };
                if self.buf.len() < eol + 2 + len + 2 {
                    return Ok(());
                }
                self.buf.advance(eol + 2);
                let payload = self.buf.split_to(len).freeze();
                self.buf.advance(2);
                self.events.push_back(Event::Msg { sid, payload });
                continue;
            }
            let line = String::from_utf8_lossy(line).into_owned();
            self.buf.advance(eol + 2);
            if line == "PING" {
                self.pings_seen += 1;
                self.pong_due = true;
            } else if line == "PONG" {
                self.events.push_back(Event::Pong);
            } else if let Some(e) = line.strip_prefix("-ERR") {
                self.events.push_back(Event::Err(e.trim().to_string()));
            }
            // INFO and +OK need nothing.
        }
    }
}
