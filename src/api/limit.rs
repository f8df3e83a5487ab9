//! The failed-API-key budget: each client IP may present a missing or wrong
//! key `api_key_failures_per_minute` times in a burst, refilled evenly over a
//! minute (a GCRA token bucket from `governor`). An IP past its budget is
//! answered 429 with `Retry-After` *before* its key is looked at, until its
//! next failure is allowed — so a guesser learns nothing from the answer
//! while blocked. Requests with the right key never spend the budget, but an
//! IP that is blocked is blocked for every key (a backend sharing an IP with
//! a guesser waits too; give backends `api_listen` on a private address).
//!
//! Bounds: at most [`MAX_TRACKED_IPS`] IPs are tracked; past it, IPs whose
//! budget has refilled are forgotten, and if that is not enough the oldest
//! state is dropped wholesale (a flood from more addresses than that resets
//! budgets rather than growing memory).
//!
//! Knows nothing of keys or methods: it counts failures per IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// Most client IPs whose failures are remembered.
pub const MAX_TRACKED_IPS: usize = 65_536;

type Limiter = RateLimiter<IpAddr, HashMapStateStore<IpAddr>, DefaultClock>;

/// Shared by every request of one API router.
#[derive(Clone)]
pub struct FailureLimit {
    quota: Quota,
    /// Replaced wholesale when more than [`MAX_TRACKED_IPS`] are recent.
    limiter: Arc<Mutex<Limiter>>,
    /// IPs past their budget and until when; bounded like the limiter.
    blocked: Arc<Mutex<HashMap<IpAddr, Instant>>>,
}

impl FailureLimit {
    /// `per_minute` failures per IP as a burst, refilled evenly.
    pub fn per_minute(per_minute: u32) -> Self {
        let n = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(n).allow_burst(n);
        Self {
            quota,
            limiter: Arc::new(Mutex::new(new_limiter(quota))),
            blocked: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// `Some(wait)` when `ip` is past its budget: answer 429 without
    /// checking the key.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let until = *blocked.get(&ip)?;
        let now = Instant::now();
        if now < until {
            Some(until - now)
        } else {
            blocked.remove(&ip);
            None
        }
    }

    /// Records a failed key from `ip`; `Some(wait)` when that went past the
    /// budget (answer 429 instead of 401).
    pub fn failed(&self, ip: IpAddr) -> Option<Duration> {
        let outcome = {
            let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
            if limiter.len() >= MAX_TRACKED_IPS {
                limiter.retain_recent();
                if limiter.len() >= MAX_TRACKED_IPS {
                    *limiter = new_limiter(self.quota);
                }
            }
            limiter.check_key(&ip)
        };
        let not_until = outcome.err()?;
        let wait = not_until
            .wait_time_from(DefaultClock::default().now())
            .max(Duration::from_secs(1));
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        if blocked.len() >= MAX_TRACKED_IPS {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            if blocked.len() >= MAX_TRACKED_IPS {
                blocked.clear();
            }
        }
        blocked.insert(ip, Instant::now() + wait);
        Some(wait)
    }
}

fn new_limiter(quota: Quota) -> Limiter {
    RateLimiter::new(quota, HashMapStateStore::default(), DefaultClock::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_spent_by_failures_then_blocks() {
        let limit = FailureLimit::per_minute(3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limit.blocked(ip), None);
            assert_eq!(limit.failed(ip), None);
        }
        let wait = limit.failed(ip).expect("fourth failure is over budget");
        assert!(wait >= Duration::from_secs(1));
        assert!(limit.blocked(ip).is_some());
        assert_eq!(limit.blocked(other), None);
        assert_eq!(limit.failed(other), None);
    }
}
