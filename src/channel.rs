//! Channel names and who may do what with them.
//!
//! A name is UTF-8, 1–255 bytes, `namespace:rest` or just `rest` (default
//! namespace). Inside a name:
//! - `#alice` (no namespace, one user): alice's personal channel. Only alice
//!   subscribes; no client publishes (the server API does).
//! - `...#alice,bob`: user-limited; only the listed users subscribe and
//!   publish. One-to-one and small group chats.
//! - a leading `$` in the rest, or a namespace with `private = true`: subscribe
//!   needs a subscription token for that channel.
//!
//! Refused as bad names: control characters and invisible Unicode format
//! characters (category Cf: U+200B, U+202E, ...), which would let two names
//! look the same. A name with more than one `#` names no users: no client may
//! subscribe, publish or read there (Centrifugo refuses it the same way), so
//! `#alice#eve` is never eve's personal channel.
//!
//! An anonymous user (empty `sub`) may subscribe, read history and publish
//! only in a namespace with `anonymous = true` (or, to subscribe, with a
//! subscription token), as Centrifugo's `allow_*_for_anonymous`.
//!
//! Pure logic: knows the namespace options, not sessions, tokens or NATS.

use std::time::Duration;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::config::{ChannelsConfig, NamespaceOptions};
use crate::protocol::ProtocolError;

pub const MAX_CHANNEL_BYTES: usize = 255;
pub const NAMESPACE_SEPARATOR: char = ':';
const USER_BOUNDARY: char = '#';
const USER_SEPARATOR: char = ',';
const PRIVATE_PREFIX: char = '$';

/// Namespace names: 1–64 of `[A-Za-z0-9_-]`.
pub fn validate_namespace_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("namespace names are 1 to 64 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("namespace names use only letters, digits, `_` and `-`".into());
    }
    Ok(())
}

/// A validated channel name with what its syntax says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel<'a> {
    pub name: &'a str,
    /// `None` for the default namespace.
    pub namespace: Option<&'a str>,
    pub options: NamespaceOptions,
    /// Users allowed by a `#` boundary; empty when the channel has none.
    pub allowed_users: Vec<&'a str>,
    /// More than one `#` boundary: no user is allowed.
    pub no_user_allowed: bool,
    /// `#user` in the default namespace.
    pub personal: bool,
    pub private: bool,
}

/// The `history_retention` of `name`'s namespace (`None`: kept forever, or
/// no such namespace), without validating the rest of the name.
pub fn history_retention_of(name: &str, config: &ChannelsConfig) -> Option<Duration> {
    match name.split_once(NAMESPACE_SEPARATOR) {
        None => config.default.history_retention,
        Some((ns, _)) => config.namespaces.get(ns)?.history_retention,
    }
}

impl<'a> Channel<'a> {
    /// Validates `name` and resolves its namespace. Bad names are
    /// `BadRequest`; an undefined namespace is `UnknownChannel`.
    pub fn parse(name: &'a str, config: &ChannelsConfig) -> Result<Self, ProtocolError> {
        if name.is_empty() || name.len() > MAX_CHANNEL_BYTES || name.chars().any(is_hidden) {
            return Err(ProtocolError::BadRequest);
        }
        let (namespace, rest) = match name.split_once(NAMESPACE_SEPARATOR) {
            Some((ns, rest)) => (Some(ns), rest),
            None => (None, name),
        };
        let options = match namespace {
            None => config.default.clone(),
            Some(ns) => config
                .namespaces
                .get(ns)
                .cloned()
                .ok_or(ProtocolError::UnknownChannel)?,
        };
        if rest.is_empty() {
            return Err(ProtocolError::BadRequest);
        }
        let allowed_users: Vec<&str> = match rest.rsplit_once(USER_BOUNDARY) {
            Some((_, users)) => {
                let users: Vec<&str> = users.split(USER_SEPARATOR).collect();
                if users.iter().any(|u| u.is_empty()) {
                    return Err(ProtocolError::BadRequest);
                }
                users
            }
            None => Vec::new(),
        };
        let no_user_allowed = rest.matches(USER_BOUNDARY).count() > 1;
        let personal = namespace.is_none()
            && !no_user_allowed
            && rest.starts_with(USER_BOUNDARY)
            && allowed_users.len() == 1;
        let private = options.private || rest.starts_with(PRIVATE_PREFIX);
        Ok(Self {
            name,
            namespace,
            options,
            allowed_users,
            no_user_allowed,
            personal,
            private,
        })
    }

    fn user_allowed(&self, user: &str) -> bool {
        if self.no_user_allowed {
            return false;
        }
        self.allowed_users.is_empty() || (!user.is_empty() && self.allowed_users.contains(&user))
    }

    /// May `user` subscribe? `has_subscription_token` says a valid
    /// subscription token for this channel and user was presented.
    pub fn check_subscribe(
        &self,
        user: &str,
        has_subscription_token: bool,
    ) -> Result<(), ProtocolError> {
        if !self.user_allowed(user) {
            return Err(ProtocolError::PermissionDenied);
        }
        if user.is_empty() && !self.options.anonymous && !has_subscription_token {
            return Err(ProtocolError::PermissionDenied);
        }
        if self.private && !has_subscription_token {
            return Err(ProtocolError::PermissionDenied);
        }
        Ok(())
    }

    /// May `user` publish from a client connection? Never into a personal
    /// channel; otherwise if the namespace allows client publishing and the
    /// user may subscribe (private channels: only with a subscription, which
    /// the caller checks by passing `subscribed`).
    pub fn check_client_publish(&self, user: &str, subscribed: bool) -> Result<(), ProtocolError> {
        if self.personal || !self.options.client_publish || !self.user_allowed(user) {
            return Err(ProtocolError::PermissionDenied);
        }
        if user.is_empty() && !self.options.anonymous {
            return Err(ProtocolError::PermissionDenied);
        }
        if self.private && !subscribed {
            return Err(ProtocolError::PermissionDenied);
        }
        Ok(())
    }

    /// May `user` read history (client history command, sync HTTP)?
    /// The same rule as subscribe; private channels need a subscription (or
    /// subscription token) the caller vouches for.
    pub fn check_history(&self, user: &str, authorized_private: bool) -> Result<(), ProtocolError> {
        self.check_subscribe(user, authorized_private)
    }
}

/// Characters a name may not hold: control characters and the invisible
/// format characters (bidi overrides, zero-width spaces, ...).
fn is_hidden(c: char) -> bool {
    c.is_control() || c.general_category() == GeneralCategory::Format
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn config() -> ChannelsConfig {
        let default = NamespaceOptions {
            history: true,
            client_publish: true,
            private: false,
            history_retention: None,
            history_size: None,
            anonymous: false,
            presence: false,
            join_leave: false,
            force_push_join_leave: false,
            membership: false,
            receipts: true,
            track_publishers: true,
            publish_events: false,
            push_unread_delay: None,
            allowed_delta_types: Vec::new(),
        };
        let mut namespaces = BTreeMap::new();
        namespaces.insert("dm".to_string(), default.clone());
        namespaces.insert(
            "secret".to_string(),
            NamespaceOptions {
                private: true,
                ..default.clone()
            },
        );
        namespaces.insert(
            "feed".to_string(),
            NamespaceOptions {
                client_publish: false,
                history: false,
                ..default.clone()
            },
        );
        ChannelsConfig {
            default,
            namespaces,
        }
    }

    #[test]
    fn history_retention_by_namespace() {
        let mut c = config();
        let day = Duration::from_secs(86400);
        c.namespaces.get_mut("dm").expect("dm").history_retention = Some(day);
        assert_eq!(history_retention_of("dm:a", &c), Some(day));
        assert_eq!(history_retention_of("feed:a", &c), None);
        assert_eq!(history_retention_of("plain", &c), None);
        assert_eq!(history_retention_of("nope:a", &c), None);
        c.default.history_retention = Some(day);
        assert_eq!(history_retention_of("plain", &c), Some(day));
    }

    #[test]
    fn names_are_validated() {
        let c = config();
        assert_eq!(
            Channel::parse("", &c).unwrap_err(),
            ProtocolError::BadRequest
        );
        assert_eq!(
            Channel::parse(&"x".repeat(256), &c).unwrap_err(),
            ProtocolError::BadRequest
        );
        assert!(Channel::parse(&"x".repeat(255), &c).is_ok());
        assert_eq!(
            Channel::parse("a\nb", &c).unwrap_err(),
            ProtocolError::BadRequest
        );
        assert_eq!(
            Channel::parse("nope:x", &c).unwrap_err(),
            ProtocolError::UnknownChannel
        );
        assert_eq!(
            Channel::parse("dm:", &c).unwrap_err(),
            ProtocolError::BadRequest
        );
        assert_eq!(
            Channel::parse("dm:#alice,", &c).unwrap_err(),
            ProtocolError::BadRequest
        );
        assert!(Channel::parse("news.sport *> ü", &c).is_ok());
        for hidden in [
            "a\u{202E}b",
            "a\u{200B}b",
            "\u{FEFF}news",
            "dm:#alice,\u{2066}bob",
        ] {
            assert_eq!(
                Channel::parse(hidden, &c).unwrap_err(),
                ProtocolError::BadRequest,
                "{hidden:?}"
            );
        }
    }

    #[test]
    fn more_than_one_user_boundary_allows_nobody() {
        let c = config();
        for name in ["#alice#eve", "dm:#alice#eve", "dm:x#alice,bob#eve"] {
            let ch = Channel::parse(name, &c).unwrap();
            assert!(!ch.personal, "{name}");
            for user in ["alice", "bob", "eve", ""] {
                assert_eq!(
                    ch.check_subscribe(user, true).unwrap_err(),
                    ProtocolError::PermissionDenied,
                    "{name} {user}"
                );
                assert!(ch.check_client_publish(user, true).is_err());
                assert!(ch.check_history(user, true).is_err());
            }
        }
    }

    #[test]
    fn personal_channel() {
        let c = config();
        let ch = Channel::parse("#alice", &c).unwrap();
        assert!(ch.personal);
        assert!(ch.check_subscribe("alice", false).is_ok());
        assert_eq!(
            ch.check_subscribe("bob", false).unwrap_err(),
            ProtocolError::PermissionDenied
        );
        assert_eq!(
            ch.check_subscribe("", false).unwrap_err(),
            ProtocolError::PermissionDenied
        );
        assert_eq!(
            ch.check_client_publish("alice", true).unwrap_err(),
            ProtocolError::PermissionDenied
        );
    }

    #[test]
    fn user_limited_channel() {
        let c = config();
        let ch = Channel::parse("dm:#alice,bob", &c).unwrap();
        assert!(!ch.personal);
        assert!(ch.check_subscribe("alice", false).is_ok());
        assert!(ch.check_subscribe("bob", false).is_ok());
        assert!(ch.check_subscribe("eve", false).is_err());
        assert!(ch.check_client_publish("bob", false).is_ok());
        assert!(ch.check_client_publish("eve", false).is_err());
    }

    #[test]
    fn private_channels_need_a_token() {
        let c = config();
        for name in ["$room", "secret:room"] {
            let ch = Channel::parse(name, &c).unwrap();
            assert!(ch.private);
            assert!(ch.check_subscribe("alice", false).is_err());
            assert!(ch.check_subscribe("alice", true).is_ok());
            assert!(ch.check_client_publish("alice", false).is_err());
            assert!(ch.check_client_publish("alice", true).is_ok());
        }
    }

    #[test]
    fn anonymous_users_need_a_namespace_that_allows_them() {
        let mut c = config();
        c.namespaces.insert(
            "public".to_string(),
            NamespaceOptions {
                anonymous: true,
                ..c.default.clone()
            },
        );
        let ch = Channel::parse("news", &c).unwrap();
        assert!(ch.check_subscribe("", false).is_err());
        assert!(ch.check_subscribe("", true).is_ok(), "a subscription token");
        assert!(ch.check_history("", false).is_err());
        assert!(ch.check_client_publish("", true).is_err());
        let ch = Channel::parse("public:news", &c).unwrap();
        assert!(ch.check_subscribe("", false).is_ok());
        assert!(ch.check_history("", false).is_ok());
        assert!(ch.check_client_publish("", false).is_ok());
        let ch = Channel::parse("public:#alice", &c).unwrap();
        assert!(ch.check_subscribe("", false).is_err(), "not a listed user");
    }

    #[test]
    fn namespace_may_forbid_client_publish() {
        let c = config();
        let ch = Channel::parse("feed:x", &c).unwrap();
        assert!(!ch.options.history);
        assert!(ch.check_subscribe("a", false).is_ok());
        assert!(ch.check_client_publish("a", true).is_err());
    }
}
