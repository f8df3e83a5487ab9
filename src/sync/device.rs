//! Push devices on the store, for the server API and client RPCs (over NATS,
//! `SyncRequest::Device`): register (with the per-user bound of
//! `push::registry`), remove, list.
//!
//! The asker has checked the registration; this only stores. Knows nothing
//! of sessions, providers or HTTP.

use std::time::{SystemTime, UNIX_EPOCH};

use super::wire::{DeviceRequest, SyncReply};
use super::{ReadError, SyncService};
use crate::push::registry;

/// Most devices one list answers.
pub const MAX_DEVICE_PAGE: usize = 1000;

impl SyncService {
    /// Answers one device request.
    pub async fn device(&self, req: DeviceRequest) -> Result<SyncReply, ReadError> {
        let store = self.reader.store();
        Ok(match req {
            DeviceRequest::Register { mut device } => {
                if registry::check_user(&device.user).is_err() {
                    return Err(ReadError::BadChannel);
                }
                device.updated_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let max = self.settings.max_devices_per_user;
                let evicted = self
                    .reader
                    .timed(registry::register(store, &device, max))
                    .await
                    .map_err(|e| ReadError::from(&e))?;
                SyncReply::Registered { device, evicted }
            }
            DeviceRequest::Remove { id, user } => {
                if let Some(user) = user {
                    let owned = self
                        .reader
                        .timed(store.device(&id))
                        .await
                        .map_err(|e| ReadError::from(&e))?
                        .is_some_and(|d| d.user == user);
                    if !owned {
                        return Ok(SyncReply::Device(None));
                    }
                }
                SyncReply::Device(
                    self.reader
                        .timed(store.remove_device(&id))
                        .await
                        .map_err(|e| ReadError::from(&e))?,
                )
            }
            DeviceRequest::List { user, after, limit } => SyncReply::Devices(
                self.reader
                    .timed(store.user_devices(&user, &after, limit.min(MAX_DEVICE_PAGE)))
                    .await
                    .map_err(|e| ReadError::from(&e))?,
            ),
        })
    }
}
