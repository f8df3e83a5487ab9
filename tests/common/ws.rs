//! The tests' Centrifugo protocol v2 client: `herald_client::Client` (the
//! one `herald bench` uses too) with every failure turned into a panic, so a
//! test reads as a script. Answers server pings (`{}`) by itself; keeps
//! pushes until asked for. `auto_pong` and `pings_seen` are the inner
//! client's fields, reached through `Deref`.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use herald_client::{Client, ClientError, ClientOptions, Encoding};
use serde_json::Value;

pub use herald_client::Closed;

pub const WAIT: Duration = herald_client::DEFAULT_WAIT;

pub struct WsClient(Client);

fn protobuf() -> ClientOptions {
    ClientOptions {
        encoding: Encoding::Protobuf,
        ..ClientOptions::default()
    }
}

impl Deref for WsClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.0
    }
}

impl DerefMut for WsClient {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.0
    }
}

fn or_panic<T>(r: Result<T, ClientError>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

impl WsClient {
    pub async fn open(addr: std::net::SocketAddr) -> Self {
        Self(or_panic(Client::open(addr).await, "websocket handshake"))
    }

    /// Opens and sends `connect`; panics unless the reply is a success.
    pub async fn connect(addr: std::net::SocketAddr, token: &str) -> (Self, Value) {
        let (c, reply) = or_panic(Client::connect(addr, token).await, "connect");
        (Self(c), reply)
    }

    /// Opens a connection speaking Protobuf (subprotocol `centrifuge-protobuf`).
    pub async fn open_protobuf(addr: std::net::SocketAddr) -> Self {
        Self(or_panic(
            Client::open_with(addr, &protobuf()).await,
            "websocket handshake",
        ))
    }

    /// [`WsClient::connect`] over Protobuf.
    pub async fn connect_protobuf(addr: std::net::SocketAddr, token: &str) -> (Self, Value) {
        let (c, reply) = or_panic(
            Client::connect_with(addr, token, &protobuf()).await,
            "connect",
        );
        (Self(c), reply)
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        or_panic(self.0.send_binary(bytes).await, "send");
    }

    pub async fn send_text(&mut self, text: &str) {
        or_panic(self.0.send_text(text).await, "send");
    }

    /// Sends one command and returns its id.
    pub async fn send(&mut self, method: &str, params: Value) -> u32 {
        or_panic(self.0.send(method, params).await, "send")
    }

    /// Sends one command and waits for its reply (pushes are kept).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        self.reply(id).await
    }

    pub async fn reply(&mut self, id: u32) -> Value {
        or_panic(self.0.reply(id).await, &format!("reply to command {id}"))
    }

    /// The next push (`{"push":{...}}` body), waiting at most `WAIT`.
    pub async fn push(&mut self) -> Value {
        or_panic(self.0.push().await, "waiting for a push")
    }

    /// The next `pub` push of `channel`, skipping other pushes.
    pub async fn publication(&mut self, channel: &str) -> Value {
        or_panic(
            self.0.publication(channel).await,
            &format!("waiting for a publication of {channel}"),
        )
    }

    /// Pushes received while waiting for replies (or `nothing_for`), oldest first.
    pub fn take_pushes(&mut self) -> std::collections::VecDeque<Value> {
        self.0.take_pushes()
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn closed(&mut self) -> Closed {
        or_panic(
            self.0.closed(Duration::from_secs(30)).await,
            "waiting for the server to close",
        )
    }

    /// True if no reply or push arrives for `quiet` (pings are answered and
    /// counted, not "something"); used to check a push does NOT come.
    pub async fn nothing_for(&mut self, quiet: Duration) -> bool {
        or_panic(self.0.nothing_for(quiet).await, "reading")
    }

    pub async fn close(self) {
        self.0.close().await;
    }
}
