//! The device registry's rules: what a registration must look like (checked
//! before anything is stored), how a device's id is derived, and the bound
//! on devices per user.
//!
//! - A registration names a provider (`fcm`, `apns`, `webpush`), a token
//!   (FCM: 1..=4096 printable ASCII bytes; APNs: hex, 16..=400 digits;
//!   Web Push: the subscription `{endpoint, keys: {p256dh, auth}}`, as an
//!   object or as its JSON text, with an http(s) endpoint, a P-256 public
//!   key of 65 bytes and a 16-byte auth secret, base64url; the endpoint's
//!   scheme and host must be allowed by `push_webpush_allowed_hosts` and
//!   `push_webpush_allow_http`, [`endpoint_allowed`]), an optional
//!   platform (at most 64 bytes) and optional topics (at most
//!   [`MAX_TOPICS`], each 1..=128 bytes). Anything else is 107; too many
//!   topics 106.
//! - The id is the first 16 bytes of SHA-256(provider, NUL, token) in hex:
//!   the same token is the same device whoever registers it again, and a
//!   token that moves to another user leaves the first one.
//! - At most `max_per_user` devices per user: a registration of a new device
//!   for a user who has that many replaces the user's least recently
//!   registered ones (apps seldom unregister a phone that was reset or sold,
//!   so refusing the new one would cut the user off; the evicted token was
//!   the stalest). Two registrations of one user racing on two sync
//!   processes may leave the user one device over until the next one.
//!
//! Knows the store trait, not the providers' APIs nor the transports.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::WebpushEndpoints;
use crate::protocol::ProtocolError;
use crate::store::{Device, Provider, SharedStore, StoreResult};

/// Most topics one device subscribes to.
pub const MAX_TOPICS: usize = 32;
const MAX_TOPIC_BYTES: usize = 128;
const MAX_PLATFORM_BYTES: usize = 64;
const MAX_USER_BYTES: usize = 256;
const MAX_FCM_TOKEN_BYTES: usize = 4096;
const MAX_ENDPOINT_BYTES: usize = 2048;

/// A registration as the API and the client RPC take it.
#[derive(Debug, Clone, Deserialize)]
pub struct Registration {
    #[serde(default)]
    pub provider: String,
    #[serde(default)]
    pub token: Option<serde_json::Value>,
    #[serde(default)]
    pub platform: String,
    #[serde(default)]
    pub topics: Vec<String>,
}

/// A Web Push subscription, as browsers' `PushSubscription.toJSON()` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub endpoint: String,
    pub keys: SubscriptionKeys,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionKeys {
    pub p256dh: String,
    pub auth: String,
}

impl Subscription {
    /// The subscription of a Web Push device's stored token.
    pub fn parse(token: &str) -> Option<Subscription> {
        let s: Subscription = serde_json::from_str(token).ok()?;
        s.valid().then_some(s)
    }

    fn valid(&self) -> bool {
        let url_ok = (self.endpoint.starts_with("https://")
            || self.endpoint.starts_with("http://"))
            && self.endpoint.len() <= MAX_ENDPOINT_BYTES
            && self.endpoint.parse::<hyper::Uri>().is_ok();
        let key = URL_SAFE_NO_PAD.decode(self.keys.p256dh.trim_end_matches('='));
        let auth = URL_SAFE_NO_PAD.decode(self.keys.auth.trim_end_matches('='));
        url_ok && key.is_ok_and(|k| k.len() == 65 && k[0] == 4) && auth.is_ok_and(|a| a.len() == 16)
    }
}

/// Any host, http or https: for checks of a registration's shape alone.
pub const ANY_WEBPUSH_ENDPOINT: WebpushEndpoints = WebpushEndpoints {
    allowed_hosts: Vec::new(),
    any_host: true,
    allow_http: true,
};

/// Whether Herald may send to this Web Push endpoint: `https` (or `http`
/// with `allow_http`), and a host that is one of the allowed hosts or a
/// subdomain of one (`*`: any host). Herald requests whatever endpoint a
/// browser registered, so this is what keeps a registration from pointing
/// Herald at an internal address.
pub fn endpoint_allowed(policy: &WebpushEndpoints, endpoint: &str) -> bool {
    let Ok(uri) = endpoint.parse::<hyper::Uri>() else {
        return false;
    };
    let scheme_ok = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => policy.allow_http,
        _ => false,
    };
    let Some(host) = uri.host().map(str::to_ascii_lowercase) else {
        return false;
    };
    let host = host.trim_end_matches('.');
    scheme_ok
        && (policy.any_host
            || policy.allowed_hosts.iter().any(|allowed| {
                host == allowed
                    || host
                        .strip_suffix(allowed.as_str())
                        .is_some_and(|rest| rest.ends_with('.'))
            }))
}

/// The device id of a provider's token.
pub fn device_id(provider: Provider, token: &str) -> String {
    let mut h = Sha256::new();
    h.update(provider.label().as_bytes());
    h.update([0]);
    h.update(token.as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The stored token of a registration's `token` for `provider` (Web Push:
/// the subscription as compact JSON), or 107.
pub fn canonical_token(
    provider: Provider,
    token: Option<&serde_json::Value>,
) -> Result<String, ProtocolError> {
    let bad = ProtocolError::BadRequest;
    match (provider, token) {
        (Provider::Webpush, Some(serde_json::Value::String(s))) => {
            let sub = Subscription::parse(s).ok_or(bad)?;
            serde_json::to_string(&sub).map_err(|_| bad)
        }
        (Provider::Webpush, Some(v @ serde_json::Value::Object(_))) => {
            let sub: Subscription = serde_json::from_value(v.clone()).map_err(|_| bad)?;
            if !sub.valid() {
                return Err(bad);
            }
            serde_json::to_string(&sub).map_err(|_| bad)
        }
        (Provider::Fcm, Some(serde_json::Value::String(s))) => {
            let ok = !s.is_empty()
                && s.len() <= MAX_FCM_TOKEN_BYTES
                && s.bytes().all(|b| b.is_ascii_graphic());
            ok.then(|| s.clone()).ok_or(bad)
        }
        (Provider::Apns, Some(serde_json::Value::String(s))) => {
            let ok = (16..=400).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
            ok.then(|| s.to_ascii_lowercase()).ok_or(bad)
        }
        _ => Err(bad),
    }
}

/// Checks a user id for the registry: 1..=256 bytes.
pub fn check_user(user: &str) -> Result<(), ProtocolError> {
    if user.is_empty() || user.len() > MAX_USER_BYTES {
        return Err(ProtocolError::BadRequest);
    }
    Ok(())
}

impl Registration {
    /// The device this registration stores for `user`, or the error that
    /// refuses it (nothing is stored then): 107 also for a Web Push endpoint
    /// `webpush` does not allow.
    pub fn device(
        &self,
        user: &str,
        now_ms: u64,
        webpush: &WebpushEndpoints,
    ) -> Result<Device, ProtocolError> {
        check_user(user)?;
        let provider = Provider::parse(&self.provider).ok_or(ProtocolError::BadRequest)?;
        let token = canonical_token(provider, self.token.as_ref())?;
        if provider == Provider::Webpush
            && !Subscription::parse(&token).is_some_and(|s| endpoint_allowed(webpush, &s.endpoint))
        {
            return Err(ProtocolError::BadRequest);
        }
        if self.platform.len() > MAX_PLATFORM_BYTES {
            return Err(ProtocolError::BadRequest);
        }
        let mut topics = self.topics.clone();
        topics.sort_unstable();
        topics.dedup();
        if topics
            .iter()
            .any(|t| t.is_empty() || t.len() > MAX_TOPIC_BYTES)
        {
            return Err(ProtocolError::BadRequest);
        }
        if topics.len() > MAX_TOPICS {
            return Err(ProtocolError::LimitExceeded);
        }
        Ok(Device {
            id: device_id(provider, &token),
            user: user.to_owned(),
            provider,
            token,
            platform: self.platform.clone(),
            topics,
            updated_ms: now_ms,
        })
    }
}

/// Stores `device` and keeps its user within `max_per_user` devices by
/// removing the least recently registered others; returns the ids removed.
pub async fn register(
    store: &SharedStore,
    device: &Device,
    max_per_user: usize,
) -> StoreResult<Vec<String>> {
    let mut others = Vec::new();
    let mut after = String::new();
    // A user holds at most `max_per_user` (+ a race's one); read a bounded
    // number of pages whatever is stored.
    for _ in 0..4 {
        let page = store
            .user_devices(&device.user, &after, max_per_user + 1)
            .await?;
        let full = page.len() > max_per_user;
        if let Some(last) = page.last() {
            after = last.id.clone();
        }
        others.extend(page.into_iter().filter(|d| d.id != device.id));
        if !full {
            break;
        }
    }
    let mut evicted = Vec::new();
    if others.len() >= max_per_user {
        others.sort_by(|a, b| a.updated_ms.cmp(&b.updated_ms).then(a.id.cmp(&b.id)));
        let excess = others.len() + 1 - max_per_user;
        for old in others.into_iter().take(excess) {
            if store.remove_device(&old.id).await?.is_some() {
                evicted.push(old.id);
            }
        }
    }
    store.put_device(device).await?;
    Ok(evicted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> String {
        let mut k = vec![4u8];
        k.extend([7u8; 64]);
        URL_SAFE_NO_PAD.encode(k)
    }

    fn any_host() -> WebpushEndpoints {
        WebpushEndpoints {
            allowed_hosts: Vec::new(),
            any_host: true,
            allow_http: false,
        }
    }

    fn policy(hosts: &[&str], allow_http: bool) -> WebpushEndpoints {
        WebpushEndpoints {
            allowed_hosts: hosts.iter().map(|h| (*h).to_string()).collect(),
            any_host: false,
            allow_http,
        }
    }

    #[test]
    fn webpush_endpoints_must_name_an_allowed_host_over_https() {
        let default = policy(&["fcm.googleapis.com", "push.services.mozilla.com"], false);
        for ok in [
            "https://fcm.googleapis.com/fcm/send/abc",
            "https://updates.push.services.mozilla.com/wpush/v2/x",
            "https://FCM.googleapis.com./x",
        ] {
            assert!(endpoint_allowed(&default, ok), "{ok}");
        }
        for refused in [
            "http://fcm.googleapis.com/fcm/send/abc",
            "https://evilfcm.googleapis.com.attacker.example/x",
            "https://notfcm.googleapis.com.example/x",
            "https://xpush.services.mozilla.com/x",
            "https://169.254.169.254/latest/meta-data",
            "https://localhost:8080/x",
            "ftp://fcm.googleapis.com/x",
            "not a url",
        ] {
            assert!(!endpoint_allowed(&default, refused), "{refused}");
        }
        let local = policy(&["127.0.0.1"], true);
        assert!(endpoint_allowed(&local, "http://127.0.0.1:4000/wp/1"));
        assert!(!endpoint_allowed(&local, "http://127.0.0.2:4000/wp/1"));
        assert!(endpoint_allowed(&any_host(), "https://anything.example/x"));
        assert!(!endpoint_allowed(&any_host(), "http://anything.example/x"));

        let sub = json!({"endpoint": "https://169.254.169.254/x", "keys": {"p256dh": key(), "auth": URL_SAFE_NO_PAD.encode([1u8; 16])}});
        assert_eq!(
            reg("webpush", sub).device("u", 1, &default).err(),
            Some(ProtocolError::BadRequest),
            "a registration naming a host not allowed is refused"
        );
    }

    fn reg(provider: &str, token: serde_json::Value) -> Registration {
        Registration {
            provider: provider.into(),
            token: Some(token),
            platform: "ios".into(),
            topics: vec!["b".into(), "a".into(), "b".into()],
        }
    }

    #[test]
    fn valid_registrations_become_devices() {
        let d = reg("apns", json!("AB12cd34AB12cd34"))
            .device("alice", 5, &any_host())
            .expect("apns");
        assert_eq!(d.token, "ab12cd34ab12cd34");
        assert_eq!(d.topics, vec!["a", "b"]);
        assert_eq!(d.id.len(), 32);
        assert_eq!(d.id, device_id(Provider::Apns, "ab12cd34ab12cd34"));
        assert_ne!(d.id, device_id(Provider::Fcm, "ab12cd34ab12cd34"));
        let sub = json!({"endpoint": "https://push.example/abc", "keys": {"p256dh": key(), "auth": URL_SAFE_NO_PAD.encode([1u8; 16])}});
        let as_object = reg("webpush", sub.clone())
            .device("u", 1, &any_host())
            .expect("object");
        let as_text = reg("webpush", json!(sub.to_string()))
            .device("u", 1, &any_host())
            .expect("text");
        assert_eq!(as_object.id, as_text.id, "one subscription, one id");
        assert!(Subscription::parse(&as_object.token).is_some());
        reg("fcm", json!("fcm-token:abc"))
            .device("u", 1, &any_host())
            .expect("fcm");
    }

    #[test]
    fn bad_registrations_are_refused() {
        let bad = ProtocolError::BadRequest;
        let cases = [
            reg("gcm", json!("x")),
            reg("fcm", json!("")),
            reg("fcm", json!("has space")),
            reg("fcm", json!(5)),
            reg("apns", json!("not-hex-not-hex!")),
            reg("apns", json!("abcd")),
            reg(
                "webpush",
                json!({"endpoint": "ftp://x", "keys": {"p256dh": key(), "auth": "AAAAAAAAAAAAAAAAAAAAAA"}}),
            ),
            reg(
                "webpush",
                json!({"endpoint": "https://x/", "keys": {"p256dh": "AAAA", "auth": "AAAAAAAAAAAAAAAAAAAAAA"}}),
            ),
            reg(
                "webpush",
                json!({"endpoint": "https://x/", "keys": {"p256dh": key(), "auth": "AAAA"}}),
            ),
            reg("webpush", json!("{not json")),
        ];
        for r in cases {
            assert_eq!(r.device("u", 1, &any_host()).err(), Some(bad), "{r:?}");
        }
        let mut no_token = reg("fcm", json!("t"));
        no_token.token = None;
        assert_eq!(no_token.device("u", 1, &any_host()).err(), Some(bad));
        assert_eq!(
            reg("fcm", json!("t")).device("", 1, &any_host()).err(),
            Some(bad)
        );
        let mut long_platform = reg("fcm", json!("t"));
        long_platform.platform = "p".repeat(65);
        assert_eq!(long_platform.device("u", 1, &any_host()).err(), Some(bad));
        let mut empty_topic = reg("fcm", json!("t"));
        empty_topic.topics = vec![String::new()];
        assert_eq!(empty_topic.device("u", 1, &any_host()).err(), Some(bad));
        let mut many = reg("fcm", json!("t"));
        many.topics = (0..=MAX_TOPICS).map(|i| i.to_string()).collect();
        assert_eq!(
            many.device("u", 1, &any_host()).err(),
            Some(ProtocolError::LimitExceeded)
        );
    }
}
