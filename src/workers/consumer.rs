//! The one consumer loop, generic over a [`Handler`].
//!
//! Guarantee: at-least-once consumption with exactly-once effects. For each
//! partition, messages are collected into batches (at most
//! `BATCH_MAX_MESSAGES`, at most `BATCH_MAX_WAIT_MS` old); a batch is applied
//! in one PostgreSQL transaction together with its inbox rows, outbox rows and
//! dead letters, and only after that commit is the batch's last offset
//! *stored* for librdkafka's background auto-commit. A crash before the
//! commit redelivers the batch; the inbox makes the redelivery a no-op.
//!
//! Order: a partition's messages are applied strictly in offset order, one
//! batch at a time; partitions never block each other's correctness.
//!
//! Failures: a transient error (database unreachable) pauses the assignment
//! and retries the same batch with backoff while still polling, so the member
//! stays in the group. A permanent error isolates the offending message by
//! retrying the batch message by message, and dead-letters that one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
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
            // The loop is not inside a batch while librdkafka runs this (it
            // runs within the loop's poll), so every stored offset belongs
            // to committed work: commit them before the partitions move.
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

struct PartitionBuffer {
    messages: Vec<RawMessage>,
    /// When the first message arrived: the batch is due `max_wait` later.
    since: Instant,
}

/// Appends to its partition's buffer; returns that buffer's length.
fn buffer(buffers: &mut BTreeMap<i32, PartitionBuffer>, raw: RawMessage) -> usize {
    let buf = buffers
        .entry(raw.partition)
        .or_insert_with(|| PartitionBuffer {
            messages: Vec::new(),
            since: Instant::now(),
        });
    buf.messages.push(raw);
    buf.messages.len()
}

/// Runs the loop for `topic` until `shutdown`; then finishes the batch in
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
    };
    deps.metrics.set_consumer_up(&topic, true);
    info!(%topic, group = %deps.settings.group_for(&topic), "consumer loop started");

    let max_messages = deps.settings.batch_max_messages;
    let max_wait = deps.settings.batch_max_wait;
    let mut buffers: BTreeMap<i32, PartitionBuffer> = BTreeMap::new();
    let mut recv_errors: u32 = 0;

    loop {
        let deadline = buffers.values().map(|b| b.since + max_wait).min();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = sleep_until_opt(deadline) => {
                let now = Instant::now();
                let due: Vec<i32> = buffers.iter().filter(|(_, b)| b.since + max_wait <= now).map(|(p, _)| *p).collect();
                for partition in due {
                    if let Some(buf) = buffers.remove(&partition) {
                        processor.apply_with_retry(&consumer, buf.messages, &mut buffers, &shutdown).await;
                    }
                }
            }
            received = consumer.recv() => match received {
                Ok(msg) => {
                    recv_errors = 0;
                    let raw = RawMessage::detach(&msg);
                    drop(msg);
                    let partition = raw.partition;
                    if buffer(&mut buffers, raw) >= max_messages {
                        let buf = buffers.remove(&partition).expect("buffer just filled");
                        processor.apply_with_retry(&consumer, buf.messages, &mut buffers, &shutdown).await;
                    }
                }
                Err(e) => {
                    recv_errors += 1;
                    warn!(%topic, error = %e, "Kafka consumer error");
                    tokio::time::sleep(backoff(recv_errors.min(8))).await;
                }
            }
        }
        drop_revoked(&consumer, &mut buffers);
    }

    // Finish what is in hand, then commit what it stored.
    let pending: Vec<_> = std::mem::take(&mut buffers).into_values().collect();
    for buf in pending {
        processor
            .apply_with_retry(&consumer, buf.messages, &mut buffers, &shutdown)
            .await;
    }
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

fn drop_revoked(
    consumer: &StreamConsumer<LoopContext>,
    buffers: &mut BTreeMap<i32, PartitionBuffer>,
) {
    let revoked = std::mem::take(
        &mut *consumer
            .context()
            .revoked
            .lock()
            .expect("revoked list lock"),
    );
    for partition in revoked {
        if let Some(buf) = buffers.remove(&partition) {
            debug!(
                partition,
                dropped = buf.messages.len(),
                "dropped buffered messages of a revoked partition"
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
}

/// Per-message results of one committed batch.
struct BatchReport {
    outcomes: Vec<(Outcome, Option<chrono::DateTime<Utc>>, Tally)>,
}

impl<H: Handler> BatchProcessor<'_, H> {
    /// Applies one partition's batch, retrying transient failures until it
    /// commits or shutdown is requested, then stores its offset. Messages
    /// that arrive while retrying are buffered behind it.
    async fn apply_with_retry(
        &self,
        consumer: &StreamConsumer<LoopContext>,
        batch: Vec<RawMessage>,
        buffers: &mut BTreeMap<i32, PartitionBuffer>,
        shutdown: &CancellationToken,
    ) {
        let Some(last) = batch.last() else { return };
        let (partition, last_offset) = (last.partition, last.offset);
        let mut attempt = 0u32;
        let mut paused: Option<TopicPartitionList> = None;
        loop {
            let started = Instant::now();
            match self.apply_isolating(&batch).await {
                Ok(report) => {
                    self.deps
                        .metrics
                        .batch_committed(self.topic, batch.len(), started.elapsed());
                    let now = Utc::now();
                    for (outcome, occurred_at, tally) in report.outcomes {
                        self.deps.metrics.message_handled(self.topic, outcome);
                        self.deps.metrics.tally(&tally);
                        if let Some(at) = occurred_at {
                            self.deps
                                .metrics
                                .end_to_end(self.topic, (now - at).to_std().unwrap_or_default());
                        }
                    }
                    self.deps.outbox_wakeup.notify_one();
                    // Offset last: only now may Kafka forget these messages.
                    if let Err(e) = consumer.store_offset(self.topic, partition, last_offset) {
                        // The partition was revoked meanwhile; its next owner
                        // re-reads the batch and the inbox skips it.
                        debug!(topic = self.topic, partition, error = %e, "could not store offset");
                    }
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    let wait = backoff(attempt);
                    self.deps.metrics.transient_failure(self.topic, &e, wait);
                    if paused.is_none() {
                        if let Ok(assignment) = consumer.assignment() {
                            if consumer.pause(&assignment).is_ok() {
                                paused = Some(assignment);
                            }
                        }
                    }
                    // Keep polling while we wait: it keeps the member in the
                    // group; anything that still arrives queues behind us.
                    let sleep = tokio::time::sleep(wait);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            _ = shutdown.cancelled() => {
                                warn!(topic = self.topic, partition, "shutting down with an uncommitted batch; it will be redelivered");
                                return;
                            }
                            received = consumer.recv() => if let Ok(msg) = received {
                                buffer(buffers, RawMessage::detach(&msg));
                            }
                        }
                    }
                }
            }
        }
        if let Some(assignment) = paused {
            if let Err(e) = consumer.resume(&assignment) {
                error!(topic = self.topic, error = %e, "failed to resume partitions");
            }
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
        // Lock every order of the batch up front, in one canonical order, so
        // loops of different topics can never deadlock on each other.
        let order_ids: Vec<&str> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .map(|e| self.handler.order_id(e))
            .collect();
        crate::store::lifecycle::lock_orders(&mut tx, &order_ids)
            .await
            .context("failed to lock orders")?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let events: Vec<&H::Event> = decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
        let mut handled = self
            .handler
            .apply_batch(&mut tx, &events)
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
