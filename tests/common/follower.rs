//! A subscriber that behaves like a Centrifugo SDK across failures: it keeps
//! its position (offset, epoch) in one channel; on an `unsubscribe` push with
//! a resubscribe code (>= 2500) it subscribes again with recovery; when its
//! connection ends it reconnects (to the address the test names) and recovers;
//! an error reply to a subscribe is retried after a pause; `recovered: false`
//! is followed by paging history up to the position the subscribe reply gave.
//!
//! It records every publication it is sent, in arrival order and without
//! deduplicating, so tests can check exactly-once, in-order delivery.
//!
//! Knows nothing of the processes behind the addresses.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::node::SECRET;

/// How long one command waits for its reply.
const REPLY_WAIT: Duration = Duration::from_secs(10);
/// Pause before retrying a refused subscribe or a failed reconnect.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Largest history page asked for after `recovered: false`.
const PAGE: u64 = 500;

pub fn token(user: &str) -> String {
    herald::auth::mint(SECRET, user, None, Duration::from_secs(3600))
}

/// One WebSocket speaking protocol v2; answers pings, keeps pushes that
/// arrive while a reply is awaited.
pub struct Conn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u32,
    pushes: VecDeque<Value>,
}

/// Why a connection stopped being usable: the close code (1006 when it just
/// ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended(pub u16);

impl Conn {
    /// WebSocket handshake and `connect`.
    pub async fn open(addr: SocketAddr, token: &str) -> Result<Self, String> {
        let url = format!("ws://{addr}/connection/websocket");
        let (ws, _) = tokio::time::timeout(REPLY_WAIT, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Self::connect(ws, token).await
    }

    /// Like [`Conn::open`] with a socket receive buffer of `bytes`: a client
    /// that stops reading then stalls the server's writes sooner.
    pub async fn open_with_recv_buffer(
        addr: SocketAddr,
        token: &str,
        bytes: u32,
    ) -> Result<Self, String> {
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .set_recv_buffer_size(bytes)
            .map_err(|e| e.to_string())?;
        let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
        let url = format!("ws://{addr}/connection/websocket");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .map_err(|e| e.to_string())?;
        Self::connect(ws, token).await
    }

    async fn connect(
        ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
        token: &str,
    ) -> Result<Self, String> {
        let mut c = Self {
            ws,
            next_id: 1,
            pushes: VecDeque::new(),
        };
        let reply = c
            .call("connect", json!({ "token": token }))
            .await
            .map_err(|e| format!("closed during connect: {e:?}"))?;
        if reply.get("connect").is_none() {
            return Err(format!("connect refused: {reply}"));
        }
        Ok(c)
    }

    /// Sends one command and waits for its reply.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, Ended> {
        let id = self.next_id;
        self.next_id += 1;
        let mut cmd = json!({ "id": id });
        cmd[method] = params;
        self.ws
            .send(Message::text(cmd.to_string()))
            .await
            .map_err(|_| Ended(1006))?;
        let deadline = tokio::time::Instant::now() + REPLY_WAIT;
        loop {
            let frames = match tokio::time::timeout_at(deadline, self.read()).await {
                Err(_) => return Err(Ended(1006)),
                Ok(r) => r?,
            };
            let mut reply = None;
            for v in frames {
                if v.get("id").and_then(Value::as_u64) == Some(u64::from(id)) {
                    reply = Some(v);
                } else if let Some(p) = v.get("push") {
                    self.pushes.push_back(p.clone());
                }
            }
            if let Some(r) = reply {
                return Ok(r);
            }
        }
    }

    /// The next push, or `None` if none arrives within `wait`.
    pub async fn push(&mut self, wait: Duration) -> Result<Option<Value>, Ended> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = self.pushes.pop_front() {
                return Ok(Some(p));
            }
            let frames = match tokio::time::timeout_at(deadline, self.read()).await {
                Err(_) => return Ok(None),
                Ok(r) => r?,
            };
            self.pushes
                .extend(frames.into_iter().filter_map(|v| v.get("push").cloned()));
        }
    }

    /// Reads one WebSocket message: its JSON lines, pings answered and left out.
    async fn read(&mut self) -> Result<Vec<Value>, Ended> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let mut out = Vec::new();
                    for line in text.as_str().split('\n').filter(|l| !l.trim().is_empty()) {
                        let v: Value = serde_json::from_str(line).expect("server sent JSON");
                        if v.as_object().is_some_and(|o| o.is_empty()) {
                            let _ = self.ws.send(Message::text("{}")).await;
                        } else {
                            out.push(v);
                        }
                    }
                    return Ok(out);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Ended(frame.map_or(1005, |f| f.code.into())));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(Ended(1006)),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// One publication as the follower got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub offset: u64,
    pub data: Value,
    pub at: SystemTime,
}

/// What [`Follower::step`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A publication (recorded), or a resubscribe that went through.
    Progress,
    /// Nothing within the wait.
    Idle,
    /// The connection ended with this code; call [`Follower::resume`].
    Ended(u16),
}

/// Counts a test prints and asserts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub received: usize,
    pub missed: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
}

pub struct Follower {
    pub channel: String,
    pub user: String,
    conn: Option<Conn>,
    /// The position: the last offset received, and the channel's epoch.
    pub last: u64,
    pub epoch: String,
    /// The position the first subscribe gave: delivery starts after it.
    pub start: u64,
    pub got: Vec<Received>,
    /// Subscribes again after an `unsubscribe` push.
    pub resubscribes: usize,
    /// New connections after the first.
    pub reconnects: usize,
    /// Recovering subscribes answered `recovered: false` (then paged).
    pub unrecovered: usize,
    /// Error replies to subscribe or history, retried.
    pub errors: usize,
    /// Codes of the `unsubscribe` pushes received.
    pub unsubscribe_codes: Vec<u64>,
}

impl Follower {
    /// Connects to `addr` and subscribes to `channel` from its current head.
    pub async fn subscribe(addr: SocketAddr, user: &str, channel: &str) -> Self {
        let conn = Conn::open(addr, &token(user)).await.expect("connect");
        let mut f = Self {
            channel: channel.to_string(),
            user: user.to_string(),
            conn: Some(conn),
            last: 0,
            epoch: String::new(),
            start: 0,
            got: Vec::new(),
            resubscribes: 0,
            reconnects: 0,
            unrecovered: 0,
            errors: 0,
            unsubscribe_codes: Vec::new(),
        };
        let reply = f
            .conn_mut()
            .call("subscribe", json!({ "channel": channel }))
            .await
            .expect("subscribe reply");
        let s = &reply["subscribe"];
        assert_eq!(s["recoverable"], true, "{reply}");
        f.epoch = s["epoch"].as_str().unwrap_or_default().to_string();
        f.last = s["offset"].as_u64().unwrap_or(0);
        f.start = f.last;
        f
    }

    fn conn_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("connected")
    }

    /// Handles at most one push, waiting up to `wait`.
    pub async fn step(&mut self, wait: Duration) -> Step {
        let Some(conn) = self.conn.as_mut() else {
            return Step::Ended(1006);
        };
        let push = match conn.push(wait).await {
            Ok(Some(p)) => p,
            Ok(None) => return Step::Idle,
            Err(Ended(code)) => {
                self.conn = None;
                return Step::Ended(code);
            }
        };
        if push["channel"] != self.channel.as_str() {
            return Step::Idle;
        }
        if let Some(p) = push.get("pub") {
            self.record(p);
            return Step::Progress;
        }
        if let Some(u) = push.get("unsubscribe") {
            let code = u["code"].as_u64().unwrap_or(0);
            self.unsubscribe_codes.push(code);
            assert!(code >= 2500, "unsubscribe without resubscribe: {push}");
            self.resubscribes += 1;
            return match self.recover().await {
                Ok(()) => Step::Progress,
                Err(Ended(code)) => {
                    self.conn = None;
                    Step::Ended(code)
                }
            };
        }
        Step::Idle
    }

    fn record(&mut self, p: &Value) {
        let offset = p["offset"].as_u64().expect("publication offset");
        self.got.push(Received {
            offset,
            data: p["data"].clone(),
            at: SystemTime::now(),
        });
        self.last = self.last.max(offset);
    }

    /// Subscribes with recovery from the position on the current
    /// connection; retries error replies; pages history after
    /// `recovered: false`.
    async fn recover(&mut self) -> Result<(), Ended> {
        loop {
            let cmd = json!({
                "channel": self.channel, "recover": true, "offset": self.last, "epoch": self.epoch,
            });
            let reply = self.conn_mut().call("subscribe", cmd).await?;
            if reply.get("error").is_some() {
                self.errors += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            let s = &reply["subscribe"];
            if let Some(e) = s["epoch"].as_str() {
                self.epoch = e.to_string();
            }
            if s["recovered"] == true {
                for p in s["publications"].as_array().into_iter().flatten() {
                    self.record(p);
                }
                return Ok(());
            }
            self.unrecovered += 1;
            let head = s["offset"].as_u64().unwrap_or(0);
            return self.page_to(head).await;
        }
    }

    /// Reads history after the position up to `head`, as an application
    /// does after `recovered: false`.
    async fn page_to(&mut self, head: u64) -> Result<(), Ended> {
        while self.last < head {
            let limit = (head - self.last).min(PAGE);
            let since = json!({"offset": self.last, "epoch": self.epoch});
            let cmd = json!({"channel": self.channel, "limit": limit, "since": since});
            let reply = self.conn_mut().call("history", cmd).await?;
            let Some(pubs) = reply["history"]["publications"].as_array() else {
                self.errors += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            };
            for p in pubs.clone() {
                self.record(&p);
            }
        }
        Ok(())
    }

    /// After the connection ended: reconnect to `addr` and recover. Err
    /// when the connection cannot be made or ends again (try again later).
    pub async fn resume(&mut self, addr: SocketAddr) -> Result<(), String> {
        self.conn = None;
        let conn = Conn::open(addr, &token(&self.user)).await?;
        self.conn = Some(conn);
        self.reconnects += 1;
        self.recover().await.map_err(|e| {
            self.conn = None;
            format!("ended while recovering: {e:?}")
        })
    }

    /// Follows until the position reaches `offset`, reconnecting to the
    /// addresses in turn whenever the connection ends. Panics after `limit`.
    pub async fn follow_until(&mut self, offset: u64, addrs: &[SocketAddr], limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut next_addr = 0;
        while self.last < offset {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: at offset {} of {offset} after {limit:?} ({:?})",
                self.user,
                self.last,
                self.tally(offset)
            );
            if self.conn.is_none() {
                let addr = addrs[next_addr % addrs.len()];
                next_addr += 1;
                if self.resume(addr).await.is_err() {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                continue;
            }
            self.step(Duration::from_millis(200)).await;
        }
    }

    /// Prints the follower's figures and panics unless it received every
    /// offset `start+1 ..= head` once and in order.
    pub fn assert_complete(&self, head: u64) {
        let t = self.tally(head);
        println!(
            "  follower {} on {}: {t:?}, resubscribes {}, reconnects {}, recovered:false {}, \
             errors retried {}",
            self.user,
            self.channel,
            self.resubscribes,
            self.reconnects,
            self.unrecovered,
            self.errors
        );
        assert_eq!(t.missed, 0, "{}: {t:?}", self.user);
        assert_eq!(t.duplicated, 0, "{}: {t:?}", self.user);
        assert_eq!(t.out_of_order, 0, "{}: {t:?}", self.user);
    }

    /// Delivery counts against offsets `start+1 ..= head`.
    pub fn tally(&self, head: u64) -> Tally {
        let mut seen = BTreeSet::new();
        let mut t = Tally {
            received: self.got.len(),
            ..Tally::default()
        };
        let mut prev = self.start;
        for r in &self.got {
            if !seen.insert(r.offset) {
                t.duplicated += 1;
            } else if r.offset <= prev {
                t.out_of_order += 1;
            }
            prev = prev.max(r.offset);
        }
        t.missed = (self.start + 1..=head)
            .filter(|o| !seen.contains(o))
            .count();
        t
    }
}
