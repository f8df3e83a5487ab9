//! The request and result types of the server API methods and what each
//! method does. Transport (keys, status codes, reply envelope) is `mod.rs`'s.

use futures::StreamExt;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::{
    Api, BROADCAST_CONCURRENCY, Failure, MAX_DISCONNECT_REASON_BYTES, MethodError, Outcome,
};
use crate::bus::publisher::{PublishError, PublishErrorKind, PublishRequest as BusPublish};
use crate::channel::Channel;
use crate::edge::control::{self, ControlMessage, ControlOp};
use crate::edge::presence::{MAX_STATUS_USERS, PresenceError, UserStatus};
use crate::protocol::{Disconnect, ProtocolError};
use crate::sync::client::SyncClientError;

/// Longest idempotency key; it travels in a NATS header.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// `data` present (even `null`) is `Some`; absent is `None` (error 107).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
pub(super) struct PublishRequest {
    #[serde(default)]
    channel: String,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct BroadcastRequest {
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct HistoryRequest {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Debug, Deserialize)]
struct StreamPosition {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

/// Which connections of a user a control method targets.
#[derive(Debug, Deserialize)]
pub(super) struct Target {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: String,
    #[serde(default)]
    session: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct DisconnectRequest {
    #[serde(flatten)]
    target: Target,
    #[serde(default)]
    whitelist: Vec<String>,
    #[serde(default)]
    disconnect: Option<DisconnectObject>,
}

#[derive(Debug, Deserialize)]
struct DisconnectObject {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    reason: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct SubscribeRequest {
    #[serde(flatten)]
    target: Target,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    recover_since: Option<StreamPosition>,
}

#[derive(Debug, Deserialize)]
pub(super) struct UnsubscribeRequest {
    #[serde(flatten)]
    target: Target,
    #[serde(default)]
    channel: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct RefreshRequest {
    #[serde(flatten)]
    target: Target,
    #[serde(default)]
    expired: bool,
    #[serde(default)]
    expire_at: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RevokeTokenRequest {
    #[serde(default)]
    jti: String,
    expire_at: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct InvalidateUserTokensRequest {
    #[serde(default)]
    user: String,
    issued_before: Option<u64>,
    expire_at: Option<u64>,
}

/// The result of the control methods: `{}`, meaning "sent".
#[derive(Debug, Serialize)]
pub(super) struct Sent {}

/// `info` takes no parameters; any JSON object is accepted.
#[derive(Debug, Deserialize)]
pub(super) struct InfoRequest {}

/// `{}` for a channel without history.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub(super) struct PublishResult {
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    epoch: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Serialize)]
pub(super) struct BroadcastResult {
    responses: Vec<Outcome<PublishResult>>,
}

#[derive(Debug, Serialize)]
pub(super) struct HistoryResult {
    /// Protocol `Publication` objects exactly as sync returned them.
    publications: Vec<Box<RawValue>>,
    epoch: String,
    /// The channel's head.
    offset: u64,
}

#[derive(Debug, Serialize)]
pub(super) struct InfoResult {
    nodes: Vec<NodeInfo>,
}

#[derive(Debug, Serialize)]
struct NodeInfo {
    uid: String,
    name: String,
    version: &'static str,
    num_clients: u64,
    num_users: u64,
    num_channels: u64,
    num_subs: u64,
    /// Seconds since this process started.
    uptime: u64,
}

/// An empty key is no key (as in Centrifugo); a usable key is 1–256 bytes
/// without control characters.
fn idempotency_key(key: Option<&str>) -> Result<Option<&str>, ProtocolError> {
    match key {
        None | Some("") => Ok(None),
        Some(k) if k.len() <= MAX_IDEMPOTENCY_KEY_BYTES && !k.chars().any(char::is_control) => {
            Ok(Some(k))
        }
        Some(_) => Err(ProtocolError::BadRequest),
    }
}

/// An unconfirmed publish (timeout) names the key to retry with; anything
/// else is an internal error.
fn publish_failed(e: PublishError) -> MethodError {
    tracing::warn!(kind = ?e.kind, error = %e.message, "api publish failed");
    match (e.kind, e.idempotency_key) {
        (PublishErrorKind::Timeout, Some(key)) => MethodError {
            error: ProtocolError::PublishUnconfirmed,
            idempotency_key: Some(key),
        },
        _ => ProtocolError::Internal.into(),
    }
}

/// The custom close of a `disconnect`, or the default 3503.
fn disconnect_close(d: Option<DisconnectObject>) -> Result<(u16, String), ProtocolError> {
    let Some(d) = d else {
        let f = Disconnect::FORCE_NO_RECONNECT;
        return Ok((f.code, f.reason.to_string()));
    };
    match u16::try_from(d.code) {
        Ok(code @ 3000..=4999) if d.reason.len() <= MAX_DISCONNECT_REASON_BYTES => {
            Ok((code, d.reason))
        }
        _ => Err(ProtocolError::BadRequest),
    }
}

/// The page size of a `history` request: none or 0 reads only the
/// position, a negative limit or one above `max` reads `max`.
fn history_limit(limit: Option<i64>, max: usize) -> usize {
    match limit {
        None | Some(0) => 0,
        Some(n) if n < 0 => max,
        Some(n) => usize::try_from(n).map_or(max, |n| n.min(max)),
    }
}

/// Decodes a request body as `method` does and runs the method's checks that
/// need no I/O (channel names, keys, codes, sizes), in the method's order.
/// For the fuzz targets and the corpus replay ([`crate::fuzzing`]).
pub(super) fn check_request(
    method: super::Method,
    body: &[u8],
    channels: &crate::config::ChannelsConfig,
) -> Result<(), Failure> {
    use super::{Method as M, decode};
    let channel = |name: &str| Channel::parse(name, channels).map(|_| ());
    match method {
        M::Publish => {
            let req: PublishRequest = decode(body)?;
            req.data.ok_or(ProtocolError::BadRequest)?;
            idempotency_key(req.idempotency_key.as_deref())?;
            channel(&req.channel)?;
        }
        M::Broadcast => {
            let req: BroadcastRequest = decode(body)?;
            req.data.ok_or(ProtocolError::BadRequest)?;
            if req.channels.is_empty() {
                return Err(ProtocolError::BadRequest.into());
            }
            idempotency_key(req.idempotency_key.as_deref())?;
            for c in &req.channels {
                let _ = channel(c);
            }
        }
        M::History => {
            let req: HistoryRequest = decode(body)?;
            channel(&req.channel)?;
            history_limit(req.limit, 100);
        }
        M::Info => {
            decode::<InfoRequest>(body)?;
        }
        M::Disconnect => {
            let req: DisconnectRequest = decode(body)?;
            disconnect_close(req.disconnect)?;
        }
        M::Subscribe => {
            let req: SubscribeRequest = decode(body)?;
            channel(&req.channel)?;
        }
        M::Unsubscribe => {
            let req: UnsubscribeRequest = decode(body)?;
            channel(&req.channel)?;
        }
        M::Refresh => {
            let req: RefreshRequest = decode(body)?;
            req.expire_at.map(crate::auth::clamp_exp);
        }
        M::Presence | M::PresenceStats => {
            let req: ChannelOnly = decode(body)?;
            channel(&req.channel)?;
        }
        M::UserStatus => {
            let req: UserStatusRequest = decode(body)?;
            if req.users.len() > MAX_STATUS_USERS || req.users.iter().any(String::is_empty) {
                return Err(ProtocolError::BadRequest.into());
            }
        }
        M::RevokeToken => {
            let req: RevokeTokenRequest = decode(body)?;
            req.expire_at
                .filter(|_| !req.jti.is_empty())
                .ok_or(ProtocolError::BadRequest)?;
        }
        M::InvalidateUserTokens => {
            let req: InvalidateUserTokensRequest = decode(body)?;
            req.expire_at
                .filter(|_| !req.user.is_empty())
                .ok_or(ProtocolError::BadRequest)?;
        }
        M::AddMembers | M::RemoveMembers | M::Members | M::Conversations | M::Unread => {
            super::conversations::check_request(method, body, channels)?;
        }
        M::DeviceRegister | M::DeviceRemove | M::DeviceList | M::SendPushNotification => {
            super::push::check_request(method, body)?;
        }
    }
    Ok(())
}

fn presence_failed(e: PresenceError) -> Failure {
    tracing::warn!(error = %e, "presence query failed");
    ProtocolError::Internal.into()
}

#[derive(Debug, Deserialize)]
pub(super) struct ChannelOnly {
    #[serde(default)]
    channel: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct UserStatusRequest {
    #[serde(default)]
    users: Vec<String>,
}

/// `{"presence": {client id: {client, user, conn_info?, chan_info?}}}`.
#[derive(Debug, Serialize)]
pub(super) struct PresenceResult {
    presence: std::collections::BTreeMap<String, Box<RawValue>>,
}

#[derive(Debug, Serialize)]
pub(super) struct PresenceStatsResult {
    num_clients: u64,
    num_users: u64,
}

#[derive(Debug, Serialize)]
pub(super) struct UserStatusResult {
    statuses: Vec<UserStatus>,
}

fn sync_failed(e: SyncClientError) -> ProtocolError {
    match e {
        SyncClientError::Remote { kind, .. } if kind == "bad_request" => ProtocolError::BadRequest,
        e => {
            tracing::warn!(error = %e, "api history read failed");
            ProtocolError::Internal
        }
    }
}

impl Api {
    pub(super) async fn publish(&self, req: PublishRequest) -> Result<PublishResult, Failure> {
        let data = req.data.ok_or(ProtocolError::BadRequest)?;
        let key = idempotency_key(req.idempotency_key.as_deref())?;
        Ok(self.publish_one(&req.channel, &data, key).await?)
    }

    pub(super) async fn broadcast(
        &self,
        req: BroadcastRequest,
    ) -> Result<BroadcastResult, Failure> {
        let data = req.data.ok_or(ProtocolError::BadRequest)?;
        if req.channels.is_empty() {
            return Err(ProtocolError::BadRequest.into());
        }
        let key = idempotency_key(req.idempotency_key.as_deref())?;
        let (channels, data) = (&req.channels, &*data);
        // By index: a closure over `&String` items trips higher-ranked
        // lifetime inference inside the handler future.
        let responses = futures::stream::iter(0..channels.len())
            .map(|i| async move { Outcome::from(self.publish_one(&channels[i], data, key).await) })
            .buffered(BROADCAST_CONCURRENCY)
            .collect()
            .await;
        Ok(BroadcastResult { responses })
    }

    /// Validates the channel, then publishes with or without history as its
    /// namespace says. No user permission check: the API may publish anywhere.
    async fn publish_one(
        &self,
        channel: &str,
        data: &RawValue,
        key: Option<&str>,
    ) -> Result<PublishResult, MethodError> {
        let parsed = Channel::parse(channel, &self.state.channels)?;
        let started = std::time::Instant::now();
        let published = self
            .state
            .publisher
            .publish(BusPublish {
                channel,
                data,
                info: None,
                idempotency_key: key,
                history: parsed.options.history,
            })
            .await;
        metrics::histogram!(crate::metrics::PUBLISH_SECONDS, "source" => "api")
            .record(started.elapsed().as_secs_f64());
        let published = published.map_err(publish_failed)?;
        Ok(PublishResult {
            offset: published.offset,
            epoch: published.epoch,
        })
    }

    pub(super) async fn history(&self, req: HistoryRequest) -> Result<HistoryResult, Failure> {
        let channel = Channel::parse(&req.channel, &self.state.channels)?;
        if !channel.options.history {
            return Err(ProtocolError::NotAvailable.into());
        }
        let limit = history_limit(req.limit, self.state.history_page_limit);
        let since = req.since.as_ref().map(|s| s.offset);
        let (after, before) = match (req.reverse, since) {
            (false, s) => (s.unwrap_or(0), None),
            (true, s) => (0, s),
        };
        let page = self
            .state
            .sync
            .read(channel.name, after, before, limit, req.reverse)
            .await
            .map_err(sync_failed)?;
        let epoch_changed = req
            .since
            .as_ref()
            .is_some_and(|s| !s.epoch.is_empty() && s.epoch != page.epoch);
        if epoch_changed {
            return Err(ProtocolError::UnrecoverablePosition.into());
        }
        Ok(HistoryResult {
            publications: page.publications,
            epoch: page.epoch,
            offset: page.head,
        })
    }

    /// The channel's namespace must have presence on (else 108).
    fn presence_channel<'a>(&self, name: &'a str) -> Result<Channel<'a>, Failure> {
        let channel = Channel::parse(name, &self.state.channels)?;
        if !channel.options.presence {
            return Err(ProtocolError::NotAvailable.into());
        }
        Ok(channel)
    }

    pub(super) async fn presence(&self, req: ChannelOnly) -> Result<PresenceResult, Failure> {
        let channel = self.presence_channel(&req.channel)?;
        let presence = self
            .state
            .edge
            .presence()
            .presence(channel.name)
            .await
            .map_err(presence_failed)?;
        Ok(PresenceResult { presence })
    }

    pub(super) async fn presence_stats(
        &self,
        req: ChannelOnly,
    ) -> Result<PresenceStatsResult, Failure> {
        let channel = self.presence_channel(&req.channel)?;
        let s = self
            .state
            .edge
            .presence()
            .stats(channel.name)
            .await
            .map_err(presence_failed)?;
        Ok(PresenceStatsResult {
            num_clients: s.num_clients,
            num_users: s.num_users,
        })
    }

    /// At most `MAX_STATUS_USERS` users (107 past it), empty names refused.
    pub(super) async fn user_status(
        &self,
        req: UserStatusRequest,
    ) -> Result<UserStatusResult, Failure> {
        if req.users.len() > MAX_STATUS_USERS || req.users.iter().any(String::is_empty) {
            return Err(ProtocolError::BadRequest.into());
        }
        let statuses = self
            .state
            .edge
            .presence()
            .user_status(&req.users)
            .await
            .map_err(presence_failed)?;
        Ok(UserStatusResult { statuses })
    }

    /// Hands a control message for `target` to the edge to publish. A
    /// `session` filter matches nothing here (see the module doc).
    async fn control(&self, target: Target, op: ControlOp) -> Result<Sent, Failure> {
        if target.user.is_empty() {
            return Err(ProtocolError::BadRequest.into());
        }
        if !target.session.is_empty() {
            return Ok(Sent {});
        }
        let msg = ControlMessage {
            user: target.user,
            client: (!target.client.is_empty()).then_some(target.client),
            op,
        };
        self.state.edge.send_control(&msg).await.map_err(|e| {
            tracing::warn!(error = %e, "api control message not sent");
            ProtocolError::Internal
        })?;
        Ok(Sent {})
    }

    pub(super) async fn disconnect(&self, req: DisconnectRequest) -> Result<Sent, Failure> {
        let (code, reason) = disconnect_close(req.disconnect)?;
        let op = ControlOp::Disconnect {
            code,
            reason,
            whitelist: req.whitelist,
        };
        self.control(req.target, op).await
    }

    pub(super) async fn subscribe(&self, req: SubscribeRequest) -> Result<Sent, Failure> {
        Channel::parse(&req.channel, &self.state.channels)?;
        let op = ControlOp::Subscribe {
            channel: req.channel,
            recover_since: req.recover_since.map(|p| control::StreamPosition {
                offset: p.offset,
                epoch: p.epoch,
            }),
        };
        self.control(req.target, op).await
    }

    pub(super) async fn unsubscribe(&self, req: UnsubscribeRequest) -> Result<Sent, Failure> {
        Channel::parse(&req.channel, &self.state.channels)?;
        let op = ControlOp::Unsubscribe {
            channel: req.channel,
        };
        self.control(req.target, op).await
    }

    pub(super) async fn refresh(&self, req: RefreshRequest) -> Result<Sent, Failure> {
        let op = ControlOp::Refresh {
            expired: req.expired,
            expire_at: req.expire_at.map(crate::auth::clamp_exp),
        };
        self.control(req.target, op).await
    }

    pub(super) async fn revoke_token(&self, req: RevokeTokenRequest) -> Result<Sent, Failure> {
        let expire_at = req.expire_at.filter(|_| !req.jti.is_empty());
        let expire_at = expire_at.ok_or(ProtocolError::BadRequest)?;
        let r = self
            .state
            .edge
            .revocations()
            .ok_or(ProtocolError::NotAvailable)?;
        if expire_at > crate::auth::now_secs() {
            r.revoke_token(&req.jti, expire_at).await.map_err(|e| {
                tracing::warn!(error = %e, "revoke_token not stored");
                ProtocolError::Internal
            })?;
        }
        Ok(Sent {})
    }

    pub(super) async fn invalidate_user_tokens(
        &self,
        req: InvalidateUserTokensRequest,
    ) -> Result<Sent, Failure> {
        let expire_at = req.expire_at.filter(|_| !req.user.is_empty());
        let expire_at = expire_at.ok_or(ProtocolError::BadRequest)?;
        let r = self
            .state
            .edge
            .revocations()
            .ok_or(ProtocolError::NotAvailable)?;
        let before = req.issued_before.unwrap_or_else(crate::auth::now_secs);
        if expire_at > crate::auth::now_secs() {
            r.invalidate_user(&req.user, before, expire_at)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "invalidate_user_tokens not stored");
                    ProtocolError::Internal
                })?;
        }
        Ok(Sent {})
    }

    pub(super) fn info(&self) -> InfoResult {
        let stats = self.state.edge.stats();
        InfoResult {
            nodes: vec![NodeInfo {
                uid: self.node.uid.clone(),
                name: self.node.name.clone(),
                version: env!("CARGO_PKG_VERSION"),
                num_clients: stats.num_clients,
                num_users: stats.num_users,
                num_channels: stats.num_channels,
                num_subs: stats.num_subs,
                uptime: self.node.started.elapsed().as_secs(),
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_null_is_present_and_missing_is_not() {
        let r: PublishRequest = serde_json::from_str(r#"{"channel":"a","data":null}"#).unwrap();
        assert_eq!(r.data.unwrap().get(), "null");
        let r: PublishRequest = serde_json::from_str(r#"{"channel":"a"}"#).unwrap();
        assert!(r.data.is_none());
    }

    #[test]
    fn data_stays_raw() {
        let r: PublishRequest =
            serde_json::from_str(r#"{"channel":"a","data":{"b": 1.50, "c":[ ]}}"#).unwrap();
        assert_eq!(r.data.unwrap().get(), r#"{"b": 1.50, "c":[ ]}"#);
    }

    #[test]
    fn idempotency_keys() {
        assert_eq!(idempotency_key(None), Ok(None));
        assert_eq!(idempotency_key(Some("")), Ok(None));
        assert_eq!(idempotency_key(Some("k-1")), Ok(Some("k-1")));
        assert_eq!(
            idempotency_key(Some("a\r\nb")),
            Err(ProtocolError::BadRequest)
        );
        assert!(idempotency_key(Some(&"k".repeat(257))).is_err());
    }

    #[test]
    fn disconnect_codes() {
        assert_eq!(
            disconnect_close(None),
            Ok((3503, "force disconnect".into()))
        );
        let d = |code, reason: &str| {
            disconnect_close(Some(DisconnectObject {
                code,
                reason: reason.into(),
            }))
        };
        assert_eq!(d(4500, "banned"), Ok((4500, "banned".into())));
        assert_eq!(d(1000, "x"), Err(ProtocolError::BadRequest));
        assert_eq!(d(5000, "x"), Err(ProtocolError::BadRequest));
        assert_eq!(d(70000, "x"), Err(ProtocolError::BadRequest));
        assert!(d(4000, &"r".repeat(123)).is_ok());
        assert_eq!(d(4000, &"r".repeat(124)), Err(ProtocolError::BadRequest));
    }

    #[test]
    fn publish_result_shapes() {
        let r = PublishResult {
            offset: 3,
            epoch: "e".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"offset":3,"epoch":"e"}"#
        );
    }
}
