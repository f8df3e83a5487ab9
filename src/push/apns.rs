//! The APNs sender: HTTP/2 `POST <endpoint>/3/device/<token>` with an ES256
//! provider token (`kid` = key id, `iss` = team id, `iat`), the headers
//! `apns-topic`, `apns-push-type`, `apns-priority`, `apns-collapse-id` and
//! `apns-expiration`, and the payload `{"aps": {"alert": {title, body},
//! "badge"}, ...data}`, the `apns` override's headers and payload applied
//! last.
//!
//! The provider token follows Apple's rule: reused for up to
//! [`REUSE_FOR`] (Apple refuses one older than 60 minutes), and never
//! replaced more than once per [`MIN_REFRESH`] (Apple answers
//! `TooManyProviderTokenUpdates`), also when APNs calls it expired.
//!
//! Outcomes: 200 sent; 410 and 400 `BadDeviceToken` → invalid token;
//! 403 `ExpiredProviderToken` → a new token (rule above) and a retry;
//! 429 and 5xx → retry; anything else fails. Knows no queue.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::http::{Http, retry_after};
use super::sender::{Notification, Outcome, Sender, merge};
use crate::store::{Device, Provider};

/// How long one provider token is used (Apple: at most 60 minutes).
pub const REUSE_FOR: Duration = Duration::from_secs(50 * 60);
/// The least time between two new provider tokens (Apple: at most one
/// update per 20 minutes).
pub const MIN_REFRESH: Duration = Duration::from_secs(20 * 60);

/// The claims of a provider token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub iat: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ApnsSetupError {
    #[error("reading the APNs key {0}: {1}")]
    Read(String, std::io::Error),
    #[error("the APNs key {0} is not a P-256 PEM key: {1}")]
    Invalid(String, String),
    #[error("push_apns_key_id and push_apns_team_id must be set with push_apns_key_file")]
    Missing,
}

/// The token in use and when it was made: the rotation rule, pure.
#[derive(Debug, Clone)]
pub struct TokenClock {
    issued: Option<Instant>,
}

impl TokenClock {
    pub fn new() -> Self {
        Self { issued: None }
    }

    /// Whether a new token must be made at `now`: none yet, the current one
    /// is [`REUSE_FOR`] old, or APNs called it expired (`expired`) and it is
    /// at least [`MIN_REFRESH`] old.
    pub fn needs_new(&self, now: Instant, expired: bool) -> bool {
        match self.issued {
            None => true,
            Some(at) => {
                let age = now.saturating_duration_since(at);
                age >= REUSE_FOR || (expired && age >= MIN_REFRESH)
            }
        }
    }

    pub fn issued(&mut self, now: Instant) {
        self.issued = Some(now);
    }
}

impl Default for TokenClock {
    fn default() -> Self {
        Self::new()
    }
}

struct Current {
    clock: TokenClock,
    jwt: String,
    /// APNs called the token expired: make a new one when the rule allows.
    expired: bool,
}

pub struct ApnsSender {
    http: Http,
    endpoint: String,
    topic: String,
    key_id: String,
    team_id: String,
    key: EncodingKey,
    current: std::sync::Mutex<Current>,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ApnsSender {
    pub fn new(
        http: Http,
        key_file: &Path,
        key_id: &str,
        team_id: &str,
        topic: &str,
        endpoint: &str,
    ) -> Result<Self, ApnsSetupError> {
        if key_id.is_empty() || team_id.is_empty() {
            return Err(ApnsSetupError::Missing);
        }
        let name = key_file.display().to_string();
        let pem = std::fs::read(key_file).map_err(|e| ApnsSetupError::Read(name.clone(), e))?;
        let key = EncodingKey::from_ec_pem(&pem)
            .map_err(|e| ApnsSetupError::Invalid(name.clone(), e.to_string()))?;
        let sender = Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            topic: topic.to_string(),
            key_id: key_id.to_string(),
            team_id: team_id.to_string(),
            key,
            current: std::sync::Mutex::new(Current {
                clock: TokenClock::new(),
                jwt: String::new(),
                expired: false,
            }),
        };
        // Sign once now: a key jsonwebtoken cannot sign with fails at start.
        sender
            .provider_token()
            .map_err(|e| ApnsSetupError::Invalid(name, e))?;
        Ok(sender)
    }

    /// The provider token to send with, made anew when the rule says so.
    fn provider_token(&self) -> Result<String, String> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if current.clock.needs_new(now, current.expired) {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(self.key_id.clone());
            let claims = Claims {
                iss: self.team_id.clone(),
                iat: now_s(),
            };
            current.jwt = jsonwebtoken::encode(&header, &claims, &self.key)
                .map_err(|e| format!("signing the APNs provider token: {e}"))?;
            current.clock.issued(now);
            current.expired = false;
        }
        Ok(current.jwt.clone())
    }

    fn token_expired(&self) {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .expired = true;
    }
}

/// The JSON payload for `n`.
pub fn payload(n: &Notification) -> Value {
    let mut aps = serde_json::Map::new();
    if !n.title.is_empty() || !n.body.is_empty() {
        aps.insert("alert".into(), json!({"title": n.title, "body": n.body}));
    } else {
        aps.insert("content-available".into(), json!(1));
    }
    if let Some(badge) = n.badge {
        aps.insert("badge".into(), json!(badge));
    }
    let mut root = serde_json::Map::new();
    for (k, v) in &n.data {
        if k != "aps" {
            root.insert(k.clone(), json!(v));
        }
    }
    root.insert("aps".into(), Value::Object(aps));
    if let Some(o) = &n.overrides.apns {
        merge(&mut root, &o.payload);
    }
    Value::Object(root)
}

/// The headers for `n` (before the override's), name → value.
pub fn headers(n: &Notification, topic: &str, now_s: u64) -> Vec<(String, String)> {
    let alert = !n.title.is_empty() || !n.body.is_empty();
    let mut h = vec![
        ("apns-topic".to_string(), topic.to_string()),
        (
            "apns-push-type".to_string(),
            if alert { "alert" } else { "background" }.to_string(),
        ),
        (
            "apns-priority".to_string(),
            if alert { "10" } else { "5" }.to_string(),
        ),
    ];
    if let Some(c) = &n.collapse_id {
        h.push(("apns-collapse-id".into(), c.clone()));
    }
    if let Some(ttl) = n.ttl_seconds {
        h.push(("apns-expiration".into(), (now_s + ttl).to_string()));
    }
    if let Some(o) = &n.overrides.apns {
        for (k, v) in &o.headers {
            let k = k.to_ascii_lowercase();
            if !k.starts_with("apns-") {
                continue;
            }
            h.retain(|(name, _)| *name != k);
            h.push((k, v.clone()));
        }
    }
    h
}

/// The outcome of an APNs answer other than 200 (and other than an
/// expired provider token, which the sender handles).
pub fn classify(status: StatusCode, reason: &str, retry: Option<Duration>) -> Outcome {
    let why = format!("APNs answered {status} {reason}");
    match status.as_u16() {
        410 => Outcome::InvalidToken,
        400 if reason == "BadDeviceToken" => Outcome::InvalidToken,
        429 | 500..=599 => Outcome::Retry(retry, why),
        _ => Outcome::Failed(why),
    }
}

#[async_trait]
impl Sender for ApnsSender {
    fn provider(&self) -> Provider {
        Provider::Apns
    }

    async fn send(&self, device: &Device, n: &Notification) -> Outcome {
        let jwt = match self.provider_token() {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(e),
        };
        let body = match serde_json::to_vec(&payload(n)) {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(format!("APNs payload: {e}")),
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/3/device/{}", self.endpoint, device.token))
            .header("authorization", format!("bearer {jwt}"))
            .header("content-type", "application/json");
        for (k, v) in headers(n, &self.topic, now_s()) {
            request = request.header(k, v);
        }
        let request = match request.body(Full::new(Bytes::from(body))) {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("APNs request: {e}")),
        };
        let answer = match self.http.send(request, true).await {
            Ok(a) => a,
            Err(e) => return Outcome::Retry(None, e.to_string()),
        };
        if answer.status == StatusCode::OK {
            return Outcome::Sent;
        }
        let reason = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_string))
            .unwrap_or_default();
        if answer.status == StatusCode::FORBIDDEN && reason == "ExpiredProviderToken" {
            self.token_expired();
            return Outcome::Retry(None, "APNs: expired provider token".into());
        }
        classify(answer.status, &reason, retry_after(&answer.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn provider_token_rotates_as_apple_requires() {
        let mut clock = TokenClock::new();
        let t0 = Instant::now();
        assert!(clock.needs_new(t0, false), "no token yet");
        clock.issued(t0);
        assert!(!clock.needs_new(t0 + Duration::from_secs(49 * 60), false));
        assert!(
            !clock.needs_new(t0 + Duration::from_secs(19 * 60), true),
            "an expired answer within 20 minutes of the last token reuses it"
        );
        assert!(clock.needs_new(t0 + MIN_REFRESH, true));
        assert!(
            clock.needs_new(t0 + REUSE_FOR, false),
            "renewed before Apple's 60 minutes"
        );
        assert!(REUSE_FOR < Duration::from_secs(3600) && REUSE_FOR >= MIN_REFRESH);
    }

    #[test]
    fn payload_headers_and_outcomes() {
        let mut n = Notification {
            title: "T".into(),
            body: "B".into(),
            badge: Some(4),
            collapse_id: Some("chat-1".into()),
            ttl_seconds: Some(60),
            ..Default::default()
        };
        n.data.insert("k".into(), "v".into());
        assert_eq!(
            payload(&n),
            json!({"aps": {"alert": {"title": "T", "body": "B"}, "badge": 4}, "k": "v"})
        );
        let h = headers(&n, "com.example.app", 1000);
        assert!(h.contains(&("apns-push-type".into(), "alert".into())));
        assert!(h.contains(&("apns-priority".into(), "10".into())));
        assert!(h.contains(&("apns-collapse-id".into(), "chat-1".into())));
        assert!(h.contains(&("apns-expiration".into(), "1060".into())));
        assert_eq!(
            classify(StatusCode::GONE, "Unregistered", None),
            Outcome::InvalidToken
        );
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, "BadDeviceToken", None),
            Outcome::InvalidToken
        );
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, "PayloadTooLarge", None),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, "", None),
            Outcome::Retry(..)
        ));
    }
}
