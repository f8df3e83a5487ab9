//! Request rate limits of the HTTP APIs (the server API, `api_rate_*`, and
//! the sync HTTP API, `sync_http_rate_*`): a `governor` token bucket per
//! client IP and one per presented credential (the API key, or the bearer
//! token of a sync read), checked before anything else. A request over
//! either gets 429 with `Retry-After` (whole seconds, at least 1) and the
//! error body `{"error":{"code":111,"message":"too many requests"}}`, and
//! counts in `herald_limit_hits_total` (`api_ip`, `api_key`, `sync_ip`,
//! `sync_key`).
//!
//! The client IP is the TCP peer. Credentials are keyed by a keyed hash
//! (random per process), never stored. Bounds: at most [`MAX_TRACKED_KEYS`]
//! IPs and credentials each; past it, refilled entries are forgotten, then
//! all (a flood from more sources than that resets budgets rather than
//! growing memory).
//!
//! Knows nothing of methods or keys' validity: it counts requests.

use std::hash::{BuildHasher, Hash, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::config::Rate;

/// Most IPs, and most credentials, whose budget is remembered per API.
pub const MAX_TRACKED_KEYS: usize = 65_536;

const BODY: &str = r#"{"error":{"code":111,"message":"too many requests"}}"#;

/// One keyed bucket set, bounded.
struct Keyed<K: Hash + Eq + Clone> {
    quota: Quota,
    limiter: Mutex<RateLimiter<K, HashMapStateStore<K>, DefaultClock>>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(rate: Rate) -> Option<Self> {
        let burst = NonZeroU32::new(rate.burst)?;
        let quota = Quota::with_period(rate.per.checked_div(burst.get())?)?.allow_burst(burst);
        Some(Self {
            quota,
            limiter: Mutex::new(RateLimiter::new(
                quota,
                HashMapStateStore::default(),
                DefaultClock::default(),
            )),
        })
    }

    /// `Err(wait)` when `key` is over its budget.
    fn check(&self, key: &K) -> Result<(), Duration> {
        let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        if limiter.len() >= MAX_TRACKED_KEYS {
            limiter.retain_recent();
            if limiter.len() >= MAX_TRACKED_KEYS {
                *limiter = RateLimiter::new(
                    self.quota,
                    HashMapStateStore::default(),
                    DefaultClock::default(),
                );
            }
        }
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The limits of one API.
pub struct RequestLimit {
    per_ip: Option<Keyed<IpAddr>>,
    per_key: Option<Keyed<u64>>,
    hasher: RandomState,
    /// `limit` labels of the two.
    labels: (&'static str, &'static str),
}

impl RequestLimit {
    /// `None` rates are not limited; `labels` are the per-IP and per-key
    /// `limit` label values.
    pub fn new(
        per_ip: Option<Rate>,
        per_key: Option<Rate>,
        labels: (&'static str, &'static str),
    ) -> Arc<Self> {
        Arc::new(Self {
            per_ip: per_ip.and_then(Keyed::new),
            per_key: per_key.and_then(Keyed::new),
            hasher: RandomState::new(),
            labels,
        })
    }

    /// `Err((label, wait))` when the request is over a budget.
    fn check(&self, ip: IpAddr, headers: &HeaderMap) -> Result<(), (&'static str, Duration)> {
        if let Some(l) = &self.per_ip {
            l.check(&ip).map_err(|w| (self.labels.0, w))?;
        }
        if let Some(l) = &self.per_key
            && let Some(cred) = headers
                .get("x-api-key")
                .or_else(|| headers.get(header::AUTHORIZATION))
        {
            let key = self.hasher.hash_one(cred.as_bytes());
            l.check(&key).map_err(|w| (self.labels.1, w))?;
        }
        Ok(())
    }

    /// `router` with these limits in front of every route.
    pub fn wrap(self: &Arc<Self>, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), guard))
    }
}

async fn guard(
    State(limit): State<Arc<RequestLimit>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    match limit.check(peer.ip(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err((label, wait)) => {
            metrics::counter!(crate::metrics::LIMIT_HITS_TOTAL, "limit" => label).increment(1);
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    (header::CONTENT_TYPE, "application/json".to_string()),
                    (header::RETRY_AFTER, secs.max(1).to_string()),
                ],
                BODY,
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_per_key_budgets() {
        let rate = |burst| Rate {
            burst,
            per: Duration::from_secs(3600),
        };
        let l = RequestLimit::new(Some(rate(3)), Some(rate(2)), ("ip", "key"));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let none = HeaderMap::new();
        let mut keyed = HeaderMap::new();
        keyed.insert("x-api-key", "k".parse().unwrap());
        assert!(l.check(ip, &keyed).is_ok());
        assert!(l.check(other, &keyed).is_ok());
        assert_eq!(l.check(ip, &keyed).unwrap_err().0, "key");
        assert!(l.check(ip, &none).is_ok());
        // The key's refusal spent the IP's budget too: 3 of 3.
        assert_eq!(l.check(ip, &none).unwrap_err().0, "ip");
        assert!(l.check(ip, &none).unwrap_err().1 > Duration::from_secs(1));
    }
}
