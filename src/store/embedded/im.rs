//! The embedded store's IM rows: memberships, markers and conversation sets
//! (layout in `schema/README.md`, "IM conversations").
//!
//! Owns two keyspaces: `conversations` (user → channel → standing, markers,
//! updated_ms), the source of truth, and `members` (channel → user), the
//! index `members` pages through, kept in step with it in the same write
//! batch. Every change is a read-modify-write, so all of them run on one
//! thread (`herald-store-im`), which makes them atomic and monotonic without
//! a lock: the calls queued while a commit is fsynced are applied in order on
//! top of what the ones before them left, and go out as one fjall batch with
//! one fsync (group commit, as for appends, but on its own thread and queue so
//! it never delays an append). Each call returns after the fsync that made it
//! durable. Reads are snapshot point reads and range scans.
//!
//! Does not know who may be a member or set a marker, nor heads (the caller
//! clamps markers).

use std::collections::HashMap;
use std::sync::mpsc;

use fjall::{PersistMode, Readable};
use tokio::sync::oneshot;

use super::{Inner, VALUE_V1, channel_prefix, map_err};
use crate::store::{Conversation, Markers, Standing, StoreError, StoreErrorKind, StoreResult};

/// One change to IM rows, queued for the IM committer.
pub(super) enum Op {
    Add {
        channel: String,
        users: Vec<String>,
        now_ms: u64,
    },
    Remove {
        channel: String,
        users: Vec<String>,
        now_ms: u64,
    },
    Advance {
        user: String,
        channel: String,
        read: u64,
        delivered: u64,
        now_ms: u64,
    },
}

/// What an [`Op`] returns.
pub(super) enum Done {
    /// `Add`: the users that were not members; `Remove`: those that were.
    Users(Vec<String>),
    /// `Advance`: the markers after it, and whether they moved.
    Markers(Markers, bool),
}

/// One call waiting for an IM group commit.
pub(super) type Job = (Op, oneshot::Sender<StoreResult<Done>>);

/// One stored conversation row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    standing: Standing,
    markers: Markers,
    updated_ms: u64,
}

/// A row as a group of changes sees it: what is stored, what it becomes.
struct Slot {
    stored: Option<Row>,
    now: Option<Row>,
}

/// Key in `conversations`: the escaped user, then the channel as is.
pub(super) fn conversation_key(user: &str, channel: &str) -> Vec<u8> {
    let mut out = channel_prefix(user);
    out.extend_from_slice(channel.as_bytes());
    out
}

/// Key in `members`: the escaped channel, then the user as is (so one
/// channel's members are adjacent and sorted by user id).
pub(super) fn member_key(channel: &str, user: &str) -> Vec<u8> {
    let mut out = channel_prefix(channel);
    out.extend_from_slice(user.as_bytes());
    out
}

/// v1: version, standing (u8), read (u64 BE), delivered (u64 BE), updated_ms (u64 BE).
fn encode_row(row: &Row) -> Vec<u8> {
    let mut out = Vec::with_capacity(26);
    out.push(VALUE_V1);
    out.push(row.standing.code());
    out.extend_from_slice(&row.markers.read.to_be_bytes());
    out.extend_from_slice(&row.markers.delivered.to_be_bytes());
    out.extend_from_slice(&row.updated_ms.to_be_bytes());
    out
}

fn decode_row(value: &[u8]) -> Option<Row> {
    let (&VALUE_V1, rest) = value.split_first()? else {
        return None;
    };
    let (&standing, rest) = rest.split_first()?;
    let (read, rest) = rest.split_first_chunk::<8>()?;
    let (delivered, rest) = rest.split_first_chunk::<8>()?;
    let updated = <[u8; 8]>::try_from(rest).ok()?;
    Some(Row {
        standing: Standing::from_code(standing)?,
        markers: Markers {
            read: u64::from_be_bytes(*read),
            delivered: u64::from_be_bytes(*delivered),
        },
        updated_ms: u64::from_be_bytes(updated),
    })
}

fn corrupt_row(user: &str, channel: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!("undecodable conversation row of user {user:?} in channel {channel:?}"),
    )
}

impl Inner {
    /// The IM committer thread: waits for a change, takes every other one
    /// queued meanwhile, commits them as one group and answers each. Ends
    /// when the store is dropped. A panic inside a commit fails that group's
    /// calls (`Unavailable`) and the thread carries on.
    pub(super) fn im_loop(&self, jobs: &mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let (ops, waiters): (Vec<_>, Vec<_>) =
                std::iter::once(first).chain(jobs.try_iter()).unzip();
            let n = ops.len();
            let results =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.im_commit(ops)))
                    .unwrap_or_else(|_| {
                        tracing::error!("an IM group commit panicked; its calls failed");
                        (0..n)
                            .map(|_| {
                                Err(StoreError::new(
                                    StoreErrorKind::Unavailable,
                                    "the IM group commit failed unexpectedly",
                                ))
                            })
                            .collect()
                    });
            for (waiter, result) in waiters.into_iter().zip(results) {
                // A caller that gave up no longer waits; its change stands.
                let _ = waiter.send(result);
            }
        }
    }

    /// Applies `ops` in order, each on top of what the ones before it left,
    /// then writes every changed row (and its `members` entry) as one fjall
    /// batch with one fsync. An op whose rows cannot be read fails alone and
    /// changes nothing; a failed commit fails every op.
    fn im_commit(&self, ops: Vec<Op>) -> Vec<StoreResult<Done>> {
        let mut slots: HashMap<(String, String), Slot> = HashMap::new();
        let mut results: Vec<StoreResult<Done>> = Vec::with_capacity(ops.len());
        for op in ops {
            let loaded = match &op {
                Op::Add { channel, users, .. } | Op::Remove { channel, users, .. } => users
                    .iter()
                    .try_for_each(|user| self.load(&mut slots, user, channel)),
                Op::Advance { user, channel, .. } => self.load(&mut slots, user, channel),
            };
            if let Err(e) = loaded {
                results.push(Err(e));
                continue;
            }
            results.push(Ok(apply(&mut slots, op)));
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        let mut changed = 0usize;
        for ((user, channel), slot) in &slots {
            let Some(row) = slot.now else { continue };
            if slot.stored == Some(row) {
                continue;
            }
            changed += 1;
            batch.insert(
                &self.conversations,
                conversation_key(user, channel),
                encode_row(&row),
            );
            let was_member = slot.stored.is_some_and(|r| r.standing == Standing::Member);
            match (was_member, row.standing == Standing::Member) {
                (false, true) => batch.insert(&self.members, member_key(channel, user), []),
                (true, false) => batch.remove(&self.members, member_key(channel, user)),
                _ => {}
            }
        }
        if changed == 0 {
            return results;
        }
        if let Err(e) = batch.commit().map_err(|e| map_err("committing IM rows", e)) {
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(StoreError::new(e.kind, e.message.clone()));
            }
        }
        results
    }

    /// Reads a row into `slots` unless a change before it in the group did.
    fn load(
        &self,
        slots: &mut HashMap<(String, String), Slot>,
        user: &str,
        channel: &str,
    ) -> StoreResult<()> {
        let id = (user.to_owned(), channel.to_owned());
        if slots.contains_key(&id) {
            return Ok(());
        }
        let stored = self.stored_row(user, channel)?;
        slots.insert(
            id,
            Slot {
                stored,
                now: stored,
            },
        );
        Ok(())
    }

    fn stored_row(&self, user: &str, channel: &str) -> StoreResult<Option<Row>> {
        self.conversations
            .get(conversation_key(user, channel))
            .map_err(|e| map_err("reading a conversation row", e))?
            .map(|v| decode_row(&v).ok_or_else(|| corrupt_row(user, channel)))
            .transpose()
    }

    pub(super) fn is_member(&self, channel: &str, user: &str) -> StoreResult<bool> {
        self.db
            .snapshot()
            .contains_key(&self.members, member_key(channel, user))
            .map_err(|e| map_err("reading a membership", e))
    }

    pub(super) fn markers(&self, user: &str, channel: &str) -> StoreResult<Markers> {
        Ok(self
            .stored_row(user, channel)?
            .map(|r| r.markers)
            .unwrap_or_default())
    }

    pub(super) fn members(
        &self,
        channel: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, Markers)>> {
        use std::ops::Bound;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let snapshot = self.db.snapshot();
        let prefix = channel_prefix(channel);
        let start = if after.is_empty() {
            Bound::Included(prefix.clone())
        } else {
            Bound::Excluded(member_key(channel, after))
        };
        let mut out = Vec::new();
        for guard in snapshot.range(&self.members, (start, Bound::Unbounded)) {
            let key = guard.key().map_err(|e| map_err("scanning members", e))?;
            let Some(user) = key.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let user = std::str::from_utf8(user).map_err(|_| {
                StoreError::new(
                    StoreErrorKind::Corrupt,
                    format!("a member of channel {channel:?} is not UTF-8"),
                )
            })?;
            let markers = snapshot
                .get(&self.conversations, conversation_key(user, channel))
                .map_err(|e| map_err("reading a conversation row", e))?
                .map(|v| decode_row(&v).ok_or_else(|| corrupt_row(user, channel)))
                .transpose()?
                .map(|r| r.markers)
                .unwrap_or_default();
            out.push((user.to_owned(), markers));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub(super) fn conversations(&self, user: &str) -> StoreResult<Vec<Conversation>> {
        let prefix = channel_prefix(user);
        let mut out = Vec::new();
        for guard in self.db.snapshot().prefix(&self.conversations, &prefix) {
            let (key, value) = guard
                .into_inner()
                .map_err(|e| map_err("scanning conversations", e))?;
            let channel = key
                .get(prefix.len()..)
                .and_then(|c| std::str::from_utf8(c).ok())
                .ok_or_else(|| corrupt_row(user, "?"))?;
            let row = decode_row(&value).ok_or_else(|| corrupt_row(user, channel))?;
            out.push(Conversation {
                channel: channel.to_owned(),
                standing: row.standing,
                markers: row.markers,
                updated_ms: row.updated_ms,
            });
        }
        Ok(out)
    }
}

/// Applies one op to rows already loaded into `slots`.
fn apply(slots: &mut HashMap<(String, String), Slot>, op: Op) -> Done {
    fn slot<'a>(
        slots: &'a mut HashMap<(String, String), Slot>,
        user: &str,
        channel: &str,
    ) -> Option<&'a mut Option<Row>> {
        slots
            .get_mut(&(user.to_owned(), channel.to_owned()))
            .map(|s| &mut s.now)
    }
    match op {
        Op::Add {
            channel,
            users,
            now_ms,
        } => {
            let mut added = Vec::new();
            for user in users {
                let Some(row) = slot(slots, &user, &channel) else {
                    continue;
                };
                let (standing, changed) = Standing::added(row.map(|r| r.standing));
                if changed {
                    *row = Some(Row {
                        standing,
                        markers: row.map(|r| r.markers).unwrap_or_default(),
                        updated_ms: now_ms,
                    });
                    added.push(user);
                }
            }
            Done::Users(added)
        }
        Op::Remove {
            channel,
            users,
            now_ms,
        } => {
            let mut removed = Vec::new();
            for user in users {
                let Some(row) = slot(slots, &user, &channel) else {
                    continue;
                };
                let (standing, changed) = Standing::removed(row.map(|r| r.standing));
                if let (true, Some(standing), Some(r)) = (changed, standing, row.as_mut()) {
                    r.standing = standing;
                    r.updated_ms = now_ms;
                    removed.push(user);
                }
            }
            Done::Users(removed)
        }
        Op::Advance {
            user,
            channel,
            read,
            delivered,
            now_ms,
        } => {
            let Some(row) = slot(slots, &user, &channel) else {
                return Done::Markers(Markers::default(), false);
            };
            match row {
                Some(r) => {
                    let after = r.markers.advanced(read, delivered);
                    let moved = after != r.markers;
                    if moved {
                        r.markers = after;
                        r.updated_ms = now_ms;
                    }
                    Done::Markers(after, moved)
                }
                None => {
                    let after = Markers::default().advanced(read, delivered);
                    *row = Some(Row {
                        standing: Standing::Participant,
                        markers: after,
                        updated_ms: now_ms,
                    });
                    Done::Markers(after, after != Markers::default())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_refuse_garbage() {
        let row = Row {
            standing: Standing::Removed,
            markers: Markers {
                read: 4097,
                delivered: u64::MAX,
            },
            updated_ms: 1_700_000_000_000,
        };
        assert_eq!(decode_row(&encode_row(&row)), Some(row));
        let mut bad = encode_row(&row);
        bad[1] = 9;
        assert_eq!(decode_row(&bad), None, "unknown standing");
        assert_eq!(decode_row(&encode_row(&row)[..25]), None, "short");
        assert_eq!(decode_row(&[2]), None, "unknown version");
    }

    #[test]
    fn one_channels_members_sort_by_user_and_do_not_mix_with_another() {
        assert!(member_key("c", "alice") < member_key("c", "bob"));
        assert!(member_key("c", "bob") < member_key("c", "bobby"));
        assert!(member_key("c", "zz") < member_key("c\0", ""));
        assert!(member_key("c", "\u{10ffff}") < member_key("ca", ""));
        assert!(!member_key("ca", "x").starts_with(&channel_prefix("c")));
        assert!(!conversation_key("ua", "x").starts_with(&channel_prefix("u")));
    }
}

#[cfg(test)]
mod store_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::EmbeddedStore;
    use crate::store::{Conversation, Markers, Standing, Store, StoreOptions};

    fn open(dir: &std::path::Path) -> EmbeddedStore {
        EmbeddedStore::open(
            dir,
            StoreOptions {
                idempotency_retention: Duration::from_secs(3600),
            },
        )
        .expect("open")
    }

    fn m(read: u64, delivered: u64) -> Markers {
        Markers { read, delivered }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn membership_is_idempotent_and_removed_rows_keep_markers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let added = store
            .add_members("g", &["bob", "alice", "bob"], 10)
            .await
            .expect("add");
        assert_eq!(added, ["bob", "alice"], "input order, each once");
        assert!(
            store
                .add_members("g", &["alice"], 11)
                .await
                .expect("add")
                .is_empty()
        );
        assert!(store.is_member("g", "alice").await.expect("is_member"));
        assert!(!store.is_member("g", "carol").await.expect("is_member"));
        store
            .advance_markers("alice", "g", 4, 0, 12)
            .await
            .expect("advance");
        assert_eq!(
            store
                .remove_members("g", &["alice", "carol", "alice"], 13)
                .await
                .expect("remove"),
            ["alice"]
        );
        assert!(!store.is_member("g", "alice").await.expect("is_member"));
        assert_eq!(
            store.conversations("alice").await.expect("conversations"),
            [Conversation {
                channel: "g".into(),
                standing: Standing::Removed,
                markers: m(4, 4),
                updated_ms: 13,
            }]
        );
        assert_eq!(
            store.members("g", "", 10).await.expect("members"),
            [("bob".to_string(), m(0, 0))]
        );
        // Added back: a member again, markers kept.
        assert_eq!(
            store.add_members("g", &["alice"], 14).await.expect("add"),
            ["alice"]
        );
        assert_eq!(
            store.members("g", "", 10).await.expect("members"),
            [("alice".to_string(), m(4, 4)), ("bob".to_string(), m(0, 0))]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_advances_never_move_a_marker_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(open(dir.path()));
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut seen = Markers::default();
                    for i in 0..50u64 {
                        // Interleaved, out of order offsets.
                        let read = (i * 7 + t * 13) % 200;
                        let delivered = (i * 11 + t * 5) % 300;
                        let (now, _) = store
                            .advance_markers("u", "c", read, delivered, i)
                            .await
                            .expect("advance");
                        assert!(now.read >= read && now.delivered >= delivered.max(now.read));
                        assert!(now.read >= seen.read && now.delivered >= seen.delivered);
                        seen = now;
                    }
                    seen
                })
            })
            .collect();
        let mut best = Markers::default();
        for t in tasks {
            let seen = t.await.expect("task");
            best = m(best.read.max(seen.read), best.delivered.max(seen.delivered));
        }
        let stored = store.markers("u", "c").await.expect("markers");
        let (max_read, max_delivered) = (0..8u64)
            .flat_map(|t| (0..50u64).map(move |i| ((i * 7 + t * 13) % 200, (i * 11 + t * 5) % 300)))
            .fold((0, 0), |(r, d), (a, b)| (r.max(a), d.max(b)));
        assert_eq!(stored, m(max_read, max_delivered.max(max_read)));
        assert!(stored.read >= best.read && stored.delivered >= best.delivered);
    }

    #[tokio::test]
    async fn advances_create_a_participant_row_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = open(dir.path());
            assert_eq!(
                store
                    .advance_markers("u", "open", 0, 0, 5)
                    .await
                    .expect("advance"),
                (m(0, 0), false)
            );
            assert_eq!(
                store
                    .advance_markers("u", "open", 3, 1, 6)
                    .await
                    .expect("advance"),
                (m(3, 3), true)
            );
            assert_eq!(
                store
                    .advance_markers("u", "open", 2, 3, 7)
                    .await
                    .expect("advance"),
                (m(3, 3), false),
                "nothing moved"
            );
        }
        let store = open(dir.path());
        assert_eq!(
            store.conversations("u").await.expect("conversations"),
            [Conversation {
                channel: "open".into(),
                standing: Standing::Participant,
                markers: m(3, 3),
                updated_ms: 6,
            }]
        );
        assert_eq!(store.markers("u", "other").await.expect("markers"), m(0, 0));
    }
}
