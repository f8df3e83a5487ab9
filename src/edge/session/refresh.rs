//! `refresh` (the connection's token) and `sub_refresh` (a subscription's):
//! a new expiry, checked against the same user and channel.

use super::{Fail, Session, close_deadline, ttl};
use crate::auth::TokenError;
use crate::protocol::{
    Disconnect, ProtocolError, RefreshRequest, RefreshResult, ReplyResult, SubRefreshRequest,
    SubRefreshResult,
};

impl Session {
    pub(super) fn refresh(&mut self, req: RefreshRequest) -> Result<Option<ReplyResult>, Fail> {
        let claims = match self.edge.verifier.connect(&req.token) {
            Ok(c) => c,
            Err(TokenError::Expired) => return Err(Fail::Error(ProtocolError::TokenExpired)),
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
            client: self.client_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            expires: claims.exp.is_some(),
            ttl: claims.exp.map_or(0, ttl),
        })))
    }

    pub(super) fn sub_refresh(
        &mut self,
        req: SubRefreshRequest,
    ) -> Result<Option<ReplyResult>, Fail> {
        let user = self.user().to_string();
        let claims = match self
            .edge
            .verifier
            .subscription(&req.token, &user, &req.channel)
        {
            Ok(c) if !self.edge.revoked(&user, c.jti.as_deref(), c.iat) => c,
            Ok(_) => return Err(Fail::Error(ProtocolError::PermissionDenied)),
            Err(TokenError::Expired) => return Err(Fail::Error(ProtocolError::TokenExpired)),
            Err(TokenError::Invalid) => return Err(Fail::Error(ProtocolError::PermissionDenied)),
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
