//! `subscribe` (client side) and what every way of subscribing shares:
//! preparing a subscription (registry entry, feed ready, position and
//! recovery from sync) and taking it live after its reply or push.
//!
//! The recovery rule (I5) lives here: recovered only from a position not past
//! the head, in the same epoch, contiguous and within `recovery_limit`.

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::{Fail, Session, close_deadline, ttl};
use crate::auth::TokenError;
use crate::channel::Channel;
use crate::edge::presence::status_user;
use crate::edge::registry::{FeedStatus, Member, SubscribeAs, Subscription};
use crate::protocol::{
    ClientInfo, Disconnect, ProtocolError, Reply, ReplyResult, SubscribeRequest, SubscribeResult,
    delta,
};

/// What a new subscription records besides its registry entry.
pub(super) struct SubOptions {
    pub(super) expires_at: Option<Instant>,
    pub(super) chan_info: Option<Box<RawValue>>,
    pub(super) private: bool,
}

impl SubOptions {
    /// Granted by the token's `channels` claim or the server API: no expiry,
    /// no channel info; private channels count as authorized.
    pub(super) fn granted(private: bool) -> Self {
        Self {
            expires_at: None,
            chan_info: None,
            private,
        }
    }
}

/// A subscription registered and positioned, reply not yet sent.
pub(super) struct Prepared {
    pub(super) subscription: Subscription,
    pub(super) result: SubscribeResult,
    pub(super) position: u64,
    /// The epoch `position` belongs to (empty: no history yet, or none kept).
    pub(super) epoch: String,
    /// Enters the channel's presence when live; with `announce`, with a join.
    pub(super) presence: bool,
    pub(super) announce: bool,
    /// `status:<user>` channels: the user's status, pushed after the head.
    pub(super) status: Option<Bytes>,
    /// A delta subscription's base after the head: the offset of the last
    /// recovered publication, if any.
    pub(super) holds: Option<u64>,
}

impl Session {
    /// Subscribes in the registry (buffering), waits for the channel feed,
    /// reads the position (and missed publications when recovering) from
    /// sync. On error the subscription drops, leaving the channel.
    /// `join_leave`: the client asked for join/leave pushes; `delta`: delta
    /// compression was negotiated (recovered publications go full, then as
    /// deltas, as Centrifugo sends them).
    pub(super) async fn prepare(
        &self,
        channel: &Channel<'_>,
        recover: Option<(u64, String)>,
        join_leave: bool,
        delta: bool,
    ) -> Result<Prepared, Fail> {
        let client = &self.edge.settings.client;
        let history = channel.options.history;
        let o = &channel.options;
        let announce = o.join_leave || o.force_push_join_leave;
        let receives = o.force_push_join_leave || (o.join_leave && join_leave);
        let (subscription, mut status) = self.edge.registry.subscribe(
            self.id,
            channel.name,
            self.outbox.clone(),
            SubscribeAs {
                user: self.user(),
                buffer_limit: client.queue_max_bytes,
                history,
                join_leave: receives,
                delta,
            },
        );
        let ready = tokio::time::timeout(self.edge.sync_timeout, async {
            status
                .wait_for(|s| *s != FeedStatus::Starting)
                .await
                .map(|s| *s)
        })
        .await;
        if !matches!(ready, Ok(Ok(FeedStatus::Ready))) {
            return Err(Fail::Error(ProtocolError::Internal));
        }
        // Read after the feed is receiving: a change after this read hints
        // the feed, whose push follows this one.
        let status = match status_user(channel.name) {
            Some(user) if channel.namespace == Some(crate::config::BUILTIN_STATUS_NAMESPACE) => {
                let publication = self.edge.presence.status_publication(user).await;
                publication.and_then(|p| self.encoding().publication_push(channel.name, &p).ok())
            }
            _ => None,
        };
        let presence = o.presence || announce;
        if !history {
            return Ok(Prepared {
                subscription,
                result: SubscribeResult {
                    was_recovering: recover.is_some(),
                    delta,
                    ..SubscribeResult::default()
                },
                position: 0,
                epoch: String::new(),
                presence,
                announce,
                status,
                holds: None,
            });
        }
        let (after, limit) = match &recover {
            Some((offset, _)) => (*offset, client.recovery_limit + 1),
            None => (0, 0),
        };
        let page = match self
            .edge
            .sync
            .read(channel.name, after, None, limit, false)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "subscribe position read failed");
                return Err(Fail::Error(ProtocolError::Internal));
            }
        };
        // A history subscription is positioned and recoverable, as
        // Centrifugo's with `force_recovery` (which implies positioning).
        let mut result = SubscribeResult {
            recoverable: true,
            positioned: true,
            epoch: page.epoch.clone(),
            offset: page.head,
            was_recovering: recover.is_some(),
            delta,
            ..SubscribeResult::default()
        };
        let mut position = page.head;
        let mut holds = None;
        if let Some((offset, epoch)) = recover {
            let epoch_ok = epoch.is_empty() || epoch == page.epoch;
            let last = contiguous_last(&page.publications, offset);
            if let Some(last) = last
                && epoch_ok
                && page.publications.len() <= client.recovery_limit
                && last >= page.head
                && offset <= page.head
                && offset + 1 >= page.first_available
            {
                result.recovered = true;
                // As Centrifugo: the reply repeats the client's offset; the
                // recovered publications carry their own.
                result.offset = offset;
                position = last;
                if delta && !page.publications.is_empty() {
                    holds = Some(last);
                    result.publications = delta::recovered(
                        page.publications,
                        self.encoding() == crate::protocol::Encoding::Json,
                    );
                } else {
                    result.publications = page.publications;
                }
            }
        }
        Ok(Prepared {
            subscription,
            result,
            position,
            epoch: page.epoch,
            presence,
            announce,
            status,
            holds,
        })
    }

    pub(super) async fn subscribe(
        &mut self,
        id: u32,
        req: SubscribeRequest,
    ) -> Result<Option<ReplyResult>, Fail> {
        // An empty channel is a malformed command (Centrifugo: 3501), and
        // so is an unknown delta type.
        if req.channel.is_empty() || !(req.delta.is_empty() || req.delta == delta::FOSSIL) {
            return Err(Fail::Close(Disconnect::BAD_REQUEST));
        }
        // Only plain subscriptions exist (no map subscriptions): any other
        // type is refused as Centrifugo refuses one a namespace does not allow.
        if req.kind != 0 {
            return Err(Fail::Error(ProtocolError::PermissionDenied));
        }
        let channels = self.edge.settings.channels.clone();
        let channel = Channel::parse(&req.channel, &channels)?;
        if let Some(existing) = self.subs.get(&req.channel) {
            if !existing.is_ended() {
                return Err(Fail::Error(ProtocolError::AlreadySubscribed));
            }
            self.subs.remove(&req.channel);
        }
        if self.subs.len() >= self.edge.settings.client.channel_limit {
            return Err(Fail::Error(ProtocolError::LimitExceeded));
        }
        let user = self.user().to_string();
        let mut token_claims = None;
        if !req.token.is_empty() {
            match self
                .edge
                .verifier
                .subscription(&req.token, &user, &req.channel)
            {
                Ok(c) if self.edge.revoked(&user, c.jti.as_deref(), c.iat) => {
                    return Err(Fail::Error(ProtocolError::PermissionDenied));
                }
                Ok(c) => token_claims = Some(c),
                Err(TokenError::Expired) => return Err(Fail::Error(ProtocolError::TokenExpired)),
                // For another user or channel, or not ours: as Centrifugo.
                Err(TokenError::Invalid) => return Err(Fail::Close(Disconnect::INVALID_TOKEN)),
            }
        }
        self.require_member(&channel).await?;
        // Without a token, a namespace's subscribe proxy decides instead of
        // its permissions (as Centrifugo: not for private channels, which
        // need a token, nor for user-limited ones, which have their rule).
        let proxy = self
            .edge
            .proxies
            .config()
            .namespace(channel.namespace)
            .subscribe
            .clone()
            .filter(|_| {
                req.token.is_empty()
                    && !channel.private
                    && !channel.personal
                    && !channel.no_user_allowed
                    && channel.allowed_users.is_empty()
            });
        let granted = match proxy {
            Some(proxy) => Some(self.subscribe_by_proxy(&proxy, &req).await?),
            None => None,
        };
        if granted.is_none() {
            channel.check_subscribe(&user, token_claims.is_some())?;
        }
        if channel.namespace == Some(crate::config::BUILTIN_STATUS_NAMESPACE) && user.is_empty() {
            // Watching needs an authenticated user.
            return Err(Fail::Error(ProtocolError::PermissionDenied));
        }
        let recover = req.recover.then(|| (req.offset, req.epoch.clone()));
        // A known delta type the namespace does not allow is ignored, as
        // Centrifugo does: the reply says `delta: false`.
        let delta =
            !req.delta.is_empty() && channel.options.allowed_delta_types.contains(&req.delta);
        let mut p = self
            .prepare(&channel, recover, req.join_leave, delta)
            .await?;
        let exp = match &granted {
            Some(g) => g.expire_at,
            None => token_claims.as_ref().and_then(|c| c.exp),
        };
        // A proxy-granted expiry with a sub_refresh proxy is refreshed
        // server side, not announced; as Centrifugo, after the same grace.
        let server_refresh = granted.is_some()
            && exp.is_some()
            && self
                .edge
                .proxies
                .config()
                .namespace(channel.namespace)
                .sub_refresh
                .is_some();
        if let Some(exp) = exp.filter(|_| !server_refresh) {
            p.result.expires = true;
            p.result.ttl = ttl(exp);
        }
        if server_refresh {
            self.proxy.server_sub_refresh.insert(req.channel.clone());
        } else {
            self.proxy.server_sub_refresh.remove(&req.channel);
        }
        let (chan_info, data) = match granted {
            Some(g) => (g.info, g.data),
            None => (token_claims.and_then(|c| c.info), None),
        };
        p.result.data = data;
        let grace = self.edge.settings.client.expired_close_delay;
        let Some(reply) = self.encode(&Reply::ok(
            id,
            ReplyResult::Subscribe(std::mem::take(&mut p.result)),
        )) else {
            // Closing (3004): the subscription is dropped.
            return Ok(None);
        };
        let sub = SubOptions {
            expires_at: exp.map(|exp| close_deadline(exp, grace)),
            chan_info,
            private: channel.private,
        };
        self.go_live(req.channel.clone(), p, vec![reply], sub);
        // The reply went out with go_live, ahead of any publication.
        Ok(None)
    }

    /// Sends `head` (the reply or push announcing the subscription), then what
    /// was buffered past the position, and records the subscription. If it
    /// ended meanwhile (or a buffered publication does not follow), the
    /// client gets `unsubscribe` 2500 after `head` and recovers; the ended
    /// subscription is recorded all the same, so a resubscribe replaces it.
    pub(super) fn go_live(
        &mut self,
        name: String,
        p: Prepared,
        mut head: Vec<Bytes>,
        opts: SubOptions,
    ) {
        let mut sub = p.subscription;
        sub.expires_at = opts.expires_at;
        sub.chan_info = opts.chan_info;
        sub.private = opts.private;
        head.extend(p.status);
        let live = sub.subscriber.go_live(head, p.position, &p.epoch, p.holds);
        if p.presence && live {
            let authed = self.authed.as_ref();
            let info = ClientInfo {
                user: self.user().to_string(),
                client: self.client_id.clone(),
                conn_info: authed.and_then(|a| a.conn_info.clone()),
                chan_info: sub.chan_info.clone(),
            };
            if let Ok(info) = serde_json::to_string(&info) {
                sub.join_presence(
                    Member {
                        client: self.client_id.as_str().into(),
                        user: self.user().into(),
                        info: info.into(),
                    },
                    p.announce,
                );
            }
        }
        sub.webhook = self
            .edge
            .webhooks()
            .subscribed(&self.client_id, self.user(), &name);
        self.subs.insert(name, sub);
    }
}

/// The last offset of `publications` if they run contiguously from
/// `after + 1` (`after` itself when there are none); `None` otherwise.
fn contiguous_last(publications: &[Box<RawValue>], after: u64) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct OffsetOnly {
        offset: u64,
    }
    let mut expected = after + 1;
    for p in publications {
        let o: OffsetOnly = serde_json::from_str(p.get()).ok()?;
        if o.offset != expected {
            return None;
        }
        expected += 1;
    }
    Some(expected - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pubs(offsets: &[u64]) -> Vec<Box<RawValue>> {
        offsets
            .iter()
            .map(|o| RawValue::from_string(format!(r#"{{"data":1,"offset":{o}}}"#)).unwrap())
            .collect()
    }

    #[test]
    fn contiguity() {
        assert_eq!(contiguous_last(&pubs(&[]), 5), Some(5));
        assert_eq!(contiguous_last(&pubs(&[6, 7, 8]), 5), Some(8));
        assert_eq!(contiguous_last(&pubs(&[6, 8]), 5), None);
        assert_eq!(contiguous_last(&pubs(&[7]), 5), None);
    }
}
