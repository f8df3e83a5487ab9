//! Channel feeds over NATS ([`NatsFeeds`], the registry's [`Feeds`]): the
//! edge's one NATS subscription to a channel subject, alive while the channel
//! has local subscribers (the registry starts it and tells it to stop).
//!
//! It wraps each publication into a push, encoded at most once per encoding
//! its subscribers speak (JSON, Protobuf; on first use), and hands it to the
//! registry with its offset and epoch. For history channels it keeps the
//! channel's last offset and epoch: a duplicate is dropped, and a gap (offset
//! n+2 right after n, e.g. a core NATS message lost in a reconnect or a slow
//! subscription) is filled from sync, in the same epoch, before anything
//! later is delivered; if it cannot be filled, every local subscription ends
//! with "insufficient state" so the SDKs resubscribe and recover (I4). A new
//! epoch (history reset) is passed on as such: each subscriber's position
//! belongs to an epoch, and a subscriber of the old one ends with
//! "insufficient state". If the NATS subscription ends, the feed tells the
//! registry it is gone.
//!
//! The channel subject also carries presence traffic (see `presence`): a
//! join or leave (header `JOIN_LEAVE_HEADER`) becomes a join/leave push for
//! the subscribers receiving them, and the feed remembers who joined through
//! which edge (at most [`TRACKED_MEMBERS`] per feed; past it a join is
//! pushed but not remembered), so when an edge dies its members' leaves are
//! pushed here. On a `status:<user>` channel a status hint, or an edge's
//! death, makes the feed read the user's status and push it as a
//! publication without offset; hints are handled one at a time, in order, so
//! the last push reflects a read made after the last change.
//!
//! A channel message (header `MESSAGE_HEADER`: typing, live receipts,
//! member changes) becomes an async `message` push for every subscriber
//! but those of the user the header names.
//!
//! For delta subscriptions the feed chains its publications ([`Chain`]):
//! each carries a key (its offset, or a sequence number without history)
//! and, when the one before it in the same epoch went through this feed,
//! that one's key and JSON object as its delta base. The chain holds one
//! publication per feed (the last), so its memory is bounded by the number
//! of channels with local subscribers times the largest publication.
//!
//! Knows nothing of subscribers or sessions.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use serde::Deserialize;

use super::presence::{self, Presence};
use super::registry::{FeedHandle, Feeds};
use super::subscriber::Publication;
use crate::bus::subjects;
use crate::metrics::GaugeHold;
use crate::protocol::{self, SharedPush};
use crate::sync::client::SyncClient;
use crate::telemetry;

/// What every feed needs; cloned into each.
#[derive(Clone)]
pub struct FeedDeps {
    pub nats: async_nats::Client,
    pub sync: SyncClient,
    /// Largest gap a feed fills from sync; past it, subscribers recover themselves.
    pub gap_fill_limit: usize,
    pub presence: Arc<Presence>,
}

/// The last publication a feed delivered: the base of the next one's delta.
#[derive(Default)]
struct Chain {
    /// Sequence numbers of channels without history.
    seq: u64,
    /// The last publication's key and JSON object.
    last: Option<(u64, bytes::Bytes)>,
}

impl Chain {
    /// The publication that follows in the chain. `offset`: its offset in a
    /// history channel (`None` there breaks the chain); `history`: whether
    /// the channel keeps history.
    fn link(
        &mut self,
        channel: &Arc<str>,
        history: bool,
        offset: Option<u64>,
        object: bytes::Bytes,
    ) -> (Option<u64>, Option<u64>, Arc<SharedPush>) {
        let key = if history {
            offset
        } else {
            self.seq += 1;
            Some(self.seq)
        };
        let base = match (&self.last, key) {
            (Some((k, b)), Some(key)) if k + 1 == key => Some((*k, b.clone())),
            _ => None,
        };
        self.last = key.map(|k| (k, object.clone()));
        let (base_key, base_object) = base.unzip();
        let frame = SharedPush::publication_after(channel.clone(), object, base_object);
        (key, base_key, frame)
    }

    /// A new epoch: the next publication has no base.
    fn reset(&mut self) {
        self.last = None;
    }
}

/// Members a feed remembers (for leaves when their edge dies).
pub const TRACKED_MEMBERS: usize = 100_000;

#[derive(Deserialize)]
struct ClientOnly {
    #[serde(default)]
    client: String,
}

/// Who joined a channel through which edge, as its feed saw it.
#[derive(Default)]
struct Joined {
    by_edge: HashMap<String, HashMap<String, bytes::Bytes>>,
    count: usize,
}

impl Joined {
    fn join(&mut self, edge: &str, client: String, info: bytes::Bytes) {
        if self.count >= TRACKED_MEMBERS {
            return;
        }
        if self
            .by_edge
            .entry(edge.to_string())
            .or_default()
            .insert(client, info)
            .is_none()
        {
            self.count += 1;
        }
    }

    fn leave(&mut self, edge: &str, client: &str) {
        if let Some(m) = self.by_edge.get_mut(edge)
            && m.remove(client).is_some()
        {
            self.count -= 1;
            if m.is_empty() {
                self.by_edge.remove(edge);
            }
        }
    }

    /// Takes the members of every edge `alive` denies.
    fn take_dead(&mut self, alive: impl Fn(&str) -> bool) -> Vec<bytes::Bytes> {
        let dead: Vec<String> = self.by_edge.keys().filter(|e| !alive(e)).cloned().collect();
        let mut out = Vec::new();
        for e in dead {
            if let Some(m) = self.by_edge.remove(&e) {
                self.count -= m.len();
                out.extend(m.into_values());
            }
        }
        out
    }
}

/// Decodes a join/leave message of a channel subject as a feed does, and a
/// publication of a gap-filling page; for [`crate::fuzzing`].
pub fn check_feed_message(channel: &str, payload: &[u8]) {
    let _ = serde_json::from_slice::<ClientOnly>(payload);
    if let Some(push) = join_leave_push(channel, true, payload) {
        let _ = push.frame(protocol::Encoding::Json);
        let _ = push.frame(protocol::Encoding::Protobuf);
    }
    let _ = serde_json::from_slice::<OffsetOnly>(payload);
}

/// `{"push":{"channel":…,"join"|"leave":{"info":<info>}}}`, or its
/// Protobuf counterpart; `None` if `info` is not JSON.
fn join_leave_push(channel: &str, join: bool, info: &[u8]) -> Option<Arc<SharedPush>> {
    let info =
        serde_json::value::RawValue::from_string(String::from_utf8(info.to_vec()).ok()?).ok()?;
    let body = protocol::JoinLeave { info };
    let (join, leave) = if join {
        (Some(body), None)
    } else {
        (None, Some(body))
    };
    Some(SharedPush::push(protocol::Reply::push(protocol::Push {
        channel: channel.to_string(),
        join,
        leave,
        ..protocol::Push::default()
    })))
}

#[derive(Deserialize)]
struct OffsetOnly {
    #[serde(default)]
    offset: u64,
}

fn header_u64(msg: &async_nats::Message, name: &str) -> Option<u64> {
    msg.headers.as_ref()?.get(name)?.as_str().parse().ok()
}

fn header_string(msg: &async_nats::Message, name: &str) -> Option<String> {
    Some(msg.headers.as_ref()?.get(name)?.as_str().to_string())
}

/// The registry's feeds, each a task with its own NATS subscription.
pub struct NatsFeeds {
    pub deps: FeedDeps,
}

impl Feeds for NatsFeeds {
    fn subscribe(&self, feed: FeedHandle) {
        tokio::spawn(run(self.deps.clone(), feed));
    }
}

async fn run(deps: FeedDeps, feed: FeedHandle) {
    let channel = feed.channel().clone();
    let mut sub = match deps
        .nats
        .subscribe(subjects::channel_subject(&channel))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "channel subscribe failed");
            feed.ended();
            return;
        }
    };
    let _held = GaugeHold::new(metrics::gauge!(crate::metrics::NATS_SUBSCRIPTIONS));
    // `flush` only empties the client's buffer. The server handles a
    // connection's messages in order, so once it has answered a request sent
    // after our SUB (with "no responders"), the subscription is active: any
    // publication committed after a subscriber then reads its position from
    // sync reaches this feed.
    match deps
        .nats
        .request(subjects::INTEREST_PROBE, bytes::Bytes::new())
        .await
    {
        Err(e) if !matches!(e.kind(), async_nats::RequestErrorKind::NoResponders) => {
            tracing::warn!(error = %e, "channel subscribe not confirmed");
            feed.ended();
            return;
        }
        _ => {}
    }
    feed.ready();

    let mut last: Option<u64> = None;
    let mut epoch: Option<Arc<str>> = None;
    let mut deaths = deps.presence.deaths();
    let watched = presence::status_user(&channel).map(str::to_string);
    let mut joined = Joined::default();
    let mut chain = Chain::default();
    loop {
        let msg = tokio::select! {
            _ = feed.stopped() => break,
            m = sub.next() => m,
            d = deaths.recv() => {
                if !matches!(d, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    for info in joined.take_dead(|e| deps.presence.is_alive(e)) {
                        if let Some(f) = join_leave_push(&channel, false, &info) {
                            feed.deliver_join_leave(f);
                        }
                    }
                    if let Some(user) = &watched {
                        push_status(&feed, &deps, user, &mut chain).await;
                    }
                }
                continue;
            }
        };
        let Some(msg) = msg else {
            // The NATS client is gone: nothing more will arrive.
            feed.ended();
            break;
        };
        if let Some(kind) = header_string(&msg, subjects::JOIN_LEAVE_HEADER) {
            let join = kind == "join";
            let edge = header_string(&msg, subjects::EDGE_HEADER).unwrap_or_default();
            if let Ok(c) = serde_json::from_slice::<ClientOnly>(&msg.payload) {
                if join {
                    joined.join(&edge, c.client, msg.payload.clone());
                } else {
                    joined.leave(&edge, &c.client);
                }
            }
            if let Some(f) = join_leave_push(&channel, join, &msg.payload) {
                feed.deliver_join_leave(f);
            }
            continue;
        }
        if header_string(&msg, subjects::MESSAGE_HEADER).is_some() {
            type Incoming = super::im::ChannelMessage<String, Box<serde_json::value::RawValue>>;
            match serde_json::from_slice::<Incoming>(&msg.payload) {
                Ok(m) => {
                    let data = bytes::Bytes::copy_from_slice(m.data.get().as_bytes());
                    feed.deliver_message(SharedPush::message(data), &m.except);
                }
                Err(e) => tracing::debug!(error = %e, "invalid channel message"),
            }
            continue;
        }
        if header_string(&msg, subjects::STATUS_HINT_HEADER).is_some() {
            if let Some(user) = &watched {
                push_status(&feed, &deps, user, &mut chain).await;
            }
            continue;
        }
        let offset = if feed.history() {
            header_u64(&msg, subjects::OFFSET_HEADER)
        } else {
            None
        };
        let committed_us = header_u64(&msg, subjects::COMMITTED_HEADER);
        if let Some(c) = committed_us {
            crate::metrics::edge_io()
                .feed_lag
                .record(crate::metrics::seconds_since(c));
        }
        let Some(offset) = offset else {
            deliver(&feed, &mut chain, None, None, committed_us, &msg);
            continue;
        };
        let msg_epoch = header_string(&msg, subjects::EPOCH_HEADER);
        if msg_epoch.as_deref() != epoch.as_deref() {
            // First message, or the channel's history was reset: subscribers
            // compare the epoch with their own.
            epoch = msg_epoch.map(Arc::from);
            last = None;
            chain.reset();
        }
        if let Some(l) = last {
            if offset <= l {
                continue;
            }
            if offset > l + 1
                && !fill_gap(&feed, &deps, &mut chain, epoch.as_ref(), l, offset).await
            {
                metrics::counter!(crate::metrics::GAPS_FILLED_TOTAL, "result" => "failed")
                    .increment(1);
                feed.fail_all();
            }
        }
        last = Some(offset);
        deliver(
            &feed,
            &mut chain,
            Some(offset),
            epoch.clone(),
            committed_us,
            &msg,
        );
    }
    let _ = sub.unsubscribe().await;
}

/// Reads `user`'s status and pushes it to the channel's subscribers.
async fn push_status(feed: &FeedHandle, deps: &FeedDeps, user: &str, chain: &mut Chain) {
    if let Some(publication) = deps.presence.status_publication(user).await {
        let (key, base, frame) = chain.link(feed.channel(), feed.history(), None, publication);
        feed.deliver(&Publication {
            offset: None,
            epoch: None,
            frame,
            committed_us: None,
            key,
            base,
        });
    }
}

/// Encodes one publication and queues it to every local subscriber. When
/// traces are exported and the publication carries trace context, this
/// happens in an `edge_delivery` span, a child of the writer's (or the
/// publisher's, without history) span; the socket writes follow in each
/// connection's writer task.
fn deliver(
    feed: &FeedHandle,
    chain: &mut Chain,
    offset: Option<u64>,
    epoch: Option<Arc<str>>,
    committed_us: Option<u64>,
    msg: &async_nats::Message,
) {
    let span = telemetry::nats_child(msg.headers.as_ref(), || {
        tracing::info_span!(
            parent: None,
            "edge_delivery",
            otel.kind = "consumer",
            offset,
            subscribers = tracing::field::Empty
        )
    });
    let _entered = span.enter();
    // Encoded lazily, once per encoding its subscribers speak.
    let (key, base, frame) =
        chain.link(feed.channel(), feed.history(), offset, msg.payload.clone());
    let subscribers = feed.deliver(&Publication {
        offset,
        epoch,
        frame,
        committed_us,
        key,
        base,
    });
    span.record("subscribers", subscribers);
}

/// Fetches offsets `after+1 .. before-1` of `epoch` from sync and delivers
/// them in order. False if they could not all be fetched (or the channel's
/// epoch is no longer `epoch`).
async fn fill_gap(
    feed: &FeedHandle,
    deps: &FeedDeps,
    chain: &mut Chain,
    epoch: Option<&Arc<str>>,
    after: u64,
    before: u64,
) -> bool {
    let channel: &str = feed.channel();
    let missing = (before - after - 1) as usize;
    if missing > deps.gap_fill_limit {
        return false;
    }
    let page = match deps
        .sync
        .read(channel, after, Some(before), missing, false)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "gap fill read failed");
            return false;
        }
    };
    if page.publications.len() != missing || epoch.is_some_and(|e| **e != *page.epoch) {
        return false;
    }
    let mut expected = after + 1;
    let mut frames = Vec::with_capacity(missing);
    for p in &page.publications {
        match serde_json::from_str::<OffsetOnly>(p.get()) {
            Ok(o) if o.offset == expected => {
                frames.push((o.offset, bytes::Bytes::copy_from_slice(p.get().as_bytes())));
                expected += 1;
            }
            _ => return false,
        }
    }
    for (offset, object) in frames {
        let (key, base, frame) = chain.link(feed.channel(), true, Some(offset), object);
        feed.deliver(&Publication {
            offset: Some(offset),
            epoch: epoch.cloned(),
            frame,
            committed_us: None,
            key,
            base,
        });
    }
    metrics::counter!(crate::metrics::GAPS_FILLED_TOTAL, "result" => "filled").increment(1);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(client: &str) -> bytes::Bytes {
        bytes::Bytes::from(format!(r#"{{"client":"{client}","user":"u"}}"#))
    }

    /// The chain gives each publication its key and, when the one before
    /// it (offset - 1, or the previous sequence number) went through the
    /// feed, that one as its delta base; a new epoch or an offset gap
    /// breaks it, a publication without offset in a history channel too.
    #[test]
    fn the_chain_links_each_publication_to_the_one_before() {
        let ch: Arc<str> = "c".into();
        let obj = |n: u64| crate::protocol::encode_publication(b"{}", None, n, "e");
        let mut chain = Chain::default();
        let link = |chain: &mut Chain, offset: Option<u64>, history: bool| {
            let (key, base, frame) = chain.link(&ch, history, offset, obj(offset.unwrap_or(0)));
            assert_eq!(frame.has_base(), base.is_some());
            (key, base)
        };
        assert_eq!(link(&mut chain, Some(1), true), (Some(1), None));
        assert_eq!(link(&mut chain, Some(2), true), (Some(2), Some(1)));
        assert_eq!(link(&mut chain, Some(4), true), (Some(4), None), "a gap");
        chain.reset();
        assert_eq!(
            link(&mut chain, Some(5), true),
            (Some(5), None),
            "a new epoch"
        );
        assert_eq!(link(&mut chain, None, true), (None, None));
        assert_eq!(link(&mut chain, Some(6), true), (Some(6), None));
        let mut chain = Chain::default();
        assert_eq!(link(&mut chain, None, false), (Some(1), None));
        assert_eq!(link(&mut chain, None, false), (Some(2), Some(1)));
    }

    /// What a feed remembers of joins: a leave forgets, a dead edge's
    /// members come out once, the live edges' stay.
    #[test]
    fn joins_are_remembered_by_edge_until_their_leave_or_death() {
        let mut j = Joined::default();
        j.join("a", "c1".into(), info("c1"));
        j.join("a", "c2".into(), info("c2"));
        j.join("a", "c2".into(), info("c2"));
        j.join("b", "c3".into(), info("c3"));
        assert_eq!(j.count, 3);
        j.leave("a", "c1");
        j.leave("b", "nobody");
        assert_eq!(j.count, 2);
        let dead = j.take_dead(|e| e == "b");
        assert_eq!(dead, [info("c2")]);
        assert!(j.take_dead(|e| e == "b").is_empty(), "once");
        assert_eq!(j.count, 1);
        let push = join_leave_push("ch", false, &info("c3")).expect("valid info");
        let v: serde_json::Value =
            serde_json::from_slice(push.frame(protocol::Encoding::Json).unwrap()).unwrap();
        let pb = push.frame(protocol::Encoding::Protobuf).unwrap().clone();
        let pb = <protocol::protobuf::pb::Reply as prost::Message>::decode_length_delimited(pb)
            .unwrap()
            .push
            .unwrap();
        assert_eq!(pb.leave.unwrap().info.unwrap().client, "c3");
        assert_eq!(v["push"]["channel"], "ch");
        assert_eq!(v["push"]["leave"]["info"]["client"], "c3");
        assert!(join_leave_push("ch", true, b"not json").is_none());
    }
}
