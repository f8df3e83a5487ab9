//! One client connection: the read loop (commands in order, timers) that
//! dispatches each command to its file — `connect`, `subscribe` (and the
//! subscription preparation every way of subscribing shares), `publish`,
//! `history`, `refresh` (and `sub_refresh`), `presence` (and
//! `presence_stats`, `rpc`), `im` (the `herald.*` conversation RPC methods
//! and the membership rule), `server_side` (the server API's control
//! commands), `proxied` (what the application backend decides through the
//! proxies) — and the writer task (`writer`: the outbox into the
//! socket). `unsubscribe`, `ping` and `pong` are one line each, here.
//!
//! Owns the connection's protocol state — authenticated user, subscriptions
//! with their expiry, ping/pong — and turns each command into a reply or a
//! disconnect. Server API control commands (server-side subscribe and
//! unsubscribe, a new expiry) arrive on the session's control queue and are
//! handled by the same loop, between client commands. One connection's error
//! never touches another: every failure ends in a reply error or a close code
//! for this connection only.

mod connect;
mod history;
mod im;
mod presence;
mod proxied;
mod publish;
mod push;
mod refresh;
mod server_side;
mod subscribe;
pub(super) mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::Edge;
use super::command::SESSION_CONTROL_QUEUE;
use super::outbox::Outbox;
use super::registry::{Connection, SessionId, Subscription};
use crate::auth::now_secs;
use crate::metrics as m;
use crate::protocol::{
    BadFrame, Command, Disconnect, Empty, Encoding, ErrorBody, Method, ProtocolError, Reply,
    ReplyResult, Unsubscribe,
};

/// Closing because the client closed (never sent to it).
pub(super) const CLIENT_CLOSED: Disconnect = Disconnect::new(3000, "connection closed");
/// WebSocket "message too big" for a frame over `client_message_size_limit`,
/// with an empty reason as Centrifugo's, whatever the frame's size.
pub const MESSAGE_TOO_BIG: Disconnect = Disconnect::new(1009, "");

/// How a command fails: a reply error, or the end of the connection.
enum Fail {
    Error(ProtocolError),
    /// An error a proxy's backend answered, code and message as given.
    Backend(ErrorBody),
    Close(Disconnect),
}

impl From<ProtocolError> for Fail {
    fn from(e: ProtocolError) -> Self {
        Self::Error(e)
    }
}

struct Authed {
    user: String,
    /// `ClientInfo` of this connection without channel info, for publications.
    conn_info: Option<Box<RawValue>>,
    expires_at: Option<Instant>,
}

struct Session {
    edge: Arc<Edge>,
    id: SessionId,
    client_id: String,
    outbox: Arc<Outbox>,
    authed: Option<Authed>,
    /// This connection in the edge's registry; dropped with the session.
    conn: Connection,
    /// Dropping one leaves its channel.
    subs: HashMap<String, Subscription>,
    opened: Instant,
    pong_deadline: Option<Instant>,
    /// The connection token's `jti` and `iat`, checked against revocations.
    token: (Option<String>, Option<u64>),
    /// Command rate buckets, set at connect (`edge::rate`).
    rates: Option<super::rate::SessionRates>,
    /// Forwarded headers, connection meta and server-side refreshes of the
    /// proxies (`proxied`).
    proxy: proxied::ProxyState,
    /// The session id and node the connect reply carries (`Transport`).
    transport_session: Option<String>,
    node: Option<Arc<str>>,
    /// A unidirectional transport: no pong expected.
    uni: bool,
}

/// When a connection or subscription whose token expires at `exp` is closed
/// unless refreshed.
///
/// The grace (`client_expired_close_delay`) exists because the SDKs refresh
/// exactly `ttl` seconds after the reply: a deadline at the expiry itself
/// would always fire first and end every refreshing connection with 3005.
fn close_deadline(exp: u64, grace: Duration) -> Instant {
    // Clamped here too: an `exp` may also come from a control message.
    let exp = crate::auth::clamp_exp(exp);
    Instant::now() + Duration::from_secs(exp.saturating_sub(now_secs())) + grace
}

/// Seconds until `exp`, at least 1: a reply that says `expires` must carry a
/// `ttl` (0 would be left out of the JSON, and SDKs read it unconditionally),
/// and a token at or just past its `exp` (within the close grace) is to be
/// refreshed at once.
fn ttl(exp: u64) -> u32 {
    exp.saturating_sub(now_secs()).clamp(1, u64::from(u32::MAX)) as u32
}

/// What a transport hands the read loop.
pub(super) enum Inbound {
    /// Bytes of one or more commands in the connection's encoding.
    Frame(Bytes),
    /// The client side is gone (or sent what ends the connection).
    Closed(Disconnect),
}

/// The transport a session runs over, as far as the session cares.
pub(super) struct Transport {
    /// `websocket`, `http_stream`, `sse` or a `uni_` one: for logs.
    pub name: &'static str,
    /// The session id the connect reply carries: over bidirectional
    /// emulation the SDK names it in its `/emulation` requests.
    pub session: Option<String>,
    /// The node the connect reply names (where `/emulation` requests go).
    pub node: Option<Arc<str>>,
    /// Unidirectional: the client sends one connect and nothing else, so no
    /// pong is expected of it.
    pub uni: bool,
}

/// The connect command of a unidirectional connection: its `ConnectRequest`
/// (empty: `{}`) as a command with id 1.
pub(super) fn uni_connect(request: &[u8]) -> Bytes {
    let request = if request.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        request
    };
    let mut b = Vec::with_capacity(request.len() + 16);
    b.extend_from_slice(br#"{"id":1,"connect":"#);
    b.extend_from_slice(request);
    b.extend_from_slice(b"}");
    Bytes::from(b)
}

/// A WebSocket session. `encoding`: what the upgrade negotiated.
/// `headers`: the upgrade request's headers the proxies forward. `uni`: the
/// unidirectional WebSocket, whose connect request is `uni_connect` (from
/// the query) or else the first message, later messages ignored.
pub(super) async fn run(
    edge: Arc<Edge>,
    socket: WebSocket,
    id: SessionId,
    encoding: Encoding,
    headers: axum::http::HeaderMap,
    uni: Option<Option<Bytes>>,
) {
    let (sink, stream) = socket.split();
    let outbox = Arc::new(Outbox::with_encoding(
        edge.settings.client.queue_max_bytes,
        encoding,
    ));
    let is_uni = uni.is_some();
    tokio::spawn(writer::write_loop(sink, outbox.clone(), is_uni));
    // As Centrifugo, text or binary alike: the bytes are read in the
    // connection's encoding. Ping/pong frames are tungstenite's business.
    let inbound = stream
        .filter_map(|msg| {
            std::future::ready(match msg {
                Ok(Message::Text(text)) => Some(Inbound::Frame(text.into())),
                Ok(Message::Binary(bytes)) => Some(Inbound::Frame(bytes)),
                Ok(Message::Close(_)) => Some(Inbound::Closed(CLIENT_CLOSED)),
                Err(e) => {
                    tracing::debug!(error = %e, "read failed");
                    Some(Inbound::Closed(read_error_close(e)))
                }
                Ok(_) => None,
            })
        })
        .boxed();
    let inbound = match uni {
        None => inbound,
        Some(connect) => {
            // The connect from the query, or the first message; then only
            // the end of the connection matters.
            let from_query = connect.is_some();
            let first = futures::stream::iter(connect.map(|c| Inbound::Frame(uni_connect(&c))));
            let mut seen = from_query;
            let rest = inbound.filter_map(move |i| {
                std::future::ready(match i {
                    Inbound::Frame(f) if !seen => {
                        seen = true;
                        Some(Inbound::Frame(uni_connect(&f)))
                    }
                    Inbound::Frame(_) => None,
                    closed => Some(closed),
                })
            });
            first.chain(rest).boxed()
        }
    };
    let transport = Transport {
        name: if is_uni { "uni_websocket" } else { "websocket" },
        session: None,
        node: None,
        uni: is_uni,
    };
    serve(edge, outbox, inbound, id, transport, headers).await
}

/// The read loop of one connection over any transport: `inbound` are the
/// client's frames, `outbox` is drained into the transport by a writer the
/// caller started (and closing it is how the session ends the connection).
pub(super) async fn serve(
    edge: Arc<Edge>,
    outbox: Arc<Outbox>,
    mut inbound: futures::stream::BoxStream<'static, Inbound>,
    id: SessionId,
    transport: Transport,
    headers: axum::http::HeaderMap,
) {
    let encoding = outbox.encoding();
    let client_id = uuid::Uuid::new_v4().to_string();
    let (control_tx, mut control) = mpsc::channel(SESSION_CONTROL_QUEUE);
    let conn = edge
        .registry
        .open(id, &client_id, outbox.clone(), control_tx);

    let ping_every = edge.settings.client.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut s = Session {
        edge: edge.clone(),
        id,
        client_id,
        outbox: outbox.clone(),
        authed: None,
        conn,
        subs: HashMap::new(),
        opened: Instant::now(),
        pong_deadline: None,
        token: (None, None),
        rates: None,
        proxy: proxied::ProxyState {
            headers,
            ..Default::default()
        },
        transport_session: transport.session,
        node: transport.node,
        uni: transport.uni,
    };
    let mut revocations = edge.revocations().map(|r| r.changes());
    let span = tracing::debug_span!(
        "session",
        id,
        client = %s.client_id,
        transport = transport.name,
        encoding = encoding.name(),
        user = tracing::field::Empty
    );
    let reason = async {
        loop {
            let deadline = s.next_deadline();
            let authed = s.authed.is_some();
            let step = tokio::select! {
                _ = outbox.closing() => break None,
                msg = inbound.next() => match msg {
                    // Boxed: a command's future is large and lives only
                    // while the command runs; inline, every idle
                    // connection's task would carry its size.
                    Some(Inbound::Frame(frame)) => Box::pin(s.handle_frame(frame)).await.and_then(|()| {
                        // A unidirectional client cannot retry a failed
                        // connect on the same connection: it ends.
                        if s.uni && s.authed.is_none() {
                            Err(Disconnect::BAD_REQUEST)
                        } else {
                            Ok(())
                        }
                    }),
                    Some(Inbound::Closed(d)) => break Some(d),
                    None => break Some(CLIENT_CLOSED),
                },
                Some(cmd) = control.recv() => {
                    Box::pin(s.handle_control(*cmd)).await;
                    Ok(())
                }
                _ = ping.tick(), if authed => {
                    s.send_ping();
                    Ok(())
                }
                _ = tokio::time::sleep_until(deadline) => Box::pin(s.on_deadline()).await,
                Some(()) = revocation_changed(&mut revocations) => s.check_revoked(),
            };
            if let Err(d) = step {
                break Some(d);
            }
        }
    }
    .instrument(span)
    .await;
    if let Some(d) = reason {
        outbox.close(d);
    }
    s.end_webhooks();
    // Dropping the session leaves every channel and the registry.
}

/// How a failed read closes the connection. A frame past twice the size
/// limit is refused by tungstenite from its header, before it is read
/// (memory bound): it gets the same 1009 as a frame just over the limit.
/// Any other read error means the socket is gone.
fn read_error_close(e: axum::Error) -> Disconnect {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.into_inner().downcast::<WsError>() {
        Ok(e) if matches!(*e, WsError::Capacity(_)) => MESSAGE_TOO_BIG,
        _ => CLIENT_CLOSED,
    }
}

/// Resolves when the revocations change; never without them.
async fn revocation_changed(rx: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Option<()> {
    match rx {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

impl Session {
    /// A revoked connection token closes the session (3500, terminal).
    fn check_revoked(&self) -> Result<(), Disconnect> {
        let Some(authed) = &self.authed else {
            return Ok(());
        };
        if self
            .edge
            .revoked(&authed.user, self.token.0.as_deref(), self.token.1)
        {
            return Err(Disconnect::INVALID_TOKEN);
        }
        Ok(())
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut next = far;
        match &self.authed {
            None => next = next.min(self.opened + self.edge.settings.client.stale_timeout),
            Some(a) => {
                if let Some(e) = a.expires_at {
                    next = next.min(e);
                }
            }
        }
        if let Some(p) = self.pong_deadline {
            next = next.min(p);
        }
        for sub in self.subs.values() {
            if let Some(e) = sub.expires_at {
                next = next.min(e);
            }
        }
        next
    }

    async fn on_deadline(&mut self) -> Result<(), Disconnect> {
        let now = Instant::now();
        let Some(authed) = &self.authed else {
            return if now >= self.opened + self.edge.settings.client.stale_timeout {
                Err(Disconnect::STALE)
            } else {
                Ok(())
            };
        };
        if authed.expires_at.is_some_and(|e| now >= e) {
            if !self.proxy.server_refresh {
                return Err(Disconnect::EXPIRED);
            }
            let exp = self.refresh_by_proxy().await?;
            if let Some(a) = self.authed.as_mut() {
                a.expires_at = Some(close_deadline(exp, Duration::ZERO));
            }
        }
        if self.pong_deadline.is_some_and(|p| now >= p) {
            return Err(Disconnect::NO_PONG);
        }
        let expired: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|e| now >= e))
            .map(|(c, _)| c.clone())
            .collect();
        for channel in expired {
            if let Some(exp) = self.sub_refreshed_by_proxy(&channel).await {
                let grace = self.edge.settings.client.expired_close_delay;
                if let Some(sub) = self.subs.get_mut(&channel) {
                    sub.expires_at = Some(close_deadline(exp, grace));
                }
                continue;
            }
            self.proxy.server_sub_refresh.remove(&channel);
            if let Some(sub) = self.subs.remove(&channel) {
                sub.end(Unsubscribe::EXPIRED);
            }
        }
        Ok(())
    }

    fn send_ping(&mut self) {
        let _ = self.outbox.push(self.encoding().ping_frame());
        if self.pong_deadline.is_none() && !self.uni {
            self.pong_deadline = Some(Instant::now() + self.edge.settings.client.pong_timeout);
        }
    }

    /// The connection's encoding, fixed at the upgrade.
    fn encoding(&self) -> Encoding {
        self.outbox.encoding()
    }

    /// `reply` in the connection's encoding. A reply that cannot be encoded
    /// (only bytes Herald did not write can cause it) closes the connection
    /// with 3004.
    fn encode(&self, reply: &Reply) -> Option<Bytes> {
        match self.encoding().encode_reply(reply) {
            Ok(frame) => Some(frame),
            Err(e) => {
                tracing::error!(error = %e, "reply not encodable");
                self.outbox.close(Disconnect::SERVER_ERROR);
                None
            }
        }
    }

    fn reply(&self, reply: &Reply) {
        if let Some(frame) = self.encode(reply) {
            let _ = self.outbox.push(frame);
        }
    }

    async fn handle_frame(&mut self, frame: Bytes) -> Result<(), Disconnect> {
        let io = m::edge_io();
        io.messages_in.increment(1);
        io.bytes_in.increment(frame.len() as u64);
        let limit = self.edge.settings.client.message_size_limit;
        let commands = self
            .encoding()
            .decode_commands(frame, limit)
            .map_err(|BadFrame(d)| d)?;
        for cmd in commands {
            self.handle_command(cmd).await?;
            if self.outbox.is_closing() {
                break;
            }
        }
        Ok(())
    }

    async fn handle_command(&mut self, cmd: Command) -> Result<(), Disconnect> {
        let id = cmd.id;
        let method = match cmd.method() {
            Ok(m) => m,
            // No method Centrifugo knows, with an id: a bad request, as
            // Centrifugo reads it (an empty command that expects a reply).
            Err(ProtocolError::MethodNotFound) => {
                tracing::debug!("command without a known method");
                return Err(Disconnect::BAD_REQUEST);
            }
            Err(e) if id == 0 => {
                tracing::debug!(error = e.label(), "command without id");
                return Err(Disconnect::BAD_REQUEST);
            }
            Err(e) => {
                metrics::counter!(m::COMMANDS_TOTAL, "method" => "unknown", "result" => e.label())
                    .increment(1);
                self.reply(&Reply::error(id, e.into()));
                return Ok(());
            }
        };
        let name = method.name();
        // As Centrifugo: a pong (`{}`) is only for an authenticated
        // connection; every command but `send` carries an id.
        match method {
            Method::Pong if self.authed.is_some() => {
                self.pong_deadline = None;
                return Ok(());
            }
            Method::Send => {}
            _ if id == 0 => {
                tracing::debug!(method = name, "command without id");
                return Err(Disconnect::BAD_REQUEST);
            }
            _ => {}
        }
        if self.authed.is_none() && !matches!(method, Method::Connect(_)) {
            return Err(Disconnect::BAD_REQUEST);
        }
        let started = std::time::Instant::now();
        let limited = self.rate_limit(&method);
        let outcome = match method {
            _ if limited.is_err() => limited.map(|()| None),
            Method::Connect(req) => self.connect(id, req).await,
            Method::Subscribe(req) => self.subscribe(id, req).await,
            Method::Unsubscribe(req) => {
                self.subs.remove(&req.channel);
                Ok(Some(ReplyResult::Unsubscribe(Empty {})))
            }
            Method::Publish(req) => self.publish(req.channel, req.data).await,
            Method::History(req) => self.history(req).await,
            // Refreshed server side by the proxies: a client refresh is a
            // bad request, as Centrifugo's "server-side refresh expected".
            Method::Refresh(_) if self.proxy.server_refresh => {
                Err(Fail::Close(Disconnect::BAD_REQUEST))
            }
            Method::SubRefresh(req) if self.proxy.server_sub_refresh.contains(&req.channel) => {
                Err(Fail::Close(Disconnect::BAD_REQUEST))
            }
            Method::Refresh(req) => self.refresh(req),
            Method::SubRefresh(req) => self.sub_refresh(req),
            Method::Ping => Ok(Some(ReplyResult::Ping(Empty {}))),
            Method::Presence(req) => self.presence(req).await,
            Method::PresenceStats(req) => self.presence_stats(req).await,
            Method::Rpc(req) => match self.rpc_proxy(&req.method) {
                Some(proxy) => self.rpc_by_proxy(&proxy, req).await,
                None => Box::pin(self.rpc(req)).await,
            },
            // No handler for async messages: Centrifugo closes with 3508.
            Method::Send => Err(Fail::Close(Disconnect::NOT_AVAILABLE)),
            Method::Pong => Ok(None),
        };
        if name == "publish" {
            metrics::histogram!(m::PUBLISH_SECONDS, "source" => "client")
                .record(started.elapsed().as_secs_f64());
        }
        match outcome {
            Ok(result) => {
                metrics::counter!(m::COMMANDS_TOTAL, "method" => name, "result" => "ok")
                    .increment(1);
                if let Some(result) = result {
                    self.reply(&Reply::ok(id, result));
                }
                Ok(())
            }
            Err(Fail::Error(e)) => {
                metrics::counter!(m::COMMANDS_TOTAL, "method" => name, "result" => e.label())
                    .increment(1);
                self.reply(&Reply::error(id, ErrorBody::from(e)));
                Ok(())
            }
            Err(Fail::Backend(e)) => {
                metrics::counter!(m::COMMANDS_TOTAL, "method" => name, "result" => "backend_error")
                    .increment(1);
                self.reply(&Reply::error(id, e));
                Ok(())
            }
            Err(Fail::Close(d)) => {
                metrics::counter!(m::COMMANDS_TOTAL, "method" => name, "result" => "disconnect")
                    .increment(1);
                Err(d)
            }
        }
    }

    /// The per-user connection cap (`edge::admission`), at connect: this
    /// connection or the user's oldest ones here close with 3504.
    fn user_cap(&self) -> Result<(), Fail> {
        let Some(cap) = self.edge.admission.per_user() else {
            return Ok(());
        };
        let others = self.conn.user_others();
        match super::admission::user_over_cap(cap, &others) {
            None => Err(Fail::Close(Disconnect::CONNECTION_LIMIT)),
            Some(losers) => {
                for o in losers {
                    o.close(Disconnect::CONNECTION_LIMIT);
                }
                Ok(())
            }
        }
    }

    /// The command rate limits (`edge::rate`): error 111, or 3013 past the
    /// disconnect multiple. `connect`'s own limit is checked in `connect`.
    fn rate_limit(&self, method: &Method) -> Result<(), Fail> {
        use super::rate::{Kind, Verdict};
        let kind = match method {
            Method::Subscribe(_) => Kind::Subscribe,
            Method::Publish(_) => Kind::Publish,
            Method::History(_) => Kind::History,
            Method::Presence(_) | Method::PresenceStats(_) => Kind::Presence,
            Method::Rpc(_) => Kind::Rpc,
            Method::Connect(_) | Method::Pong => return Ok(()),
            _ => Kind::Other,
        };
        match self.rates.as_ref().map(|r| r.check(kind)) {
            Some(Verdict::Refuse) => Err(Fail::Error(ProtocolError::TooManyRequests)),
            Some(Verdict::Disconnect) => Err(Fail::Close(Disconnect::TOO_MANY_REQUESTS)),
            _ => Ok(()),
        }
    }

    /// The `disconnected` event, after the subscriptions' `unsubscribed`.
    fn end_webhooks(&mut self) {
        let Some(authed) = &self.authed else { return };
        self.subs.clear();
        let (code, reason) = self.outbox.close_reason().map_or(
            (CLIENT_CLOSED.code, CLIENT_CLOSED.reason.to_string()),
            |c| (c.code(), c.reason().to_string()),
        );
        self.edge
            .webhooks()
            .disconnected(&self.client_id, &authed.user, code, &reason);
    }

    fn user(&self) -> &str {
        self.authed.as_ref().map_or("", |a| a.user.as_str())
    }
}
