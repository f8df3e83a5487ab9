//! Builds the client token [`Verifier`] a process uses from its
//! configuration: the HMAC secret, the PEM public keys (`token_public_keys`),
//! the JWKS cache (`token_jwks_url`, whose refresh task it spawns, stopped by
//! the process's shutdown token) and the `aud` / `iss` checks.
//!
//! Knows nothing of how tokens are checked ([`crate::auth`]) or fetched
//! ([`crate::jwks`]): it wires them.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::auth::{MIN_HMAC_SECRET_BYTES, PublicKey, TokenKeys, Verifier};
use crate::config::{Secret, TokenConfig};
use crate::jwks::{Jwks, JwksSettings};

/// The verifier for `config`; refuses an HMAC secret shorter than
/// [`MIN_HMAC_SECRET_BYTES`] (also checked when the config loads, but a
/// config built in code skips that); spawns the JWKS refresh task when a JWKS URL
/// is configured.
pub fn verifier(
    config: &TokenConfig,
    hmac_secret: Option<&Secret>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Verifier> {
    if let Some(s) = hmac_secret {
        anyhow::ensure!(
            s.expose().len() >= MIN_HMAC_SECRET_BYTES,
            "token_hmac_secret (HERALD_TOKEN_HMAC_SECRET) must be at least {MIN_HMAC_SECRET_BYTES} bytes"
        );
    }
    let mut public_keys = Vec::new();
    for path in &config.public_keys {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading token public key {}", path.display()))?;
        let key = PublicKey::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("token public key {}: {e}", path.display()))?;
        public_keys.push(key);
    }
    let jwks = config.jwks_url.as_ref().map(|url| {
        let jwks = Jwks::new(JwksSettings {
            url: url.clone(),
            refresh_interval: config.jwks_refresh_interval,
            min_fetch_interval: config.jwks_min_fetch_interval,
        });
        tokio::spawn(jwks.clone().run(shutdown.clone()));
        jwks
    });
    Ok(Verifier::with_keys(TokenKeys {
        hmac_secret: hmac_secret.map(|s| s.expose().as_bytes().to_vec()),
        public_keys,
        jwks,
        audience: config.audience.clone(),
        issuer: config.issuer.clone(),
    }))
}
