//! The server HTTP API for application backends, shaped like Centrifugo's
//! (centrifugal.dev `docs/server/server_api.md`), so its SDKs (`cent`, …) work.
//!
//! `POST /api/<method>` with a JSON body and the key in `X-API-Key: <key>` or
//! `Authorization: apikey <key>` (compared in constant time; only the key's
//! length can show in timing). A success is `{"result": …}`, a failure
//! `{"error": {"code", "message"}}` with the server API error codes
//! (100 internal, 102 unknown channel, 104 method not found, 107 bad request,
//! 108 not available, 112 unrecoverable position, …).
//!
//! HTTP status: as in Centrifugo, a method's own failure (bad channel name,
//! unknown namespace, publish not confirmed) is HTTP 200 with an error object.
//! Only transport-level problems get a 4xx, always with a JSON error body:
//! 401 missing or wrong key (checked first, so an unknown method without a
//! key is 401 too), 404 unknown method, 400 a body that is not JSON of the
//! method's shape (an empty body counts as `{}`), 413 a body over
//! [`MAX_BODY_BYTES`], 429 with `Retry-After` and error 111 for a client IP
//! past its budget of failed keys ([`limit`], checked before the key). Both
//! the configured and the presented key are trimmed of surrounding
//! whitespace. Without a configured key every request is 401 (there is
//! no insecure mode); `roles` does not mount this router at all then.
//!
//! Methods:
//! - `publish {channel, data, idempotency_key?}` → `{"offset", "epoch"}` for a
//!   channel of a namespace with `history = true` (sequenced and stored by the
//!   writer before the reply, I2), `{}` for one without history (a core NATS
//!   publish). The same (channel, `idempotency_key`) answers the same offset
//!   (I3). `skip_history` is ignored: a history channel's publications are
//!   all sequenced, because recovery and gap detection rely on dense offsets
//!   (I1, I4). `tags` and `b64data` are ignored (JSON data only).
//! - `broadcast {channels, data, idempotency_key?}` → `{"responses": [...]}`,
//!   one publish response per channel in request order, published
//!   concurrently, at most [`BROADCAST_CONCURRENCY`] at a time.
//! - `history {channel, limit?, since?, reverse?}` → `{"publications",
//!   "epoch", "offset"}` (offset = the channel's head), read through sync.
//!   No `limit` (or 0) returns only the position; a negative limit or one
//!   above `history_page_limit` reads `history_page_limit`. Forward without
//!   `since` starts at the oldest publication, reverse at the newest; `since`
//!   reads after (forward) or before (reverse) its offset, and a `since`
//!   whose epoch is not the channel's is error 112. A namespace without
//!   history is error 108.
//! - `info` → this node only (Herald nodes do not know each other): counts
//!   from the edge, uid (random per process), name (host name), version,
//!   uptime in seconds.
//! - `presence {channel}` → `{"presence": {client id: {client, user,
//!   conn_info?, chan_info?}}}` and `presence_stats {channel}` →
//!   `{"num_clients", "num_users"}`, across every edge
//!   (`crate::edge::presence`); 108 where the namespace has presence off.
//! - `user_status {users}` (at most 1,000, else 107) → `{"statuses":
//!   [{"user", "online", "last_seen"}]}` in request order; `last_seen` is
//!   unix milliseconds: now while online, else the last disconnect recorded
//!   (0 when none). A Herald extension (Centrifugo has no such method).
//! - Per-user control, applied on every edge where the user is connected
//!   (`crate::edge::control`). Each answers `{}` once the command is handed
//!   to NATS: fire-and-forget across nodes, as in Centrifugo — `{}` does not
//!   say a connection was found or acted on, and a user connected nowhere is
//!   no error. `user` is required (107 if empty). `client` narrows to one
//!   connection (the `client` of its connect reply). `session` is accepted
//!   for compatibility, but Herald connections have no session id besides
//!   the client id, so a non-empty `session` matches no connection and
//!   nothing is sent.
//!   - `disconnect {user, client?, session?, whitelist?, disconnect?: {code,
//!     reason}}` closes the connections, except those whose client id is in
//!     `whitelist`, with the given code and reason (the WebSocket close
//!     frame, as Centrifugo). Default 3503 "force disconnect" (terminal: the
//!     SDKs do not reconnect). `code` must be 3000–4999 and `reason` at most
//!     [`MAX_DISCONNECT_REASON_BYTES`] (it travels in the close frame), else
//!     107. Codes 3500–3999 and 4500–4999 are terminal, others reconnect.
//!   - `subscribe {user, channel, client?, session?, recover_since?: {offset,
//!     epoch}}` subscribes the connections to the channel without a
//!     permission check (the backend decides), within the per-connection
//!     channel limit (a connection at the limit, or already subscribed, is
//!     skipped). Each gets a `subscribe` push with the subscribe result, then
//!     (when recovering) the recovered publications as publication pushes,
//!     then live publications. Channel name errors are 102/107 here. `info`,
//!     `data`, `override` are ignored.
//!   - `unsubscribe {user, channel, client?, session?}`: the connections
//!     leave the channel and get an `unsubscribe` push, code 2000 "server
//!     unsubscribe".
//!   - `refresh {user, client?, session?, expired?, expire_at?}`: `expired:
//!     true` closes with 3005 (connection expired). Otherwise the connection
//!     now expires at `expire_at` (unix seconds), told so by a `refresh`
//!     push (`expires`, `ttl`) as in Centrifugo, and is closed 3005
//!     `client_expired_close_delay` after it unless the client refreshes its
//!     token; without `expire_at` it no longer expires (as in Centrifugo).
//!     An `expire_at` further ahead than [`crate::auth::MAX_TOKEN_LIFETIME`]
//!     counts as that far (no deadline computed from it can overflow).
//!
//! - IM conversations (`conversations`): `add_members`, `remove_members`,
//!   `members`, and a user's `conversations` and `unread`.
//! - Push notifications (`push`): `device_register`, `device_remove`,
//!   `device_list`, `send_push_notification`.
//! - Revocation (`crate::revocation`), stored in NATS KV and enforced by
//!   every edge; `{}` once stored:
//!   - `revoke_token {jti, expire_at}`: the token with this `jti` no longer
//!     connects, refreshes or subscribes, and a connection holding it closes
//!     with 3500, until `expire_at` (unix seconds, the token's `exp`).
//!   - `invalidate_user_tokens {user, issued_before?, expire_at}`: the same
//!     for every token of `user` with an `iat` before `issued_before`
//!     (default now; no `iat` counts as before), until `expire_at` (the
//!     latest `exp` among them). Missing fields are 107; an `expire_at`
//!     already past stores nothing.
//!
//! Publish failures map to error 100 "internal server error" whatever their
//! kind (timeout, backpressure, NATS or writer unavailable, writer refusal):
//! the caller retries with the same idempotency key, which is safe (I3).
//!
//! No user permission checks: the key holder may publish into any valid
//! channel, personal `#user` channels included. Channel names are validated
//! and their namespace resolved by [`crate::channel::Channel::parse`].
//!
//! Publication data stays raw JSON (`RawValue`) end to end: never re-parsed.
//!
//! [`Caller`] runs the same methods for a caller in the process that
//! authorized the request itself (the admin console, `crate::web::admin`),
//! whether or not `api_key` is set.
//!
//! Knows nothing of sessions, NATS subjects or the store: it publishes through
//! [`Publisher`], reads through [`SyncClient`], asks the [`Edge`] for counts
//! and hands it control messages to send.

mod conversations;
mod push;
pub use push::removed_id;
pub mod limit;
mod methods;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;
use tracing::Instrument;

use crate::bus::publisher::Publisher;
use crate::config::{ChannelsConfig, Secret};
use crate::edge::Edge;
use crate::metrics::API_REQUESTS_TOTAL;
use crate::protocol::ProtocolError;
use crate::sync::client::SyncClient;
use crate::telemetry;

/// A sync failure as the server API answers it: a request sync refused as
/// bad is 107, anything else 100 (logged with `what`).
fn sync_failed(e: crate::sync::client::SyncClientError, what: &str) -> Failure {
    match &e {
        crate::sync::client::SyncClientError::Remote { kind, .. } if kind == "bad_request" => {
            ProtocolError::BadRequest.into()
        }
        _ => {
            tracing::warn!(error = %e, request = what, "api request to sync failed");
            ProtocolError::Internal.into()
        }
    }
}

/// Largest request body; a larger one is answered 413 without being read further.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Publishes of one `broadcast` in flight at once.
pub const BROADCAST_CONCURRENCY: usize = 32;

/// Longest `disconnect` reason: a WebSocket close frame holds 123 bytes of
/// reason after the code.
pub const MAX_DISCONNECT_REASON_BYTES: usize = 123;

#[derive(Clone)]
pub struct ApiState {
    /// The API key; `None` refuses every request.
    pub key: Option<Secret>,
    pub publisher: Publisher,
    pub sync: SyncClient,
    pub channels: ChannelsConfig,
    /// Largest `history` page.
    pub history_page_limit: usize,
    /// For `info`, and to send per-user control messages.
    pub edge: Arc<Edge>,
    /// The failed-key budget per client IP.
    pub failures: limit::FailureLimit,
    /// Where `send_push_notification` queues its jobs.
    pub push: crate::push::queue::Enqueuer,
}

/// What `info` says about this node besides the edge's counts; fixed when
/// the router is built (at process start).
struct Node {
    uid: String,
    name: String,
    started: Instant,
}

struct Api {
    state: ApiState,
    node: Node,
}

/// The API's methods for callers inside the process that authorized the
/// request themselves (the admin console, `crate::web`): no key check, no
/// failed-key budget; the same methods, bodies and replies as the HTTP API.
#[derive(Clone)]
pub struct Caller(Arc<Api>);

impl Caller {
    pub fn new(state: ApiState) -> Self {
        Self(Arc::new(Api {
            state,
            node: Node {
                uid: uuid::Uuid::new_v4().to_string(),
                name: host_name(),
                started: Instant::now(),
            },
        }))
    }

    /// `POST /api/<method>` with this body, answered as the HTTP API would
    /// for a request with the right key: the status and the JSON body.
    pub async fn call(&self, method: &str, body: &[u8]) -> (StatusCode, Vec<u8>) {
        let method = Method::from_name(method);
        let label = Method::label(method);
        let outcome = match method {
            Some(m) => self.0.run(m, blank_is_empty_object(body)).await,
            None => Err(Failure::Transport(
                StatusCode::NOT_FOUND,
                ProtocolError::MethodNotFound,
            )),
        };
        let (status, result, body) = reply(outcome);
        metrics::counter!(API_REQUESTS_TOTAL, "method" => label, "result" => result).increment(1);
        (status, body)
    }

    /// This node's uid, host name and uptime, as `info` reports them.
    pub fn node(&self) -> (&str, &str, std::time::Duration) {
        let n = &self.0.node;
        (&n.uid, &n.name, n.started.elapsed())
    }
}

/// `POST /api/<method>`, answered by `caller`.
pub fn router(caller: Caller) -> Router {
    Router::new()
        .route("/api/{method}", post(handle))
        .with_state(caller.0)
}

/// The host name for `info`, or "herald" where the OS does not say.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "herald".to_string())
}

/// The methods served; anything else is 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Publish,
    Broadcast,
    History,
    Info,
    Disconnect,
    Subscribe,
    Unsubscribe,
    Refresh,
    Presence,
    PresenceStats,
    UserStatus,
    RevokeToken,
    InvalidateUserTokens,
    AddMembers,
    RemoveMembers,
    Members,
    Conversations,
    Unread,
    DeviceRegister,
    DeviceRemove,
    DeviceList,
    SendPushNotification,
}

impl Method {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "publish" => Some(Self::Publish),
            "broadcast" => Some(Self::Broadcast),
            "history" => Some(Self::History),
            "info" => Some(Self::Info),
            "disconnect" => Some(Self::Disconnect),
            "subscribe" => Some(Self::Subscribe),
            "unsubscribe" => Some(Self::Unsubscribe),
            "refresh" => Some(Self::Refresh),
            "presence" => Some(Self::Presence),
            "presence_stats" => Some(Self::PresenceStats),
            "user_status" => Some(Self::UserStatus),
            "revoke_token" => Some(Self::RevokeToken),
            "invalidate_user_tokens" => Some(Self::InvalidateUserTokens),
            "add_members" => Some(Self::AddMembers),
            "remove_members" => Some(Self::RemoveMembers),
            "members" => Some(Self::Members),
            "conversations" => Some(Self::Conversations),
            "unread" => Some(Self::Unread),
            "device_register" => Some(Self::DeviceRegister),
            "device_remove" => Some(Self::DeviceRemove),
            "device_list" => Some(Self::DeviceList),
            "send_push_notification" => Some(Self::SendPushNotification),
            _ => None,
        }
    }

    /// The metrics label; `unknown` for an unknown method (closed label set).
    fn label(method: Option<Self>) -> &'static str {
        match method {
            Some(Self::Publish) => "publish",
            Some(Self::Broadcast) => "broadcast",
            Some(Self::History) => "history",
            Some(Self::Info) => "info",
            Some(Self::Disconnect) => "disconnect",
            Some(Self::Subscribe) => "subscribe",
            Some(Self::Unsubscribe) => "unsubscribe",
            Some(Self::Refresh) => "refresh",
            Some(Self::Presence) => "presence",
            Some(Self::PresenceStats) => "presence_stats",
            Some(Self::UserStatus) => "user_status",
            Some(Self::RevokeToken) => "revoke_token",
            Some(Self::InvalidateUserTokens) => "invalidate_user_tokens",
            Some(Self::AddMembers) => "add_members",
            Some(Self::RemoveMembers) => "remove_members",
            Some(Self::Members) => "members",
            Some(Self::Conversations) => "conversations",
            Some(Self::Unread) => "unread",
            Some(Self::DeviceRegister) => "device_register",
            Some(Self::DeviceRemove) => "device_remove",
            Some(Self::DeviceList) => "device_list",
            Some(Self::SendPushNotification) => "send_push_notification",
            None => "unknown",
        }
    }
}

/// Why a request got no method result.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// A transport-level problem: this HTTP status with this error object.
    Transport(StatusCode, ProtocolError),
    /// The method failed: HTTP 200 with this error object.
    Method(MethodError),
}

impl From<ProtocolError> for Failure {
    fn from(e: ProtocolError) -> Self {
        Self::Method(e.into())
    }
}

impl From<MethodError> for Failure {
    fn from(e: MethodError) -> Self {
        Self::Method(e)
    }
}

/// A method's error: the protocol error, and for a publish whose store
/// commit was not confirmed in time the idempotency key it went out with (the
/// generated one when the request had none), for a retry that cannot store a
/// second copy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MethodError {
    error: ProtocolError,
    idempotency_key: Option<String>,
}

impl From<ProtocolError> for MethodError {
    fn from(error: ProtocolError) -> Self {
        Self {
            error,
            idempotency_key: None,
        }
    }
}

/// The server API error object: `{"code", "message"}`, plus
/// `idempotency_key` on an unconfirmed publish (a Herald extension).
#[derive(Debug, Serialize)]
struct ErrorObject {
    code: u32,
    message: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
}

/// The API's message for an unconfirmed publish: unlike a client, an API
/// caller can retry safely, with the key the error names.
const UNCONFIRMED_RETRY: &str = "publish not confirmed in time: it may still be stored; publish again \
     with this idempotency_key to avoid a second copy";

impl From<ProtocolError> for ErrorObject {
    fn from(e: ProtocolError) -> Self {
        MethodError::from(e).into()
    }
}

impl From<MethodError> for ErrorObject {
    fn from(e: MethodError) -> Self {
        Self {
            code: e.error.code(),
            message: if e.idempotency_key.is_some() {
                UNCONFIRMED_RETRY
            } else {
                e.error.message()
            },
            idempotency_key: e.idempotency_key,
        }
    }
}

/// A whole reply body, or one entry of `broadcast`'s `responses`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Outcome<T> {
    Result(T),
    Error(ErrorObject),
}

impl<T> From<Result<T, MethodError>> for Outcome<T> {
    fn from(r: Result<T, MethodError>) -> Self {
        match r {
            Ok(t) => Self::Result(t),
            Err(e) => Self::Error(e.into()),
        }
    }
}

async fn handle(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let method = Method::from_name(&name);
    let label = Method::label(method);
    if let Some(wait) = api.state.failures.blocked(peer.ip()) {
        return too_many(label, wait);
    }
    let span = tracing::info_span!(
        "api_request",
        otel.kind = "server",
        method = label,
        result = tracing::field::Empty
    );
    telemetry::continue_http(&span, &headers);
    let outcome = api
        .dispatch(method, &headers, body)
        .instrument(span.clone())
        .await;
    if let Err(Failure::Transport(StatusCode::UNAUTHORIZED, _)) = outcome {
        if let Some(wait) = api.state.failures.failed(peer.ip()) {
            tracing::warn!(peer = %peer.ip(), "api key failures over budget");
            return too_many(label, wait);
        }
    }
    let (status, result, body) = reply(outcome);
    span.record("result", result);
    metrics::counter!(API_REQUESTS_TOTAL, "method" => label, "result" => result).increment(1);
    tracing::debug!(
        method = label,
        result,
        status = status.as_u16(),
        "api request"
    );
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The HTTP status, the metrics result label and the JSON body of an outcome.
fn reply(outcome: Result<Box<RawValue>, Failure>) -> (StatusCode, &'static str, Vec<u8>) {
    match outcome {
        Ok(result) => (StatusCode::OK, "ok", json(&Outcome::Result(result))),
        Err(Failure::Method(e)) => (
            StatusCode::OK,
            e.error.label(),
            json(&Outcome::<()>::Error(e.into())),
        ),
        Err(Failure::Transport(status, e)) => {
            (status, e.label(), json(&Outcome::<()>::Error(e.into())))
        }
    }
}

/// 429 with `Retry-After` (whole seconds, rounded up) and the server API
/// error 111, counted under the method's label.
fn too_many(label: &'static str, wait: std::time::Duration) -> Response {
    let e = ProtocolError::TooManyRequests;
    metrics::counter!(API_REQUESTS_TOTAL, "method" => label, "result" => e.label()).increment(1);
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::RETRY_AFTER, secs.max(1).to_string()),
        ],
        json(&Outcome::<()>::Error(e.into())),
    )
        .into_response()
}

/// Serializes a reply. Our reply types hold only strings, integers and raw
/// JSON that was valid when received, so this cannot fail; the fallback keeps
/// the reply valid JSON regardless.
fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value)
        .unwrap_or_else(|_| br#"{"error":{"code":100,"message":"internal server error"}}"#.to_vec())
}

impl Api {
    async fn dispatch(
        &self,
        method: Option<Method>,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Box<RawValue>, Failure> {
        if !self.authorized(headers) {
            return Err(Failure::Transport(
                StatusCode::UNAUTHORIZED,
                ProtocolError::Unauthorized,
            ));
        }
        let Some(method) = method else {
            return Err(Failure::Transport(
                StatusCode::NOT_FOUND,
                ProtocolError::MethodNotFound,
            ));
        };
        let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| {
                Failure::Transport(StatusCode::PAYLOAD_TOO_LARGE, ProtocolError::BadRequest)
            })?;
        self.run(method, blank_is_empty_object(&body)).await
    }

    /// Runs an authorized request's method on its body.
    async fn run(&self, method: Method, body: &[u8]) -> Result<Box<RawValue>, Failure> {
        match method {
            Method::Publish => raw(&self.publish(decode(body)?).await?),
            Method::Broadcast => raw(&self.broadcast(decode(body)?).await?),
            Method::History => raw(&self.history(decode(body)?).await?),
            Method::Info => {
                decode::<methods::InfoRequest>(body)?;
                raw(&self.info())
            }
            Method::Disconnect => raw(&self.disconnect(decode(body)?).await?),
            Method::Subscribe => raw(&self.subscribe(decode(body)?).await?),
            Method::Unsubscribe => raw(&self.unsubscribe(decode(body)?).await?),
            Method::Refresh => raw(&self.refresh(decode(body)?).await?),
            Method::Presence => raw(&self.presence(decode(body)?).await?),
            Method::PresenceStats => raw(&self.presence_stats(decode(body)?).await?),
            Method::UserStatus => raw(&self.user_status(decode(body)?).await?),
            Method::RevokeToken => raw(&self.revoke_token(decode(body)?).await?),
            Method::InvalidateUserTokens => {
                raw(&self.invalidate_user_tokens(decode(body)?).await?)
            }
            Method::AddMembers => raw(&self.add_members(decode(body)?).await?),
            Method::RemoveMembers => raw(&self.remove_members(decode(body)?).await?),
            Method::Members => raw(&self.members(decode(body)?).await?),
            Method::Conversations => raw(&self.conversations(decode(body)?).await?),
            Method::Unread => raw(&self.unread(decode(body)?).await?),
            Method::DeviceRegister => raw(&self.device_register(decode(body)?).await?),
            Method::DeviceRemove => raw(&self.device_remove(decode(body)?).await?),
            Method::DeviceList => raw(&self.device_list(decode(body)?).await?),
            Method::SendPushNotification => {
                raw(&self.send_push_notification(decode(body)?).await?)
            }
        }
    }

    /// Does the request carry the configured key?
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let (Some(expected), Some(given)) = (&self.state.key, presented_key(headers)) else {
            return false;
        };
        given.ct_eq(expected.expose().trim().as_bytes()).into()
    }
}

/// The key from `X-API-Key`, else from `Authorization: apikey <key>` (scheme
/// case-insensitive).
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get("x-api-key") {
        return Some(v.as_bytes().trim_ascii());
    }
    let auth = headers.get(header::AUTHORIZATION)?.as_bytes().trim_ascii();
    let (scheme, key) = auth.split_at(auth.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"apikey")
        .then(|| key.trim_ascii())
}

/// An empty (or all-whitespace) body counts as `{}`.
fn blank_is_empty_object(body: &[u8]) -> &[u8] {
    if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    }
}

/// Runs a request body through the decoding and the I/O-free checks of the
/// method `name`, as [`router`] would after the key check; for the fuzz
/// targets and their corpus replay ([`crate::fuzzing`]). `Err` holds the
/// HTTP status and error code the API would answer.
pub fn check_request(name: &str, body: &[u8], channels: &ChannelsConfig) -> Result<(), (u16, u32)> {
    let Some(method) = Method::from_name(name) else {
        return Err((404, ProtocolError::MethodNotFound.code()));
    };
    if body.len() > MAX_BODY_BYTES {
        return Err((413, ProtocolError::BadRequest.code()));
    }
    methods::check_request(method, blank_is_empty_object(body), channels).map_err(|f| match f {
        Failure::Transport(status, e) => (status.as_u16(), e.code()),
        Failure::Method(e) => (200, e.error.code()),
    })
}

/// Decodes a request body; anything but JSON of the method's shape is 400.
fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body)
        .map_err(|_| Failure::Transport(StatusCode::BAD_REQUEST, ProtocolError::BadRequest))
}

fn raw<T: Serialize>(value: &T) -> Result<Box<RawValue>, Failure> {
    serde_json::value::to_raw_value(value).map_err(|_| Failure::from(ProtocolError::Internal))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn key_from_either_header() {
        assert_eq!(
            presented_key(&headers(&[("x-api-key", "k1")])),
            Some(&b"k1"[..])
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "apikey k2")])),
            Some(&b"k2"[..])
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "ApiKey  k3 ")])),
            Some(&b"k3"[..])
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer k4")])),
            None
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "apikey")])),
            None
        );
        assert_eq!(presented_key(&headers(&[])), None);
    }

    #[test]
    fn replies_have_the_centrifugo_shape() {
        let ok: Outcome<methods::PublishResult> = Ok(methods::PublishResult::default()).into();
        assert_eq!(String::from_utf8(json(&ok)).unwrap(), r#"{"result":{}}"#);
        let err: Outcome<()> = Err(MethodError::from(ProtocolError::UnknownChannel)).into();
        assert_eq!(
            String::from_utf8(json(&err)).unwrap(),
            r#"{"error":{"code":102,"message":"unknown channel"}}"#
        );
        let unconfirmed: Outcome<()> = Err(MethodError {
            error: ProtocolError::PublishUnconfirmed,
            idempotency_key: Some("k1".into()),
        })
        .into();
        let body: serde_json::Value = serde_json::from_slice(&json(&unconfirmed)).unwrap();
        assert_eq!(body["error"]["code"], 100);
        assert_eq!(body["error"]["idempotency_key"], "k1");
    }

    #[test]
    fn method_names() {
        for name in crate::metrics::labels::API_METHODS {
            assert_eq!(Method::label(Method::from_name(name)), *name);
        }
        assert_eq!(Method::from_name("channels"), None);
        assert_eq!(Method::label(None), "unknown");
    }
}
