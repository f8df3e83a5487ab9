//! One client connection: the read loop (commands in order, timers) and the
//! writer task (drains the outbox into the socket).
//!
//! Owns the connection's protocol state — authenticated user, subscriptions
//! with their expiry, ping/pong — and turns each command into a reply or a
//! disconnect. Server API control commands (server-side subscribe and
//! unsubscribe, a new expiry) arrive on the session's control queue and are
//! handled by the same loop, between client commands. One connection's error
//! never touches another: every failure ends in a reply error or a close code
//! for this connection only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::Edge;
use super::control::{SESSION_CONTROL_QUEUE, SessionCommand};
use super::hub::{FeedStatus, GoLive, SessionId, Subscriber};
use super::outbox::{Close, Outbox};
use crate::auth::{TokenError, now_secs};
use crate::bus::publisher::{PublishErrorKind, PublishRequest};
use crate::channel::Channel;
use crate::metrics as m;
use crate::protocol::{
    self, ClientInfo, Command, ConnectRequest, ConnectResult, Disconnect, DisconnectPush, Empty,
    ErrorBody, HistoryRequest, HistoryResult, Method, ProtocolError, PublishResult, Push,
    RefreshRequest, RefreshResult, Reply, ReplyResult, SubRefreshRequest, SubRefreshResult,
    SubscribeRequest, SubscribeResult, Unsubscribe,
};
use crate::telemetry;

/// Closing because the client closed (never sent to it).
const CLIENT_CLOSED: Disconnect = Disconnect::new(3000, "connection closed");
/// WebSocket "message too big" for a frame over `client_message_size_limit`.
pub const MESSAGE_TOO_BIG: Disconnect = Disconnect::new(1009, "message too big");
/// How long the writer spends on the last frames of a closing connection.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a command fails: a reply error, or the end of the connection.
enum Fail {
    Error(ProtocolError),
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

struct Sub {
    subscriber: Arc<Subscriber>,
    expires_at: Option<Instant>,
    chan_info: Option<Box<RawValue>>,
    /// Subscribed to a private channel (token checked).
    private: bool,
}

/// What a new subscription records besides its subscriber.
struct SubOptions {
    expires_at: Option<Instant>,
    chan_info: Option<Box<RawValue>>,
    private: bool,
}

impl SubOptions {
    /// Granted by the token's `channels` claim or the server API: no expiry,
    /// no channel info; private channels count as authorized.
    fn granted(private: bool) -> Self {
        Self {
            expires_at: None,
            chan_info: None,
            private,
        }
    }
}

/// A subscription registered in the hub and positioned, reply not yet sent.
struct Prepared {
    subscriber: Arc<Subscriber>,
    result: SubscribeResult,
    position: u64,
}

struct Session {
    edge: Arc<Edge>,
    id: SessionId,
    client_id: String,
    outbox: Arc<Outbox>,
    authed: Option<Authed>,
    subs: HashMap<String, Sub>,
    opened: Instant,
    pong_deadline: Option<Instant>,
}

/// When a connection or subscription whose token expires at `exp` is closed
/// unless refreshed.
///
/// The grace (`client_expired_close_delay`) exists because the SDKs refresh
/// exactly `ttl` seconds after the reply: a deadline at the expiry itself
/// would always fire first and end every refreshing connection with 3005.
fn close_deadline(exp: u64, grace: Duration) -> Instant {
    Instant::now() + Duration::from_secs(exp.saturating_sub(now_secs())) + grace
}

/// Seconds until `exp`, at least 1: a reply that says `expires` must carry a
/// `ttl` (0 would be left out of the JSON, and SDKs read it unconditionally),
/// and a token at or just past its `exp` (within the close grace) is to be
/// refreshed at once.
fn ttl(exp: u64) -> u32 {
    exp.saturating_sub(now_secs()).clamp(1, u64::from(u32::MAX)) as u32
}

pub(super) async fn run(edge: Arc<Edge>, socket: WebSocket, id: SessionId) {
    let (sink, mut stream) = socket.split();
    let outbox = Arc::new(Outbox::new(edge.settings.client.queue_max_bytes));
    tokio::spawn(write_loop(sink, outbox.clone()));
    let client_id = uuid::Uuid::new_v4().to_string();
    let (control_tx, mut control) = mpsc::channel(SESSION_CONTROL_QUEUE);
    edge.register(id, &client_id, outbox.clone(), control_tx);
    metrics::gauge!(m::CONNECTIONS).increment(1.0);

    let ping_every = edge.settings.client.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut s = Session {
        edge: edge.clone(),
        id,
        client_id,
        outbox: outbox.clone(),
        authed: None,
        subs: HashMap::new(),
        opened: Instant::now(),
        pong_deadline: None,
    };
    let span = tracing::debug_span!(
        "session",
        id,
        client = %s.client_id,
        user = tracing::field::Empty
    );
    let reason = async {
        loop {
            let deadline = s.next_deadline();
            let authed = s.authed.is_some();
            let step = tokio::select! {
                _ = outbox.closing() => break None,
                msg = stream.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        let io = m::edge_io();
                        io.messages_in.increment(1);
                        io.bytes_in.increment(text.len() as u64);
                        // Boxed: a command's future is large and lives only
                        // while the command runs; inline, every idle
                        // connection's task would carry its size.
                        Box::pin(s.handle_frame(text.as_str())).await
                    }
                    Some(Ok(Message::Binary(_))) => Err(Disconnect::BAD_REQUEST),
                    Some(Ok(Message::Close(_))) | None => break Some(CLIENT_CLOSED),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "read failed");
                        break Some(CLIENT_CLOSED);
                    }
                    Some(Ok(_)) => Ok(()),
                },
                Some(cmd) = control.recv() => {
                    Box::pin(s.handle_control(*cmd)).await;
                    Ok(())
                }
                _ = ping.tick(), if authed => {
                    s.send_ping();
                    Ok(())
                }
                _ = tokio::time::sleep_until(deadline) => s.on_deadline(),
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
    s.cleanup();
}

impl Session {
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

    fn on_deadline(&mut self) -> Result<(), Disconnect> {
        let now = Instant::now();
        let Some(authed) = &self.authed else {
            return if now >= self.opened + self.edge.settings.client.stale_timeout {
                Err(Disconnect::STALE)
            } else {
                Ok(())
            };
        };
        if authed.expires_at.is_some_and(|e| now >= e) {
            return Err(Disconnect::EXPIRED);
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
            if let Some(sub) = self.subs.remove(&channel) {
                sub.subscriber.end(Unsubscribe::EXPIRED);
                self.edge.hub.remove(&sub.subscriber);
                metrics::gauge!(m::SUBSCRIPTIONS).decrement(1.0);
            }
        }
        Ok(())
    }

    fn send_ping(&mut self) {
        let _ = self.outbox.push(Bytes::from_static(protocol::PING_FRAME));
        if self.pong_deadline.is_none() {
            self.pong_deadline = Some(Instant::now() + self.edge.settings.client.pong_timeout);
        }
    }

    fn cleanup(&mut self) {
        for (_, sub) in self.subs.drain() {
            self.edge.hub.remove(&sub.subscriber);
            metrics::gauge!(m::SUBSCRIPTIONS).decrement(1.0);
        }
        self.edge.unregister(self.id);
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
    }

    fn reply(&self, reply: &Reply) {
        let _ = self.outbox.push(protocol::encode_reply(reply));
    }

    async fn handle_frame(&mut self, text: &str) -> Result<(), Disconnect> {
        if text.len() > self.edge.settings.client.message_size_limit {
            return Err(MESSAGE_TOO_BIG);
        }
        let commands = protocol::decode_commands(text).map_err(|_| Disconnect::BAD_REQUEST)?;
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
        if matches!(method, Method::Pong) {
            self.pong_deadline = None;
            return Ok(());
        }
        if self.authed.is_none() && !matches!(method, Method::Connect(_)) {
            return Err(Disconnect::BAD_REQUEST);
        }
        let started = std::time::Instant::now();
        let outcome = match method {
            Method::Connect(req) => self.connect(id, req).await,
            Method::Subscribe(req) => self.subscribe(id, req).await,
            Method::Unsubscribe(req) => {
                if let Some(sub) = self.subs.remove(&req.channel) {
                    self.edge.hub.remove(&sub.subscriber);
                    metrics::gauge!(m::SUBSCRIPTIONS).decrement(1.0);
                }
                Ok(Some(ReplyResult::Unsubscribe(Empty {})))
            }
            Method::Publish(req) => self.publish(req.channel, req.data).await,
            Method::History(req) => self.history(req).await,
            Method::Refresh(req) => self.refresh(req),
            Method::SubRefresh(req) => self.sub_refresh(req),
            Method::Ping => Ok(Some(ReplyResult::Ping(Empty {}))),
            Method::Presence(_) | Method::PresenceStats(_) | Method::Rpc => {
                Err(Fail::Error(ProtocolError::NotAvailable))
            }
            Method::Send => Ok(None),
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
                if let Some(result) = result
                    && id != 0
                {
                    self.reply(&Reply::ok(id, result));
                }
                Ok(())
            }
            Err(Fail::Error(e)) => {
                metrics::counter!(m::COMMANDS_TOTAL, "method" => name, "result" => e.label())
                    .increment(1);
                if id != 0 {
                    self.reply(&Reply::error(id, ErrorBody::from(e)));
                }
                Ok(())
            }
            Err(Fail::Close(d)) => {
                metrics::counter!(m::COMMANDS_TOTAL, "method" => name, "result" => "disconnect")
                    .increment(1);
                Err(d)
            }
        }
    }

    fn user(&self) -> &str {
        self.authed.as_ref().map_or("", |a| a.user.as_str())
    }

    async fn connect(&mut self, id: u32, req: ConnectRequest) -> Result<Option<ReplyResult>, Fail> {
        if self.authed.is_some() {
            return Err(Fail::Close(Disconnect::BAD_REQUEST));
        }
        if req.token.is_empty() {
            return Err(Fail::Close(Disconnect::INVALID_TOKEN));
        }
        let claims = match self.edge.verifier.connect(&req.token) {
            Ok(c) => c,
            Err(TokenError::Expired) => return Err(Fail::Error(ProtocolError::TokenExpired)),
            Err(TokenError::Invalid) => return Err(Fail::Close(Disconnect::INVALID_TOKEN)),
        };
        tracing::Span::current().record("user", claims.sub.as_str());
        self.authed = Some(Authed {
            user: claims.sub.clone(),
            conn_info: claims.info.clone(),
            expires_at: claims
                .exp
                .map(|exp| close_deadline(exp, self.edge.settings.client.expired_close_delay)),
        });
        self.edge.set_user(self.id, &claims.sub);
        metrics::counter!(m::CONNECTS_TOTAL).increment(1);

        // Server-side subscriptions from the token's `channels` claim: the
        // token already authorizes them.
        let mut prepared = Vec::new();
        let mut subs = std::collections::BTreeMap::new();
        for name in &claims.channels {
            let Ok(channel) = Channel::parse(name, &self.edge.settings.channels) else {
                tracing::warn!("invalid channel in token channels claim");
                continue;
            };
            if self.subs.contains_key(name)
                || self.subs.len() >= self.edge.settings.client.channel_limit
            {
                continue;
            }
            let recover = req
                .subs
                .get(name)
                .filter(|r| r.recover)
                .map(|r| (r.offset, r.epoch.clone()));
            match self.prepare(&channel, recover).await {
                Ok(p) => prepared.push((name.clone(), p, channel.private)),
                Err(e) => {
                    for (_, p, _) in prepared {
                        self.edge.hub.remove(&p.subscriber);
                    }
                    return Err(e);
                }
            }
        }
        for (name, p, _) in &mut prepared {
            subs.insert(name.clone(), std::mem::take(&mut p.result));
        }
        let result = ConnectResult {
            client: self.client_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            expires: claims.exp.is_some(),
            ttl: claims.exp.map_or(0, ttl),
            subs,
            ping: self.edge.settings.client.ping_interval.as_secs().max(1) as u32,
            pong: true,
        };
        let reply = protocol::encode_reply(&Reply::ok(id, ReplyResult::Connect(result)));
        let _ = self.outbox.push(reply);
        // The token authorized these, private channels included.
        for (name, p, private) in prepared {
            self.go_live(name, p, Vec::new(), SubOptions::granted(private));
        }
        // The reply was queued above, before the publications.
        Ok(None)
    }

    /// Registers a subscriber in the hub (buffering), waits for the channel
    /// feed, reads the position (and missed publications when recovering)
    /// from sync. On error the subscriber is removed again.
    async fn prepare(
        &self,
        channel: &Channel<'_>,
        recover: Option<(u64, String)>,
    ) -> Result<Prepared, Fail> {
        let client = &self.edge.settings.client;
        let history = channel.options.history;
        let subscriber = Subscriber::new(
            self.id,
            channel.name,
            self.outbox.clone(),
            client.queue_max_bytes,
        );
        let mut status = self.edge.hub.add(subscriber.clone(), history);
        let ready = tokio::time::timeout(self.edge.sync_timeout, async {
            status
                .wait_for(|s| *s != FeedStatus::Starting)
                .await
                .map(|s| *s)
        })
        .await;
        if !matches!(ready, Ok(Ok(FeedStatus::Ready))) {
            self.edge.hub.remove(&subscriber);
            return Err(Fail::Error(ProtocolError::Internal));
        }
        if !history {
            return Ok(Prepared {
                subscriber,
                result: SubscribeResult::default(),
                position: 0,
            });
        }
        let (after, limit) = match &recover {
            Some((offset, _)) => (*offset, client.recovery_limit + 1),
            None => (0, 0),
        };
        let page = match self
            .edge
            .sync
            .read(channel.name, after, None, limit, false)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "subscribe position read failed");
                self.edge.hub.remove(&subscriber);
                return Err(Fail::Error(ProtocolError::Internal));
            }
        };
        let mut result = SubscribeResult {
            recoverable: true,
            epoch: page.epoch.clone(),
            offset: page.head,
            was_recovering: recover.is_some(),
            ..SubscribeResult::default()
        };
        let mut position = page.head;
        if let Some((offset, epoch)) = recover {
            let epoch_ok = epoch.is_empty() || epoch == page.epoch;
            let last = contiguous_last(&page.publications, offset);
            if let Some(last) = last
                && epoch_ok
                && page.publications.len() <= client.recovery_limit
                && last >= page.head
                // A position past the head was never given out: not
                // recovered (it would hide the publications up to it).
                && offset <= page.head
                && offset + 1 >= page.first_available
            {
                result.recovered = true;
                result.offset = last;
                position = last;
                result.publications = page.publications;
            }
        }
        Ok(Prepared {
            subscriber,
            result,
            position,
        })
    }

    async fn subscribe(
        &mut self,
        id: u32,
        req: SubscribeRequest,
    ) -> Result<Option<ReplyResult>, Fail> {
        let channels = self.edge.settings.channels.clone();
        let channel = Channel::parse(&req.channel, &channels)?;
        if let Some(existing) = self.subs.get(&req.channel) {
            if !existing.subscriber.is_dead() {
                return Err(Fail::Error(ProtocolError::AlreadySubscribed));
            }
            if let Some(old) = self.subs.remove(&req.channel) {
                self.edge.hub.remove(&old.subscriber);
                metrics::gauge!(m::SUBSCRIPTIONS).decrement(1.0);
            }
        }
        if self.subs.len() >= self.edge.settings.client.channel_limit {
            return Err(Fail::Error(ProtocolError::LimitExceeded));
        }
        let user = self.user().to_string();
        let mut token_claims = None;
        if !req.token.is_empty() {
            match self
                .edge
                .verifier
                .subscription(&req.token, &user, &req.channel)
            {
                Ok(c) => token_claims = Some(c),
                Err(TokenError::Expired) => return Err(Fail::Error(ProtocolError::TokenExpired)),
                Err(TokenError::Invalid) => {
                    return Err(Fail::Error(ProtocolError::PermissionDenied));
                }
            }
        }
        channel.check_subscribe(&user, token_claims.is_some())?;
        let recover = req.recover.then(|| (req.offset, req.epoch.clone()));
        let mut p = self.prepare(&channel, recover).await?;
        if let Some(exp) = token_claims.as_ref().and_then(|c| c.exp) {
            p.result.expires = true;
            p.result.ttl = ttl(exp);
        }
        let reply = protocol::encode_reply(&Reply::ok(
            id,
            ReplyResult::Subscribe(std::mem::take(&mut p.result)),
        ));
        let sub = SubOptions {
            expires_at: token_claims
                .as_ref()
                .and_then(|c| c.exp)
                .map(|exp| close_deadline(exp, self.edge.settings.client.expired_close_delay)),
            chan_info: token_claims.and_then(|c| c.info),
            private: channel.private,
        };
        self.go_live(req.channel.clone(), p, vec![reply], sub);
        // The reply went out with go_live, ahead of any publication.
        Ok(None)
    }

    async fn publish(
        &mut self,
        channel_name: String,
        data: Option<Box<RawValue>>,
    ) -> Result<Option<ReplyResult>, Fail> {
        let data = data.ok_or(ProtocolError::BadRequest)?;
        let channel = Channel::parse(&channel_name, &self.edge.settings.channels)?;
        let sub = self
            .subs
            .get(&channel_name)
            .filter(|s| !s.subscriber.is_dead());
        let authorized_private = sub.is_some_and(|s| s.private);
        channel.check_client_publish(self.user(), authorized_private)?;
        let authed = self.authed.as_ref().ok_or(ProtocolError::Unauthorized)?;
        let info = ClientInfo {
            user: authed.user.clone(),
            client: self.client_id.clone(),
            conn_info: authed.conn_info.clone(),
            chan_info: sub.and_then(|s| s.chan_info.clone()),
        };
        let info = serde_json::value::to_raw_value(&info).map_err(|_| ProtocolError::Internal)?;
        // A client publish starts its own trace (not one per connection).
        let span = if telemetry::enabled() {
            tracing::info_span!(parent: None, "client_publish", otel.kind = "server")
        } else {
            tracing::Span::none()
        };
        let published = self
            .edge
            .publisher
            .publish(PublishRequest {
                channel: &channel_name,
                data: &data,
                info: Some(&info),
                idempotency_key: None,
                history: channel.options.history,
            })
            .instrument(span)
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "client publish failed");
                match e.kind {
                    PublishErrorKind::Backpressure => ProtocolError::TooManyRequests,
                    PublishErrorKind::Timeout
                    | PublishErrorKind::Unavailable
                    | PublishErrorKind::Rejected => ProtocolError::Internal,
                }
            })?;
        Ok(Some(ReplyResult::Publish(PublishResult {
            offset: published.offset,
            epoch: published.epoch,
        })))
    }

    async fn history(&mut self, req: HistoryRequest) -> Result<Option<ReplyResult>, Fail> {
        let channel = Channel::parse(&req.channel, &self.edge.settings.channels)?;
        if !channel.options.history {
            return Err(Fail::Error(ProtocolError::NotAvailable));
        }
        let authorized_private = self
            .subs
            .get(&req.channel)
            .is_some_and(|s| s.private && !s.subscriber.is_dead());
        channel.check_history(self.user(), authorized_private)?;
        let page_limit = self.edge.settings.client.history_page_limit;
        let limit = match req.limit {
            0 => 0,
            n if n < 0 => page_limit,
            n => (n as usize).min(page_limit),
        };
        let since = req.since.as_ref();
        let (after, before) = match (since, req.reverse) {
            (Some(s), false) => (s.offset, None),
            (Some(s), true) => (0, Some(s.offset)),
            (None, _) => (0, None),
        };
        let page = self
            .edge
            .sync
            .read(&req.channel, after, before, limit, req.reverse)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "history read failed");
                ProtocolError::Internal
            })?;
        if let Some(s) = since
            && !s.epoch.is_empty()
            && s.epoch != page.epoch
        {
            return Err(Fail::Error(ProtocolError::UnrecoverablePosition));
        }
        Ok(Some(ReplyResult::History(HistoryResult {
            publications: page.publications,
            epoch: page.epoch,
            offset: page.head,
        })))
    }

    fn refresh(&mut self, req: RefreshRequest) -> Result<Option<ReplyResult>, Fail> {
        let claims = match self.edge.verifier.connect(&req.token) {
            Ok(c) => c,
            Err(TokenError::Expired) => return Err(Fail::Error(ProtocolError::TokenExpired)),
            Err(TokenError::Invalid) => return Err(Fail::Close(Disconnect::INVALID_TOKEN)),
        };
        let authed = self.authed.as_mut().ok_or(ProtocolError::Unauthorized)?;
        if claims.sub != authed.user {
            return Err(Fail::Close(Disconnect::INVALID_TOKEN));
        }
        authed.expires_at = claims
            .exp
            .map(|exp| close_deadline(exp, self.edge.settings.client.expired_close_delay));
        Ok(Some(ReplyResult::Refresh(RefreshResult {
            client: self.client_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            expires: claims.exp.is_some(),
            ttl: claims.exp.map_or(0, ttl),
        })))
    }

    fn sub_refresh(&mut self, req: SubRefreshRequest) -> Result<Option<ReplyResult>, Fail> {
        let user = self.user().to_string();
        let claims = match self
            .edge
            .verifier
            .subscription(&req.token, &user, &req.channel)
        {
            Ok(c) => c,
            Err(TokenError::Expired) => return Err(Fail::Error(ProtocolError::TokenExpired)),
            Err(TokenError::Invalid) => return Err(Fail::Error(ProtocolError::PermissionDenied)),
        };
        let sub = self
            .subs
            .get_mut(&req.channel)
            .filter(|s| !s.subscriber.is_dead())
            .ok_or(ProtocolError::PermissionDenied)?;
        sub.expires_at = claims
            .exp
            .map(|exp| close_deadline(exp, self.edge.settings.client.expired_close_delay));
        Ok(Some(ReplyResult::SubRefresh(SubRefreshResult {
            expires: claims.exp.is_some(),
            ttl: claims.exp.map_or(0, ttl),
        })))
    }
}

impl Session {
    /// One command of the server API (see `control`). Nothing is answered:
    /// the API's caller already has its `{}`, so what cannot be done is
    /// logged and skipped.
    async fn handle_control(&mut self, cmd: SessionCommand) {
        match cmd {
            SessionCommand::Subscribe { channel, recover } => {
                self.server_subscribe(channel, recover).await;
            }
            SessionCommand::Unsubscribe { channel } => self.server_unsubscribe(&channel),
            SessionCommand::ExpireAt(at) => {
                let grace = self.edge.settings.client.expired_close_delay;
                if let Some(authed) = self.authed.as_mut() {
                    authed.expires_at = at.map(|exp| close_deadline(exp, grace));
                }
            }
        }
    }

    /// Server-side subscribe: no permission check (the backend decided). The
    /// client gets a `subscribe` push, then the recovered publications as
    /// publication pushes (the SDKs take publications of a server-side
    /// subscription only from pushes), then live ones.
    async fn server_subscribe(&mut self, name: String, recover: Option<(u64, String)>) {
        let channels = self.edge.settings.channels.clone();
        let Ok(channel) = Channel::parse(&name, &channels) else {
            tracing::debug!("server subscribe to an invalid channel");
            return;
        };
        let private = channel.private;
        if let Some(existing) = self.subs.get(&name) {
            if !existing.subscriber.is_dead() {
                return;
            }
            if let Some(old) = self.subs.remove(&name) {
                self.edge.hub.remove(&old.subscriber);
                metrics::gauge!(m::SUBSCRIPTIONS).decrement(1.0);
            }
        }
        if self.subs.len() >= self.edge.settings.client.channel_limit {
            tracing::debug!("server subscribe over the channel limit");
            return;
        }
        let mut p = match self.prepare(&channel, recover).await {
            Ok(p) => p,
            Err(_) => {
                tracing::warn!("server subscribe failed");
                return;
            }
        };
        let recovered = std::mem::take(&mut p.result.publications);
        let mut head = Vec::with_capacity(recovered.len() + 1);
        head.push(protocol::encode_reply(&Reply::push(Push {
            channel: name.clone(),
            subscribe: Some(std::mem::take(&mut p.result)),
            ..Push::default()
        })));
        head.extend(
            recovered
                .iter()
                .map(|publication| protocol::publication_push(&name, publication.get().as_bytes())),
        );
        // The backend authorized it, private channels included.
        self.go_live(name, p, head, SubOptions::granted(private));
    }

    /// Sends `head` (the reply or push announcing the subscription), then what
    /// was buffered past the position, and records the subscription.
    fn go_live(&mut self, name: String, p: Prepared, head: Vec<Bytes>, sub: SubOptions) {
        if p.subscriber.go_live(head, p.position) == GoLive::Gap {
            p.subscriber.end(Unsubscribe::INSUFFICIENT_STATE);
        }
        metrics::gauge!(m::SUBSCRIPTIONS).increment(1.0);
        self.subs.insert(
            name,
            Sub {
                subscriber: p.subscriber,
                expires_at: sub.expires_at,
                chan_info: sub.chan_info,
                private: sub.private,
            },
        );
    }

    /// Server-side unsubscribe: the `unsubscribe` push (2000) goes out even
    /// when the session is not subscribed, as in Centrifugo; SDKs ignore it
    /// for a channel they do not know.
    fn server_unsubscribe(&mut self, channel: &str) {
        match self.subs.remove(channel) {
            Some(sub) => {
                // Ends delivery before the push, so no publication follows it.
                sub.subscriber.end(Unsubscribe::SERVER);
                self.edge.hub.remove(&sub.subscriber);
                metrics::gauge!(m::SUBSCRIPTIONS).decrement(1.0);
            }
            None => self.reply(&Reply::push(Push::unsubscribe(
                channel,
                Unsubscribe::SERVER,
            ))),
        }
    }
}

/// The last offset of `publications` if they run contiguously from
/// `after + 1` (`after` itself when there are none); `None` otherwise.
fn contiguous_last(publications: &[Box<RawValue>], after: u64) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct OffsetOnly {
        offset: u64,
    }
    let mut expected = after + 1;
    for p in publications {
        let o: OffsetOnly = serde_json::from_str(p.get()).ok()?;
        if o.offset != expected {
            return None;
        }
        expected += 1;
    }
    Some(expected - 1)
}

/// Drains the outbox into the socket until the connection closes: one
/// WebSocket frame per drain, then on close a `disconnect` push and the close
/// frame carrying the code. Each write records its frames, bytes and the
/// delivery latency of its oldest publication.
///
/// A write blocked by a client that stopped reading is abandoned as soon as
/// the connection is closed as slow (3008): the socket is dropped, so a
/// stalled peer holds neither memory nor a task. Other closes give a blocked
/// write `CLOSE_WRITE_TIMEOUT` to finish.
async fn write_loop(mut sink: SplitSink<WebSocket, Message>, outbox: Arc<Outbox>) {
    loop {
        let batch = outbox.next_batch().await;
        if !batch.frame.is_empty() {
            let len = batch.frame.len() as u64;
            let Ok(text) = Utf8Bytes::try_from(batch.frame) else {
                tracing::error!("outbound frame is not UTF-8");
                outbox.close(Disconnect::SERVER_ERROR);
                continue;
            };
            let send = sink.send(Message::Text(text));
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
                let push = protocol::encode_reply(&Reply::push(Push {
                    disconnect: Some(DisconnectPush {
                        code: u32::from(d.code()),
                        reason: d.reason().to_string(),
                        reconnect: d.reconnect(),
                    }),
                    ..Push::default()
                }));
                if let Ok(text) = Utf8Bytes::try_from(push) {
                    let _ =
                        tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.send(Message::Text(text)))
                            .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pubs(offsets: &[u64]) -> Vec<Box<RawValue>> {
        offsets
            .iter()
            .map(|o| RawValue::from_string(format!(r#"{{"data":1,"offset":{o}}}"#)).unwrap())
            .collect()
    }

    #[test]
    fn contiguity() {
        assert_eq!(contiguous_last(&pubs(&[]), 5), Some(5));
        assert_eq!(contiguous_last(&pubs(&[6, 7, 8]), 5), Some(8));
        assert_eq!(contiguous_last(&pubs(&[6, 8]), 5), None);
        assert_eq!(contiguous_last(&pubs(&[7]), 5), None);
    }
}
