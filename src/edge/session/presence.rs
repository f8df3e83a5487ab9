//! `presence`, `presence_stats` and `rpc`: methods starting with `herald.`
//! are Herald's own — `herald.user_status` here, the conversation methods in
//! `im`; any other method is 108.
//!
//! As Centrifugo with `allow_presence_for_subscriber`: a client asks the
//! presence of a channel it is subscribed to; 108 where the namespace has
//! presence off, 103 when not subscribed. The answers come from every edge
//! (`crate::edge::presence`).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Fail, Session};
use crate::channel::Channel;
use crate::edge::presence::MAX_STATUS_USERS;
use crate::protocol::{
    ChannelRequest, PresenceResult, PresenceStatsResult, ProtocolError, ReplyResult, RpcRequest,
    RpcResult,
};

/// The RPC method answering users' online status.
pub const USER_STATUS_METHOD: &str = "herald.user_status";

#[derive(Deserialize)]
struct UserStatusRequest {
    #[serde(default)]
    users: Vec<String>,
}

impl Session {
    /// The channel, if its namespace has presence and this session is
    /// subscribed to it.
    fn presence_channel(&self, name: &str) -> Result<(), Fail> {
        let channel = Channel::parse(name, &self.edge.settings.channels)?;
        if !channel.options.presence {
            return Err(Fail::Error(ProtocolError::NotAvailable));
        }
        if self.subs.get(name).is_none_or(|s| s.is_ended()) {
            return Err(Fail::Error(ProtocolError::PermissionDenied));
        }
        Ok(())
    }

    pub(super) async fn presence(&self, req: ChannelRequest) -> Result<Option<ReplyResult>, Fail> {
        self.presence_channel(&req.channel)?;
        let presence = self
            .edge
            .presence
            .presence(&req.channel)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "presence failed");
                Fail::Error(ProtocolError::Internal)
            })?;
        Ok(Some(ReplyResult::Presence(PresenceResult { presence })))
    }

    pub(super) async fn presence_stats(
        &self,
        req: ChannelRequest,
    ) -> Result<Option<ReplyResult>, Fail> {
        self.presence_channel(&req.channel)?;
        let s = self.edge.presence.stats(&req.channel).await.map_err(|e| {
            tracing::warn!(error = %e, "presence stats failed");
            Fail::Error(ProtocolError::Internal)
        })?;
        Ok(Some(ReplyResult::PresenceStats(PresenceStatsResult {
            num_clients: s.num_clients,
            num_users: s.num_users,
        })))
    }

    /// Herald's own methods (`herald.` prefix): `herald.user_status`, the
    /// conversation methods (`im`) and the device methods (`push`); any
    /// other method is 108.
    pub(super) async fn rpc(&mut self, req: RpcRequest) -> Result<Option<ReplyResult>, Fail> {
        if !req.method.starts_with("herald.") {
            return Err(Fail::Error(ProtocolError::NotAvailable));
        }
        if req.method == USER_STATUS_METHOD {
            return self.user_status(req).await;
        }
        if self.user().is_empty() {
            // Conversations are a user's; an anonymous connection has none.
            return Err(Fail::Error(ProtocolError::PermissionDenied));
        }
        if let Some(outcome) = self.rpc_im(&req.method, req.data.as_deref()).await {
            return outcome;
        }
        match self.rpc_push(&req.method, req.data.as_deref()).await {
            Some(outcome) => outcome,
            None => Err(Fail::Error(ProtocolError::NotAvailable)),
        }
    }

    /// `herald.user_status` with `{"users": [...]}` (at most
    /// `MAX_STATUS_USERS`, else 107) when `user_status_for_clients` is on;
    /// switched off it is 108.
    async fn user_status(&self, req: RpcRequest) -> Result<Option<ReplyResult>, Fail> {
        if !self.edge.settings.presence.user_status_for_clients {
            return Err(Fail::Error(ProtocolError::NotAvailable));
        }
        let data = req.data.as_deref().map_or("{}", RawValue::get);
        let users = serde_json::from_str::<UserStatusRequest>(data)
            .map_err(|_| Fail::Error(ProtocolError::BadRequest))?
            .users;
        if users.len() > MAX_STATUS_USERS {
            return Err(Fail::Error(ProtocolError::BadRequest));
        }
        let statuses = self.edge.presence.user_status(&users).await.map_err(|e| {
            tracing::warn!(error = %e, "user status failed");
            Fail::Error(ProtocolError::Internal)
        })?;
        let data = serde_json::value::to_raw_value(&serde_json::json!({ "statuses": statuses }))
            .map_err(|_| Fail::Error(ProtocolError::Internal))?;
        Ok(Some(ReplyResult::Rpc(RpcResult { data })))
    }
}
