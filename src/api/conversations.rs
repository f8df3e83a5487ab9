//! The server API's IM conversation methods: membership (`add_members`,
//! `remove_members`, `members`) and a user's conversation list and unread
//! counts (`conversations`, `unread`), for an application backend.
//!
//! - `add_members {channel, users}` / `remove_members {channel, users}` →
//!   `{"users": [...]}`: those whose membership changed. Only channels of a
//!   namespace with `membership = true` (not user-limited ones, whose
//!   members are their listed users): else 107; no users, an empty user id
//!   → 107; more than [`MAX_MEMBERS_PER_CALL`] → 106. Idempotent.
//!   Effects, once stored: each removed user's subscriptions to the channel
//!   end on every edge (`unsubscribe` push, code 2000); each added or removed
//!   user's connections get an async `message` push `{"herald":"members",
//!   "channel","added":[...],"removed":[...]}`, and so does every connection
//!   subscribed to the channel (one channel message, whatever its size).
//! - `members {channel, after?, limit?}` → `{"members": [{user, read,
//!   delivered}], "cursor"}`: by user id after `after`; `cursor` (the last
//!   user) while a page is full. `limit` 1..=1000 (default 100; over → 106).
//! - `conversations {user, limit?, cursor?, since?}` and `unread {user}`:
//!   what `herald.conversations` and `herald.unread` answer that user.
//!
//! Knows the methods' shapes; the store is reached through sync, the pushes
//! through the edge.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Api, Failure};
use crate::channel::Channel;
use crate::config::ChannelsConfig;
use crate::edge::control::{ControlMessage, ControlOp};
use crate::protocol::ProtocolError;
use crate::sync::client::SyncClientError;
use crate::sync::conversations::{DEFAULT_PAGE, MAX_PAGE, Page, Unread};
use crate::sync::wire::MemberMarkers;

/// Most users one `add_members` / `remove_members` names.
pub const MAX_MEMBERS_PER_CALL: usize = 1000;
const DEFAULT_MEMBERS_PAGE: usize = 100;
const MAX_MEMBERS_PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
pub(super) struct MembersChange {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    users: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct MembersRequest {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    limit: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ConversationsRequest {
    #[serde(default)]
    user: String,
    #[serde(default)]
    limit: Option<serde_json::Value>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    since: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub(super) struct UserOnly {
    #[serde(default)]
    user: String,
}

#[derive(Debug, Serialize)]
pub(super) struct UsersResult {
    users: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct MembersResult {
    members: Vec<MemberMarkers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

fn failed(e: SyncClientError) -> Failure {
    super::sync_failed(e, "conversation")
}

/// A page limit: absent → `default`; 1..=`max`; over → 106; else 107.
fn limit(v: Option<&serde_json::Value>, default: usize, max: usize) -> Result<usize, Failure> {
    let Some(v) = v else { return Ok(default) };
    match v.as_u64() {
        None | Some(0) => Err(ProtocolError::BadRequest.into()),
        Some(n) if n > max as u64 => Err(ProtocolError::LimitExceeded.into()),
        Some(n) => Ok(n as usize),
    }
}

/// A channel whose members the application manages.
fn membership_channel(name: &str, channels: &ChannelsConfig) -> Result<(), Failure> {
    let c = Channel::parse(name, channels)?;
    if !c.options.membership || !c.allowed_users.is_empty() {
        return Err(ProtocolError::BadRequest.into());
    }
    Ok(())
}

fn change_checked(req: &MembersChange, channels: &ChannelsConfig) -> Result<(), Failure> {
    membership_channel(&req.channel, channels)?;
    if req.users.is_empty() || req.users.iter().any(String::is_empty) {
        return Err(ProtocolError::BadRequest.into());
    }
    if req.users.len() > MAX_MEMBERS_PER_CALL {
        return Err(ProtocolError::LimitExceeded.into());
    }
    Ok(())
}

/// Decodes a body of one of this module's methods and runs the checks that
/// need no I/O (for `methods::check_request`, the fuzz targets' entry).
pub(super) fn check_request(
    method: super::Method,
    body: &[u8],
    channels: &ChannelsConfig,
) -> Result<(), Failure> {
    use super::{Method as M, decode};
    match method {
        M::AddMembers | M::RemoveMembers => change_checked(&decode(body)?, channels),
        M::Members => {
            let req: MembersRequest = decode(body)?;
            Channel::parse(&req.channel, channels)?;
            limit(req.limit.as_ref(), MAX_MEMBERS_PAGE, MAX_MEMBERS_PAGE).map(|_| ())
        }
        M::Conversations => {
            let req: ConversationsRequest = decode(body)?;
            limit(req.limit.as_ref(), DEFAULT_PAGE, MAX_PAGE).map(|_| ())
        }
        M::Unread => decode::<UserOnly>(body).map(|_| ()),
        _ => Ok(()),
    }
}

impl Api {
    pub(super) async fn add_members(&self, req: MembersChange) -> Result<UsersResult, Failure> {
        change_checked(&req, &self.state.channels)?;
        let sync = &self.state.sync;
        let users = sync
            .add_members(&req.channel, &req.users)
            .await
            .map_err(failed)?;
        self.announce(&req.channel, &users, &[]).await;
        Ok(UsersResult { users })
    }

    pub(super) async fn remove_members(&self, req: MembersChange) -> Result<UsersResult, Failure> {
        change_checked(&req, &self.state.channels)?;
        let sync = &self.state.sync;
        let users = sync
            .remove_members(&req.channel, &req.users)
            .await
            .map_err(failed)?;
        let edge = &self.state.edge;
        for user in &users {
            let end = ControlMessage {
                user: user.clone(),
                client: None,
                op: ControlOp::Unsubscribe {
                    channel: req.channel.clone(),
                },
            };
            if let Err(e) = edge.send_control(&end).await {
                tracing::warn!(error = %e, "removed member's unsubscribe not sent");
            }
        }
        self.announce(&req.channel, &[], &users).await;
        Ok(UsersResult { users })
    }

    /// The member-change push to the changed users and the subscribers.
    async fn announce(&self, channel: &str, added: &[String], removed: &[String]) {
        if added.is_empty() && removed.is_empty() {
            return;
        }
        let msg = json!({
            "herald": "members",
            "channel": channel,
            "added": added,
            "removed": removed,
        });
        let edge = &self.state.edge;
        for user in added.iter().chain(removed) {
            if let Err(e) = edge.push_to_user(user, msg.clone(), None).await {
                tracing::warn!(error = %e, "member change push not sent");
            }
        }
        if let Err(e) = edge.push_to_channel(channel, &msg, "").await {
            tracing::warn!(error = %e, "member change push not sent");
        }
    }

    pub(super) async fn members(&self, req: MembersRequest) -> Result<MembersResult, Failure> {
        let limit = limit(req.limit.as_ref(), DEFAULT_MEMBERS_PAGE, MAX_MEMBERS_PAGE)?;
        Channel::parse(&req.channel, &self.state.channels)?;
        let members = self
            .state
            .sync
            .members(&req.channel, &req.after, limit)
            .await
            .map_err(failed)?;
        let cursor = (members.len() == limit)
            .then(|| members.last().map(|m| m.user.clone()))
            .flatten();
        Ok(MembersResult { members, cursor })
    }

    pub(super) async fn conversations(&self, req: ConversationsRequest) -> Result<Page, Failure> {
        if req.user.is_empty() {
            return Err(ProtocolError::BadRequest.into());
        }
        let limit = limit(req.limit.as_ref(), DEFAULT_PAGE, MAX_PAGE)?;
        let since = match &req.since {
            None => None,
            Some(v) => Some(v.as_u64().ok_or(ProtocolError::BadRequest)?),
        };
        self.state
            .sync
            .conversations(&req.user, limit, req.cursor, since)
            .await
            .map_err(failed)
    }

    pub(super) async fn unread(&self, req: UserOnly) -> Result<Unread, Failure> {
        if req.user.is_empty() {
            return Err(ProtocolError::BadRequest.into());
        }
        self.state.sync.unread(&req.user).await.map_err(failed)
    }
}
