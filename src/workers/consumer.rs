//! The one consumer loop, generic over a [`Handler`].
//!
//! Guarantee: at-least-once consumption with exactly-once effects. Each
//! partition's messages are applied in batches (at most `BATCH_MAX_MESSAGES`);
//! a batch is applied in one PostgreSQL transaction together with its inbox
//! rows, outbox rows and dead letters, and only after that commit is the
//! batch's last offset *stored* for librdkafka's background auto-commit. A
//! crash before the commit redelivers the batch; the inbox makes the
//! redelivery a no-op.
//!
//! Batching adapts to the arrival rate: a batch takes everything its
//! partition has buffered when the partition is free (no batch of it in
//! flight), after lingering at most `BATCH_MAX_WAIT_MS` (default 0). Under
//! light load a batch is whatever one fetch brought; under load, whatever
//! arrived while the previous batch committed, up to the maximum.
//!
//! Order: a partition has at most one batch in flight, so its messages are
//! applied strictly in offset order. Batches of different partitions run
//! concurrently (at most `BATCH_CONCURRENCY` per loop, each on its own
//! connection); they never share an order, because an order's messages are
//! keyed to one partition, and the per-order locks taken in a canonical order
//! keep loops of different topics from deadlocking.
//!
//! Memory: at most `BATCH_MAX_MESSAGES × (BATCH_CONCURRENCY + 2)` messages
//! wait in the buffers (plus up to `BATCH_MAX_MESSAGES × BATCH_CONCURRENCY` in
//! flight); when they are full the loop stops taking messages from librdkafka,
//! whose own queue is bounded, so the broker holds the rest. If they stay full
//! (batches stuck), the assignment is paused and polling goes on.
//!
//! Failures: a transient error (database unreachable) retries the same batch
//! with backoff; while any batch is retrying the assignment is paused, and the
//! loop keeps polling so the member stays in the group. A permanent error
//! isolates the offending message by retrying the batch message by message,
//! and dead-letters that one.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Handler, Tally, Verdict};
use crate::config::Settings;
use crate::events::Codec;
use crate::kafka::dlq;
use crate::store::{self, outbox};
use crate::telemetry::{Metrics, Outcome};

/// A consumed message, detached from librdkafka's buffer.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// Everything a loop needs besides its handler.
#[derive(Clone)]
pub struct LoopDeps {
    pub settings: Settings,
    pub pool: PgPool,
    pub codec: Codec,
    pub metrics: Arc<Metrics>,
    /// Woken after every commit that may have written outbox rows.
    pub outbox_wakeup: Arc<Notify>,
}

/// librdkafka callbacks: lag from statistics, offsets committed on revoke.
struct LoopContext {
    topic: String,
    metrics: Arc<Metrics>,
    /// Partitions revoked since the loop last looked; their buffered,
    /// unapplied messages must be dropped (the next owner re-reads them).
    revoked: Mutex<Vec<i32>>,
}

impl ClientContext for LoopContext {
    fn stats(&self, stats: Statistics) {
        if let Some(topic) = stats.topics.get(&self.topic) {
            for (partition, p) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag of
                // -1 means "not known yet" (nothing fetched or committed).
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .set_consumer_lag(&self.topic, *partition, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Every stored offset belongs to committed work (offsets are
            // stored only after a commit), so commit them before the
            // partitions move. A batch still in flight commits or not; either
            // way the next owner re-reads it and the inbox skips what landed.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {}
                Err(e)
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
                Err(e) => {
                    warn!(topic = %self.topic, error = %e, "failed to commit offsets on revoke")
                }
            }
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            for p in &partitions {
                self.metrics.forget_partition(&self.topic, *p);
            }
            info!(topic = %self.topic, ?partitions, "partitions revoked");
            self.revoked
                .lock()
                .expect("revoked list lock")
                .extend(partitions);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            info!(topic = %self.topic, ?partitions, "partitions assigned");
        }
    }
}

impl RawMessage {
    fn detach(msg: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        RawMessage {
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
        }
    }
}

/// Messages waiting for their partition's next batch, and which partitions
/// have a batch in flight. Pure bookkeeping: no Kafka, no database.
struct Buffers {
    max_messages: usize,
    linger: Duration,
    waiting: BTreeMap<i32, Waiting>,
    in_flight: HashSet<i32>,
    /// Partitions whose batch was abandoned at shutdown: nothing after it
    /// may be applied, or its offset would be stored past the gap.
    abandoned: HashSet<i32>,
    buffered: usize,
}

struct Waiting {
    messages: Vec<RawMessage>,
    /// When the oldest waiting message arrived.
    since: Instant,
}

impl Buffers {
    fn new(max_messages: usize, linger: Duration) -> Self {
        Buffers {
            max_messages,
            linger,
            waiting: BTreeMap::new(),
            in_flight: HashSet::new(),
            abandoned: HashSet::new(),
            buffered: 0,
        }
    }

    fn push(&mut self, raw: RawMessage) {
        if self.abandoned.contains(&raw.partition) {
            return;
        }
        self.buffered += 1;
        self.waiting
            .entry(raw.partition)
            .or_insert_with(|| Waiting {
                messages: Vec::new(),
                since: Instant::now(),
            })
            .messages
            .push(raw);
    }

    /// Takes the next batch of every free partition that is due: full, or
    /// lingered long enough (or `force`, at shutdown). At most `room` batches.
    fn take_due(&mut self, now: Instant, force: bool, room: usize) -> Vec<Vec<RawMessage>> {
        let mut due: Vec<(Instant, i32)> = self
            .waiting
            .iter()
            .filter(|(p, w)| {
                !self.in_flight.contains(p)
                    && (force
                        || w.messages.len() >= self.max_messages
                        || w.since + self.linger <= now)
            })
            .map(|(p, w)| (w.since, *p))
            .collect();
        // Longest waiting first, so low partition numbers cannot take every
        // slot under a steady backlog.
        due.sort_unstable();
        let due: Vec<i32> = due.into_iter().take(room).map(|(_, p)| p).collect();
        let mut batches = Vec::with_capacity(due.len());
        for partition in due {
            let waiting = self.waiting.get_mut(&partition).expect("listed above");
            let batch: Vec<RawMessage> = if waiting.messages.len() > self.max_messages {
                let rest = waiting.messages.split_off(self.max_messages);
                waiting.since = now;
                std::mem::replace(&mut waiting.messages, rest)
            } else {
                self.waiting
                    .remove(&partition)
                    .expect("listed above")
                    .messages
            };
            self.buffered -= batch.len();
            self.in_flight.insert(partition);
            batches.push(batch);
        }
        batches
    }

    /// When the earliest lingering batch of a free partition falls due.
    fn next_due(&self) -> Option<Instant> {
        self.waiting
            .iter()
            .filter(|(p, _)| !self.in_flight.contains(p))
            .map(|(_, w)| w.since + self.linger)
            .min()
    }

    fn finished(&mut self, partition: i32, committed: bool) {
        self.in_flight.remove(&partition);
        if !committed {
            self.abandoned.insert(partition);
            if let Some(w) = self.waiting.remove(&partition) {
                self.buffered -= w.messages.len();
            }
        }
    }

    fn drop_partition(&mut self, partition: i32) -> usize {
        let dropped = self
            .waiting
            .remove(&partition)
            .map_or(0, |w| w.messages.len());
        self.buffered -= dropped;
        dropped
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// Runs the loop for `topic` until `shutdown`; then finishes the batches in
/// hand, commits offsets and leaves the group.
pub async fn run<H: Handler>(
    deps: LoopDeps,
    handler: Arc<H>,
    topic: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let context = LoopContext {
        topic: topic.clone(),
        metrics: deps.metrics.clone(),
        revoked: Mutex::new(Vec::new()),
    };
    let consumer: StreamConsumer<LoopContext> =
        crate::kafka::consumer_config(&deps.settings, &deps.settings.group_for(&topic))
            .create_with_context(context)
            .context("failed to create Kafka consumer")?;
    consumer
        .subscribe(&[topic.as_str()])
        .with_context(|| format!("failed to subscribe to {topic}"))?;
    let dlq_topic = crate::config::Topics::dlq(&topic);
    let processor = BatchProcessor {
        deps: &deps,
        handler: &*handler,
        topic: &topic,
        dlq_topic: &dlq_topic,
        retrying: AtomicUsize::new(0),
    };
    deps.metrics.set_consumer_up(&topic, true);
    info!(%topic, group = %deps.settings.group_for(&topic), "consumer loop started");

    let settings = &deps.settings;
    let concurrency = settings.batch_concurrency;
    let capacity = settings.batch_max_messages * (concurrency + 2);
    let mut buffers = Buffers::new(settings.batch_max_messages, settings.batch_max_wait);
    let mut in_flight = FuturesUnordered::new();
    let mut stream = consumer.stream();
    let mut paused: Option<TopicPartitionList> = None;
    let mut full_since: Option<Instant> = None;
    let mut recv_errors: u32 = 0;
    // Re-evaluates pausing when nothing else wakes the loop (batches stuck
    // retrying or waiting on a lock while the buffers are full).
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    loop {
        for batch in buffers.take_due(Instant::now(), false, concurrency - in_flight.len()) {
            in_flight.push(processor.apply_until_committed(batch, &shutdown));
        }
        // Hold the assignment (paused, still polled, so the member stays in
        // the group) while a batch is retrying, or while the buffers have
        // been full for a while (batches stuck): a loop that stopped polling
        // would be dropped from the group after max.poll.interval.ms.
        let full = buffers.buffered >= capacity;
        full_since = if full {
            full_since.or(Some(Instant::now()))
        } else {
            None
        };
        let stuck = full_since.is_some_and(|at| at.elapsed() >= STUCK_AFTER);
        let retrying = processor.retrying.load(Ordering::Relaxed) > 0;
        hold_assignment(&consumer, retrying || stuck, &mut paused, &topic);
        // Only a free slot can start a lingering batch.
        let deadline = (in_flight.len() < concurrency)
            .then(|| buffers.next_due())
            .flatten();
        let receive = !full || paused.is_some();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                processor.finish(&consumer, done, &mut buffers);
            }
            _ = sleep_until_opt(deadline) => {}
            _ = tick.tick() => {}
            received = stream.next(), if receive => {
                match received.expect("Kafka streams never end") {
                    Ok(msg) => {
                        recv_errors = 0;
                        // A message that follows a revocation belongs to the
                        // new assignment: forget the old buffers before it.
                        drop_revoked(&consumer, &mut buffers);
                        buffers.push(RawMessage::detach(&msg));
                        // Take everything already fetched: that is the batch.
                        while buffers.buffered < capacity {
                            match stream.next().now_or_never() {
                                Some(Some(Ok(msg))) => {
                                    drop_revoked(&consumer, &mut buffers);
                                    buffers.push(RawMessage::detach(&msg));
                                }
                                _ => break,
                            }
                        }
                    }
                    Err(e) => {
                        recv_errors += 1;
                        warn!(%topic, error = %e, "Kafka consumer error");
                        tokio::time::sleep(backoff(recv_errors.min(8))).await;
                    }
                }
            }
        }
        drop_revoked(&consumer, &mut buffers);
    }
    drop_revoked(&consumer, &mut buffers);

    // Finish what is in hand, then commit what it stored. A batch that is
    // retrying gives up at once (shutdown is set) and is redelivered later.
    loop {
        for batch in buffers.take_due(Instant::now(), true, concurrency - in_flight.len()) {
            in_flight.push(processor.apply_until_committed(batch, &shutdown));
        }
        match in_flight.next().await {
            Some(done) => processor.finish(&consumer, done, &mut buffers),
            None if buffers.is_empty() => break,
            None => {}
        }
    }
    drop(stream);
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(e) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
        Err(e) => warn!(%topic, error = %e, "failed to commit offsets at shutdown"),
    }
    deps.metrics.set_consumer_up(&topic, false);
    // Closing leaves the group; librdkafka blocks while it does, for long if
    // the broker is gone, so keep that off the async workers.
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .context("consumer close panicked")?;
    info!(%topic, "consumer loop stopped");
    Ok(())
}

/// How long the buffers may stay full before the loop pauses its assignment.
const STUCK_AFTER: Duration = Duration::from_secs(1);

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

fn drop_revoked(consumer: &StreamConsumer<LoopContext>, buffers: &mut Buffers) {
    let revoked = std::mem::take(
        &mut *consumer
            .context()
            .revoked
            .lock()
            .expect("revoked list lock"),
    );
    for partition in revoked {
        let dropped = buffers.drop_partition(partition);
        if dropped > 0 {
            debug!(
                partition,
                dropped, "dropped buffered messages of a revoked partition"
            );
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// 100 ms doubling to 30 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(9))).min(Duration::from_secs(30))
}

struct BatchProcessor<'a, H> {
    deps: &'a LoopDeps,
    handler: &'a H,
    topic: &'a str,
    dlq_topic: &'a str,
    /// Batches currently backing off after a transient failure.
    retrying: AtomicUsize,
}

/// Per-message results of one committed batch.
struct BatchReport {
    outcomes: Vec<(Outcome, Option<chrono::DateTime<Utc>>, Tally)>,
}

/// A batch that left flight: committed (with its report) or abandoned.
struct Done {
    partition: i32,
    last_offset: i64,
    size: usize,
    /// The batch's report and how long its committing attempt took; `None`
    /// when it was abandoned at shutdown.
    committed: Option<(BatchReport, Duration)>,
}

impl<H: Handler> BatchProcessor<'_, H> {
    /// Applies one partition's batch, retrying transient failures with
    /// backoff until it commits, or until shutdown (then `report` is None).
    async fn apply_until_committed(
        &self,
        batch: Vec<RawMessage>,
        shutdown: &CancellationToken,
    ) -> Done {
        let last = batch.last().expect("batches are never empty");
        let (partition, last_offset) = (last.partition, last.offset);
        let mut attempt = 0u32;
        let committed = loop {
            let started = Instant::now();
            let err = match self.apply_isolating(&batch).await {
                Ok(report) => {
                    if attempt > 0 {
                        self.retrying.fetch_sub(1, Ordering::Relaxed);
                    }
                    break Some((report, started.elapsed()));
                }
                Err(e) => e,
            };
            if attempt == 0 {
                self.retrying.fetch_add(1, Ordering::Relaxed);
            }
            attempt += 1;
            let wait = backoff(attempt);
            self.deps.metrics.transient_failure(self.topic, &err, wait);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => {
                    self.retrying.fetch_sub(1, Ordering::Relaxed);
                    warn!(topic = self.topic, partition, "shutting down with an uncommitted batch; it will be redelivered");
                    break None;
                }
            }
        };
        Done {
            partition,
            last_offset,
            size: batch.len(),
            committed,
        }
    }

    /// Reports a batch that left flight and, if it committed, stores its
    /// offset: only now may Kafka forget these messages.
    fn finish(&self, consumer: &StreamConsumer<LoopContext>, done: Done, buffers: &mut Buffers) {
        buffers.finished(done.partition, done.committed.is_some());
        let Some((report, took)) = done.committed else {
            return;
        };
        let metrics = &self.deps.metrics;
        metrics.batch_committed(self.topic, done.size, took);
        let now = Utc::now();
        for (outcome, occurred_at, tally) in report.outcomes {
            metrics.message_handled(self.topic, outcome);
            metrics.tally(&tally);
            if let Some(at) = occurred_at {
                metrics.end_to_end(self.topic, (now - at).to_std().unwrap_or_default());
            }
        }
        self.deps.outbox_wakeup.notify_one();
        if let Err(e) = consumer.store_offset(self.topic, done.partition, done.last_offset) {
            // The partition was revoked meanwhile; its next owner re-reads
            // the batch and the inbox skips it.
            debug!(topic = self.topic, partition = done.partition, error = %e, "could not store offset");
        }
    }

    /// Applies the batch in one transaction. On a permanent error, applies it
    /// message by message and dead-letters whichever message fails alone.
    /// Returns `Err` only for transient errors.
    async fn apply_isolating(&self, batch: &[RawMessage]) -> anyhow::Result<BatchReport> {
        let err = match self.apply_batch(batch).await {
            Ok(report) => return Ok(report),
            Err(e) if store::chain_is_transient(&e) => return Err(e),
            Err(e) => e,
        };
        warn!(
            topic = self.topic,
            error = format!("{err:#}"),
            size = batch.len(),
            "batch failed permanently; isolating the message"
        );
        let mut outcomes = Vec::with_capacity(batch.len());
        for msg in batch {
            match self.apply_batch(std::slice::from_ref(msg)).await {
                Ok(report) => outcomes.extend(report.outcomes),
                Err(e) if store::chain_is_transient(&e) => return Err(e),
                Err(e) => {
                    error!(
                        topic = self.topic,
                        partition = msg.partition,
                        offset = msg.offset,
                        error = format!("{e:#}"),
                        "message cannot be applied; dead-lettering it"
                    );
                    self.dead_letter_alone(msg, &format!("{e:#}")).await?;
                    outcomes.push((Outcome::DeadLettered, None, Tally::default()));
                }
            }
        }
        Ok(BatchReport { outcomes })
    }

    async fn apply_batch(&self, batch: &[RawMessage]) -> anyhow::Result<BatchReport> {
        let mut decoded = Vec::with_capacity(batch.len());
        for msg in batch {
            let codec = &self.deps.codec;
            let result = match codec
                .normalize(self.handler.reader_schema(), msg.payload.as_deref())
                .await
            {
                Ok(normalized) => self.handler.decode(codec, msg.key.as_deref(), &normalized),
                Err(e) => Err(e),
            };
            match result {
                // The registry blinked: retry the whole batch, dead-letter nothing.
                Err(e) if e.is_transient() => return Err(anyhow::Error::new(e)),
                other => decoded.push(other),
            }
        }
        let mut tx = self.begin().await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let events: Vec<&H::Event> = decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
        let mut handled = super::apply_locked(self.handler, &mut tx, &events)
            .await
            .with_context(|| match batch {
                [one] => format!(
                    "failed to apply {} offset {}/{}",
                    self.topic, one.partition, one.offset
                ),
                _ => format!(
                    "failed to apply a batch of {} from {}",
                    batch.len(),
                    self.topic
                ),
            })?
            .into_iter();
        for (msg, decoded) in batch.iter().zip(&decoded) {
            let outcome = match decoded {
                Err(e) => {
                    debug!(topic = self.topic, partition = msg.partition, offset = msg.offset, error = %e, "undecodable message");
                    self.enqueue_dead_letter(&mut tx, msg, "decode", &e.to_string())
                        .await?;
                    (Outcome::DeadLettered, None, Tally::default())
                }
                Ok(_) => {
                    let handled = handled
                        .next()
                        .context("handler returned fewer results than events")?;
                    let outcome = match &handled.verdict {
                        Verdict::DeadLetter(reason) => {
                            self.enqueue_dead_letter(&mut tx, msg, "invalid", reason)
                                .await?;
                            Outcome::DeadLettered
                        }
                        other => other.outcome(),
                    };
                    (outcome, handled.occurred_at, handled.tally)
                }
            };
            outcomes.push(outcome);
        }
        tx.commit().await.context("failed to commit batch")?;
        Ok(BatchReport { outcomes })
    }

    async fn enqueue_dead_letter(
        &self,
        conn: &mut sqlx::PgConnection,
        msg: &RawMessage,
        class: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let source = dlq::Source {
            topic: self.topic,
            partition: msg.partition,
            offset: msg.offset,
            key: msg.key.as_deref(),
            payload: msg.payload.as_deref(),
        };
        outbox::enqueue(
            conn,
            &dlq::from_failed_message(self.dlq_topic, &source, class, reason),
        )
        .await
        .context("failed to enqueue dead letter")
    }

    async fn begin(&self) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.deps
            .pool
            .begin()
            .await
            .context("failed to begin transaction")
    }

    async fn dead_letter_alone(&self, msg: &RawMessage, reason: &str) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
        self.enqueue_dead_letter(&mut tx, msg, "database", reason)
            .await?;
        tx.commit().await.context("failed to commit dead letter")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(partition: i32, offset: i64) -> RawMessage {
        RawMessage {
            partition,
            offset,
            key: None,
            payload: None,
        }
    }

    fn offsets(batch: &[RawMessage]) -> Vec<i64> {
        batch.iter().map(|m| m.offset).collect()
    }

    #[test]
    fn one_batch_per_partition_in_flight_split_at_the_maximum() {
        let mut b = Buffers::new(3, Duration::ZERO);
        for offset in 0..5 {
            b.push(msg(0, offset));
        }
        b.push(msg(1, 0));
        let now = Instant::now();
        let batches = b.take_due(now, false, 8);
        assert_eq!(batches.len(), 2);
        assert_eq!(offsets(&batches[0]), [0, 1, 2]);
        assert_eq!(offsets(&batches[1]), [0]);
        assert_eq!(b.buffered, 2);
        // Partition 0's rest waits for its batch in flight, whatever the room.
        assert!(b.take_due(now, true, 8).is_empty());
        b.finished(0, true);
        let next = b.take_due(now, false, 8);
        assert_eq!(next.len(), 1);
        assert_eq!(offsets(&next[0]), [3, 4]);
        assert_eq!(b.buffered, 0);
    }

    #[test]
    fn the_longest_waiting_partition_goes_first() {
        let mut b = Buffers::new(10, Duration::ZERO);
        b.push(msg(5, 0));
        std::thread::sleep(Duration::from_millis(2));
        b.push(msg(0, 0));
        let first = b.take_due(Instant::now(), false, 1);
        assert_eq!(first[0][0].partition, 5);
    }

    #[test]
    fn room_limits_the_batches_started() {
        let mut b = Buffers::new(10, Duration::ZERO);
        for partition in 0..4 {
            b.push(msg(partition, 0));
        }
        assert_eq!(b.take_due(Instant::now(), false, 2).len(), 2);
        assert_eq!(b.take_due(Instant::now(), false, 0).len(), 0);
        assert_eq!(b.take_due(Instant::now(), false, 5).len(), 2);
    }

    #[test]
    fn a_partial_batch_lingers_until_due_unless_forced() {
        let linger = Duration::from_millis(50);
        let mut b = Buffers::new(10, linger);
        b.push(msg(0, 0));
        let now = Instant::now();
        assert!(b.take_due(now, false, 4).is_empty());
        let due = b.next_due().expect("a lingering batch");
        assert!(due > now && due <= now + linger);
        assert_eq!(b.take_due(now, true, 4).len(), 1, "forced at shutdown");

        b.finished(0, true);
        b.push(msg(0, 1));
        assert_eq!(b.take_due(Instant::now() + linger, false, 4).len(), 1);
    }

    #[test]
    fn nothing_after_an_abandoned_batch_is_applied() {
        let mut b = Buffers::new(2, Duration::ZERO);
        b.push(msg(0, 0));
        b.push(msg(0, 1));
        assert_eq!(b.take_due(Instant::now(), false, 4).len(), 1);
        b.push(msg(0, 2));
        b.finished(0, false);
        b.push(msg(0, 3));
        assert!(b.is_empty());
        assert_eq!(b.buffered, 0);
        assert!(b.take_due(Instant::now(), true, 4).is_empty());
    }

    #[test]
    fn revoked_partitions_lose_their_buffer_only() {
        let mut b = Buffers::new(5, Duration::from_secs(1));
        b.push(msg(0, 0));
        b.push(msg(1, 0));
        b.push(msg(1, 1));
        assert_eq!(b.drop_partition(1), 2);
        assert_eq!(b.buffered, 1);
        assert_eq!(b.drop_partition(7), 0);
    }
}
