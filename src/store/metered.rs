//! A [`Store`] around any backend that measures every call: its latency in
//! `herald_store_operation_seconds{op,backend}` and its failures in
//! `herald_store_errors_total{op,backend,kind}` (kind from
//! [`StoreErrorKind::label`]). The roles wrap the store they open in it, so
//! every backend is measured the same way.
//!
//! A call abandoned before it finishes (a caller's timeout) still records
//! the time it ran: a stuck store shows as slow, not as silent. It is not
//! counted as an error; the caller decides what the abandonment means.
//!
//! Knows nothing of any backend beyond the name it is given.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use metrics::Histogram;

use super::{
    ChannelAppend, Conversation, Device, Markers, Position, ReadRange, SharedStore, Store,
    StoreResult, StoredPublication,
};
use crate::metrics as m;

/// The `op` labels, in the order of [`Metered::latency`].
#[derive(Debug, Clone, Copy)]
enum Op {
    Append,
    Read,
    Position,
    IdempotentOffset,
    IdempotentOffsets,
    PurgeExpiredKeys,
    AddMembers,
    RemoveMembers,
    IsMember,
    Members,
    AdvanceMarkers,
    Markers,
    Conversations,
    Positions,
    PutDevice,
    RemoveDevice,
    Device,
    UserDevices,
    TopicDevices,
}

impl Op {
    const ALL: [Op; 19] = [
        Op::Append,
        Op::Read,
        Op::Position,
        Op::IdempotentOffset,
        Op::IdempotentOffsets,
        Op::PurgeExpiredKeys,
        Op::AddMembers,
        Op::RemoveMembers,
        Op::IsMember,
        Op::Members,
        Op::AdvanceMarkers,
        Op::Markers,
        Op::Conversations,
        Op::Positions,
        Op::PutDevice,
        Op::RemoveDevice,
        Op::Device,
        Op::UserDevices,
        Op::TopicDevices,
    ];

    fn label(self) -> &'static str {
        match self {
            Op::Append => "append",
            Op::Read => "read",
            Op::Position => "position",
            Op::IdempotentOffset => "idempotent_offset",
            Op::IdempotentOffsets => "idempotent_offsets",
            Op::PurgeExpiredKeys => "purge_expired_keys",
            Op::AddMembers => "add_members",
            Op::RemoveMembers => "remove_members",
            Op::IsMember => "is_member",
            Op::Members => "members",
            Op::AdvanceMarkers => "advance_markers",
            Op::Markers => "markers",
            Op::Conversations => "conversations",
            Op::Positions => "positions",
            Op::PutDevice => "put_device",
            Op::RemoveDevice => "remove_device",
            Op::Device => "device",
            Op::UserDevices => "user_devices",
            Op::TopicDevices => "topic_devices",
        }
    }
}

pub struct Metered {
    inner: SharedStore,
    backend: &'static str,
    /// One histogram per [`Op`], resolved once.
    latency: [Histogram; Op::ALL.len()],
}

/// Wraps `inner` (a `backend` store: `embedded`, `scylla`) and registers its
/// series at zero.
pub fn wrap(inner: SharedStore, backend: &'static str) -> SharedStore {
    m::register_store(backend);
    let latency = Op::ALL.map(|op| {
        metrics::histogram!(m::STORE_OPERATION_SECONDS, "op" => op.label(), "backend" => backend)
    });
    Arc::new(Metered {
        inner,
        backend,
        latency,
    })
}

/// Records the time since `started` when dropped: when the call returns, or
/// when its future is dropped unfinished.
struct Timing<'a> {
    histogram: &'a Histogram,
    started: Instant,
}

impl Drop for Timing<'_> {
    fn drop(&mut self) {
        self.histogram.record(self.started.elapsed().as_secs_f64());
    }
}

impl Metered {
    async fn measure<T>(
        &self,
        op: Op,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let timing = Timing {
            histogram: &self.latency[op as usize],
            started: Instant::now(),
        };
        let result = call.await;
        drop(timing);
        if let Err(e) = &result {
            metrics::counter!(
                m::STORE_ERRORS_TOTAL,
                "op" => op.label(),
                "backend" => self.backend,
                "kind" => e.kind.label()
            )
            .increment(1);
        }
        result
    }
}

#[async_trait]
impl Store for Metered {
    async fn append(&self, batch: &[ChannelAppend]) -> StoreResult<()> {
        self.measure(Op::Append, self.inner.append(batch)).await
    }

    fn ordered_appends(&self) -> bool {
        self.inner.ordered_appends()
    }

    async fn read(&self, channel: &str, range: ReadRange) -> StoreResult<Vec<StoredPublication>> {
        self.measure(Op::Read, self.inner.read(channel, range))
            .await
    }

    async fn position(&self, channel: &str) -> StoreResult<Position> {
        self.measure(Op::Position, self.inner.position(channel))
            .await
    }

    async fn idempotent_offset(&self, channel: &str, key: &str) -> StoreResult<Option<u64>> {
        self.measure(
            Op::IdempotentOffset,
            self.inner.idempotent_offset(channel, key),
        )
        .await
    }

    async fn idempotent_offsets(&self, keys: &[(&str, &str)]) -> StoreResult<Vec<Option<u64>>> {
        self.measure(Op::IdempotentOffsets, self.inner.idempotent_offsets(keys))
            .await
    }

    async fn purge_expired_keys(&self) -> StoreResult<u64> {
        self.measure(Op::PurgeExpiredKeys, self.inner.purge_expired_keys())
            .await
    }

    async fn add_members(
        &self,
        channel: &str,
        users: &[&str],
        now_ms: u64,
    ) -> StoreResult<Vec<String>> {
        self.measure(
            Op::AddMembers,
            self.inner.add_members(channel, users, now_ms),
        )
        .await
    }

    async fn remove_members(
        &self,
        channel: &str,
        users: &[&str],
        now_ms: u64,
    ) -> StoreResult<Vec<String>> {
        self.measure(
            Op::RemoveMembers,
            self.inner.remove_members(channel, users, now_ms),
        )
        .await
    }

    async fn is_member(&self, channel: &str, user: &str) -> StoreResult<bool> {
        self.measure(Op::IsMember, self.inner.is_member(channel, user))
            .await
    }

    async fn members(
        &self,
        channel: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, Markers)>> {
        self.measure(Op::Members, self.inner.members(channel, after, limit))
            .await
    }

    async fn advance_markers(
        &self,
        user: &str,
        channel: &str,
        read: u64,
        delivered: u64,
        now_ms: u64,
    ) -> StoreResult<(Markers, bool)> {
        self.measure(
            Op::AdvanceMarkers,
            self.inner
                .advance_markers(user, channel, read, delivered, now_ms),
        )
        .await
    }

    async fn markers(&self, user: &str, channel: &str) -> StoreResult<Markers> {
        self.measure(Op::Markers, self.inner.markers(user, channel))
            .await
    }

    async fn conversations(&self, user: &str) -> StoreResult<Vec<Conversation>> {
        self.measure(Op::Conversations, self.inner.conversations(user))
            .await
    }

    async fn positions(&self, channels: &[&str]) -> StoreResult<Vec<Position>> {
        self.measure(Op::Positions, self.inner.positions(channels))
            .await
    }

    async fn put_device(&self, device: &Device) -> StoreResult<Option<Device>> {
        self.measure(Op::PutDevice, self.inner.put_device(device))
            .await
    }

    async fn remove_device(&self, id: &str) -> StoreResult<Option<Device>> {
        self.measure(Op::RemoveDevice, self.inner.remove_device(id))
            .await
    }

    async fn device(&self, id: &str) -> StoreResult<Option<Device>> {
        self.measure(Op::Device, self.inner.device(id)).await
    }

    async fn user_devices(
        &self,
        user: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<Device>> {
        self.measure(Op::UserDevices, self.inner.user_devices(user, after, limit))
            .await
    }

    async fn topic_devices(
        &self,
        topic: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<Device>> {
        self.measure(
            Op::TopicDevices,
            self.inner.topic_devices(topic, after, limit),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_match_the_label_set() {
        let labels: Vec<_> = Op::ALL.iter().map(|op| op.label()).collect();
        assert_eq!(labels, m::labels::STORE_OPS);
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i);
        }
    }
}
