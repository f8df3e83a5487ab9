//! A Centrifugo protocol v2 client over a real WebSocket (JSON, or Protobuf
//! with [`ClientOptions::encoding`]; see [`protobuf`]), used by the
//! integration tests (through `tests/common/ws.rs`, which turns its errors
//! into panics) and by `herald bench`.
//!
//! Two ways to read:
//! - [`Client::call`], [`Client::reply`], [`Client::push`]: commands and
//!   their replies, with pushes that arrive meanwhile kept in order as JSON
//!   values; what tests and a bench's setup phase want.
//! - [`Client::recv`]: one raw frame at a time; what a bench's hot loop
//!   wants (it decodes only the fields it checks from JSON text; a Protobuf
//!   frame comes as its decoded `Reply` messages).
//!
//! Both encodings read alike through the first way: commands are given as
//! JSON values and replies and pushes come back as the JSON values the JSON
//! encoding carries.
//!
//! Both answer the server's pings (`{}`) by themselves unless
//! [`Client::auto_pong`] is off. Connections can be opened from a chosen
//! local address ([`ClientOptions::source`]), so a load generator can spread
//! many sockets over several loopback addresses.
//!
//! Knows the frame formats (newline-separated JSON objects; length-delimited
//! Protobuf messages) and the reply/push shapes; knows nothing of channels,
//! tokens or what a caller checks.

pub mod protobuf;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

/// How long the waiting reads ([`Client::reply`], [`Client::push`]) wait.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// The server's ping and the client's pong: an empty JSON object.
const PING: &str = "{}";

/// The client protocol's encoding a connection asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    #[default]
    Json,
    /// The `centrifuge-protobuf` WebSocket subprotocol.
    Protobuf,
}

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Self::Json),
            "protobuf" => Ok(Self::Protobuf),
            _ => Err(format!("unknown encoding {s:?} (json or protobuf)")),
        }
    }
}

/// How a connection is opened.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Local address to bind before connecting (port chosen by the kernel);
    /// `None` lets the kernel choose.
    pub source: Option<IpAddr>,
    /// Path of the WebSocket endpoint.
    pub path: String,
    /// tungstenite's read buffer; its default (128 KiB) is far too much per
    /// connection for a load generator holding tens of thousands.
    pub read_buffer: usize,
    /// How long [`Client::reply`] and [`Client::push`] wait.
    pub wait: Duration,
    /// JSON, or Protobuf (asked for with the subprotocol).
    pub encoding: Encoding,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            source: None,
            path: "/connection/websocket".into(),
            read_buffer: 4096,
            wait: DEFAULT_WAIT,
            encoding: Encoding::Json,
        }
    }
}

/// How the server ended the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

/// Which step failed; a caller branches on it (a load generator tells a
/// system limit from a server problem with [`ClientError::os_error`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("websocket handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: Box<tungstenite::Error>,
    },
    #[error("sending: {0}")]
    Send(Box<tungstenite::Error>),
    #[error("the connection closed: {} {}", .0.code, .0.reason)]
    Closed(Closed),
    #[error("nothing within {0:?} while waiting for {1}")]
    Timeout(Duration, String),
    #[error("the server sent something unexpected: {0}")]
    BadFrame(String),
}

impl ClientError {
    /// The OS error behind a failed connect or handshake (EMFILE,
    /// EADDRNOTAVAIL, ECONNREFUSED, …), if there is one.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            Self::Connect { source, .. } => source.raw_os_error(),
            Self::Handshake { source, .. } => match source.as_ref() {
                tungstenite::Error::Io(e) => e.raw_os_error(),
                _ => None,
            },
            _ => None,
        }
    }
}

/// One frame from the server: newline-separated JSON objects (text), or
/// Protobuf `Reply` messages (binary, decoded).
pub enum Frame {
    Text(Utf8Bytes),
    /// The frame's replies and pushes, pings left out.
    Binary(Vec<protobuf::pb::Reply>),
}

impl Frame {
    /// The frame's JSON objects, pings left out; none in a binary frame.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        let text = match self {
            Self::Text(t) => t.as_str(),
            Self::Binary(_) => "",
        };
        text.split('\n')
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != PING)
    }

    /// The frame's Protobuf replies and pushes; none in a text frame.
    pub fn replies(&self) -> &[protobuf::pb::Reply] {
        match self {
            Self::Text(_) => &[],
            Self::Binary(r) => r,
        }
    }

    /// The frame's replies and pushes as JSON values, whatever the encoding.
    pub fn values(&self) -> Result<Vec<Value>, ClientError> {
        match self {
            Self::Text(_) => self
                .lines()
                .map(|line| {
                    serde_json::from_str(line)
                        .map_err(|e| ClientError::BadFrame(format!("invalid JSON ({e}): {line}")))
                })
                .collect(),
            Self::Binary(r) => Ok(r.iter().map(protobuf::reply_json).collect()),
        }
    }
}

/// A TCP connection to `addr`, from `source` when given (bind before
/// connect). With a source address the kernel picks the port at connect
/// time (`IP_BIND_ADDRESS_NO_PORT`), so ports are shared across
/// destinations.
pub async fn tcp_connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> Result<TcpStream, std::io::Error> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let one: libc::c_int = 1;
            // SAFETY: a valid socket fd and a c_int option value of the
            // size given; a failure only means the port is chosen at bind.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A WebSocket client handshake over a connected stream with small buffers.
pub async fn ws_handshake(
    addr: SocketAddr,
    stream: TcpStream,
    path: &str,
    read_buffer: usize,
) -> Result<WebSocketStream<TcpStream>, ClientError> {
    ws_handshake_as(addr, stream, path, read_buffer, None).await
}

/// [`ws_handshake`] asking for `subprotocol` (the server must accept it).
pub async fn ws_handshake_as(
    addr: SocketAddr,
    stream: TcpStream,
    path: &str,
    read_buffer: usize,
    subprotocol: Option<&'static str>,
) -> Result<WebSocketStream<TcpStream>, ClientError> {
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_write_buffer_size(16 << 20);
    let handshake = |source| ClientError::Handshake {
        addr,
        source: Box::new(source),
    };
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .map_err(handshake)?;
    if let Some(p) = subprotocol {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
    }
    tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| ClientError::Handshake {
            addr,
            source: Box::new(e),
        })
}

pub struct Client {
    ws: WebSocketStream<TcpStream>,
    next_id: u32,
    replies: HashMap<u32, Value>,
    pushes: VecDeque<Value>,
    wait: Duration,
    encoding: Encoding,
    /// A frame received whose pong was being sent when the caller stopped
    /// waiting: returned by the next [`Client::recv`].
    ready: Option<Frame>,
    /// A pong owed to the server (its sending was interrupted).
    pong_due: bool,
    /// Answer server pings automatically.
    pub auto_pong: bool,
    /// Server pings received so far.
    pub pings_seen: usize,
}

impl Client {
    /// Opens a WebSocket to Herald at `addr` with default options.
    pub async fn open(addr: SocketAddr) -> Result<Self, ClientError> {
        Self::open_with(addr, &ClientOptions::default()).await
    }

    pub async fn open_with(addr: SocketAddr, opts: &ClientOptions) -> Result<Self, ClientError> {
        let stream = tcp_connect(addr, opts.source)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let subprotocol = (opts.encoding == Encoding::Protobuf).then_some(protobuf::SUBPROTOCOL);
        let ws = ws_handshake_as(addr, stream, &opts.path, opts.read_buffer, subprotocol).await?;
        Ok(Self {
            ws,
            next_id: 1,
            replies: HashMap::new(),
            pushes: VecDeque::new(),
            wait: opts.wait,
            encoding: opts.encoding,
            ready: None,
            pong_due: false,
            auto_pong: true,
            pings_seen: 0,
        })
    }

    /// Opens and sends `connect` with `token`; the reply must be a success.
    pub async fn connect(addr: SocketAddr, token: &str) -> Result<(Self, Value), ClientError> {
        Self::connect_with(addr, token, &ClientOptions::default()).await
    }

    pub async fn connect_with(
        addr: SocketAddr,
        token: &str,
        opts: &ClientOptions,
    ) -> Result<(Self, Value), ClientError> {
        let mut c = Self::open_with(addr, opts).await?;
        let reply = c.call("connect", json!({ "token": token })).await?;
        if reply.get("connect").is_none() {
            return Err(ClientError::BadFrame(format!("connect failed: {reply}")));
        }
        Ok((c, reply))
    }

    /// The encoding this connection speaks.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Sends one text frame as it is, whatever the encoding.
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| ClientError::Send(Box::new(e)))
    }

    /// Sends one binary frame as it is, whatever the encoding.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.ws
            .send(Message::binary(bytes))
            .await
            .map_err(|e| ClientError::Send(Box::new(e)))
    }

    /// The pong (and ping) of this encoding.
    async fn send_pong(&mut self) -> Result<(), ClientError> {
        match self.encoding {
            Encoding::Json => self.send_text(PING).await,
            Encoding::Protobuf => self.send_binary(protobuf::PONG.to_vec()).await,
        }
    }

    /// Sends one command and returns its id.
    pub async fn send(&mut self, method: &str, params: Value) -> Result<u32, ClientError> {
        self.send_raw(method, &params.to_string()).await
    }

    /// Sends one command whose parameters are JSON text already (a load
    /// generator's publish, without building a `Value`); returns its id.
    pub async fn send_raw(&mut self, method: &str, params_json: &str) -> Result<u32, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        if self.encoding == Encoding::Protobuf {
            let params: Value = serde_json::from_str(params_json)
                .map_err(|e| ClientError::BadFrame(format!("params are not JSON: {e}")))?;
            let bytes = protobuf::command(id, method, &params)
                .ok_or_else(|| ClientError::BadFrame(format!("no method {method:?}")))?;
            self.send_binary(bytes).await?;
            return Ok(id);
        }
        let method = serde_json::to_string(method).unwrap_or_default();
        self.send_text(&format!(r#"{{"id":{id},{method}:{params_json}}}"#))
            .await?;
        Ok(id)
    }

    /// Sends a `publish` of `data_json` (JSON text, carried as it is: the
    /// `data` bytes over Protobuf) into `channel`; returns its id. A load
    /// generator's publish, without building a `Value`.
    pub async fn send_publish(
        &mut self,
        channel: &str,
        data_json: &str,
    ) -> Result<u32, ClientError> {
        if self.encoding == Encoding::Json {
            let channel = serde_json::to_string(channel).unwrap_or_default();
            return self
                .send_raw(
                    "publish",
                    &format!(r#"{{"channel":{channel},"data":{data_json}}}"#),
                )
                .await;
        }
        let id = self.next_id;
        self.next_id += 1;
        let command = protobuf::pb::Command {
            id,
            publish: Some(protobuf::pb::PublishRequest {
                channel: channel.to_owned(),
                data: bytes::Bytes::copy_from_slice(data_json.as_bytes()),
            }),
            ..protobuf::pb::Command::default()
        };
        self.send_binary(prost::Message::encode_length_delimited_to_vec(&command))
            .await?;
        Ok(id)
    }

    /// Sends one command and waits for its reply (pushes are kept).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.send(method, params).await?;
        self.reply(id).await
    }

    /// The reply to command `id`, waiting at most the configured wait.
    pub async fn reply(&mut self, id: u32) -> Result<Value, ClientError> {
        let deadline = Instant::now() + self.wait;
        loop {
            if let Some(r) = self.replies.remove(&id) {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout(
                    self.wait,
                    format!("the reply to command {id}"),
                ));
            }
            self.read_until(deadline).await?;
        }
    }

    /// The next push (`{"push":{...}}` body), waiting at most the configured
    /// wait.
    pub async fn push(&mut self) -> Result<Value, ClientError> {
        let deadline = Instant::now() + self.wait;
        loop {
            if let Some(p) = self.pushes.pop_front() {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout(self.wait, "a push".into()));
            }
            self.read_until(deadline).await?;
        }
    }

    /// The next `pub` push of `channel`, skipping other pushes.
    pub async fn publication(&mut self, channel: &str) -> Result<Value, ClientError> {
        loop {
            let p = self.push().await?;
            if p["channel"] == channel && p.get("pub").is_some() {
                return Ok(p["pub"].clone());
            }
        }
    }

    /// Pushes received while waiting for replies, oldest first.
    pub fn take_pushes(&mut self) -> VecDeque<Value> {
        std::mem::take(&mut self.pushes)
    }

    /// Reads until the server closes, at most `limit`; returns the close
    /// code and reason.
    pub async fn closed(&mut self, limit: Duration) -> Result<Closed, ClientError> {
        let deadline = Instant::now() + limit;
        loop {
            match self.read_until(deadline).await {
                Err(ClientError::Closed(c)) => return Ok(c),
                Err(e) => return Err(e),
                Ok(()) if Instant::now() >= deadline => {
                    return Err(ClientError::Timeout(limit, "the server to close".into()));
                }
                Ok(()) => {}
            }
        }
    }

    /// True if no reply or push arrives for `quiet` (pings are answered and
    /// counted, not "something"); a closed connection counts as something.
    pub async fn nothing_for(&mut self, quiet: Duration) -> Result<bool, ClientError> {
        let deadline = Instant::now() + quiet;
        while Instant::now() < deadline {
            if !self.pushes.is_empty() || !self.replies.is_empty() {
                return Ok(false);
            }
            match self.read_until(deadline).await {
                Ok(()) => {}
                Err(ClientError::Closed(_)) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(self.pushes.is_empty() && self.replies.is_empty())
    }

    /// The next frame, raw (a binary one decoded); pings in it are counted
    /// and answered (when [`Client::auto_pong`]) and left out of it. Replies and
    /// pushes kept by earlier calls are not returned here: see
    /// [`Client::take_pushes`].
    ///
    /// Cancel-safe (for `select!` and timeouts): a frame read is never lost;
    /// a pong interrupted by the cancellation is sent by the next call.
    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        if self.pong_due {
            self.send_pong().await?;
            self.pong_due = false;
        }
        if let Some(frame) = self.ready.take() {
            return Ok(frame);
        }
        loop {
            let (frame, pings) = match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let pings = text
                        .as_str()
                        .split('\n')
                        .filter(|l| l.trim() == PING)
                        .count();
                    (Frame::Text(text), pings)
                }
                Some(Ok(Message::Binary(bytes))) => {
                    let mut replies = protobuf::replies(bytes).map_err(|e| {
                        ClientError::BadFrame(format!("undecodable binary frame: {e}"))
                    })?;
                    let before = replies.len();
                    replies.retain(|r| !protobuf::is_ping(r));
                    let pings = before - replies.len();
                    (Frame::Binary(replies), pings)
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(ClientError::Closed(frame.map_or(
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
            };
            self.pings_seen += pings;
            if pings == 0 || !self.auto_pong {
                return Ok(frame);
            }
            self.ready = Some(frame);
            self.pong_due = true;
            self.send_pong().await?;
            self.pong_due = false;
            if let Some(frame) = self.ready.take() {
                return Ok(frame);
            }
        }
    }

    /// Reads one frame (or returns at `deadline`), filing replies and pushes.
    async fn read_until(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let frame = match tokio::time::timeout_at(deadline, self.recv()).await {
            Err(_) => return Ok(()),
            Ok(f) => f?,
        };
        for v in frame.values()? {
            if let Some(id) = v.get("id").and_then(Value::as_u64) {
                self.replies.insert(id as u32, v);
            } else if let Some(p) = v.get("push") {
                self.pushes.push_back(p.clone());
            } else {
                return Err(ClientError::BadFrame(format!("unexpected frame: {v}")));
            }
        }
        Ok(())
    }

    /// Sends a close frame (best effort) and drops the connection.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
