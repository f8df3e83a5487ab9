//! The generator's two loops, shared by Herald and the peer so both get the
//! same treatment: a subscriber loop (read deliveries, check their order,
//! record their latency) and a publisher loop (send at a rate or as fast as
//! a window of unconfirmed publishes allows, count confirmations).
//!
//! [`Subscriber`] and [`Publisher`] are implemented for Herald's protocol
//! client and for the peer's NATS-over-WebSocket client; the loops know
//! nothing else of either.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::nats_ws::{Event, NatsWs};
use super::payload::{self, Stamp, now_us};
use super::stats::{Count, Latencies, Order};
use herald_client::{Client, ClientError};

/// How long a publisher waits for a confirmation before giving up.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// One delivery: the number checked for order (offset or sequence) and the
/// send time it carried.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub number: u64,
    pub sent_us: u64,
}

/// A connection that receives deliveries.
pub trait Subscriber: Send + 'static {
    /// Reads what arrives next (one frame) and appends its deliveries.
    fn next(
        &mut self,
        out: &mut Vec<Delivery>,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;
    /// Server pings answered so far.
    fn pings(&self) -> u64;
}

/// A connection that publishes and gets confirmations.
pub trait Publisher: Send + 'static {
    /// Sends one publication of `data` (JSON text); returns the id its
    /// confirmation will carry, or None when confirmations come in order.
    fn publish(
        &mut self,
        data: &str,
    ) -> impl Future<Output = Result<Option<u32>, ClientError>> + Send;
    /// Reads what arrives next and appends its confirmations.
    fn confirmations(
        &mut self,
        out: &mut Vec<Confirmation>,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;
}

/// A publish confirmed or refused.
#[derive(Debug, Clone, Copy)]
pub struct Confirmation {
    pub id: Option<u32>,
    pub ok: bool,
}

/// The fields of a Herald frame line the bench reads.
#[derive(Deserialize)]
struct Line {
    id: Option<u32>,
    push: Option<PushBody>,
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct PushBody {
    #[serde(rename = "pub")]
    publication: Option<Publication>,
}

#[derive(Deserialize)]
struct Publication {
    data: Stamp,
    #[serde(default)]
    offset: u64,
}

/// Herald's client as a subscriber: checks offsets (history channels) or
/// the sequence numbers in the data (channels without history).
pub struct HeraldSub {
    pub client: Client,
    pub by_offset: bool,
}

impl Subscriber for HeraldSub {
    async fn next(&mut self, out: &mut Vec<Delivery>) -> Result<(), ClientError> {
        let frame = self.client.recv().await?;
        for line in frame.lines() {
            if let Ok(Line {
                push: Some(PushBody {
                    publication: Some(p),
                }),
                ..
            }) = serde_json::from_str::<Line>(line)
            {
                out.push(Delivery {
                    number: if self.by_offset { p.offset } else { p.data.s },
                    sent_us: p.data.t,
                });
            }
        }
        // Protobuf: the publication's `data` bytes are the JSON stamp.
        for p in frame
            .replies()
            .iter()
            .filter_map(|r| r.push.as_ref()?.r#pub.as_ref())
        {
            if let Ok(stamp) = serde_json::from_slice::<Stamp>(&p.data) {
                out.push(Delivery {
                    number: if self.by_offset { p.offset } else { stamp.s },
                    sent_us: stamp.t,
                });
            }
        }
        Ok(())
    }

    fn pings(&self) -> u64 {
        self.client.pings_seen as u64
    }
}

/// Herald's client as a publisher into one channel (client protocol
/// `publish`, JSON or Protobuf; the reply is the confirmation).
pub struct HeraldPub {
    pub client: Client,
    pub channel: String,
}

impl HeraldPub {
    pub fn new(client: Client, channel: &str) -> Self {
        Self {
            client,
            channel: channel.to_owned(),
        }
    }
}

impl Publisher for HeraldPub {
    async fn publish(&mut self, data: &str) -> Result<Option<u32>, ClientError> {
        self.client
            .send_publish(&self.channel, data)
            .await
            .map(Some)
    }

    async fn confirmations(&mut self, out: &mut Vec<Confirmation>) -> Result<(), ClientError> {
        let frame = self.client.recv().await?;
        for line in frame.lines() {
            if let Ok(Line {
                id: Some(id),
                error,
                ..
            }) = serde_json::from_str::<Line>(line)
            {
                out.push(Confirmation {
                    id: Some(id),
                    ok: error.is_none(),
                });
            }
        }
        for r in frame.replies().iter().filter(|r| r.id > 0) {
            out.push(Confirmation {
                id: Some(r.id),
                ok: r.error.is_none(),
            });
        }
        Ok(())
    }
}

/// The peer's client as a subscriber: sequence numbers in the payload.
pub struct NatsSub(pub NatsWs);

impl Subscriber for NatsSub {
    async fn next(&mut self, out: &mut Vec<Delivery>) -> Result<(), ClientError> {
        if let Event::Msg { payload, .. } = self.0.next_event().await?
            && let Some(s) = payload::decode(&payload)
        {
            out.push(Delivery {
                number: s.s,
                sent_us: s.t,
            });
        }
        Ok(())
    }

    fn pings(&self) -> u64 {
        self.0.pings_seen
    }
}

/// The peer's client as a publisher into one subject: PUB + PING, the PONG
/// confirms.
pub struct NatsPub {
    pub conn: NatsWs,
    pub subject: String,
}

impl Publisher for NatsPub {
    async fn publish(&mut self, data: &str) -> Result<Option<u32>, ClientError> {
        self.conn
            .publish_confirmed(&self.subject, data.as_bytes())
            .await
            .map(|()| None)
    }

    async fn confirmations(&mut self, out: &mut Vec<Confirmation>) -> Result<(), ClientError> {
        match self.conn.next_event().await? {
            Event::Pong => out.push(Confirmation { id: None, ok: true }),
            Event::Err(_) => out.push(Confirmation {
                id: None,
                ok: false,
            }),
            Event::Msg { .. } => {}
        }
        Ok(())
    }
}

/// What the subscribers share: counts and latencies.
#[derive(Default)]
pub struct Deliveries {
    pub delivered: Count,
    /// When the last delivery arrived ([`now_us`]).
    pub last_us: Count,
    /// Subscribers whose connection ended before the stop.
    pub disconnected: Count,
    /// Server pings the subscribers answered (added when they stop).
    pub pings: Count,
    pub latency: Latencies,
}

/// Reads deliveries until `stop`; returns the order check. `who` picks the
/// latency shard; `first` is the number expected first.
pub async fn subscriber_loop<S: Subscriber>(
    who: usize,
    mut sub: S,
    first: u64,
    shared: Arc<Deliveries>,
    stop: CancellationToken,
) -> Order {
    let mut order = Order::starting_at(first);
    let mut batch = Vec::with_capacity(16);
    let mut lat = Vec::with_capacity(16);
    loop {
        let r = tokio::select! {
            _ = stop.cancelled() => break,
            r = sub.next(&mut batch) => r,
        };
        if r.is_err() {
            shared.disconnected.add(1);
            break;
        }
        if batch.is_empty() {
            continue;
        }
        let now = now_us();
        for d in batch.drain(..) {
            order.see(d.number);
            lat.push(now.saturating_sub(d.sent_us));
        }
        shared.latency.record(who, &lat);
        shared.delivered.add(lat.len() as u64);
        shared.last_us.max(now);
        lat.clear();
    }
    shared.pings.add(sub.pings());
    order
}

/// How a publisher paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Publish this many, or until `until` when None.
    pub count: Option<u64>,
    pub until: Instant,
    /// Pause between two publishes; None = as fast as the window allows.
    pub interval: Option<Duration>,
    /// Delay before the first paced publish. Publishers of a run get phases
    /// spread evenly over the interval, so the load is a steady stream and
    /// not a burst of every room at the same instant each interval.
    pub phase: Duration,
    /// Most publishes awaiting confirmation.
    pub window: usize,
    pub payload: usize,
}

/// What one publisher did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Published {
    pub sent: u64,
    pub confirmed: u64,
    pub refused: u64,
}

/// Publishes sequence numbers 1, 2, … with `pace`; records publish →
/// confirmation latency into `latency` (shard `who`).
pub async fn publisher_loop<P: Publisher>(
    who: usize,
    mut p: P,
    pace: Pace,
    latency: Arc<Latencies>,
) -> Result<Published, ClientError> {
    let mut out = Published::default();
    let mut pending: VecDeque<(Option<u32>, u64)> = VecDeque::new();
    let mut acks = Vec::new();
    let mut next_at = Instant::now() + pace.phase;
    loop {
        let more = match pace.count {
            Some(n) => out.sent < n,
            None => Instant::now() < pace.until,
        };
        let room = pending.len() < pace.window;
        let due = pace.interval.is_none() || Instant::now() >= next_at;
        if more && room && due {
            let data = payload::encode(out.sent + 1, pace.payload);
            let id = p.publish(&data).await?;
            pending.push_back((id, now_us()));
            out.sent += 1;
            if let Some(iv) = pace.interval {
                next_at += iv;
            }
            continue;
        }
        if !more && pending.is_empty() {
            return Ok(out);
        }
        let wait_until = if more && room {
            next_at.min(pace.until.max(Instant::now()))
        } else {
            Instant::now() + CONFIRM_TIMEOUT
        };
        match tokio::time::timeout_at(wait_until, p.confirmations(&mut acks)).await {
            Ok(r) => r?,
            Err(_) if more && room => continue,
            Err(_) => {
                return Err(ClientError::Timeout(
                    CONFIRM_TIMEOUT,
                    format!("confirmation of {} publishes", pending.len()),
                ));
            }
        }
        let now = now_us();
        for a in acks.drain(..) {
            let at = match a.id {
                Some(id) => pending.iter().position(|(i, _)| *i == Some(id)),
                None => (!pending.is_empty()).then_some(0),
            };
            let Some(at) = at else { continue };
            let Some((_, sent)) = pending.remove(at) else {
                continue;
            };
            latency.record_one(who, now.saturating_sub(sent));
            if a.ok {
                out.confirmed += 1;
            } else {
                out.refused += 1;
            }
        }
    }
}
