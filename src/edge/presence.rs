//! Presence, join/leave and user online status across edges: the NATS side
//! of what the registry keeps for this edge's own connections.
//!
//! The mechanism (docs/internals.md, "Presence and online status") is scatter-gather over the
//! live edges, each authoritative for its own connections:
//! - **membership**: every edge heartbeats on `subjects::EDGE_HEARTBEAT`
//!   every third of `presence_ttl` and answers a newcomer's first heartbeat
//!   at once; an edge silent for `presence_ttl`, or saying goodbye, is dead.
//!   Its death is broadcast to this edge's feeds (leave pushes for its
//!   members, status watchers re-read).
//! - **queries** (`presence`, `presence_stats`, `user_status`): one request
//!   on `subjects::PRESENCE_QUERY`, which every edge subscribes to; each
//!   answers from its registry (presence in chunks of [`CHUNK`] members,
//!   stats as two counts plus at most `STATS_USER_LIST_LIMIT` user ids, so a
//!   10,000-member room's stats move counts, not members). The asker waits
//!   for every edge it knows alive, at most [`GATHER_TIMEOUT`]: an edge dead
//!   but not yet expired costs that wait and is simply missing from the
//!   answer.
//! - **events** from the registry, published by one task in order: a join
//!   or leave goes on the channel's own subject (every edge with local
//!   subscribers has that subscription already: no new NATS interest per
//!   channel), tagged with `JOIN_LEAVE_HEADER` and this edge's id. A user's
//!   first connection here, or last one gone, hints `status:<user>`
//!   watchers to re-read; the last one gone also records `last_seen` in the
//!   `herald_status` KV bucket (the maximum wins, by compare-and-set). Until
//!   the bucket has had it for twice [`GATHER_TIMEOUT`], this edge's
//!   registry keeps the time and answers it: a status read asks the edges
//!   and the bucket at once, and whichever it reads first, one of them has
//!   the time.
//!
//! No shared "online" flag exists: a user's status is computed at each read
//! from the edges' own connection sets, so two edges changing one user at
//! once, or one dying mid-change, cannot leave a wrong value behind.
//!
//! Bounds: the event queue ([`EVENT_QUEUE`], full: dropped and counted),
//! members gathered per query ([`MAX_MEMBERS`], past it: error), users per
//! status query (`MAX_STATUS_USERS`), concurrent KV writes
//! ([`KV_CONCURRENCY`]), death notices per feed ([`DEATH_QUEUE`], a lagging
//! feed treats a lag as every edge's death: it re-reads, and sends leaves
//! for what it tracked of no edge).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::registry::{PresenceEvent, Registry};
use crate::bus::subjects;
use crate::config::BUILTIN_STATUS_NAMESPACE;
use crate::metrics as m;

/// How long a query waits for the edges it knows alive.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(1);
/// Members per presence answer message (well under NATS's 1 MiB payload).
pub const CHUNK: usize = 500;
/// Most members one presence answer gathers; a larger room's presence is an
/// error (its stats still answer).
pub const MAX_MEMBERS: usize = 100_000;
/// Most users one `user_status` asks about (server API and client RPC).
pub const MAX_STATUS_USERS: usize = 1000;
/// Presence events waiting to be published.
pub const EVENT_QUEUE: usize = 65_536;
/// Concurrent last-seen writes to the KV bucket.
pub const KV_CONCURRENCY: usize = 64;
/// Death notices a feed has not read yet.
pub const DEATH_QUEUE: usize = 64;
/// After shutdown is asked, how long presence keeps running while the
/// edge's connections close (their leaves and last-seen times go out
/// before the goodbye); past it, the others push what is left as leaves.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);
/// How long the status bucket keeps a user's last-seen time.
pub const LAST_SEEN_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The user a `status:<user>` channel watches, if it is one.
pub fn status_user(channel: &str) -> Option<&str> {
    channel
        .strip_prefix(BUILTIN_STATUS_NAMESPACE)?
        .strip_prefix(':')
        .filter(|u| !u.is_empty())
}

/// Why a query got no answer.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("more than {MAX_MEMBERS} members")]
    TooLarge,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Query {
    Presence { channel: String },
    Stats { channel: String },
    Status { users: Vec<String> },
}

/// One edge's answer (or one chunk of it: `more` says others follow).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Answer {
    edge: String,
    #[serde(default)]
    more: bool,
    /// (client id, `ClientInfo` JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    members: Vec<(String, Box<RawValue>)>,
    #[serde(default)]
    clients: u64,
    #[serde(default)]
    users: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_list: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    online: Vec<String>,
    /// Users whose last connection here closed at that time (unix ms), not
    /// yet recorded in the bucket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seen: Vec<(String, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    edge: String,
    #[serde(default)]
    bye: bool,
}

/// Decodes a presence message between edges (heartbeat, query, answer) as
/// the edge does; for [`crate::fuzzing`].
pub fn check_wire_message(payload: &[u8]) {
    let _ = serde_json::from_slice::<Beat>(payload);
    let _ = serde_json::from_slice::<Query>(payload);
    let _ = serde_json::from_slice::<Answer>(payload);
}

/// One user's status, as the API and the RPC answer it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserStatus {
    pub user: String,
    pub online: bool,
    /// Unix ms: now while online, else the last disconnect recorded (0:
    /// never seen, or longer ago than the bucket keeps).
    pub last_seen: u64,
}

/// Presence stats across edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub num_clients: u64,
    pub num_users: u64,
}

pub struct Presence {
    nats: async_nats::Client,
    id: Arc<str>,
    ttl: Duration,
    kv_replicas: usize,
    /// Live edges (this one included) and when each was last heard from.
    edges: Mutex<HashMap<Arc<str>, Instant>>,
    deaths: broadcast::Sender<Arc<str>>,
    kv: OnceLock<kv::Store>,
    /// Told of users' first and last connections here (event webhooks).
    webhooks: OnceLock<crate::webhooks::Emitter>,
}

impl Presence {
    pub fn new(nats: async_nats::Client, ttl: Duration, kv_replicas: usize) -> Arc<Self> {
        let id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        Arc::new(Self {
            nats,
            edges: Mutex::new(HashMap::from([(id.clone(), Instant::now())])),
            id,
            ttl,
            kv_replicas,
            deaths: broadcast::channel(DEATH_QUEUE).0,
            kv: OnceLock::new(),
            webhooks: OnceLock::new(),
        })
    }

    /// Tells `emitter` of users' first and last connections here from now on.
    pub fn set_webhooks(&self, emitter: crate::webhooks::Emitter) {
        let _ = self.webhooks.set(emitter);
    }

    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Death notices (edge ids) from now on.
    pub fn deaths(&self) -> broadcast::Receiver<Arc<str>> {
        self.deaths.subscribe()
    }

    /// Whether `edge` is alive as far as this edge knows.
    pub fn is_alive(&self, edge: &str) -> bool {
        self.edges.lock().expect("edges lock").contains_key(edge)
    }

    fn live_edges(&self) -> HashSet<Arc<str>> {
        self.edges
            .lock()
            .expect("edges lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Subscribes to queries and heartbeats (active at the server before it
    /// returns), opens the status bucket, announces this edge, and runs
    /// until `shutdown` and the edge's connections have closed (at most
    /// [`SHUTDOWN_WAIT`] more): then publishes the events still queued,
    /// says goodbye and ends.
    pub async fn serve(
        self: &Arc<Self>,
        registry: Arc<Registry>,
        mut events: mpsc::Receiver<PresenceEvent>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, PresenceError> {
        let nats_err = |e: &dyn std::fmt::Display| PresenceError::Nats(e.to_string());
        let js = async_nats::jetstream::new(self.nats.clone());
        let bucket = js
            .create_or_update_key_value(kv::Config {
                bucket: subjects::STATUS_BUCKET.to_string(),
                description: "Herald users' last-seen times".to_string(),
                history: 1,
                max_age: LAST_SEEN_RETENTION,
                num_replicas: self.kv_replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err(&e))?;
        let _ = self.kv.set(bucket);
        let mut queries = self
            .nats
            .subscribe(subjects::PRESENCE_QUERY)
            .await
            .map_err(|e| nats_err(&e))?;
        let mut beats = self
            .nats
            .subscribe(subjects::EDGE_HEARTBEAT)
            .await
            .map_err(|e| nats_err(&e))?;
        // Answered after the server processed both SUBs (see `control`).
        if let Err(e) = self
            .nats
            .request(subjects::INTEREST_PROBE, Bytes::new())
            .await
            && !matches!(e.kind(), async_nats::RequestErrorKind::NoResponders)
        {
            return Err(nats_err(&e));
        }
        self.beat(false).await;
        let held = (
            m::GaugeHold::new(metrics::gauge!(m::NATS_SUBSCRIPTIONS)),
            m::GaugeHold::new(metrics::gauge!(m::NATS_SUBSCRIPTIONS)),
        );
        let me = self.clone();
        let kv_writes = Arc::new(Semaphore::new(KV_CONCURRENCY));
        // Two tasks: queries and heartbeats never wait behind event
        // publishing (a mass disconnect's last-seen writes).
        let stop_events = CancellationToken::new();
        let events_task = {
            let (me, registry, stop) = (me.clone(), registry.clone(), stop_events.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        Some(e) = events.recv() => me.publish_event(&registry, e, &kv_writes).await,
                    }
                }
                // What the closed sessions emitted last goes out too.
                while let Ok(e) = events.try_recv() {
                    me.publish_event(&registry, e, &kv_writes).await;
                }
                let _ = kv_writes.acquire_many(KV_CONCURRENCY as u32).await;
            })
        };
        Ok(tokio::spawn(async move {
            let _held = held;
            let mut tick = tokio::time::interval((me.ttl / 3).max(Duration::from_millis(50)));
            let mut stopping: Option<Instant> = None;
            loop {
                if let Some(since) = stopping
                    && (registry.num_connections() == 0 || since.elapsed() >= SHUTDOWN_WAIT)
                {
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled(), if stopping.is_none() => {
                        stopping = Some(Instant::now());
                    }
                    _ = tokio::time::sleep(Duration::from_millis(20)), if stopping.is_some() => {}
                    Some(msg) = queries.next() => me.answer(&registry, msg).await,
                    Some(msg) = beats.next() => me.heard(&msg.payload).await,
                    _ = tick.tick() => {
                        me.beat(false).await;
                        me.expire();
                    }
                }
            }
            // The sessions have closed: their leaves and last-seen times go
            // out, then the goodbye (the others treat what is left as gone).
            stop_events.cancel();
            let _ = events_task.await;
            me.beat(true).await;
            let _ = me.nats.flush().await;
        }))
    }

    async fn beat(&self, bye: bool) {
        let beat = Beat {
            edge: self.id.to_string(),
            bye,
        };
        if let Ok(body) = serde_json::to_vec(&beat) {
            let _ = self
                .nats
                .publish(subjects::EDGE_HEARTBEAT, body.into())
                .await;
        }
        metrics::gauge!(m::PRESENCE_EDGES).set(self.edges.lock().expect("edges lock").len() as f64);
    }

    /// A heartbeat: a newcomer gets ours at once; a goodbye is a death.
    async fn heard(&self, payload: &[u8]) {
        let Ok(beat) = serde_json::from_slice::<Beat>(payload) else {
            return;
        };
        if *beat.edge == *self.id {
            return;
        }
        let edge: Arc<str> = beat.edge.into();
        let new = {
            let mut edges = self.edges.lock().expect("edges lock");
            if beat.bye {
                edges.remove(&edge);
                false
            } else {
                edges.insert(edge.clone(), Instant::now()).is_none()
            }
        };
        if beat.bye {
            tracing::info!(edge = %edge, "edge left");
            let _ = self.deaths.send(edge);
        } else if new {
            tracing::info!(edge = %edge, "edge joined");
            self.beat(false).await;
        }
    }

    /// Edges silent for `ttl` are dead.
    fn expire(&self) {
        let dead: Vec<Arc<str>> = {
            let mut edges = self.edges.lock().expect("edges lock");
            let now = Instant::now();
            let dead: Vec<Arc<str>> = edges
                .iter()
                .filter(|(id, at)| ***id != *self.id && now.duration_since(**at) >= self.ttl)
                .map(|(id, _)| id.clone())
                .collect();
            for d in &dead {
                edges.remove(d);
            }
            edges.insert(self.id.clone(), now);
            dead
        };
        for d in dead {
            tracing::warn!(edge = %d, "edge silent for presence_ttl: gone");
            let _ = self.deaths.send(d);
        }
    }

    async fn answer(&self, registry: &Registry, msg: async_nats::Message) {
        let Some(reply) = msg.reply else { return };
        let Ok(q) = serde_json::from_slice::<Query>(&msg.payload) else {
            return;
        };
        let edge = self.id.to_string();
        let mut answers = Vec::new();
        match q {
            Query::Presence { channel } => {
                let members = registry.presence(&channel);
                let mut chunks = members.chunks(CHUNK).peekable();
                if chunks.peek().is_none() {
                    answers.push(Answer {
                        edge: edge.clone(),
                        ..Answer::default()
                    });
                }
                while let Some(chunk) = chunks.next() {
                    answers.push(Answer {
                        edge: edge.clone(),
                        more: chunks.peek().is_some(),
                        members: chunk
                            .iter()
                            .filter_map(|m| {
                                let info = RawValue::from_string(m.info.to_string()).ok()?;
                                Some((m.client.to_string(), info))
                            })
                            .collect(),
                        ..Answer::default()
                    });
                }
            }
            Query::Stats { channel } => {
                let s = registry.presence_stats(&channel);
                answers.push(Answer {
                    edge,
                    clients: s.clients,
                    users: s.users,
                    user_list: s.user_list,
                    ..Answer::default()
                });
            }
            Query::Status { users } => {
                let mut a = Answer {
                    edge,
                    ..Answer::default()
                };
                for (user, seen) in registry.status(&users) {
                    match seen {
                        None => a.online.push(user.to_string()),
                        Some(at) => a.seen.push((user.to_string(), at)),
                    }
                }
                answers.push(a);
            }
        }
        for a in answers {
            if let Ok(body) = serde_json::to_vec(&a) {
                let _ = self.nats.publish(reply.clone(), body.into()).await;
            }
        }
    }

    async fn publish_event(
        self: &Arc<Self>,
        registry: &Arc<Registry>,
        e: PresenceEvent,
        kv_writes: &Arc<Semaphore>,
    ) {
        let (channel, kind, info) = match e {
            PresenceEvent::Join { channel, info } => (channel, "join", info),
            PresenceEvent::Leave { channel, info } => (channel, "leave", info),
            PresenceEvent::UserOnline(user) => {
                self.webhook_user(&user, None);
                self.hint(&user).await;
                return;
            }
            PresenceEvent::UserOffline { user, at } => {
                self.webhook_user(&user, Some(at));
                // Hinted at once (this edge answers the time until the bucket
                // has it), then recorded.
                self.hint(&user).await;
                let Ok(permit) = kv_writes.clone().acquire_owned().await else {
                    return;
                };
                let (me, registry) = (self.clone(), registry.clone());
                tokio::spawn(async move {
                    let recorded = me.record_last_seen(&user, at).await;
                    drop(permit);
                    if recorded {
                        // A status read asks the edges and the bucket at
                        // once: one whose bucket read came before this write
                        // gets its edge answers within GATHER_TIMEOUT, so the
                        // registry keeps the time that long after.
                        tokio::time::sleep(GATHER_TIMEOUT * 2).await;
                        registry.recorded(&user, at);
                    }
                });
                return;
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert(subjects::JOIN_LEAVE_HEADER, kind);
        headers.insert(subjects::EDGE_HEADER, &*self.id);
        let subject = subjects::channel_subject(&channel);
        if let Err(e) = self
            .nats
            .publish_with_headers(subject, headers, Bytes::from(info.to_string()))
            .await
        {
            metrics::counter!(m::NATS_PUBLISH_ERRORS_TOTAL, "kind" => "channel").increment(1);
            tracing::debug!(error = %e, "join/leave publish failed");
        }
    }

    fn webhook_user(&self, user: &Arc<str>, offline_at: Option<u64>) {
        if let Some(w) = self.webhooks.get() {
            w.user_changed(user, offline_at);
        }
    }

    /// Tells `status:<user>` watchers on every edge to re-read.
    async fn hint(&self, user: &str) {
        let mut headers = HeaderMap::new();
        headers.insert(subjects::STATUS_HINT_HEADER, "1");
        let subject = subjects::channel_subject(&format!("{BUILTIN_STATUS_NAMESPACE}:{user}"));
        let _ = self
            .nats
            .publish_with_headers(subject, headers, Bytes::from(user.to_string()))
            .await;
    }

    /// Stores `at` as the user's last-seen time unless a later one is there
    /// (compare-and-set: two edges writing at once keep the later). True
    /// once the bucket holds `at` or later.
    async fn record_last_seen(&self, user: &str, at: u64) -> bool {
        let Some(kv) = self.kv.get() else {
            return false;
        };
        let key = subjects::status_key(user);
        for _ in 0..5 {
            let current = match kv.entry(&key).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(error = %e, "last-seen read failed");
                    return false;
                }
            };
            let result = match &current {
                Some(e) if e.operation == kv::Operation::Put => {
                    if parse_ms(&e.value) >= at {
                        return true;
                    }
                    kv.update(&key, at.to_string().into(), e.revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                Some(e) => kv
                    .update(&key, at.to_string().into(), e.revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => kv
                    .create(&key, at.to_string().into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            match result {
                Ok(()) => return true,
                Err(e) => tracing::debug!(error = %e, "last-seen write raced; retrying"),
            }
        }
        false
    }

    async fn last_seen(&self, user: &str) -> u64 {
        let Some(kv) = self.kv.get() else { return 0 };
        match kv.get(subjects::status_key(user)).await {
            Ok(Some(v)) => parse_ms(&v),
            _ => 0,
        }
    }

    /// Sends `q` to every edge and collects the answers of those known
    /// alive, at most [`GATHER_TIMEOUT`].
    async fn gather(&self, q: &Query) -> Result<Vec<Answer>, PresenceError> {
        let body = serde_json::to_vec(q).map_err(|e| PresenceError::Nats(e.to_string()))?;
        let inbox = self.nats.new_inbox();
        let mut sub = self
            .nats
            .subscribe(inbox.clone())
            .await
            .map_err(|e| PresenceError::Nats(e.to_string()))?;
        let mut waiting = self.live_edges();
        self.nats
            .publish_with_reply(subjects::PRESENCE_QUERY, inbox, body.into())
            .await
            .map_err(|e| PresenceError::Nats(e.to_string()))?;
        let deadline = Instant::now() + GATHER_TIMEOUT;
        let mut answers = Vec::new();
        let mut members = 0usize;
        while !waiting.is_empty() {
            let msg = match tokio::time::timeout_at(deadline, sub.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(_) => {
                    metrics::counter!(m::PRESENCE_GATHER_TIMEOUTS_TOTAL).increment(1);
                    tracing::debug!(missing = waiting.len(), "presence gather timed out");
                    break;
                }
            };
            let Ok(a) = serde_json::from_slice::<Answer>(&msg.payload) else {
                continue;
            };
            if !a.more {
                waiting.remove(a.edge.as_str());
            }
            members += a.members.len();
            if members > MAX_MEMBERS {
                return Err(PresenceError::TooLarge);
            }
            answers.push(a);
        }
        let _ = sub.unsubscribe().await;
        Ok(answers)
    }

    /// Every member of `channel` on every live edge: client id → `ClientInfo`.
    pub async fn presence(
        &self,
        channel: &str,
    ) -> Result<BTreeMap<String, Box<RawValue>>, PresenceError> {
        let answers = self
            .gather(&Query::Presence {
                channel: channel.to_string(),
            })
            .await?;
        Ok(answers.into_iter().flat_map(|a| a.members).collect())
    }

    /// Clients and users in `channel` (see [`combine_stats`]).
    pub async fn stats(&self, channel: &str) -> Result<Stats, PresenceError> {
        let answers = self
            .gather(&Query::Stats {
                channel: channel.to_string(),
            })
            .await?;
        Ok(combine_stats(&answers))
    }

    /// The status of each of `users` (at most [`MAX_STATUS_USERS`], the
    /// caller checks), in order: online while any live edge has a
    /// connection of theirs. The edges and the bucket are asked at once.
    pub async fn user_status(&self, users: &[String]) -> Result<Vec<UserStatus>, PresenceError> {
        let query = Query::Status {
            users: users.to_vec(),
        };
        let seen = async {
            let mut out = Vec::with_capacity(users.len());
            for chunk in users.chunks(KV_CONCURRENCY) {
                let reads: Vec<_> = chunk.iter().map(|u| self.last_seen(u)).collect();
                out.extend(futures::future::join_all(reads).await);
            }
            out
        };
        let (answers, seen) = tokio::join!(self.gather(&query), seen);
        let answers = answers?;
        let online: HashSet<&str> = answers
            .iter()
            .flat_map(|a| a.online.iter().map(String::as_str))
            .collect();
        let mut pending: HashMap<&str, u64> = HashMap::new();
        for (u, at) in answers.iter().flat_map(|a| a.seen.iter()) {
            let e = pending.entry(u.as_str()).or_default();
            *e = (*e).max(*at);
        }
        let now = now_ms();
        Ok(users
            .iter()
            .zip(seen)
            .map(|(u, seen)| {
                let on = online.contains(u.as_str());
                let seen = seen.max(pending.get(u.as_str()).copied().unwrap_or(0));
                UserStatus {
                    user: u.clone(),
                    online: on,
                    last_seen: if on { now } else { seen },
                }
            })
            .collect())
    }

    /// The publication object (JSON, no offset) of `user`'s current status,
    /// which a `status:<user>` channel pushes.
    pub async fn status_publication(&self, user: &str) -> Option<Bytes> {
        let status = self.user_status(&[user.to_string()]).await.ok()?.pop()?;
        let data = serde_json::to_vec(&status).ok()?;
        Some(crate::protocol::encode_publication(&data, None, 0, ""))
    }
}

#[async_trait::async_trait]
impl crate::webhooks::StatusSource for Presence {
    /// Whether a live edge other than this one reports a connection of
    /// `user`.
    async fn online_elsewhere(&self, user: &str) -> Option<bool> {
        let answers = self
            .gather(&Query::Status {
                users: vec![user.to_string()],
            })
            .await
            .ok()?;
        Some(
            answers
                .iter()
                .filter(|a| a.edge.as_str() != &*self.id)
                .any(|a| a.online.iter().any(|u| u == user)),
        )
    }
}

/// The edges' stats answers as one. Users are exact while every edge has at
/// most `STATS_USER_LIST_LIMIT` distinct ones there (their lists' union: a
/// user on two edges counts once); past that the edges' counts are summed (a
/// user connected through k edges counts k times; never an undercount).
/// `docs/compatibility.md` states this deviation from Centrifugo.
fn combine_stats(answers: &[Answer]) -> Stats {
    let num_clients = answers.iter().map(|a| a.clients).sum();
    let num_users = if answers.iter().all(|a| a.user_list.is_some()) {
        let users: HashSet<&str> = answers
            .iter()
            .flat_map(|a| a.user_list.iter().flatten().map(String::as_str))
            .collect();
        users.len() as u64
    } else {
        answers.iter().map(|a| a.users).sum()
    };
    Stats {
        num_clients,
        num_users,
    }
}

fn parse_ms(v: &[u8]) -> u64 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_channels() {
        assert_eq!(status_user("status:bob"), Some("bob"));
        assert_eq!(status_user("status:"), None);
        assert_eq!(status_user("statusx:bob"), None);
        assert_eq!(status_user("news"), None);
    }

    #[test]
    fn wire_shapes() {
        let q = serde_json::to_string(&Query::Stats {
            channel: "c".into(),
        })
        .unwrap();
        assert_eq!(q, r#"{"op":"stats","channel":"c"}"#);
        let a: Answer = serde_json::from_str(r#"{"edge":"e","clients":3,"users":2}"#).unwrap();
        assert_eq!((a.clients, a.users, a.more), (3, 2, false));
        assert!(a.user_list.is_none());
    }

    /// The bound `docs/compatibility.md` states for `num_users`.
    #[test]
    fn users_are_exact_within_the_list_limit_and_summed_past_it() {
        use crate::edge::registry::STATS_USER_LIST_LIMIT;
        let answer = |edge: &str, users: std::ops::Range<usize>, listed: bool| {
            let list: Vec<String> = users.clone().map(|u| format!("u{u}")).collect();
            Answer {
                edge: edge.into(),
                clients: list.len() as u64,
                users: list.len() as u64,
                user_list: listed.then_some(list),
                ..Answer::default()
            }
        };
        // u5..u9 on both edges: counted once.
        let small = [answer("a", 0..10, true), answer("b", 5..20, true)];
        assert_eq!(
            combine_stats(&small),
            Stats {
                num_clients: 25,
                num_users: 20
            }
        );
        // Past the limit on one edge: the shared users count twice.
        let n = STATS_USER_LIST_LIMIT + 1;
        let large = [answer("a", 0..n, false), answer("b", 0..10, true)];
        assert_eq!(
            combine_stats(&large),
            Stats {
                num_clients: n as u64 + 10,
                num_users: n as u64 + 10
            }
        );
    }
}
