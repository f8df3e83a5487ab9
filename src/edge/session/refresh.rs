//! `refresh` (the connection's token) and `sub_refresh` (a subscription's):
//! a new expiry, checked against the same user and channel.

use super::{Fail, Session, close_deadline, ttl};
use crate::auth::TokenError;
use crate::protocol::{
    Disconnect, ProtocolError, RefreshRequest, RefreshResult, ReplyResult, SubRefreshRequest,
    SubRefreshResult,
};

impl Session {
    /// As Centrifugo: an expired token ends the connection (3005), a token
    /// that is not valid for this user too (3500).
    pub(super) fn refresh(&mut self, req: RefreshRequest) -> Result<Option<ReplyResult>, Fail> {
        let claims = match self.edge.verifier.connect(&req.token) {
            Ok(c) => c,
            Err(TokenError::Expired) => return Err(Fail::Close(Disconnect::EXPIRED)),
            Err(TokenError::Invalid) => return Err(Fail::Close(Disconnect::INVALID_TOKEN)),
        };
        let authed = self.authed.as_mut().ok_or(ProtocolError::Unauthorized)?;
        if claims.sub != authed.user
            || self
                .edge
                .revoked(&claims.sub, claims.jti.as_deref(), claims.iat)
        {
            return Err(Fail::Close(Disconnect::INVALID_TOKEN));
        }
        self.token = (claims.jti.clone(), claims.iat);
        authed.expires_at = claims
            .exp
            .map(|exp| close_deadline(exp, self.edge.settings.client.expired_close_delay));
        Ok(Some(ReplyResult::Refresh(RefreshResult {
            expires: claims.exp.is_some(),
            ttl: claims.exp.map_or(0, ttl),
        })))
    }

    /// As Centrifugo: an expired token is answered with an empty result
    /// (the subscription keeps its expiry and ends with it), a token for
    /// another user or channel ends the connection (3500).
    pub(super) fn sub_refresh(
        &mut self,
        req: SubRefreshRequest,
    ) -> Result<Option<ReplyResult>, Fail> {
        if req.channel.is_empty() {
            return Err(Fail::Close(Disconnect::BAD_REQUEST));
        }
        let user = self.user().to_string();
        let claims = match self
            .edge
            .verifier
            .subscription(&req.token, &user, &req.channel)
        {
            Ok(c) if !self.edge.revoked(&user, c.jti.as_deref(), c.iat) => c,
            Ok(_) => return Err(Fail::Close(Disconnect::INVALID_TOKEN)),
            Err(TokenError::Expired) => {
                return Ok(Some(ReplyResult::SubRefresh(SubRefreshResult::default())));
            }
            Err(TokenError::Invalid) => return Err(Fail::Close(Disconnect::INVALID_TOKEN)),
        };
        let sub = self
            .subs
            .get_mut(&req.channel)
            .filter(|s| !s.is_ended())
            .ok_or(ProtocolError::PermissionDenied)?;
        sub.expires_at = claims
            .exp
            .map(|exp| close_deadline(exp, self.edge.settings.client.expired_close_delay));
        Ok(Some(ReplyResult::SubRefresh(SubRefreshResult {
            expires: claims.exp.is_some(),
            ttl: claims.exp.map_or(0, ttl),
        })))
    }
}
