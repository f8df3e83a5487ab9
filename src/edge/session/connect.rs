//! `connect`: authenticates the token (or, without one, asks the connect
//! proxy: `proxied`), records the user in the registry and
//! makes the server-side subscriptions of its `channels` claim (and of the
//! user's personal channel when configured); the reply lists them, and their
//! publications follow it.
//!
//! Knows nothing of other commands beyond `subscribe`'s preparation.

use super::subscribe::SubOptions;
use super::{Authed, Fail, Session, close_deadline, ttl};
use crate::auth::TokenError;
use crate::channel::Channel;
use crate::metrics as m;
use crate::protocol::{
    ConnectRequest, ConnectResult, Disconnect, ProtocolError, Reply, ReplyResult,
};

impl Session {
    pub(super) async fn connect(
        &mut self,
        id: u32,
        req: ConnectRequest,
    ) -> Result<Option<ReplyResult>, Fail> {
        if self.authed.is_some() {
            return Err(Fail::Close(Disconnect::BAD_REQUEST));
        }
        // No credentials at all: the connect proxy decides, or it is a bad
        // request, as Centrifugo's (an anonymous connection has a token
        // with an empty `sub`).
        let mut granted = None;
        let claims = if req.token.is_empty() {
            let Some(proxy) = self.edge.proxies.config().connect.clone() else {
                return Err(Fail::Close(Disconnect::BAD_REQUEST));
            };
            let grant = self.connect_by_proxy(&proxy, &req).await?;
            let claims = grant.claims.clone();
            granted = Some(grant);
            claims
        } else {
            match self.edge.verifier.connect(&req.token) {
                Ok(c) => c,
                Err(TokenError::Expired) => return Err(Fail::Error(ProtocolError::TokenExpired)),
                Err(TokenError::Invalid) => return Err(Fail::Close(Disconnect::INVALID_TOKEN)),
            }
        };
        tracing::Span::current().record("user", claims.sub.as_str());
        if granted.is_none()
            && self
                .edge
                .revoked(&claims.sub, claims.jti.as_deref(), claims.iat)
        {
            return Err(Fail::Close(Disconnect::INVALID_TOKEN));
        }
        // With a refresh proxy every expiring connection, token or not, is
        // refreshed server side (Centrifugo's): not announced, and at the
        // expiry itself (no grace for a client refresh).
        let server_refresh = claims.exp.is_some() && self.edge.proxies.config().refresh.is_some();
        self.proxy.server_refresh = server_refresh;
        let grace = if server_refresh {
            std::time::Duration::ZERO
        } else {
            self.edge.settings.client.expired_close_delay
        };
        self.token = (claims.jti.clone(), claims.iat);
        let tier = self.edge.rates.tier(claims.tier.as_deref());
        if !tier.connect(&claims.sub) {
            return Err(Fail::Error(ProtocolError::TooManyRequests));
        }
        // The `channels` claim counts against the channel limit like
        // subscribes do, each name once (as Centrifugo: more closes 3505).
        let mut seen = std::collections::BTreeSet::new();
        let claimed: Vec<&String> = claims
            .channels
            .iter()
            .filter(|n| seen.insert(n.as_str()))
            .collect();
        if claimed.len() > self.edge.settings.client.channel_limit {
            return Err(Fail::Close(Disconnect::CHANNEL_LIMIT));
        }
        self.authed = Some(Authed {
            user: claims.sub.clone(),
            conn_info: claims.info.clone(),
            expires_at: claims.exp.map(|exp| close_deadline(exp, grace)),
        });
        self.conn.authenticate(&claims.sub);
        self.edge
            .webhooks()
            .connected(&self.client_id, &claims.sub, claims.info.as_deref());
        self.user_cap()?;
        self.rates = self.conn.user_rates(|| tier.user_buckets()).map(|user| {
            super::super::rate::SessionRates {
                connection: tier.connection_buckets(),
                user,
            }
        });
        metrics::counter!(m::CONNECTS_TOTAL).increment(1);

        // Server-side subscriptions from the token's `channels` claim: the
        // token already authorizes them. With
        // `client_subscribe_to_user_personal_channel`, the user's personal
        // channel first (not for an anonymous connection), as Centrifugo.
        let personal = (self.edge.settings.client.subscribe_to_personal && !claims.sub.is_empty())
            .then(|| format!("#{}", claims.sub));
        let mut prepared = Vec::new();
        let mut subs = std::collections::BTreeMap::new();
        let mut names: Vec<&String> = personal.iter().collect();
        names.extend(
            claimed
                .into_iter()
                .filter(|c| Some(*c) != personal.as_ref()),
        );
        for name in names {
            let channel = match Channel::parse(name, &self.edge.settings.channels) {
                Ok(c) => c,
                // As Centrifugo: a proxy's channel in no namespace is an error.
                Err(e) if granted.is_some() => return Err(Fail::Error(e)),
                Err(_) => {
                    tracing::warn!("invalid channel in token channels claim");
                    continue;
                }
            };
            let recover = req
                .subs
                .get(name)
                .filter(|r| r.recover)
                .map(|r| (r.offset, r.epoch.clone()));
            match self.prepare(&channel, recover, false, false).await {
                Ok(p) => prepared.push((name.clone(), p, channel.private)),
                // The ones prepared so far leave as they drop.
                Err(e) => return Err(e),
            }
        }
        for (name, p, _) in &mut prepared {
            subs.insert(name.clone(), std::mem::take(&mut p.result));
        }
        let (data, mut chan_info) = match granted {
            Some(g) => (g.data, g.chan_info),
            None => (None, Default::default()),
        };
        let result = ConnectResult {
            client: self.client_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            expires: claims.exp.is_some() && !server_refresh,
            ttl: if server_refresh {
                0
            } else {
                claims.exp.map_or(0, ttl)
            },
            data,
            subs,
            ping: self.edge.settings.client.ping_interval.as_secs().max(1) as u32,
            pong: !self.uni,
            session: self.transport_session.clone().unwrap_or_default(),
            node: self.node.as_deref().map(str::to_string).unwrap_or_default(),
        };
        self.reply(&Reply::ok(id, ReplyResult::Connect(result)));
        // The token authorized these, private channels included.
        for (name, p, private) in prepared {
            let mut opts = SubOptions::granted(private);
            opts.chan_info = chan_info.remove(&name);
            self.go_live(name, p, Vec::new(), opts);
        }
        // The reply was queued above, before the publications.
        Ok(None)
    }
}
