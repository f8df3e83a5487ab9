//! Command rate limits (`[rate_limits.tiers.<name>]`): GCRA token buckets
//! from `governor`, per connection and per user, by command kind (`connect`,
//! `subscribe`, `publish`, `history`, `presence`, `rpc`) and for all of them
//! (`total`). A connection's tier is its token's `tier` claim, or
//! `rate_limit_default_tier` when the claim is absent or names no tier.
//!
//! Each limit is two buckets: the limit itself (`N` at once, refilled at `N`
//! per period) and a wider one, `rate_limit_disconnect_multiple` times the
//! burst and the rate. Every command spends from both. A command the limit
//! refuses is answered error 111 (too many requests); a command past the wide
//! one closes the connection with 3013 (too many requests, SDKs reconnect
//! after a backoff). So with burst N and multiple k, and no refill in
//! between: commands 1..=N pass, N+1..=kN get 111, the next disconnects.
//! A refused command still spends the buckets checked before it (the kind's
//! and then `total`; the connection's and then the user's).
//!
//! Scope: per-user buckets live in the edge registry's entry for the user
//! (the tier of the connection that created it), so they hold across the
//! user's connections on one edge and start afresh when the user has none
//! left there; nothing is shared between edges (a limit checked over NATS on
//! every command would cost more than the command). The per-user `connect`
//! limit is kept apart, per edge, whether the user is connected or not, for
//! at most [`MAX_TRACKED_USERS`] users (past it, refilled entries are
//! forgotten, then all).
//!
//! Knows nothing of sessions or sockets: it answers "allow, refuse or
//! disconnect".

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::clock::DefaultClock;
use governor::state::keyed::HashMapStateStore;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::{RATE_KINDS, Rate, RateLimits};
use crate::metrics as m;

/// Most users whose connect budget is remembered, per tier.
pub const MAX_TRACKED_USERS: usize = 65_536;

/// A command kind, the index of its name in [`RATE_KINDS`] (`connect`, 0,
/// is [`Tier::connect`]'s own keyed limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Subscribe = 1,
    Publish = 2,
    History = 3,
    Presence = 4,
    Rpc = 5,
    /// Any other command (refresh, sub_refresh, unsubscribe, ping, send):
    /// counted in `total` only.
    Other = TOTAL as isize,
}

/// The index of `total` in [`RATE_KINDS`].
const TOTAL: usize = 6;
const SLOTS: usize = 7;

/// What a command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Error 111.
    Refuse,
    /// Close 3013.
    Disconnect,
}

/// The limit and its wide twin of one kind.
type QuotaPair = Option<(Quota, Quota)>;

/// One tier's quotas.
pub struct Tier {
    connection: [QuotaPair; SLOTS],
    user: [QuotaPair; SLOTS],
    /// The per-user connect limit of this tier, over every user.
    connects: Option<Mutex<ConnectLimiter>>,
    connect_quota: Option<Quota>,
}

type ConnectLimiter = RateLimiter<Arc<str>, HashMapStateStore<Arc<str>>, DefaultClock>;

/// Every tier, built once per edge.
pub struct Tiers {
    tiers: HashMap<String, Arc<Tier>>,
    default: Arc<Tier>,
}

fn quota(r: Rate, multiple: u32) -> Option<Quota> {
    let burst = NonZeroU32::new(r.burst.saturating_mul(multiple))?;
    let period = r.per.checked_div(burst.get())?;
    Quota::with_period(period).map(|q| q.allow_burst(burst))
}

fn pairs(m: &std::collections::BTreeMap<String, Rate>, multiple: u32) -> [QuotaPair; SLOTS] {
    let mut out = [None; SLOTS];
    for (i, kind) in RATE_KINDS.iter().enumerate() {
        if let Some(r) = m.get(*kind) {
            out[i] = quota(*r, 1).zip(quota(*r, multiple));
        }
    }
    out
}

impl Tiers {
    pub fn new(cfg: &RateLimits) -> Self {
        let multiple = cfg.disconnect_multiple.max(1);
        let tiers: HashMap<String, Arc<Tier>> = cfg
            .tiers
            .iter()
            .map(|(name, t)| {
                let connect_quota = t.user.get("connect").and_then(|r| quota(*r, 1));
                let tier = Tier {
                    connection: pairs(&t.connection, multiple),
                    user: pairs(&t.user, multiple),
                    connects: connect_quota.map(|q| Mutex::new(new_connect_limiter(q))),
                    connect_quota,
                };
                (name.clone(), Arc::new(tier))
            })
            .collect();
        let default = tiers.get(&cfg.default_tier).cloned().unwrap_or_else(|| {
            Arc::new(Tier {
                connection: [None; SLOTS],
                user: [None; SLOTS],
                connects: None,
                connect_quota: None,
            })
        });
        Self { tiers, default }
    }

    /// The tier a token's `tier` claim names, or the default one.
    pub fn tier(&self, claim: Option<&str>) -> Arc<Tier> {
        claim
            .and_then(|c| self.tiers.get(c))
            .unwrap_or(&self.default)
            .clone()
    }
}

fn new_connect_limiter(q: Quota) -> ConnectLimiter {
    RateLimiter::new(q, HashMapStateStore::default(), DefaultClock::default())
}

impl Tier {
    /// Spends one of `user`'s connects on this edge; `false` when over the
    /// limit (error 111).
    pub fn connect(&self, user: &str) -> bool {
        let (Some(limiter), Some(q)) = (&self.connects, self.connect_quota) else {
            return true;
        };
        let mut limiter = limiter.lock().unwrap_or_else(|e| e.into_inner());
        if limiter.len() >= MAX_TRACKED_USERS {
            limiter.retain_recent();
            if limiter.len() >= MAX_TRACKED_USERS {
                *limiter = new_connect_limiter(q);
            }
        }
        let ok = limiter.check_key(&Arc::from(user)).is_ok();
        if !ok {
            metrics::counter!(m::LIMIT_HITS_TOTAL, "limit" => "user_connect").increment(1);
        }
        ok
    }

    /// Fresh buckets for one connection of this tier.
    pub fn connection_buckets(&self) -> Buckets {
        Buckets::new(&self.connection, "connection_rate")
    }

    /// Fresh buckets for one user of this tier (kept in the registry).
    pub fn user_buckets(&self) -> Buckets {
        Buckets::new(&self.user, "user_rate")
    }
}

/// The strict and the wide bucket of one limit.
type Pair = (DefaultDirectRateLimiter, DefaultDirectRateLimiter);

/// The buckets of one connection or one user: only the limits the tier sets
/// (the default tier sets one of seven), so an idle connection carries what
/// its limits need and no room for the others (one is kept per connection).
pub struct Buckets {
    /// (slot, its buckets), slots ascending.
    slots: Box<[(usize, Pair)]>,
    /// `limit` label of [`m::LIMIT_HITS_TOTAL`] for its refusals.
    label: &'static str,
}

impl Buckets {
    fn new(quotas: &[QuotaPair; SLOTS], label: &'static str) -> Self {
        Self {
            slots: quotas
                .iter()
                .enumerate()
                .filter_map(|(i, q)| {
                    q.map(|(strict, wide)| {
                        (i, (RateLimiter::direct(strict), RateLimiter::direct(wide)))
                    })
                })
                .collect(),
            label,
        }
    }

    fn slot(&self, i: usize) -> Option<&Pair> {
        self.slots.iter().find(|(s, _)| *s == i).map(|(_, p)| p)
    }

    /// Spends one `kind` command (and one of the total).
    pub fn check(&self, kind: Kind) -> Verdict {
        let slots: &[usize] = if kind == Kind::Other {
            &[TOTAL]
        } else {
            &[kind as usize, TOTAL]
        };
        let over_wide = slots
            .iter()
            .any(|&i| self.slot(i).is_some_and(|(_, wide)| wide.check().is_err()));
        if over_wide {
            metrics::counter!(m::LIMIT_HITS_TOTAL, "limit" => "rate_disconnect").increment(1);
            return Verdict::Disconnect;
        }
        for &i in slots {
            if let Some((strict, _)) = self.slot(i)
                && strict.check().is_err()
            {
                metrics::counter!(m::LIMIT_HITS_TOTAL, "limit" => self.label).increment(1);
                return Verdict::Refuse;
            }
        }
        Verdict::Allow
    }
}

/// One session's buckets: its own and its user's (shared with the user's
/// other connections on this edge).
pub struct SessionRates {
    pub connection: Buckets,
    pub user: Arc<Buckets>,
}

impl SessionRates {
    pub fn check(&self, kind: Kind) -> Verdict {
        match self.connection.check(kind) {
            Verdict::Disconnect => Verdict::Disconnect,
            v => worst(v, self.user.check(kind)),
        }
    }
}

/// The worse of two verdicts.
pub fn worst(a: Verdict, b: Verdict) -> Verdict {
    use Verdict::*;
    match (a, b) {
        (Disconnect, _) | (_, Disconnect) => Disconnect,
        (Refuse, _) | (_, Refuse) => Refuse,
        _ => Allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TierLimits, parse_rate};
    use std::collections::BTreeMap;

    fn tiers(multiple: u32) -> Tiers {
        let mut t = TierLimits::default();
        t.connection
            .insert("publish".into(), parse_rate("3/1h").unwrap());
        t.connection
            .insert("total".into(), parse_rate("10/1h").unwrap());
        t.user.insert("connect".into(), parse_rate("2/1h").unwrap());
        Tiers::new(&RateLimits {
            default_tier: "default".into(),
            disconnect_multiple: multiple,
            tiers: BTreeMap::from([("default".into(), t)]),
        })
    }

    #[test]
    fn burst_then_refusals_then_disconnect() {
        let b = tiers(2).tier(None).connection_buckets();
        let got: Vec<Verdict> = (0..7).map(|_| b.check(Kind::Publish)).collect();
        use Verdict::*;
        assert_eq!(
            got,
            [Allow, Allow, Allow, Refuse, Refuse, Refuse, Disconnect]
        );
    }

    #[test]
    fn total_covers_every_kind() {
        let b = tiers(4).tier(Some("unknown")).connection_buckets();
        for _ in 0..9 {
            assert_eq!(b.check(Kind::History), Verdict::Allow);
        }
        assert_eq!(b.check(Kind::Other), Verdict::Allow);
        assert_eq!(b.check(Kind::Subscribe), Verdict::Refuse);
        assert_eq!(b.check(Kind::Other), Verdict::Refuse);
    }

    #[test]
    fn connects_per_user() {
        let t = tiers(2).tier(None);
        assert!(t.connect("alice") && t.connect("alice"));
        assert!(!t.connect("alice"));
        assert!(t.connect("bob"));
    }
}
