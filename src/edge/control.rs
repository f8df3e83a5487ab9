//! Per-user control across nodes: the server API's `disconnect`, `subscribe`,
//! `unsubscribe` and `refresh` reach every edge where the user is connected.
//!
//! Transport: the API publishes one [`ControlMessage`] (JSON) on core NATS at
//! `subjects::user_subject(user)`. Every edge holds one wildcard subscription
//! on `subjects::user_wildcard()` for its whole life and drops messages for
//! users it has no session of. We chose that over a reference-counted
//! subscription per connected user because control traffic is low volume
//! (backend moderation and membership changes, not publications): every edge
//! seeing every control message costs little, while a per-user subscription
//! would cost a NATS SUB/UNSUB for each user's first connect and last
//! disconnect, and would lose a control message sent in the window between a
//! connect and its subscription becoming active at the server. The wildcard
//! is active at the server before the edge accepts connections.
//!
//! Semantics are Centrifugo's: fire-and-forget. The API's `{}` means the
//! message was handed to NATS (published and flushed), not that a session was
//! found or acted on; a user connected nowhere is no error. Messages from one
//! API node to one user arrive at each edge in publish order; between API
//! nodes there is no order.
//!
//! Routing: the edge looks the user up in its registry's by-user index (and
//! filters on `client`, `whitelist`). `disconnect` and `refresh` with `expired` close the
//! outbox directly — terminal, needs no session state, and cannot be delayed
//! behind a busy session. Everything else goes to the session through its
//! bounded control queue (`command::SESSION_CONTROL_QUEUE`) and is handled by
//! the session's read loop, which owns the session state, between client
//! commands. A session whose queue is full is not keeping up: it is closed
//! with 3008 (slow), like an outbox overflow, so the queue stays bounded (I7).
//!
//! Knows nothing of the server API's HTTP shape; the API knows nothing of
//! NATS subjects or sessions.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Edge;
use super::command::SessionCommand;
use super::outbox::Close;
use super::registry::Target;
use crate::bus::subjects;
use crate::metrics as m;
use crate::protocol::{Disconnect, SharedPush};

/// One control message, as published on `herald.user.<token>`.
///
/// `{"user":"alice","client":"<id>"?,"op":"disconnect"|"subscribe"|
/// "unsubscribe"|"refresh", …op fields}`; see [`ControlOp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlMessage {
    pub user: String,
    /// Only this connection (the `client` of its connect reply); absent: all
    /// of the user's connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(flatten)]
    pub op: ControlOp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlOp {
    /// Close with this code and reason; connections whose client id is in
    /// `whitelist` stay.
    Disconnect {
        code: u16,
        reason: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        whitelist: Vec<String>,
    },
    /// Server-side subscribe, recovering from `recover_since` if given.
    Subscribe {
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recover_since: Option<StreamPosition>,
    },
    Unsubscribe {
        channel: String,
    },
    /// An async `message` push with this `data` (marker sync, member
    /// changes; `edge::im`), straight into each connection's outbox.
    Message {
        data: serde_json::Value,
    },
    /// `expired`: close with 3005. Otherwise the connection now expires at
    /// `expire_at` (unix seconds; absent: never).
    Refresh {
        #[serde(default)]
        expired: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expire_at: Option<u64>,
    },
}

impl ControlOp {
    /// The metrics label.
    fn label(&self) -> &'static str {
        match self {
            Self::Disconnect { .. } => "disconnect",
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Refresh { .. } => "refresh",
            Self::Message { .. } => "message",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

/// Why a control message was not sent, or the edge could not listen.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("subscribing to the control subjects failed: {0}")]
    Subscribe(String),
    #[error("publishing the control message failed: {0}")]
    Publish(String),
    #[error("NATS did not take the control message within {0:?}")]
    Timeout(Duration),
}

impl Edge {
    /// Publishes a control message on the user's subject and flushes, bounded
    /// by the sync timeout. Success means NATS has it, nothing more.
    pub async fn send_control(&self, msg: &ControlMessage) -> Result<(), ControlError> {
        let body = serde_json::to_vec(msg).map_err(|e| ControlError::Publish(e.to_string()))?;
        let subject = subjects::user_subject(&msg.user);
        let send = async {
            self.nats.publish(subject, body.into()).await.map_err(|e| {
                metrics::counter!(m::NATS_PUBLISH_ERRORS_TOTAL, "kind" => "control").increment(1);
                ControlError::Publish(e.to_string())
            })?;
            self.nats
                .flush()
                .await
                .map_err(|e| ControlError::Publish(e.to_string()))
        };
        tokio::time::timeout(self.sync_timeout, send)
            .await
            .map_err(|_| ControlError::Timeout(self.sync_timeout))?
    }

    /// Subscribes to every user's control subject and routes what arrives
    /// until `shutdown` fires. Returns once the subscription is active at the
    /// server, so a session connected afterwards misses nothing.
    pub async fn serve_control(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, ControlError> {
        let mut sub = self
            .nats
            .subscribe(subjects::user_wildcard())
            .await
            .map_err(|e| ControlError::Subscribe(e.to_string()))?;
        // `flush` only empties the client's buffer. The server handles a
        // connection's messages in order, so once it has answered a request
        // sent after our SUB (with "no responders"), the subscription is
        // active for publishers on every connection.
        match self
            .nats
            .request(subjects::INTEREST_PROBE, bytes::Bytes::new())
            .await
        {
            Err(e) if !matches!(e.kind(), async_nats::RequestErrorKind::NoResponders) => {
                return Err(ControlError::Subscribe(e.to_string()));
            }
            _ => {}
        }
        let edge = self.clone();
        let held = m::GaugeHold::new(metrics::gauge!(m::NATS_SUBSCRIPTIONS));
        Ok(tokio::spawn(async move {
            let _held = held;
            loop {
                let msg = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    msg = sub.next() => msg,
                };
                let Some(msg) = msg else {
                    tracing::warn!("control subscription ended");
                    break;
                };
                match serde_json::from_slice::<ControlMessage>(&msg.payload) {
                    Ok(c) => edge.apply_control(c),
                    Err(e) => {
                        metrics::counter!(m::CONTROL_TOTAL, "op" => "unknown", "result" => "invalid")
                            .increment(1);
                        tracing::debug!(error = %e, "invalid control message");
                    }
                }
            }
        }))
    }

    /// Applies one control message to the matching local sessions.
    fn apply_control(&self, msg: ControlMessage) {
        let label = msg.op.label();
        let except: &[String] = match &msg.op {
            ControlOp::Disconnect { whitelist, .. } => whitelist,
            _ => &[],
        };
        // `Message` addresses all of the user's connections but `client`
        // (the device that caused it already knows).
        let (only, except): (Option<&str>, Vec<String>) = match &msg.op {
            ControlOp::Message { .. } => (None, msg.client.iter().cloned().collect()),
            _ => (msg.client.as_deref(), except.to_vec()),
        };
        let targets = self.registry.targets(&msg.user, only, &except);
        let result = if targets.is_empty() { "none" } else { "local" };
        metrics::counter!(m::CONTROL_TOTAL, "op" => label, "result" => result).increment(1);
        if targets.is_empty() {
            return;
        }
        tracing::debug!(op = label, sessions = targets.len(), "control message");
        match msg.op {
            ControlOp::Disconnect { code, reason, .. } => {
                let close = if code == Disconnect::FORCE_NO_RECONNECT.code
                    && reason == Disconnect::FORCE_NO_RECONNECT.reason
                {
                    Close::Named(Disconnect::FORCE_NO_RECONNECT)
                } else {
                    Close::Custom {
                        code,
                        reason: reason.into(),
                    }
                };
                for t in targets {
                    t.outbox.close(close.clone());
                }
            }
            ControlOp::Message { data } => {
                let push = SharedPush::message(Bytes::from(data.to_string()));
                // An overflowing outbox closes itself (3008).
                for t in targets {
                    if let Some(frame) = push.frame(t.outbox.encoding()) {
                        let _ = t.outbox.push(frame.clone());
                    }
                }
            }
            ControlOp::Refresh { expired: true, .. } => {
                for t in targets {
                    t.outbox.close(Disconnect::EXPIRED);
                }
            }
            ControlOp::Refresh { expire_at, .. } => {
                let at = expire_at.filter(|at| *at > 0);
                deliver(targets, || SessionCommand::ExpireAt(at));
            }
            ControlOp::Subscribe {
                channel,
                recover_since,
            } => {
                let recover = recover_since.map(|p| (p.offset, p.epoch));
                deliver(targets, || SessionCommand::Subscribe {
                    channel: channel.clone(),
                    recover: recover.clone(),
                });
            }
            ControlOp::Unsubscribe { channel } => {
                deliver(targets, || SessionCommand::Unsubscribe {
                    channel: channel.clone(),
                });
            }
        }
    }
}

/// Queues one command per session; a full queue closes that session (3008).
fn deliver(targets: Vec<Target>, command: impl Fn() -> SessionCommand) {
    for t in targets {
        match t.control.try_send(Box::new(command())) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(m::SLOW_DISCONNECTS_TOTAL).increment(1);
                t.outbox.close(Disconnect::SLOW);
            }
            // The session is ending.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let m = ControlMessage {
            user: "alice".into(),
            client: None,
            op: ControlOp::Disconnect {
                code: 4500,
                reason: "banned".into(),
                whitelist: vec![],
            },
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"user":"alice","op":"disconnect","code":4500,"reason":"banned"}"#
        );
        assert_eq!(serde_json::from_str::<ControlMessage>(&text).unwrap(), m);

        let m: ControlMessage = serde_json::from_str(
            r#"{"user":"u","client":"c","op":"subscribe","channel":"news","recover_since":{"offset":3,"epoch":"e"}}"#,
        )
        .unwrap();
        assert_eq!(m.client.as_deref(), Some("c"));
        assert_eq!(
            m.op,
            ControlOp::Subscribe {
                channel: "news".into(),
                recover_since: Some(StreamPosition {
                    offset: 3,
                    epoch: "e".into()
                }),
            }
        );
        let m: ControlMessage = serde_json::from_str(r#"{"user":"u","op":"refresh"}"#).unwrap();
        assert_eq!(
            m.op,
            ControlOp::Refresh {
                expired: false,
                expire_at: None
            }
        );
        assert!(serde_json::from_str::<ControlMessage>(r#"{"user":"u","op":"reboot"}"#).is_err());
    }
}
