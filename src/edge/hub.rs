//! The hub: channel → local subscribers, sharded by channel hash.
//!
//! Adding the first subscriber of a channel starts its feed (one NATS
//! subscription, see `feed`); removing the last stops it. A feed broadcasts a
//! publication as one shared `Bytes` frame to every subscriber.
//!
//! Each subscriber keeps its own position in the channel so delivery is in
//! offset order with no gap and no duplicate (I4): while its subscribe is
//! being answered it buffers (bounded); afterwards it drops offsets it has
//! already seen and reports a gap instead of delivering past it.
//!
//! Std mutexes only, never held across `.await`. Knows nothing of sessions
//! beyond their id and outbox.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::feed::{self, FeedDeps};
use super::outbox::{Outbox, PushError};
use crate::protocol::{self, Push, Reply, Unsubscribe};

const SHARDS: usize = 64;

pub type SessionId = u64;

/// Whether a channel's NATS subscription is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedStatus {
    Starting,
    Ready,
    Failed,
}

enum SubState {
    /// The subscribe reply is not out yet: keep deliveries (offset, frame,
    /// commit time), in arrival order.
    Buffering {
        pending: Vec<(Option<u64>, Bytes, Option<u64>)>,
        bytes: usize,
    },
    /// Delivering; `last` is the last offset the client has (history channels).
    Live { last: u64 },
    /// Ended by the server (gap, overflow); the session cleans up.
    Dead,
}

/// One session's subscription to one channel.
pub struct Subscriber {
    pub session: SessionId,
    pub channel: Arc<str>,
    pub outbox: Arc<Outbox>,
    /// Bound of the subscribe-time buffer (the outbox bound).
    buffer_limit: usize,
    state: Mutex<SubState>,
}

/// What `Subscriber::go_live` found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum GoLive {
    Ok,
    /// A buffered publication did not follow the position: the client must
    /// resubscribe and recover.
    Gap,
}

impl Subscriber {
    pub fn new(
        session: SessionId,
        channel: &str,
        outbox: Arc<Outbox>,
        buffer_limit: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            session,
            channel: channel.into(),
            outbox,
            buffer_limit,
            state: Mutex::new(SubState::Buffering {
                pending: Vec::new(),
                bytes: 0,
            }),
        })
    }

    pub fn is_dead(&self) -> bool {
        matches!(*self.state.lock().expect("sub lock"), SubState::Dead)
    }

    /// Queues `head` (the subscribe reply, or a server-side subscribe push and
    /// its recovered publications; nothing when the reply went out already,
    /// inside a connect reply) and then whatever was buffered after
    /// `position`, atomically with respect to deliveries, and goes live.
    pub fn go_live(&self, head: impl IntoIterator<Item = Bytes>, position: u64) -> GoLive {
        let mut state = self.state.lock().expect("sub lock");
        let SubState::Buffering { pending, .. } =
            std::mem::replace(&mut *state, SubState::Live { last: position })
        else {
            return GoLive::Ok;
        };
        for frame in head {
            if self.outbox.push(frame).is_err() {
                *state = SubState::Dead;
                return GoLive::Ok;
            }
        }
        let mut last = position;
        for (offset, frame, committed_us) in pending {
            match offset {
                Some(o) if o <= last => continue,
                Some(o) if o != last + 1 => {
                    *state = SubState::Dead;
                    return GoLive::Gap;
                }
                Some(o) => last = o,
                None => {}
            }
            if self.outbox.push_stamped(frame, committed_us).is_err() {
                *state = SubState::Dead;
                return GoLive::Ok;
            }
        }
        *state = SubState::Live { last };
        GoLive::Ok
    }

    /// Delivers one publication (deliverable since `committed_us`, when
    /// known). Returns false when the subscription must end with
    /// "insufficient state" (a gap it cannot fill).
    fn deliver(&self, offset: Option<u64>, frame: &Bytes, committed_us: Option<u64>) -> bool {
        let mut state = self.state.lock().expect("sub lock");
        match &mut *state {
            SubState::Dead => true,
            SubState::Buffering { pending, bytes } => {
                *bytes += frame.len();
                if *bytes > self.buffer_limit {
                    *state = SubState::Dead;
                    drop(state);
                    metrics::counter!(crate::metrics::SLOW_DISCONNECTS_TOTAL).increment(1);
                    self.outbox.close(crate::protocol::Disconnect::SLOW);
                    return true;
                }
                pending.push((offset, frame.clone(), committed_us));
                true
            }
            SubState::Live { last } => {
                if let Some(o) = offset {
                    if o <= *last {
                        return true;
                    }
                    if o != *last + 1 {
                        *state = SubState::Dead;
                        return false;
                    }
                    *last = o;
                }
                // A full outbox closes the connection itself (3008); a closed
                // one drops the frame. Either way the subscription has ended.
                let _: Result<(), PushError> =
                    self.outbox.push_stamped(frame.clone(), committed_us);
                true
            }
        }
    }

    /// Ends this subscription with an `unsubscribe` push; the SDK resubscribes
    /// (codes >= 2500) and recovers from its position.
    pub fn end(&self, reason: Unsubscribe) {
        *self.state.lock().expect("sub lock") = SubState::Dead;
        let push = protocol::encode_reply(&Reply::push(Push::unsubscribe(&self.channel, reason)));
        let _ = self.outbox.push(push);
    }
}

struct ChannelEntry {
    feed_id: u64,
    subscribers: HashMap<SessionId, Arc<Subscriber>>,
    status: watch::Receiver<FeedStatus>,
    /// Cancels the feed task; fired when the last subscriber leaves.
    stop: CancellationToken,
}

type Shard = Mutex<HashMap<Arc<str>, ChannelEntry>>;

pub struct Hub {
    shards: Box<[Shard]>,
    next_feed: AtomicU64,
    deps: FeedDeps,
}

impl Hub {
    pub fn new(deps: FeedDeps) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_feed: AtomicU64::new(1),
            deps,
        })
    }

    fn shard(&self, channel: &str) -> &Shard {
        let mut h = DefaultHasher::new();
        channel.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Adds a subscriber (in buffering state). Starts the channel's feed if it
    /// is the first. Returns the feed's status to wait for.
    pub fn add(
        self: &Arc<Self>,
        sub: Arc<Subscriber>,
        history: bool,
    ) -> watch::Receiver<FeedStatus> {
        let mut shard = self.shard(&sub.channel).lock().expect("hub lock");
        if let Some(entry) = shard.get_mut(&sub.channel) {
            entry.subscribers.insert(sub.session, sub);
            return entry.status.clone();
        }
        let feed_id = self.next_feed.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(FeedStatus::Starting);
        let stop = CancellationToken::new();
        let channel = sub.channel.clone();
        let mut subscribers = HashMap::new();
        subscribers.insert(sub.session, sub);
        shard.insert(
            channel.clone(),
            ChannelEntry {
                feed_id,
                subscribers,
                status: rx.clone(),
                stop: stop.clone(),
            },
        );
        drop(shard);
        metrics::gauge!(crate::metrics::CHANNELS).increment(1.0);
        tokio::spawn(feed::run(
            self.clone(),
            self.deps.clone(),
            channel,
            feed_id,
            history,
            tx,
            stop,
        ));
        rx
    }

    /// Removes a subscriber (only this one: the session may have subscribed
    /// again since); stops the feed after the last one.
    pub fn remove(&self, sub: &Arc<Subscriber>) {
        let channel: &str = &sub.channel;
        let mut shard = self.shard(channel).lock().expect("hub lock");
        let Some(entry) = shard.get_mut(channel) else {
            return;
        };
        match entry.subscribers.get(&sub.session) {
            Some(current) if Arc::ptr_eq(current, sub) => {
                entry.subscribers.remove(&sub.session);
            }
            _ => return,
        }
        if entry.subscribers.is_empty() {
            if let Some(entry) = shard.remove(channel) {
                entry.stop.cancel();
                metrics::gauge!(crate::metrics::CHANNELS).decrement(1.0);
            }
        }
    }

    fn subscribers(&self, channel: &str, feed_id: u64) -> Vec<Arc<Subscriber>> {
        let shard = self.shard(channel).lock().expect("hub lock");
        match shard.get(channel) {
            Some(e) if e.feed_id == feed_id => e.subscribers.values().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Delivers one publication frame (encoded once) to every subscriber of
    /// the feed's channel. A subscriber that finds a gap is ended with
    /// "insufficient state". `committed_us`: when the publication became
    /// deliverable, for the delivery latency. Returns how many subscribers it
    /// was handed to.
    pub fn broadcast(
        &self,
        channel: &str,
        feed_id: u64,
        offset: Option<u64>,
        frame: &Bytes,
        committed_us: Option<u64>,
    ) -> usize {
        let subscribers = self.subscribers(channel, feed_id);
        for sub in &subscribers {
            if !sub.deliver(offset, frame, committed_us) {
                sub.end(Unsubscribe::INSUFFICIENT_STATE);
                self.remove(sub);
            }
        }
        subscribers.len()
    }

    /// Ends every subscription of a channel with "insufficient state" (the
    /// feed lost publications it could not fetch).
    pub fn fail_all(&self, channel: &str, feed_id: u64) {
        for sub in self.subscribers(channel, feed_id) {
            sub.end(Unsubscribe::INSUFFICIENT_STATE);
            self.remove(&sub);
        }
    }

    /// Channels with local subscribers, and subscriptions.
    pub fn counts(&self) -> (u64, u64) {
        let mut channels = 0;
        let mut subs = 0;
        for shard in self.shards.iter() {
            let shard = shard.lock().expect("hub lock");
            channels += shard.len() as u64;
            subs += shard
                .values()
                .map(|e| e.subscribers.len() as u64)
                .sum::<u64>();
        }
        (channels, subs)
    }
}
