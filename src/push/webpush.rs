//! The Web Push sender (RFC 8030): the payload encrypted for the
//! subscription with RFC 8291 `aes128gcm` (the `web-push-native` crate,
//! pure Rust), and a VAPID (RFC 8292) ES256 JWT in `Authorization: vapid
//! t=<jwt>, k=<public key>` (`aud` = the endpoint's origin, `exp` 12 hours
//! ahead, `sub` = `push_webpush_vapid_subject`). Headers `TTL`, `Urgency`
//! and `Topic` (the collapse id, when it is 1..=32 base64url characters).
//!
//! The browser gets the JSON `{"title", "body", "data", "badge"}` with the
//! `webpush` override's `payload` merged in.
//!
//! Outcomes: 200/201/202 sent; 404 and 410 → invalid token; 429 and 5xx →
//! retry; anything else fails. Knows no queue.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode, Uri};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::DecodePrivateKey;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::http::{Http, retry_after};
use super::registry::{Subscription, endpoint_allowed};
use super::sender::{Notification, Outcome, Sender, merge};
use crate::config::WebpushEndpoints;
use crate::store::{Device, Provider};

/// The VAPID JWT's lifetime (RFC 8292: at most 24 hours).
const VAPID_LIFETIME: u64 = 12 * 3600;
/// `TTL` when the notification gives none: four weeks, the common maximum.
const DEFAULT_TTL: u64 = 28 * 24 * 3600;

/// The claims of a VAPID JWT.
#[derive(Debug, Serialize, Deserialize)]
pub struct VapidClaims {
    pub aud: String,
    pub exp: u64,
    pub sub: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WebpushSetupError {
    #[error("reading the VAPID key {0}: {1}")]
    Read(String, std::io::Error),
    #[error("the VAPID key {0} is not a P-256 PKCS#8 PEM key: {1}")]
    Invalid(String, String),
    #[error("push_webpush_vapid_subject must be a mailto: or https: URL")]
    Subject,
}

pub struct WebpushSender {
    http: Http,
    key: EncodingKey,
    /// The VAPID public key, uncompressed point, base64url (`k`).
    public_key: String,
    subject: String,
    /// The endpoints it may request (`push_webpush_allowed_hosts`).
    endpoints: WebpushEndpoints,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl WebpushSender {
    pub fn new(
        http: Http,
        key_file: &Path,
        subject: &str,
        endpoints: WebpushEndpoints,
    ) -> Result<Self, WebpushSetupError> {
        if !(subject.starts_with("mailto:") || subject.starts_with("https://")) {
            return Err(WebpushSetupError::Subject);
        }
        let name = key_file.display().to_string();
        let pem = std::fs::read_to_string(key_file)
            .map_err(|e| WebpushSetupError::Read(name.clone(), e))?;
        let secret = p256::SecretKey::from_pkcs8_pem(&pem)
            .map_err(|e| WebpushSetupError::Invalid(name.clone(), e.to_string()))?;
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
            &secret.public_key(),
            false,
        );
        let key = EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|e| WebpushSetupError::Invalid(name, e.to_string()))?;
        Ok(Self {
            http,
            key,
            public_key: URL_SAFE_NO_PAD.encode(point.as_bytes()),
            subject: subject.to_string(),
            endpoints,
        })
    }

    /// The VAPID public key clients subscribe with (`applicationServerKey`).
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    fn vapid(&self, endpoint: &Uri) -> Result<String, String> {
        let origin = format!(
            "{}://{}",
            endpoint.scheme_str().unwrap_or("https"),
            endpoint.authority().map_or("", |a| a.as_str())
        );
        let claims = VapidClaims {
            aud: origin,
            exp: now_s() + VAPID_LIFETIME,
            sub: self.subject.clone(),
        };
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key)
            .map_err(|e| format!("signing the VAPID token: {e}"))?;
        Ok(format!("vapid t={jwt}, k={}", self.public_key))
    }
}

/// The JSON the browser's service worker receives.
pub fn payload(n: &Notification) -> Value {
    let mut root = serde_json::Map::new();
    root.insert("title".into(), json!(n.title));
    root.insert("body".into(), json!(n.body));
    root.insert("data".into(), json!(n.data));
    if let Some(badge) = n.badge {
        root.insert("badge".into(), json!(badge));
    }
    if let Some(o) = &n.overrides.webpush {
        merge(&mut root, &o.payload);
    }
    Value::Object(root)
}

/// The outcome of a push service's answer.
pub fn classify(status: StatusCode, retry: Option<std::time::Duration>) -> Outcome {
    match status.as_u16() {
        200..=202 => Outcome::Sent,
        404 | 410 => Outcome::InvalidToken,
        429 | 500..=599 => Outcome::Retry(retry, format!("push service answered {status}")),
        _ => Outcome::Failed(format!("push service answered {status}")),
    }
}

fn topic_ok(t: &str) -> bool {
    (1..=32).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[async_trait]
impl Sender for WebpushSender {
    fn provider(&self) -> Provider {
        Provider::Webpush
    }

    async fn send(&self, device: &Device, n: &Notification) -> Outcome {
        let Some(sub) = Subscription::parse(&device.token) else {
            return Outcome::InvalidToken;
        };
        // Registered before the allowed hosts were narrowed: never requested.
        if !endpoint_allowed(&self.endpoints, &sub.endpoint) {
            tracing::warn!(device = %device.id, "Web Push endpoint not allowed by push_webpush_allowed_hosts; removing the device");
            return Outcome::InvalidToken;
        }
        let decoded = (
            URL_SAFE_NO_PAD.decode(sub.keys.p256dh.trim_end_matches('=')),
            URL_SAFE_NO_PAD.decode(sub.keys.auth.trim_end_matches('=')),
        );
        let (Ok(public), Ok(auth)) = decoded else {
            return Outcome::InvalidToken;
        };
        let Ok(public) = p256::PublicKey::from_sec1_bytes(&public) else {
            return Outcome::InvalidToken;
        };
        let Ok(endpoint) = sub.endpoint.parse::<Uri>() else {
            return Outcome::InvalidToken;
        };
        let auth = web_push_native::Auth::clone_from_slice(&auth);
        let body = match serde_json::to_vec(&payload(n)) {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(format!("Web Push payload: {e}")),
        };
        let encrypted = match web_push_native::encrypt(body, &public, &auth) {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(format!("Web Push encryption: {e}")),
        };
        let vapid = match self.vapid(&endpoint) {
            Ok(v) => v,
            Err(e) => return Outcome::Failed(e),
        };
        let alert = !n.title.is_empty() || !n.body.is_empty();
        let urgency = n
            .overrides
            .webpush
            .as_ref()
            .and_then(|o| o.urgency.clone())
            .unwrap_or_else(|| if alert { "high" } else { "normal" }.into());
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(endpoint)
            .header("authorization", vapid)
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("ttl", n.ttl_seconds.unwrap_or(DEFAULT_TTL).to_string())
            .header("urgency", urgency);
        if let Some(topic) = n.collapse_id.as_deref().filter(|t| topic_ok(t)) {
            request = request.header("topic", topic);
        }
        let request = match request.body(Full::new(Bytes::from(encrypted))) {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("Web Push request: {e}")),
        };
        match self.http.send(request, false).await {
            Ok(answer) => classify(answer.status, retry_after(&answer.headers)),
            Err(e) => Outcome::Retry(None, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_payload() {
        assert_eq!(classify(StatusCode::CREATED, None), Outcome::Sent);
        assert_eq!(classify(StatusCode::GONE, None), Outcome::InvalidToken);
        assert_eq!(classify(StatusCode::NOT_FOUND, None), Outcome::InvalidToken);
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, None),
            Outcome::Retry(..)
        ));
        assert!(matches!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, None),
            Outcome::Failed(_)
        ));
        let n = Notification {
            title: "T".into(),
            badge: Some(2),
            ..Default::default()
        };
        assert_eq!(
            payload(&n),
            json!({"title": "T", "body": "", "data": {}, "badge": 2})
        );
        assert!(topic_ok("chat-1_a") && !topic_ok("a b") && !topic_ok(&"x".repeat(33)));
    }
}
