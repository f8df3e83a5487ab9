//! A subscriber over HTTP-streaming or SSE with bidirectional emulation
//! (`--transport http_stream|sse`, JSON), as the JS SDK falls back to when a
//! WebSocket cannot get through: the replies and pushes come down one
//! streaming response, the subscribe and the pongs go up as `/emulation`
//! requests on a second keep-alive connection. Works against Herald and
//! Centrifugo alike (same endpoints and formats).
//!
//! Knows the client protocol's JSON lines and the two stream framings;
//! nothing of how deliveries are counted (`drive`).

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::drive::{Delivery, Subscriber};
use super::http::HttpConn;
use herald_client::{ClientError, tcp_connect};

/// The emulation transports the bench's subscribers can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Websocket,
    #[value(name = "http_stream")]
    HttpStream,
    Sse,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Self::Websocket => "websocket",
            Self::HttpStream => "http_stream",
            Self::Sse => "sse",
        }
    }
}

fn bad(e: impl std::fmt::Display) -> ClientError {
    ClientError::BadFrame(e.to_string())
}

pub struct StreamSub {
    body: Incoming,
    buf: Vec<u8>,
    sse: bool,
    by_offset: bool,
    /// `/emulation` requests (subscribe, pongs).
    emu: HttpConn,
    session: String,
    node: String,
    pings: u64,
    /// Lines read but not yet looked at.
    lines: std::collections::VecDeque<Value>,
    /// The disconnect the server said in-stream, if it did.
    closed: Option<herald_client::Closed>,
}

impl StreamSub {
    /// Opens the stream with a connect, then subscribes to `channel`
    /// through `/emulation`; returns the subscriber and the subscribe reply.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        transport: Transport,
        token: &str,
        channel: &str,
        by_offset: bool,
    ) -> Result<(Self, Value), ClientError> {
        let stream = tcp_connect(addr, source)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(bad)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let connect = json!({"id": 1, "connect": {"token": token}}).to_string();
        let sse = transport == Transport::Sse;
        let req = if sse {
            let q: String = url_encode(&connect);
            Request::get(format!("/connection/sse?cf_connect={q}"))
                .header("host", addr.to_string())
                .body(http_body_util::Either::Left(Empty::<Bytes>::new()))
        } else {
            Request::post("/connection/http_stream")
                .header("host", addr.to_string())
                .header("content-type", "application/json")
                .body(http_body_util::Either::Right(http_body_util::Full::new(
                    Bytes::from(connect),
                )))
        }
        .map_err(bad)?;
        let resp = sender.send_request(req).await.map_err(bad)?;
        if resp.status() != 200 {
            return Err(bad(format!("stream refused: {}", resp.status())));
        }
        let emu = HttpConn::open(addr, source).await.map_err(bad)?;
        let mut s = Self {
            body: resp.into_body(),
            buf: Vec::new(),
            sse,
            by_offset,
            emu,
            session: String::new(),
            node: String::new(),
            pings: 0,
            lines: Default::default(),
            closed: None,
        };
        let reply = s.line().await?;
        s.session = reply["connect"]["session"]
            .as_str()
            .ok_or_else(|| bad(format!("connect failed: {reply}")))?
            .to_owned();
        s.node = reply["connect"]["node"].as_str().unwrap_or("").to_owned();
        s.emulate(&json!({"id": 2, "subscribe": {"channel": channel}}).to_string())
            .await?;
        loop {
            let v = s.line().await?;
            if v["id"] == 2 {
                return Ok((s, v));
            }
        }
    }

    async fn emulate(&mut self, data: &str) -> Result<(), ClientError> {
        let body = json!({"session": self.session, "node": self.node, "data": data});
        let (status, _) = self
            .emu
            .request(
                "POST",
                "/emulation",
                &[],
                Some(Bytes::from(body.to_string())),
            )
            .await
            .map_err(bad)?;
        if status != 204 {
            return Err(bad(format!("emulation answered {status}")));
        }
        Ok(())
    }

    /// Reads until at least one line is buffered.
    async fn fill(&mut self) -> Result<(), ClientError> {
        while self.lines.is_empty() {
            let frame = match self.body.frame().await {
                Some(Ok(f)) => f,
                Some(Err(e)) => return Err(bad(e)),
                None => {
                    return Err(ClientError::Closed(self.closed.take().unwrap_or(
                        herald_client::Closed {
                            code: 0,
                            reason: "stream ended".into(),
                        },
                    )));
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.buf.extend_from_slice(&data);
            let sep: &[u8] = if self.sse { b"\n\n" } else { b"\n" };
            while let Some(at) = self.buf.windows(sep.len()).position(|w| w == sep) {
                let item: Vec<u8> = self.buf.drain(..at + sep.len()).collect();
                let text = std::str::from_utf8(&item[..at]).map_err(bad)?.trim();
                let text = if self.sse {
                    match text.strip_prefix("data: ") {
                        Some(t) => t,
                        None => continue,
                    }
                } else {
                    text
                };
                if !text.is_empty() {
                    self.lines
                        .push_back(serde_json::from_str(text).map_err(bad)?);
                }
            }
        }
        Ok(())
    }

    async fn line(&mut self) -> Result<Value, ClientError> {
        self.fill().await?;
        Ok(self.lines.pop_front().unwrap_or(Value::Null))
    }
}

impl Subscriber for StreamSub {
    async fn next(&mut self, out: &mut Vec<Delivery>) -> Result<(), ClientError> {
        self.fill().await?;
        while let Some(v) = self.lines.pop_front() {
            if v == json!({}) {
                self.pings += 1;
                self.emulate("{}").await?;
                continue;
            }
            let d = &v["push"]["disconnect"];
            if d.is_object() {
                self.closed = Some(herald_client::Closed {
                    code: d["code"].as_u64().unwrap_or(0) as u16,
                    reason: d["reason"].as_str().unwrap_or("").to_owned(),
                });
            }
            let p = &v["push"]["pub"];
            if p.is_object() {
                let stamp = &p["data"];
                out.push(Delivery {
                    number: if self.by_offset {
                        p["offset"].as_u64().unwrap_or(0)
                    } else {
                        stamp["s"].as_u64().unwrap_or(0)
                    },
                    sent_us: stamp["t"].as_u64().unwrap_or(0),
                });
            }
        }
        Ok(())
    }

    fn pings(&self) -> u64 {
        self.pings
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved kept).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
