//! `publish` from a client: permission, the publisher's `ClientInfo`, and
//! the publish through the edge's publisher (its own trace).

use serde_json::value::RawValue;
use tracing::Instrument;

use super::{Fail, Session};
use crate::bus::publisher::{PublishErrorKind, PublishRequest};
use crate::channel::Channel;
use crate::protocol::{ClientInfo, ProtocolError, PublishResult, ReplyResult};
use crate::telemetry;

impl Session {
    pub(super) async fn publish(
        &mut self,
        channel_name: String,
        data: Option<Box<RawValue>>,
    ) -> Result<Option<ReplyResult>, Fail> {
        let data = data.ok_or(ProtocolError::BadRequest)?;
        let channel = Channel::parse(&channel_name, &self.edge.settings.channels)?;
        self.require_member(&channel).await?;
        // A namespace's publish proxy decides instead of its permission, and
        // may replace the data or keep it out of history (`proxied`).
        let proxy = self
            .edge
            .proxies
            .config()
            .namespace(channel.namespace)
            .publish
            .clone();
        let mut history = channel.options.history;
        let data = match proxy {
            Some(proxy) => {
                let grant = self.publish_by_proxy(&proxy, &channel_name, &data).await?;
                history &= !grant.skip_history;
                grant.data.unwrap_or(data)
            }
            None => {
                let sub = self.subs.get(&channel_name).filter(|s| !s.is_ended());
                let authorized_private = sub.is_some_and(|s| s.private);
                channel.check_client_publish(self.user(), authorized_private)?;
                data
            }
        };
        let sub = self.subs.get(&channel_name).filter(|s| !s.is_ended());
        let authed = self.authed.as_ref().ok_or(ProtocolError::Unauthorized)?;
        let info = ClientInfo {
            user: authed.user.clone(),
            client: self.client_id.clone(),
            conn_info: authed.conn_info.clone(),
            chan_info: sub.and_then(|s| s.chan_info.clone()),
        };
        let info = serde_json::value::to_raw_value(&info).map_err(|_| ProtocolError::Internal)?;
        // A client publish starts its own trace (not one per connection).
        let span = if telemetry::enabled() {
            tracing::info_span!(parent: None, "client_publish", otel.kind = "server")
        } else {
            tracing::Span::none()
        };
        let published = self
            .edge
            .publisher
            .publish(PublishRequest {
                channel: &channel_name,
                data: &data,
                info: Some(&info),
                idempotency_key: None,
                history,
            })
            .instrument(span)
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "client publish failed");
                match e.kind {
                    PublishErrorKind::Backpressure => ProtocolError::TooManyRequests,
                    PublishErrorKind::Timeout => ProtocolError::PublishUnconfirmed,
                    PublishErrorKind::Unavailable | PublishErrorKind::Rejected => {
                        ProtocolError::Internal
                    }
                }
            })?;
        if channel.options.history {
            self.after_publish(&channel, published.offset).await;
        }
        Ok(Some(ReplyResult::Publish(PublishResult {
            offset: published.offset,
            epoch: published.epoch,
        })))
    }
}
