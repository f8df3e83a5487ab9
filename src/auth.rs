//! Client JWTs: connection tokens and subscription tokens, HMAC-signed.
//!
//! The algorithm family is pinned: HS256, HS384 and HS512 with the one
//! secret (as Centrifugo's `hmac_secret_key` accepts); a token whose header
//! names any other algorithm (RSA, ECDSA, `none`) is invalid. A token without `exp` never expires, as
//! in Centrifugo, unless the verifier requires one (`token_require_exp`); `exp`,
//! `nbf` and `iat` are checked when present. An expired token is told apart from an invalid one
//! because the protocol answers them differently (error 109 lets the SDK
//! refresh; an invalid token disconnects with 3500).
//!
//! An empty `sub` is an anonymous connection, as in Centrifugo; what it may
//! do is the channels' rules (`channel.rs`).
//!
//! Knows nothing of sessions or channels' rules: it verifies and mints.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// Claims of a connection token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectClaims {
    pub sub: String,
    /// `None`: the token never expires (allowed unless `token_require_exp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Server-side subscriptions made at connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Connection info attached to this client's publications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

/// Claims of a subscription token (private channels).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriptionClaims {
    pub sub: String,
    pub channel: String,
    /// `None`: the token never expires (allowed unless `token_require_exp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Channel info attached to this client's publications in the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verifies tokens signed with the configured secret.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(HMAC)")
    }
}

impl Verifier {
    /// A verifier that accepts tokens without `exp` as never expiring.
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.required_spec_claims = ["sub".to_string()].into_iter().collect();
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// With `required`, a token without `exp` is invalid (`token_require_exp`).
    pub fn require_exp(mut self, required: bool) -> Self {
        if required {
            self.validation
                .required_spec_claims
                .insert("exp".to_string());
        }
        self
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        match jsonwebtoken::decode::<T>(token, &self.key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(_) => Err(TokenError::Invalid),
        }
    }

    pub fn connect(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        let claims: ConnectClaims = self.decode(token)?;
        check_iat(claims.iat)?;
        Ok(claims)
    }

    /// Verifies a subscription token for `channel` presented by `user`.
    pub fn subscription(
        &self,
        token: &str,
        user: &str,
        channel: &str,
    ) -> Result<SubscriptionClaims, TokenError> {
        let claims: SubscriptionClaims = self.decode(token)?;
        check_iat(claims.iat)?;
        if claims.sub != user || claims.channel != channel {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }
}

fn check_iat(iat: Option<u64>) -> Result<(), TokenError> {
    match iat {
        Some(iat) if iat > now_secs() + LEEWAY_SECS => Err(TokenError::Invalid),
        _ => Ok(()),
    }
}

/// Mints an HS256 token: a connection token, or a subscription token when
/// `channel` is given. For `herald token` and tests.
pub fn mint(secret: &str, user: &str, channel: Option<&str>, ttl: Duration) -> String {
    let now = now_secs();
    let exp = now + ttl.as_secs().max(1);
    let key = EncodingKey::from_secret(secret.as_bytes());
    let header = Header::new(Algorithm::HS256);
    let result = match channel {
        Some(channel) => jsonwebtoken::encode(
            &header,
            &SubscriptionClaims {
                sub: user.into(),
                channel: channel.into(),
                exp: Some(exp),
                iat: Some(now),
                nbf: None,
                info: None,
            },
            &key,
        ),
        None => jsonwebtoken::encode(
            &header,
            &ConnectClaims {
                sub: user.into(),
                exp: Some(exp),
                iat: Some(now),
                nbf: None,
                channels: Vec::new(),
                info: None,
            },
            &key,
        ),
    };
    // HS256 signing with an in-memory key and plain claims cannot fail.
    result.expect("HS256 encoding")
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn sign(secret: &str, alg: Algorithm, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let v = Verifier::new("s3cret");
        let t = mint("s3cret", "alice", None, Duration::from_secs(60));
        assert_eq!(v.connect(&t).unwrap().sub, "alice");
        let t = mint("s3cret", "alice", Some("$room"), Duration::from_secs(60));
        assert_eq!(
            v.subscription(&t, "alice", "$room").unwrap().channel,
            "$room"
        );
        assert_eq!(
            v.subscription(&t, "bob", "$room").unwrap_err(),
            TokenError::Invalid
        );
        assert_eq!(
            v.subscription(&t, "alice", "$other").unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn expired_is_told_apart() {
        let v = Verifier::new("k");
        let t = sign(
            "k",
            Algorithm::HS256,
            serde_json::json!({"sub": "a", "exp": now_secs() - 60}),
        );
        assert_eq!(v.connect(&t).unwrap_err(), TokenError::Expired);
    }

    #[test]
    fn missing_exp_never_expires_unless_required() {
        let t = sign("k", Algorithm::HS256, serde_json::json!({"sub": "a"}));
        let claims = Verifier::new("k").connect(&t).unwrap();
        assert_eq!((claims.sub.as_str(), claims.exp), ("a", None));
        let t = sign(
            "k",
            Algorithm::HS256,
            serde_json::json!({"sub": "a", "channel": "$c"}),
        );
        assert_eq!(
            Verifier::new("k").subscription(&t, "a", "$c").unwrap().exp,
            None
        );
        let strict = Verifier::new("k").require_exp(true);
        assert_eq!(strict.connect(&t).unwrap_err(), TokenError::Invalid);
        assert_eq!(
            strict.subscription(&t, "a", "$c").unwrap_err(),
            TokenError::Invalid
        );
        let t = mint("k", "a", None, Duration::from_secs(60));
        assert!(strict.connect(&t).unwrap().exp.is_some());
    }

    #[test]
    fn wrong_secret_and_future_nbf_are_invalid_an_empty_sub_is_anonymous() {
        let v = Verifier::new("k");
        let exp = now_secs() + 60;
        let t = sign(
            "other",
            Algorithm::HS256,
            serde_json::json!({"sub": "a", "exp": exp}),
        );
        assert_eq!(v.connect(&t).unwrap_err(), TokenError::Invalid);
        let t = sign(
            "k",
            Algorithm::HS256,
            serde_json::json!({"sub": "a", "exp": exp, "nbf": exp}),
        );
        assert_eq!(v.connect(&t).unwrap_err(), TokenError::Invalid);
        let t = sign(
            "k",
            Algorithm::HS256,
            serde_json::json!({"sub": "a", "exp": exp, "iat": exp}),
        );
        assert_eq!(v.connect(&t).unwrap_err(), TokenError::Invalid);
        let t = sign(
            "k",
            Algorithm::HS256,
            serde_json::json!({"sub": "", "exp": exp}),
        );
        assert_eq!(v.connect(&t).unwrap().sub, "", "anonymous");
    }

    #[test]
    fn other_hmac_algorithms_pass_and_none_is_rejected() {
        let v = Verifier::new("k");
        let exp = now_secs() + 60;
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let t = sign("k", alg, serde_json::json!({"sub": "a", "exp": exp}));
            assert_eq!(v.connect(&t).unwrap().sub, "a");
        }
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"a","exp":{exp}}}"#));
        assert_eq!(
            v.connect(&format!("{header}.{body}.")).unwrap_err(),
            TokenError::Invalid
        );
        assert_eq!(v.connect("garbage").unwrap_err(), TokenError::Invalid);
    }
}
