//! Client JWTs: connection tokens and subscription tokens, verified with the
//! HMAC secret (HS256, HS384, HS512, as Centrifugo's `hmac_secret_key`
//! accepts), configured public keys (PEM: RSA for RS256/384/512, EC
//! P-256/P-384 for ES256/ES384, Ed25519 for EdDSA) or the keys of a JWKS
//! endpoint selected by the token's `kid` ([`crate::jwks`]).
//!
//! The algorithm decides the key, never the other way round: an HS* token
//! is only ever checked against the HMAC secret, an RS/ES/EdDSA token only
//! against public keys of that family (jsonwebtoken refuses a key of another
//! family too), so a token "signed" with a public key as an HMAC secret is
//! invalid (algorithm confusion). PS*, `none` and anything else are invalid.
//! A token without `exp` never expires, as in Centrifugo, unless the verifier
//! requires one (`token_require_exp`); `exp`, `nbf` and `iat` are checked
//! when present; `aud` and `iss` when `token_audience` / `token_issuer` are
//! configured. An expired token is told apart from an invalid one because the
//! protocol answers them differently (error 109 lets the SDK refresh; an
//! invalid token disconnects with 3500).
//!
//! Bounds: a token longer than [`MAX_TOKEN_BYTES`] is invalid (not parsed);
//! an `exp` further ahead than [`MAX_TOKEN_LIFETIME`] counts as that far, so
//! no deadline computed from it can overflow. A connection token must not
//! carry `channel` (that is a subscription token). Tokens and claims are
//! never logged.
//!
//! An empty `sub` is an anonymous connection, as in Centrifugo; what it may
//! do is the channels' rules (`channel.rs`).
//!
//! Knows nothing of sessions or channels' rules: it verifies and mints.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::jwks::Jwks;

/// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 5;

/// Longest token accepted; longer ones are invalid without being decoded.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The furthest `exp` honoured: later ones count as now + this (10 years).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Shortest HMAC secret accepted (bytes): shorter ones can be brute-forced
/// offline from a single token.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

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
    /// The token's id, for `revoke_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The rate-limit tier (`[rate_limits.tiers.<name>]`); `None` or an
    /// unknown name gets `rate_limit_default_tier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

/// Only what tells a subscription token apart from a connection token.
#[derive(Deserialize)]
struct ChannelProbe {
    #[serde(default)]
    channel: Option<serde::de::IgnoredAny>,
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
    /// The token's id, for `revoke_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A configured public key and the algorithms it verifies.
#[derive(Clone)]
pub struct PublicKey {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

impl PublicKey {
    /// Reads a PEM public key: RSA (RS256/384/512), EC (ES256/ES384) or
    /// Ed25519 (EdDSA).
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        use Algorithm::*;
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self {
                key,
                algorithms: vec![RS256, RS384, RS512],
            });
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Self {
                key,
                algorithms: vec![ES256, ES384],
            });
        }
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(Self {
                key,
                algorithms: vec![EdDSA],
            });
        }
        Err("not a PEM RSA, EC (P-256/P-384) or Ed25519 public key".into())
    }
}

/// Every key and check a [`Verifier`] uses.
#[derive(Clone, Default)]
pub struct TokenKeys {
    /// The HS256 secret.
    pub hmac_secret: Option<Vec<u8>>,
    /// Configured public keys, tried in order for a token without `kid`.
    pub public_keys: Vec<PublicKey>,
    /// Keys by `kid` from a JWKS endpoint.
    pub jwks: Option<Jwks>,
    /// Required `aud` (one of the token's audiences), when set.
    pub audience: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
}

/// Verifies client tokens.
#[derive(Clone)]
pub struct Verifier {
    hmac: Option<DecodingKey>,
    public_keys: Arc<[PublicKey]>,
    jwks: Option<Jwks>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("public_keys", &self.public_keys.len())
            .field("jwks", &self.jwks.is_some())
            .finish()
    }
}

/// Is `alg` one Herald accepts from an asymmetric key?
fn asymmetric(alg: Algorithm) -> bool {
    use Algorithm::*;
    matches!(alg, RS256 | RS384 | RS512 | ES256 | ES384 | EdDSA)
}

impl Verifier {
    /// An HMAC-only verifier; tokens without `exp` never expire.
    pub fn new(secret: &str) -> Self {
        Self::with_keys(TokenKeys {
            hmac_secret: Some(secret.as_bytes().to_vec()),
            ..TokenKeys::default()
        })
    }

    pub fn with_keys(keys: TokenKeys) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = keys.audience.is_some();
        if let Some(aud) = &keys.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = &keys.issuer {
            validation.set_issuer(&[iss]);
        }
        validation.required_spec_claims = ["sub"].into_iter().map(String::from).collect();
        if keys.audience.is_some() {
            validation.required_spec_claims.insert("aud".into());
        }
        if keys.issuer.is_some() {
            validation.required_spec_claims.insert("iss".into());
        }
        Self {
            hmac: keys.hmac_secret.as_deref().map(DecodingKey::from_secret),
            public_keys: keys.public_keys.into(),
            jwks: keys.jwks,
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
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let alg = header.alg;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        let try_key = |key: &DecodingKey| match jsonwebtoken::decode::<T>(token, key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(_) => Err(TokenError::Invalid),
        };
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return self.hmac.as_ref().map_or(Err(TokenError::Invalid), try_key);
        }
        if !asymmetric(alg) {
            return Err(TokenError::Invalid);
        }
        if let Some(kid) = header.kid.as_deref() {
            if let Some(jwks) = &self.jwks {
                return match jwks.key(kid) {
                    Some(k) if k.algorithms.contains(&alg) => try_key(&k.key),
                    _ => Err(TokenError::Invalid),
                };
            }
        }
        let mut result = Err(TokenError::Invalid);
        for k in self
            .public_keys
            .iter()
            .filter(|k| k.algorithms.contains(&alg))
        {
            result = try_key(&k.key);
            if result.is_ok() {
                break;
            }
        }
        result
    }

    pub fn connect(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        let probe: ChannelProbe = self.decode(token)?;
        if probe.channel.is_some() {
            return Err(TokenError::Invalid);
        }
        let mut claims: ConnectClaims = claims_of(token)?;
        check_iat(claims.iat)?;
        claims.exp = claims.exp.map(clamp_exp);
        Ok(claims)
    }

    /// Verifies a subscription token for `channel` presented by `user`.
    pub fn subscription(
        &self,
        token: &str,
        user: &str,
        channel: &str,
    ) -> Result<SubscriptionClaims, TokenError> {
        let mut claims: SubscriptionClaims = self.decode(token)?;
        check_iat(claims.iat)?;
        if claims.sub != user || claims.channel != channel {
            return Err(TokenError::Invalid);
        }
        claims.exp = claims.exp.map(clamp_exp);
        Ok(claims)
    }
}

/// The claims of a token whose signature and registered claims were just
/// verified: decoded a second time without verification, so the probe and
/// the claims need not be one type.
fn claims_of<T: serde::de::DeserializeOwned>(token: &str) -> Result<T, TokenError> {
    use base64::Engine;
    let payload = token.split('.').nth(1).ok_or(TokenError::Invalid)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| TokenError::Invalid)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Invalid)
}

/// An `exp` no further ahead than [`MAX_TOKEN_LIFETIME`].
pub fn clamp_exp(exp: u64) -> u64 {
    exp.min(now_secs().saturating_add(MAX_TOKEN_LIFETIME.as_secs()))
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
                jti: None,
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
                jti: None,
                tier: None,
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

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn sign_with(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
    }

    fn keyed(public: &[&str]) -> Verifier {
        Verifier::with_keys(TokenKeys {
            hmac_secret: Some(b"k".to_vec()),
            public_keys: public
                .iter()
                .map(|n| PublicKey::from_pem(&fixture(n)).unwrap())
                .collect(),
            ..TokenKeys::default()
        })
    }

    #[test]
    fn asymmetric_keys_verify_their_algorithms() {
        let v = keyed(&["rsa1.pub", "ec256.pub", "ed25519.pub"]);
        let claims = serde_json::json!({"sub": "a", "exp": now_secs() + 60});
        let rsa = EncodingKey::from_rsa_pem(&fixture("rsa1.key")).unwrap();
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
            assert_eq!(
                v.connect(&sign_with(alg, &rsa, claims.clone()))
                    .unwrap()
                    .sub,
                "a"
            );
        }
        let ec = EncodingKey::from_ec_pem(&fixture("ec256.key")).unwrap();
        assert!(
            v.connect(&sign_with(Algorithm::ES256, &ec, claims.clone()))
                .is_ok()
        );
        let ed = EncodingKey::from_ed_pem(&fixture("ed25519.key")).unwrap();
        assert!(
            v.connect(&sign_with(Algorithm::EdDSA, &ed, claims.clone()))
                .is_ok()
        );
        // A key that is not configured, and PS256 (not accepted) with a good key.
        let other = EncodingKey::from_rsa_pem(&fixture("rsa2.key")).unwrap();
        let t = sign_with(Algorithm::RS256, &other, claims.clone());
        assert_eq!(v.connect(&t).unwrap_err(), TokenError::Invalid);
        let t = sign_with(Algorithm::PS256, &rsa, claims);
        assert_eq!(v.connect(&t).unwrap_err(), TokenError::Invalid);
    }

    /// Algorithm confusion: an HS256 token whose HMAC secret is the RSA
    /// public key (which is public) must not verify against that key.
    #[test]
    fn an_hs256_token_signed_with_the_public_key_is_refused() {
        let public_pem = fixture("rsa1.pub");
        let v = keyed(&["rsa1.pub"]);
        let claims = serde_json::json!({"sub": "mallory", "exp": now_secs() + 60});
        let t = sign_with(
            Algorithm::HS256,
            &EncodingKey::from_secret(&public_pem),
            claims.clone(),
        );
        assert_eq!(v.connect(&t).unwrap_err(), TokenError::Invalid);
        // Without any HMAC secret configured, HS256 is refused outright.
        let v = Verifier::with_keys(TokenKeys {
            public_keys: vec![PublicKey::from_pem(&public_pem).unwrap()],
            ..TokenKeys::default()
        });
        assert_eq!(v.connect(&t).unwrap_err(), TokenError::Invalid);
        // The same with the public key's DER bytes as the secret.
        let der = public_pem
            .split(|b| *b == b'\n')
            .filter(|l| !l.starts_with(b"-----"))
            .flatten()
            .copied()
            .collect::<Vec<u8>>();
        let der = base64::engine::general_purpose::STANDARD
            .decode(der)
            .unwrap();
        let t = sign_with(Algorithm::HS256, &EncodingKey::from_secret(&der), claims);
        assert_eq!(v.connect(&t).unwrap_err(), TokenError::Invalid);
    }

    #[test]
    fn a_huge_exp_is_clamped() {
        let v = Verifier::new("k");
        let t = sign(
            "k",
            Algorithm::HS256,
            serde_json::json!({"sub": "a", "exp": u64::MAX}),
        );
        let claims = v.connect(&t).unwrap();
        assert!(claims.exp.unwrap() <= now_secs() + MAX_TOKEN_LIFETIME.as_secs());
        let t = sign(
            "k",
            Algorithm::HS256,
            serde_json::json!({"sub": "a", "channel": "$c", "exp": u64::MAX}),
        );
        let claims = v.subscription(&t, "a", "$c").unwrap();
        assert!(claims.exp.unwrap() <= now_secs() + MAX_TOKEN_LIFETIME.as_secs());
    }

    #[test]
    fn a_subscription_token_is_not_a_connection_token() {
        let v = Verifier::new("k");
        let t = mint("k", "alice", Some("$room"), Duration::from_secs(60));
        assert_eq!(v.connect(&t).unwrap_err(), TokenError::Invalid);
        let t = sign(
            "k",
            Algorithm::HS256,
            serde_json::json!({"sub": "a", "exp": now_secs() + 60, "channel": ""}),
        );
        assert_eq!(v.connect(&t).unwrap_err(), TokenError::Invalid);
    }

    #[test]
    fn oversized_and_malformed_claims_are_invalid() {
        let v = Verifier::new("k");
        let big = "x".repeat(MAX_TOKEN_BYTES);
        let t = sign(
            "k",
            Algorithm::HS256,
            serde_json::json!({"sub": "a", "exp": now_secs() + 60, "info": big}),
        );
        assert_eq!(v.connect(&t).unwrap_err(), TokenError::Invalid);
        let exp = now_secs() + 60;
        for claims in [
            serde_json::json!({"sub": 5, "exp": exp}),
            serde_json::json!({"sub": "a", "exp": "soon"}),
            serde_json::json!({"sub": "a", "exp": exp, "channels": "news"}),
            serde_json::json!(["a"]),
        ] {
            let t = sign("k", Algorithm::HS256, claims.clone());
            assert_eq!(v.connect(&t).unwrap_err(), TokenError::Invalid, "{claims}");
        }
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let v = Verifier::with_keys(TokenKeys {
            hmac_secret: Some(b"k".to_vec()),
            audience: Some("herald".into()),
            issuer: Some("https://idp".into()),
            ..TokenKeys::default()
        });
        let exp = now_secs() + 60;
        let ok = serde_json::json!({"sub": "a", "exp": exp, "aud": "herald", "iss": "https://idp"});
        assert!(v.connect(&sign("k", Algorithm::HS256, ok)).is_ok());
        for claims in [
            serde_json::json!({"sub": "a", "exp": exp, "iss": "https://idp"}),
            serde_json::json!({"sub": "a", "exp": exp, "aud": "other", "iss": "https://idp"}),
            serde_json::json!({"sub": "a", "exp": exp, "aud": "herald", "iss": "https://evil"}),
            serde_json::json!({"sub": "a", "exp": exp, "aud": "herald"}),
        ] {
            let t = sign("k", Algorithm::HS256, claims.clone());
            assert_eq!(v.connect(&t).unwrap_err(), TokenError::Invalid, "{claims}");
        }
    }
}
