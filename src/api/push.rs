//! The server API's push device methods, for an application backend:
//!
//! - `device_register {user, provider, token, platform?, topics?}` →
//!   `{"device": {id, user, provider, platform, topics, updated_ms},
//!   "evicted": [ids]}`: stores the device (`push::registry` says what is
//!   valid: else 107, too many topics 106, nothing stored). Registering the
//!   same token again updates it (same id); one more than
//!   `push_max_devices_per_user` evicts the user's least recently
//!   registered device (listed in `evicted`).
//! - `device_remove {id}` or `{provider, token}` → `{"removed": bool}`.
//! - `device_list {user, after?, limit?}` → `{"devices": [...], "cursor"}`:
//!   by id after `after`; `cursor` (the last id) while a page is full.
//!   `limit` 1..=1000 (default 100; over → 106).
//! - `send_push_notification {recipient: {users?, devices?, topics?},
//!   notification: {title?, body?, data?, badge?, collapse_id?, ttl?},
//!   overrides?: {fcm?, apns?: {headers, payload}, webpush?: {payload,
//!   urgency}}}` → `{"id"}`: queued durably (`push::queue`). No recipient,
//!   an empty name, a notification with neither title, body nor data, a
//!   `data` value that is not a string → 107; more than 1000 names, a
//!   notification over 4096 bytes of JSON, or a full queue → 106.
//!
//! Tokens are never answered (a device is named by its id). Knows the
//! methods' shapes; the store is reached through sync.

use serde::{Deserialize, Serialize};

use super::{Api, Failure};
use crate::protocol::ProtocolError;
use crate::push::queue::{Job, MAX_RECIPIENTS, QueueError, Recipient};
use crate::push::registry::{self, Registration};
use crate::push::sender::{Notification, Overrides};
use crate::store::{Device, Provider};
use crate::sync::client::SyncClientError;
use crate::sync::device::MAX_DEVICE_PAGE;

const DEFAULT_DEVICE_PAGE: usize = 100;
/// The largest notification (its JSON), about what every provider carries.
pub const MAX_NOTIFICATION_BYTES: usize = 4096;

#[derive(Debug, Deserialize)]
pub(super) struct SendRequest {
    #[serde(default)]
    recipient: Option<serde_json::Value>,
    #[serde(default)]
    notification: Option<serde_json::Value>,
    #[serde(default)]
    overrides: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub(super) struct SendResult {
    id: String,
}

/// The recipient and notification of a send request, or the error that
/// refuses it.
fn checked_send(req: SendRequest) -> Result<(Recipient, Notification), ProtocolError> {
    let bad = ProtocolError::BadRequest;
    let recipient: Recipient =
        serde_json::from_value(req.recipient.ok_or(bad)?).map_err(|_| bad)?;
    if recipient.is_empty() {
        return Err(bad);
    }
    if recipient.len() > MAX_RECIPIENTS {
        return Err(ProtocolError::LimitExceeded);
    }
    let names = recipient
        .users
        .iter()
        .chain(&recipient.devices)
        .chain(&recipient.topics);
    if names.clone().any(String::is_empty) {
        return Err(bad);
    }
    let mut notification: Notification =
        serde_json::from_value(req.notification.ok_or(bad)?).map_err(|_| bad)?;
    if notification.title.is_empty() && notification.body.is_empty() && notification.data.is_empty()
    {
        return Err(bad);
    }
    if let Some(o) = req.overrides {
        notification.overrides = serde_json::from_value::<Overrides>(o).map_err(|_| bad)?;
    }
    let size = serde_json::to_vec(&notification).map_err(|_| bad)?.len();
    if size > MAX_NOTIFICATION_BYTES {
        return Err(ProtocolError::LimitExceeded);
    }
    Ok((recipient, notification))
}

#[derive(Debug, Deserialize)]
pub(super) struct RegisterRequest {
    #[serde(default)]
    user: String,
    #[serde(flatten)]
    registration: Registration,
}

#[derive(Debug, Deserialize)]
pub(super) struct RemoveRequest {
    #[serde(default)]
    id: String,
    #[serde(default)]
    provider: String,
    #[serde(default)]
    token: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListRequest {
    #[serde(default)]
    user: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    limit: Option<serde_json::Value>,
}

/// A device as answered: everything but its token.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceView {
    pub id: String,
    pub user: String,
    pub provider: Provider,
    pub platform: String,
    pub topics: Vec<String>,
    pub updated_ms: u64,
}

impl From<Device> for DeviceView {
    fn from(d: Device) -> Self {
        Self {
            id: d.id,
            user: d.user,
            provider: d.provider,
            platform: d.platform,
            topics: d.topics,
            updated_ms: d.updated_ms,
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct RegisterResult {
    device: DeviceView,
    evicted: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct RemoveResult {
    removed: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct ListResult {
    devices: Vec<DeviceView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

fn failed(e: SyncClientError) -> Failure {
    super::sync_failed(e, "device")
}

/// The id a remove request names: `id`, or the id of `{provider, token}`.
pub fn removed_id(
    id: &str,
    provider: &str,
    token: Option<&serde_json::Value>,
) -> Result<String, ProtocolError> {
    if !id.is_empty() {
        let ok = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
        return ok.then(|| id.to_owned()).ok_or(ProtocolError::BadRequest);
    }
    let provider = Provider::parse(provider).ok_or(ProtocolError::BadRequest)?;
    let token = registry::canonical_token(provider, token)?;
    Ok(registry::device_id(provider, &token))
}

fn page_limit(v: Option<&serde_json::Value>) -> Result<usize, ProtocolError> {
    let Some(v) = v else {
        return Ok(DEFAULT_DEVICE_PAGE);
    };
    match v.as_u64() {
        None | Some(0) => Err(ProtocolError::BadRequest),
        Some(n) if n > MAX_DEVICE_PAGE as u64 => Err(ProtocolError::LimitExceeded),
        Some(n) => Ok(n as usize),
    }
}

/// Decodes a body of one of this module's methods and runs the checks that
/// need no I/O (for `methods::check_request`, the fuzz targets' entry).
pub(super) fn check_request(method: super::Method, body: &[u8]) -> Result<(), Failure> {
    use super::{Method as M, decode};
    match method {
        M::DeviceRegister => {
            let req: RegisterRequest = decode(body)?;
            // The endpoint policy is the configuration's, checked when the
            // method runs; here only the shape.
            req.registration
                .device(&req.user, 0, &registry::ANY_WEBPUSH_ENDPOINT)?;
        }
        M::DeviceRemove => {
            let req: RemoveRequest = decode(body)?;
            removed_id(&req.id, &req.provider, req.token.as_ref())?;
        }
        M::DeviceList => {
            let req: ListRequest = decode(body)?;
            registry::check_user(&req.user)?;
            page_limit(req.limit.as_ref())?;
        }
        M::SendPushNotification => {
            checked_send(decode(body)?)?;
        }
        _ => {}
    }
    Ok(())
}

impl Api {
    pub(super) async fn device_register(
        &self,
        req: RegisterRequest,
    ) -> Result<RegisterResult, Failure> {
        let device = req
            .registration
            .device(&req.user, 0, self.state.edge.webpush_endpoints())?;
        let (stored, evicted) = self
            .state
            .sync
            .register_device(&device)
            .await
            .map_err(failed)?;
        Ok(RegisterResult {
            device: stored.into(),
            evicted,
        })
    }

    pub(super) async fn device_remove(&self, req: RemoveRequest) -> Result<RemoveResult, Failure> {
        let id = removed_id(&req.id, &req.provider, req.token.as_ref())?;
        let removed = self
            .state
            .sync
            .remove_device(&id, None)
            .await
            .map_err(failed)?;
        Ok(RemoveResult {
            removed: removed.is_some(),
        })
    }

    pub(super) async fn send_push_notification(
        &self,
        req: SendRequest,
    ) -> Result<SendResult, Failure> {
        let (recipient, notification) = checked_send(req)?;
        let job = Job {
            id: uuid::Uuid::new_v4().simple().to_string(),
            recipient,
            notification,
            created_ms: crate::push::queue::now_ms(),
        };
        match self.state.push.enqueue(&job).await {
            Ok(()) => Ok(SendResult { id: job.id }),
            Err(QueueError::Full) => Err(ProtocolError::LimitExceeded.into()),
            Err(e) => {
                tracing::warn!(error = %e, "push job not queued");
                Err(ProtocolError::Internal.into())
            }
        }
    }

    pub(super) async fn device_list(&self, req: ListRequest) -> Result<ListResult, Failure> {
        registry::check_user(&req.user)?;
        let limit = page_limit(req.limit.as_ref())?;
        let devices = self
            .state
            .sync
            .devices(&req.user, &req.after, limit)
            .await
            .map_err(failed)?;
        let cursor = (devices.len() == limit)
            .then(|| devices.last().map(|d| d.id.clone()))
            .flatten();
        Ok(ListResult {
            devices: devices.into_iter().map(DeviceView::from).collect(),
            cursor,
        })
    }
}
