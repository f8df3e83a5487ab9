//! The ScyllaDB store's IM rows (`003_conversations.cql`; layout and reasons
//! in `schema/README.md`, "IM conversations").
//!
//! `conversations` ((user), channel) is the source of truth for standings and
//! markers; `channel_members` ((channel), user) lists a channel's current
//! members for `members` and `is_member`. No lightweight transactions:
//!
//! - Markers are monotonic by cell timestamp: `read` and `delivered` are
//!   written `USING TIMESTAMP <offset + 1>`, so the greatest offset wins
//!   whatever the order in which concurrent writes arrive, on any replica.
//!   An advance reads the row first (to skip a write that moves nothing, and
//!   to know whether the row is new), writes the moved cells in one
//!   single-partition batch, then reads the row back for its answer.
//! - Membership changes carry a clock timestamp (microseconds, strictly
//!   increasing per handle) and write the user's `standing` and the channel's
//!   `channel_members` row (inserted on add, deleted on remove) in one logged
//!   batch at the same timestamp, so concurrent adds and removes of a user end
//!   in the same state in both tables (last write wins; on a tie the removal
//!   wins in both: a tombstone beats a write, and `removed` (3) beats
//!   `member` (1)).
//! - The `participant` standing of a row an advance creates is written
//!   `USING TIMESTAMP 1`, below any membership change, so it never overrides
//!   one.
//!
//! The users an add / remove returns come from a read before the write, so
//! under a concurrent change of the same user two calls may both report it;
//! the stored state is still one of the two outcomes.
//!
//! Does not know who may be a member or set a marker, nor heads.

use std::sync::atomic::{AtomicI64, Ordering};

use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::{all_bounded, corrupt, execution_error, from_i64, prepare, rows_result, to_i64};
use crate::store::{Conversation, Markers, Standing, StoreError, StoreErrorKind, StoreResult};

/// Users per logged membership batch (two statements each): far below the
/// batch size thresholds.
const MEMBERSHIP_BATCH: usize = 50;
/// Rows per query when paging through a partition.
const PAGE: usize = 1000;

/// The prepared statements of the IM rows.
pub(super) struct Statements {
    read_row: PreparedStatement,
    list_first: PreparedStatement,
    list_after: PreparedStatement,
    set_standing: PreparedStatement,
    set_participant: PreparedStatement,
    set_read: PreparedStatement,
    set_delivered: PreparedStatement,
    touch: PreparedStatement,
    insert_member: PreparedStatement,
    delete_member: PreparedStatement,
    member_exists: PreparedStatement,
    members_first: PreparedStatement,
    members_after: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> StoreResult<Self> {
        let conv = |set: &str| {
            format!(
                "UPDATE {ks}.conversations USING TIMESTAMP ? SET {set} WHERE user = ? AND channel = ?"
            )
        };
        Ok(Self {
            read_row: prepare(
                session,
                format!(
                    "SELECT standing, read, delivered FROM {ks}.conversations \
                     WHERE user = ? AND channel = ?"
                ),
            )
            .await?,
            list_first: prepare(
                session,
                format!(
                    "SELECT channel, standing, read, delivered, updated_ms FROM {ks}.conversations \
                     WHERE user = ? LIMIT ?"
                ),
            )
            .await?,
            list_after: prepare(
                session,
                format!(
                    "SELECT channel, standing, read, delivered, updated_ms FROM {ks}.conversations \
                     WHERE user = ? AND channel > ? LIMIT ?"
                ),
            )
            .await?,
            set_standing: prepare(session, conv("standing = ?, updated_ms = ?")).await?,
            set_participant: prepare(
                session,
                format!(
                    "UPDATE {ks}.conversations USING TIMESTAMP 1 SET standing = {} \
                     WHERE user = ? AND channel = ?",
                    Standing::Participant.code()
                ),
            )
            .await?,
            set_read: prepare(session, conv("read = ?")).await?,
            set_delivered: prepare(session, conv("delivered = ?")).await?,
            touch: prepare(session, conv("updated_ms = ?")).await?,
            insert_member: prepare(
                session,
                format!(
                    "INSERT INTO {ks}.channel_members (channel, user, since_ms) VALUES (?, ?, ?) \
                     USING TIMESTAMP ?"
                ),
            )
            .await?,
            delete_member: prepare(
                session,
                format!(
                    "DELETE FROM {ks}.channel_members USING TIMESTAMP ? \
                     WHERE channel = ? AND user = ?"
                ),
            )
            .await?,
            member_exists: prepare(
                session,
                format!("SELECT user FROM {ks}.channel_members WHERE channel = ? AND user = ?"),
            )
            .await?,
            members_first: prepare(
                session,
                format!("SELECT user FROM {ks}.channel_members WHERE channel = ? LIMIT ?"),
            )
            .await?,
            members_after: prepare(
                session,
                format!(
                    "SELECT user FROM {ks}.channel_members WHERE channel = ? AND user > ? LIMIT ?"
                ),
            )
            .await?,
        })
    }
}

/// A `conversations` row as read: standing (`None` if the row has none),
/// markers.
type Row = (Option<Standing>, Markers);

/// The IM side of a `ScyllaStore`: its statements and its clock.
pub(super) struct Im {
    statements: Statements,
    /// The last membership timestamp this handle used (µs).
    clock: AtomicI64,
}

impl Im {
    pub(super) fn new(statements: Statements) -> Self {
        Self {
            statements,
            clock: AtomicI64::new(0),
        }
    }

    /// A write timestamp for a membership change: the clock in µs, strictly
    /// greater than the last one this handle used.
    pub(super) fn timestamp(&self) -> i64 {
        let now = super::now_us();
        let mut last = self.clock.load(Ordering::Relaxed);
        loop {
            let next = now.max(last.saturating_add(1));
            match self
                .clock
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(current) => last = current,
            }
        }
    }

    async fn row(&self, session: &Session, user: &str, channel: &str) -> StoreResult<Option<Row>> {
        let result = session
            .execute_unpaged(&self.statements.read_row, (user, channel))
            .await
            .map_err(|e| execution_error("reading a conversation row", e))?;
        let row = rows_result(result)?
            .maybe_first_row::<(Option<i8>, Option<i64>, Option<i64>)>()
            .map_err(corrupt)?;
        row.map(|(standing, read, delivered)| {
            Ok((
                standing.map(standing_of).transpose()?,
                Markers {
                    read: from_i64(read.unwrap_or(0))?,
                    delivered: from_i64(delivered.unwrap_or(0))?,
                },
            ))
        })
        .transpose()
    }

    async fn standings(
        &self,
        session: &Session,
        channel: &str,
        users: &[&str],
    ) -> StoreResult<Vec<Option<Standing>>> {
        let reads = users
            .iter()
            .map(|user| async move {
                Ok(self
                    .row(session, user, channel)
                    .await?
                    .and_then(|(standing, _)| standing))
            })
            .collect();
        all_bounded(reads).await
    }

    /// Writes `standing` for `users` and their `channel_members` rows (insert
    /// for `Member`, delete otherwise), in logged batches at one timestamp.
    async fn write_standing(
        &self,
        session: &Session,
        channel: &str,
        users: &[&str],
        standing: Standing,
        now_ms: u64,
    ) -> StoreResult<()> {
        if users.is_empty() {
            return Ok(());
        }
        let ts = self.timestamp();
        let now = to_i64(now_ms)?;
        let code = CqlValue::TinyInt(standing.code() as i8);
        let text = |s: &str| CqlValue::Text(s.to_owned());
        let member = standing == Standing::Member;
        let mut batches = Vec::new();
        for chunk in users.chunks(MEMBERSHIP_BATCH) {
            let mut statements = Vec::with_capacity(chunk.len() * 2);
            let mut values: Vec<Vec<CqlValue>> = Vec::with_capacity(chunk.len() * 2);
            for user in chunk {
                statements.push(BatchStatement::PreparedStatement(
                    self.statements.set_standing.clone(),
                ));
                values.push(vec![
                    CqlValue::BigInt(ts),
                    code.clone(),
                    CqlValue::BigInt(now),
                    text(user),
                    text(channel),
                ]);
                if member {
                    statements.push(BatchStatement::PreparedStatement(
                        self.statements.insert_member.clone(),
                    ));
                    values.push(vec![
                        text(channel),
                        text(user),
                        CqlValue::BigInt(now),
                        CqlValue::BigInt(ts),
                    ]);
                } else {
                    statements.push(BatchStatement::PreparedStatement(
                        self.statements.delete_member.clone(),
                    ));
                    values.push(vec![CqlValue::BigInt(ts), text(channel), text(user)]);
                }
            }
            let mut batch = Batch::new_with_statements(BatchType::Logged, statements);
            // Every value and timestamp is fixed: a retry writes the same cells.
            batch.set_is_idempotent(true);
            batches.push(async move {
                session
                    .batch(&batch, values)
                    .await
                    .map_err(|e| execution_error("writing memberships", e))
                    .map(drop)
            });
        }
        all_bounded(batches).await.map(drop)
    }

    pub(super) async fn add_members(
        &self,
        session: &Session,
        channel: &str,
        users: &[&str],
        now_ms: u64,
    ) -> StoreResult<Vec<String>> {
        let users = distinct(users);
        let standings = self.standings(session, channel, &users).await?;
        let added: Vec<&str> = users
            .iter()
            .zip(standings)
            .filter(|(_, s)| Standing::added(*s).1)
            .map(|(u, _)| *u)
            .collect();
        self.write_standing(session, channel, &added, Standing::Member, now_ms)
            .await?;
        Ok(added.into_iter().map(str::to_owned).collect())
    }

    pub(super) async fn remove_members(
        &self,
        session: &Session,
        channel: &str,
        users: &[&str],
        now_ms: u64,
    ) -> StoreResult<Vec<String>> {
        let users = distinct(users);
        let standings = self.standings(session, channel, &users).await?;
        let removed: Vec<&str> = users
            .iter()
            .zip(standings)
            .filter(|(_, s)| Standing::removed(*s).1)
            .map(|(u, _)| *u)
            .collect();
        self.write_standing(session, channel, &removed, Standing::Removed, now_ms)
            .await?;
        Ok(removed.into_iter().map(str::to_owned).collect())
    }

    pub(super) async fn is_member(
        &self,
        session: &Session,
        channel: &str,
        user: &str,
    ) -> StoreResult<bool> {
        let result = session
            .execute_unpaged(&self.statements.member_exists, (channel, user))
            .await
            .map_err(|e| execution_error("reading a membership", e))?;
        Ok(rows_result(result)?.rows_num() > 0)
    }

    pub(super) async fn members(
        &self,
        session: &Session,
        channel: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, Markers)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let n = i32::try_from(limit).unwrap_or(i32::MAX);
        let result = if after.is_empty() {
            session
                .execute_unpaged(&self.statements.members_first, (channel, n))
                .await
        } else {
            session
                .execute_unpaged(&self.statements.members_after, (channel, after, n))
                .await
        }
        .map_err(|e| execution_error("reading members", e))?;
        let users: Vec<String> = rows_result(result)?
            .rows::<(String,)>()
            .map_err(corrupt)?
            .map(|r| r.map(|(u,)| u).map_err(corrupt))
            .collect::<StoreResult<_>>()?;
        let reads = users
            .iter()
            .map(|user| async move {
                let markers = self
                    .row(session, user, channel)
                    .await?
                    .map(|(_, m)| m)
                    .unwrap_or_default();
                Ok((user.clone(), markers))
            })
            .collect();
        all_bounded(reads).await
    }

    pub(super) async fn advance_markers(
        &self,
        session: &Session,
        user: &str,
        channel: &str,
        read: u64,
        delivered: u64,
        now_ms: u64,
    ) -> StoreResult<(Markers, bool)> {
        let before = self.row(session, user, channel).await?;
        let current = before.map(|(_, m)| m).unwrap_or_default();
        let after = current.advanced(read, delivered);
        let new_row = before.is_none_or(|(standing, _)| standing.is_none());
        if after == current && !new_row {
            return Ok((current, false));
        }
        let mut statements = Vec::new();
        let mut values: Vec<Vec<CqlValue>> = Vec::new();
        let key = || {
            [
                CqlValue::Text(user.to_owned()),
                CqlValue::Text(channel.to_owned()),
            ]
        };
        // A marker at offset o is written at timestamp o + 1: the greatest
        // offset wins, whatever the order the writes arrive in.
        for (moved, value, statement) in [
            (
                after.read > current.read,
                after.read,
                &self.statements.set_read,
            ),
            (
                after.delivered > current.delivered,
                after.delivered,
                &self.statements.set_delivered,
            ),
        ] {
            if moved {
                let value = to_i64(value)?;
                statements.push(BatchStatement::PreparedStatement(statement.clone()));
                let mut row = vec![
                    CqlValue::BigInt(value.saturating_add(1)),
                    CqlValue::BigInt(value),
                ];
                row.extend(key());
                values.push(row);
            }
        }
        statements.push(BatchStatement::PreparedStatement(
            self.statements.touch.clone(),
        ));
        let mut touch = vec![
            CqlValue::BigInt(super::now_us()),
            CqlValue::BigInt(to_i64(now_ms)?),
        ];
        touch.extend(key());
        values.push(touch);
        if new_row {
            statements.push(BatchStatement::PreparedStatement(
                self.statements.set_participant.clone(),
            ));
            values.push(key().to_vec());
        }
        // One partition: the batch applies atomically and in isolation.
        let mut batch = Batch::new_with_statements(BatchType::Unlogged, statements);
        batch.set_is_idempotent(true);
        session
            .batch(&batch, values)
            .await
            .map_err(|e| execution_error("writing markers", e))?;
        let stored = self
            .row(session, user, channel)
            .await?
            .map(|(_, m)| m)
            .unwrap_or_default();
        // What was read back includes every concurrent advance that landed;
        // it is never below what this call wrote (the cells only grow).
        let stored = stored.advanced(after.read, after.delivered);
        Ok((stored, stored != current))
    }

    pub(super) async fn markers(
        &self,
        session: &Session,
        user: &str,
        channel: &str,
    ) -> StoreResult<Markers> {
        Ok(self
            .row(session, user, channel)
            .await?
            .map(|(_, m)| m)
            .unwrap_or_default())
    }

    pub(super) async fn conversations(
        &self,
        session: &Session,
        user: &str,
    ) -> StoreResult<Vec<Conversation>> {
        let page = i32::try_from(PAGE).unwrap_or(i32::MAX);
        let mut out: Vec<Conversation> = Vec::new();
        loop {
            let result = match out.last() {
                None => {
                    session
                        .execute_unpaged(&self.statements.list_first, (user, page))
                        .await
                }
                Some(last) => {
                    session
                        .execute_unpaged(
                            &self.statements.list_after,
                            (user, last.channel.as_str(), page),
                        )
                        .await
                }
            }
            .map_err(|e| execution_error("reading conversations", e))?;
            let rows = rows_result(result)?;
            let got = rows.rows_num();
            for row in rows
                .rows::<(String, Option<i8>, Option<i64>, Option<i64>, Option<i64>)>()
                .map_err(corrupt)?
            {
                let (channel, standing, read, delivered, updated_ms) = row.map_err(corrupt)?;
                out.push(Conversation {
                    channel,
                    // A row with markers only: an advance whose standing
                    // write has not landed on this replica yet.
                    standing: standing
                        .map(standing_of)
                        .transpose()?
                        .unwrap_or(Standing::Participant),
                    markers: Markers {
                        read: from_i64(read.unwrap_or(0))?,
                        delivered: from_i64(delivered.unwrap_or(0))?,
                    },
                    updated_ms: from_i64(updated_ms.unwrap_or(0))?,
                });
            }
            if got < PAGE {
                return Ok(out);
            }
        }
    }
}

/// The users in input order, each once.
fn distinct<'a>(users: &[&'a str]) -> Vec<&'a str> {
    let mut seen = std::collections::HashSet::with_capacity(users.len());
    users.iter().copied().filter(|u| seen.insert(*u)).collect()
}

fn standing_of(code: i8) -> StoreResult<Standing> {
    u8::try_from(code)
        .ok()
        .and_then(Standing::from_code)
        .ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                format!("unknown conversation standing {code}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_taken_once_in_input_order() {
        assert_eq!(distinct(&["b", "a", "b", "c", "a"]), ["b", "a", "c"]);
        assert!(distinct(&[]).is_empty());
    }

    #[test]
    fn standings_decode_from_their_stored_codes() {
        for s in [Standing::Member, Standing::Participant, Standing::Removed] {
            assert_eq!(standing_of(s.code() as i8).ok(), Some(s));
        }
        for bad in [0, 4, -1] {
            let e = standing_of(bad).err().map(|e| e.kind);
            assert_eq!(e, Some(StoreErrorKind::Corrupt), "{bad}");
        }
    }
}
