//! Unread-aware push: in a namespace with `push_unread_delay`, a member of a
//! conversation who has an unread message there and no connected device for
//! that delay gets one push, with the badge set to their total unread count
//! (sync's `unread`, the number `herald.unread` answers).
//!
//! Where the timer lives: in every edge, one [`run`] task holds a queue
//! subscription (group `herald-push-unread`) on every channel subject, so
//! each sequenced publication reaches exactly one edge's dispatcher. A
//! publication in a channel with members (a `membership` namespace or a
//! user-limited channel) whose namespace has a delay starts that channel's
//! timer unless one runs (coalescing: one check per channel per delay,
//! however many messages). When it fires the dispatcher reads the members
//! and their markers and the head (through sync), keeps those whose read
//! marker is below the head, asks presence which of them are online, and for
//! each offline one queues a job (`push::queue`) to that user: data
//! `{"herald": "unread", "channel", "unread"}`, badge = total unread,
//! collapse id per conversation. Reading on any device before the timer
//! fires moves the read marker to the head, so that member is skipped: the
//! read cancels the push. A member pushed for a head is not pushed again for
//! the same head.
//!
//! Bounds: at most `push_unread_max_pending` channels waiting (a new one
//! past it is dropped and counted); at most [`MAX_MEMBERS`] members checked
//! per conversation; the remembered (channel, user) heads are cleared when
//! they reach the same bound. A dispatcher that dies loses its pending
//! timers (those pushes are not sent); what it queued is durable.
//!
//! Knows sync's client, presence and the queue; not sessions or stores.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::queue::{Enqueuer, Job, Recipient, now_ms};
use super::sender::Notification;
use crate::bus::subjects;
use crate::channel::Channel;
use crate::config::ChannelsConfig;
use crate::edge::presence::Presence;
use crate::metrics as m;
use crate::sync::client::SyncClient;

/// Members of one conversation checked when its timer fires.
pub const MAX_MEMBERS: usize = 10_000;
/// How often due timers are looked for.
const TICK: Duration = Duration::from_millis(100);
/// Users per presence query (its limit).
const STATUS_CHUNK: usize = 1000;
const QUEUE_GROUP: &str = "herald-push-unread";

/// The dispatcher's state: channels waiting, heads already pushed.
struct Timers {
    pending: HashMap<String, Instant>,
    pushed: HashMap<(String, String), u64>,
    max: usize,
}

impl Timers {
    /// Starts `channel`'s timer unless one runs; false when full.
    fn start(&mut self, channel: &str, due: Instant) -> bool {
        if self.pending.contains_key(channel) {
            return true;
        }
        if self.pending.len() >= self.max {
            return false;
        }
        self.pending.insert(channel.to_string(), due);
        true
    }

    fn due(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for c in &due {
            self.pending.remove(c);
        }
        due
    }

    /// Whether `user` still needs a push for `head` in `channel` (and
    /// remembers it will have had one).
    fn first_for(&mut self, channel: &str, user: &str, head: u64) -> bool {
        if self.pushed.len() >= self.max {
            self.pushed.clear();
        }
        let key = (channel.to_string(), user.to_string());
        match self.pushed.get(&key) {
            Some(h) if *h >= head => false,
            _ => {
                self.pushed.insert(key, head);
                true
            }
        }
    }
}

struct Dispatcher {
    sync: SyncClient,
    presence: Arc<Presence>,
    queue: Enqueuer,
    timers: std::sync::Mutex<Timers>,
}

/// The channel a channel subject names, if it is one.
fn channel_of(subject: &str) -> Option<String> {
    use base64::Engine;
    let token = subject.strip_prefix("herald.ch.")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The delay of a channel's namespace, when it has one and the channel has
/// members.
fn delay_of(channel: &str, channels: &ChannelsConfig) -> Option<Duration> {
    let c = Channel::parse(channel, channels).ok()?;
    let has_members = c.options.membership || !c.allowed_users.is_empty();
    c.options.push_unread_delay.filter(|_| has_members)
}

/// Whether any namespace has a delay (else no dispatcher runs).
pub fn enabled(channels: &ChannelsConfig) -> bool {
    channels.default.push_unread_delay.is_some()
        || channels
            .namespaces
            .values()
            .any(|n| n.push_unread_delay.is_some())
}

fn lock(t: &std::sync::Mutex<Timers>) -> std::sync::MutexGuard<'_, Timers> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A short id per conversation for `collapse_id` (Web Push topics allow 32
/// base64url characters).
fn collapse_id(channel: &str) -> String {
    let digest = Sha256::digest(channel.as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

impl Dispatcher {
    async fn check(&self, channel: String) {
        let head = match self.sync.read(&channel, 0, None, 0, false).await {
            Ok(page) => page.head,
            Err(e) => {
                tracing::warn!(error = %e, "unread push: head not read");
                return;
            }
        };
        let mut behind = Vec::new();
        let mut after = String::new();
        let mut seen = 0;
        while seen < MAX_MEMBERS {
            let page = match self.sync.members(&channel, &after, 1000).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "unread push: members not read");
                    return;
                }
            };
            seen += page.len();
            let full = page.len() == 1000;
            if let Some(last) = page.last() {
                after = last.user.clone();
            }
            behind.extend(page.into_iter().filter(|m| m.read < head).map(|m| m.user));
            if !full {
                break;
            }
        }
        if behind.is_empty() {
            return;
        }
        for chunk in behind.chunks(STATUS_CHUNK) {
            let statuses = match self.presence.user_status(chunk).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "unread push: status not read");
                    return;
                }
            };
            for status in statuses.into_iter().filter(|s| !s.online) {
                if !lock(&self.timers).first_for(&channel, &status.user, head) {
                    continue;
                }
                self.push(&channel, &status.user).await;
            }
        }
    }

    async fn push(&self, channel: &str, user: &str) {
        let unread = match self.sync.unread(user).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "unread push: unread not read");
                return;
            }
        };
        let mut notification = Notification {
            badge: Some(unread.total),
            collapse_id: Some(collapse_id(channel)),
            ..Default::default()
        };
        notification.data.insert("herald".into(), "unread".into());
        notification.data.insert("channel".into(), channel.into());
        notification
            .data
            .insert("unread".into(), unread.total.to_string());
        let job = Job {
            id: uuid::Uuid::new_v4().simple().to_string(),
            recipient: Recipient {
                users: vec![user.to_string()],
                ..Default::default()
            },
            notification,
            created_ms: now_ms(),
        };
        match self.queue.enqueue(&job).await {
            Ok(()) => {
                metrics::counter!(m::PUSH_UNREAD_TOTAL, "result" => "queued").increment(1);
                tracing::debug!(job = %job.id, "unread push queued");
            }
            Err(e) => tracing::warn!(error = %e, "unread push not queued"),
        }
    }
}

/// Runs the dispatcher until `shutdown` (see the module doc).
pub async fn run(
    nats: async_nats::Client,
    channels: ChannelsConfig,
    sync: SyncClient,
    presence: Arc<Presence>,
    queue: Enqueuer,
    max_pending: usize,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = nats
        .queue_subscribe("herald.ch.*", QUEUE_GROUP.to_string())
        .await?;
    let d = Arc::new(Dispatcher {
        sync,
        presence,
        queue,
        timers: std::sync::Mutex::new(Timers {
            pending: HashMap::new(),
            pushed: HashMap::new(),
            max: max_pending,
        }),
    });
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            msg = sub.next() => {
                let Some(msg) = msg else { return Ok(()) };
                let sequenced = msg
                    .headers
                    .as_ref()
                    .is_some_and(|h| h.get(subjects::OFFSET_HEADER).is_some());
                if !sequenced {
                    continue;
                }
                let Some(channel) = channel_of(&msg.subject) else { continue };
                let Some(delay) = delay_of(&channel, &channels) else { continue };
                if !lock(&d.timers).start(&channel, Instant::now() + delay) {
                    metrics::counter!(m::PUSH_UNREAD_TOTAL, "result" => "dropped").increment(1);
                }
            }
            _ = tick.tick() => {
                let due = lock(&d.timers).due(Instant::now());
                for channel in due {
                    let d = d.clone();
                    tokio::spawn(async move { d.check(channel).await });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn timers_coalesce_and_stay_bounded() {
        let mut t = Timers {
            pending: HashMap::new(),
            pushed: HashMap::new(),
            max: 2,
        };
        let now = Instant::now();
        let later = now + Duration::from_secs(30);
        assert!(t.start("a", later));
        assert!(
            t.start("a", later + Duration::from_secs(5)),
            "a running timer is kept"
        );
        assert!(t.start("b", later));
        assert!(!t.start("c", later), "full: dropped");
        assert!(t.due(now).is_empty());
        let mut due = t.due(later);
        due.sort();
        assert_eq!(due, vec!["a", "b"], "the first message's time counts");
        assert!(t.start("c", later), "room again");
        assert!(t.first_for("a", "u", 3));
        assert!(!t.first_for("a", "u", 3), "one push per head");
        assert!(t.first_for("a", "u", 4));
        assert_eq!(
            channel_of(&subjects::channel_subject("dm:#a,b")).as_deref(),
            Some("dm:#a,b")
        );
        assert_eq!(collapse_id("x").len(), 24);
    }
}
