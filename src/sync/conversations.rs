//! The conversation list and unread counts, composed from a user's
//! conversation set (standing and markers, `store::Conversation`) and the
//! channels' positions: the one place that orders, pages and counts them.
//! `SyncService::conversations` and `SyncService::unread` call it; the edge's
//! `herald.conversations` / `herald.unread`, the server API's
//! `conversations` / `unread` and `GET /api/v1/users/me/conversations` all
//! reach those.
//!
//! Order: last activity, newest first — the head publication's time, or for
//! a conversation without publications the time its row last changed — then
//! channel name. A cursor names the last item of a page (activity, channel);
//! the next page starts strictly after it, so a page boundary never repeats
//! or skips an item that did not move meanwhile.
//!
//! Incremental sync: every answer carries a `version` (the server's clock,
//! read before the store). Asked with `since = version`, the answer holds the
//! conversations whose head or row changed at or after `since` minus
//! [`SINCE_OVERLAP_MS`] (clock skew between processes; a repeated item is
//! harmless, the device replaces it) and, in `removed`, the channels the user
//! was removed from since then.
//!
//! Pure: knows the store's row types, not the store, NATS or HTTP.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::store::{Conversation, Position, Standing};

/// Conversations in one page when the caller does not say.
pub const DEFAULT_PAGE: usize = 50;
/// Most conversations in one page; a larger `limit` is 106.
pub const MAX_PAGE: usize = 500;
/// How far before `since` an incremental sync looks (clock skew between the
/// processes that stamp rows and the one that answers).
pub const SINCE_OVERLAP_MS: u64 = 2_000;

/// One conversation with its channel's position.
#[derive(Debug, Clone)]
pub struct Entry {
    pub row: Conversation,
    pub head: u64,
    /// The head publication's time (ms), 0 when the channel is empty.
    pub time_ms: u64,
}

impl Entry {
    pub fn new(row: Conversation, position: &Position) -> Self {
        Self {
            row,
            head: position.head,
            time_ms: position.time_ms,
        }
    }

    /// Last activity: the head's time, or the row's for an empty channel.
    fn activity(&self) -> u64 {
        if self.time_ms > 0 {
            self.time_ms
        } else {
            self.row.updated_ms
        }
    }

    /// The last change of anything the list shows.
    fn changed(&self) -> u64 {
        self.time_ms.max(self.row.updated_ms)
    }

    /// `head − read`, never negative.
    pub fn unread(&self) -> u64 {
        self.head.saturating_sub(self.row.markers.read)
    }
}

/// Where a page starts: after this (activity, channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    activity: u64,
    channel: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.activity, self.channel))
    }

    /// `None` for a cursor this module did not make.
    pub fn decode(s: &str) -> Option<Self> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let (activity, channel) = raw.split_once(':')?;
        Some(Self {
            activity: activity.parse().ok()?,
            channel: channel.to_string(),
        })
    }

    fn of(e: &Entry) -> Self {
        Self {
            activity: e.activity(),
            channel: e.row.channel.clone(),
        }
    }
}

/// What a page asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub limit: usize,
    pub cursor: Option<Cursor>,
    /// Only what changed at or after this `version` (incremental sync).
    pub since: Option<u64>,
}

/// The chosen entries of one page, the cursor of the next (if any) and, for
/// an incremental sync's first page, the channels the user was removed from.
#[derive(Debug)]
pub struct Selection {
    pub entries: Vec<Entry>,
    pub next: Option<Cursor>,
    pub removed: Vec<String>,
}

/// Orders, filters and pages a user's conversations.
pub fn select(mut entries: Vec<Entry>, q: &Query) -> Selection {
    let floor = q.since.map(|s| s.saturating_sub(SINCE_OVERLAP_MS));
    let mut removed = Vec::new();
    entries.retain(|e| {
        if floor.is_some_and(|f| e.changed() < f) {
            return false;
        }
        if e.row.standing == Standing::Removed {
            if floor.is_some() && q.cursor.is_none() {
                removed.push(e.row.channel.clone());
            }
            return false;
        }
        true
    });
    removed.sort();
    entries.sort_by(|a, b| {
        b.activity()
            .cmp(&a.activity())
            .then_with(|| a.row.channel.cmp(&b.row.channel))
    });
    let start = match &q.cursor {
        None => 0,
        Some(c) => entries.partition_point(|e| {
            e.activity() > c.activity || (e.activity() == c.activity && e.row.channel <= c.channel)
        }),
    };
    let limit = q.limit.max(1);
    let more = entries.len() > start + limit;
    let page: Vec<Entry> = entries.into_iter().skip(start).take(limit).collect();
    let next = if more {
        page.last().map(Cursor::of)
    } else {
        None
    };
    Selection {
        entries: page,
        next,
        removed,
    }
}

/// `{total, conversations}`: unread messages over every conversation the
/// user has (removed ones excluded), and how many have any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unread {
    pub total: u64,
    pub conversations: u64,
}

pub fn unread(entries: &[Entry]) -> Unread {
    let mut u = Unread::default();
    for e in entries
        .iter()
        .filter(|e| e.row.standing != Standing::Removed)
    {
        let n = e.unread();
        if n > 0 {
            u.total += n;
            u.conversations += 1;
        }
    }
    u
}

/// The head publication as the list shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Last {
    pub offset: u64,
    pub data: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    /// ms since the Unix epoch.
    pub time: u64,
}

/// One conversation of the list.
#[derive(Debug, Serialize, Deserialize)]
pub struct View {
    pub channel: String,
    pub head: u64,
    pub read: u64,
    pub delivered: u64,
    pub unread: u64,
    /// Absent when the channel has no publication (or it expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Last>,
}

impl View {
    pub fn new(e: &Entry, last: Option<Last>) -> Self {
        Self {
            channel: e.row.channel.clone(),
            head: e.head,
            read: e.row.markers.read,
            delivered: e.row.markers.delivered,
            unread: e.unread(),
            last,
        }
    }
}

/// The answer of `herald.conversations` and its server and HTTP forms.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    pub conversations: Vec<View>,
    /// The next page's cursor; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Pass as `since` to get only what changed after this answer.
    pub version: u64,
    /// Incremental sync only: channels the user is no longer a member of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Markers;

    fn entry(channel: &str, standing: Standing, updated: u64, head: u64, time: u64) -> Entry {
        Entry {
            row: Conversation {
                channel: channel.into(),
                standing,
                markers: Markers {
                    read: 2,
                    delivered: 3,
                },
                updated_ms: updated,
            },
            head,
            time_ms: time,
        }
    }

    fn names(s: &Selection) -> Vec<&str> {
        s.entries.iter().map(|e| e.row.channel.as_str()).collect()
    }

    fn sample() -> Vec<Entry> {
        vec![
            entry("a", Standing::Member, 10, 5, 100),
            entry("b", Standing::Participant, 10, 9, 300),
            entry("c", Standing::Member, 250, 0, 0),
            entry("d", Standing::Removed, 400, 7, 200),
            entry("e", Standing::Member, 10, 1, 300),
        ]
    }

    #[test]
    fn newest_activity_first_and_paged_without_repeats() {
        let q = Query {
            limit: 2,
            ..Query::default()
        };
        let first = select(sample(), &q);
        assert_eq!(names(&first), ["b", "e"]);
        let cursor = first.next.clone().expect("more");
        let back = Cursor::decode(&cursor.encode()).expect("round trip");
        assert_eq!(back, cursor);
        let second = select(
            sample(),
            &Query {
                limit: 2,
                cursor: Some(back),
                ..Query::default()
            },
        );
        assert_eq!(names(&second), ["c", "a"]);
        assert!(second.next.is_none(), "last page");
        assert!(
            first.removed.is_empty(),
            "removed only in an incremental sync"
        );
        assert!(Cursor::decode("not a cursor!").is_none());
    }

    #[test]
    fn incremental_sync_has_changes_and_removals() {
        let s = select(
            sample(),
            &Query {
                limit: 10,
                since: Some(250 + SINCE_OVERLAP_MS),
                ..Query::default()
            },
        );
        assert_eq!(names(&s), ["b", "e", "c"]);
        assert_eq!(s.removed, ["d"]);
        let none = select(
            sample(),
            &Query {
                limit: 10,
                since: Some(1_000 + SINCE_OVERLAP_MS),
                ..Query::default()
            },
        );
        assert!(none.entries.is_empty() && none.removed.is_empty());
    }

    #[test]
    fn unread_is_exact_and_never_negative() {
        let mut v = sample();
        // Read past the head (a head reset): 0, not negative.
        v[0].row.markers.read = 50;
        let u = unread(&v);
        // b: 9-2, c: 0, d removed, e: 1-2 → 0.
        assert_eq!(
            u,
            Unread {
                total: 7,
                conversations: 1
            }
        );
    }
}
