//! What the application backend decides through the proxies (`crate::proxy`):
//! a tokenless `connect`, a server-side connection `refresh`, a `subscribe`
//! without token, a client `publish` (refused, or its data replaced), a
//! server-side `sub_refresh`, and `rpc` (every method not starting with
//! `herald.`). Each turns the backend's answer into what the command files
//! continue with, as Centrifugo v6 does: a backend `error` is the reply's
//! error as given, a `disconnect` closes with its code and reason, and a
//! call that gives no answer (timeout, unreachable, non-200, garbage) is
//! error 100 — or, for a refresh, one more minute.
//!
//! Knows nothing of HTTP (the proxy module's) nor of how a subscription is
//! prepared (subscribe's).

use std::collections::HashSet;

use axum::http::HeaderMap;
use serde_json::value::RawValue;

use super::{Fail, Session};
use crate::auth::{ConnectClaims, now_secs};
use crate::edge::outbox::Close;
use crate::protocol::{Disconnect, ErrorBody, ProtocolError, RpcRequest, RpcResult};
use crate::proxy::{Answer, Kind, wire};

/// How long a connection or subscription lives on when its refresh call
/// gives no answer (Centrifugo's fixed minute).
const REFRESH_RETRY_SECS: u64 = 60;

/// A session's proxy state.
#[derive(Default)]
pub(super) struct ProxyState {
    /// The upgrade request's headers some proxy forwards.
    pub(super) headers: HeaderMap,
    /// `meta` from the connect (or refresh) proxy, sent back with
    /// `include_connection_meta`.
    pub(super) meta: Option<Box<RawValue>>,
    /// The connection's expiry is refreshed by the refresh proxy.
    pub(super) server_refresh: bool,
    /// Subscriptions whose expiry the sub_refresh proxy refreshes; at most
    /// one per subscription (`client_channel_limit`).
    pub(super) server_sub_refresh: HashSet<String>,
}

/// What a connect proxy granted: the claims a token would carry, plus the
/// reply's `data` and the `subs` entries' channel info.
pub(super) struct ProxyGrant {
    pub(super) claims: ConnectClaims,
    pub(super) data: Option<Box<RawValue>>,
    pub(super) chan_info: std::collections::BTreeMap<String, Box<RawValue>>,
}

/// What a subscribe proxy granted.
pub(super) struct SubscribeGrant {
    pub(super) expire_at: Option<u64>,
    pub(super) info: Option<Box<RawValue>>,
    pub(super) data: Option<Box<RawValue>>,
}

/// What a publish proxy decided about a publication it let through.
pub(super) struct PublishGrant {
    /// Replacement data, when the backend gave some.
    pub(super) data: Option<Box<RawValue>>,
    pub(super) skip_history: bool,
}

fn expire_at(t: i64) -> Option<u64> {
    u64::try_from(t).ok().filter(|t| *t > 0)
}

impl Session {
    fn meta_for(&self, proxy: &str) -> Option<&RawValue> {
        if self.edge.proxies.includes_meta(proxy) {
            self.proxy.meta.as_deref()
        } else {
            None
        }
    }

    /// Calls `proxy` and sorts the answer: `Ok(result)` to act on, or the
    /// failure the command ends with.
    async fn ask<R: serde::de::DeserializeOwned>(
        &self,
        proxy: &str,
        kind: Kind,
        body: &impl serde::Serialize,
    ) -> Result<Option<R>, Fail> {
        match self
            .edge
            .proxies
            .call::<R>(proxy, kind, body, &self.proxy.headers)
            .await
        {
            Ok(Answer::Result(r)) => Ok(r),
            Ok(Answer::Error(e)) => Err(Fail::Backend(ErrorBody {
                code: e.code,
                message: e.message,
                temporary: e.temporary,
            })),
            Ok(Answer::Disconnect(d)) => Err(self.backend_disconnect(d)),
            Err(_) => Err(Fail::Error(ProtocolError::Internal)),
        }
    }

    /// Closes with the backend's code and reason. The outbox keeps the first
    /// close it is given, so the named code passed on is never sent.
    fn backend_disconnect(&self, d: wire::BackendDisconnect) -> Fail {
        self.outbox.close(Close::Custom {
            code: d.code,
            reason: d.reason.into(),
        });
        Fail::Close(Disconnect::SERVER_ERROR)
    }

    /// A connect without a token, decided by the connect proxy. No result
    /// is a bad request (3501), as Centrifugo's "credentials not found".
    pub(super) async fn connect_by_proxy(
        &mut self,
        proxy: &str,
        req: &crate::protocol::ConnectRequest,
    ) -> Result<ProxyGrant, Fail> {
        let body = wire::ConnectRequest {
            base: wire::Base::new(&self.client_id, self.encoding().name()),
            data: req.data.as_deref(),
            name: &req.name,
            version: &req.version,
            channels: &[],
        };
        let result: wire::ConnectResult = self
            .ask(proxy, Kind::Connect, &body)
            .await?
            .ok_or(Fail::Close(Disconnect::BAD_REQUEST))?;
        let bad = |_| Fail::Error(ProtocolError::Internal);
        let info = wire::pick_json(result.info, &result.b64info).map_err(bad)?;
        let data = wire::pick_json(result.data, &result.b64data).map_err(bad)?;
        let exp = expire_at(result.expire_at);
        if exp.is_some_and(|e| e < now_secs()) {
            return Err(Fail::Error(ProtocolError::Expired));
        }
        let mut channels = result.channels;
        let mut chan_info = std::collections::BTreeMap::new();
        for (name, o) in result.subs {
            if let Some(i) = wire::pick_json(o.info, &o.b64info).map_err(bad)? {
                chan_info.insert(name.clone(), i);
            }
            if !channels.contains(&name) {
                channels.push(name);
            }
        }
        self.proxy.meta = result.meta.filter(|m| m.get() != "null");
        Ok(ProxyGrant {
            claims: ConnectClaims {
                sub: result.user,
                exp,
                iat: None,
                nbf: None,
                channels,
                info,
                jti: None,
                tier: None,
            },
            data,
            chan_info,
        })
    }

    /// The connection's expiry came and the refresh proxy decides:
    /// `Ok(Some(exp))` lives on until `exp`, `Err` closes (3005 expired, or
    /// the backend's disconnect). No answer: one more minute.
    pub(super) async fn refresh_by_proxy(&mut self) -> Result<u64, Disconnect> {
        let Some(proxy) = self.edge.proxies.config().refresh.clone() else {
            return Err(Disconnect::EXPIRED);
        };
        let body = wire::RefreshRequest {
            base: wire::Base::new(&self.client_id, self.encoding().name()),
            user: self.user(),
            channel: None,
            meta: self.meta_for(&proxy),
        };
        let result = match self
            .edge
            .proxies
            .call::<wire::RefreshResult>(&proxy, Kind::Refresh, &body, &self.proxy.headers)
            .await
        {
            Ok(Answer::Result(Some(r))) => r,
            // As Centrifugo: only `result` counts; none = expired.
            Ok(_) => return Err(Disconnect::EXPIRED),
            Err(_) => return Ok(now_secs() + REFRESH_RETRY_SECS),
        };
        let exp = match expire_at(result.expire_at) {
            Some(e) if !result.expired && e > now_secs() => e,
            _ => return Err(Disconnect::EXPIRED),
        };
        if let Ok(Some(info)) = wire::pick_json(result.info, &result.b64info)
            && let Some(a) = self.authed.as_mut()
        {
            a.conn_info = Some(info);
        }
        if let Some(meta) = result.meta.filter(|m| m.get() != "null") {
            self.proxy.meta = Some(meta);
        }
        Ok(exp)
    }

    /// A subscribe without a token in a namespace with a subscribe proxy.
    pub(super) async fn subscribe_by_proxy(
        &mut self,
        proxy: &str,
        req: &crate::protocol::SubscribeRequest,
    ) -> Result<SubscribeGrant, Fail> {
        let body = wire::SubscribeRequest {
            base: wire::Base::new(&self.client_id, self.encoding().name()),
            user: self.user(),
            channel: &req.channel,
            token: &req.token,
            meta: self.meta_for(proxy),
            data: req.data.as_deref(),
        };
        let result: Option<wire::SubscribeResult> = self.ask(proxy, Kind::Subscribe, &body).await?;
        let Some(result) = result else {
            return Ok(SubscribeGrant {
                expire_at: None,
                info: None,
                data: None,
            });
        };
        let bad = |_| Fail::Error(ProtocolError::Internal);
        let exp = expire_at(result.expire_at);
        if exp.is_some_and(|e| e <= now_secs()) {
            return Err(Fail::Error(ProtocolError::Expired));
        }
        Ok(SubscribeGrant {
            expire_at: exp,
            info: wire::pick_json(result.info, &result.b64info).map_err(bad)?,
            data: wire::pick_json(result.data, &result.b64data).map_err(bad)?,
        })
    }

    /// A subscription's expiry came and its namespace's sub_refresh proxy
    /// decides: `Some(exp)` lives on, `None` ends it (2501).
    pub(super) async fn sub_refresh_by_proxy(&mut self, proxy: &str, channel: &str) -> Option<u64> {
        let body = wire::RefreshRequest {
            base: wire::Base::new(&self.client_id, self.encoding().name()),
            user: self.user(),
            channel: Some(channel),
            meta: self.meta_for(proxy),
        };
        let result = match self
            .edge
            .proxies
            .call::<wire::RefreshResult>(proxy, Kind::SubRefresh, &body, &self.proxy.headers)
            .await
        {
            Ok(Answer::Result(Some(r))) => r,
            Ok(_) => return None,
            Err(_) => return Some(now_secs() + REFRESH_RETRY_SECS),
        };
        let exp = expire_at(result.expire_at).filter(|e| !result.expired && *e > now_secs())?;
        if let Ok(Some(info)) = wire::pick_json(result.info, &result.b64info)
            && let Some(sub) = self.subs.get_mut(channel)
        {
            sub.chan_info = Some(info);
        }
        Some(exp)
    }

    /// A subscription whose expiry came: refreshed by its namespace's
    /// sub_refresh proxy when it has one (`Some(new exp)`).
    pub(super) async fn sub_refreshed_by_proxy(&mut self, channel: &str) -> Option<u64> {
        if !self.proxy.server_sub_refresh.contains(channel) {
            return None;
        }
        let channels = self.edge.settings.channels.clone();
        let parsed = crate::channel::Channel::parse(channel, &channels).ok()?;
        let proxy = self
            .edge
            .proxies
            .config()
            .namespace(parsed.namespace)
            .sub_refresh
            .clone()?;
        self.sub_refresh_by_proxy(&proxy, channel).await
    }

    /// A client publish in a namespace with a publish proxy: refused, or let
    /// through with its data kept or replaced.
    pub(super) async fn publish_by_proxy(
        &self,
        proxy: &str,
        channel: &str,
        data: &RawValue,
    ) -> Result<PublishGrant, Fail> {
        let body = wire::PublishRequest {
            base: wire::Base::new(&self.client_id, self.encoding().name()),
            user: self.user(),
            channel,
            data,
            meta: self.meta_for(proxy),
        };
        let result: Option<wire::PublishResult> = self.ask(proxy, Kind::Publish, &body).await?;
        let Some(result) = result else {
            return Ok(PublishGrant {
                data: None,
                skip_history: false,
            });
        };
        let data = wire::pick_json(result.data, &result.b64data)
            .map_err(|_| Fail::Error(ProtocolError::Internal))?;
        Ok(PublishGrant {
            data,
            skip_history: result.skip_history,
        })
    }

    /// The RPC proxy, if any, serves `method` (Herald's own `herald.*`
    /// methods never go to it).
    pub(super) fn rpc_proxy(&self, method: &str) -> Option<String> {
        if method.starts_with("herald.") {
            return None;
        }
        self.edge.proxies.config().rpc.clone()
    }

    pub(super) async fn rpc_by_proxy(
        &self,
        proxy: &str,
        req: RpcRequest,
    ) -> Result<Option<crate::protocol::ReplyResult>, Fail> {
        let body = wire::RpcRequest {
            base: wire::Base::new(&self.client_id, self.encoding().name()),
            user: self.user(),
            method: &req.method,
            data: req.data.as_deref(),
            meta: self.meta_for(proxy),
        };
        let result: Option<wire::RpcResult> = self.ask(proxy, Kind::Rpc, &body).await?;
        let data = match result {
            Some(r) => wire::pick_json(r.data, &r.b64data)
                .map_err(|_| Fail::Error(ProtocolError::Internal))?,
            None => None,
        };
        // The reply's `data` is required JSON; none is `null`.
        let data = match data {
            Some(d) => d,
            None => RawValue::from_string("null".into())
                .map_err(|_| Fail::Error(ProtocolError::Internal))?,
        };
        Ok(Some(crate::protocol::ReplyResult::Rpc(RpcResult { data })))
    }
}
