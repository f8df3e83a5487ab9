//! The FCM HTTP v1 sender: a service account's RS256 assertion exchanged for
//! an OAuth2 access token (cached until a minute before it expires, one
//! exchange at a time), then `POST <endpoint>/v1/projects/<id>/messages:send`
//! with `{"message": {token, notification {title, body}, data, android
//! {collapse_key, ttl}}}`, the `fcm` override merged in last.
//!
//! Outcomes: 200 sent; `UNREGISTERED` (404), and 400 `INVALID_ARGUMENT`
//! unless a `google.rpc.BadRequest` detail names a field other than
//! `message.token` → invalid token (not a bare 404 nor
//! `SENDER_ID_MISMATCH`: those say the project or credentials are wrong,
//! and would empty the registry); 401 → the cached token is
//! dropped and the send retried; 429 and 5xx → retry (after `Retry-After`);
//! anything else fails. Knows no queue.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::http::{Http, retry_after};
use super::sender::{Notification, Outcome, Sender, merge};
use crate::store::{Device, Provider};

/// The OAuth2 scope of FCM sends.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// An access token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// The lifetime asked for the assertion (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;

/// The fields of a service-account JSON the sender uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub private_key: String,
    pub token_uri: String,
}

/// The claims of the assertion (RFC 7523).
#[derive(Debug, Serialize, Deserialize)]
pub struct Assertion {
    pub iss: String,
    pub scope: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FcmSetupError {
    #[error("reading the FCM service account {0}: {1}")]
    Read(String, std::io::Error),
    #[error("the FCM service account {0} is not valid: {1}")]
    Invalid(String, String),
}

struct AccessToken {
    token: String,
    renew_at: Instant,
}

pub struct FcmSender {
    http: Http,
    send_url: String,
    token_url: String,
    client_email: String,
    key: EncodingKey,
    /// Held across an exchange, so concurrent sends wait for one.
    token: tokio::sync::Mutex<Option<AccessToken>>,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl FcmSender {
    /// From the service-account file; `token_url` overrides its `token_uri`.
    pub fn new(
        http: Http,
        credentials: &Path,
        endpoint: &str,
        token_url: Option<&str>,
    ) -> Result<Self, FcmSetupError> {
        let name = credentials.display().to_string();
        let text = std::fs::read(credentials).map_err(|e| FcmSetupError::Read(name.clone(), e))?;
        let account: ServiceAccount = serde_json::from_slice(&text)
            .map_err(|e| FcmSetupError::Invalid(name.clone(), e.to_string()))?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| FcmSetupError::Invalid(name.clone(), format!("private_key: {e}")))?;
        Ok(Self {
            http,
            send_url: format!(
                "{}/v1/projects/{}/messages:send",
                endpoint.trim_end_matches('/'),
                account.project_id
            ),
            token_url: token_url.unwrap_or(&account.token_uri).to_string(),
            client_email: account.client_email,
            key,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// A valid access token: the cached one, or a new exchange.
    async fn access_token(&self) -> Result<String, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(t.token.clone());
        }
        let iat = now_s();
        let claims = Assertion {
            iss: self.client_email.clone(),
            scope: SCOPE.into(),
            aud: self.token_url.clone(),
            iat,
            exp: iat + ASSERTION_LIFETIME,
        };
        let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| Outcome::Failed(format!("signing the FCM assertion: {e}")))?;
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let request = Request::builder()
            .method(Method::POST)
            .uri(&self.token_url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| Outcome::Failed(format!("FCM token request: {e}")))?;
        let answer = self
            .http
            .send(request, false)
            .await
            .map_err(|e| Outcome::Retry(None, e.to_string()))?;
        if !answer.status.is_success() {
            let why = format!("FCM token endpoint answered {}", answer.status);
            return Err(
                if answer.status.is_server_error() || answer.status == StatusCode::TOO_MANY_REQUESTS
                {
                    Outcome::Retry(retry_after(&answer.headers), why)
                } else {
                    Outcome::Failed(why)
                },
            );
        }
        #[derive(Deserialize)]
        struct TokenAnswer {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let t: TokenAnswer = serde_json::from_slice(&answer.body)
            .map_err(|e| Outcome::Retry(None, format!("FCM token answer: {e}")))?;
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(ASSERTION_LIFETIME));
        *cached = Some(AccessToken {
            token: t.access_token.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(RENEW_BEFORE),
        });
        Ok(t.access_token)
    }
}

/// The `message` FCM is sent for `device`.
pub fn message(device: &Device, n: &Notification) -> Value {
    let mut data = n.data.clone();
    if let Some(badge) = n.badge {
        data.insert("badge".into(), badge.to_string());
    }
    let mut message = json!({ "token": device.token });
    let m = message.as_object_mut().expect("an object");
    if !n.title.is_empty() || !n.body.is_empty() {
        m.insert(
            "notification".into(),
            json!({"title": n.title, "body": n.body}),
        );
    }
    if !data.is_empty() {
        m.insert("data".into(), json!(data));
    }
    let mut android = serde_json::Map::new();
    if let Some(c) = &n.collapse_id {
        android.insert("collapse_key".into(), json!(c));
    }
    if let Some(ttl) = n.ttl_seconds {
        android.insert("ttl".into(), json!(format!("{ttl}s")));
    }
    if !android.is_empty() {
        m.insert("android".into(), Value::Object(android));
    }
    if let Some(overlay) = &n.overrides.fcm {
        merge(m, overlay);
        // The token is the device's, whatever the override says.
        m.insert("token".into(), json!(device.token));
    }
    json!({ "message": message })
}

/// The outcome of an FCM answer other than 200.
pub fn classify(status: StatusCode, body: &[u8], retry: Option<Duration>) -> Outcome {
    let error: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = &error["error"];
    let details = error["details"].as_array().cloned().unwrap_or_default();
    let fcm_code = details
        .iter()
        .find_map(|d| d["errorCode"].as_str())
        .unwrap_or_default();
    let status_name = error["status"].as_str().unwrap_or_default();
    let why = format!("FCM answered {status} {status_name} {fcm_code}");
    // Only an answer about the token: a bare 404 (a wrong project id) or
    // SENDER_ID_MISMATCH (credentials of another project) would otherwise
    // empty the registry.
    if fcm_code == "UNREGISTERED" {
        return Outcome::InvalidToken;
    }
    if status == StatusCode::BAD_REQUEST
        && (fcm_code == "INVALID_ARGUMENT" || status_name == "INVALID_ARGUMENT")
    {
        let other_field = details.iter().any(|d| {
            d["fieldViolations"]
                .as_array()
                .is_some_and(|v| v.iter().any(|f| f["field"] != "message.token"))
        });
        return if other_field {
            Outcome::Failed(why)
        } else {
            Outcome::InvalidToken
        };
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Outcome::Retry(retry, why);
    }
    Outcome::Failed(why)
}

#[async_trait]
impl Sender for FcmSender {
    fn provider(&self) -> Provider {
        Provider::Fcm
    }

    async fn send(&self, device: &Device, n: &Notification) -> Outcome {
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        let body = match serde_json::to_vec(&message(device, n)) {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(format!("FCM body: {e}")),
        };
        let request = match Request::builder()
            .method(Method::POST)
            .uri(&self.send_url)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
        {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("FCM request: {e}")),
        };
        let answer = match self.http.send(request, false).await {
            Ok(a) => a,
            Err(e) => return Outcome::Retry(None, e.to_string()),
        };
        if answer.status.is_success() {
            return Outcome::Sent;
        }
        if answer.status == StatusCode::UNAUTHORIZED {
            *self.token.lock().await = None;
            return Outcome::Retry(None, "FCM refused the access token".into());
        }
        classify(answer.status, &answer.body, retry_after(&answer.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_as_documented() {
        let body = |status: &str, code: &str, field: Option<&str>| {
            let mut details = vec![
                json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}),
            ];
            if let Some(f) = field {
                details.push(json!({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": f}]}));
            }
            serde_json::to_vec(&json!({"error": {"code": 0, "status": status, "details": details}}))
                .unwrap()
        };
        let c = |s: u16, b: Vec<u8>| classify(StatusCode::from_u16(s).unwrap(), &b, None);
        assert_eq!(
            c(404, body("NOT_FOUND", "UNREGISTERED", None)),
            Outcome::InvalidToken
        );
        assert_eq!(
            c(400, body("INVALID_ARGUMENT", "INVALID_ARGUMENT", None)),
            Outcome::InvalidToken
        );
        assert_eq!(
            c(
                400,
                body(
                    "INVALID_ARGUMENT",
                    "INVALID_ARGUMENT",
                    Some("message.token")
                )
            ),
            Outcome::InvalidToken
        );
        assert!(matches!(
            c(
                400,
                body(
                    "INVALID_ARGUMENT",
                    "INVALID_ARGUMENT",
                    Some("message.data[0].value")
                )
            ),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            c(429, body("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", None)),
            Outcome::Retry(..)
        ));
        assert!(matches!(c(503, Vec::new()), Outcome::Retry(..)));
        assert!(matches!(
            c(
                403,
                body("PERMISSION_DENIED", "THIRD_PARTY_AUTH_ERROR", None)
            ),
            Outcome::Failed(_)
        ));
        assert!(
            matches!(c(404, Vec::new()), Outcome::Failed(_)),
            "a wrong project id"
        );
        assert!(matches!(
            c(403, body("PERMISSION_DENIED", "SENDER_ID_MISMATCH", None)),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn message_has_the_documented_shape_and_overrides_merge() {
        let device = Device {
            id: "i".into(),
            user: "u".into(),
            provider: Provider::Fcm,
            token: "tok".into(),
            platform: String::new(),
            topics: vec![],
            updated_ms: 0,
        };
        let mut n = Notification {
            title: "T".into(),
            body: "B".into(),
            badge: Some(3),
            collapse_id: Some("c".into()),
            ..Default::default()
        };
        n.data.insert("k".into(), "v".into());
        n.overrides.fcm = Some(
            json!({"android": {"priority": "high"}, "token": "evil"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let m = message(&device, &n);
        assert_eq!(
            m,
            json!({"message": {
                "token": "tok",
                "notification": {"title": "T", "body": "B"},
                "data": {"k": "v", "badge": "3"},
                "android": {"collapse_key": "c", "priority": "high"},
            }})
        );
    }
}
