//! The request/reply format between edges (and publishers) and the sync role
//! over NATS (`subjects::SYNC`, queue group `sync`).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SyncRequest {
    /// A page of a channel; see `store::ReadRange` for the meaning of the
    /// bounds. `limit` is capped at the page limit; 0 reads only the head,
    /// epoch and first available offset.
    Read {
        channel: String,
        after: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        limit: usize,
        #[serde(default)]
        backward: bool,
    },
    /// The offset a (channel, idempotency key) was stored at, if any.
    Idempotency { channel: String, key: String },
    /// IM conversations (`SyncService`'s im part); the asker has checked
    /// the channel name and the caller's permission.
    Im(ImRequest),
    /// Push devices (`SyncService`'s device part); the asker has checked
    /// the registration (`push::registry`).
    Device(DeviceRequest),
}

/// The push device registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeviceRequest {
    /// → `Registered`: the device as stored, and the ids of the user's
    /// devices it evicted (`push_max_devices_per_user`).
    Register { device: crate::store::Device },
    /// → `Device`: the device removed, if any. With `user`, only that
    /// user's device is removed (a client removing its own).
    Remove {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// → `Devices`: the user's devices by id after `after`.
    List {
        user: String,
        after: String,
        limit: usize,
    },
}

/// Membership, markers and the conversation list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ImRequest {
    /// → `Users`: those not members before.
    AddMembers { channel: String, users: Vec<String> },
    /// → `Users`: those members before.
    RemoveMembers { channel: String, users: Vec<String> },
    /// → `Flag`.
    IsMember { channel: String, user: String },
    /// → `Members`: members after `after` by user id, with their markers.
    Members {
        channel: String,
        after: String,
        limit: usize,
    },
    /// → `Marked`: moves the markers forward, clamped to the head.
    Mark {
        user: String,
        channel: String,
        read: u64,
        delivered: u64,
    },
    /// → `Conversations`.
    Conversations {
        user: String,
        limit: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// → `Unread`.
    Unread { user: String },
}

/// One member and their markers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberMarkers {
    pub user: String,
    pub read: u64,
    pub delivered: u64,
}

/// The markers after a `Mark`, whether they moved, and the head they were
/// clamped to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Marked {
    pub read: u64,
    pub delivered: u64,
    pub changed: bool,
    pub head: u64,
}

/// A page: publications as protocol `Publication` JSON objects (with
/// `offset`), in the order asked, plus the channel's epoch and head at the
/// time of the read. The page never holds an offset above `head`, nor below
/// `first_available`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    pub publications: Vec<Box<RawValue>>,
    pub epoch: String,
    pub head: u64,
    /// Lowest offset still served (history retention); 1 when all is kept.
    #[serde(default = "one")]
    pub first_available: u64,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncReply {
    Page(Page),
    Idempotency {
        offset: Option<u64>,
        epoch: String,
    },
    Users(Vec<String>),
    Flag(bool),
    Members(Vec<MemberMarkers>),
    Marked(Marked),
    Conversations(super::conversations::Page),
    Unread(super::conversations::Unread),
    Device(Option<crate::store::Device>),
    Registered {
        device: crate::store::Device,
        evicted: Vec<String>,
    },
    Devices(Vec<crate::store::Device>),
    Error {
        /// `bad_request` (bad channel name, undecodable request),
        /// `unknown_channel` (no such namespace), `not_available` (the
        /// namespace keeps no history), `internal`, or a `StoreErrorKind`
        /// label (`unavailable`, `timeout` and `io` are worth retrying).
        kind: String,
        message: String,
    },
}
