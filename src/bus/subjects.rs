//! Every NATS subject, stream, bucket and key name Herald uses is built here
//! and nowhere else. A channel name may hold `.`, `*`, `>` and spaces, so it is encoded
//! into one subject token (base64url, no padding).

use async_nats::HeaderName;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The JetStream stream in front of the writer.
pub const INGEST_STREAM: &str = "HERALD_INGEST";
/// Stream metadata key recording the partition count fixed at creation.
pub const PARTITIONS_METADATA_KEY: &str = "herald.partitions";
/// Request/reply subject of the sync role.
pub const SYNC: &str = "herald.sync.v1";
/// Queue group every sync instance joins.
pub const SYNC_QUEUE: &str = "sync";

/// The JetStream stream of push notifications: `send_push_notification`
/// jobs, and one message per device to send to.
pub const PUSH_STREAM: &str = "HERALD_PUSH";
pub const PUSH_WILDCARD: &str = "herald.push.>";
pub const PUSH_JOBS: &str = "herald.push.job";
pub const PUSH_SENDS: &str = "herald.push.send";
/// The durable consumers of the push worker.
pub const PUSH_JOBS_CONSUMER: &str = "herald-push-jobs";
pub const PUSH_SENDS_CONSUMER: &str = "herald-push-sends";

/// The KV bucket of writer membership and partition leases.
pub const WRITERS_BUCKET: &str = "herald_writers";
const MEMBER_KEY_PREFIX: &str = "member.";
const LEASE_KEY_PREFIX: &str = "lease.";

/// A subject nobody answers: a request to it comes back "no responders" only
/// after the server processed everything the connection sent before it.
pub const INTEREST_PROBE: &str = "herald.probe";

/// Header carrying the subject the writer answers a publish on.
pub const REPLY_HEADER: &str = "Herald-Reply";
/// Headers of a sequenced publication on a channel subject.
pub const OFFSET_HEADER: &str = "Herald-Offset";
pub const EPOCH_HEADER: &str = "Herald-Epoch";
/// Header of every publication on a channel subject: when it became
/// deliverable, in microseconds since the Unix epoch — the writer's store
/// commit, or the publish of a channel without history. Edges measure
/// delivery latency from it.
pub const COMMITTED_HEADER: &str = "Herald-Committed";

/// A hot-path header name as a [`HeaderName`] (no allocation): a `&str`
/// name is validated and classified again on every insert or lookup. For
/// [`MSG_ID_HEADER`], [`REPLY_HEADER`], [`OFFSET_HEADER`], [`EPOCH_HEADER`]
/// and [`COMMITTED_HEADER`]; call it in a `const { }` block so the name is
/// built at compile time. (A function, not `const` items: a `HeaderName`
/// holds `Bytes`, which has interior mutability.)
pub const fn header_name(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

/// JetStream's deduplication header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Presence, presence stats and user status requests: every edge subscribes
/// (no queue group) and each answers for its own connections.
pub const PRESENCE_QUERY: &str = "herald.presence.query";
/// Edge heartbeats (membership for presence: who must answer a query).
pub const EDGE_HEARTBEAT: &str = "herald.edge.heartbeat";
/// The KV bucket of users' last-seen times (unix milliseconds).
pub const STATUS_BUCKET: &str = "herald_status";
/// Header of a join or leave on a channel subject: `join` or `leave`; the
/// payload is the `ClientInfo`.
pub const JOIN_LEAVE_HEADER: &str = "Herald-Join-Leave";
/// Header naming the edge a join or leave comes from.
pub const EDGE_HEADER: &str = "Herald-Edge";
/// Header of a status change hint on a `status:<user>` channel subject: the
/// user's online status changed on some edge; the payload is the user.
pub const STATUS_HINT_HEADER: &str = "Herald-Status";
/// Header of an async message for a channel's subscribers (typing, receipts,
/// member changes; `edge::im`), value `1`; the payload is
/// `edge::im::ChannelMessage` JSON.
pub const MESSAGE_HEADER: &str = "Herald-Message";

/// The key of a user's last-seen time in [`STATUS_BUCKET`].
pub fn status_key(user: &str) -> String {
    channel_token(user)
}

/// One subject token for any channel name.
pub fn channel_token(channel: &str) -> String {
    URL_SAFE_NO_PAD.encode(channel.as_bytes())
}

/// Where a channel's publications (sequenced or ephemeral) are fanned out.
pub fn channel_subject(channel: &str) -> String {
    format!("herald.ch.{}", channel_token(channel))
}

/// Per-user control subject (disconnect, server-side subscribe).
pub fn user_subject(user: &str) -> String {
    format!("herald.user.{}", channel_token(user))
}

/// Every per-user control subject: what each edge subscribes to.
pub fn user_wildcard() -> &'static str {
    "herald.user.*"
}

/// Where `/emulation` requests for sessions held by edge `node` go (the
/// node id is the edge's presence id, one token of hex).
pub fn emulation_subject(node: &str) -> String {
    format!("herald.emulation.{}", channel_token(node))
}

/// The ingest subject of one partition.
pub fn ingest_subject(partition: u32) -> String {
    format!("herald.in.{partition}")
}

/// Subjects the ingest stream captures.
pub fn ingest_wildcard() -> &'static str {
    "herald.in.*"
}

/// Durable consumer name of one partition.
pub fn writer_consumer(partition: u32) -> String {
    format!("herald-writer-{partition}")
}

/// The heartbeat key of a live writer instance in [`WRITERS_BUCKET`].
pub fn writer_member_key(writer_id: &str) -> String {
    format!("{MEMBER_KEY_PREFIX}{writer_id}")
}

/// The lease key of a partition in [`WRITERS_BUCKET`]; its value is the id of
/// the writer holding it.
pub fn partition_lease_key(partition: u32) -> String {
    format!("{LEASE_KEY_PREFIX}{partition}")
}

/// A key of [`WRITERS_BUCKET`], parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritersKey<'a> {
    Member(&'a str),
    Lease(u32),
}

/// Parses a key of [`WRITERS_BUCKET`]; `None` for anything else.
pub fn parse_writers_key(key: &str) -> Option<WritersKey<'_>> {
    if let Some(id) = key.strip_prefix(MEMBER_KEY_PREFIX) {
        return (!id.is_empty()).then_some(WritersKey::Member(id));
    }
    key.strip_prefix(LEASE_KEY_PREFIX)?
        .parse()
        .ok()
        .map(WritersKey::Lease)
}

/// The JetStream message id of a (channel, idempotency key): unique per channel.
pub fn message_id(channel: &str, key: &str) -> String {
    format!("{}:{key}", channel_token(channel))
}

/// Root of the publishers' reply inboxes that read batched replies: a reply
/// subject under it (`<root><process>.<token>`) tells the writer it may
/// answer that publisher with one [`batch_reply_subject`] message per batch.
/// Publishers older than batched replies used `_INBOX.herald.<process>`, and
/// get one reply per publication as before (a rolling upgrade).
const BATCHED_INBOX_ROOT: &str = "_INBOX.herald.batched.";
/// The last token of a batched reply's subject; per-publication replies end
/// in a number instead.
pub const BATCH_REPLY_TOKEN: &str = "b";

/// Prefix of this process's reply inbox for publish results: each publish
/// waits on `<prefix>.<token>`; batched replies come on `<prefix>.b`.
pub fn reply_prefix(process_id: &str) -> String {
    format!("{BATCHED_INBOX_ROOT}{process_id}")
}

/// The inbox prefix and token of a reply subject whose publisher reads
/// batched replies; `None` for any other subject (an older publisher's, a
/// test's), which gets one reply per publication.
pub fn batched_reply(reply: &str) -> Option<(&str, u64)> {
    if !reply.starts_with(BATCHED_INBOX_ROOT) {
        return None;
    }
    let (inbox, token) = reply.rsplit_once('.')?;
    Some((inbox, token.parse().ok()?))
}

/// Where the writer sends one batch's replies to the publisher of `inbox`.
pub fn batch_reply_subject(inbox: &str) -> String {
    format!("{inbox}.{BATCH_REPLY_TOKEN}")
}

/// The partition of a channel: FNV-1a 32 of its bytes, mod `partitions`.
/// Written out here because it must never change between versions.
pub fn partition_of(channel: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in channel.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_subject_tokens() {
        for ch in ["a.b", "x*y", "a > b", "ünï", "#alice,bob", "dm:#a"] {
            let t = channel_token(ch);
            assert!(!t.is_empty());
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{t}"
            );
        }
        assert_ne!(channel_token("a.b"), channel_token("a_b"));
    }

    #[test]
    fn user_subjects_match_the_wildcard() {
        let prefix = user_wildcard().trim_end_matches('*');
        for user in ["alice", "a.b", "x y", "ünï"] {
            let s = user_subject(user);
            let token = s.strip_prefix(prefix).expect("under the wildcard");
            assert!(!token.is_empty() && !token.contains('.'), "{s}");
        }
    }

    #[test]
    fn writers_keys_round_trip() {
        assert_eq!(
            parse_writers_key(&writer_member_key("ab12")),
            Some(WritersKey::Member("ab12"))
        );
        assert_eq!(
            parse_writers_key(&partition_lease_key(7)),
            Some(WritersKey::Lease(7))
        );
        for other in ["member.", "lease.x", "lease.-1", "other.1", ""] {
            assert_eq!(parse_writers_key(other), None, "{other}");
        }
    }

    #[test]
    fn batched_replies_are_recognised_by_their_inbox() {
        let prefix = reply_prefix("p1");
        let reply = format!("{prefix}.42");
        assert_eq!(batched_reply(&reply), Some((prefix.as_str(), 42)));
        assert_eq!(batch_reply_subject(&prefix), format!("{prefix}.b"));
        // An older publisher's inbox, a test's subject, a malformed token.
        for other in ["_INBOX.herald.p1.42", "rep.1", &format!("{prefix}.x"), ""] {
            assert_eq!(batched_reply(other), None, "{other}");
        }
    }

    #[test]
    fn partition_is_stable() {
        // Pinned values: changing the hash would move channels between partitions.
        assert_eq!(partition_of("", 16), 0x811c_9dc5 % 16);
        assert_eq!(partition_of("a", 1_000_000), 0xe40c_292c % 1_000_000);
        assert!((0..1000).all(|i| partition_of(&format!("ch{i}"), 16) < 16));
    }
}
