//! `history`: one page of a channel's history, read through sync.

use super::{Fail, Session};
use crate::channel::Channel;
use crate::protocol::{HistoryRequest, HistoryResult, ProtocolError, ReplyResult};

impl Session {
    pub(super) async fn history(
        &mut self,
        req: HistoryRequest,
    ) -> Result<Option<ReplyResult>, Fail> {
        let channel = Channel::parse(&req.channel, &self.edge.settings.channels)?;
        if !channel.options.history {
            return Err(Fail::Error(ProtocolError::NotAvailable));
        }
        let authorized_private = self
            .subs
            .get(&req.channel)
            .is_some_and(|s| s.private && !s.is_ended());
        channel.check_history(self.user(), authorized_private)?;
        self.require_member(&channel).await?;
        let page_limit = self.edge.settings.client.history_page_limit;
        let limit = match req.limit {
            0 => 0,
            n if n < 0 => page_limit,
            n => (n as usize).min(page_limit),
        };
        let since = req.since.as_ref();
        let (after, before) = match (since, req.reverse) {
            (Some(s), false) => (s.offset, None),
            (Some(s), true) => (0, Some(s.offset)),
            (None, _) => (0, None),
        };
        let page = self
            .edge
            .sync
            .read(&req.channel, after, before, limit, req.reverse)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "history read failed");
                ProtocolError::Internal
            })?;
        if let Some(s) = since
            && !s.epoch.is_empty()
            && s.epoch != page.epoch
        {
            return Err(Fail::Error(ProtocolError::UnrecoverablePosition));
        }
        Ok(Some(ReplyResult::History(HistoryResult {
            publications: page.publications,
            epoch: page.epoch,
            offset: page.head,
        })))
    }
}
