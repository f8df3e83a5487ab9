//! Token revocation: the server API's `revoke_token {jti, expire_at}` (one
//! token by its `jti` claim) and `invalidate_user_tokens {user,
//! issued_before?, expire_at}` (every token of the user whose `iat` is before
//! `issued_before`, default now; a token without `iat` counts as issued
//! before). Entries live in the replicated NATS KV bucket [`BUCKET`]
//! (`nats_kv_replicas`, file storage), so they survive restarts and reach
//! every edge; each edge keeps them in memory, fed by a watch of the bucket,
//! and checks them on connect, refresh and subscribe (sessions), while live
//! sessions hear of every change through [`Revocations::changes`] and close
//! with 3500 (invalid token, terminal) when their token is revoked.
//!
//! An entry lasts until its `expire_at` (unix seconds, the latest `exp` of
//! the tokens it names): then it is dropped from memory and purged from the
//! bucket (by every edge's sweep every [`SWEEP_EVERY`]). Bounds: the bucket
//! holds at most [`MAX_BUCKET_BYTES`]; past it a new entry fails (the API
//! answers error 100) and nothing is dropped. `expire_at` is capped like
//! `exp` ([`crate::auth::clamp_exp`]).
//!
//! Knows nothing of sessions: it stores, watches and answers "revoked?".

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream::StorageType;
use base64::Engine;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::now_secs;

/// The KV bucket of revocations.
pub const BUCKET: &str = "herald_revocations";
/// Largest size of the bucket.
pub const MAX_BUCKET_BYTES: i64 = 64 * 1024 * 1024;
/// How often expired entries are purged.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Longest a KV write may take before the API answers an error.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("revocation store: {0}")]
pub struct RevocationError(String);

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    /// Unix seconds after which the entry is dropped.
    until: u64,
    /// `invalidate_user_tokens`: tokens with `iat` before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<u64>,
}

#[derive(Default)]
struct State {
    /// jti → until.
    jtis: HashMap<String, u64>,
    /// user → (issued before, until).
    users: HashMap<String, (u64, u64)>,
}

pub struct Revocations {
    kv: kv::Store,
    state: RwLock<State>,
    /// Bumped on every change the watch applies; sessions wait on it.
    changed: watch::Sender<u64>,
}

fn key(kind: &str, id: &str) -> String {
    format!(
        "{kind}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
    )
}

fn unkey(k: &str) -> Option<(&str, String)> {
    let (kind, b64) = k.split_once('.')?;
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .ok()?;
    Some((kind, String::from_utf8(id).ok()?))
}

/// Applies one bucket entry (`value` `None`: deleted) to `state`; false when
/// the key is not one of ours.
fn apply_entry(state: &mut State, key: &str, value: Option<&[u8]>) -> bool {
    let Some((kind, id)) = unkey(key) else {
        return false;
    };
    let value = value.and_then(|v| serde_json::from_slice::<Entry>(v).ok());
    let live = value.filter(|v| v.until > now_secs());
    match (kind, live) {
        ("jti", Some(v)) => {
            state.jtis.insert(id, v.until);
        }
        ("jti", None) => {
            state.jtis.remove(&id);
        }
        ("user", Some(v)) => {
            state
                .users
                .insert(id, (v.before.unwrap_or(v.until), v.until));
        }
        ("user", None) => {
            state.users.remove(&id);
        }
        _ => return false,
    }
    true
}

/// Applies one bucket entry (key and value as read from NATS KV) to an empty
/// revocation state, as the watch does; for [`crate::fuzzing`].
pub fn check_entry(key: &str, value: &[u8]) -> bool {
    apply_entry(&mut State::default(), key, Some(value))
}

impl Revocations {
    /// Opens (or creates) the bucket; the watch runs until `shutdown`.
    pub async fn open(
        nats: async_nats::Client,
        replicas: usize,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, RevocationError> {
        let js = async_nats::jetstream::new(nats);
        let kv = js
            .create_or_update_key_value(kv::Config {
                bucket: BUCKET.to_string(),
                description: "Herald revoked tokens (revoke_token, invalidate_user_tokens)"
                    .to_string(),
                history: 1,
                max_bytes: MAX_BUCKET_BYTES,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| RevocationError(e.to_string()))?;
        let watch = kv
            .watch_all_from_revision(1)
            .await
            .map_err(|e| RevocationError(e.to_string()))?;
        let r = Arc::new(Self {
            kv,
            state: RwLock::new(State::default()),
            changed: watch::Sender::new(0),
        });
        tokio::spawn(r.clone().run(watch, shutdown));
        Ok(r)
    }

    async fn put(&self, key: String, entry: &Entry) -> Result<(), RevocationError> {
        let value = serde_json::to_vec(entry).map_err(|e| RevocationError(e.to_string()))?;
        match tokio::time::timeout(WRITE_TIMEOUT, self.kv.put(key, value.into())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RevocationError(e.to_string())),
            Err(_) => Err(RevocationError("timed out".into())),
        }
    }

    /// Revokes the token with this `jti` until `expire_at`.
    pub async fn revoke_token(&self, jti: &str, expire_at: u64) -> Result<(), RevocationError> {
        let until = crate::auth::clamp_exp(expire_at);
        self.put(
            key("jti", jti),
            &Entry {
                until,
                before: None,
            },
        )
        .await
    }

    /// Invalidates `user`'s tokens issued before `before`, until `expire_at`.
    pub async fn invalidate_user(
        &self,
        user: &str,
        before: u64,
        expire_at: u64,
    ) -> Result<(), RevocationError> {
        let until = crate::auth::clamp_exp(expire_at);
        self.put(
            key("user", user),
            &Entry {
                until,
                before: Some(before),
            },
        )
        .await
    }

    /// Whether a token of `user` with this `jti` and `iat` is revoked.
    pub fn is_revoked(&self, user: &str, jti: Option<&str>, iat: Option<u64>) -> bool {
        let now = now_secs();
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if let Some(jti) = jti
            && state.jtis.get(jti).is_some_and(|until| *until > now)
        {
            return true;
        }
        state
            .users
            .get(user)
            .is_some_and(|(before, until)| *until > now && iat.is_none_or(|iat| iat < *before))
    }

    /// A receiver that changes whenever an entry arrives or leaves.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn apply(&self, entry: &kv::Entry) {
        let value = match entry.operation {
            Operation::Put => Some(&entry.value[..]),
            Operation::Delete | Operation::Purge => None,
        };
        let changed = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            apply_entry(&mut state, &entry.key, value)
        };
        if changed {
            self.changed.send_modify(|g| *g += 1);
        }
    }

    /// Drops expired entries from memory and purges them from the bucket.
    async fn sweep(&self) {
        let now = now_secs();
        let expired: Vec<String> = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let mut keys = Vec::new();
            state.jtis.retain(|id, until| {
                let keep = *until > now;
                if !keep {
                    keys.push(key("jti", id));
                }
                keep
            });
            state.users.retain(|id, (_, until)| {
                let keep = *until > now;
                if !keep {
                    keys.push(key("user", id));
                }
                keep
            });
            keys
        };
        for k in expired {
            if let Err(e) = self.kv.purge(&k).await {
                tracing::debug!(error = %e, "cannot purge an expired revocation");
            }
        }
    }

    async fn run(self: Arc<Self>, mut watch: kv::Watch, shutdown: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = sweep.tick() => self.sweep().await,
                event = watch.next() => match event {
                    Some(Ok(entry)) => self.apply(&entry),
                    Some(Err(e)) => tracing::warn!(error = %e, "revocation watch error"),
                    None => {
                        tracing::warn!("revocation watch ended; reopening");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        match self.kv.watch_all_from_revision(1).await {
                            Ok(w) => watch = w,
                            Err(e) => tracing::warn!(error = %e, "cannot reopen the revocation watch"),
                        }
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_any_id() {
        for id in ["alice", "a.b*>c", "ünï"] {
            let k = key("user", id);
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            );
            assert_eq!(unkey(&k), Some(("user", id.to_string())));
        }
    }
}
