//! The JSON shapes of protocol v2: `Command` in, `Reply` and push frames out.
//! Field names follow centrifugal/protocol `client.proto` (snake_case JSON).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::codes::{ProtocolError, Unsubscribe};

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// One client command. Exactly one method field is set, except for the pong
/// (`{}`), which has none.
#[derive(Debug, Default, Deserialize)]
pub struct Command {
    #[serde(default)]
    pub id: u32,
    pub(super) connect: Option<ConnectRequest>,
    pub(super) subscribe: Option<SubscribeRequest>,
    pub(super) unsubscribe: Option<ChannelRequest>,
    pub(super) publish: Option<PublishRequest>,
    pub(super) presence: Option<ChannelRequest>,
    pub(super) presence_stats: Option<ChannelRequest>,
    pub(super) history: Option<HistoryRequest>,
    pub(super) ping: Option<serde::de::IgnoredAny>,
    pub(super) send: Option<serde::de::IgnoredAny>,
    pub(super) rpc: Option<RpcRequest>,
    pub(super) refresh: Option<RefreshRequest>,
    pub(super) sub_refresh: Option<SubRefreshRequest>,
    /// Set by the Protobuf decoder for a command whose `data` is not JSON
    /// (Herald keeps payloads as JSON): the command is a bad request.
    #[serde(skip)]
    pub(super) data_not_json: bool,
}

/// The method a command carries, taken out of the command.
#[derive(Debug)]
pub enum Method {
    Connect(ConnectRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(ChannelRequest),
    Publish(PublishRequest),
    Presence(ChannelRequest),
    PresenceStats(ChannelRequest),
    History(HistoryRequest),
    Ping,
    Send,
    Rpc(RpcRequest),
    Refresh(RefreshRequest),
    SubRefresh(SubRefreshRequest),
    /// `{}`: the client's answer to a server ping.
    Pong,
}

impl Method {
    /// A short static name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Subscribe(_) => "subscribe",
            Self::Unsubscribe(_) => "unsubscribe",
            Self::Publish(_) => "publish",
            Self::Presence(_) => "presence",
            Self::PresenceStats(_) => "presence_stats",
            Self::History(_) => "history",
            Self::Ping => "ping",
            Self::Send => "send",
            Self::Rpc(_) => "rpc",
            Self::Refresh(_) => "refresh",
            Self::SubRefresh(_) => "sub_refresh",
            Self::Pong => "pong",
        }
    }
}

impl Command {
    /// Takes the single method out of the command. No method and no id is a
    /// pong; no known method with an id is `MethodNotFound`; more than one
    /// method, or `data` that is not JSON, is `BadRequest`.
    pub fn method(self) -> Result<Method, ProtocolError> {
        if self.data_not_json {
            return Err(ProtocolError::BadRequest);
        }
        let mut found = Vec::with_capacity(1);
        if let Some(v) = self.connect {
            found.push(Method::Connect(v));
        }
        if let Some(v) = self.subscribe {
            found.push(Method::Subscribe(v));
        }
        if let Some(v) = self.unsubscribe {
            found.push(Method::Unsubscribe(v));
        }
        if let Some(v) = self.publish {
            found.push(Method::Publish(v));
        }
        if let Some(v) = self.presence {
            found.push(Method::Presence(v));
        }
        if let Some(v) = self.presence_stats {
            found.push(Method::PresenceStats(v));
        }
        if let Some(v) = self.history {
            found.push(Method::History(v));
        }
        if self.ping.is_some() {
            found.push(Method::Ping);
        }
        if self.send.is_some() {
            found.push(Method::Send);
        }
        if let Some(v) = self.rpc {
            found.push(Method::Rpc(v));
        }
        if let Some(v) = self.refresh {
            found.push(Method::Refresh(v));
        }
        if let Some(v) = self.sub_refresh {
            found.push(Method::SubRefresh(v));
        }
        match (found.len(), self.id) {
            (0, 0) => Ok(Method::Pong),
            (0, _) => Err(ProtocolError::MethodNotFound),
            (1, _) => Ok(found.pop().expect("one element")),
            _ => Err(ProtocolError::BadRequest),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectRequest {
    pub token: String,
    pub data: Option<Box<RawValue>>,
    pub name: String,
    pub version: String,
    pub subs: BTreeMap<String, SubscribeRequest>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeRequest {
    pub channel: String,
    pub token: String,
    pub recover: bool,
    pub epoch: String,
    pub offset: u64,
    pub data: Option<Box<RawValue>>,
    pub positioned: bool,
    pub recoverable: bool,
    pub join_leave: bool,
    /// The delta type asked for (`fossil`), empty for none.
    pub delta: String,
    /// Subscription type: 0 a plain subscription (the only kind Herald has;
    /// others are map subscriptions in Centrifugo).
    #[serde(rename = "type")]
    pub kind: i32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChannelRequest {
    pub channel: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishRequest {
    pub channel: String,
    /// Raw JSON as the client sent it; required.
    pub data: Option<Box<RawValue>>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct StreamPosition {
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    pub epoch: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HistoryRequest {
    pub channel: String,
    /// 0: no publications, only the stream position; negative: as many as allowed.
    pub limit: i32,
    pub since: Option<StreamPosition>,
    pub reverse: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcRequest {
    pub method: String,
    /// Raw JSON as the client sent it.
    pub data: Option<Box<RawValue>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RefreshRequest {
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubRefreshRequest {
    pub channel: String,
    pub token: String,
}

/// Who published: attached to publications made by clients.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientInfo {
    pub user: String,
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub conn_info: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chan_info: Option<Box<RawValue>>,
}

/// A publication as clients see it. `data` and `info` are raw JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct Publication {
    pub data: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "is_zero_u64", default)]
    pub offset: u64,
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub code: u32,
    pub message: String,
    #[serde(skip_serializing_if = "is_false")]
    pub temporary: bool,
}

/// A reply to a command with an id.
#[derive(Debug, Serialize)]
pub struct Reply {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub result: Option<ReplyResult>,
}

impl Reply {
    pub fn ok(id: u32, result: ReplyResult) -> Self {
        Self {
            id,
            error: None,
            result: Some(result),
        }
    }

    pub fn error(id: u32, error: ErrorBody) -> Self {
        Self {
            id,
            error: Some(error),
            result: None,
        }
    }

    pub fn push(push: Push) -> Self {
        Self {
            id: 0,
            error: None,
            result: Some(ReplyResult::Push(push)),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyResult {
    Connect(ConnectResult),
    Subscribe(SubscribeResult),
    Unsubscribe(Empty),
    Publish(PublishResult),
    History(HistoryResult),
    Refresh(RefreshResult),
    SubRefresh(SubRefreshResult),
    Ping(Empty),
    Presence(PresenceResult),
    PresenceStats(PresenceStatsResult),
    Rpc(RpcResult),
    Push(Push),
}

/// `presence` reply: client id → its raw `ClientInfo` object.
#[derive(Debug, Default, Serialize)]
pub struct PresenceResult {
    pub presence: BTreeMap<String, Box<RawValue>>,
}

#[derive(Debug, Default, Serialize)]
pub struct PresenceStatsResult {
    pub num_clients: u64,
    pub num_users: u64,
}

#[derive(Debug, Serialize)]
pub struct RpcResult {
    /// `null` is left out, as Centrifugo's reply to an RPC without data.
    #[serde(skip_serializing_if = "is_null")]
    pub data: Box<RawValue>,
}

fn is_null(v: &RawValue) -> bool {
    v.get() == "null"
}

/// The body of a `join` or `leave` push.
#[derive(Debug, Serialize)]
pub struct JoinLeave {
    /// The raw `ClientInfo` object.
    pub info: Box<RawValue>,
}

#[derive(Debug, Default, Serialize)]
pub struct Empty {}

#[derive(Debug, Default, Serialize)]
pub struct ConnectResult {
    pub client: String,
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    /// Data a connect proxy's backend gave for the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub subs: BTreeMap<String, SubscribeResult>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ping: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub pong: bool,
    /// The session of a connection over bidirectional emulation
    /// (HTTP-streaming, SSE): the SDK names it in its `/emulation` requests.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// The edge holding that session, where `/emulation` requests go.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
}

#[derive(Debug, Default, Serialize)]
pub struct SubscribeResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub recoverable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    /// Raw `Publication` objects, in offset order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Box<RawValue>>,
    #[serde(skip_serializing_if = "is_false")]
    pub recovered: bool,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    #[serde(skip_serializing_if = "is_false")]
    pub positioned: bool,
    /// Data a subscribe proxy's backend gave for the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "is_false")]
    pub was_recovering: bool,
    /// The delta type asked for is granted: publications come as deltas.
    #[serde(skip_serializing_if = "is_false")]
    pub delta: bool,
}

/// Publish reply. `offset` and `epoch` are Herald's extension for history
/// channels; SDKs ignore unknown fields.
#[derive(Debug, Default, Serialize)]
pub struct PublishResult {
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
}

/// History reply. Every field is always present, empty or zero included,
/// as Centrifugo's encoder writes them.
#[derive(Debug, Default, Serialize)]
pub struct HistoryResult {
    pub publications: Vec<Box<RawValue>>,
    pub epoch: String,
    pub offset: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct RefreshResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct SubRefreshResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

/// Server-initiated message. Publications are built as bytes by
/// [`super::publication_push`]; the other pushes go through this type.
#[derive(Debug, Default, Serialize)]
pub struct Push {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<UnsubscribePush>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeResult>,
    /// The connection's new expiry, set by the server API (same fields as
    /// the `refresh` reply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinLeave>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leave: Option<JoinLeave>,
    /// The end of a connection said in-stream: transports without close
    /// codes (HTTP-streaming, SSE, the unidirectional ones) carry it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<DisconnectPush>,
}

/// A `disconnect` push: the code and reason a WebSocket would put in its
/// Close frame.
#[derive(Debug, Serialize)]
pub struct DisconnectPush {
    pub code: u32,
    pub reason: String,
}

impl Push {
    /// The in-stream end of a connection with `code` and `reason`.
    pub fn disconnect(code: u16, reason: &str) -> Self {
        Self {
            disconnect: Some(DisconnectPush {
                code: u32::from(code),
                reason: reason.into(),
            }),
            ..Self::default()
        }
    }

    pub fn unsubscribe(channel: &str, u: Unsubscribe) -> Self {
        Self {
            channel: channel.into(),
            unsubscribe: Some(UnsubscribePush {
                code: u.code,
                reason: u.reason.into(),
            }),
            ..Self::default()
        }
    }
}

#[derive(Debug, Serialize)]
pub struct UnsubscribePush {
    pub code: u32,
    pub reason: String,
}
