//! The edge's side of IM conversations: the pushes that go with them and the
//! per-edge state that keeps their cost bounded.
//!
//! - Per-user pushes (marker sync, member changes): a `control::ControlOp::
//!   Message` on the user's subject, which every edge routes into that
//!   user's connections as an async `message` push.
//! - Channel pushes (typing, live receipts, member changes): one message on
//!   the channel's subject with header `MESSAGE_HEADER`; each edge's feed
//!   pushes it to its subscribers (but the sender's own). One NATS message
//!   per event, whatever the channel's size; only subscribed connections
//!   get it.
//! - [`Gate`]: at most one event per (user, channel) per period — typing
//!   (extras dropped) and live receipts (extras coalesced: the latest goes
//!   out when the period ends).
//!   Kept per edge, not shared: a user on devices connected to two edges at
//!   once can cause one per edge per period (a shared limiter would cost a
//!   NATS round trip per keystroke).
//! - [`Seen`]: the user-limited channels (`dm:#alice,bob`) whose member
//!   rows this edge has already written, so a publish does not write them
//!   again.
//!
//! Both maps are bounded by `conversation_edge_cache_size`. Overflow: a full
//! gate first forgets entries older than its period (they no longer limit
//! anything); still full, a typing event or receipt is dropped and counted
//! (`herald_edge_im_dropped_total`), and `herald.receipts` still answers the
//! marker. A full `Seen` is cleared: the next publish into each channel writes
//! its (idempotent) member rows again.
//!
//! Knows nothing of the store (the rows are written through sync) or of
//! sessions.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Edge;
use super::control::{ControlError, ControlMessage, ControlOp};
use crate::bus::subjects;

/// A channel message as it travels on the channel subject (header
/// `MESSAGE_HEADER`): the push's data, and the user whose subscriptions skip
/// it. The user is in the body, not a header: user ids may hold any
/// character.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ChannelMessage<E, D> {
    #[serde(default)]
    pub except: E,
    pub data: D,
}

/// Typing events and live receipts per (user, channel).
pub const EVENT_PERIOD: Duration = Duration::from_secs(1);

/// What a [`Gate`] says about one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Offer {
    /// Send it now.
    Now,
    /// Send the pending value when this much time has passed (the caller
    /// schedules one [`Gate::take`]).
    Later(Duration),
    /// Within the period; it replaced the pending value already scheduled,
    /// or (without a value to keep) it is dropped.
    Held,
    /// The gate is full.
    Dropped,
}

struct Slot {
    last: Instant,
    pending: Option<serde_json::Value>,
}

/// At most one event per key per period, in a bounded map.
pub struct Gate {
    cap: usize,
    period: Duration,
    slots: Mutex<HashMap<(String, String), Slot>>,
}

impl Gate {
    pub fn new(cap: usize, period: Duration) -> Self {
        Self {
            cap: cap.max(1),
            period,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// An event for `key` at `now`. `value`: what to send later if the event
    /// falls within the period (receipts); `None` drops it then (typing).
    pub fn offer(
        &self,
        key: (&str, &str),
        now: Instant,
        value: Option<serde_json::Value>,
    ) -> Offer {
        let mut slots = self.slots.lock().expect("gate lock");
        let k = (key.0.to_string(), key.1.to_string());
        if let Some(slot) = slots.get_mut(&k) {
            let since = now.saturating_duration_since(slot.last);
            if since >= self.period && slot.pending.is_none() {
                slot.last = now;
                return Offer::Now;
            }
            let Some(v) = value else {
                return Offer::Held;
            };
            let scheduled = slot.pending.replace(v).is_some();
            return if scheduled {
                Offer::Held
            } else {
                Offer::Later(self.period.saturating_sub(since))
            };
        }
        if slots.len() >= self.cap {
            let period = self.period;
            slots.retain(|_, s| s.pending.is_some() || now.duration_since(s.last) < period);
            if slots.len() >= self.cap {
                return Offer::Dropped;
            }
        }
        slots.insert(
            k,
            Slot {
                last: now,
                pending: None,
            },
        );
        Offer::Now
    }

    /// The value pending for `key`, now due; the period restarts at `now`.
    pub fn take(&self, key: (&str, &str), now: Instant) -> Option<serde_json::Value> {
        let mut slots = self.slots.lock().expect("gate lock");
        let slot = slots.get_mut(&(key.0.to_string(), key.1.to_string()))?;
        let v = slot.pending.take()?;
        slot.last = now;
        Some(v)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().expect("gate lock").len()
    }
}

/// Channels whose member rows this edge wrote; cleared when full.
pub struct Seen {
    cap: usize,
    set: Mutex<HashSet<String>>,
}

impl Seen {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            set: Mutex::new(HashSet::new()),
        }
    }

    pub fn contains(&self, channel: &str) -> bool {
        self.set.lock().expect("seen lock").contains(channel)
    }

    pub fn insert(&self, channel: &str) {
        let mut set = self.set.lock().expect("seen lock");
        if set.len() >= self.cap {
            set.clear();
        }
        set.insert(channel.to_string());
    }
}

/// The edge's IM state.
pub struct Im {
    pub typing: Gate,
    pub receipts: Gate,
    pub seen: Seen,
}

impl Im {
    pub fn new(cap: usize) -> Self {
        Self {
            typing: Gate::new(cap, EVENT_PERIOD),
            receipts: Gate::new(cap, EVENT_PERIOD),
            seen: Seen::new(cap),
        }
    }
}

impl Edge {
    /// An async `message` push with `data` to every connection of `user` on
    /// every edge, except the connection `except_client`.
    pub async fn push_to_user(
        &self,
        user: &str,
        data: serde_json::Value,
        except_client: Option<&str>,
    ) -> Result<(), ControlError> {
        self.send_control(&ControlMessage {
            user: user.to_string(),
            client: except_client.map(str::to_string),
            op: ControlOp::Message { data },
        })
        .await
    }

    /// An async `message` push with `data` to every subscriber of `channel`
    /// on every edge, except `except_user`'s ("" = none).
    pub async fn push_to_channel(
        &self,
        channel: &str,
        data: &serde_json::Value,
        except_user: &str,
    ) -> Result<(), ControlError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(subjects::MESSAGE_HEADER, "1");
        let body = serde_json::to_vec(&ChannelMessage {
            except: except_user,
            data,
        })
        .map_err(|e| ControlError::Publish(e.to_string()))?;
        self.nats
            .publish_with_headers(subjects::channel_subject(channel), headers, body.into())
            .await
            .map_err(|e| {
                metrics::counter!(crate::metrics::NATS_PUBLISH_ERRORS_TOTAL, "kind" => "control")
                    .increment(1);
                ControlError::Publish(e.to_string())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn typing_is_limited_per_user_and_channel() {
        let g = Gate::new(10, EVENT_PERIOD);
        let t0 = Instant::now();
        assert_eq!(g.offer(("alice", "c"), t0, None), Offer::Now);
        assert_eq!(g.offer(("alice", "c"), t0, None), Offer::Held);
        assert_eq!(g.offer(("bob", "c"), t0, None), Offer::Now);
        assert_eq!(g.offer(("alice", "d"), t0, None), Offer::Now);
        let t1 = t0 + Duration::from_millis(999);
        assert_eq!(g.offer(("alice", "c"), t1, None), Offer::Held);
        let t2 = t0 + EVENT_PERIOD;
        assert_eq!(g.offer(("alice", "c"), t2, None), Offer::Now);
    }

    #[tokio::test(start_paused = true)]
    async fn receipts_coalesce_to_the_latest() {
        let g = Gate::new(10, EVENT_PERIOD);
        let t0 = Instant::now();
        let v = |n: u64| Some(serde_json::json!({ "read": n }));
        assert_eq!(g.offer(("a", "c"), t0, v(1)), Offer::Now);
        let t = t0 + Duration::from_millis(300);
        assert_eq!(
            g.offer(("a", "c"), t, v(2)),
            Offer::Later(Duration::from_millis(700))
        );
        assert_eq!(g.offer(("a", "c"), t, v(3)), Offer::Held);
        let due = t0 + EVENT_PERIOD;
        assert_eq!(g.take(("a", "c"), due), v(3));
        assert_eq!(g.take(("a", "c"), due), None, "sent once");
        // The period restarted when the pending one went out.
        let t = due + Duration::from_millis(10);
        assert!(matches!(g.offer(("a", "c"), t, v(4)), Offer::Later(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_gate_forgets_idle_keys_then_drops() {
        let g = Gate::new(2, EVENT_PERIOD);
        let t0 = Instant::now();
        assert_eq!(g.offer(("a", "c"), t0, None), Offer::Now);
        assert_eq!(g.offer(("b", "c"), t0, None), Offer::Now);
        assert_eq!(g.offer(("c", "c"), t0, None), Offer::Dropped);
        let later = t0 + EVENT_PERIOD;
        assert_eq!(g.offer(("c", "c"), later, None), Offer::Now);
        assert_eq!(g.len(), 1, "the idle keys went");
    }

    #[test]
    fn seen_is_bounded() {
        let s = Seen::new(2);
        s.insert("a");
        s.insert("b");
        assert!(s.contains("a") && s.contains("b"));
        s.insert("c");
        assert!(s.contains("c") && !s.contains("a"));
    }
}
