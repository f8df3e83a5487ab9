//! The edge's registry: who is connected and who is subscribed to what, on
//! this node.
//!
//! Two sharded indexes, no global lock on the connect, subscribe and deliver
//! paths:
//! - **by channel** (fan-out): channel → its local subscribers and its feed.
//!   The first subscriber of a channel starts its feed through [`Feeds`] (the
//!   NATS side, behind a trait); the last one leaving stops it. The feed hands
//!   each publication back through its [`FeedHandle`], encoded once, and the
//!   registry gives it to every subscriber, whose own position keeps the
//!   order (I4, see `subscriber`).
//! - **by user**: user → that user's connections on this node (per-user
//!   control; the home of per-user limits, presence and status). Every open
//!   connection, authenticated or not, is also indexed by id (graceful stop,
//!   counts).
//!
//! - **presence** (by channel): the local members of each channel with
//!   presence on. This edge is authoritative for its own connections; other
//!   edges ask it (see `presence`).
//!
//! Ownership is by value: a [`Subscription`] owns its channel entry, its
//! presence entry, the subscriptions gauge and its expiry; a [`Connection`]
//! owns its entries and the connections gauge. Dropping one undoes all of
//! it, so no call site pairs "remove" with "decrement" — or "join" with
//! "leave": a presence entry's join event and its leave event are emitted
//! by the same value, the leave when it drops.
//!
//! Presence events (join, leave, a user's first connection here, a user's
//! last connection here gone) go to a bounded queue ([`PresenceEvent`]) that
//! the edge's presence task publishes; a full queue drops the event and
//! counts it (`herald_edge_presence_events_dropped_total`).
//!
//! A feed is known only by an id: its channel's entry carries the id of the
//! feed it belongs to, and a feed's calls on an entry of another feed (the
//! channel was left and joined again meanwhile) do nothing.
//!
//! Std mutexes only, never held across `.await`, and never a shard lock
//! while calling into a subscriber or a feed. Knows nothing of NATS, the
//! protocol's commands or sessions beyond their id, outbox and control queue.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::command::ControlSender;
use super::outbox::Outbox;
use super::subscriber::{Publication, Subscriber};
use crate::metrics as m;
use crate::protocol::{SharedPush, Unsubscribe};

const SHARDS: usize = 64;

pub use super::subscriber::SessionId;

/// Who subscribes and how, for [`Registry::subscribe`].
#[derive(Debug, Clone, Copy)]
pub struct SubscribeAs<'a> {
    pub user: &'a str,
    /// Bound of the subscribe-time buffer.
    pub buffer_limit: usize,
    /// The channel keeps history (publications carry offsets).
    pub history: bool,
    /// Receives join and leave pushes.
    pub join_leave: bool,
    /// Negotiated delta compression.
    pub delta: bool,
}

/// Presence events a registry emits, in the order they happened per
/// connection; the edge's presence task publishes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    /// A subscription with join/leave on joined `channel`; `info` is the
    /// member's `ClientInfo` JSON object.
    Join {
        channel: Arc<str>,
        info: Arc<str>,
    },
    Leave {
        channel: Arc<str>,
        info: Arc<str>,
    },
    /// The user's first connection on this edge opened.
    UserOnline(Arc<str>),
    /// The user's last connection on this edge closed at `at` (unix ms).
    UserOffline {
        user: Arc<str>,
        at: u64,
    },
}

/// One connection's membership of a channel's presence.
#[derive(Debug, Clone)]
pub struct Member {
    pub client: Arc<str>,
    pub user: Arc<str>,
    /// `{client, user, conn_info?, chan_info?}` as JSON.
    pub info: Arc<str>,
}

/// Unix milliseconds now.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Distinct users listed in a local presence stats answer up to this many;
/// past it only their number (the asker then sums, see `presence`).
pub const STATS_USER_LIST_LIMIT: usize = 1000;

/// This edge's part of a channel's presence stats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalStats {
    pub clients: u64,
    pub users: u64,
    /// The distinct users, when at most [`STATS_USER_LIST_LIMIT`].
    pub user_list: Option<Vec<String>>,
}

/// Whether a channel's feed is receiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedStatus {
    Starting,
    Ready,
    Failed,
}

/// The NATS side of a channel, as the registry sees it.
pub trait Feeds: Send + Sync + 'static {
    /// The channel gained its first local subscriber: start receiving its
    /// publications and hand them to `feed` until `feed.stopped()` (the last
    /// subscriber left: interest ends). Must not block.
    fn subscribe(&self, feed: FeedHandle);
}

/// A running feed's side of the registry: one channel, one feed id.
pub struct FeedHandle {
    channels: Arc<Channels>,
    channel: Arc<str>,
    feed_id: u64,
    history: bool,
    stop: CancellationToken,
}

impl FeedHandle {
    pub fn channel(&self) -> &Arc<str> {
        &self.channel
    }

    /// Whether the channel keeps history (its publications carry offsets).
    pub fn history(&self) -> bool {
        self.history
    }

    /// Resolves when the channel has no local subscriber any more.
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    /// Receiving: subscribers waiting for the feed may read their position.
    pub fn ready(&self) {
        self.channels
            .set_status(&self.channel, self.feed_id, FeedStatus::Ready);
    }

    /// Gives one publication to every subscriber of the channel. Returns how
    /// many it was handed to.
    pub fn deliver(&self, p: &Publication) -> usize {
        self.channels.deliver(&self.channel, self.feed_id, p)
    }

    /// Gives a join or leave push to the subscribers that receive them.
    pub fn deliver_join_leave(&self, frame: Arc<SharedPush>) -> usize {
        self.channels.deliver_filtered(
            &self.channel,
            self.feed_id,
            &Publication {
                offset: None,
                epoch: None,
                frame,
                committed_us: None,
                key: None,
                base: None,
            },
            true,
        )
    }

    /// Gives an async message push to every subscriber of the channel but
    /// those of `except_user`. Returns how many it was handed to.
    pub fn deliver_message(&self, frame: Arc<SharedPush>, except_user: &str) -> usize {
        self.channels
            .deliver_except_user(&self.channel, self.feed_id, frame, except_user)
    }

    /// Publications were lost that the feed could not fetch: every current
    /// subscriber ends with "insufficient state" and recovers. The feed
    /// goes on for those who subscribe afterwards.
    pub fn fail_all(&self) {
        self.channels.fail_all(&self.channel, self.feed_id);
    }

    /// The feed could not start, or its stream ended: it is gone. Every
    /// subscriber ends with "insufficient state", and the channel's entry
    /// goes with the feed, so whoever subscribes next starts a new one.
    pub fn ended(&self) {
        self.channels.feed_ended(&self.channel, self.feed_id);
    }
}

struct ChannelEntry {
    feed_id: u64,
    subscribers: HashMap<SessionId, Arc<Subscriber>>,
    /// Read by subscribers waiting to go live; written by the feed.
    status: watch::Sender<FeedStatus>,
    /// Cancelled when the entry goes: the feed stops.
    stop: CancellationToken,
}

/// The by-channel index.
struct Channels {
    shards: Sharded<Arc<str>, ChannelEntry>,
    next_feed: AtomicU64,
}

/// `SHARDS` maps, each behind its own lock; a key's shard is its hash's.
type Sharded<K, V> = Box<[Mutex<HashMap<K, V>>]>;

fn shard_of(key: &impl Hash) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

fn shards<T: Default>() -> Box<[Mutex<T>]> {
    (0..SHARDS).map(|_| Mutex::new(T::default())).collect()
}

impl Channels {
    fn shard(&self, channel: &str) -> &Mutex<HashMap<Arc<str>, ChannelEntry>> {
        &self.shards[shard_of(&channel)]
    }

    /// Adds `sub`; returns the feed's status and, when it is the channel's
    /// first subscriber, the handle of the feed to start.
    fn add(
        self: &Arc<Self>,
        sub: Arc<Subscriber>,
        history: bool,
    ) -> (watch::Receiver<FeedStatus>, Option<FeedHandle>) {
        let mut shard = self.shard(&sub.channel).lock().expect("channel shard lock");
        if let Some(entry) = shard.get_mut(&sub.channel) {
            entry.subscribers.insert(sub.session, sub);
            return (entry.status.subscribe(), None);
        }
        let feed_id = self.next_feed.fetch_add(1, Ordering::Relaxed);
        let (status, rx) = watch::channel(FeedStatus::Starting);
        let stop = CancellationToken::new();
        let channel = sub.channel.clone();
        shard.insert(
            channel.clone(),
            ChannelEntry {
                feed_id,
                subscribers: HashMap::from([(sub.session, sub)]),
                status,
                stop: stop.clone(),
            },
        );
        drop(shard);
        metrics::gauge!(m::CHANNELS).increment(1.0);
        let feed = FeedHandle {
            channels: self.clone(),
            channel,
            feed_id,
            history,
            stop,
        };
        (rx, Some(feed))
    }

    /// Removes `sub` (only this one: its session may have subscribed again
    /// since); the feed stops after the last one.
    fn remove(&self, sub: &Arc<Subscriber>) {
        let channel: &str = &sub.channel;
        let mut shard = self.shard(channel).lock().expect("channel shard lock");
        let Some(entry) = shard.get_mut(channel) else {
            return;
        };
        if !entry
            .subscribers
            .get(&sub.session)
            .is_some_and(|current| Arc::ptr_eq(current, sub))
        {
            return;
        }
        entry.subscribers.remove(&sub.session);
        if entry.subscribers.is_empty() {
            Self::drop_entry(&mut shard, channel);
        }
    }

    fn drop_entry(
        shard: &mut HashMap<Arc<str>, ChannelEntry>,
        channel: &str,
    ) -> Option<ChannelEntry> {
        let entry = shard.remove(channel)?;
        entry.stop.cancel();
        metrics::gauge!(m::CHANNELS).decrement(1.0);
        Some(entry)
    }

    fn set_status(&self, channel: &str, feed_id: u64, status: FeedStatus) {
        let shard = self.shard(channel).lock().expect("channel shard lock");
        if let Some(e) = shard.get(channel).filter(|e| e.feed_id == feed_id) {
            e.status.send_replace(status);
        }
    }

    fn deliver(&self, channel: &str, feed_id: u64, p: &Publication) -> usize {
        self.deliver_filtered(channel, feed_id, p, false)
    }

    /// `join_leave`: only to subscribers receiving join and leave pushes.
    fn deliver_filtered(
        &self,
        channel: &str,
        feed_id: u64,
        p: &Publication,
        join_leave: bool,
    ) -> usize {
        let subscribers: Vec<Arc<Subscriber>> = {
            let shard = self.shard(channel).lock().expect("channel shard lock");
            match shard.get(channel) {
                Some(e) if e.feed_id == feed_id => e
                    .subscribers
                    .values()
                    .filter(|s| !join_leave || s.join_leave)
                    .cloned()
                    .collect(),
                _ => return 0,
            }
        };
        for sub in &subscribers {
            if !sub.deliver(p) {
                self.remove(sub);
            }
        }
        subscribers.len()
    }

    fn deliver_except_user(
        &self,
        channel: &str,
        feed_id: u64,
        frame: Arc<SharedPush>,
        except_user: &str,
    ) -> usize {
        let subscribers: Vec<Arc<Subscriber>> = {
            let shard = self.shard(channel).lock().expect("channel shard lock");
            match shard.get(channel) {
                Some(e) if e.feed_id == feed_id => e
                    .subscribers
                    .values()
                    .filter(|s| except_user.is_empty() || &*s.user != except_user)
                    .cloned()
                    .collect(),
                _ => return 0,
            }
        };
        let p = Publication {
            offset: None,
            epoch: None,
            frame,
            committed_us: None,
            key: None,
            base: None,
        };
        for sub in &subscribers {
            if !sub.deliver(&p) {
                self.remove(sub);
            }
        }
        subscribers.len()
    }

    fn fail_all(&self, channel: &str, feed_id: u64) {
        let ended: Vec<Arc<Subscriber>> = {
            let mut shard = self.shard(channel).lock().expect("channel shard lock");
            let Some(entry) = shard.get_mut(channel).filter(|e| e.feed_id == feed_id) else {
                return;
            };
            let ended = entry.subscribers.drain().map(|(_, s)| s).collect();
            Self::drop_entry(&mut shard, channel);
            ended
        };
        for sub in ended {
            sub.end(Unsubscribe::INSUFFICIENT_STATE);
        }
    }

    fn feed_ended(&self, channel: &str, feed_id: u64) {
        let entry = {
            let mut shard = self.shard(channel).lock().expect("channel shard lock");
            if shard.get(channel).is_none_or(|e| e.feed_id != feed_id) {
                return;
            }
            Self::drop_entry(&mut shard, channel)
        };
        let Some(entry) = entry else { return };
        entry.status.send_replace(FeedStatus::Failed);
        for sub in entry.subscribers.into_values() {
            sub.end(Unsubscribe::INSUFFICIENT_STATE);
        }
    }
}

/// One connection as its user's entry holds it.
struct UserConn {
    client_id: Arc<str>,
    outbox: Arc<Outbox>,
    control: ControlSender,
}

/// One user's connections on this node: the place for per-user state
/// (limits, presence, status) as it comes.
///
/// An entry without connections stays while its `last_seen` is not yet
/// recorded in the status bucket ([`Registry::recorded`]), so a status read
/// that finds the user offline here also finds when they left.
#[derive(Default)]
struct UserEntry {
    conns: HashMap<SessionId, UserConn>,
    /// When the last connection closed (unix ms), while not yet recorded.
    last_seen: Option<u64>,
    /// Command rate buckets of the user on this node (`edge::rate`),
    /// made by the first connection asking.
    rates: Option<Arc<super::rate::Buckets>>,
}

/// A connection of a user, as control finds it.
pub struct Target {
    pub outbox: Arc<Outbox>,
    pub control: ControlSender,
}

pub struct Registry {
    channels: Arc<Channels>,
    feeds: Arc<dyn Feeds>,
    /// Channel → its local members (presence on), by session.
    presence: Sharded<Arc<str>, HashMap<SessionId, Member>>,
    events: mpsc::Sender<PresenceEvent>,
    /// Every open connection by id: graceful stop and counts.
    conns: Sharded<SessionId, Arc<Outbox>>,
    /// Authenticated connections by user.
    users: Sharded<Arc<str>, UserEntry>,
}

impl Registry {
    /// `events` receives the presence events (bounded: a full queue drops).
    pub fn new(feeds: Arc<dyn Feeds>, events: mpsc::Sender<PresenceEvent>) -> Arc<Self> {
        Arc::new(Self {
            channels: Arc::new(Channels {
                shards: shards(),
                next_feed: AtomicU64::new(1),
            }),
            feeds,
            presence: shards(),
            events,
            conns: shards(),
            users: shards(),
        })
    }

    /// Registers an open connection (not yet authenticated).
    pub fn open(
        self: &Arc<Self>,
        id: SessionId,
        client_id: &str,
        outbox: Arc<Outbox>,
        control: ControlSender,
    ) -> Connection {
        self.conns[shard_of(&id)]
            .lock()
            .expect("conn shard lock")
            .insert(id, outbox.clone());
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        Connection {
            registry: self.clone(),
            id,
            client_id: client_id.into(),
            outbox,
            control,
            user: None,
        }
    }

    /// Subscribes `session` to `channel` (buffering until it goes live) and
    /// starts the channel's feed if it is the first local subscriber. Returns
    /// the subscription and the feed's status to wait for.
    pub fn subscribe(
        self: &Arc<Self>,
        session: SessionId,
        channel: &str,
        outbox: Arc<Outbox>,
        how: SubscribeAs<'_>,
    ) -> (Subscription, watch::Receiver<FeedStatus>) {
        let SubscribeAs {
            user,
            buffer_limit,
            history,
            join_leave,
            delta,
        } = how;
        let subscriber = Subscriber::new(
            session,
            channel.into(),
            outbox,
            buffer_limit,
            join_leave,
            delta,
            user.into(),
        );
        let (status, feed) = self.channels.add(subscriber.clone(), history);
        if let Some(feed) = feed {
            self.feeds.subscribe(feed);
        }
        metrics::gauge!(m::SUBSCRIPTIONS).increment(1.0);
        let sub = Subscription {
            registry: self.clone(),
            subscriber,
            expires_at: None,
            chan_info: None,
            private: false,
            member: None,
            webhook: None,
        };
        (sub, status)
    }

    fn emit(&self, e: PresenceEvent) {
        if self.events.try_send(e).is_err() {
            metrics::counter!(m::PRESENCE_EVENTS_DROPPED_TOTAL).increment(1);
        }
    }

    /// The local members of `channel`.
    pub fn presence(&self, channel: &str) -> Vec<Member> {
        let shard = self.presence[shard_of(&channel)]
            .lock()
            .expect("presence shard lock");
        shard
            .get(channel)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// This edge's part of `channel`'s presence stats, without copying the
    /// members.
    pub fn presence_stats(&self, channel: &str) -> LocalStats {
        let shard = self.presence[shard_of(&channel)]
            .lock()
            .expect("presence shard lock");
        let Some(members) = shard.get(channel) else {
            return LocalStats {
                user_list: Some(Vec::new()),
                ..LocalStats::default()
            };
        };
        let users: std::collections::HashSet<&str> = members.values().map(|m| &*m.user).collect();
        LocalStats {
            clients: members.len() as u64,
            users: users.len() as u64,
            user_list: (users.len() <= STATS_USER_LIST_LIMIT)
                .then(|| users.into_iter().map(str::to_string).collect()),
        }
    }

    /// Of `users`, those known here: `None` for one with a connection
    /// (online), `Some(ms)` for one whose last connection here closed then
    /// and is not yet recorded in the status bucket.
    pub fn status<'a>(&self, users: &'a [String]) -> Vec<(&'a str, Option<u64>)> {
        users
            .iter()
            .filter_map(|u| {
                let shard = self.users[shard_of(&u.as_str())]
                    .lock()
                    .expect("user shard lock");
                let e = shard.get(u.as_str())?;
                Some((
                    u.as_str(),
                    if e.conns.is_empty() {
                        e.last_seen
                    } else {
                        None
                    },
                ))
            })
            .collect()
    }

    /// `user`'s last-seen time `at` is in the status bucket: a connection-less
    /// entry kept for it goes.
    pub fn recorded(&self, user: &str, at: u64) {
        let mut shard = self.users[shard_of(&user)].lock().expect("user shard lock");
        if shard
            .get(user)
            .is_some_and(|e| e.conns.is_empty() && e.last_seen == Some(at))
        {
            shard.remove(user);
        }
    }

    /// Channels with local subscribers whose name starts with `prefix`.
    pub fn channels_with_prefix(&self, prefix: &str) -> Vec<Arc<str>> {
        self.channels
            .shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .expect("channel shard lock")
                    .keys()
                    .filter(|c| c.starts_with(prefix))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Every open connection's outbox.
    pub fn outboxes(&self) -> Vec<Arc<Outbox>> {
        self.conns
            .iter()
            .flat_map(|s| {
                s.lock()
                    .expect("conn shard lock")
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn num_connections(&self) -> u64 {
        self.conns
            .iter()
            .map(|s| s.lock().expect("conn shard lock").len() as u64)
            .sum()
    }

    pub fn num_users(&self) -> u64 {
        self.users
            .iter()
            .map(|s| {
                s.lock()
                    .expect("user shard lock")
                    .values()
                    .filter(|e| !e.conns.is_empty())
                    .count() as u64
            })
            .sum()
    }

    /// Channels with local subscribers, and subscriptions.
    pub fn channel_counts(&self) -> (u64, u64) {
        let mut channels = 0;
        let mut subs = 0;
        for shard in self.channels.shards.iter() {
            let shard = shard.lock().expect("channel shard lock");
            channels += shard.len() as u64;
            subs += shard
                .values()
                .map(|e| e.subscribers.len() as u64)
                .sum::<u64>();
        }
        (channels, subs)
    }

    /// Local subscriptions to `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        let shard = self
            .channels
            .shard(channel)
            .lock()
            .expect("channel shard lock");
        shard.get(channel).map_or(0, |e| e.subscribers.len())
    }

    /// The user's connections here, only `client` if given, without `except`.
    pub fn targets(&self, user: &str, client: Option<&str>, except: &[String]) -> Vec<Target> {
        let shard = self.users[shard_of(&user)].lock().expect("user shard lock");
        let Some(entry) = shard.get(user) else {
            return Vec::new();
        };
        entry
            .conns
            .values()
            .filter(|c| client.is_none_or(|id| id == &*c.client_id))
            .filter(|c| !except.iter().any(|e| e.as_str() == &*c.client_id))
            .map(|c| Target {
                outbox: c.outbox.clone(),
                control: c.control.clone(),
            })
            .collect()
    }
}

/// An open connection's place in the registry; dropping it removes the
/// connection from every index and the connections gauge.
pub struct Connection {
    registry: Arc<Registry>,
    id: SessionId,
    client_id: Arc<str>,
    outbox: Arc<Outbox>,
    control: ControlSender,
    user: Option<Arc<str>>,
}

impl Connection {
    /// The connection is now `user`'s: control messages for the user reach it.
    pub fn authenticate(&mut self, user: &str) {
        let user: Arc<str> = user.into();
        let mut shard = self.registry.users[shard_of(&&*user)]
            .lock()
            .expect("user shard lock");
        let first = shard.get(&user).is_none_or(|e| e.conns.is_empty());
        shard.entry(user.clone()).or_default().conns.insert(
            self.id,
            UserConn {
                client_id: self.client_id.clone(),
                outbox: self.outbox.clone(),
                control: self.control.clone(),
            },
        );
        // Emitted under the shard lock: a user's online and offline events
        // leave this edge in the order they happened.
        if first {
            self.registry.emit(PresenceEvent::UserOnline(user.clone()));
        }
        drop(shard);
        self.user = Some(user);
    }
}

impl Connection {
    /// The outboxes of the user's other connections on this node, oldest
    /// first (session ids grow); empty before [`Connection::authenticate`].
    pub fn user_others(&self) -> Vec<Arc<Outbox>> {
        let Some(user) = &self.user else {
            return Vec::new();
        };
        let shard = self.registry.users[shard_of(&&**user)]
            .lock()
            .expect("user shard lock");
        let Some(entry) = shard.get(user) else {
            return Vec::new();
        };
        let mut others: Vec<(SessionId, Arc<Outbox>)> = entry
            .conns
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, c)| (*id, c.outbox.clone()))
            .collect();
        others.sort_by_key(|(id, _)| *id);
        others.into_iter().map(|(_, o)| o).collect()
    }

    /// The user's rate buckets on this node, made by `make` when the user
    /// has none yet; `None` before [`Connection::authenticate`].
    pub fn user_rates(
        &self,
        make: impl FnOnce() -> super::rate::Buckets,
    ) -> Option<Arc<super::rate::Buckets>> {
        let user = self.user.as_ref()?;
        let mut shard = self.registry.users[shard_of(&&**user)]
            .lock()
            .expect("user shard lock");
        let entry = shard.get_mut(user)?;
        Some(entry.rates.get_or_insert_with(|| Arc::new(make())).clone())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(user) = &self.user {
            let mut shard = self.registry.users[shard_of(&&**user)]
                .lock()
                .expect("user shard lock");
            if let Some(entry) = shard.get_mut(user) {
                if entry.conns.remove(&self.id).is_some() && entry.conns.is_empty() {
                    let at = now_ms();
                    entry.last_seen = Some(at);
                    self.registry.emit(PresenceEvent::UserOffline {
                        user: user.clone(),
                        at,
                    });
                }
            }
        }
        self.registry.conns[shard_of(&self.id)]
            .lock()
            .expect("conn shard lock")
            .remove(&self.id);
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
    }
}

/// One session's subscription to one channel: its subscriber in the channel's
/// entry, its part of the subscriptions gauge, and what the session records
/// of it. Dropping it ends the subscriber silently (nothing more is queued,
/// whatever a broadcast in progress holds), leaves the channel (the feed stops
/// after the last one) and decrements the gauge.
pub struct Subscription {
    registry: Arc<Registry>,
    pub subscriber: Arc<Subscriber>,
    /// When it is closed unless refreshed (subscription token expiry).
    pub expires_at: Option<Instant>,
    /// `info` of the subscription token, for publications of this client.
    pub chan_info: Option<Box<RawValue>>,
    /// Subscribed to a private channel (token checked or granted).
    pub private: bool,
    /// Its presence entry, and whether its join was announced.
    member: Option<(Member, bool)>,
    /// Emits the `unsubscribed` event when the subscription drops.
    pub webhook: Option<crate::webhooks::Unsubscribed>,
}

impl Subscription {
    /// Enters the channel's presence as `member` (replacing nothing: one
    /// entry per session and channel) and, with `announce`, emits its join;
    /// dropping the subscription removes the entry and emits the leave.
    pub fn join_presence(&mut self, member: Member, announce: bool) {
        if self.member.is_some() {
            return;
        }
        let r = &self.registry;
        let channel = self.subscriber.channel.clone();
        let mut shard = r.presence[shard_of(&&*channel)]
            .lock()
            .expect("presence shard lock");
        shard
            .entry(channel.clone())
            .or_default()
            .insert(self.subscriber.session, member.clone());
        if announce {
            r.emit(PresenceEvent::Join {
                channel,
                info: member.info.clone(),
            });
        }
        drop(shard);
        self.member = Some((member, announce));
    }

    pub fn is_ended(&self) -> bool {
        self.subscriber.is_ended()
    }

    /// Ends it with an `unsubscribe` push carrying `reason` (the server ends
    /// it: expiry, server-side unsubscribe); dropping it then leaves the
    /// channel.
    pub fn end(&self, reason: Unsubscribe) {
        self.subscriber.end(reason);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.subscriber.retire();
        self.registry.channels.remove(&self.subscriber);
        if let Some((member, announced)) = self.member.take() {
            let r = &self.registry;
            let channel = self.subscriber.channel.clone();
            let mut shard = r.presence[shard_of(&&*channel)]
                .lock()
                .expect("presence shard lock");
            if let Some(members) = shard.get_mut(&channel) {
                members.remove(&self.subscriber.session);
                if members.is_empty() {
                    shard.remove(&channel);
                }
            }
            if announced {
                r.emit(PresenceEvent::Leave {
                    channel,
                    info: member.info,
                });
            }
        }
        metrics::gauge!(m::SUBSCRIPTIONS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::subscriber::tests::{frames, publication};

    /// A feed side without NATS: records the feeds the registry starts.
    #[derive(Default)]
    struct TestFeeds(Mutex<Vec<FeedHandle>>);

    impl Feeds for TestFeeds {
        fn subscribe(&self, feed: FeedHandle) {
            self.0.lock().unwrap().push(feed);
        }
    }

    impl TestFeeds {
        fn started(&self) -> usize {
            self.0.lock().unwrap().len()
        }
        fn with_last<T>(&self, f: impl FnOnce(&FeedHandle) -> T) -> T {
            f(self.0.lock().unwrap().last().expect("a feed"))
        }
    }

    fn registry() -> (Arc<Registry>, Arc<TestFeeds>) {
        let (r, feeds, _events) = registry_with_events();
        (r, feeds)
    }

    fn registry_with_events() -> (Arc<Registry>, Arc<TestFeeds>, mpsc::Receiver<PresenceEvent>) {
        let feeds = Arc::new(TestFeeds::default());
        let (tx, rx) = mpsc::channel(16);
        (Registry::new(feeds.clone(), tx), feeds, rx)
    }

    fn member(client: &str, user: &str) -> Member {
        Member {
            client: client.into(),
            user: user.into(),
            info: format!(r#"{{"client":"{client}","user":"{user}"}}"#).into(),
        }
    }

    fn drain(rx: &mut mpsc::Receiver<PresenceEvent>) -> Vec<PresenceEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    /// A presence entry lives exactly as long as its subscription: its join
    /// and its leave come from the same value, whatever ends it.
    #[test]
    fn presence_entries_join_and_leave_with_their_subscription() {
        let (r, feeds, mut rx) = registry_with_events();
        let (mut a, _) = r.subscribe(1, "c", outbox(), how(true));
        let (mut b, _) = r.subscribe(2, "c", outbox(), how(false));
        let (mut c, _) = r.subscribe(3, "c", outbox(), how(false));
        a.join_presence(member("ca", "alice"), true);
        a.join_presence(member("ca", "alice"), true); // no double join
        b.join_presence(member("cb", "alice"), true);
        c.join_presence(member("cc", "bob"), false); // not announced
        assert_eq!(r.presence("c").len(), 3);
        let mut stats = r.presence_stats("c");
        stats.user_list.as_mut().expect("listed").sort();
        assert_eq!(
            stats,
            LocalStats {
                clients: 3,
                users: 2,
                user_list: Some(vec!["alice".to_string(), "bob".to_string()]),
            }
        );
        // The feed fails everyone: presence stays until the sessions drop
        // the ended subscriptions (the leave comes with the drop).
        feeds.with_last(|f| f.fail_all());
        assert_eq!(r.presence("c").len(), 3);
        drop(a);
        drop(b);
        drop(c);
        assert!(r.presence("c").is_empty());
        assert_eq!(r.presence_stats("c").clients, 0);
        let joins = |ev: &[PresenceEvent], join: bool| {
            ev.iter()
                .filter(|e| {
                    matches!(e, PresenceEvent::Join { .. }) == join
                        && matches!(e, PresenceEvent::Join { .. } | PresenceEvent::Leave { .. })
                })
                .count()
        };
        let ev = drain(&mut rx);
        assert_eq!((joins(&ev, true), joins(&ev, false)), (2, 2), "{ev:?}");
        assert!(matches!(&ev[0], PresenceEvent::Join { info, .. } if info.contains("\"ca\"")));
    }

    /// Join/leave pushes reach only the subscribers that receive them.
    #[test]
    fn join_leave_pushes_go_to_those_asking() {
        let (r, feeds) = registry();
        let (wants, o1) = (outbox(), outbox());
        let (a, _) = r.subscribe(1, "c", wants.clone(), how(true));
        let (b, _) = r.subscribe(2, "c", o1.clone(), how(false));
        assert!(a.subscriber.go_live([], 0, "", None));
        assert!(b.subscriber.go_live([], 0, "", None));
        let n = feeds.with_last(|f| {
            f.deliver_join_leave(SharedPush::fixed(bytes::Bytes::from_static(b"J")))
        });
        assert_eq!(n, 1);
        assert_eq!(frames(&wants), ["J"]);
        assert!(frames(&o1).is_empty());
    }

    /// A user is online here from the first connection to the last: one
    /// event each, whatever the number of connections.
    #[test]
    fn user_online_and_offline_once_per_edge() {
        let (r, _feeds, mut rx) = registry_with_events();
        let (tx, _ctl) = tokio::sync::mpsc::channel(1);
        let mut a = r.open(1, "ca", outbox(), tx.clone());
        let mut b = r.open(2, "cb", outbox(), tx);
        a.authenticate("alice");
        b.authenticate("alice");
        let users = ["alice".to_string(), "bob".to_string()];
        assert_eq!(r.status(&users), [("alice", None)]);
        drop(a);
        assert_eq!(r.status(&users), [("alice", None)]);
        drop(b);
        let ev = drain(&mut rx);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(ev[0], PresenceEvent::UserOnline("alice".into()));
        let PresenceEvent::UserOffline { user, at } = &ev[1] else {
            panic!("{ev:?}")
        };
        assert_eq!(&**user, "alice");
        // Offline here, and when, until the bucket has it.
        assert_eq!(r.status(&users), [("alice", Some(*at))]);
        assert_eq!(r.num_users(), 0);
        r.recorded("alice", *at);
        assert!(r.status(&users).is_empty());
        // Back online: one more online event.
        let (tx, _ctl) = tokio::sync::mpsc::channel(1);
        let mut c = r.open(3, "cc", outbox(), tx);
        c.authenticate("alice");
        assert_eq!(drain(&mut rx), [PresenceEvent::UserOnline("alice".into())]);
    }

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(1 << 20))
    }

    fn how(join_leave: bool) -> SubscribeAs<'static> {
        SubscribeAs {
            user: "u",
            buffer_limit: 1 << 20,
            history: true,
            join_leave,
            delta: false,
        }
    }

    #[test]
    fn first_subscriber_starts_the_feed_and_the_last_stops_it() {
        let (r, feeds) = registry();
        let (a, _) = r.subscribe(1, "c", outbox(), how(false));
        let (b, _) = r.subscribe(2, "c", outbox(), how(false));
        assert_eq!(feeds.started(), 1);
        assert_eq!(r.channel_counts(), (1, 2));
        drop(a);
        assert!(!feeds.with_last(|f| f.stop.is_cancelled()));
        drop(b);
        assert!(feeds.with_last(|f| f.stop.is_cancelled()), "interest ends");
        assert_eq!(r.channel_counts(), (0, 0));
    }

    #[test]
    fn publications_reach_live_subscribers_in_order() {
        let (r, feeds) = registry();
        let o = outbox();
        let (s, mut status) = r.subscribe(1, "c", o.clone(), how(false));
        feeds.with_last(|f| f.ready());
        assert_eq!(*status.borrow_and_update(), FeedStatus::Ready);
        feeds.with_last(|f| f.deliver(&publication(3, "e")));
        assert!(
            s.subscriber
                .go_live([bytes::Bytes::from_static(b"REPLY")], 2, "e", None)
        );
        feeds.with_last(|f| f.deliver(&publication(4, "e")));
        assert_eq!(frames(&o), ["REPLY", "P3e", "P4e"]);
    }

    /// Issue 19 a, through the registry: `fail_all` while the subscribe is in
    /// flight; going live then tells the client (reply, then 2500) and
    /// nothing is delivered afterwards.
    #[test]
    fn failed_while_subscribing_is_told_and_gets_nothing() {
        let (r, feeds) = registry();
        let o = outbox();
        let (s, _) = r.subscribe(1, "c", o.clone(), how(false));
        feeds.with_last(|f| f.fail_all());
        assert!(
            !s.subscriber
                .go_live([bytes::Bytes::from_static(b"REPLY")], 5, "e", None)
        );
        assert!(s.is_ended());
        feeds.with_last(|f| f.deliver(&publication(6, "e")));
        let f = frames(&o);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[1].contains("\"code\":2500"), "{f:?}");
    }

    /// Issue 19 b: a dropped subscription (client unsubscribe) gets nothing
    /// more, even from a delivery that copied the list before the drop.
    #[test]
    fn unsubscribed_then_delivered_queues_nothing() {
        let (r, _feeds) = registry();
        let o = outbox();
        let (s, _) = r.subscribe(1, "c", o.clone(), how(false));
        assert!(s.subscriber.go_live([], 5, "e", None));
        let copied = s.subscriber.clone();
        drop(s);
        assert!(!copied.deliver(&publication(6, "e")));
        assert_eq!(o.queued_bytes(), 0);
    }

    /// Issue 19 d: a feed whose stream ended takes the channel's entry with
    /// it: every subscriber ends with 2500 and the next one starts a new feed.
    #[test]
    fn an_ended_feed_leaves_no_dead_entry() {
        let (r, feeds) = registry();
        let o = outbox();
        let (a, _) = r.subscribe(1, "c", o.clone(), how(false));
        assert!(a.subscriber.go_live([], 0, "", None));
        let (b, mut waiting) = r.subscribe(2, "c", outbox(), how(false));
        feeds.with_last(|f| f.ended());
        assert!(a.is_ended() && b.is_ended());
        assert_eq!(*waiting.borrow_and_update(), FeedStatus::Failed);
        assert!(frames(&o)[0].contains("\"code\":2500"));
        let (c, status) = r.subscribe(3, "c", outbox(), how(false));
        assert_eq!(feeds.started(), 2, "a new feed for the next subscriber");
        assert_eq!(*status.borrow(), FeedStatus::Starting);
        // The old feed's late calls touch nothing of the new entry.
        feeds.0.lock().unwrap()[0].fail_all();
        assert!(!c.is_ended());
        // Dropping the old subscriptions does not remove the new one.
        drop((a, b));
        assert_eq!(r.channel_counts(), (1, 1));
    }

    #[test]
    fn connections_are_found_by_user_and_client() {
        let (r, _feeds) = registry();
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let mut a = r.open(1, "ca", outbox(), tx.clone());
        let mut b = r.open(2, "cb", outbox(), tx.clone());
        let _anonymous = r.open(3, "cc", outbox(), tx);
        a.authenticate("alice");
        b.authenticate("alice");
        assert_eq!(r.num_connections(), 3);
        assert_eq!(r.num_users(), 1);
        assert_eq!(r.targets("alice", None, &[]).len(), 2);
        assert_eq!(r.targets("alice", Some("cb"), &[]).len(), 1);
        assert_eq!(r.targets("alice", None, &["ca".into()]).len(), 1);
        drop(a);
        drop(b);
        assert!(r.targets("alice", None, &[]).is_empty());
        assert_eq!((r.num_connections(), r.num_users()), (1, 0));
    }
}
