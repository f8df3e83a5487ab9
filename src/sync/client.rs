//! The edge's (and publisher's) side of sync over NATS request/reply. Edges
//! never open the store: every read goes through here.

use std::time::Duration;

use bytes::Bytes;

use super::conversations;
use super::wire::{DeviceRequest, ImRequest, Marked, MemberMarkers, Page, SyncReply, SyncRequest};
use crate::bus::publisher::{LookupError, OffsetLookup};
use crate::bus::subjects;

/// Shortest time one attempt of a sync request waits for its answer.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum SyncClientError {
    #[error("no sync instance answered")]
    NoResponders,
    #[error("sync request timed out")]
    Timeout,
    #[error("sync request failed: {0}")]
    Request(String),
    #[error("sync answered with an error ({kind}): {message}")]
    Remote { kind: String, message: String },
    #[error("sync reply could not be decoded: {0}")]
    Decode(String),
}

#[derive(Clone, Debug)]
pub struct SyncClient {
    client: async_nats::Client,
    timeout: Duration,
}

impl SyncClient {
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// One request, retried within the overall timeout when no instance
    /// answered (none alive, or the one asked died mid-request): the queue
    /// group sends the next attempt to a live instance. Each attempt gets a
    /// third of the timeout (at least `MIN_ATTEMPT`), so a dead instance costs
    /// one attempt, not the whole budget. Store errors reported by a live
    /// instance whose kind is retryable (`unavailable`, `timeout`) are retried
    /// the same way.
    async fn call(&self, req: &SyncRequest) -> Result<SyncReply, SyncClientError> {
        let body = Bytes::from(
            serde_json::to_vec(req).map_err(|e| SyncClientError::Decode(e.to_string()))?,
        );
        let deadline = tokio::time::Instant::now() + self.timeout;
        let per_attempt = (self.timeout / 3).max(MIN_ATTEMPT);
        let mut backoff = Duration::from_millis(20);
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let result = self.attempt(body.clone(), per_attempt.min(remaining)).await;
            let retry = match &result {
                Err(SyncClientError::NoResponders | SyncClientError::Timeout) => true,
                Err(SyncClientError::Remote { kind, .. }) => {
                    kind == "unavailable" || kind == "timeout"
                }
                _ => false,
            };
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !retry || remaining <= backoff {
                return result;
            }
            metrics::counter!(crate::metrics::SYNC_RETRIES_TOTAL).increment(1);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn attempt(&self, body: Bytes, timeout: Duration) -> Result<SyncReply, SyncClientError> {
        let request = async_nats::Request::new()
            .payload(body)
            .timeout(Some(timeout));
        let msg = self
            .client
            .send_request(subjects::SYNC, request)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => SyncClientError::NoResponders,
                async_nats::RequestErrorKind::TimedOut => SyncClientError::Timeout,
                _ => SyncClientError::Request(e.to_string()),
            })?;
        let reply: SyncReply = serde_json::from_slice(&msg.payload)
            .map_err(|e| SyncClientError::Decode(e.to_string()))?;
        match reply {
            SyncReply::Error { kind, message } => Err(SyncClientError::Remote { kind, message }),
            other => Ok(other),
        }
    }

    /// Reads a page; `backward` pages down from `before` (or the head).
    pub async fn read(
        &self,
        channel: &str,
        after: u64,
        before: Option<u64>,
        limit: usize,
        backward: bool,
    ) -> Result<Page, SyncClientError> {
        let req = SyncRequest::Read {
            channel: channel.to_string(),
            after,
            before,
            limit,
            backward,
        };
        match self.call(&req).await? {
            SyncReply::Page(p) => Ok(p),
            _ => Err(SyncClientError::Decode("expected a page".into())),
        }
    }

    /// The stored offset and the epoch of (channel, key), if stored.
    pub async fn idempotent_offset(
        &self,
        channel: &str,
        key: &str,
    ) -> Result<Option<(u64, String)>, SyncClientError> {
        let req = SyncRequest::Idempotency {
            channel: channel.to_string(),
            key: key.to_string(),
        };
        match self.call(&req).await? {
            SyncReply::Idempotency { offset, epoch } => Ok(offset.map(|o| (o, epoch))),
            _ => Err(SyncClientError::Decode(
                "expected an idempotency answer".into(),
            )),
        }
    }
}

/// IM conversations: membership, markers, the conversation list.
impl SyncClient {
    async fn im(&self, req: ImRequest) -> Result<SyncReply, SyncClientError> {
        self.call(&SyncRequest::Im(req)).await
    }

    fn unexpected<T>(what: &str) -> Result<T, SyncClientError> {
        Err(SyncClientError::Decode(format!("expected {what}")))
    }

    /// Adds members; returns those that were not members before.
    pub async fn add_members(
        &self,
        channel: &str,
        users: &[String],
    ) -> Result<Vec<String>, SyncClientError> {
        let req = ImRequest::AddMembers {
            channel: channel.to_string(),
            users: users.to_vec(),
        };
        match self.im(req).await? {
            SyncReply::Users(u) => Ok(u),
            _ => Self::unexpected("users"),
        }
    }

    /// Removes members; returns those that were members before.
    pub async fn remove_members(
        &self,
        channel: &str,
        users: &[String],
    ) -> Result<Vec<String>, SyncClientError> {
        let req = ImRequest::RemoveMembers {
            channel: channel.to_string(),
            users: users.to_vec(),
        };
        match self.im(req).await? {
            SyncReply::Users(u) => Ok(u),
            _ => Self::unexpected("users"),
        }
    }

    pub async fn is_member(&self, channel: &str, user: &str) -> Result<bool, SyncClientError> {
        let req = ImRequest::IsMember {
            channel: channel.to_string(),
            user: user.to_string(),
        };
        match self.im(req).await? {
            SyncReply::Flag(f) => Ok(f),
            _ => Self::unexpected("a flag"),
        }
    }

    /// Members after `after` (user id order), at most `limit`.
    pub async fn members(
        &self,
        channel: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<MemberMarkers>, SyncClientError> {
        let req = ImRequest::Members {
            channel: channel.to_string(),
            after: after.to_string(),
            limit,
        };
        match self.im(req).await? {
            SyncReply::Members(m) => Ok(m),
            _ => Self::unexpected("members"),
        }
    }

    /// Moves `user`'s markers in `channel` forward (clamped to the head).
    pub async fn mark(
        &self,
        user: &str,
        channel: &str,
        read: u64,
        delivered: u64,
    ) -> Result<Marked, SyncClientError> {
        let req = ImRequest::Mark {
            user: user.to_string(),
            channel: channel.to_string(),
            read,
            delivered,
        };
        match self.im(req).await? {
            SyncReply::Marked(m) => Ok(m),
            _ => Self::unexpected("markers"),
        }
    }

    pub async fn conversations(
        &self,
        user: &str,
        limit: usize,
        cursor: Option<String>,
        since: Option<u64>,
    ) -> Result<conversations::Page, SyncClientError> {
        let req = ImRequest::Conversations {
            user: user.to_string(),
            limit,
            cursor,
            since,
        };
        match self.im(req).await? {
            SyncReply::Conversations(p) => Ok(p),
            _ => Self::unexpected("conversations"),
        }
    }

    pub async fn unread(&self, user: &str) -> Result<conversations::Unread, SyncClientError> {
        match self
            .im(ImRequest::Unread {
                user: user.to_string(),
            })
            .await?
        {
            SyncReply::Unread(u) => Ok(u),
            _ => Self::unexpected("unread counts"),
        }
    }
}

/// The push device registry (`sync::device`).
impl SyncClient {
    async fn device_call(&self, req: DeviceRequest) -> Result<SyncReply, SyncClientError> {
        self.call(&SyncRequest::Device(req)).await
    }

    /// Stores a checked device; returns it as stored and the ids of the
    /// user's devices it evicted.
    pub async fn register_device(
        &self,
        device: &crate::store::Device,
    ) -> Result<(crate::store::Device, Vec<String>), SyncClientError> {
        let req = DeviceRequest::Register {
            device: device.clone(),
        };
        match self.device_call(req).await? {
            SyncReply::Registered { device, evicted } => Ok((device, evicted)),
            _ => Self::unexpected("a registered device"),
        }
    }

    /// Removes a device (only `user`'s, when given); the device removed.
    pub async fn remove_device(
        &self,
        id: &str,
        user: Option<&str>,
    ) -> Result<Option<crate::store::Device>, SyncClientError> {
        let req = DeviceRequest::Remove {
            id: id.to_string(),
            user: user.map(str::to_string),
        };
        match self.device_call(req).await? {
            SyncReply::Device(d) => Ok(d),
            _ => Self::unexpected("a device"),
        }
    }

    /// A page of the user's devices by id after `after`.
    pub async fn devices(
        &self,
        user: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<crate::store::Device>, SyncClientError> {
        let req = DeviceRequest::List {
            user: user.to_string(),
            after: after.to_string(),
            limit,
        };
        match self.device_call(req).await? {
            SyncReply::Devices(d) => Ok(d),
            _ => Self::unexpected("devices"),
        }
    }
}

/// The publisher's duplicate lookup (I3) goes to sync.
impl OffsetLookup for SyncClient {
    fn idempotent_offset<'a>(
        &'a self,
        channel: &'a str,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<(u64, String)>, LookupError>> {
        Box::pin(async move {
            SyncClient::idempotent_offset(self, channel, key)
                .await
                .map_err(|e| match e {
                    SyncClientError::Timeout | SyncClientError::NoResponders => LookupError::Retry,
                    e => LookupError::Failed(e.to_string()),
                })
        })
    }
}
