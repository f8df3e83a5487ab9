//! Error, disconnect and unsubscribe codes of the Centrifugo client protocol
//! (centrifugal.dev `docs/server/codes.md`).
//!
//! Disconnect codes 3000–3499 ask the SDK to reconnect, 3500–3999 are
//! terminal. Unsubscribe codes below 2500 are terminal, from 2500 the SDK
//! resubscribes (and recovers).

use super::wire::ErrorBody;

/// Client errors returned in replies (codes 100–112).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    Internal,
    Unauthorized,
    UnknownChannel,
    PermissionDenied,
    MethodNotFound,
    AlreadySubscribed,
    LimitExceeded,
    BadRequest,
    NotAvailable,
    TokenExpired,
    Expired,
    TooManyRequests,
    UnrecoverablePosition,
    /// Code 100 like `Internal`, for a publish whose store commit was not
    /// confirmed in time: it may still be stored, so the message says that a
    /// retry may store a second copy, and it is not `temporary` (the client
    /// protocol has no idempotency key to make a retry safe).
    PublishUnconfirmed,
}

impl ProtocolError {
    pub fn code(self) -> u32 {
        match self {
            Self::Internal | Self::PublishUnconfirmed => 100,
            Self::Unauthorized => 101,
            Self::UnknownChannel => 102,
            Self::PermissionDenied => 103,
            Self::MethodNotFound => 104,
            Self::AlreadySubscribed => 105,
            Self::LimitExceeded => 106,
            Self::BadRequest => 107,
            Self::NotAvailable => 108,
            Self::TokenExpired => 109,
            Self::Expired => 110,
            Self::TooManyRequests => 111,
            Self::UnrecoverablePosition => 112,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::Internal => "internal server error",
            Self::PublishUnconfirmed => {
                "publish not confirmed in time: it may still be stored, so publishing again may \
                 store a second copy"
            }
            Self::Unauthorized => "unauthorized",
            Self::UnknownChannel => "unknown channel",
            Self::PermissionDenied => "permission denied",
            Self::MethodNotFound => "method not found",
            Self::AlreadySubscribed => "already subscribed",
            Self::LimitExceeded => "limit exceeded",
            Self::BadRequest => "bad request",
            Self::NotAvailable => "not available",
            Self::TokenExpired => "token expired",
            Self::Expired => "expired",
            Self::TooManyRequests => "too many requests",
            Self::UnrecoverablePosition => "unrecoverable position",
        }
    }

    /// Temporary errors may succeed on retry; SDKs retry them.
    pub fn temporary(self) -> bool {
        matches!(self, Self::Internal | Self::TooManyRequests)
    }

    /// A short static label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Internal | Self::PublishUnconfirmed => "internal",
            Self::Unauthorized => "unauthorized",
            Self::UnknownChannel => "unknown_channel",
            Self::PermissionDenied => "permission_denied",
            Self::MethodNotFound => "method_not_found",
            Self::AlreadySubscribed => "already_subscribed",
            Self::LimitExceeded => "limit_exceeded",
            Self::BadRequest => "bad_request",
            Self::NotAvailable => "not_available",
            Self::TokenExpired => "token_expired",
            Self::Expired => "expired",
            Self::TooManyRequests => "too_many_requests",
            Self::UnrecoverablePosition => "unrecoverable_position",
        }
    }
}

impl From<ProtocolError> for ErrorBody {
    fn from(e: ProtocolError) -> Self {
        ErrorBody {
            code: e.code(),
            message: e.message().into(),
            temporary: e.temporary(),
        }
    }
}

/// Why the server closes a connection: sent as the WebSocket Close frame's
/// code and reason (the only place a disconnect is said on a WebSocket, as in
/// Centrifugo). Codes 3000–3499 and 4000–4499 ask the SDK to reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    pub reason: &'static str,
}

impl Disconnect {
    pub const SHUTDOWN: Self = Self::new(3001, "shutdown");
    pub const SERVER_ERROR: Self = Self::new(3004, "internal server error");
    pub const EXPIRED: Self = Self::new(3005, "connection expired");
    pub const SUB_EXPIRED: Self = Self::new(3006, "subscription expired");
    pub const SLOW: Self = Self::new(3008, "slow");
    pub const WRITE_ERROR: Self = Self::new(3009, "write error");
    pub const INSUFFICIENT_STATE: Self = Self::new(3010, "insufficient state");
    pub const FORCE_RECONNECT: Self = Self::new(3011, "force reconnect");
    pub const NO_PONG: Self = Self::new(3012, "no pong");
    pub const TOO_MANY_REQUESTS: Self = Self::new(3013, "too many requests");
    pub const INVALID_TOKEN: Self = Self::new(3500, "invalid token");
    pub const BAD_REQUEST: Self = Self::new(3501, "bad request");
    pub const STALE: Self = Self::new(3502, "stale");
    pub const FORCE_NO_RECONNECT: Self = Self::new(3503, "force disconnect");
    pub const CONNECTION_LIMIT: Self = Self::new(3504, "connection limit");
    pub const CHANNEL_LIMIT: Self = Self::new(3505, "channel limit");
    pub const MESSAGE_SIZE_LIMIT: Self = Self::new(3506, "message size limit");
    pub const NOT_AVAILABLE: Self = Self::new(3508, "not available");
    /// WebSocket "message too big" for a frame over
    /// `client_message_size_limit`, with an empty reason as Centrifugo's.
    pub const MESSAGE_TOO_BIG: Self = Self::new(1009, "");

    pub const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

/// Why the server ends one subscription (an `unsubscribe` push).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe {
    pub code: u32,
    pub reason: &'static str,
}

impl Unsubscribe {
    pub const SERVER: Self = Self::new(2000, "server unsubscribe");
    pub const INSUFFICIENT_STATE: Self = Self::new(2500, "insufficient state");
    pub const EXPIRED: Self = Self::new(2501, "subscription expired");

    pub const fn new(code: u32, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_match_centrifugo() {
        assert_eq!(ProtocolError::PermissionDenied.code(), 103);
        assert_eq!(ProtocolError::NotAvailable.code(), 108);
        assert_eq!(ProtocolError::TokenExpired.code(), 109);
        assert_eq!(ProtocolError::LimitExceeded.code(), 106);
    }
}
