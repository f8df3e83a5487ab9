//! Who may open a client connection, decided before the WebSocket upgrade
//! is accepted (so a refusal is a plain HTTP answer and costs no session):
//! - the node-wide cap `client_max_connections` → 503;
//! - the per-IP cap `client_max_connections_per_ip` → 429;
//! - the per-IP connect rate `client_connect_rate_per_ip` (a `governor`
//!   bucket) → 429 with `Retry-After`.
//!
//! The client IP is the TCP peer, unless the peer is one of
//! `client_trusted_proxies`: then it is the rightmost address in the
//! `client_ip_header` header (e.g. `X-Forwarded-For`) that is not itself a
//! trusted proxy (entries a client wrote further left are ignored, as they
//! can be forged). A header from an untrusted peer is ignored.
//!
//! The per-user cap (`client_max_connections_per_user`) needs the token, so
//! it is applied at `connect` ([`user_over_cap`]).
//!
//! Bounds: the per-IP counts hold one entry per IP with an open connection
//! (at most the connections open); the connect-rate state at most
//! [`MAX_TRACKED_IPS`] IPs (past it, refilled entries are forgotten, then
//! all). Every refusal counts in `herald_limit_hits_total`.
//!
//! Knows nothing of the protocol: it counts connections per IP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::config::ConnectionLimits;
use crate::metrics as m;

/// Most IPs whose connect rate is remembered.
pub const MAX_TRACKED_IPS: usize = 65_536;

type IpLimiter = RateLimiter<IpAddr, HashMapStateStore<IpAddr>, DefaultClock>;

pub struct Admission {
    limits: ConnectionLimits,
    /// Open connections, in all and per client IP; an IP's entry leaves
    /// with its last connection.
    counts: Arc<Mutex<Counts>>,
    rate: Option<(Quota, Mutex<IpLimiter>)>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Held by a session for its life: its place in the counts.
pub struct Admitted {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

fn refuse(status: StatusCode, limit: &'static str, retry: Option<Duration>) -> Box<Response> {
    metrics::counter!(m::LIMIT_HITS_TOTAL, "limit" => limit).increment(1);
    let secs = retry.map_or(1, |w| {
        (w.as_secs() + u64::from(w.subsec_nanos() > 0)).max(1)
    });
    Box::new(
        (
            status,
            [(header::RETRY_AFTER, secs.to_string())],
            "connection limit",
        )
            .into_response(),
    )
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Self {
        let rate = limits.connect_rate_per_ip.and_then(|r| {
            let burst = NonZeroU32::new(r.burst)?;
            let q = Quota::with_period(r.per.checked_div(burst.get())?)?.allow_burst(burst);
            Some((q, Mutex::new(new_limiter(q))))
        });
        Self {
            limits,
            counts: Arc::default(),
            rate,
        }
    }

    /// The client's IP: the peer, or from the configured header when the
    /// peer is a trusted proxy.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.ip();
        let trusted = |ip: &IpAddr| self.limits.trusted_proxies.iter().any(|n| n.contains(*ip));
        if !trusted(&peer) {
            return peer;
        }
        let Some(name) = &self.limits.ip_header else {
            return peer;
        };
        let values: Vec<&str> = headers
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for v in values.iter().rev() {
            match v.trim().parse::<IpAddr>() {
                Ok(ip) if trusted(&ip) => continue,
                Ok(ip) => return ip,
                Err(_) => return peer,
            }
        }
        peer
    }

    /// Admits a connection from `ip`, or the HTTP answer refusing it.
    pub fn admit(&self, ip: IpAddr) -> Result<Admitted, Box<Response>> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .limits
            .max_connections
            .is_some_and(|cap| counts.total >= cap)
        {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "node_connections",
                None,
            ));
        }
        if let Some((q, limiter)) = &self.rate {
            let mut limiter = limiter.lock().unwrap_or_else(|e| e.into_inner());
            if limiter.len() >= MAX_TRACKED_IPS {
                limiter.retain_recent();
                if limiter.len() >= MAX_TRACKED_IPS {
                    *limiter = new_limiter(*q);
                }
            }
            if let Err(not_until) = limiter.check_key(&ip) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "ip_connect_rate",
                    Some(wait),
                ));
            }
        }
        let open = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if self.limits.max_per_ip.is_some_and(|cap| open >= cap) {
            return Err(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "ip_connections",
                None,
            ));
        }
        counts.total += 1;
        *counts.per_ip.entry(ip).or_insert(0) += 1;
        Ok(Admitted {
            counts: self.counts.clone(),
            ip,
        })
    }

    /// The per-user cap and which connection loses past it.
    pub fn per_user(&self) -> Option<(usize, crate::config::UserLimitPolicy)> {
        self.limits
            .max_per_user
            .map(|cap| (cap, self.limits.user_policy))
    }
}

/// What the per-user cap asks of a connection just authenticated, given the
/// user's other connections here (oldest first): the others to close (oldest
/// first), or `None` to close the new one.
pub fn user_over_cap<T: Clone>(
    cap: (usize, crate::config::UserLimitPolicy),
    others: &[T],
) -> Option<Vec<T>> {
    let (cap, policy) = cap;
    let over = (others.len() + 1).saturating_sub(cap);
    if over == 0 {
        return Some(Vec::new());
    }
    metrics::counter!(m::LIMIT_HITS_TOTAL, "limit" => "user_connections").increment(1);
    match policy {
        crate::config::UserLimitPolicy::RefuseNew => None,
        crate::config::UserLimitPolicy::CloseOldest => {
            Some(others[..over.min(others.len())].to_vec())
        }
    }
}

fn new_limiter(q: Quota) -> IpLimiter {
    RateLimiter::new(q, HashMapStateStore::default(), DefaultClock::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IpNet, UserLimitPolicy};

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: Some(10),
            max_per_ip: Some(2),
            connect_rate_per_ip: None,
            max_per_user: None,
            user_policy: UserLimitPolicy::RefuseNew,
            trusted_proxies: vec!["10.0.0.0/8".parse::<IpNet>().unwrap()],
            ip_header: Some("x-forwarded-for".into()),
        }
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let a = Admission::new(limits());
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 1.2.3.4, 10.1.1.1".parse().unwrap(),
        );
        let proxy: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let other: SocketAddr = "5.5.5.5:1".parse().unwrap();
        assert_eq!(a.client_ip(proxy, &h), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(a.client_ip(other, &h), other.ip());
        assert_eq!(a.client_ip(proxy, &HeaderMap::new()), proxy.ip());
    }

    #[test]
    fn per_ip_counts_leave_with_their_connections() {
        let a = Admission::new(limits());
        let ip: IpAddr = "1.2.3.4".parse().unwrap();
        let one = a.admit(ip).unwrap();
        let _two = a.admit(ip).unwrap();
        assert_eq!(
            a.admit(ip).err().map(|r| r.status()),
            Some(StatusCode::TOO_MANY_REQUESTS)
        );
        let _other = a.admit("1.2.3.5".parse().unwrap()).unwrap();
        drop(one);
        let _three = a.admit(ip).unwrap();
        let held: Vec<Admitted> = (6..13)
            .map(|i| a.admit(IpAddr::from([1, 2, 3, i])).unwrap())
            .collect();
        assert_eq!(held.len(), 7);
        assert_eq!(
            a.admit("9.9.9.9".parse().unwrap())
                .err()
                .map(|r| r.status()),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
    }
}
