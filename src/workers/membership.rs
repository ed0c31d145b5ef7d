//! Who owns which partition of a loop's topic, as the members themselves say
//! it, and the repair of a group that left partitions owned by nobody.
//!
//! Every loop reports its assignment to PostgreSQL (`store::members`) every
//! few seconds. A partition of the topic that no live member reports is
//! unowned: exported per group (`orderflow_group_unowned_partitions`) with
//! the lag measured from the group's committed offsets
//! (`orderflow_group_lag_messages`), so an unowned partition is visible
//! even though no member's statistics cover it.
//!
//! Repair: Tansu 0.6's group coordinator can settle a rebalance with
//! partitions assigned to a member that died, and never rebalance again
//! (docs/tansu.md). A join makes it rebalance. When partitions have been
//! unowned for `GROUP_REPAIR_AFTER_SECS`, the live member with the lowest
//! instance id rejoins its group. On a broker that keeps its groups whole the
//! condition never lasts that long, and a rejoin only costs one rebalance.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Settings;
use crate::store::members;
use crate::telemetry::Metrics;

/// How often a member reports its partitions.
const REPORT_EVERY: Duration = Duration::from_secs(3);
/// A member not heard from for this long is not counted as an owner.
const FRESH: Duration = Duration::from_secs(12);
/// How often ownership and lag are measured.
const WATCH_EVERY: Duration = Duration::from_secs(10);
/// Broker calls of the watch (metadata, committed offsets, watermarks).
const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Membership {
    pub pool: PgPool,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub topic: String,
    pub group: String,
    /// The loop's current assignment, as its rebalance callback last set it.
    pub assignment: watch::Receiver<Vec<i32>>,
    /// Set here, taken by the loop: rejoin the group.
    pub rejoin: Arc<AtomicBool>,
    /// Where the topic's partition count is kept, for an applier that
    /// wants it (read at start, then at every watch).
    pub partition_count: Option<Arc<AtomicI32>>,
}

impl Membership {
    /// Reports and watches until `shutdown`, then leaves the member list.
    pub async fn run(self, shutdown: CancellationToken) {
        let observer = match self.observer() {
            Ok(observer) => Some(Arc::new(observer)),
            Err(e) => {
                warn!(topic = %self.topic, error = format!("{e:#}"), "no group observer; lag and ownership are not measured");
                None
            }
        };
        if let (Some(observer), Some(count)) = (&observer, &self.partition_count) {
            let (observer, topic) = (observer.clone(), self.topic.clone());
            match tokio::task::spawn_blocking(move || partition_ids(&observer, &topic)).await {
                Ok(Ok(all)) => count.store(all.len() as i32, Ordering::Relaxed),
                Ok(Err(e)) => {
                    debug!(topic = %self.topic, error = format!("{e:#}"), "could not count partitions")
                }
                Err(e) => debug!(topic = %self.topic, error = %e, "partition count panicked"),
            }
        }
        let mut unowned_since: Option<Instant> = None;
        let mut last_watch = Instant::now();
        loop {
            let partitions = self.assignment.borrow().clone();
            if let Err(e) = members::report(
                &self.pool,
                &self.group,
                &self.settings.instance_id,
                &self.topic,
                &partitions,
            )
            .await
            {
                debug!(topic = %self.topic, error = %e, "could not report group membership");
            }
            if let (Some(observer), true) = (&observer, last_watch.elapsed() >= WATCH_EVERY) {
                last_watch = Instant::now();
                if let Err(e) = self.watch(observer, &mut unowned_since).await {
                    debug!(topic = %self.topic, error = format!("{e:#}"), "could not watch the group");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(REPORT_EVERY) => {}
            }
        }
        let _ = members::leave(&self.pool, &self.group, &self.settings.instance_id).await;
        // Closing a consumer blocks (indefinitely while the broker is away):
        // never on the runtime's threads.
        if let Some(observer) = observer {
            tokio::task::spawn_blocking(move || drop(observer));
        }
    }

    /// A consumer of the group that never subscribes, so never joins: it
    /// reads metadata, the group's committed offsets and the watermarks.
    fn observer(&self) -> anyhow::Result<BaseConsumer> {
        crate::kafka::observer_config(&self.settings, &self.group)
            .create()
            .context("failed to create the group observer")
    }

    /// Measures ownership and lag, and asks for a rejoin when repair is due.
    async fn watch(
        &self,
        observer: &Arc<BaseConsumer>,
        unowned_since: &mut Option<Instant>,
    ) -> anyhow::Result<()> {
        let live = members::live(&self.pool, &self.group, FRESH).await?;
        let owned: BTreeSet<i32> = live.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let (all, lag) = tokio::task::spawn_blocking({
            let observer = observer.clone();
            let topic = self.topic.clone();
            move || partitions_and_lag(&observer, &topic)
        })
        .await
        .context("group observer panicked")??;
        if let Some(count) = &self.partition_count {
            count.store(all.len() as i32, Ordering::Relaxed);
        }
        let unowned: Vec<i32> = all.into_iter().filter(|p| !owned.contains(p)).collect();
        self.metrics
            .set_group_state(&self.group, &self.topic, unowned.len() as i64, lag);
        if unowned.is_empty() || live.is_empty() {
            *unowned_since = None;
            return Ok(());
        }
        let since = *unowned_since.get_or_insert_with(Instant::now);
        let Some(repair_after) = self.settings.group_repair_after else {
            return Ok(());
        };
        let first = live.first().map(|(id, _)| id.as_str());
        if since.elapsed() >= repair_after && first == Some(self.settings.instance_id.as_str()) {
            warn!(
                topic = %self.topic,
                group = %self.group,
                ?unowned,
                unowned_for_s = since.elapsed().as_secs(),
                "partitions owned by no live member; rejoining the group to make it rebalance"
            );
            self.rejoin.store(true, Ordering::SeqCst);
            *unowned_since = None;
        }
        Ok(())
    }
}

/// Every partition of `topic`, from metadata. A blocking librdkafka call.
fn partition_ids(observer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = observer
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .context("failed to read topic metadata")?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// Every partition of `topic`, and the group's lag summed over them: the
/// high watermark minus the committed offset (the low watermark where
/// nothing was committed). Blocking librdkafka calls.
fn partitions_and_lag(observer: &BaseConsumer, topic: &str) -> anyhow::Result<(Vec<i32>, i64)> {
    let partitions = partition_ids(observer, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = observer
        .committed_offsets(tpl, KAFKA_TIMEOUT)
        .context("failed to read committed offsets")?;
    let mut lag = 0;
    for element in committed.elements() {
        let (low, high) = observer
            .fetch_watermarks(topic, element.partition(), KAFKA_TIMEOUT)
            .context("failed to read watermarks")?;
        let from = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => low,
        };
        lag += (high - from).max(0);
    }
    Ok((partitions, lag))
}
