//! The ScyllaDB store's push devices (`004_push_devices.cql`; layout in
//! `schema/README.md`, "Push devices").
//!
//! `push_devices` (id) holds each device as versioned JSON; the indexes
//! `push_user_devices` ((user), id) and `push_topic_devices` ((topic), id)
//! list them. A put or remove reads the old row, then writes the row and
//! every index change in one logged batch at one clock timestamp (the IM
//! clock: µs, strictly increasing per handle), so the three tables land
//! together or not at all. An index entry that the new row keeps is not
//! deleted (a tombstone wins a tie with a write at the same timestamp).
//! Two concurrent puts of one id may leave a stale index entry; listings
//! read each listed row and skip one that no longer belongs to the owner.
//!
//! Knows nothing of ids, limits or providers.

use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::{all_bounded, corrupt, execution_error, prepare, rows_result};
use crate::store::{Device, StoreError, StoreErrorKind, StoreResult};

/// The version prefix of the stored JSON.
const V1: &str = "1:";

pub(super) struct Statements {
    read: PreparedStatement,
    insert: PreparedStatement,
    delete: PreparedStatement,
    insert_user: PreparedStatement,
    delete_user: PreparedStatement,
    insert_topic: PreparedStatement,
    delete_topic: PreparedStatement,
    user_first: PreparedStatement,
    user_after: PreparedStatement,
    topic_first: PreparedStatement,
    topic_after: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> StoreResult<Self> {
        let list = |table: &str, owner: &str, after: bool| {
            let after = if after { " AND id > ?" } else { "" };
            format!("SELECT id FROM {ks}.{table} WHERE {owner} = ?{after} LIMIT ?")
        };
        Ok(Self {
            read: prepare(
                session,
                format!("SELECT device FROM {ks}.push_devices WHERE id = ?"),
            )
            .await?,
            insert: prepare(
                session,
                format!(
                    "INSERT INTO {ks}.push_devices (id, user, device) VALUES (?, ?, ?) \
                     USING TIMESTAMP ?"
                ),
            )
            .await?,
            delete: prepare(
                session,
                format!("DELETE FROM {ks}.push_devices USING TIMESTAMP ? WHERE id = ?"),
            )
            .await?,
            insert_user: prepare(
                session,
                format!(
                    "INSERT INTO {ks}.push_user_devices (user, id) VALUES (?, ?) USING TIMESTAMP ?"
                ),
            )
            .await?,
            delete_user: prepare(
                session,
                format!(
                    "DELETE FROM {ks}.push_user_devices USING TIMESTAMP ? WHERE user = ? AND id = ?"
                ),
            )
            .await?,
            insert_topic: prepare(
                session,
                format!(
                    "INSERT INTO {ks}.push_topic_devices (topic, id) VALUES (?, ?) \
                     USING TIMESTAMP ?"
                ),
            )
            .await?,
            delete_topic: prepare(
                session,
                format!(
                    "DELETE FROM {ks}.push_topic_devices USING TIMESTAMP ? \
                     WHERE topic = ? AND id = ?"
                ),
            )
            .await?,
            user_first: prepare(session, list("push_user_devices", "user", false)).await?,
            user_after: prepare(session, list("push_user_devices", "user", true)).await?,
            topic_first: prepare(session, list("push_topic_devices", "topic", false)).await?,
            topic_after: prepare(session, list("push_topic_devices", "topic", true)).await?,
        })
    }
}

fn encode(device: &Device) -> StoreResult<String> {
    serde_json::to_string(device)
        .map(|json| format!("{V1}{json}"))
        .map_err(|e| StoreError::new(StoreErrorKind::Corrupt, format!("encoding a device: {e}")))
}

fn decode(id: &str, stored: &str) -> StoreResult<Device> {
    stored
        .strip_prefix(V1)
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                format!("undecodable device row {id:?}"),
            )
        })
}

/// Statements and values of one logged batch.
#[derive(Default)]
struct Writes {
    statements: Vec<BatchStatement>,
    values: Vec<Vec<CqlValue>>,
}

impl Writes {
    fn push(&mut self, statement: &PreparedStatement, values: Vec<CqlValue>) {
        self.statements
            .push(BatchStatement::PreparedStatement(statement.clone()));
        self.values.push(values);
    }

    async fn run(self, session: &Session, what: &str) -> StoreResult<()> {
        let mut batch = Batch::new_with_statements(BatchType::Logged, self.statements);
        // Every value and the timestamp are fixed: a retry writes the same cells.
        batch.set_is_idempotent(true);
        session
            .batch(&batch, self.values)
            .await
            .map(drop)
            .map_err(|e| execution_error(what, e))
    }
}

fn text(s: &str) -> CqlValue {
    CqlValue::Text(s.to_owned())
}

impl Statements {
    pub(super) async fn device(&self, session: &Session, id: &str) -> StoreResult<Option<Device>> {
        let result = session
            .execute_unpaged(&self.read, (id,))
            .await
            .map_err(|e| execution_error("reading a device", e))?;
        let row = rows_result(result)?
            .maybe_first_row::<(Option<String>,)>()
            .map_err(corrupt)?;
        row.and_then(|(stored,)| stored)
            .map(|stored| decode(id, &stored))
            .transpose()
    }

    /// Deletes `old`'s index entries that `new` does not keep.
    fn unindex(&self, writes: &mut Writes, ts: i64, old: &Device, new: Option<&Device>) {
        if new.is_none_or(|n| n.user != old.user) {
            writes.push(
                &self.delete_user,
                vec![CqlValue::BigInt(ts), text(&old.user), text(&old.id)],
            );
        }
        for topic in &old.topics {
            if new.is_none_or(|n| !n.topics.contains(topic)) {
                writes.push(
                    &self.delete_topic,
                    vec![CqlValue::BigInt(ts), text(topic), text(&old.id)],
                );
            }
        }
    }

    pub(super) async fn put_device(
        &self,
        session: &Session,
        ts: i64,
        device: &Device,
    ) -> StoreResult<Option<Device>> {
        let old = self.device(session, &device.id).await?;
        let mut writes = Writes::default();
        if let Some(old) = &old {
            self.unindex(&mut writes, ts, old, Some(device));
        }
        writes.push(
            &self.insert,
            vec![
                text(&device.id),
                text(&device.user),
                CqlValue::Text(encode(device)?),
                CqlValue::BigInt(ts),
            ],
        );
        writes.push(
            &self.insert_user,
            vec![text(&device.user), text(&device.id), CqlValue::BigInt(ts)],
        );
        for topic in &device.topics {
            writes.push(
                &self.insert_topic,
                vec![text(topic), text(&device.id), CqlValue::BigInt(ts)],
            );
        }
        writes.run(session, "writing a device").await?;
        Ok(old)
    }

    pub(super) async fn remove_device(
        &self,
        session: &Session,
        ts: i64,
        id: &str,
    ) -> StoreResult<Option<Device>> {
        let Some(old) = self.device(session, id).await? else {
            return Ok(None);
        };
        let mut writes = Writes::default();
        self.unindex(&mut writes, ts, &old, None);
        writes.push(&self.delete, vec![CqlValue::BigInt(ts), text(id)]);
        writes.run(session, "removing a device").await?;
        Ok(Some(old))
    }

    /// The devices an index lists under `owner`, by id after `after`; an
    /// entry whose row is gone or no longer belongs to `owner` is skipped.
    pub(super) async fn indexed(
        &self,
        session: &Session,
        by_topic: bool,
        owner: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<Device>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let n = i32::try_from(limit).unwrap_or(i32::MAX);
        let (first, next) = if by_topic {
            (&self.topic_first, &self.topic_after)
        } else {
            (&self.user_first, &self.user_after)
        };
        let result = if after.is_empty() {
            session.execute_unpaged(first, (owner, n)).await
        } else {
            session.execute_unpaged(next, (owner, after, n)).await
        }
        .map_err(|e| execution_error("listing devices", e))?;
        let ids: Vec<String> = rows_result(result)?
            .rows::<(String,)>()
            .map_err(corrupt)?
            .map(|r| r.map(|(id,)| id).map_err(corrupt))
            .collect::<StoreResult<_>>()?;
        let reads = ids.iter().map(|id| self.device(session, id)).collect();
        let rows: Vec<Option<Device>> = all_bounded(reads).await?;
        Ok(rows
            .into_iter()
            .flatten()
            .filter(|d| {
                if by_topic {
                    d.topics.iter().any(|t| t == owner)
                } else {
                    d.user == owner
                }
            })
            .collect())
    }
}
