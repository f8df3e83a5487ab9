//! One session's subscription to one channel as the fan-out sees it: its
//! position in the channel and the ordering rule that keeps delivery in offset
//! order with no gap, no duplicate and no crossing of an epoch (I4).
//!
//! A subscriber starts buffering (bounded by the outbox bound) while its
//! subscribe is answered, goes live at the position the reply names, and ends
//! for good: by a gap it cannot fill or a new epoch (the client is told with
//! `unsubscribe` 2500 and recovers), by the server (expiry, server-side
//! unsubscribe), or silently when its session drops it (client unsubscribe,
//! disconnect). Once ended it queues nothing more, whatever a broadcast that
//! copied it earlier hands it.
//!
//! A subscription that negotiated delta compression (`delta: "fossil"`)
//! remembers one key: that of the last publication it received (its offset,
//! or its feed's sequence number in channels without history). A
//! publication whose delta base is that key goes as a delta, any other in
//! full (the first one, after a gap in what it received, after a
//! subscribe without recovered publications). That key is all the state a
//! delta subscription keeps; the base data lives once per channel in the
//! feed and the patch once per publication in its [`SharedPush`].
//!
//! Knows nothing of the registry, feeds, NATS or the session: only its outbox
//! (and the encoding it speaks) and the protocol's push encoding.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::outbox::Outbox;
use crate::protocol::{Disconnect, Form, Push, Reply, SharedPush, Unsubscribe};

/// A session's id on this node.
pub type SessionId = u64;

/// One publication of a channel (or another push of its feed), encoded once
/// per encoding and shared by every subscriber.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Its offset (history channels); `None` for channels without history.
    pub offset: Option<u64>,
    /// The channel's epoch when it was stored; `None` when not known.
    pub epoch: Option<Arc<str>>,
    /// The push, built in each encoding on first use.
    pub frame: Arc<SharedPush>,
    /// When it became deliverable (unix microseconds), for the delivery latency.
    pub committed_us: Option<u64>,
    /// Its place in its feed's chain of publications (the offset in history
    /// channels, a sequence number otherwise); `None` outside the chain.
    pub key: Option<u64>,
    /// The key of the publication its frame's delta is made against; `None`
    /// when it has no delta base.
    pub base: Option<u64>,
}

enum State {
    /// The subscribe reply is not out yet: keep deliveries in arrival order.
    Buffering {
        pending: Vec<Publication>,
        bytes: usize,
    },
    /// Delivering. `last`: the last offset the client has (history channels);
    /// `epoch`: the epoch that offset belongs to (`None`: the channel had no
    /// history at subscribe time, the first epoch seen is taken).
    /// `holds`: the key of the last publication a delta subscription
    /// received (its delta base), if any.
    Live {
        last: u64,
        epoch: Option<Arc<str>>,
        holds: Option<u64>,
    },
    /// Nothing more is queued. `notice`: ended while buffering, so the client
    /// is told after the subscribe reply (see [`Subscriber::go_live`]).
    Ended { notice: Option<Unsubscribe> },
}

/// What the position rule says of one publication.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Deliver,
    /// Seen already.
    Skip,
    /// A gap or a new epoch: the client must resubscribe and recover.
    Lost,
}

/// The position rule (I4): offsets follow `last` one by one within one epoch.
fn step(last: &mut u64, epoch: &mut Option<Arc<str>>, p: &Publication) -> Step {
    let Some(offset) = p.offset else {
        return Step::Deliver;
    };
    match (&*epoch, &p.epoch) {
        (Some(mine), Some(theirs)) if mine != theirs => return Step::Lost,
        (None, Some(theirs)) => *epoch = Some(theirs.clone()),
        _ => {}
    }
    if offset <= *last {
        Step::Skip
    } else if offset != *last + 1 {
        Step::Lost
    } else {
        *last = offset;
        Step::Deliver
    }
}

pub struct Subscriber {
    pub session: SessionId,
    pub channel: Arc<str>,
    outbox: Arc<Outbox>,
    /// Bound of the subscribe-time buffer (the outbox bound).
    buffer_limit: usize,
    /// Receives join and leave pushes (asked, or forced by the namespace).
    pub join_leave: bool,
    /// Negotiated delta compression: publications go as deltas.
    pub delta: bool,
    /// The subscribing user: a channel message from this user skips it
    /// (typing is for the other members).
    pub user: Arc<str>,
    state: Mutex<State>,
}

impl Subscriber {
    pub fn new(
        session: SessionId,
        channel: Arc<str>,
        outbox: Arc<Outbox>,
        buffer_limit: usize,
        join_leave: bool,
        delta: bool,
        user: Arc<str>,
    ) -> Arc<Self> {
        Arc::new(Self {
            session,
            channel,
            outbox,
            buffer_limit,
            join_leave,
            delta,
            user,
            state: Mutex::new(State::Buffering {
                pending: Vec::new(),
                bytes: 0,
            }),
        })
    }

    pub fn is_ended(&self) -> bool {
        matches!(*self.state.lock().expect("sub lock"), State::Ended { .. })
    }

    fn unsubscribe_push(&self, reason: Unsubscribe) -> Bytes {
        // An unsubscribe push has nothing Herald did not write: it encodes.
        self.outbox
            .encoding()
            .encode_reply(&Reply::push(Push::unsubscribe(&self.channel, reason)))
            .unwrap_or_default()
    }

    /// `p` in this subscriber's encoding; `None` when it cannot be encoded
    /// in it (skipped, see [`SharedPush::frame`]).
    fn frame<'a>(&self, p: &'a Publication) -> Option<&'a Bytes> {
        p.frame.frame(self.outbox.encoding())
    }

    /// `p` as this subscriber receives it: for a delta subscription, a
    /// publication goes as a delta when its base is the one `holds` names,
    /// full otherwise, and `holds` moves to it.
    fn frame_for<'a>(&self, p: &'a Publication, holds: &mut Option<u64>) -> Option<&'a Bytes> {
        if !self.delta || !p.frame.is_publication() {
            return self.frame(p);
        }
        let form = if holds.is_some() && p.base == *holds {
            Form::Delta
        } else {
            Form::Full
        };
        let frame = p.frame.frame_as(self.outbox.encoding(), form);
        *holds = frame.and(p.key);
        frame
    }

    /// Queues `head` (the subscribe reply, or a server-side subscribe push and
    /// its recovered publications; nothing when the reply went out already,
    /// inside a connect reply), then what was buffered after `position` in
    /// `epoch`, atomically with respect to deliveries, and goes live.
    ///
    /// Returns false if the subscription ended instead: it had ended while
    /// buffering (its feed failed) or a buffered publication does not follow
    /// the position. Either way the client, after `head`, gets `unsubscribe`
    /// 2500 and recovers; it never stays subscribed without a feed.
    /// `holds`: the key of the last publication `head` gave a delta
    /// subscription (the last recovered one), if any.
    pub fn go_live(
        &self,
        head: impl IntoIterator<Item = Bytes>,
        position: u64,
        epoch: &str,
        mut holds: Option<u64>,
    ) -> bool {
        let mut state = self.state.lock().expect("sub lock");
        let pending = match &mut *state {
            State::Buffering { pending, .. } => std::mem::take(pending),
            State::Live { .. } => return true,
            State::Ended { notice } => {
                let notice = notice.take();
                for frame in head {
                    let _ = self.outbox.push(frame);
                }
                if let Some(reason) = notice {
                    let _ = self.outbox.push(self.unsubscribe_push(reason));
                }
                return false;
            }
        };
        *state = State::Ended { notice: None };
        for frame in head {
            if self.outbox.push(frame).is_err() {
                return false;
            }
        }
        let mut last = position;
        let mut epoch = (!epoch.is_empty()).then(|| Arc::from(epoch));
        for p in pending {
            match step(&mut last, &mut epoch, &p) {
                Step::Skip => continue,
                Step::Lost => {
                    let _ = self
                        .outbox
                        .push(self.unsubscribe_push(Unsubscribe::INSUFFICIENT_STATE));
                    return false;
                }
                Step::Deliver => {}
            }
            let Some(frame) = self.frame_for(&p, &mut holds) else {
                continue;
            };
            if self
                .outbox
                .push_stamped(frame.clone(), p.committed_us)
                .is_err()
            {
                return false;
            }
        }
        *state = State::Live { last, epoch, holds };
        true
    }

    /// Delivers one publication. Returns false when the subscription has
    /// ended (now or before) and should leave its channel: a gap or a new
    /// epoch ends it with "insufficient state" (the client is told); a
    /// subscribe-time buffer past its bound closes the connection (3008).
    pub fn deliver(&self, p: &Publication) -> bool {
        let mut state = self.state.lock().expect("sub lock");
        match &mut *state {
            State::Ended { .. } => false,
            State::Buffering { pending, bytes } => {
                *bytes += self.frame(p).map_or(0, Bytes::len);
                if *bytes > self.buffer_limit {
                    *state = State::Ended { notice: None };
                    drop(state);
                    metrics::counter!(crate::metrics::SLOW_DISCONNECTS_TOTAL).increment(1);
                    self.outbox.close(Disconnect::SLOW);
                    return false;
                }
                pending.push(p.clone());
                true
            }
            State::Live { last, epoch, holds } => match step(last, epoch, p) {
                Step::Skip => true,
                Step::Lost => {
                    *state = State::Ended { notice: None };
                    let _ = self
                        .outbox
                        .push(self.unsubscribe_push(Unsubscribe::INSUFFICIENT_STATE));
                    false
                }
                // A full outbox closes the connection itself (3008); a closed
                // one drops the frame. Either way the subscription has ended.
                Step::Deliver => {
                    let Some(frame) = self.frame_for(p, holds) else {
                        return true;
                    };
                    let queued = self.outbox.push_stamped(frame.clone(), p.committed_us);
                    if queued.is_err() {
                        *state = State::Ended { notice: None };
                    }
                    queued.is_ok()
                }
            },
        }
    }

    /// Ends this subscription with an `unsubscribe` push; the SDK resubscribes
    /// (codes >= 2500) and recovers from its position. While buffering, the
    /// push waits for `go_live`, after the subscribe reply.
    pub fn end(&self, reason: Unsubscribe) {
        let mut state = self.state.lock().expect("sub lock");
        if matches!(*state, State::Buffering { .. }) {
            *state = State::Ended {
                notice: Some(reason),
            };
            return;
        }
        *state = State::Ended { notice: None };
        let _ = self.outbox.push(self.unsubscribe_push(reason));
    }

    /// Ends this subscription without a word (its session dropped it).
    pub fn retire(&self) {
        *self.state.lock().expect("sub lock") = State::Ended { notice: None };
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Every frame queued in `o`, one string each.
    pub(in crate::edge) fn frames(o: &Outbox) -> Vec<String> {
        if o.queued_bytes() == 0 {
            return Vec::new();
        }
        let b = futures::executor::block_on(o.next_batch());
        String::from_utf8(b.frame.to_vec())
            .expect("utf-8")
            .split('\n')
            .map(str::to_string)
            .collect()
    }

    pub(in crate::edge) fn publication(offset: u64, epoch: &str) -> Publication {
        Publication {
            offset: Some(offset),
            epoch: Some(epoch.into()),
            frame: SharedPush::fixed(Bytes::from(format!("P{offset}{epoch}"))),
            committed_us: None,
            key: None,
            base: None,
        }
    }

    fn subscriber() -> (Arc<Subscriber>, Arc<Outbox>) {
        let o = Arc::new(Outbox::new(1 << 20));
        (
            Subscriber::new(1, "c".into(), o.clone(), 1 << 20, false, false, "u".into()),
            o,
        )
    }

    #[test]
    fn buffered_publications_follow_the_reply_from_the_position() {
        let (s, o) = subscriber();
        for offset in [4, 5, 6] {
            assert!(s.deliver(&publication(offset, "e")));
        }
        assert!(s.go_live([Bytes::from_static(b"REPLY")], 4, "e", None));
        assert!(s.deliver(&publication(6, "e")), "a duplicate is skipped");
        assert!(s.deliver(&publication(7, "e")));
        assert_eq!(frames(&o), ["REPLY", "P5e", "P6e", "P7e"]);
    }

    #[test]
    fn a_gap_ends_with_insufficient_state() {
        let (s, o) = subscriber();
        assert!(s.go_live([], 4, "e", None));
        assert!(!s.deliver(&publication(6, "e")));
        assert!(s.is_ended());
        assert!(!s.deliver(&publication(5, "e")));
        let f = frames(&o);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("\"code\":2500"), "{f:?}");
    }

    /// Issue 19 a: a subscription ended while its subscribe was in flight
    /// (the feed's `fail_all`) stays ended; the client gets the reply, then
    /// `unsubscribe` 2500, and nothing after.
    #[test]
    fn ended_while_subscribing_stays_ended_and_the_client_is_told() {
        let (s, o) = subscriber();
        s.end(Unsubscribe::INSUFFICIENT_STATE);
        assert!(!s.go_live([Bytes::from_static(b"REPLY")], 5, "e", None));
        assert!(s.is_ended(), "an ended subscription stays ended");
        assert!(!s.deliver(&publication(6, "e")));
        let f = frames(&o);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0], "REPLY", "{f:?}");
        assert!(f[1].contains("\"code\":2500"), "{f:?}");
    }

    /// Issue 19 c: live at 100 in epoch A, offset 1 of a new epoch B arrives
    /// (history reset): ended with 2500, not dropped as a duplicate.
    #[test]
    fn a_new_epoch_ends_with_insufficient_state() {
        let (s, o) = subscriber();
        assert!(s.go_live([], 100, "A", None));
        assert!(!s.deliver(&publication(1, "B")));
        let f = frames(&o);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("\"code\":2500"), "{f:?}");
    }

    #[test]
    fn a_new_epoch_in_the_buffer_ends_at_go_live() {
        let (s, o) = subscriber();
        assert!(s.deliver(&publication(1, "B")));
        assert!(!s.go_live([Bytes::from_static(b"REPLY")], 100, "A", None));
        let f = frames(&o);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[1].contains("\"code\":2500"), "{f:?}");
    }

    #[test]
    fn an_empty_channel_takes_the_first_epoch() {
        let (s, o) = subscriber();
        assert!(s.go_live([], 0, "", None));
        assert!(s.deliver(&publication(1, "A")));
        assert!(!s.deliver(&publication(2, "B")));
        assert_eq!(frames(&o).len(), 2);
    }

    /// A delta subscription gets its first publication full, then deltas
    /// against the one it received before; one whose base it does not hold
    /// goes full. After recovered publications, the first live one is a
    /// delta against the last recovered.
    #[test]
    fn a_delta_subscription_gets_deltas_against_what_it_received() {
        use crate::protocol::{encode_publication, fossil};
        let data = |n: u64| format!(r#"{{"state":"{}","n":{n}}}"#, "x".repeat(200));
        let object = |n: u64| encode_publication(data(n).as_bytes(), None, n, "e");
        let p = |n: u64, base: Option<u64>| Publication {
            offset: Some(n),
            epoch: Some("e".into()),
            frame: SharedPush::publication_after("c".into(), object(n), base.map(object)),
            committed_us: None,
            key: Some(n),
            base,
        };
        let o = Arc::new(Outbox::new(1 << 20));
        let s = Subscriber::new(1, "c".into(), o.clone(), 1 << 20, false, true, "u".into());
        assert!(s.go_live([], 4, "e", None));
        assert!(s.deliver(&p(5, Some(4))), "full: it holds nothing yet");
        assert!(s.deliver(&p(6, Some(5))));
        assert!(s.deliver(&p(7, None)), "full: no base");
        assert!(s.deliver(&p(8, Some(7))));
        let mut prev = Vec::new();
        let mut kinds = Vec::new();
        for (f, n) in frames(&o).iter().zip(5..) {
            let v: serde_json::Value = serde_json::from_str(f).unwrap();
            let publication = &v["push"]["pub"];
            let delta = publication["delta"].as_bool().unwrap_or(false);
            let text = publication["data"].as_str().expect("data as a string");
            prev = if delta {
                fossil::apply(&prev, text.as_bytes()).unwrap()
            } else {
                text.as_bytes().to_vec()
            };
            assert_eq!(prev, data(n).into_bytes(), "offset {n}");
            kinds.push(delta);
        }
        assert_eq!(kinds, [false, true, false, true]);

        let o = Arc::new(Outbox::new(1 << 20));
        let s = Subscriber::new(2, "c".into(), o.clone(), 1 << 20, false, true, "u".into());
        assert!(s.go_live([], 4, "e", Some(4)));
        assert!(s.deliver(&p(5, Some(4))));
        assert!(frames(&o)[0].contains(r#""delta":true"#));

        let (plain, o) = subscriber();
        assert!(plain.go_live([], 4, "e", None));
        assert!(plain.deliver(&p(5, Some(4))));
        let v: serde_json::Value = serde_json::from_str(&frames(&o)[0]).unwrap();
        assert_eq!(
            v["push"]["pub"]["data"]["n"], 5,
            "no delta negotiated: as it is"
        );
    }

    /// The delta of a publication is made once however many delta
    /// subscribers (of either encoding) the edge has: one patch per
    /// (channel, previous publication), counted in the metric.
    #[test]
    fn one_patch_serves_every_delta_subscriber() {
        use crate::protocol::{Encoding, encode_publication};
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let data = |n: u64| format!(r#"{{"state":"{}","n":{n}}}"#, "y".repeat(300));
        let object = |n: u64| encode_publication(data(n).as_bytes(), None, n, "e");
        let outboxes: Vec<_> = (0..1000)
            .map(|i| {
                let encoding = if i % 2 == 0 {
                    Encoding::Json
                } else {
                    Encoding::Protobuf
                };
                Arc::new(Outbox::with_encoding(1 << 20, encoding))
            })
            .collect();
        let subs: Vec<_> = outboxes
            .iter()
            .enumerate()
            .map(|(i, o)| {
                Subscriber::new(
                    i as u64,
                    "c".into(),
                    o.clone(),
                    1 << 20,
                    false,
                    true,
                    "u".into(),
                )
            })
            .collect();
        metrics::with_local_recorder(&recorder, || {
            for s in &subs {
                assert!(s.go_live([], 4, "e", Some(4)));
            }
            for n in 5..=7 {
                let p = Publication {
                    offset: Some(n),
                    epoch: Some("e".into()),
                    frame: SharedPush::publication_after(
                        "c".into(),
                        object(n),
                        Some(object(n - 1)),
                    ),
                    committed_us: None,
                    key: Some(n),
                    base: Some(n - 1),
                };
                for s in &subs {
                    assert!(s.deliver(&p));
                }
            }
        });
        let text = handle.render();
        let line = text
            .lines()
            .find(|l| l.starts_with(crate::metrics::DELTA_PATCHES_TOTAL))
            .unwrap_or_else(|| panic!("no patch counter in\n{text}"));
        assert_eq!(line.split_whitespace().last(), Some("3"), "{line}");
    }

    /// A Protobuf connection's subscriber queues the Protobuf frame of a
    /// shared push (built once, whatever the number of subscribers) and its
    /// own unsubscribe push in Protobuf; a JSON one the JSON frame.
    #[test]
    fn each_subscriber_gets_the_push_in_its_connections_encoding() {
        use crate::protocol::Encoding;
        use crate::protocol::protobuf::pb;
        use prost::Message;
        let pb_outbox = Arc::new(Outbox::with_encoding(1 << 20, Encoding::Protobuf));
        let pb_sub = Subscriber::new(
            1,
            "c".into(),
            pb_outbox.clone(),
            1 << 20,
            false,
            false,
            "u".into(),
        );
        let (json_sub, json_outbox) = subscriber();
        let object = crate::protocol::encode_publication(b"{\"x\":1}", None, 5, "e");
        let p = Publication {
            offset: Some(5),
            epoch: Some("e".into()),
            frame: SharedPush::publication("c".into(), object),
            committed_us: None,
            key: None,
            base: None,
        };
        for s in [&pb_sub, &json_sub] {
            assert!(s.go_live([], 4, "e", None));
            assert!(s.deliver(&p));
        }
        let pb_first = p.frame.frame(Encoding::Protobuf).unwrap().as_ptr();
        assert!(!pb_sub.deliver(&publication(7, "e")), "a gap");
        let mut frame = futures::executor::block_on(pb_outbox.next_batch()).frame;
        let push = pb::Reply::decode_length_delimited(&mut frame)
            .unwrap()
            .push
            .unwrap();
        assert_eq!(&push.r#pub.unwrap().data[..], b"{\"x\":1}");
        let unsub = pb::Reply::decode_length_delimited(&mut frame)
            .unwrap()
            .push
            .unwrap();
        assert_eq!(unsub.unsubscribe.unwrap().code, 2500);
        assert!(frame.is_empty(), "two frames back to back");
        assert_eq!(
            p.frame.frame(Encoding::Protobuf).unwrap().as_ptr(),
            pb_first
        );
        let v: serde_json::Value = serde_json::from_str(&frames(&json_outbox)[0]).unwrap();
        assert_eq!(v["push"]["pub"]["data"]["x"], 1);
    }

    /// Issue 19 b: once its session dropped it, a subscriber queues nothing,
    /// even from a broadcast that copied it before.
    #[test]
    fn retired_queues_nothing() {
        let (s, o) = subscriber();
        assert!(s.go_live([], 5, "e", None));
        s.retire();
        assert!(!s.deliver(&publication(6, "e")));
        assert_eq!(o.queued_bytes(), 0);
    }
}
