//! The IM conversation RPC methods (`herald.read`, `herald.delivered`,
//! `herald.typing`, `herald.receipts`, `herald.unread`,
//! `herald.conversations`) and the membership rule the other commands apply
//! (`require_member`), plus what a client publish does to the publisher's
//! markers (`after_publish`).
//!
//! Errors: bad fields (an offset that is negative or not a whole number, a
//! bad channel name, a channel without history for markers, a bad cursor) →
//! 107; a channel the user may not read, of an unknown namespace, or of a
//! `membership` namespace the user is not a member of → 103; a page limit
//! over the maximum → 106. Nothing is stored on a refusal: every check comes
//! before the store call.
//!
//! The store is reached through sync (`SyncClient`'s IM calls); the pushes
//! through `edge::im`.

use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::{Fail, Session};
use crate::channel::Channel;
use crate::edge::im::Offer;
use crate::protocol::{ProtocolError, ReplyResult, RpcResult};
use crate::sync::client::SyncClientError;
use crate::sync::conversations::{DEFAULT_PAGE, MAX_PAGE};
use crate::sync::wire::Marked;

pub const READ: &str = "herald.read";
pub const DELIVERED: &str = "herald.delivered";
pub const TYPING: &str = "herald.typing";
pub const RECEIPTS: &str = "herald.receipts";
pub const UNREAD: &str = "herald.unread";
pub const CONVERSATIONS: &str = "herald.conversations";

/// Receipts in one `herald.receipts` page when not asked; more than
/// [`MAX_RECEIPTS_PAGE`] is 106.
const DEFAULT_RECEIPTS_PAGE: usize = 100;
pub const MAX_RECEIPTS_PAGE: usize = 1000;

#[derive(Deserialize)]
struct ChannelArgs {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    offset: Option<serde_json::Value>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ListArgs {
    #[serde(default)]
    limit: Option<serde_json::Value>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    since: Option<serde_json::Value>,
}

/// A whole number ≥ 0 (JSON number), else 107.
fn whole(v: &serde_json::Value) -> Result<u64, Fail> {
    v.as_u64().ok_or(Fail::Error(ProtocolError::BadRequest))
}

/// A page limit: absent → `default`; 1..=`max`; over `max` → 106; else 107.
pub fn page_limit(
    v: Option<&serde_json::Value>,
    default: usize,
    max: usize,
) -> Result<usize, Fail> {
    let Some(v) = v else { return Ok(default) };
    match whole(v)? {
        0 => Err(Fail::Error(ProtocolError::BadRequest)),
        n if n > max as u64 => Err(Fail::Error(ProtocolError::LimitExceeded)),
        n => Ok(n as usize),
    }
}

fn decode<'de, T: Deserialize<'de>>(data: &'de str) -> Result<T, Fail> {
    serde_json::from_str(data).map_err(|_| Fail::Error(ProtocolError::BadRequest))
}

fn answer(v: &impl serde::Serialize) -> Result<Option<ReplyResult>, Fail> {
    let data =
        serde_json::value::to_raw_value(v).map_err(|_| Fail::Error(ProtocolError::Internal))?;
    Ok(Some(ReplyResult::Rpc(RpcResult { data })))
}

/// A sync failure as the client sees it: a refused request (bad cursor, no
/// history) is 107, anything else 100.
pub fn sync_failed(e: SyncClientError) -> Fail {
    match &e {
        SyncClientError::Remote { kind, .. }
            if kind == "bad_request" || kind == "not_available" =>
        {
            Fail::Error(ProtocolError::BadRequest)
        }
        _ => {
            tracing::warn!(error = %e, "conversation request failed");
            Fail::Error(ProtocolError::Internal)
        }
    }
}

/// Channels whose members are known: user-limited ones (`ns:#a,b`, the
/// listed users) and those of a `membership` namespace.
pub fn has_members(channel: &Channel<'_>) -> bool {
    channel.options.membership || !channel.allowed_users.is_empty()
}

/// Whether a client publish into `channel` moves the publisher's markers.
fn tracks_publisher(channel: &Channel<'_>) -> bool {
    has_members(channel) || channel.options.track_publishers
}

impl Session {
    /// The `herald.*` methods of this file; `None` for another name.
    pub(super) async fn rpc_im(
        &mut self,
        method: &str,
        data: Option<&RawValue>,
    ) -> Option<Result<Option<ReplyResult>, Fail>> {
        let data = data.map_or("{}", RawValue::get);
        Some(match method {
            READ => self.mark(data, true).await,
            DELIVERED => self.mark(data, false).await,
            TYPING => self.typing(data).await,
            RECEIPTS => self.receipts(data).await,
            UNREAD => self.unread().await,
            CONVERSATIONS => self.conversations(data).await,
            _ => return None,
        })
    }

    /// In a `membership` namespace, only members (the listed users of a
    /// user-limited channel are). A live subscription vouches: it was
    /// checked when made and ends when the member is removed.
    pub(super) async fn require_member(&self, channel: &Channel<'_>) -> Result<(), Fail> {
        if !channel.options.membership || !channel.allowed_users.is_empty() {
            return Ok(());
        }
        if self.subs.get(channel.name).is_some_and(|s| !s.is_ended()) {
            return Ok(());
        }
        match self.edge.sync.is_member(channel.name, self.user()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Fail::Error(ProtocolError::PermissionDenied)),
            Err(e) => Err(sync_failed(e)),
        }
    }

    /// A channel the user may read, for the conversation methods: an unknown
    /// namespace is 103 here, as is a channel the user may not read.
    async fn readable<'a>(&self, name: &'a str) -> Result<Channel<'a>, Fail> {
        let channel = match Channel::parse(name, &self.edge.settings.channels) {
            Err(ProtocolError::UnknownChannel) => {
                return Err(Fail::Error(ProtocolError::PermissionDenied));
            }
            other => other?,
        };
        let private = self
            .subs
            .get(name)
            .is_some_and(|s| s.private && !s.is_ended());
        channel.check_history(self.user(), private)?;
        self.require_member(&channel).await?;
        Ok(channel)
    }

    /// The listed users of a user-limited channel as members, written once
    /// per channel per edge (`edge::im::Seen`).
    async fn ensure_listed_members(&self, channel: &Channel<'_>) {
        if channel.allowed_users.is_empty() || self.edge.im.seen.contains(channel.name) {
            return;
        }
        let users: Vec<String> = channel
            .allowed_users
            .iter()
            .map(|u| u.to_string())
            .collect();
        match self.edge.sync.add_members(channel.name, &users).await {
            Ok(_) => self.edge.im.seen.insert(channel.name),
            Err(e) => tracing::warn!(error = %e, "listed members not written"),
        }
    }

    /// `herald.read` / `herald.delivered` `{channel, offset}`.
    async fn mark(&mut self, data: &str, read: bool) -> Result<Option<ReplyResult>, Fail> {
        let args: ChannelArgs = decode(data)?;
        let offset = whole(
            args.offset
                .as_ref()
                .ok_or(Fail::Error(ProtocolError::BadRequest))?,
        )?;
        let channel = self.readable(&args.channel).await?;
        if !channel.options.history {
            return Err(Fail::Error(ProtocolError::BadRequest));
        }
        self.ensure_listed_members(&channel).await;
        let (r, d) = if read { (offset, offset) } else { (0, offset) };
        let m = self
            .edge
            .sync
            .mark(self.user(), channel.name, r, d)
            .await
            .map_err(sync_failed)?;
        if m.changed {
            self.markers_changed(&channel, m, true).await;
        }
        answer(&json!({
            "channel": channel.name,
            "read": m.read,
            "delivered": m.delivered,
            "head": m.head,
            "unread": m.head.saturating_sub(m.read),
        }))
    }

    /// After a client publish got `offset`: in a channel with members, and
    /// in an open one whose namespace has `track_publishers`, the publisher
    /// has read up to it (own messages are never unread) and the channel is
    /// in their conversations. Done before the publish reply, so an unread
    /// count asked after the reply is exact. A failure here does not fail
    /// the publish (logged).
    pub(super) async fn after_publish(&self, channel: &Channel<'_>, offset: u64) {
        if offset == 0 || !tracks_publisher(channel) || self.user().is_empty() {
            return;
        }
        self.ensure_listed_members(channel).await;
        match self
            .edge
            .sync
            .mark(self.user(), channel.name, offset, offset)
            .await
        {
            // No live receipt: the others know the publisher has read its
            // own message (one push fewer per publish for every subscriber).
            Ok(m) if m.changed => self.markers_changed(channel, m, false).await,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "publisher's read marker not moved"),
        }
    }

    /// Tells the user's other devices, and, with `receipt`, the channel's
    /// other subscribed members (live receipts).
    async fn markers_changed(&self, channel: &Channel<'_>, m: Marked, receipt: bool) {
        let user = self.user().to_string();
        let marker = json!({
            "herald": "marker",
            "channel": channel.name,
            "read": m.read,
            "delivered": m.delivered,
        });
        if let Err(e) = self
            .edge
            .push_to_user(&user, marker, Some(&self.client_id))
            .await
        {
            tracing::warn!(error = %e, "marker push not sent");
        }
        if !receipt || !channel.options.receipts || !has_members(channel) {
            return;
        }
        let receipt = json!({
            "herald": "receipt",
            "channel": channel.name,
            "user": user,
            "read": m.read,
            "delivered": m.delivered,
        });
        let key = (user.as_str(), channel.name);
        let now = tokio::time::Instant::now();
        match self.edge.im.receipts.offer(key, now, Some(receipt.clone())) {
            Offer::Now => {
                let _ = self
                    .edge
                    .push_to_channel(channel.name, &receipt, &user)
                    .await;
            }
            Offer::Later(wait) => {
                let edge = self.edge.clone();
                let channel = channel.name.to_string();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let due = tokio::time::Instant::now();
                    if let Some(v) = edge
                        .im
                        .receipts
                        .take((user.as_str(), channel.as_str()), due)
                    {
                        let _ = edge.push_to_channel(&channel, &v, &user).await;
                    }
                });
            }
            Offer::Held => {}
            Offer::Dropped => {
                metrics::counter!(crate::metrics::EDGE_IM_DROPPED_TOTAL, "kind" => "receipt")
                    .increment(1);
            }
        }
    }

    /// `herald.typing` `{channel}`: at most one per user per channel per
    /// second reaches the other subscribers; extras are dropped, not errors.
    async fn typing(&mut self, data: &str) -> Result<Option<ReplyResult>, Fail> {
        let args: ChannelArgs = decode(data)?;
        let channel = self.readable(&args.channel).await?;
        let user = self.user().to_string();
        let now = tokio::time::Instant::now();
        match self
            .edge
            .im
            .typing
            .offer((user.as_str(), channel.name), now, None)
        {
            Offer::Now => {
                let msg = json!({"herald": "typing", "channel": channel.name, "user": user});
                if let Err(e) = self.edge.push_to_channel(channel.name, &msg, &user).await {
                    tracing::debug!(error = %e, "typing not sent");
                }
            }
            Offer::Dropped => {
                metrics::counter!(crate::metrics::EDGE_IM_DROPPED_TOTAL, "kind" => "typing")
                    .increment(1);
            }
            Offer::Held | Offer::Later(_) => {}
        }
        answer(&json!({}))
    }

    /// `herald.receipts` `{channel, after?, limit?}` → every member's
    /// markers, by user id, paged.
    async fn receipts(&mut self, data: &str) -> Result<Option<ReplyResult>, Fail> {
        let args: ChannelArgs = decode(data)?;
        let limit = page_limit(
            args.limit.as_ref(),
            DEFAULT_RECEIPTS_PAGE,
            MAX_RECEIPTS_PAGE,
        )?;
        let channel = self.readable(&args.channel).await?;
        self.ensure_listed_members(&channel).await;
        let after = args.after.unwrap_or_default();
        let members = self
            .edge
            .sync
            .members(channel.name, &after, limit)
            .await
            .map_err(sync_failed)?;
        let cursor = (members.len() == limit)
            .then(|| members.last().map(|m| m.user.clone()))
            .flatten();
        answer(&json!({ "receipts": members, "cursor": cursor }))
    }

    /// `herald.unread` → `{total, conversations}`.
    async fn unread(&mut self) -> Result<Option<ReplyResult>, Fail> {
        let u = self
            .edge
            .sync
            .unread(self.user())
            .await
            .map_err(sync_failed)?;
        answer(&u)
    }

    /// `herald.conversations` `{limit?, cursor?, since?}`.
    async fn conversations(&mut self, data: &str) -> Result<Option<ReplyResult>, Fail> {
        let args: ListArgs = decode(data)?;
        let limit = page_limit(args.limit.as_ref(), DEFAULT_PAGE, MAX_PAGE)?;
        let since = args.since.as_ref().map(whole).transpose()?;
        let page = self
            .edge
            .sync
            .conversations(self.user(), limit, args.cursor, since)
            .await
            .map_err(sync_failed)?;
        answer(&page)
    }
}
