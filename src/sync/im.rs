//! IM conversations on the store, for edges and the server API (over NATS,
//! `SyncRequest::Im`) and for the HTTP conversation list: membership,
//! markers (clamped to the channel's head, forward only) and the
//! conversation list and unread counts (composed by `conversations`).
//!
//! The asker has validated the channel name and the caller's permission;
//! this checks only what needs the store or the namespace's history
//! (markers in a channel without history are `NoHistory`, before any write).
//! Unlike history, these calls write the store (membership and marker rows;
//! never publications).
//!
//! Knows nothing of sessions, pushes or HTTP.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde_json::value::RawValue;

use super::conversations::{self, Cursor, Entry, Last, Page, Query, Unread, View};
use super::wire::{ImRequest, Marked, MemberMarkers, SyncReply};
use super::{ReadError, SyncService};
use crate::store::{Direction, ReadRange, Standing};

/// Conversations whose last publication one page reads at once.
const LAST_READS: usize = 32;

/// The members of a user-limited channel (`dm:#alice,bob`): its listed
/// users, always — before anyone published or set a marker there, their
/// member rows do not exist yet — by user id after `after`, with the markers
/// of the rows that do (`rows`, the store's page from the same `after`).
fn listed_members(
    listed: &[&str],
    rows: impl Iterator<Item = MemberMarkers>,
    after: &str,
    limit: usize,
) -> Vec<MemberMarkers> {
    let rows: std::collections::HashMap<String, MemberMarkers> =
        rows.map(|m| (m.user.clone(), m)).collect();
    let mut users: Vec<&str> = listed.iter().copied().filter(|u| *u > after).collect();
    users.sort_unstable();
    users.dedup();
    users
        .into_iter()
        .take(limit)
        .map(|u| {
            rows.get(u).cloned().unwrap_or(MemberMarkers {
                user: u.to_string(),
                read: 0,
                delivered: 0,
            })
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SyncService {
    async fn call<T>(
        &self,
        f: impl Future<Output = crate::store::StoreResult<T>>,
    ) -> Result<T, ReadError> {
        self.reader.timed(f).await.map_err(|e| ReadError::from(&e))
    }

    /// Answers one IM request.
    pub async fn im(&self, req: ImRequest) -> Result<SyncReply, ReadError> {
        let store = self.reader.store();
        Ok(match req {
            ImRequest::AddMembers { channel, users } => {
                let users: Vec<&str> = users.iter().map(String::as_str).collect();
                SyncReply::Users(
                    self.call(store.add_members(&channel, &users, now_ms()))
                        .await?,
                )
            }
            ImRequest::RemoveMembers { channel, users } => {
                let users: Vec<&str> = users.iter().map(String::as_str).collect();
                SyncReply::Users(
                    self.call(store.remove_members(&channel, &users, now_ms()))
                        .await?,
                )
            }
            ImRequest::IsMember { channel, user } => {
                SyncReply::Flag(self.call(store.is_member(&channel, &user)).await?)
            }
            ImRequest::Members {
                channel,
                after,
                limit,
            } => {
                let rows = self.call(store.members(&channel, &after, limit)).await?;
                let rows = rows.into_iter().map(|(user, m)| MemberMarkers {
                    user,
                    read: m.read,
                    delivered: m.delivered,
                });
                let listed = self
                    .channel(&channel)
                    .map(|c| c.allowed_users)
                    .unwrap_or_default();
                SyncReply::Members(if listed.is_empty() {
                    rows.collect()
                } else {
                    listed_members(&listed, rows, &after, limit)
                })
            }
            ImRequest::Mark {
                user,
                channel,
                read,
                delivered,
            } => SyncReply::Marked(self.mark(&user, &channel, read, delivered).await?),
            ImRequest::Conversations {
                user,
                limit,
                cursor,
                since,
            } => {
                let cursor = match cursor {
                    None => None,
                    Some(c) => Some(Cursor::decode(&c).ok_or(ReadError::BadChannel)?),
                };
                SyncReply::Conversations(
                    self.conversations(
                        &user,
                        Query {
                            limit,
                            cursor,
                            since,
                        },
                    )
                    .await?,
                )
            }
            ImRequest::Unread { user } => SyncReply::Unread(self.unread(&user).await?),
        })
    }

    /// Whether `user` is a member of `channel` (the HTTP history check).
    pub async fn is_member(&self, channel: &str, user: &str) -> Result<bool, ReadError> {
        self.call(self.reader.store().is_member(channel, user))
            .await
    }

    /// Moves `user`'s markers in `channel` forward, each clamped to the
    /// channel's head (read implies delivered, in the store).
    pub async fn mark(
        &self,
        user: &str,
        channel: &str,
        read: u64,
        delivered: u64,
    ) -> Result<Marked, ReadError> {
        if !self.channel(channel)?.options.history {
            return Err(ReadError::NoHistory);
        }
        let store = self.reader.store();
        let head = self.call(store.position(channel)).await?.head;
        let (m, changed) = self
            .call(store.advance_markers(
                user,
                channel,
                read.min(head),
                delivered.min(head),
                now_ms(),
            ))
            .await?;
        Ok(Marked {
            read: m.read,
            delivered: m.delivered,
            changed,
            head,
        })
    }

    /// The user's conversations with their channels' positions.
    async fn entries(&self, user: &str) -> Result<Vec<Entry>, ReadError> {
        let store = self.reader.store();
        let rows = self.call(store.conversations(user)).await?;
        let channels: Vec<&str> = rows.iter().map(|r| r.channel.as_str()).collect();
        let positions = self.call(store.positions(&channels)).await?;
        Ok(rows
            .into_iter()
            .zip(positions.iter())
            .map(|(row, p)| Entry::new(row, p))
            .collect())
    }

    /// One page of the user's conversation list (see `conversations`).
    pub async fn conversations(&self, user: &str, q: Query) -> Result<Page, ReadError> {
        let version = now_ms();
        let selection = conversations::select(self.entries(user).await?, &q);
        // By index: a closure over `&Entry` items trips higher-ranked
        // lifetime inference inside the handler futures.
        let entries = &selection.entries;
        let lasts: Vec<Result<Option<Last>, ReadError>> = futures::stream::iter(0..entries.len())
            .map(|i| async move { self.last(&entries[i]).await })
            .buffered(LAST_READS)
            .collect()
            .await;
        let mut views = Vec::with_capacity(lasts.len());
        for (e, last) in selection.entries.iter().zip(lasts) {
            views.push(View::new(e, last?));
        }
        Ok(Page {
            conversations: views,
            cursor: selection.next.map(|c| c.encode()),
            version,
            removed: selection.removed,
        })
    }

    /// The head publication of a conversation, if it still has one.
    async fn last(&self, e: &Entry) -> Result<Option<Last>, ReadError> {
        if e.head == 0 || e.row.standing == Standing::Removed {
            return Ok(None);
        }
        let range = ReadRange {
            after: 0,
            before: None,
            limit: 1,
            direction: Direction::Backward,
        };
        let rows = self
            .call(self.reader.store().read(&e.row.channel, range))
            .await?;
        let Some(p) = rows.into_iter().next() else {
            return Ok(None);
        };
        let raw = |b: &[u8]| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| RawValue::from_string(s.to_string()).ok())
        };
        let Some(data) = raw(&p.data) else {
            return Ok(None);
        };
        Ok(Some(Last {
            offset: p.offset,
            data,
            info: p.info.as_deref().and_then(raw),
            time: p.time_ms,
        }))
    }

    /// `{total, conversations}` over the user's conversations.
    pub async fn unread(&self, user: &str) -> Result<Unread, ReadError> {
        Ok(conversations::unread(&self.entries(user).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(user: &str, read: u64) -> MemberMarkers {
        MemberMarkers {
            user: user.into(),
            read,
            delivered: read,
        }
    }

    #[test]
    fn a_user_limited_channel_lists_its_users_with_or_without_rows() {
        let listed = ["bob", "alice", "bob"];
        let none = listed_members(&listed, std::iter::empty(), "", 10);
        assert_eq!(none, vec![m("alice", 0), m("bob", 0)]);
        let some = listed_members(&listed, [m("bob", 4)].into_iter(), "", 10);
        assert_eq!(some, vec![m("alice", 0), m("bob", 4)]);
        assert_eq!(
            listed_members(&listed, std::iter::empty(), "alice", 10),
            vec![m("bob", 0)]
        );
        assert_eq!(
            listed_members(&listed, std::iter::empty(), "", 1),
            vec![m("alice", 0)]
        );
    }
}
