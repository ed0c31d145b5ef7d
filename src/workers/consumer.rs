//! The one consumer loop, generic over what applies its batches
//! ([`Apply`]: an input topic's `Applier`, or the analytics rollups).
//!
//! Guarantee: at-least-once consumption with exactly-once effects. Messages
//! are applied in batches (at most `BATCH_MAX_MESSAGES` per partition) by the
//! applier in one PostgreSQL transaction, and only after that commit is each
//! of the batch's partitions' last offset *stored* for librdkafka's
//! background auto-commit. A crash before the commit redelivers the batch;
//! the inbox makes the redelivery a no-op.
//!
//! Batching adapts to the arrival rate: a partition's next batch takes
//! everything it has buffered when the partition is free (no batch of it in
//! flight), after lingering at most `BATCH_MAX_WAIT_MS` (default 0). Free
//! partitions with few messages share one batch, up to
//! `BATCH_MAX_MESSAGES / BATCH_CONCURRENCY` messages (unless the applier
//! keeps per-partition rows, [`Apply::MIXES_PARTITIONS`]): at a trickle over
//! many partitions each fetch makes one transaction, not one per partition,
//! and the next fetch's messages gather while it commits.
//!
//! Order: a partition has at most one batch in flight, so its messages are
//! applied strictly in offset order. Batches run concurrently (at most
//! `BATCH_CONCURRENCY` per loop, each on its own connection); they never
//! share a partition, so never an order, because an order's messages are
//! keyed to one partition, and the per-order locks taken in a canonical order
//! keep loops of different topics from deadlocking.
//!
//! Rebalances: a revocation reaches the loop as an `Intake` item, in the
//! order librdkafka served it relative to the messages, and is handled in
//! one place (`LoopState::absorb`): the revoked partitions' buffered
//! messages are dropped (the next owner re-reads them) before any message of
//! the new assignment is buffered.
//!
//! Gaps: on a topic whose offsets have none ([`Apply::GAP_FREE`], orderflow's
//! own `order-events`), every message is checked against the offset its
//! partition expects (`positions`); a gap a broker left is read again by
//! seeking back, so no record is skipped unseen.
//!
//! Memory: at most `BATCH_MAX_MESSAGES × (BATCH_CONCURRENCY + 2)` messages
//! wait in the buffers (plus up to `BATCH_MAX_MESSAGES × BATCH_CONCURRENCY` in
//! flight); when they are full the loop stops taking messages from librdkafka,
//! whose own queue is bounded. If they stay full (batches stuck), the
//! assignment is paused and polling goes on.
//!
//! Failures: a transient error (database unreachable) retries the same batch
//! with backoff; while any batch is retrying the assignment is paused, and the
//! loop keeps polling so the member stays in the group. A broker error pauses
//! receiving, with backoff, without blocking anything else. A permanent error
//! isolates the offending message by retrying the batch message by message,
//! and dead-letters that one. A batch shared by several partitions that
//! fails in any way, or waits more than a second for a lock, is not retried
//! whole: its partitions go on apart, each its own batch, so one partition's
//! trouble holds up that partition only.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use super::backoff::Backoff;
use super::batch::{is_transient, BatchReport, RawMessage};
use super::buffers::{Batch, Buffers};
use super::intake::{commit_stored, Intake, LoopContext, Received};
use super::membership::Membership;
use super::positions::{Positions, Verdict};
use crate::config::Settings;
use crate::store::inbox::Outcome;
use crate::telemetry::Metrics;

pub use super::apply::Apply;

/// Everything a loop needs besides its applier.
#[derive(Clone)]
pub struct LoopDeps {
    pub settings: Settings,
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    /// Woken after every commit that may have written outbox rows.
    pub outbox_wakeup: Arc<Notify>,
    /// Wakes the feed notifier (`realtime::notifier`) after each commit of
    /// a loop whose batches announce order events.
    pub feed_wakeup: Arc<Notify>,
}

/// How long a seek back over a gap may take to start.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a batch shared by several partitions waits for a lock before it
/// gives up and its partitions go on apart (a lock held for longer is
/// another loop's batch in trouble, or a stuck one: it must hold up one
/// partition, not all the batch's).
const SHARED_LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the buffers may stay full before the loop pauses its assignment.
const STUCK_AFTER: Duration = Duration::from_secs(1);

/// Retries of a batch that failed transiently, and of receiving after a
/// broker error: 100 ms doubling to 30 s, jittered.
const RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));

/// The loop's mutable state, in one place.
struct LoopState<'a> {
    topic: &'a str,
    buffers: Buffers,
    /// Buffered messages above which the loop stops receiving.
    capacity: usize,
    concurrency: usize,
    in_flight: FuturesUnordered<BoxFuture<'a, Done>>,
    /// The assignment as paused, while held.
    paused: Option<TopicPartitionList>,
    /// Since when the buffers have been full.
    full_since: Option<Instant>,
    /// Broker errors in a row, and when receiving may resume after the last.
    receive_errors: u32,
    receive_after: Option<Instant>,
    /// Each partition's next offset, on a gap-free topic.
    positions: Option<Positions>,
}

impl<'a> LoopState<'a> {
    fn new(
        topic: &'a str,
        settings: &Settings,
        (max_messages, max_wait): (usize, Duration),
        gap_free: bool,
        mixes_partitions: bool,
    ) -> Self {
        LoopState {
            topic,
            buffers: Buffers::new(
                max_messages,
                mixes_partitions.then_some(max_messages / settings.batch_concurrency),
                max_wait,
            ),
            capacity: max_messages * (settings.batch_concurrency + 2),
            concurrency: settings.batch_concurrency,
            in_flight: FuturesUnordered::new(),
            paused: None,
            full_since: None,
            receive_errors: 0,
            receive_after: None,
            positions: gap_free.then(Positions::default),
        }
    }

    fn full(&self) -> bool {
        self.buffers.buffered >= self.capacity
    }

    /// Whether to take messages now: room in the buffers (or paused, when
    /// polling only keeps the member in the group) and no broker backoff.
    fn may_receive(&self) -> bool {
        (!self.full() || self.paused.is_some()) && self.receive_after.is_none()
    }

    /// When a lingering batch falls due, if a slot is free to start it.
    fn linger_deadline(&self) -> Option<Instant> {
        (self.in_flight.len() < self.concurrency)
            .then(|| self.buffers.next_due())
            .flatten()
    }

    /// Starts the batches that are due, as many as there are free slots.
    fn start_due<A: Apply>(
        &mut self,
        processor: &'a BatchProcessor<'a, A>,
        shutdown: &'a CancellationToken,
        force: bool,
    ) {
        // Parts of a split batch may take the loop past its concurrency.
        let room = self.concurrency.saturating_sub(self.in_flight.len());
        for batch in self.buffers.take_due(Instant::now(), force, room) {
            self.in_flight
                .push(processor.apply_until_committed(batch, shutdown).boxed());
        }
    }

    /// Takes a batch that left flight: a shared batch that failed goes back
    /// into flight as one batch per partition (its partitions stay busy, and
    /// each is released when its own part commits); anything else is
    /// reported and its offsets stored.
    fn finish<A: Apply>(
        &mut self,
        processor: &'a BatchProcessor<'a, A>,
        consumer: &StreamConsumer<LoopContext>,
        shutdown: &'a CancellationToken,
        done: Done,
    ) {
        match done.end {
            BatchEnd::Split(parts) => {
                for messages in parts {
                    let batch = Batch {
                        messages,
                        since: Instant::now(),
                    };
                    self.in_flight
                        .push(processor.apply_until_committed(batch, shutdown).boxed());
                }
            }
            end => processor.finish(consumer, Done { end, ..done }, &mut self.buffers),
        }
    }

    /// Takes what the consumer handed over.
    fn absorb(
        &mut self,
        received: Received,
        consumer: &StreamConsumer<LoopContext>,
        metrics: &Metrics,
    ) {
        match received {
            Received::Message(msg) => {
                self.receive_errors = 0;
                if self.in_position(&msg, consumer, metrics) {
                    self.buffers.push(msg, Instant::now());
                }
            }
            Received::Assigned(starts) => {
                if let Some(positions) = &mut self.positions {
                    for (partition, committed) in starts {
                        positions.assigned(partition, committed);
                    }
                }
            }
            Received::Revoked(partitions) => {
                for partition in partitions {
                    if let Some(positions) = &mut self.positions {
                        positions.revoked(partition);
                    }
                    let dropped = self.buffers.drop_partition(partition);
                    if dropped > 0 {
                        debug!(
                            topic = self.topic,
                            partition, dropped, "dropped buffered messages of a revoked partition"
                        );
                    }
                }
            }
            Received::Error(e) => {
                self.receive_errors += 1;
                let wait = RETRY.delay(self.receive_errors);
                warn!(topic = self.topic, error = %e, retry_in_ms = wait.as_millis() as u64, "Kafka consumer error");
                self.receive_after = Some(Instant::now() + wait);
            }
        }
    }

    /// Whether `msg` is the next of its partition (always, on a topic that
    /// may have gaps). A message past a gap starts a rewind instead.
    fn in_position(
        &mut self,
        msg: &RawMessage,
        consumer: &StreamConsumer<LoopContext>,
        metrics: &Metrics,
    ) -> bool {
        let Some(positions) = &mut self.positions else {
            return true;
        };
        let (topic, partition) = (self.topic, msg.partition);
        match positions.check(partition, msg.offset) {
            Verdict::Take => true,
            Verdict::Drop => false,
            Verdict::Rewind(to) => {
                // Dropping what librdkafka prefetched: messages fetched
                // before the seek never reach the loop.
                match consumer.seek(topic, partition, Offset::Offset(to), SEEK_TIMEOUT) {
                    Ok(()) => {
                        metrics.rewound(topic);
                        warn!(
                            topic,
                            partition,
                            received = msg.offset,
                            rewind_to = to,
                            "the broker skipped offsets; reading the partition again from further back"
                        );
                    }
                    Err(e) => {
                        positions.rewind_failed(partition);
                        warn!(topic, partition, error = %e, "failed to seek back over a gap; trying again on the next message");
                    }
                }
                false
            }
            Verdict::TakeAfterGap { missing_from } => {
                let missing = msg.offset - missing_from;
                metrics.offsets_skipped(topic, missing);
                error!(
                    topic,
                    partition,
                    from = missing_from,
                    to = msg.offset - 1,
                    missing,
                    "records were never delivered, even reading from offset 0 (deleted by retention?); going on without them"
                );
                true
            }
        }
    }

    /// Leaves the group and joins it again, which makes the coordinator
    /// rebalance (see `membership`). The revocation arrives through the
    /// intake like any other.
    fn rejoin(&mut self, consumer: &StreamConsumer<LoopContext>, metrics: &Metrics) {
        consumer.unsubscribe();
        self.paused = None;
        match consumer.subscribe(&[self.topic]) {
            Ok(()) => {
                let group = consumer.context().group();
                metrics.group_rejoined(group);
                info!(topic = self.topic, group, "rejoined the consumer group");
            }
            Err(e) => error!(topic = self.topic, error = %e, "failed to subscribe again"),
        }
    }

    /// Holds the assignment (paused, still polled, so the member stays in the
    /// group) while a batch is retrying, or while the buffers have been full
    /// for a while (batches stuck): a loop that stopped polling would be
    /// dropped from the group after `max.poll.interval.ms`.
    fn hold_if_stuck(&mut self, consumer: &StreamConsumer<LoopContext>, retrying: bool) {
        self.full_since = if self.full() {
            self.full_since.or(Some(Instant::now()))
        } else {
            None
        };
        let stuck = self
            .full_since
            .is_some_and(|at| at.elapsed() >= STUCK_AFTER);
        hold_assignment(consumer, retrying || stuck, &mut self.paused, self.topic);
    }
}

/// Runs the loop of the applier's topic until `shutdown`; then finishes the
/// batches in hand, commits offsets and leaves the group.
pub async fn run<A: Apply>(
    deps: LoopDeps,
    applier: Arc<A>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topic = applier.topic().to_owned();
    let group = applier.group(&deps.settings);
    // Up while this function runs (a panic drops the guard too) and the
    // client's statistics show broker and coordinator contact.
    let _running = deps.metrics.consumer_running(
        &topic,
        deps.settings.statistics_interval * 3 + Duration::from_secs(5),
    );
    let context = LoopContext::new(&topic, &group, deps.metrics.clone(), A::GAP_FREE);
    let consumer: StreamConsumer<LoopContext> = applier
        .consumer_config(&deps.settings, &group)
        .create_with_context(context)
        .context("failed to create Kafka consumer")?;
    consumer
        .subscribe(&[topic.as_str()])
        .with_context(|| format!("failed to subscribe to {topic}"))?;
    info!(%topic, %group, "consumer loop started");
    let rejoin = Arc::new(AtomicBool::new(false));
    let membership = Membership {
        pool: deps.pool.clone(),
        settings: deps.settings.clone(),
        metrics: deps.metrics.clone(),
        topic: topic.clone(),
        group: group.clone(),
        assignment: consumer.context().assignment(),
        rejoin: rejoin.clone(),
        partition_count: applier.partition_count(),
    };
    let watching = tokio::spawn(membership.run(shutdown.clone()));
    let processor = BatchProcessor {
        deps: &deps,
        applier: &*applier,
        retrying: AtomicUsize::new(0),
    };
    consume(&consumer, &processor, &shutdown, &rejoin).await;
    commit_stored(&consumer, &topic, "at shutdown");
    let _ = watching.await;
    // Closing leaves the group; librdkafka blocks while it does, for long if
    // the broker is gone, so keep that off the async workers.
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .context("consumer close panicked")?;
    info!(%topic, "consumer loop stopped");
    Ok(())
}

/// Receives and applies until shutdown, then finishes what is in hand.
async fn consume<'a, A: Apply>(
    consumer: &'a StreamConsumer<LoopContext>,
    processor: &'a BatchProcessor<'a, A>,
    shutdown: &'a CancellationToken,
    rejoin: &AtomicBool,
) {
    let settings = &processor.deps.settings;
    let mut state = LoopState::new(
        processor.applier.topic(),
        settings,
        processor.applier.batching(settings),
        A::GAP_FREE,
        A::MIXES_PARTITIONS,
    );
    let metrics = &*processor.deps.metrics;
    let mut intake = Intake::new(consumer);
    // Re-evaluates pausing when nothing else wakes the loop (batches stuck
    // retrying or waiting on a lock while the buffers are full).
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if rejoin.swap(false, Ordering::SeqCst) {
            state.rejoin(consumer, &processor.deps.metrics);
        }
        state.start_due(processor, shutdown, false);
        state.hold_if_stuck(consumer, processor.retrying.load(Ordering::Relaxed) > 0);
        let deadline = state.linger_deadline();
        let resume_receiving = state.receive_after;
        let receive = state.may_receive();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = state.in_flight.next(), if !state.in_flight.is_empty() => {
                state.finish(processor, consumer, shutdown, done);
            }
            _ = sleep_until_opt(deadline) => {}
            _ = sleep_until_opt(resume_receiving) => state.receive_after = None,
            _ = tick.tick() => {}
            received = intake.next(), if receive => {
                state.absorb(received, consumer, metrics);
                // Take everything already fetched: that is the batch.
                while !state.full() && state.receive_after.is_none() {
                    match intake.ready() {
                        Some(received) => state.absorb(received, consumer, metrics),
                        None => break,
                    }
                }
            }
        }
    }
    // Finish what is in hand. A batch that is retrying gives up at once
    // (shutdown is set) and is redelivered later.
    loop {
        state.start_due(processor, shutdown, true);
        match state.in_flight.next().await {
            Some(done) => state.finish(processor, consumer, shutdown, done),
            None if state.buffers.is_empty() => break,
            None => {}
        }
    }
}

/// Pauses the whole current assignment while `hold` (including partitions
/// assigned since the last pause), and resumes it once `hold` ends. Pausing
/// is lossless: librdkafka drops what it had prefetched for those partitions
/// and fetches again from the last message it handed over.
fn hold_assignment(
    consumer: &StreamConsumer<LoopContext>,
    hold: bool,
    paused: &mut Option<TopicPartitionList>,
    topic: &str,
) {
    if hold {
        let Ok(current) = consumer.assignment() else {
            return;
        };
        if paused.as_ref() != Some(&current) {
            match consumer.pause(&current) {
                Ok(()) => *paused = Some(current),
                Err(e) => warn!(topic, error = %e, "failed to pause partitions"),
            }
        }
    } else if paused.take().is_some() {
        match consumer.assignment() {
            Ok(current) => {
                if let Err(e) = consumer.resume(&current) {
                    error!(topic, error = %e, "failed to resume partitions");
                }
            }
            Err(e) => error!(topic, error = %e, "failed to read the assignment to resume it"),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

struct BatchProcessor<'a, A> {
    deps: &'a LoopDeps,
    applier: &'a A,
    /// Batches currently backing off after a transient failure.
    retrying: AtomicUsize,
}

/// A batch that left flight, and how.
struct Done {
    /// Each partition of the batch with its last offset.
    ends: Vec<(i32, i64)>,
    size: usize,
    /// How long its oldest message waited in the buffers.
    waited: Duration,
    end: BatchEnd,
}

enum BatchEnd {
    /// Its report, and how long its committing attempt took.
    Committed(BatchReport, Duration),
    /// Given up at shutdown.
    Abandoned,
    /// A batch shared by several partitions that failed (or waited too long
    /// for a lock): each partition's messages, to go on apart.
    Split(Vec<Vec<RawMessage>>),
}

impl<A: Apply> BatchProcessor<'_, A> {
    /// Applies a batch: one partition's, retrying transient failures with
    /// backoff until it commits or until shutdown; a shared one, once.
    async fn apply_until_committed(&self, batch: Batch, shutdown: &CancellationToken) -> Done {
        let waited = batch.since.elapsed();
        let ends = batch.ends();
        let size = batch.messages.len();
        let span = tracing::info_span!(
            "batch",
            topic = self.applier.topic(),
            first_offset = batch.messages[0].offset,
            partitions = ?ends,
            size
        );
        let end = if ends.len() > 1 {
            self.apply_shared(batch.messages).instrument(span).await
        } else {
            match self
                .retry_until_committed(&batch.messages, shutdown)
                .instrument(span)
                .await
            {
                Some((report, took)) => BatchEnd::Committed(report, took),
                None => BatchEnd::Abandoned,
            }
        };
        Done {
            ends,
            size,
            waited,
            end,
        }
    }

    /// One attempt at a shared batch, waiting at most [`SHARED_LOCK_TIMEOUT`]
    /// for a lock. Whatever goes wrong (a lock held elsewhere, a transient
    /// failure, a message that cannot be applied) must hold up only its own
    /// partition, so the batch is split rather than retried.
    async fn apply_shared(&self, messages: Vec<RawMessage>) -> BatchEnd {
        let started = Instant::now();
        match self.apply_once(&messages, Some(SHARED_LOCK_TIMEOUT)).await {
            Ok(report) => BatchEnd::Committed(report, started.elapsed()),
            Err(e) => {
                debug!(
                    error = format!("{e:#}"),
                    "a shared batch failed; its partitions go on apart"
                );
                BatchEnd::Split(
                    messages
                        .chunk_by(|a, b| a.partition == b.partition)
                        .map(<[RawMessage]>::to_vec)
                        .collect(),
                )
            }
        }
    }

    async fn retry_until_committed(
        &self,
        batch: &[RawMessage],
        shutdown: &CancellationToken,
    ) -> Option<(BatchReport, Duration)> {
        let topic = self.applier.topic();
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            let err = match self.apply_isolating(batch).await {
                Ok(report) => {
                    if attempt > 0 {
                        self.retrying.fetch_sub(1, Ordering::Relaxed);
                    }
                    return Some((report, started.elapsed()));
                }
                Err(e) => e,
            };
            if attempt == 0 {
                self.retrying.fetch_add(1, Ordering::Relaxed);
            }
            attempt += 1;
            let wait = RETRY.delay(attempt);
            self.deps.metrics.transient_failure(topic, &err, wait);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => {
                    self.retrying.fetch_sub(1, Ordering::Relaxed);
                    warn!("shutting down with an uncommitted batch; it will be redelivered");
                    return None;
                }
            }
        }
    }

    /// Reports a batch that left flight and, if it committed, stores each of
    /// its partitions' offsets: only now may Kafka forget these messages.
    fn finish(&self, consumer: &StreamConsumer<LoopContext>, done: Done, buffers: &mut Buffers) {
        let committed = matches!(done.end, BatchEnd::Committed(..));
        for &(partition, _) in &done.ends {
            buffers.finished(partition, committed);
        }
        let BatchEnd::Committed(report, took) = done.end else {
            return;
        };
        let topic = self.applier.topic();
        let metrics = &self.deps.metrics;
        metrics.batch_committed(topic, done.size, done.waited, took);
        let now = Utc::now();
        for (outcome, occurred_at) in &report.outcomes {
            metrics.message_handled(topic, outcome.as_str());
            if let Some(at) = occurred_at {
                metrics.end_to_end(topic, (now - *at).to_std().unwrap_or_default());
            }
        }
        report.tally.report(metrics);
        self.deps.outbox_wakeup.notify_one();
        if A::ANNOUNCES {
            self.deps.feed_wakeup.notify_one();
        }
        for (partition, last_offset) in done.ends {
            if let Err(e) = consumer.store_offset(topic, partition, last_offset) {
                // The partition was revoked meanwhile; its next owner
                // re-reads the batch and the inbox skips it.
                debug!(topic, partition, error = %e, "could not store offset");
            }
        }
    }

    /// Applies the batch in one transaction. On a permanent error, applies it
    /// message by message and dead-letters whichever message fails alone.
    /// Returns `Err` only for transient errors.
    async fn apply_isolating(&self, batch: &[RawMessage]) -> anyhow::Result<BatchReport> {
        let err = match self.apply_once(batch, None).await {
            Ok(report) => return Ok(report),
            Err(e) if is_transient(&e) => return Err(e),
            Err(e) => e,
        };
        warn!(
            error = format!("{err:#}"),
            "batch failed permanently; isolating the message"
        );
        let mut merged = BatchReport::default();
        for msg in batch {
            match self.apply_once(std::slice::from_ref(msg), None).await {
                Ok(report) => {
                    merged.outcomes.extend(report.outcomes);
                    merged.tally.absorb(report.tally);
                }
                Err(e) if is_transient(&e) => return Err(e),
                Err(e) => {
                    error!(
                        partition = msg.partition,
                        offset = msg.offset,
                        error = format!("{e:#}"),
                        "message cannot be applied; dead-lettering it"
                    );
                    self.dead_letter_alone(msg, &format!("{e:#}")).await?;
                    merged.outcomes.push((Outcome::DeadLettered, None));
                }
            }
        }
        Ok(merged)
    }

    /// Decodes (outside the transaction), then applies and commits; with
    /// `lock_timeout`, a lock waited for longer fails the transaction.
    async fn apply_once(
        &self,
        batch: &[RawMessage],
        lock_timeout: Option<Duration>,
    ) -> anyhow::Result<BatchReport> {
        let decoded = self.applier.decode(batch).await?;
        let mut tx = self.begin(lock_timeout).await?;
        let report = self
            .applier
            .apply(&mut tx, batch, &decoded)
            .await
            .with_context(|| match batch {
                [one] => format!(
                    "failed to apply {} offset {}/{}",
                    self.applier.topic(),
                    one.partition,
                    one.offset
                ),
                _ => format!(
                    "failed to apply a batch of {} from {}",
                    batch.len(),
                    self.applier.topic()
                ),
            })?;
        tx.commit().await.context("failed to commit batch")?;
        Ok(report)
    }

    /// A transaction on a pooled connection; with `lock_timeout`, set in the
    /// same round trip as the BEGIN (a shared batch is most batches at low
    /// rates, where each round trip shows in the latency).
    async fn begin(
        &self,
        lock_timeout: Option<Duration>,
    ) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let pool = &self.deps.pool;
        match lock_timeout {
            None => pool.begin().await,
            Some(t) => {
                pool.begin_with(format!("BEGIN; SET LOCAL lock_timeout = {}", t.as_millis()))
                    .await
            }
        }
        .context("failed to begin transaction")
    }

    async fn dead_letter_alone(&self, msg: &RawMessage, reason: &str) -> anyhow::Result<()> {
        let mut tx = self.begin(None).await?;
        self.applier.dead_letter(&mut tx, msg, reason).await?;
        tx.commit().await.context("failed to commit dead letter")?;
        Ok(())
    }
}
