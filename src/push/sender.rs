//! What every push sender is: one trait, the notification it sends and the
//! outcome it reports, so the queue treats the providers alike (rate limit,
//! retry, removing invalid devices, metrics).
//!
//! Knows no provider's wire format (each sender module does) and no queue.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::store::{Device, Provider};

/// One notification, as the API's `send_push_notification` takes it (its
/// `notification` and per-platform overrides), plus the badge the
/// unread-aware push sets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub body: String,
    /// Custom key/values (strings: FCM's `data` accepts only strings).
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// The app icon's badge (APNs `aps.badge`; FCM and Web Push get it in
    /// `data.badge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub badge: Option<u64>,
    /// Replaces an earlier notification with the same id on the device
    /// (APNs `apns-collapse-id`, FCM `android.collapse_key`, Web Push `Topic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_id: Option<String>,
    /// How long the provider keeps it for an offline device; `None` = the
    /// provider's default.
    #[serde(default, rename = "ttl", skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub overrides: Overrides,
}

/// Per-platform overrides, merged last into what each sender builds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overrides {
    /// Merged into FCM's `message` (e.g. `{"android": {...}, "apns": {...},
    /// "webpush": {...}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fcm: Option<serde_json::Map<String, serde_json::Value>>,
    /// APNs: `headers` (a string map of `apns-*` headers) and `payload`
    /// (merged into the JSON payload, `aps` key by key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apns: Option<ApnsOverride>,
    /// Web Push: `payload` merged into the JSON the browser receives,
    /// `urgency` (`very-low`, `low`, `normal`, `high`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webpush: Option<WebpushOverride>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApnsOverride {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub payload: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebpushOverride {
    #[serde(default)]
    pub payload: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgency: Option<String>,
}

/// What one send did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted it.
    Sent,
    /// The provider says the token is no longer valid: remove the device.
    InvalidToken,
    /// Worth trying again (timeout, 429, 5xx, an expired credential), after
    /// at least the provider's `Retry-After` when it gave one.
    Retry(Option<Duration>, String),
    /// Refused for good (a malformed notification, a credential problem
    /// retrying will not fix).
    Failed(String),
}

impl Outcome {
    /// The `result` label of the push metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::InvalidToken => "invalid_token",
            Outcome::Retry(..) => "retry",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// A provider's sender.
#[async_trait]
pub trait Sender: Send + Sync {
    fn provider(&self) -> Provider;
    async fn send(&self, device: &Device, notification: &Notification) -> Outcome;
}

/// Merges `overlay` into `base` key by key; objects merge recursively,
/// anything else replaces.
pub fn merge(
    base: &mut serde_json::Map<String, serde_json::Value>,
    overlay: &serde_json::Map<String, serde_json::Value>,
) {
    for (k, v) in overlay {
        match (base.get_mut(k), v) {
            (Some(serde_json::Value::Object(b)), serde_json::Value::Object(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}
