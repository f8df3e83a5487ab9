//! One partition's loop: pull what is available (up to a batch), decode,
//! sequence and commit in one store append (retrying until it succeeds), then
//! publish the new publications on their channel subjects, reply to the
//! publishers (one message per publishing process per batch) and ack
//! JetStream — in exactly that order, so nothing is visible or acknowledged
//! before it is durable (I2).
//!
//! Pipelining (`pipeline_depth` > 1): while a batch's append is in flight the
//! loop takes the next chunk, sequences it against the store as the batches in
//! flight will leave it (their plans' heads and keys, [`Ahead`]) and issues
//! its append — at once when the store applies appends in call order
//! ([`crate::store::Store::ordered_appends`], the embedded store), else once
//! the appends before it succeeded. Batches complete (cache, publish, reply,
//! ack) strictly in order, each only after its own append and its
//! predecessor's completion. A later batch's offsets continue its
//! predecessor's, so if the predecessor stores nothing the store refuses the
//! later one on every channel they share (`Conflict`, I1); on other channels
//! it may be stored, and that is sound (its offsets continue what is stored).
//! So when the oldest batch fails, [`Task::recover`] waits for every later
//! append, publishes what those that succeeded stored (durable, and below any
//! offset sequenced after it), clears the cache and commits the failed batch
//! and every later one again in order through the retry path, where the
//! idempotency keys turn what is stored already into duplicates (replied to
//! with their stored offsets, not published twice).
//!
//! When traces are exported, each ingest message carrying trace context gets
//! a `writer_message` span (a child of the publisher's trace, covering its
//! commit, publish and ack), and its channel publication carries that span's
//! context on to the edges.
//!
//! Owns the partition's head cache. Knows nothing of who owns the partition:
//! it runs until its stop token fires, and commits only while its [`Fence`]
//! is open.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::future::try_join_all;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use super::sequencer::{self, Entry, HeadCache, Known, Outcome, Plan};
use super::{Fence, Shared};
use super::{consumer, pending};
use crate::bus::ingest::{IngestMessage, StoredBatch, WriterReply};
use crate::bus::subjects;
use crate::channel::MAX_CHANNEL_BYTES;
use crate::metrics as m;
use crate::store::{Position, StoreError, StoreErrorKind, StoreResult};
use crate::telemetry;

/// Retry pacing when pulling fails (NATS down, consumer being recreated).
const PULL_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));
/// Retry pacing of a failed store commit.
const COMMIT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(2));

/// Runs one partition until `stop` fires.
pub(super) async fn run(
    shared: Arc<Shared>,
    partition: u32,
    stop: CancellationToken,
    fence: Fence,
) {
    let mut task = Task {
        cache: HeadCache::new(shared.settings.head_cache_capacity),
        shared,
        partition,
        fence,
        inflight: VecDeque::new(),
    };
    let batch_size = task.shared.settings.batch_size;
    let pipelined = task.shared.settings.pipeline_depth > 1;
    let mut backoff = Backoff::new(PULL_BACKOFF);
    let _pending = pending::Poll::start(task.shared.js.clone(), partition);
    tracing::debug!(partition, "writer partition started");
    'open: loop {
        let opened = tokio::select! {
            biased;
            _ = stop.cancelled() => break 'open,
            opened = consumer::open(&task.shared.js, partition, &task.shared.settings) => opened,
        };
        let messages = match opened {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot pull the ingest partition; retrying");
                count_error("consume");
                if !backoff.sleep(&stop).await {
                    break 'open;
                }
                continue;
            }
        };
        // Takes whatever is already delivered, up to a batch, without waiting
        // for more: low traffic flows at once, high traffic batches itself
        // while the previous commit runs.
        let mut chunks = messages.ready_chunks(batch_size);
        loop {
            let chunk = tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    task.drain(&stop).await;
                    task.finish(&mut chunks, &stop).await;
                    break 'open;
                }
                () = task.head_settled(), if !task.inflight.is_empty() => {
                    task.complete_head(&stop).await;
                    continue;
                }
                chunk = chunks.next(), if task.has_room() => chunk,
            };
            let Some(chunk) = chunk else {
                tracing::warn!(partition, "pull stream ended; reopening the consumer");
                task.drain(&stop).await;
                break;
            };
            let batch = task.take_messages(chunk);
            if batch.is_empty() {
                // Only errors: the pull may never recover by itself (in a
                // cluster, a pull sent before the new consumer's leader was
                // elected gets "no responders", and the stream then only
                // reports missed heartbeats while publishes wait). Open the
                // consumer again, after the backoff (what the server still
                // sends to the dropped pull is redelivered after `ack_wait`).
                tracing::warn!(partition, "pull failing; reopening the consumer");
                task.drain(&stop).await;
                break;
            }
            backoff.reset();
            if pipelined {
                task.admit(batch).await;
            } else {
                task.process(batch, &stop).await;
            }
        }
        if !backoff.sleep(&stop).await {
            break 'open;
        }
    }
    tracing::debug!(partition, "writer partition stopped");
}

struct Task {
    shared: Arc<Shared>,
    partition: u32,
    /// Heads as the completed batches left them (never a batch in flight's).
    cache: HeadCache,
    fence: Fence,
    /// Batches sequenced and not yet completed, oldest first: at most
    /// `pipeline_depth` (empty when it is 1).
    inflight: VecDeque<InFlight>,
}

/// The valid messages of a pulled batch, decoded.
struct Accepted {
    msgs: Vec<jetstream::Message>,
    metas: Vec<Meta>,
    entries: Vec<Entry>,
    /// One per message when traces are exported, else empty.
    spans: Vec<Span>,
}

/// A batch in the pipeline.
struct InFlight {
    accepted: Accepted,
    /// Sequenced against the store as the batches before it leave it;
    /// `None` when its lookup failed.
    plan: Option<Arc<Plan>>,
    stage: Stage,
    /// Its `writer_batch` span.
    span: Span,
}

/// Where a batch in flight stands.
enum Stage {
    /// Its lookup failed with this error: committed by the retry path at its
    /// turn; nothing is admitted behind it meanwhile.
    Unsequenced(StoreError),
    /// Its append waits for the appends before it (a store that does not
    /// apply appends in call order).
    Waiting,
    /// Its append runs (a task of its own, so it progresses while the loop
    /// sequences or completes other batches).
    Appending(tokio::task::JoinHandle<StoreResult<()>>),
    /// Stored, or nothing to store (only duplicates).
    Stored,
    /// Its append failed (`Some`) or met a closed fence (`None`).
    Failed(Option<StoreError>),
}

type Pulled = Result<jetstream::Message, jetstream::consumer::pull::MessagesError>;

impl Task {
    /// Keeps the messages of a pulled chunk; logs and counts pull errors
    /// (missed heartbeats during a NATS outage, failed pull requests).
    fn take_messages(&self, chunk: Vec<Pulled>) -> Vec<jetstream::Message> {
        let mut batch = Vec::with_capacity(chunk.len());
        for item in chunk {
            match item {
                Ok(msg) => batch.push(msg),
                Err(e) => {
                    tracing::warn!(partition = self.partition, error = %e, "pulling the ingest partition failed");
                    count_error("consume");
                }
            }
        }
        batch
    }

    /// On stop: handles what is already delivered as the last batch, and
    /// hands back (naks) anything delivered beyond it so another writer gets
    /// it at once instead of after `ack_wait`.
    async fn finish<S>(&mut self, chunks: &mut S, stop: &CancellationToken)
    where
        S: futures::Stream<Item = Vec<Pulled>> + Unpin,
    {
        if let Some(Some(chunk)) = chunks.next().now_or_never() {
            let batch = self.take_messages(chunk);
            if !batch.is_empty() {
                self.process(batch, stop).await;
            }
        }
        let mut handed_back = 0usize;
        let bound = usize::try_from(self.shared.settings.max_ack_pending).unwrap_or(usize::MAX);
        while handed_back < bound {
            let Some(Some(chunk)) = chunks.next().now_or_never() else {
                break;
            };
            for msg in self.take_messages(chunk) {
                nak(&msg).await;
                handed_back += 1;
            }
        }
        if handed_back > 0 {
            tracing::debug!(
                partition = self.partition,
                handed_back,
                "prefetched messages handed back"
            );
        }
    }

    async fn process(&mut self, batch: Vec<jetstream::Message>, stop: &CancellationToken) {
        let span = tracing::debug_span!(
            "writer_batch",
            partition = self.partition,
            size = batch.len()
        );
        self.process_inner(batch, stop).instrument(span).await;
    }

    async fn process_inner(&mut self, batch: Vec<jetstream::Message>, stop: &CancellationToken) {
        if let Some(accepted) = self.accept(batch).await {
            self.settle(accepted, None, stop).await;
        }
    }

    /// Decodes a pulled batch; invalid messages are refused here. `None`
    /// when nothing valid is left.
    async fn accept(&self, batch: Vec<jetstream::Message>) -> Option<Accepted> {
        metrics::histogram!(m::WRITER_BATCH_SIZE).record(batch.len() as f64);
        // Each message's JetStream metadata (parsed from its ack subject) once.
        let all_metas: Vec<Meta> = batch.iter().map(Meta::of).collect();
        count_redeliveries(&all_metas);
        record_lag(&all_metas, m::unix_micros(), m::WRITER_RECEIVE_LAG_SECONDS);
        let mut msgs = Vec::with_capacity(batch.len());
        let mut metas = Vec::with_capacity(batch.len());
        let mut entries = Vec::with_capacity(batch.len());
        for (msg, meta) in batch.into_iter().zip(all_metas) {
            match decode(&msg.payload) {
                Ok(entry) => {
                    msgs.push(msg);
                    metas.push(meta);
                    entries.push(entry);
                }
                Err(reason) => self.reject(msg, reason).await,
            }
        }
        if entries.is_empty() {
            return None;
        }
        let spans = if telemetry::enabled() {
            let size = msgs.len();
            msgs.iter()
                .map(|m| message_span(self.partition, size, m))
                .collect()
        } else {
            Vec::new()
        };
        Some(Accepted {
            msgs,
            metas,
            entries,
            spans,
        })
    }

    /// Commits a batch (retrying; `failed` is the error its first attempt
    /// already met) and completes it, or hands it back.
    async fn settle(
        &mut self,
        accepted: Accepted,
        failed: Option<StoreError>,
        stop: &CancellationToken,
    ) {
        match self
            .commit(&accepted.entries, &accepted.msgs, stop, failed)
            .await
        {
            Some(plan) => self.complete(&accepted, &plan).await,
            None => {
                for span in &accepted.spans {
                    span.record("outcome", "handed_back");
                }
                for msg in &accepted.msgs {
                    nak(msg).await;
                }
            }
        }
    }

    /// After a batch's commit: publishes, replies and acks, in that order.
    async fn complete(&self, accepted: &Accepted, plan: &Plan) {
        let committed_us = m::unix_micros();
        record_lag(&accepted.metas, committed_us, m::WRITER_INGEST_LAG_SECONDS);
        let traced = Traced::new(&accepted.spans, &accepted.entries, plan);
        let publishing = Instant::now();
        self.announce(plan, committed_us, &traced).await;
        self.reply(&accepted.msgs, plan).await;
        // `ack` only queues a publish on the connection (no round trip), so
        // these are pipelined behind the replies, in order.
        let acking = Instant::now();
        for msg in &accepted.msgs {
            if let Err(e) = msg.ack().await {
                tracing::warn!(partition = self.partition, error = %e, "ack failed; the message will be redelivered");
                count_error("ack");
            }
        }
        metrics::histogram!(m::WRITER_ACK_SECONDS).record(acking.elapsed().as_secs_f64());
        metrics::histogram!(m::WRITER_PUBLISH_SECONDS).record(publishing.elapsed().as_secs_f64());
        if !plan.appends.is_empty() {
            metrics::counter!(m::WRITER_BATCHES_TOTAL).increment(1);
        }
        metrics::counter!(m::WRITER_SEQUENCED_TOTAL).increment(plan.sequenced() as u64);
        metrics::counter!(m::WRITER_DUPLICATES_TOTAL).increment(plan.duplicates() as u64);
        tracing::debug!(
            sequenced = plan.sequenced(),
            duplicates = plan.duplicates(),
            "writer batch done"
        );
    }

    /// Publishes a stored plan's new publications and emits their webhook
    /// events.
    async fn announce(&self, plan: &Plan, committed_us: u64, traced: &Traced<'_>) {
        self.publish(plan, committed_us, traced).await;
        if let Some(w) = &self.shared.webhooks {
            w.published(&plan.appends, committed_us / 1000).await;
        }
    }

    /// Whether the pipeline takes another batch: it has room, and nothing in
    /// it failed or went unsequenced (what follows such a batch would be
    /// sequenced on a plan that is not stored).
    fn has_room(&self) -> bool {
        self.inflight.len() < self.shared.settings.pipeline_depth
            && self
                .inflight
                .iter()
                .all(|b| !matches!(b.stage, Stage::Unsequenced(_) | Stage::Failed(_)))
    }

    /// Pipelined: decodes and sequences a pulled batch behind the batches in
    /// flight and issues its append when it may.
    async fn admit(&mut self, batch: Vec<jetstream::Message>) {
        let span = tracing::debug_span!(
            "writer_batch",
            partition = self.partition,
            size = batch.len()
        );
        let Some(accepted) = self.accept(batch).instrument(span.clone()).await else {
            return;
        };
        let (plan, stage) = match self
            .sequence(&accepted.entries)
            .instrument(span.clone())
            .await
        {
            Ok(plan) => (Some(Arc::new(plan)), Stage::Waiting),
            Err(e) => (None, Stage::Unsequenced(e)),
        };
        self.inflight.push_back(InFlight {
            accepted,
            plan,
            stage,
            span,
        });
        metrics::gauge!(m::WRITER_PIPELINE_BATCHES).increment(1.0);
        self.start_appends();
    }

    /// Issues the appends of waiting batches that may go: all of them on a
    /// store that applies appends in call order, else the oldest one once
    /// every append before it succeeded. None behind a failed or unsequenced
    /// batch.
    fn start_appends(&mut self) {
        let ordered = self.shared.store.ordered_appends();
        // Every batch before this one is stored.
        let mut clear = true;
        for (at, b) in self.inflight.iter_mut().enumerate() {
            match b.stage {
                Stage::Unsequenced(_) | Stage::Failed(_) => return,
                Stage::Waiting if ordered || clear => {
                    let plan = b.plan.clone().expect("a waiting batch has a plan");
                    b.stage = start_append(&self.shared, &self.fence, plan, at > 0);
                }
                Stage::Waiting | Stage::Appending(_) | Stage::Stored => {}
            }
            clear &= matches!(b.stage, Stage::Stored);
        }
    }

    /// Waits until the oldest batch in flight has its outcome (pending
    /// forever when none is in flight). Cancel-safe: an unfinished append
    /// stays with its batch.
    async fn head_settled(&mut self) {
        let Some(head) = self.inflight.front_mut() else {
            return std::future::pending().await;
        };
        if let Stage::Appending(task) = &mut head.stage {
            let result = task.await.unwrap_or_else(|e| {
                Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    format!("the append task failed: {e}"),
                ))
            });
            head.stage = match result {
                Ok(()) => Stage::Stored,
                Err(e) => Stage::Failed(Some(e)),
            };
        }
    }

    /// Completes the oldest batch in flight once [`Task::head_settled`]
    /// returned: stored, it is published, replied to and acked; failed, the
    /// pipeline is recovered.
    async fn complete_head(&mut self, stop: &CancellationToken) {
        if let Some(Stage::Stored) = self.inflight.front().map(|b| &b.stage) {
            // The next append may go now (a store without ordered appends),
            // while this batch completes.
            self.start_appends();
        }
        let Some(head) = self.inflight.pop_front() else {
            return;
        };
        metrics::gauge!(m::WRITER_PIPELINE_BATCHES).decrement(1.0);
        let InFlight {
            accepted,
            plan,
            stage,
            span,
        } = head;
        match (stage, plan) {
            (Stage::Stored, Some(plan)) => {
                self.cache.apply(&plan);
                self.complete(&accepted, &plan).instrument(span).await;
            }
            (Stage::Unsequenced(e) | Stage::Failed(Some(e)), _) => {
                self.recover(accepted, Some(e), span, stop).await;
            }
            (Stage::Failed(None), _) => self.recover(accepted, None, span, stop).await,
            (stage, plan) => {
                // Not settled yet (only `head_settled` settles it): put back.
                metrics::gauge!(m::WRITER_PIPELINE_BATCHES).increment(1.0);
                self.inflight.push_front(InFlight {
                    accepted,
                    plan,
                    stage,
                    span,
                });
                self.start_appends();
            }
        }
    }

    /// Completes every batch in flight, in order (on stop, and before the
    /// consumer is reopened).
    async fn drain(&mut self, stop: &CancellationToken) {
        while !self.inflight.is_empty() {
            self.head_settled().await;
            self.complete_head(stop).await;
        }
    }

    /// The oldest batch in flight failed (`failed`: its error, `None` for a
    /// closed fence) or could not be sequenced. The later ones were
    /// sequenced on top of it, so their plans cannot be trusted: waits for
    /// every append still running, publishes what those that succeeded
    /// stored (durable, so it may be seen, and in offset order: anything
    /// sequenced from now on lies above it), then commits the failed batch
    /// and each later one again, in order, through [`Task::commit`], where
    /// what is stored already becomes duplicates with their stored offsets.
    async fn recover(
        &mut self,
        head: Accepted,
        failed: Option<StoreError>,
        span: Span,
        stop: &CancellationToken,
    ) {
        let mut later: Vec<InFlight> = self.inflight.drain(..).collect();
        for b in &mut later {
            if let Stage::Appending(task) = &mut b.stage {
                b.stage = match task.await {
                    Ok(Ok(())) => Stage::Stored,
                    Ok(Err(e)) => Stage::Failed(Some(e)),
                    Err(_) => Stage::Failed(None),
                };
            }
        }
        let committed_us = m::unix_micros();
        let stored: usize = later
            .iter()
            .filter_map(|b| match (&b.stage, &b.plan) {
                (Stage::Stored, Some(plan)) => Some(plan),
                _ => None,
            })
            .map(|plan| plan.sequenced())
            .sum();
        for b in &later {
            if let (Stage::Stored, Some(plan)) = (&b.stage, &b.plan) {
                self.announce(plan, committed_us, &Traced::none()).await;
            }
        }
        tracing::warn!(
            partition = self.partition,
            later = later.len(),
            stored_later = stored,
            "a pipelined batch failed; committing it and the batches behind it again"
        );
        self.cache.clear();
        self.settle(head, failed, stop).instrument(span).await;
        for b in later {
            metrics::gauge!(m::WRITER_PIPELINE_BATCHES).decrement(1.0);
            self.settle(b.accepted, None, stop).instrument(b.span).await;
        }
    }

    /// An invalid message must not block the partition: it is terminated
    /// (never redelivered) and its publisher, if waiting, told why.
    async fn reject(&self, msg: jetstream::Message, reason: &'static str) {
        let stream_seq = msg.info().map(|i| i.stream_sequence).ok();
        tracing::warn!(
            partition = self.partition,
            ?stream_seq,
            reason,
            "invalid ingest message; terminated"
        );
        count_error("decode");
        if let Some(reply) = reply_subject(&msg) {
            let failed = WriterReply::Failed {
                message: reason.to_string(),
            };
            self.send_reply(reply, &failed).await;
        }
        if let Err(e) = msg.ack_with(AckKind::Term).await {
            tracing::warn!(partition = self.partition, error = %e, "terminating an invalid message failed");
            count_error("ack");
        }
    }

    /// Sequences and commits until the store accepts the batch (`failed`: the
    /// error a first, pipelined attempt met). Returns
    /// `None` when `stop` fires while the store keeps failing, or when the
    /// fence closed (the partition's lease expired or was lost); the messages
    /// are then not acked.
    ///
    /// On `Conflict` (a head moved under us: another writer, or an earlier
    /// commit whose success we did not see) the cache is dropped and the batch
    /// re-sequenced from the store; the idempotency keys turn anything already
    /// stored into duplicates, so no offset is ever assigned twice. Other
    /// errors are retried with backoff, even non-retryable ones: dropping the
    /// batch would lose acknowledged-to-nobody but accepted publications, and
    /// a stuck partition is visible in `herald_writer_errors_total`.
    async fn commit(
        &mut self,
        entries: &[Entry],
        msgs: &[jetstream::Message],
        stop: &CancellationToken,
        mut failed: Option<StoreError>,
    ) -> Option<Plan> {
        let mut backoff = Backoff::new(COMMIT_BACKOFF);
        let mut conflicts = 0u32;
        loop {
            let attempt = match failed.take() {
                Some(e) => Err(e),
                None => self.try_commit(entries).await,
            };
            let e = match attempt {
                Ok(Some(plan)) => return Some(plan),
                Ok(None) => {
                    tracing::warn!(
                        partition = self.partition,
                        "partition lease expired or lost before the commit; handing the batch back"
                    );
                    return None;
                }
                Err(e) => e,
            };
            count_error(store_error_label(e.kind));
            if e.kind == StoreErrorKind::Conflict {
                self.cache.clear();
                conflicts += 1;
                tracing::warn!(partition = self.partition, conflicts, error = %e, "a channel head moved under the writer; re-sequencing");
                if conflicts == 1 {
                    continue;
                }
            } else if e.kind.retryable() {
                tracing::warn!(partition = self.partition, error = %e, "store commit failed; retrying");
            } else {
                tracing::error!(partition = self.partition, error = %e, "store commit failed; retrying, the store needs attention");
            }
            // Keep JetStream from redelivering the batch while we wait.
            for msg in msgs {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
            if !backoff.sleep(stop).await {
                tracing::warn!(
                    partition = self.partition,
                    "stopping with an uncommitted batch; handing its messages back"
                );
                return None;
            }
        }
    }

    /// One sequencing and commit attempt; `None` (nothing written) when the
    /// fence is closed at the moment of the append.
    async fn try_commit(&mut self, entries: &[Entry]) -> StoreResult<Option<Plan>> {
        let plan = self.sequence(entries).await?;
        if !plan.appends.is_empty() {
            if !self.fence.is_open() {
                return Ok(None);
            }
            let started = Instant::now();
            self.shared.store.append(&plan.appends).await?;
            metrics::histogram!(m::WRITER_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
            self.cache.apply(&plan);
        }
        Ok(Some(plan))
    }

    /// Looks up what the store knows (or will, once the batches in flight
    /// are stored) and sequences the batch on it.
    async fn sequence(&mut self, entries: &[Entry]) -> StoreResult<Plan> {
        let loading = Instant::now();
        let known = self.load(entries).await?;
        metrics::histogram!(m::WRITER_LOOKUP_SECONDS).record(loading.elapsed().as_secs_f64());
        Ok(sequencer::sequence(
            entries,
            &known,
            now_ms(),
            &mut sequencer::new_epoch,
        ))
    }

    /// What the store knows about the batch: each channel's position (from
    /// the batches in flight, else the cache, else one read) and which keys
    /// are already stored (or will be, by a batch in flight).
    async fn load(&mut self, entries: &[Entry]) -> StoreResult<Known> {
        let store = self.shared.store.clone();
        let ahead = Ahead::of(&self.inflight);
        let mut known = Known::default();
        let mut missing = HashSet::new();
        for e in entries {
            if known.has_position(&e.channel) {
                continue;
            }
            if let Some(p) = ahead.heads.get(e.channel.as_str()) {
                known.set_position(&e.channel, p.clone());
                continue;
            }
            match self.cache.get(&e.channel) {
                Some(p) => known.set_position(&e.channel, p.clone()),
                None => {
                    missing.insert(e.channel.as_str());
                }
            }
        }
        let loaded = try_join_all(missing.into_iter().map(|channel| {
            let store = &store;
            async move { store.position(channel).await.map(|p| (channel, p)) }
        }))
        .await?;
        for (channel, position) in loaded {
            self.cache.insert(channel, position.clone());
            known.set_position(channel, position);
        }
        let keys: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.channel.as_str(), e.key.as_str()))
            .collect();
        let stored = store.idempotent_offsets(&keys).await?;
        for (e, offset) in entries.iter().zip(stored) {
            let pending = || {
                ahead
                    .keys
                    .get(&(e.channel.as_str(), e.key.as_str()))
                    .copied()
            };
            if let Some(offset) = offset.or_else(pending) {
                known.set_stored_key(&e.channel, &e.key, offset);
            }
        }
        Ok(known)
    }

    /// Publishes the new publications, each channel's in offset order (one
    /// connection keeps publish order). Duplicates are not re-published:
    /// subscribers already got them. A failed publish loses nothing: the
    /// publication is stored and edges fill gaps from sync (I4). Each carries
    /// the commit time (`committed_us`) for the edges' delivery latency, and
    /// the trace context of its message when traced.
    async fn publish(&self, plan: &Plan, committed_us: u64, traced: &Traced<'_>) {
        let committed = committed_us.to_string();
        for append in &plan.appends {
            let subject = Subject::from(subjects::channel_subject(&append.channel));
            for p in &append.publications {
                let mut headers = HeaderMap::new();
                headers.insert(
                    const { subjects::header_name(subjects::OFFSET_HEADER) },
                    p.offset.to_string(),
                );
                headers.insert(
                    const { subjects::header_name(subjects::EPOCH_HEADER) },
                    append.epoch.as_str(),
                );
                headers.insert(
                    const { subjects::header_name(subjects::COMMITTED_HEADER) },
                    committed.as_str(),
                );
                traced.inject(&append.channel, p.offset, &mut headers);
                let payload = crate::protocol::encode_publication(
                    &p.data,
                    p.info.as_deref(),
                    p.offset,
                    &append.epoch,
                );
                if let Err(e) = self
                    .shared
                    .client
                    .publish_with_headers(subject.clone(), headers, payload)
                    .await
                {
                    tracing::warn!(partition = self.partition, error = %e, "publishing a sequenced publication failed");
                    count_error("publish");
                    count_publish_error("channel");
                }
            }
        }
    }

    /// Answers every publisher waiting on a reply subject; duplicates get the
    /// offset and epoch first given. A publisher that reads batched replies
    /// (its inbox says so: [`subjects::batched_reply`]) gets one message for
    /// all of its publications in the batch; any other, one per publication.
    async fn reply(&self, msgs: &[jetstream::Message], plan: &Plan) {
        // By publishing process; a batch comes from a few edges, so a list
        // searched in order beats hashing.
        let mut batches: Vec<(&str, StoredBatch)> = Vec::new();
        for (msg, outcome) in msgs.iter().zip(&plan.outcomes) {
            let Some(subject) = reply_subject(msg) else {
                continue;
            };
            match subjects::batched_reply(subject) {
                Some((inbox, token)) => {
                    let at = match batches.iter().position(|(i, _)| *i == inbox) {
                        Some(at) => at,
                        None => {
                            batches.push((inbox, StoredBatch::default()));
                            batches.len() - 1
                        }
                    };
                    batches[at].1.push(token, outcome.offset(), outcome.epoch());
                }
                None => {
                    let stored = WriterReply::Stored {
                        offset: outcome.offset(),
                        epoch: outcome.epoch().to_string(),
                    };
                    self.send_reply(subject, &stored).await;
                }
            }
        }
        for (inbox, batch) in batches {
            self.publish_reply(subjects::batch_reply_subject(inbox), batch.into_bytes())
                .await;
        }
    }

    async fn send_reply(&self, subject: &str, reply: &WriterReply) {
        let payload = match serde_json::to_vec(reply) {
            Ok(p) => Bytes::from(p),
            Err(e) => {
                tracing::warn!(partition = self.partition, error = %e, "encoding a writer reply failed");
                count_error("reply");
                return;
            }
        };
        self.publish_reply(subject.to_string(), payload).await;
    }

    async fn publish_reply(&self, subject: String, payload: Bytes) {
        if let Err(e) = self.shared.client.publish(subject, payload).await {
            tracing::warn!(partition = self.partition, error = %e, "replying to a publisher failed");
            count_error("reply");
            count_publish_error("reply");
        }
    }
}

/// Issues the append of a sequenced batch (nothing to store: stored at once;
/// fence closed: failed). The first poll happens here, so an ordered store
/// queues it before any later batch's; the rest runs in a task of its own.
/// `behind`: an earlier batch of the partition is still in flight.
fn start_append(shared: &Shared, fence: &Fence, plan: Arc<Plan>, behind: bool) -> Stage {
    if plan.appends.is_empty() {
        return Stage::Stored;
    }
    if !fence.is_open() {
        return Stage::Failed(None);
    }
    if behind {
        metrics::counter!(m::WRITER_PIPELINED_TOTAL).increment(1);
    }
    let store = shared.store.clone();
    let mut append = Box::pin(async move {
        let started = Instant::now();
        let result = store.append(&plan.appends).await;
        if result.is_ok() {
            metrics::histogram!(m::WRITER_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        }
        result
    });
    match (&mut append).now_or_never() {
        Some(Ok(())) => Stage::Stored,
        Some(Err(e)) => Stage::Failed(Some(e)),
        None => Stage::Appending(tokio::spawn(append)),
    }
}

/// What the batches in flight will have stored once their appends succeed:
/// each channel's head after the newest of them, and their keys.
#[derive(Default)]
struct Ahead<'a> {
    heads: HashMap<&'a str, Position>,
    keys: HashMap<(&'a str, &'a str), u64>,
}

impl<'a> Ahead<'a> {
    fn of(inflight: &'a VecDeque<InFlight>) -> Self {
        let mut ahead = Self::default();
        for plan in inflight.iter().filter_map(|b| b.plan.as_deref()) {
            for a in &plan.appends {
                if let Some(last) = a.publications.last() {
                    ahead.heads.insert(
                        a.channel.as_str(),
                        Position {
                            head: last.offset,
                            epoch: a.epoch.clone(),
                            time_ms: last.time_ms,
                        },
                    );
                }
                for (key, offset) in &a.idempotency_keys {
                    ahead
                        .keys
                        .insert((a.channel.as_str(), key.as_str()), *offset);
                }
            }
        }
        ahead
    }
}

/// The span of one ingest message, a child of the publisher's trace (an API
/// request or a client publish); [`Span::none`] when traces are not exported
/// or the message carries no trace context.
fn message_span(partition: u32, batch_size: usize, msg: &jetstream::Message) -> Span {
    telemetry::nats_child(msg.headers.as_ref(), || {
        tracing::info_span!(
            parent: None,
            "writer_message",
            otel.kind = "consumer",
            partition,
            batch_size,
            offset = tracing::field::Empty,
            outcome = tracing::field::Empty
        )
    })
}

/// The traced messages of a committed batch, by the publication each
/// became; empty (and never consulted per message) when traces are off.
struct Traced<'a> {
    by_publication: HashMap<(&'a str, u64), &'a Span>,
}

impl<'a> Traced<'a> {
    /// Injects nothing.
    fn none() -> Self {
        Self {
            by_publication: HashMap::new(),
        }
    }

    /// Records each message's outcome on its span and indexes the spans of
    /// the newly sequenced ones.
    fn new(spans: &'a [Span], entries: &'a [Entry], plan: &Plan) -> Self {
        let mut by_publication = HashMap::new();
        for ((span, entry), outcome) in spans.iter().zip(entries).zip(&plan.outcomes) {
            span.record("offset", outcome.offset());
            match outcome {
                Outcome::Sequenced { offset, .. } => {
                    span.record("outcome", "sequenced");
                    if !span.is_none() {
                        by_publication.insert((entry.channel.as_str(), *offset), span);
                    }
                }
                Outcome::Duplicate { .. } => {
                    span.record("outcome", "duplicate");
                }
            }
        }
        Self { by_publication }
    }

    /// Puts the trace context of the message that became `(channel,
    /// offset)` on its channel publication.
    fn inject(&self, channel: &str, offset: u64, headers: &mut HeaderMap) {
        if self.by_publication.is_empty() {
            return;
        }
        if let Some(span) = self.by_publication.get(&(channel, offset)) {
            telemetry::inject_nats(span, headers);
        }
    }
}

fn reply_subject(msg: &jetstream::Message) -> Option<&str> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(const { subjects::header_name(subjects::REPLY_HEADER) }))
        .map(|v| v.as_str())
        .filter(|s| !s.is_empty())
}

/// Decodes and checks one ingest message as the writer does; for
/// [`crate::fuzzing`].
pub fn check_ingest(payload: &[u8]) -> Result<(), &'static str> {
    decode(&Bytes::copy_from_slice(payload)).map(|_| ())
}

/// Decodes and checks one ingest message (binary, or the JSON form of older
/// publishers: [`IngestMessage`]). `data` and `info` stay the raw JSON the
/// publisher checked, as slices of the payload: no copy, no parse.
fn decode(payload: &Bytes) -> Result<Entry, &'static str> {
    let msg = IngestMessage::decode(payload)?;
    if msg.channel.is_empty() || msg.channel.len() > MAX_CHANNEL_BYTES {
        return Err("channel name empty or too long");
    }
    if msg.key.is_empty() {
        return Err("empty idempotency key");
    }
    Ok(Entry {
        channel: msg.channel,
        key: msg.key,
        data: msg.data,
        info: msg.info,
    })
}

async fn nak(msg: &jetstream::Message) {
    if let Err(e) = msg.ack_with(AckKind::Nak(None)).await {
        tracing::debug!(error = %e, "nak failed; the message is redelivered after ack_wait");
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn count_error(kind: &'static str) {
    metrics::counter!(m::WRITER_ERRORS_TOTAL, "kind" => kind).increment(1);
}

fn count_publish_error(kind: &'static str) {
    metrics::counter!(m::NATS_PUBLISH_ERRORS_TOTAL, "kind" => kind).increment(1);
}

/// What the writer reads of a message's JetStream metadata: how often it was
/// delivered and when the stream stored it (µs since the Unix epoch, the
/// server's clock). `None` when the metadata does not parse.
#[derive(Debug, Clone, Copy)]
struct Meta(Option<(i64, u64)>);

impl Meta {
    fn of(msg: &jetstream::Message) -> Self {
        Self(msg.info().ok().map(|info| {
            let stored_us =
                u64::try_from(info.published.unix_timestamp_nanos() / 1000).unwrap_or(0);
            (info.delivered, stored_us)
        }))
    }
}

/// Counts the messages JetStream delivered more than once (an ack that did
/// not arrive in time, a writer that stopped without acking).
fn count_redeliveries(metas: &[Meta]) {
    let again = metas
        .iter()
        .filter(|meta| meta.0.is_some_and(|(delivered, _)| delivered > 1))
        .count();
    if again > 0 {
        metrics::counter!(m::WRITER_REDELIVERIES_TOTAL).increment(again as u64);
    }
}

/// Records in `histogram` how long each message waited between the ingest
/// stream storing it (the server's clock) and `now_us` (ours): its receipt,
/// or its commit.
fn record_lag(metas: &[Meta], now_us: u64, histogram: &'static str) {
    let lag = metrics::histogram!(histogram);
    for (_, stored_us) in metas.iter().filter_map(|meta| meta.0) {
        lag.record(now_us.saturating_sub(stored_us) as f64 / 1e6);
    }
}

/// `kind` label of a store failure (a closed set).
fn store_error_label(kind: StoreErrorKind) -> &'static str {
    match kind {
        StoreErrorKind::Unavailable => "store_unavailable",
        StoreErrorKind::Timeout => "store_timeout",
        StoreErrorKind::Conflict => "store_conflict",
        StoreErrorKind::Corrupt => "store_corrupt",
        StoreErrorKind::Io => "store_io",
        StoreErrorKind::Locked => "store_locked",
    }
}

/// Exponential backoff between `min` and `max` that gives up when a stop
/// token fires.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new((min, max): (Duration, Duration)) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// Sleeps the current delay (doubling the next one); `false` if `stop`
    /// fired first.
    async fn sleep(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            biased;
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    fn binary(channel: &str, key: &str) -> Bytes {
        IngestMessage::encode(channel, key, br#"{"x":1}"#, None).unwrap()
    }

    #[test]
    fn decodes_raw_json_without_reshaping_it() {
        let e = decode(&json(
            r#"{"channel":"a.b","data":{"x": [1, 2]},"info":{"user":"u"},"key":"k"}"#,
        ))
        .unwrap();
        assert_eq!((e.channel.as_str(), e.key.as_str()), ("a.b", "k"));
        assert_eq!(&e.data[..], br#"{"x": [1, 2]}"#);
        assert_eq!(e.info.as_deref(), Some(&br#"{"user":"u"}"#[..]));
    }

    #[test]
    fn decodes_the_binary_form_within_the_bounds() {
        let bytes = IngestMessage::encode("a.b", "k", br#"{"x": [1, 2]}"#, Some(b"{}")).unwrap();
        let e = decode(&bytes).unwrap();
        assert_eq!((e.channel.as_str(), e.key.as_str()), ("a.b", "k"));
        assert_eq!(&e.data[..], br#"{"x": [1, 2]}"#);
        assert_eq!(e.info.as_deref(), Some(&b"{}"[..]));
        let longest = "x".repeat(MAX_CHANNEL_BYTES);
        assert_eq!(decode(&binary(&longest, "k")).unwrap().channel, longest);
        assert!(decode(&binary(&format!("{longest}x"), "k")).is_err());
        assert!(decode(&binary("", "k")).is_err());
        assert!(decode(&binary("c", "")).is_err());
    }

    #[test]
    fn refuses_invalid_messages() {
        assert!(decode(&json("not json")).is_err());
        assert!(decode(&json(r#"{"channel":"","data":1,"key":"k"}"#)).is_err());
        assert!(decode(&json(r#"{"channel":"a","data":1,"key":""}"#)).is_err());
        let long = "x".repeat(MAX_CHANNEL_BYTES + 1);
        assert!(
            decode(&Bytes::from(format!(
                r#"{{"channel":"{long}","data":1,"key":"k"}}"#
            )))
            .is_err()
        );
        let whole = binary("c", "k");
        for cut in 0..whole.len() {
            assert!(decode(&whole.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn store_errors_have_distinct_labels() {
        let kinds = [
            StoreErrorKind::Unavailable,
            StoreErrorKind::Timeout,
            StoreErrorKind::Conflict,
            StoreErrorKind::Corrupt,
            StoreErrorKind::Io,
        ];
        let labels: HashSet<_> = kinds.iter().map(|k| store_error_label(*k)).collect();
        assert_eq!(labels.len(), kinds.len());
    }
}
