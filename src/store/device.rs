//! The store's push-device rows: one registered device (a provider's token
//! for one user's app install), and its provider.
//!
//! A device is keyed by its `id`, which the push registry derives from the
//! provider and the token, so one token is one device whoever registers it
//! (a phone that changes user moves its row). The store keeps three views of
//! the rows, in step: by id, by user and by topic. Knows nothing of how ids
//! are derived, of limits per user, or of providers' APIs.

use serde::{Deserialize, Serialize};

/// The push service a device's token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Firebase Cloud Messaging (HTTP v1).
    Fcm,
    /// Apple Push Notification service (HTTP/2, token auth).
    Apns,
    /// Web Push (RFC 8030 with VAPID and RFC 8291 encryption).
    Webpush,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Fcm, Provider::Apns, Provider::Webpush];

    /// The name in APIs, config and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Provider::Fcm => "fcm",
            Provider::Apns => "apns",
            Provider::Webpush => "webpush",
        }
    }

    pub fn parse(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.label() == name)
    }
}

/// One registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    pub user: String,
    pub provider: Provider,
    /// FCM registration token, APNs device token (hex), or for Web Push the
    /// subscription as compact JSON `{"endpoint","keys":{"p256dh","auth"}}`.
    pub token: String,
    /// Free text from the app (`ios`, `android`, `web`, ...), at most 64 bytes.
    #[serde(default)]
    pub platform: String,
    /// Topics the device is subscribed to (sorted, distinct).
    #[serde(default)]
    pub topics: Vec<String>,
    /// ms since the Unix epoch of its last registration.
    #[serde(default)]
    pub updated_ms: u64,
}
