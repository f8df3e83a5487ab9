//! What the server API asks of a session through its control queue:
//! server-side subscribe and unsubscribe, a new connection expiry (announced
//! to the client with a `refresh` push).

use super::subscribe::SubOptions;
use super::{Session, close_deadline, ttl};
use crate::channel::Channel;
use crate::edge::command::SessionCommand;
use crate::protocol::{Disconnect, Push, RefreshResult, Reply, Unsubscribe};

impl Session {
    /// One command of the server API (see `control`). Nothing is answered:
    /// the API's caller already has its `{}`, so what cannot be done is
    /// logged and skipped.
    pub(super) async fn handle_control(&mut self, cmd: SessionCommand) {
        match cmd {
            SessionCommand::Subscribe { channel, recover } => {
                self.server_subscribe(channel, recover).await;
            }
            SessionCommand::Unsubscribe { channel } => self.server_unsubscribe(&channel),
            SessionCommand::ExpireAt(at) => {
                let grace = self.edge.settings.client.expired_close_delay;
                if let Some(authed) = self.authed.as_mut() {
                    authed.expires_at = at.map(|exp| close_deadline(exp, grace));
                    // As Centrifugo: the client learns its new expiry.
                    self.reply(&Reply::push(Push {
                        refresh: Some(RefreshResult {
                            expires: at.is_some(),
                            ttl: at.map_or(0, |exp| ttl(crate::auth::clamp_exp(exp))),
                        }),
                        ..Push::default()
                    }));
                }
            }
        }
    }

    /// Server-side subscribe: no permission check (the backend decided). The
    /// client gets a `subscribe` push, then the recovered publications as
    /// publication pushes (the SDKs take publications of a server-side
    /// subscription only from pushes), then live ones.
    pub(super) async fn server_subscribe(&mut self, name: String, recover: Option<(u64, String)>) {
        let channels = self.edge.settings.channels.clone();
        let Ok(channel) = Channel::parse(&name, &channels) else {
            tracing::debug!("server subscribe to an invalid channel");
            return;
        };
        let private = channel.private;
        if let Some(existing) = self.subs.get(&name) {
            if !existing.is_ended() {
                return;
            }
            self.subs.remove(&name);
        }
        if self.subs.len() >= self.edge.settings.client.channel_limit {
            tracing::debug!("server subscribe over the channel limit");
            return;
        }
        let mut p = match self.prepare(&channel, recover, false, false).await {
            Ok(p) => p,
            Err(_) => {
                tracing::warn!("server subscribe failed");
                return;
            }
        };
        let recovered = std::mem::take(&mut p.result.publications);
        let mut head = Vec::with_capacity(recovered.len() + 1);
        let Some(push) = self.encode(&Reply::push(Push {
            channel: name.clone(),
            subscribe: Some(std::mem::take(&mut p.result)),
            ..Push::default()
        })) else {
            return;
        };
        head.push(push);
        for publication in &recovered {
            match self
                .encoding()
                .publication_push(&name, publication.get().as_bytes())
            {
                Ok(frame) => head.push(frame),
                Err(e) => {
                    tracing::error!(error = %e, "recovered publication not encodable");
                    self.outbox.close(Disconnect::SERVER_ERROR);
                    return;
                }
            }
        }
        // The backend authorized it, private channels included.
        self.go_live(name, p, head, SubOptions::granted(private));
    }

    /// Server-side unsubscribe: the `unsubscribe` push (2000) goes out even
    /// when the session is not subscribed, as in Centrifugo; SDKs ignore it
    /// for a channel they do not know.
    pub(super) fn server_unsubscribe(&mut self, channel: &str) {
        match self.subs.remove(channel) {
            // Ends delivery before the push, so no publication follows it.
            Some(sub) => sub.end(Unsubscribe::SERVER),
            None => self.reply(&Reply::push(Push::unsubscribe(
                channel,
                Unsubscribe::SERVER,
            ))),
        }
    }
}
