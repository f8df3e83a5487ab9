//! The push device RPC methods for the caller's own devices:
//! `herald.device_register {provider, token, platform?, topics?}` →
//! `{"id", "evicted": [ids]}` and `herald.device_remove {id}` or
//! `{provider, token}` → `{"removed": bool}` (only a device of the caller's
//! is removed; another user's answers `false`, telling nothing about it).
//!
//! Errors: a bad registration → 107, too many topics → 106 (`push::registry`;
//! nothing stored); an anonymous connection has no devices (103, checked by
//! `rpc`). The store is reached through sync.

use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::im::sync_failed;
use super::{Fail, Session};
use crate::protocol::{ReplyResult, RpcResult};
use crate::push::registry::Registration;

pub const DEVICE_REGISTER: &str = "herald.device_register";
pub const DEVICE_REMOVE: &str = "herald.device_remove";

#[derive(Deserialize)]
struct RemoveArgs {
    #[serde(default)]
    id: String,
    #[serde(default)]
    provider: String,
    #[serde(default)]
    token: Option<serde_json::Value>,
}

fn answer(v: &serde_json::Value) -> Result<Option<ReplyResult>, Fail> {
    let data = serde_json::value::to_raw_value(v)
        .map_err(|_| Fail::Error(crate::protocol::ProtocolError::Internal))?;
    Ok(Some(ReplyResult::Rpc(RpcResult { data })))
}

fn decode<'de, T: Deserialize<'de>>(data: &'de str) -> Result<T, Fail> {
    serde_json::from_str(data).map_err(|_| Fail::Error(crate::protocol::ProtocolError::BadRequest))
}

impl Session {
    /// The `herald.*` methods of this file; `None` for another name.
    pub(super) async fn rpc_push(
        &mut self,
        method: &str,
        data: Option<&RawValue>,
    ) -> Option<Result<Option<ReplyResult>, Fail>> {
        let data = data.map_or("{}", RawValue::get);
        Some(match method {
            DEVICE_REGISTER => self.device_register(data).await,
            DEVICE_REMOVE => self.device_remove(data).await,
            _ => return None,
        })
    }

    async fn device_register(&self, data: &str) -> Result<Option<ReplyResult>, Fail> {
        let reg: Registration = decode(data)?;
        let device = reg
            .device(self.user(), 0, self.edge.webpush_endpoints())
            .map_err(Fail::Error)?;
        let (device, evicted) = self
            .edge
            .sync
            .register_device(&device)
            .await
            .map_err(sync_failed)?;
        answer(&json!({"id": device.id, "evicted": evicted}))
    }

    async fn device_remove(&self, data: &str) -> Result<Option<ReplyResult>, Fail> {
        let args: RemoveArgs = decode(data)?;
        let id = crate::api::removed_id(&args.id, &args.provider, args.token.as_ref())
            .map_err(Fail::Error)?;
        let removed = self
            .edge
            .sync
            .remove_device(&id, Some(self.user()))
            .await
            .map_err(sync_failed)?;
        answer(&json!({"removed": removed.is_some()}))
    }
}
