//! The embedded store's push devices (layout in `schema/README.md`, "Push
//! devices").
//!
//! Owns three keyspaces: `push_devices` (id → the device, versioned JSON),
//! the source of truth, and two indexes kept in step with it in the same
//! fjall batch: `push_user_devices` (escaped user ++ id → empty) and
//! `push_topic_devices` (escaped topic ++ id → empty). A put or remove reads
//! the old row and writes the change under `device_lock` (a std mutex taken
//! only inside `spawn_blocking`), so the indexes never disagree with the
//! rows. Listings scan an index and read each row, skipping none: the
//! indexes are exact.
//!
//! Knows nothing of ids, limits or providers.

use std::ops::Bound;
use std::sync::PoisonError;

use fjall::{PersistMode, Readable};

use super::{Inner, VALUE_V1, channel_prefix, map_err};
use crate::store::{Device, StoreError, StoreErrorKind, StoreResult};

fn index_key(owner: &str, id: &str) -> Vec<u8> {
    let mut out = channel_prefix(owner);
    out.extend_from_slice(id.as_bytes());
    out
}

fn encode(device: &Device) -> StoreResult<Vec<u8>> {
    let mut out = vec![VALUE_V1];
    serde_json::to_writer(&mut out, device).map_err(|e| {
        StoreError::new(
            StoreErrorKind::Corrupt,
            format!("encoding device {:?}: {e}", device.id),
        )
    })?;
    Ok(out)
}

fn decode(id: &str, value: &[u8]) -> StoreResult<Device> {
    match value.split_first() {
        Some((&VALUE_V1, json)) => serde_json::from_slice(json).ok(),
        _ => None,
    }
    .ok_or_else(|| {
        StoreError::new(
            StoreErrorKind::Corrupt,
            format!("undecodable device row {id:?}"),
        )
    })
}

impl Inner {
    pub(super) fn device(&self, id: &str) -> StoreResult<Option<Device>> {
        self.devices
            .get(id.as_bytes())
            .map_err(|e| map_err("reading a device", e))?
            .map(|v| decode(id, &v))
            .transpose()
    }

    pub(super) fn put_device(&self, device: &Device) -> StoreResult<Option<Device>> {
        let _guard = self
            .device_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.device(&device.id)?;
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        if let Some(old) = &old {
            self.unindex(&mut batch, old, Some(device));
        }
        batch.insert(&self.devices, device.id.as_bytes(), encode(device)?);
        batch.insert(&self.user_devices, index_key(&device.user, &device.id), []);
        for topic in &device.topics {
            batch.insert(&self.topic_devices, index_key(topic, &device.id), []);
        }
        batch
            .commit()
            .map_err(|e| map_err("committing a device", e))?;
        Ok(old)
    }

    pub(super) fn remove_device(&self, id: &str) -> StoreResult<Option<Device>> {
        let _guard = self
            .device_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(old) = self.device(id)? else {
            return Ok(None);
        };
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        self.unindex(&mut batch, &old, None);
        batch.remove(&self.devices, id.as_bytes());
        batch
            .commit()
            .map_err(|e| map_err("removing a device", e))?;
        Ok(Some(old))
    }

    /// Removes `old`'s index entries that `new` (the row replacing it) does
    /// not have.
    fn unindex(&self, batch: &mut fjall::OwnedWriteBatch, old: &Device, new: Option<&Device>) {
        if new.is_none_or(|n| n.user != old.user) {
            batch.remove(&self.user_devices, index_key(&old.user, &old.id));
        }
        for topic in &old.topics {
            if new.is_none_or(|n| !n.topics.contains(topic)) {
                batch.remove(&self.topic_devices, index_key(topic, &old.id));
            }
        }
    }

    /// Devices listed in `index` under `owner`, by id after `after`.
    pub(super) fn indexed_devices(
        &self,
        by_topic: bool,
        owner: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<Device>> {
        let index = if by_topic {
            &self.topic_devices
        } else {
            &self.user_devices
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let snapshot = self.db.snapshot();
        let prefix = channel_prefix(owner);
        let start = if after.is_empty() {
            Bound::Included(prefix.clone())
        } else {
            Bound::Excluded(index_key(owner, after))
        };
        let mut out = Vec::new();
        for guard in snapshot.range(index, (start, Bound::Unbounded)) {
            let key = guard.key().map_err(|e| map_err("scanning devices", e))?;
            let Some(id) = key.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let id = std::str::from_utf8(id).map_err(|_| {
                StoreError::new(StoreErrorKind::Corrupt, "a device id is not UTF-8")
            })?;
            let row = snapshot
                .get(&self.devices, id.as_bytes())
                .map_err(|e| map_err("reading a device", e))?;
            if let Some(row) = row {
                out.push(decode(id, &row)?);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}
