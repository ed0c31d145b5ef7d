//! The Kafka side of a consumer loop: the consumer's callbacks (lag from
//! statistics, offsets committed and partitions recorded on revoke, the
//! group's committed offsets read on assign when the loop checks positions)
//! and the [`Intake`], which hands the loop messages, revocations,
//! assignments and errors in the order librdkafka served them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, MessageStream, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset};
use tokio::sync::watch;
use tracing::{info, warn};

use super::RawMessage;
use crate::telemetry::Metrics;

/// librdkafka callbacks: lag from statistics, offsets committed on revoke.
pub(super) struct LoopContext {
    topic: String,
    group: String,
    metrics: Arc<Metrics>,
    /// Partitions revoked since the intake last looked.
    revoked: Mutex<Vec<i32>>,
    /// Whether assignments are handed to the loop with the group's committed
    /// offsets (a loop that checks positions, `workers::positions`).
    with_committed: bool,
    /// Partitions assigned since the intake last looked, with the group's
    /// committed offset of each (`None`: none, or it could not be read).
    assigned: Mutex<Vec<(i32, Option<i64>)>>,
    /// The current assignment, for the membership watch.
    assignment: watch::Sender<Vec<i32>>,
}

impl LoopContext {
    pub(super) fn new(
        topic: &str,
        group: &str,
        metrics: Arc<Metrics>,
        with_committed: bool,
    ) -> Self {
        LoopContext {
            topic: topic.to_owned(),
            group: group.to_owned(),
            metrics,
            revoked: Mutex::new(Vec::new()),
            with_committed,
            assigned: Mutex::new(Vec::new()),
            assignment: watch::Sender::new(Vec::new()),
        }
    }

    pub(super) fn group(&self) -> &str {
        &self.group
    }

    /// Follows the loop's assignment.
    pub(super) fn assignment(&self) -> watch::Receiver<Vec<i32>> {
        self.assignment.subscribe()
    }
}

impl ClientContext for LoopContext {
    fn stats(&self, stats: Statistics) {
        // Contact: some broker connection is up and the group handler has
        // its coordinator ("up" in librdkafka's cgrp states). Statistics
        // come only while the loop polls, so a stuck loop goes stale too.
        let broker_up = stats.brokers.values().any(|b| b.state == "UP");
        let coordinated = stats.cgrp.as_ref().is_some_and(|g| g.state == "up");
        if broker_up && coordinated {
            self.metrics.consumer_contact(&self.topic);
        }
        if let Some(topic) = stats.topics.get(&self.topic) {
            let assigned = self.assignment.borrow().clone();
            let lags = topic.partitions.iter().map(|(n, p)| (*n, p.consumer_lag));
            for (partition, lag) in owned_lags(lags, &assigned) {
                self.metrics.set_consumer_lag(&self.topic, partition, lag);
            }
        }
    }
}

/// The lags worth exporting among librdkafka's per-partition statistics:
/// those of partitions this loop holds, once known. The statistics list
/// every partition of the topic, with the last lag seen for those it no
/// longer holds (exported, that showed lag on a partition another instance
/// was keeping at 0); -1 is librdkafka's internal "unassigned" partition,
/// and a lag of -1 means "not known yet".
fn owned_lags(lags: impl Iterator<Item = (i32, i64)>, assigned: &[i32]) -> Vec<(i32, i64)> {
    lags.filter(|(partition, lag)| *partition >= 0 && *lag >= 0 && assigned.contains(partition))
        .collect()
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Every stored offset belongs to committed work (offsets are
            // stored only after a commit), so commit them before the
            // partitions move. A batch still in flight commits or not; either
            // way the next owner re-reads it and the inbox skips what landed.
            commit_stored(consumer, &self.topic, "on revoke");
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            for p in &partitions {
                self.metrics.forget_partition(&self.topic, *p);
            }
            info!(topic = %self.topic, ?partitions, "partitions revoked");
            // Eager rebalancing: a revocation takes the whole assignment.
            self.assignment.send_replace(Vec::new());
            self.metrics.rebalanced(&self.topic, "revoke", 0);
            self.revoked
                .lock()
                .expect("revoked list lock")
                .extend(partitions);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            info!(topic = %self.topic, ?partitions, "partitions assigned");
            self.metrics.consumer_contact(&self.topic);
            self.metrics
                .rebalanced(&self.topic, "assign", partitions.len());
            if self.with_committed {
                let starts = self.committed(consumer, tpl, &partitions);
                self.assigned
                    .lock()
                    .expect("assigned list lock")
                    .extend(starts);
            }
            self.assignment.send_replace(partitions);
        }
    }
}

impl LoopContext {
    /// The group's committed offset of each assigned partition: where its
    /// messages must start. Unknown ones (`None`) are learnt from the first
    /// message.
    fn committed(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &rdkafka::TopicPartitionList,
        partitions: &[i32],
    ) -> Vec<(i32, Option<i64>)> {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(committed) => committed
                .elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(n) => (e.partition(), Some(n)),
                    _ => (e.partition(), None),
                })
                .collect(),
            Err(e) => {
                warn!(topic = %self.topic, error = %e, "failed to read committed offsets; positions are learnt from the first messages");
                partitions.iter().map(|p| (*p, None)).collect()
            }
        }
    }
}

pub(super) fn commit_stored<C: Consumer<LoopContext>>(consumer: &C, topic: &str, when: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(e) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
        Err(e) => warn!(topic, error = %e, "failed to commit offsets {when}"),
    }
}

/// What the consumer hands the loop, in the order it happened.
pub(super) enum Received {
    Message(RawMessage),
    Revoked(Vec<i32>),
    /// Partitions assigned, with the group's committed offsets (only for a
    /// loop that checks positions).
    Assigned(Vec<(i32, Option<i64>)>),
    Error(KafkaError),
}

/// The consumer's stream, with revocations and assignments (recorded by the
/// rebalance callbacks during a poll) delivered before whatever that poll
/// returned.
pub(super) struct Intake<'c> {
    consumer: &'c StreamConsumer<LoopContext>,
    stream: MessageStream<'c, LoopContext>,
    /// What came with a rebalance, handed out right after it.
    stashed: VecDeque<Received>,
}

impl<'c> Intake<'c> {
    pub(super) fn new(consumer: &'c StreamConsumer<LoopContext>) -> Self {
        Intake {
            consumer,
            stream: consumer.stream(),
            stashed: VecDeque::new(),
        }
    }

    fn poll_next(&mut self, cx: &mut TaskContext<'_>) -> Poll<Received> {
        if let Some(stashed) = self.stashed.pop_front() {
            return Poll::Ready(stashed);
        }
        let polled = match self.stream.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(msg))) => Some(Received::Message(RawMessage {
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().map(<[u8]>::to_vec),
            })),
            Poll::Ready(Some(Err(e))) => Some(Received::Error(e)),
            Poll::Ready(None) => unreachable!("Kafka message streams never end"),
            Poll::Pending => None,
        };
        let context = self.consumer.context();
        let revoked = std::mem::take(&mut *context.revoked.lock().expect("revoked list lock"));
        let assigned = std::mem::take(&mut *context.assigned.lock().expect("assigned list lock"));
        if !revoked.is_empty() {
            self.stashed.push_back(Received::Revoked(revoked));
        }
        if !assigned.is_empty() {
            self.stashed.push_back(Received::Assigned(assigned));
        }
        self.stashed.extend(polled);
        self.stashed.pop_front().map_or(Poll::Pending, Poll::Ready)
    }

    pub(super) async fn next(&mut self) -> Received {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// What is already there, without waiting.
    pub(super) fn ready(&mut self) -> Option<Received> {
        self.next().now_or_never()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_the_lag_of_held_partitions_only() {
        let stats = [(0, 5), (1, 3_904), (-1, 0), (2, -1), (3, 0)];
        assert_eq!(
            owned_lags(stats.into_iter(), &[0, 2, 3]),
            vec![(0, 5), (3, 0)]
        );
        assert!(owned_lags(stats.into_iter(), &[]).is_empty());
    }
}
