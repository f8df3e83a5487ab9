//! The ScyllaDB backend of the `Store` trait, and `herald migrate` (the CQL
//! schema in `schema/*.cql`, applied idempotently).
//!
//! Layout (details and reasons in `schema/README.md`): `messages` partitioned
//! by `(channel, bucket)` with `bucket = offset >> bucket_bits` (12: 4096
//! offsets per partition) and clustered by offset; `channels` (head, epoch,
//! fencing token); `idempotency` ((channel, key) → offset) written `USING
//! TTL` of the retention.
//!
//! Every statement is prepared, marked idempotent (except the two LWTs), and
//! runs at the configured consistency (never weaker than a quorum: the config
//! refuses `one`/`local_one`) through a token- and DC-aware load-balancing
//! policy.
//!
//! `append` enforces the writer fence itself (I8): each channel row holds a
//! fencing token (`version`). An append checks each channel's head and epoch
//! (one read per channel, concurrent, skipped when this handle's own last
//! commit left it holding the token), takes the token with one lightweight
//! transaction per channel (`IF version = <read>`), writes the publications
//! (one UNLOGGED batch per partition, chunked by size) and the idempotency
//! keys `USING TIMESTAMP <token>`, then commits each channel's head with one
//! more LWT on the token, which also hands it the next token (so in steady
//! state one LWT per channel per batch, never one per publication). A writer
//! that lost the channel, however long it stalled, fails its claim or its
//! commit, and its late writes carry an older timestamp than the newer
//! owner's, so they never overwrite them. Reads read the head first and never
//! return rows above it: rows a failed append left above the head are
//! invisible, and the next append of those offsets (a newer token) overwrites
//! them. A batch is atomic per channel, not across channels.
//!
//! A key counts only if the publication at its offset carries the same write
//! timestamp (was written by the same append), so a key a failed append left
//! behind never answers for another publication.
//!
//! Idempotency keys expire by TTL (the idempotency retention when they were
//! written, or the publication's history TTL when shorter: a key expires with
//! its publication, and a late retry is a new publication); a
//! lookup also ignores, and deletes, a key older than the current retention, so
//! shortening the retention takes effect at once. `purge_expired_keys` has
//! nothing to scan: it reports the keys such lookups deleted since its last
//! call.
//!
//! Does not know NATS, the writer or the protocol.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, PrepareError, RequestAttemptError};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

use super::{
    AppendHook, AppendStep, ChannelAppend, Conversation, Device, Direction, Markers, Position,
    ReadRange, Store, StoreError, StoreErrorKind, StoreOptions, StoreResult, StoredPublication,
};
use crate::config::{ChannelsConfig, ScyllaConfig, ScyllaConsistency};

mod device;
mod im;

/// Offsets per `messages` partition: 2^12.
pub const BUCKET_BITS: u32 = 12;

/// One numbered schema file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub file: &'static str,
    pub cql: &'static str,
}

/// Every schema file, in the order `migrate` applies them.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        file: "001_init.cql",
        cql: include_str!("../../schema/001_init.cql"),
    },
    Migration {
        version: 2,
        file: "002_fence.cql",
        cql: include_str!("../../schema/002_fence.cql"),
    },
    Migration {
        version: 3,
        file: "003_conversations.cql",
        cql: include_str!("../../schema/003_conversations.cql"),
    },
    Migration {
        version: 4,
        file: "004_push_devices.cql",
        cql: include_str!("../../schema/004_push_devices.cql"),
    },
];

/// Writes in flight at once within one append or read.
const CONCURRENCY: usize = 32;
/// Bounds of one UNLOGGED message batch: far below ScyllaDB's default
/// `batch_size_fail_threshold_in_kb` (1024) and near its warning (128).
const BATCH_MAX_ROWS: usize = 64;
const BATCH_MAX_BYTES: usize = 128 * 1024;
/// Fencing tokens one handle keeps (about 100 bytes each plus the name).
const FENCE_CACHE_MAX: usize = 100_000;
/// The longest TTL CQL accepts (20 years).
const MAX_TTL_SECS: u64 = 630_720_000;

/// How to reach the cluster (the configured options) and the partition
/// size; built from the configuration, or by tests.
#[derive(Debug, Clone)]
pub struct ScyllaSettings {
    pub cluster: ScyllaConfig,
    /// log2 of the offsets per partition. [`BUCKET_BITS`] in production;
    /// tests use a small value to cross bucket boundaries. Every process using
    /// a keyspace must use the same value.
    pub bucket_bits: u32,
    /// The namespaces, for their `history_retention`: a channel's
    /// publications are written with it as their TTL, so the database frees
    /// them. `None` (e.g. `herald migrate`): no TTL.
    pub channels: Option<ChannelsConfig>,
}

impl ScyllaSettings {
    pub fn from_config(config: &ScyllaConfig) -> Self {
        Self {
            cluster: config.clone(),
            bucket_bits: BUCKET_BITS,
            channels: None,
        }
    }

    /// Publications expire after their namespace's `history_retention`.
    pub fn with_history_retention(mut self, channels: &ChannelsConfig) -> Self {
        self.channels = Some(channels.clone());
        self
    }
}

fn consistency(c: ScyllaConsistency) -> Consistency {
    match c {
        ScyllaConsistency::LocalQuorum => Consistency::LocalQuorum,
        ScyllaConsistency::Quorum => Consistency::Quorum,
        ScyllaConsistency::All => Consistency::All,
    }
}

/// The serial consistency of the fence's LWTs: Paxos among the local
/// datacenter's replicas with `local_quorum`, among all replicas otherwise.
fn serial_consistency(c: ScyllaConsistency) -> SerialConsistency {
    match c {
        ScyllaConsistency::LocalQuorum => SerialConsistency::LocalSerial,
        ScyllaConsistency::Quorum | ScyllaConsistency::All => SerialConsistency::Serial,
    }
}

/// A session with the configured contact points, credentials, TLS,
/// consistency, timeout and a token-aware, DC-aware policy.
async fn session(settings: &ScyllaSettings) -> StoreResult<Session> {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &settings.cluster.local_dc {
        policy = policy.prefer_datacenter(dc.clone());
    }
    let profile = ExecutionProfile::builder()
        .consistency(consistency(settings.cluster.consistency))
        .serial_consistency(Some(serial_consistency(settings.cluster.consistency)))
        .request_timeout(Some(settings.cluster.request_timeout))
        .load_balancing_policy(policy.build())
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&settings.cluster.nodes)
        .connection_timeout(settings.cluster.request_timeout)
        .default_execution_profile_handle(profile.into_handle());
    if let Some(user) = &settings.cluster.username {
        let password = settings
            .cluster
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        builder = builder.user(user.clone(), password);
    }
    if settings.cluster.tls {
        builder = builder.tls_context(Some(tls_config()?));
    }
    builder.build().await.map_err(|e| {
        StoreError::new(
            StoreErrorKind::Unavailable,
            format!(
                "cannot connect to ScyllaDB at {}: {e}",
                settings.cluster.nodes.join(",")
            ),
        )
    })
}

/// rustls with the system's root certificates (`SSL_CERT_FILE` /
/// `SSL_CERT_DIR` point it at a private CA). The driver verifies the node's IP
/// address, so node certificates need IP subject alternative names.
fn tls_config() -> StoreResult<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        return Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "scylla_tls: no root certificates found (set SSL_CERT_FILE to the CA of the cluster)",
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::new(StoreErrorKind::Unavailable, format!("scylla_tls: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What `migrate` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Schema versions this run applied.
    pub applied: Vec<i32>,
    /// Schema versions that were already recorded.
    pub already: Vec<i32>,
}

/// Creates the keyspace (with `settings.cluster.replication`) and the
/// `schema_version` table, then applies each schema file not yet recorded
/// there and records it. Every statement is `IF NOT EXISTS` (an `ALTER TABLE …
/// ADD` is skipped when the column exists) and the session
/// waits for schema agreement after each, so running it twice, or from several
/// processes at once, is safe.
pub async fn migrate(settings: &ScyllaSettings) -> StoreResult<MigrateReport> {
    let session = session(settings).await?;
    let ks = &settings.cluster.keyspace;
    let bootstrap = [
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
            settings.cluster.replication
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.schema_version \
             (version int PRIMARY KEY, file text, applied_at_ms bigint)"
        ),
    ];
    for statement in &bootstrap {
        ddl(&session, statement).await?;
    }
    let applied_versions =
        prepare(&session, format!("SELECT version FROM {ks}.schema_version")).await?;
    let record = prepare(
        &session,
        format!("INSERT INTO {ks}.schema_version (version, file, applied_at_ms) VALUES (?, ?, ?)"),
    )
    .await?;
    let done = versions(&session, &applied_versions).await?;
    let mut report = MigrateReport::default();
    for migration in MIGRATIONS {
        if done.contains(&migration.version) {
            report.already.push(migration.version);
            continue;
        }
        for statement in statements(migration.cql, ks) {
            if let Some((table, column)) = added_column(&statement) {
                if column_exists(&session, ks, table, column).await? {
                    continue;
                }
            }
            ddl(&session, &statement).await?;
        }
        session
            .execute_unpaged(&record, (migration.version, migration.file, now_ms_i64()))
            .await
            .map_err(|e| execution_error("recording the schema version", e))?;
        tracing::info!(
            version = migration.version,
            file = migration.file,
            keyspace = %ks,
            "schema migration applied"
        );
        report.applied.push(migration.version);
    }
    Ok(report)
}

async fn ddl(session: &Session, statement: &str) -> StoreResult<()> {
    session
        .query_unpaged(statement, ())
        .await
        .map_err(|e| execution_error("applying the schema", e))?;
    session.await_schema_agreement().await.map_err(|e| {
        StoreError::new(
            StoreErrorKind::Unavailable,
            format!("waiting for schema agreement: {e}"),
        )
    })?;
    Ok(())
}

/// `(table, column)` of an `ALTER TABLE ks.table ADD column type` statement.
pub fn added_column(statement: &str) -> Option<(&str, &str)> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    match words.as_slice() {
        ["ALTER", "TABLE", table, "ADD", column, _type] => {
            Some((table.rsplit('.').next()?, *column))
        }
        _ => None,
    }
}

async fn column_exists(
    session: &Session,
    ks: &str,
    table: &str,
    column: &str,
) -> StoreResult<bool> {
    let result = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
            (ks, table, column),
        )
        .await
        .map_err(|e| execution_error("reading the schema", e))?;
    Ok(rows_result(result)?.rows_num() > 0)
}

async fn versions(session: &Session, select: &PreparedStatement) -> StoreResult<Vec<i32>> {
    let result = session
        .execute_unpaged(select, ())
        .await
        .map_err(|e| execution_error("reading the schema version", e))?;
    let rows = rows_result(result)?;
    rows.rows::<(i32,)>()
        .map_err(corrupt)?
        .map(|r| r.map(|(v,)| v).map_err(corrupt))
        .collect()
}

/// The store's identity: the id of the keyspace's `channels` table in
/// `system_schema.tables` (the same on every node; new when the table is
/// created again).
async fn identity(session: &Session, ks: &str) -> StoreResult<String> {
    let result = session
        .query_unpaged(
            "SELECT id FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
            (ks, "channels"),
        )
        .await
        .map_err(|e| execution_error("reading the channels table's id", e))?;
    let rows = rows_result(result)?;
    match rows.maybe_first_row::<(uuid::Uuid,)>().map_err(corrupt)? {
        Some((id,)) => Ok(id.simple().to_string()),
        None => Err(StoreError::new(
            StoreErrorKind::Unavailable,
            format!("keyspace {ks} has no channels table: run `herald migrate`"),
        )),
    }
}

/// The statements of a schema file: `--` comment lines dropped, split at `;`,
/// `{keyspace}` replaced.
pub fn statements(cql: &str, keyspace: &str) -> Vec<String> {
    let text: String = cql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.replace("{keyspace}", keyspace))
        .collect()
}

/// The bucket (partition) of an offset.
pub fn bucket(offset: u64, bits: u32) -> u64 {
    offset >> bits
}

/// One per-bucket query of a read: offsets `lo..=hi` of `bucket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketQuery {
    pub bucket: u64,
    pub lo: u64,
    pub hi: u64,
}

/// The offsets a read may return, `lo..=hi`, clipped to the head; `None` when
/// nothing can match.
pub fn read_bounds(range: ReadRange, head: u64) -> Option<(u64, u64)> {
    if range.limit == 0 {
        return None;
    }
    let lo = range.after.checked_add(1)?;
    let hi = match range.before {
        Some(before) => before.checked_sub(1)?.min(head),
        None => head,
    };
    (lo <= hi).then_some((lo, hi))
}

/// The per-bucket queries covering `lo..=hi`, in reading order: ascending
/// buckets going forward, descending going backward.
pub fn bucket_queries(
    lo: u64,
    hi: u64,
    direction: Direction,
    bits: u32,
) -> impl Iterator<Item = BucketQuery> {
    let (first, last) = (bucket(lo, bits), bucket(hi, bits));
    let clip = move |b: u64| BucketQuery {
        bucket: b,
        lo: lo.max(b << bits),
        hi: hi.min(((b + 1) << bits) - 1),
    };
    let forward = matches!(direction, Direction::Forward);
    let ascending = (first..=last).filter(move |_| forward).map(clip);
    let descending = (first..=last).rev().filter(move |_| !forward).map(clip);
    ascending.chain(descending)
}

/// Prepared statements of the data path.
struct Statements {
    read_head: PreparedStatement,
    /// LWT: take a channel's fencing token (`IF version = ?`).
    claim: PreparedStatement,
    /// LWT: the new head, epoch and token (`IF version = ?`).
    commit: PreparedStatement,
    write_message: PreparedStatement,
    read_message_time: PreparedStatement,
    read_asc: PreparedStatement,
    read_desc: PreparedStatement,
    write_key: PreparedStatement,
    read_key: PreparedStatement,
    delete_key: PreparedStatement,
}

pub struct ScyllaStore {
    session: Session,
    statements: Statements,
    options: StoreOptions,
    bucket_bits: u32,
    /// Namespaces with a `history_retention` (publication TTLs).
    channels: Option<ChannelsConfig>,
    /// Expired keys deleted by lookups since the last purge call.
    purged: AtomicU64,
    /// Test-only pause / failure points inside `append` (never set in production).
    hook: Option<AppendHook>,
    /// The fencing tokens this handle holds: per channel, the token its own
    /// last commit set, with that head. An append that continues such a head
    /// skips the claim (one LWT per channel per batch, not two). At most
    /// [`FENCE_CACHE_MAX`] entries (cleared when full: a miss only costs a
    /// read and a claim).
    fences: std::sync::Mutex<HashMap<String, Held>>,
    /// Memberships, markers and conversation sets (`im`).
    im: im::Im,
    /// Push devices (`device`).
    devices: device::Statements,
    /// The id the database gave the `channels` table when `herald migrate`
    /// created it: the epochs of empty channels follow from it
    /// ([`super::initial_epoch`]), and a keyspace created anew has another.
    identity: String,
}

/// A fencing token held by this handle, with the head and epoch it committed.
#[derive(Debug, Clone)]
struct Held {
    version: i64,
    head: u64,
    epoch: String,
}

/// A `channels` row as read.
#[derive(Debug, Clone, Default)]
struct ChannelRow {
    /// Head and epoch, once a first append has committed.
    committed: Option<(u64, String)>,
    /// The fencing token (`None`: never taken, or a row from schema version 1).
    version: Option<i64>,
    /// `time_ms` of the head publication (0 before schema version 3).
    time_ms: u64,
}

/// The next fencing token after `old`: larger than it, and than the current
/// time in microseconds, so the writes stamped with it also win over rows
/// written with ordinary (clock) timestamps before the fence existed.
fn next_version(old: Option<i64>) -> i64 {
    old.map_or(0, |v| v.saturating_add(1)).max(now_us())
}

impl ScyllaStore {
    /// Connects, checks that the keyspace holds the schema this version needs
    /// (else: run `herald migrate`), and prepares every statement.
    pub async fn connect(settings: &ScyllaSettings, options: StoreOptions) -> StoreResult<Self> {
        let session = session(settings).await?;
        let ks = &settings.cluster.keyspace;
        let needed = MIGRATIONS.last().map_or(0, |m| m.version);
        let select = prepare(&session, format!("SELECT version FROM {ks}.schema_version"))
            .await
            .map_err(|e| not_migrated(ks, e))?;
        let have = versions(&session, &select).await?;
        if !have.contains(&needed) {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!(
                    "keyspace {ks} lacks schema version {needed} (has {have:?}): run `herald migrate`"
                ),
            ));
        }
        let statements = Statements {
            read_head: prepare(
                &session,
                format!(
                    "SELECT head, epoch, version, head_time_ms FROM {ks}.channels WHERE channel = ?"
                ),
            )
            .await?,
            claim: prepare_lwt(
                &session,
                format!("UPDATE {ks}.channels SET version = ? WHERE channel = ? IF version = ?"),
            )
            .await?,
            commit: prepare_lwt(
                &session,
                format!(
                    "UPDATE {ks}.channels SET head = ?, epoch = ?, head_time_ms = ?, version = ? \
                     WHERE channel = ? IF version = ?"
                ),
            )
            .await?,
            write_message: prepare(
                &session,
                format!(
                    "INSERT INTO {ks}.messages (channel, bucket, offset, data, info, time_ms) \
                     VALUES (?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
                ),
            )
            .await?,
            read_message_time: prepare(
                &session,
                format!(
                    "SELECT WRITETIME(time_ms) FROM {ks}.messages \
                     WHERE channel = ? AND bucket = ? AND offset = ?"
                ),
            )
            .await?,
            read_asc: prepare(&session, read_cql(ks, "ASC")).await?,
            read_desc: prepare(&session, read_cql(ks, "DESC")).await?,
            write_key: prepare(
                &session,
                format!(
                    "INSERT INTO {ks}.idempotency (channel, key, offset, stored_at_ms) \
                     VALUES (?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
                ),
            )
            .await?,
            read_key: prepare(
                &session,
                format!(
                    "SELECT offset, stored_at_ms, WRITETIME(offset) FROM {ks}.idempotency \
                     WHERE channel = ? AND key = ?"
                ),
            )
            .await?,
            delete_key: prepare(
                &session,
                format!(
                    "DELETE FROM {ks}.idempotency USING TIMESTAMP ? WHERE channel = ? AND key = ?"
                ),
            )
            .await?,
        };
        // Boxed: inline, its futures would make `connect`'s much larger (a
        // debug build's test thread overflowed its stack).
        let im = im::Im::new(Box::pin(im::Statements::prepare(&session, ks)).await?);
        let devices = Box::pin(device::Statements::prepare(&session, ks)).await?;
        let identity = identity(&session, ks).await?;
        tracing::info!(keyspace = %ks, nodes = %settings.cluster.nodes.join(","), "scylla store connected");
        Ok(Self {
            session,
            statements,
            options,
            bucket_bits: settings.bucket_bits,
            channels: settings.channels.clone(),
            purged: AtomicU64::new(0),
            hook: None,
            fences: std::sync::Mutex::new(HashMap::new()),
            im,
            devices,
            identity,
        })
    }

    /// Test-only: runs `hook` at each [`AppendStep`] of every append.
    pub fn with_append_hook(mut self, hook: AppendHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The TTL of `channel`'s publications in seconds (its namespace's
    /// `history_retention`, at least 1 s), or 0 (CQL: no TTL).
    fn history_ttl(&self, channel: &str) -> i32 {
        self.channels
            .as_ref()
            .and_then(|c| crate::channel::history_retention_of(channel, c))
            .map_or(0, |r| {
                i32::try_from(r.as_secs().clamp(1, MAX_TTL_SECS)).unwrap_or(i32::MAX)
            })
    }

    async fn step(&self, step: AppendStep) -> StoreResult<()> {
        match &self.hook {
            Some(hook) => hook(step).await,
            None => Ok(()),
        }
    }

    /// The committed head and epoch (`None`: nothing committed yet).
    async fn head(&self, channel: &str) -> StoreResult<Option<(u64, String)>> {
        Ok(self.channel_row(channel).await?.committed)
    }

    /// A channel's row: committed head and epoch, and fencing token.
    async fn channel_row(&self, channel: &str) -> StoreResult<ChannelRow> {
        let result = self
            .session
            .execute_unpaged(&self.statements.read_head, (channel,))
            .await
            .map_err(|e| execution_error("reading a channel head", e))?;
        let rows = rows_result(result)?;
        let row = rows
            .maybe_first_row::<(Option<i64>, Option<String>, Option<i64>, Option<i64>)>()
            .map_err(corrupt)?;
        Ok(match row {
            None => ChannelRow::default(),
            Some((head, epoch, version, time_ms)) => ChannelRow {
                committed: match (head, epoch) {
                    (Some(head), Some(epoch)) if head > 0 => Some((from_i64(head)?, epoch)),
                    _ => None,
                },
                version,
                time_ms: time_ms.map(from_i64).transpose()?.unwrap_or(0),
            },
        })
    }

    /// Runs the LWT `statement` and tells whether it applied.
    async fn conditional(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> StoreResult<bool> {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| execution_error(what, e))?;
        let rows = rows_result(result)?;
        let row = rows.first_row::<scylla::value::Row>().map_err(corrupt)?;
        match row.columns.first() {
            Some(Some(scylla::value::CqlValue::Boolean(applied))) => Ok(*applied),
            other => Err(corrupt(format!("{what}: no [applied] column ({other:?})"))),
        }
    }

    async fn write_messages(
        &self,
        batch: &[ChannelAppend],
        versions: &HashMap<&str, i64>,
    ) -> StoreResult<()> {
        // Publications grouped by partition, each group chunked by size.
        let mut partitions: BTreeMap<(&str, u64), Vec<&StoredPublication>> = BTreeMap::new();
        for entry in batch {
            for p in &entry.publications {
                partitions
                    .entry((entry.channel.as_str(), bucket(p.offset, self.bucket_bits)))
                    .or_default()
                    .push(p);
            }
        }
        let mut chunks = Vec::new();
        for ((channel, bucket), publications) in partitions {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            for p in publications {
                let size = p.data.len() + p.info.as_ref().map_or(0, Bytes::len);
                if !chunk.is_empty()
                    && (chunk.len() == BATCH_MAX_ROWS || bytes + size > BATCH_MAX_BYTES)
                {
                    chunks.push((channel, bucket, std::mem::take(&mut chunk)));
                    bytes = 0;
                }
                bytes += size;
                chunk.push(p);
            }
            chunks.push((channel, bucket, chunk));
        }
        let writes: Vec<_> = chunks
            .into_iter()
            .map(|(channel, bucket, publications)| {
                let version = versions.get(channel).copied().unwrap_or_default();
                self.write_chunk(channel, bucket, version, publications)
            })
            .collect();
        all_bounded(writes).await.map(drop)
    }

    async fn write_chunk(
        &self,
        channel: &str,
        bucket: u64,
        version: i64,
        publications: Vec<&StoredPublication>,
    ) -> StoreResult<()> {
        let ttl = self.history_ttl(channel);
        let mut rows = Vec::with_capacity(publications.len());
        for p in &publications {
            rows.push((
                channel,
                to_i64(bucket)?,
                to_i64(p.offset)?,
                p.data.as_ref(),
                p.info.as_deref(),
                to_i64(p.time_ms)?,
                ttl,
                version,
            ));
        }
        let batch = batch_of(
            BatchType::Unlogged,
            &self.statements.write_message,
            rows.len(),
        );
        self.session
            .batch(&batch, rows)
            .await
            .map_err(|e| execution_error("writing publications", e))?;
        Ok(())
    }

    async fn write_keys(
        &self,
        batch: &[ChannelAppend],
        versions: &HashMap<&str, i64>,
    ) -> StoreResult<()> {
        let ttl = i32::try_from(
            self.options
                .idempotency_retention
                .as_secs()
                .clamp(1, MAX_TTL_SECS),
        )
        .unwrap_or(i32::MAX);
        let stored_at = now_ms_i64();
        let keys: Vec<(&str, &str, u64)> = batch
            .iter()
            .flat_map(|e| {
                e.idempotency_keys
                    .iter()
                    .map(|(k, o)| (e.channel.as_str(), k.as_str(), *o))
            })
            .collect();
        let writes: Vec<_> = keys
            .into_iter()
            .map(|(channel, key, offset)| {
                let version = versions.get(channel).copied().unwrap_or_default();
                // A key expires with its publication (issue 16 §6).
                let ttl = match self.history_ttl(channel) {
                    0 => ttl,
                    history => ttl.min(history),
                };
                self.write_key(channel, key, offset, stored_at, ttl, version)
            })
            .collect();
        all_bounded(writes).await.map(drop)
    }

    async fn write_key(
        &self,
        channel: &str,
        key: &str,
        offset: u64,
        stored_at_ms: i64,
        ttl: i32,
        version: i64,
    ) -> StoreResult<()> {
        self.session
            .execute_unpaged(
                &self.statements.write_key,
                (channel, key, to_i64(offset)?, stored_at_ms, ttl, version),
            )
            .await
            .map_err(|e| execution_error("writing an idempotency key", e))?;
        Ok(())
    }
}

/// Runs the futures, at most [`CONCURRENCY`] at a time; the first error wins.
async fn all_bounded<T>(
    futures: Vec<impl std::future::Future<Output = StoreResult<T>>>,
) -> StoreResult<Vec<T>> {
    futures::stream::iter(futures)
        .buffered(CONCURRENCY)
        .try_collect()
        .await
}

fn read_cql(ks: &str, order: &str) -> String {
    format!(
        "SELECT offset, data, info, time_ms FROM {ks}.messages \
         WHERE channel = ? AND bucket = ? AND offset >= ? AND offset <= ? \
         ORDER BY offset {order} LIMIT ?"
    )
}

/// A batch of `n` executions of one prepared statement.
fn batch_of(kind: BatchType, statement: &PreparedStatement, n: usize) -> Batch {
    let mut batch = Batch::new_with_statements(
        kind,
        vec![BatchStatement::PreparedStatement(statement.clone()); n],
    );
    batch.set_is_idempotent(true);
    batch
}

/// A conditional (LWT) statement: not marked idempotent, so the driver
/// never retries it on its own (a retry of an applied one would report "not
/// applied"); a timeout reaches the writer, which reloads the head.
async fn prepare_lwt(session: &Session, cql: String) -> StoreResult<PreparedStatement> {
    session
        .prepare(cql)
        .await
        .map_err(|e| prepare_error("preparing a statement", e))
}

async fn prepare(session: &Session, cql: String) -> StoreResult<PreparedStatement> {
    let mut statement = session
        .prepare(cql)
        .await
        .map_err(|e| prepare_error("preparing a statement", e))?;
    statement.set_is_idempotent(true);
    Ok(statement)
}

#[async_trait]
impl Store for ScyllaStore {
    async fn append(&self, batch: &[ChannelAppend]) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // Each entry contiguous, and the batch's channels in first-seen order.
        let mut order: Vec<&str> = Vec::new();
        for entry in batch {
            let Some(first) = entry.publications.first() else {
                return Err(conflict(&entry.channel, "an empty append"));
            };
            let contiguous = entry
                .publications
                .iter()
                .enumerate()
                .all(|(i, p)| Some(p.offset) == first.offset.checked_add(i as u64));
            if !contiguous {
                return Err(conflict(&entry.channel, "offsets are not contiguous"));
            }
            if !order.contains(&entry.channel.as_str()) {
                order.push(&entry.channel);
            }
        }
        // Each channel's state: the token this handle kept from its own last
        // commit when the batch continues it, else the stored row.
        let mut held: HashMap<&str, Held> = HashMap::new();
        {
            let mut cache = self.fences.lock().unwrap_or_else(|e| e.into_inner());
            for channel in &order {
                // Taken out: put back only by this append's commit, so a
                // failed or concurrent append never reuses a stale token.
                if let Some(h) = cache.remove(*channel) {
                    held.insert(channel, h);
                }
            }
        }
        let mut rows: HashMap<&str, ChannelRow> = HashMap::new();
        let mut unread: Vec<&str> = Vec::new();
        for channel in &order {
            let entry = batch
                .iter()
                .find(|e| e.channel == *channel)
                .expect("every channel of `order` has an entry");
            let fits = held.get(channel).is_some_and(|h| {
                h.head + 1 == entry.publications[0].offset && h.epoch == entry.epoch
            });
            if !fits {
                held.remove(channel);
                unread.push(channel);
            }
        }
        let reads: Vec<_> = unread.iter().map(|c| self.channel_row(c)).collect();
        for (channel, row) in unread.iter().copied().zip(all_bounded(reads).await?) {
            rows.insert(channel, row);
        }
        let mut heads: HashMap<&str, Option<(u64, String)>> = order
            .iter()
            .map(|c| {
                let state = match held.get(c) {
                    Some(h) => Some((h.head, h.epoch.clone())),
                    None => rows.get(c).and_then(|r| r.committed.clone()),
                };
                (*c, state)
            })
            .collect();
        // The time of each channel's last publication in the batch: the
        // head's, committed with it.
        let mut head_times: HashMap<&str, u64> = HashMap::new();
        for entry in batch {
            let current = heads.entry(entry.channel.as_str()).or_default();
            let (head, epoch) = match current {
                Some((head, epoch)) => (*head, epoch.as_str()),
                None => (0, entry.epoch.as_str()),
            };
            if epoch != entry.epoch {
                return Err(conflict(
                    &entry.channel,
                    "the epoch differs from the stored one",
                ));
            }
            let first = entry.publications[0].offset;
            if first != head + 1 {
                return Err(conflict(
                    &entry.channel,
                    &format!("first offset {first} does not continue head {head}"),
                ));
            }
            let last = &entry.publications[entry.publications.len() - 1];
            *current = Some((last.offset, entry.epoch.clone()));
            head_times.insert(entry.channel.as_str(), last.time_ms);
        }
        self.step(AppendStep::HeadsRead).await?;

        // The fence (I8): every channel's token, taken with one LWT per
        // channel unless this handle already holds it. A writer that lost the
        // channel since fails here or at its commit, and every write it makes
        // meanwhile carries its older token as the write timestamp, so it
        // loses to the newer owner's writes of the same rows and keys.
        let claims: Vec<_> = unread
            .iter()
            .map(|channel| {
                let old = rows.get(channel).and_then(|r| r.version);
                let new = next_version(old);
                async move {
                    let applied = self
                        .conditional(
                            "taking a channel's fencing token",
                            &self.statements.claim,
                            (new, *channel, old),
                        )
                        .await?;
                    if !applied {
                        return Err(conflict(channel, "another writer appended meanwhile"));
                    }
                    Ok((*channel, new))
                }
            })
            .collect();
        let mut versions: HashMap<&str, i64> = all_bounded(claims).await?.into_iter().collect();
        for (channel, h) in &held {
            versions.insert(channel, h.version);
        }

        self.write_messages(batch, &versions).await?;
        self.write_keys(batch, &versions).await?;
        self.step(AppendStep::KeysWritten).await?;

        // The heads last, each with an LWT on the token it holds: a stale
        // writer's commit does not apply, so it can never move a head back.
        let commits: Vec<_> = order
            .iter()
            .map(|channel| {
                let version = versions[channel];
                let (head, epoch) = heads[channel].clone().expect("checked above");
                let time_ms = head_times.get(channel).copied().unwrap_or(0);
                let next = next_version(Some(version));
                async move {
                    let applied = self
                        .conditional(
                            "writing a channel head",
                            &self.statements.commit,
                            (
                                to_i64(head)?,
                                epoch.as_str(),
                                to_i64(time_ms)?,
                                next,
                                *channel,
                                version,
                            ),
                        )
                        .await?;
                    if !applied {
                        return Err(conflict(channel, "another writer appended meanwhile"));
                    }
                    Ok((
                        *channel,
                        Held {
                            version: next,
                            head,
                            epoch,
                        },
                    ))
                }
            })
            .collect();
        let committed = futures::future::join_all(commits).await;
        let mut first_error = None;
        {
            let mut cache = self.fences.lock().unwrap_or_else(|e| e.into_inner());
            for result in committed {
                match result {
                    Ok((channel, h)) => {
                        if cache.len() >= FENCE_CACHE_MAX {
                            cache.clear();
                        }
                        cache.insert(channel.to_string(), h);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        self.step(AppendStep::Committed).await
    }

    async fn read(&self, channel: &str, range: ReadRange) -> StoreResult<Vec<StoredPublication>> {
        let Some((head, _)) = self.head(channel).await? else {
            return Ok(Vec::new());
        };
        let Some((lo, hi)) = read_bounds(range, head) else {
            return Ok(Vec::new());
        };
        let (statement, mut expected) = match range.direction {
            Direction::Forward => (&self.statements.read_asc, lo),
            Direction::Backward => (&self.statements.read_desc, hi),
        };
        // With a history TTL, offsets below the head may have expired: the
        // page holds what is left. Without one, every offset up to the head
        // must be readable.
        let expiring = self.history_ttl(channel) > 0;
        let mut out = Vec::with_capacity(range.limit.min(1024));
        for query in bucket_queries(lo, hi, range.direction, self.bucket_bits) {
            let want = range.limit - out.len();
            if want == 0 {
                break;
            }
            let limit = i32::try_from(want).unwrap_or(i32::MAX);
            let result = self
                .session
                .execute_unpaged(
                    statement,
                    (
                        channel,
                        to_i64(query.bucket)?,
                        to_i64(query.lo)?,
                        to_i64(query.hi)?,
                        limit,
                    ),
                )
                .await
                .map_err(|e| execution_error("reading publications", e))?;
            let rows = rows_result(result)?;
            for row in rows
                .rows::<(i64, Vec<u8>, Option<Vec<u8>>, i64)>()
                .map_err(corrupt)?
            {
                let (offset, data, info, time_ms) = row.map_err(corrupt)?;
                let offset = from_i64(offset)?;
                // Every offset up to the head is stored before the head is;
                // a hole means this replica set has not seen it yet.
                if offset != expected && !expiring {
                    return Err(StoreError::new(
                        StoreErrorKind::Unavailable,
                        format!(
                            "channel {channel:?}: offset {expected} is below the head but not readable \
                             (got {offset}); is scylla_consistency too weak?"
                        ),
                    ));
                }
                expected = match range.direction {
                    Direction::Forward => offset + 1,
                    Direction::Backward => offset.saturating_sub(1),
                };
                out.push(StoredPublication {
                    offset,
                    data: Bytes::from(data),
                    info: info.map(Bytes::from),
                    time_ms: from_i64(time_ms)?,
                });
            }
        }
        let complete = expiring || out.len() == range.limit || (hi - lo + 1) as usize == out.len();
        if !complete {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!(
                    "channel {channel:?}: offset {expected} is below the head but not readable; \
                     is scylla_consistency too weak?"
                ),
            ));
        }
        Ok(out)
    }

    async fn position(&self, channel: &str) -> StoreResult<Position> {
        let row = self.channel_row(channel).await?;
        Ok(match row.committed {
            Some((head, epoch)) => Position {
                head,
                epoch,
                time_ms: row.time_ms,
            },
            None => Position {
                epoch: super::initial_epoch(&self.identity, channel),
                ..Position::default()
            },
        })
    }

    async fn idempotent_offset(&self, channel: &str, key: &str) -> StoreResult<Option<u64>> {
        let result = self
            .session
            .execute_unpaged(&self.statements.read_key, (channel, key))
            .await
            .map_err(|e| execution_error("reading an idempotency key", e))?;
        let rows = rows_result(result)?;
        let Some((offset, stored_at_ms, written_at)) =
            rows.maybe_first_row::<(i64, i64, i64)>().map_err(corrupt)?
        else {
            return Ok(None);
        };
        let age_ms = now_ms_i64().saturating_sub(stored_at_ms).max(0) as u128;
        if age_ms < self.options.idempotency_retention.as_millis() {
            // Keys are written before the head: a key above the head belongs
            // to an append that never completed, and does not count.
            let offset = from_i64(offset)?;
            let head = self.head(channel).await?.map_or(0, |(head, _)| head);
            if offset > head {
                return Ok(None);
            }
            // A key counts only if the publication at its offset was written
            // by the same append: both carry that append's fencing token as
            // their write timestamp. A key an uncommitted append left behind
            // (then another publication committed at that offset) does not.
            let result = self
                .session
                .execute_unpaged(
                    &self.statements.read_message_time,
                    (
                        channel,
                        to_i64(bucket(offset, self.bucket_bits))?,
                        to_i64(offset)?,
                    ),
                )
                .await
                .map_err(|e| execution_error("reading a publication's write time", e))?;
            let row_written_at = rows_result(result)?
                .maybe_first_row::<(Option<i64>,)>()
                .map_err(corrupt)?
                .and_then(|(t,)| t);
            // No row: the publication expired with its namespace's history
            // retention (and the key with it, by its own TTL), or a failed
            // append left the key behind. Neither answers.
            return Ok(row_written_at.and_then(|t| (t == written_at).then_some(offset)));
        }
        // Older than the current retention: delete it, but only the write we
        // read (a delete at that timestamp does not shadow a later store).
        self.session
            .execute_unpaged(&self.statements.delete_key, (written_at, channel, key))
            .await
            .map_err(|e| execution_error("deleting an expired idempotency key", e))?;
        self.purged.fetch_add(1, Ordering::Relaxed);
        Ok(None)
    }

    async fn purge_expired_keys(&self) -> StoreResult<u64> {
        Ok(self.purged.swap(0, Ordering::Relaxed))
    }

    async fn add_members(
        &self,
        channel: &str,
        users: &[&str],
        now_ms: u64,
    ) -> StoreResult<Vec<String>> {
        self.im
            .add_members(&self.session, channel, users, now_ms)
            .await
    }

    async fn remove_members(
        &self,
        channel: &str,
        users: &[&str],
        now_ms: u64,
    ) -> StoreResult<Vec<String>> {
        self.im
            .remove_members(&self.session, channel, users, now_ms)
            .await
    }

    async fn is_member(&self, channel: &str, user: &str) -> StoreResult<bool> {
        self.im.is_member(&self.session, channel, user).await
    }

    async fn members(
        &self,
        channel: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, Markers)>> {
        self.im.members(&self.session, channel, after, limit).await
    }

    async fn advance_markers(
        &self,
        user: &str,
        channel: &str,
        read: u64,
        delivered: u64,
        now_ms: u64,
    ) -> StoreResult<(Markers, bool)> {
        self.im
            .advance_markers(&self.session, user, channel, read, delivered, now_ms)
            .await
    }

    async fn markers(&self, user: &str, channel: &str) -> StoreResult<Markers> {
        self.im.markers(&self.session, user, channel).await
    }

    async fn conversations(&self, user: &str) -> StoreResult<Vec<Conversation>> {
        self.im.conversations(&self.session, user).await
    }

    async fn put_device(&self, device: &Device) -> StoreResult<Option<Device>> {
        let ts = self.im.timestamp();
        self.devices.put_device(&self.session, ts, device).await
    }

    async fn remove_device(&self, id: &str) -> StoreResult<Option<Device>> {
        let ts = self.im.timestamp();
        self.devices.remove_device(&self.session, ts, id).await
    }

    async fn device(&self, id: &str) -> StoreResult<Option<Device>> {
        self.devices.device(&self.session, id).await
    }

    async fn user_devices(
        &self,
        user: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<Device>> {
        self.devices
            .indexed(&self.session, false, user, after, limit)
            .await
    }

    async fn topic_devices(
        &self,
        topic: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<Device>> {
        self.devices
            .indexed(&self.session, true, topic, after, limit)
            .await
    }

    /// One point read per channel, at most [`CONCURRENCY`] at a time.
    async fn positions(&self, channels: &[&str]) -> StoreResult<Vec<Position>> {
        all_bounded(channels.iter().map(|c| self.position(c)).collect()).await
    }
}

/// The clock in µs: the write timestamp of membership changes.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn now_ms_i64() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn to_i64(v: u64) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| {
        StoreError::new(
            StoreErrorKind::Conflict,
            format!("{v} exceeds a CQL bigint"),
        )
    })
}

fn from_i64(v: i64) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| {
        StoreError::new(
            StoreErrorKind::Corrupt,
            format!("negative stored value {v}"),
        )
    })
}

fn conflict(channel: &str, why: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Conflict,
        format!("channel {channel:?}: {why}"),
    )
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!("unexpected row from ScyllaDB: {e}"),
    )
}

fn rows_result(
    result: QueryResult,
) -> StoreResult<scylla::response::query_result::QueryRowsResult> {
    result.into_rows_result().map_err(corrupt)
}

fn not_migrated(ks: &str, e: StoreError) -> StoreError {
    if e.kind == StoreErrorKind::Io {
        StoreError::new(
            StoreErrorKind::Unavailable,
            format!(
                "keyspace {ks} has no Herald schema ({}): run `herald migrate`",
                e.message
            ),
        )
    } else {
        e
    }
}

/// The kind of a failed request attempt, by the server's answer.
fn attempt_kind(e: &RequestAttemptError) -> StoreErrorKind {
    match e {
        RequestAttemptError::DbError(db, _) => match db {
            DbError::Unavailable { .. } | DbError::Overloaded | DbError::IsBootstrapping => {
                StoreErrorKind::Unavailable
            }
            DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => StoreErrorKind::Timeout,
            _ => StoreErrorKind::Io,
        },
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Io,
    }
}

fn execution_error(what: &str, e: ExecutionError) -> StoreError {
    let kind = match &e {
        ExecutionError::RequestTimeout(_) => StoreErrorKind::Timeout,
        ExecutionError::LastAttemptError(attempt) => attempt_kind(attempt),
        ExecutionError::PrepareError(p) => return prepare_error(what, p.clone()),
        ExecutionError::ConnectionPoolError(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Io,
    };
    StoreError::new(kind, format!("{what}: {e}"))
}

fn prepare_error(what: &str, e: PrepareError) -> StoreError {
    let kind = match &e {
        PrepareError::ConnectionPoolError(_) => StoreErrorKind::Unavailable,
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_kind(first_attempt),
        _ => StoreErrorKind::Io,
    };
    StoreError::new(kind, format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(after: u64, before: Option<u64>, limit: usize, direction: Direction) -> ReadRange {
        ReadRange {
            after,
            before,
            limit,
            direction,
        }
    }

    fn plan(lo: u64, hi: u64, direction: Direction, bits: u32) -> Vec<(u64, u64, u64)> {
        bucket_queries(lo, hi, direction, bits)
            .map(|q| (q.bucket, q.lo, q.hi))
            .collect()
    }

    #[test]
    fn buckets_hold_2_pow_bits_offsets() {
        assert_eq!(bucket(0, BUCKET_BITS), 0);
        assert_eq!(bucket(4095, BUCKET_BITS), 0);
        assert_eq!(bucket(4096, BUCKET_BITS), 1);
        assert_eq!(bucket(8191, BUCKET_BITS), 1);
        assert_eq!(bucket(8192, BUCKET_BITS), 2);
        assert_eq!(bucket(7, 3), 0);
        assert_eq!(bucket(8, 3), 1);
        assert_eq!(bucket(u64::MAX, BUCKET_BITS), u64::MAX >> 12);
    }

    #[test]
    fn read_bounds_clip_to_the_head_and_the_range() {
        use Direction::*;
        assert_eq!(read_bounds(range(0, None, 10, Forward), 5), Some((1, 5)));
        assert_eq!(
            read_bounds(range(2, Some(5), 10, Backward), 9),
            Some((3, 4))
        );
        // `before` above the head: the head bounds it (rows above it are a
        // crashed append's leftovers).
        assert_eq!(
            read_bounds(range(0, Some(100), 10, Forward), 7),
            Some((1, 7))
        );
        assert_eq!(read_bounds(range(7, None, 10, Forward), 7), None);
        assert_eq!(read_bounds(range(0, Some(1), 10, Backward), 7), None);
        assert_eq!(read_bounds(range(0, Some(0), 10, Backward), 7), None);
        assert_eq!(read_bounds(range(3, Some(4), 10, Forward), 7), None);
        assert_eq!(read_bounds(range(0, None, 0, Forward), 7), None);
        assert_eq!(read_bounds(range(0, None, 10, Forward), 0), None);
        assert_eq!(read_bounds(range(u64::MAX, None, 10, Forward), 7), None);
    }

    #[test]
    fn forward_queries_walk_buckets_up_and_clip_at_their_edges() {
        use Direction::*;
        assert_eq!(plan(1, 5, Forward, BUCKET_BITS), vec![(0, 1, 5)]);
        assert_eq!(
            plan(4090, 4100, Forward, BUCKET_BITS),
            vec![(0, 4090, 4095), (1, 4096, 4100)]
        );
        assert_eq!(
            plan(5, 20, Forward, 3),
            vec![(0, 5, 7), (1, 8, 15), (2, 16, 20)]
        );
        assert_eq!(plan(8, 15, Forward, 3), vec![(1, 8, 15)]);
        assert_eq!(plan(15, 16, Forward, 3), vec![(1, 15, 15), (2, 16, 16)]);
    }

    #[test]
    fn backward_queries_walk_buckets_down() {
        use Direction::*;
        assert_eq!(
            plan(4090, 4100, Backward, BUCKET_BITS),
            vec![(1, 4096, 4100), (0, 4090, 4095)]
        );
        assert_eq!(
            plan(5, 20, Backward, 3),
            vec![(2, 16, 20), (1, 8, 15), (0, 5, 7)]
        );
        assert_eq!(plan(9, 9, Backward, 3), vec![(1, 9, 9)]);
    }

    #[test]
    fn schema_files_are_numbered_in_order_and_all_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("schema dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cql"))
            .collect();
        on_disk.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.file).collect();
        assert_eq!(
            on_disk, listed,
            "every schema/*.cql is in MIGRATIONS, in order"
        );
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.file);
            assert!(
                m.file.starts_with(&format!("{:03}_", m.version)),
                "{}",
                m.file
            );
        }
    }

    #[test]
    fn schema_statements_are_idempotent_and_qualified() {
        for m in MIGRATIONS {
            let statements = statements(m.cql, "herald_test");
            assert!(!statements.is_empty(), "{}", m.file);
            for s in statements {
                assert!(
                    s.contains("IF NOT EXISTS") || added_column(&s).is_some(),
                    "{}: {s}",
                    m.file
                );
                assert!(s.contains("herald_test."), "{}: {s}", m.file);
                assert!(!s.contains("--") && !s.contains('{'), "{}: {s}", m.file);
            }
        }
        let v1 = statements(MIGRATIONS[0].cql, "ks");
        assert!(
            v1.iter()
                .any(|s| s.contains("PRIMARY KEY ((channel, bucket), offset)"))
        );
    }

    #[test]
    fn consistency_levels_map_one_to_one() {
        for (name, level) in [
            ("local_quorum", Consistency::LocalQuorum),
            ("quorum", Consistency::Quorum),
            ("all", Consistency::All),
        ] {
            let parsed = ScyllaConsistency::parse(name).expect(name);
            assert_eq!(consistency(parsed), level, "{name}");
        }
        assert_eq!(
            serial_consistency(ScyllaConsistency::LocalQuorum),
            SerialConsistency::LocalSerial
        );
        assert_eq!(
            serial_consistency(ScyllaConsistency::Quorum),
            SerialConsistency::Serial
        );
        for weak in ["one", "local_one"] {
            let e = ScyllaConsistency::parse(weak).expect_err(weak);
            assert!(e.contains("cannot guarantee"), "{e}");
        }
        assert!(ScyllaConsistency::parse("two").is_err());
        assert!(ScyllaConsistency::parse("").is_err());
    }
}
