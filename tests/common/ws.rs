//! A minimal Centrifugo protocol v2 client over a real WebSocket, for tests.
//! Answers server pings (`{}`) by itself; keeps pushes until asked for.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u32,
    replies: HashMap<u32, Value>,
    pushes: VecDeque<Value>,
    /// Answer server pings automatically.
    pub auto_pong: bool,
    pub pings_seen: usize,
}

/// How the server ended the connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl WsClient {
    pub async fn open(addr: std::net::SocketAddr) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/connection/websocket"))
            .await
            .expect("websocket handshake");
        Self {
            ws,
            next_id: 1,
            replies: HashMap::new(),
            pushes: VecDeque::new(),
            auto_pong: true,
            pings_seen: 0,
        }
    }

    /// Opens and sends `connect`; panics unless the reply is a success.
    pub async fn connect(addr: std::net::SocketAddr, token: &str) -> (Self, Value) {
        let mut c = Self::open(addr).await;
        let reply = c.call("connect", json!({ "token": token })).await;
        assert!(reply.get("connect").is_some(), "connect failed: {reply}");
        (c, reply)
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends one command and returns its id.
    pub async fn send(&mut self, method: &str, params: Value) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut cmd = json!({ "id": id });
        cmd[method] = params;
        self.send_text(&cmd.to_string()).await;
        id
    }

    /// Sends one command and waits for its reply (pushes are kept).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        self.reply(id).await
    }

    pub async fn reply(&mut self, id: u32) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(r) = self.replies.remove(&id) {
                return r;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("no reply to command {id} within {WAIT:?}");
            }
            match self.read_until(deadline).await {
                Ok(()) => {}
                Err(closed) => panic!("connection closed waiting for reply {id}: {closed:?}"),
            }
        }
    }

    /// The next push (`{"push":{...}}` body), waiting at most `WAIT`.
    pub async fn push(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(p) = self.pushes.pop_front() {
                return p;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("no push within {WAIT:?}");
            }
            if let Err(closed) = self.read_until(deadline).await {
                panic!("connection closed waiting for a push: {closed:?}");
            }
        }
    }

    /// The next `pub` push of `channel`, skipping other pushes.
    pub async fn publication(&mut self, channel: &str) -> Value {
        loop {
            let p = self.push().await;
            if p["channel"] == channel && p.get("pub").is_some() {
                return p["pub"].clone();
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn closed(&mut self) -> Closed {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Err(c) = self.read_until(deadline).await {
                return c;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("the server did not close the connection within 30s");
            }
        }
    }

    /// True if no reply or push arrives for `quiet` (pings are answered and
    /// counted, not "something"); used to check a push does NOT come.
    pub async fn nothing_for(&mut self, quiet: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + quiet;
        while tokio::time::Instant::now() < deadline {
            if !self.pushes.is_empty() || !self.replies.is_empty() {
                return false;
            }
            if self.read_until(deadline).await.is_err() {
                return false;
            }
        }
        self.pushes.is_empty() && self.replies.is_empty()
    }

    /// Reads one frame (or times out at `deadline`), filing replies and
    /// pushes. Err when the connection ended.
    async fn read_until(&mut self, deadline: tokio::time::Instant) -> Result<(), Closed> {
        let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
            Err(_) => return Ok(()),
            Ok(m) => m,
        };
        match msg {
            Some(Ok(Message::Text(text))) => {
                for line in text.as_str().split('\n').filter(|l| !l.trim().is_empty()) {
                    let v: Value = serde_json::from_str(line).expect("server sent valid JSON");
                    if v.as_object().is_some_and(|o| o.is_empty()) {
                        self.pings_seen += 1;
                        if self.auto_pong {
                            let _ = self.ws.send(Message::text("{}")).await;
                        }
                    } else if let Some(id) = v.get("id").and_then(|i| i.as_u64()) {
                        self.replies.insert(id as u32, v);
                    } else if let Some(p) = v.get("push") {
                        self.pushes.push_back(p.clone());
                    } else {
                        panic!("unexpected frame: {v}");
                    }
                }
                Ok(())
            }
            Some(Ok(Message::Close(frame))) => Err(frame
                .map(|f| Closed {
                    code: f.code.into(),
                    reason: f.reason.to_string(),
                })
                .unwrap_or(Closed {
                    code: 1005,
                    reason: String::new(),
                })),
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(Closed {
                code: 1006,
                reason: e.to_string(),
            }),
            None => Err(Closed {
                code: 1006,
                reason: "eof".into(),
            }),
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
