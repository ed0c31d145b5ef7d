//! The analytics loop's batch step, driven by the generic consumer loop
//! (`workers::consumer`) on `order-events` in group
//! `<KAFKA_GROUP_ID>.analytics`.
//!
//! One transaction per batch (one partition's messages, in offset order):
//! take the analytics lock shared (a rebuild waits for the batch, and the
//! batch for a rebuild); claim the events' ids in `analytics_claims` (those
//! claimed before are duplicates: a redelivery, or the relay publishing an
//! event again; one row per run of ids close in time, see its migration);
//! read the orders the new events need (currency, creation
//! time, lines; the first two usually from a bounded in-memory cache, since
//! they never change once an order exists); add the [`Delta`] to the rollup
//! rows of this partition;
//! dead-letter, through the outbox, what cannot be read or counted. The
//! loop commits, then stores the offset.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::rollup::{needs_lines, needs_order, Counted};
use crate::config::Settings;
use crate::events::{avro, Codec, DeadLetterClass, DecodeError, Normalized};
use crate::store::analytics::{self, Delta, OrderFacts};
use crate::store::claims;
use crate::store::inbox::Outcome;
use crate::store::outbox::{self, NewRecord};
use crate::workers::apply::Apply;
use crate::workers::batch::{check_key, dead_letter_alone, dead_letter_of, decode_each};
use crate::workers::{BatchReport, RawMessage};

/// Orders whose currency and creation time the cache keeps (about 3 MB).
const CACHED_ORDERS: usize = 20_000;

/// The analytics loop's [`Apply`].
pub struct Analytics {
    codec: Codec,
    topic: String,
    dlq_topic: String,
    orders: Mutex<OrderCache>,
    /// `order-events`' partition count, kept by the loop (0 until known).
    partitions: Arc<AtomicI32>,
}

/// Currency and creation time of recently seen orders: an order's later
/// events (paid, cancelled) usually follow its creation by seconds, on the
/// same partition, so most batches read no order at all. Oldest out first.
#[derive(Default)]
struct OrderCache {
    facts: HashMap<String, (String, DateTime<Utc>)>,
    age: VecDeque<String>,
}

impl OrderCache {
    fn get(&self, order_id: &str) -> Option<OrderFacts> {
        self.facts
            .get(order_id)
            .map(|(currency, created_at)| OrderFacts {
                currency: currency.clone(),
                created_at: *created_at,
                lines: Vec::new(),
            })
    }

    fn put(&mut self, order_id: &str, facts: &OrderFacts) {
        if self.facts.contains_key(order_id) {
            return;
        }
        if self.age.len() >= CACHED_ORDERS {
            if let Some(oldest) = self.age.pop_front() {
                self.facts.remove(&oldest);
            }
        }
        self.facts.insert(
            order_id.to_owned(),
            (facts.currency.clone(), facts.created_at),
        );
        self.age.push_back(order_id.to_owned());
    }
}

impl Analytics {
    pub fn new(settings: &Settings, codec: Codec) -> Self {
        Analytics {
            codec,
            topic: settings.topics.order_events.clone(),
            dlq_topic: settings.topics.analytics_dlq(),
            orders: Mutex::new(OrderCache::default()),
            partitions: Arc::new(AtomicI32::new(0)),
        }
    }

    async fn decode_one(&self, msg: &RawMessage) -> Result<(Uuid, Counted), DecodeError> {
        let normalized = self
            .codec
            .normalize(&avro::ORDER_EVENT, msg.payload.as_deref())
            .await?;
        let event: Counted = match normalized {
            Normalized::Json(bytes) => serde_json::from_slice(bytes)?,
            Normalized::Document(doc) => {
                Counted::of(&avro::order_event_from_envelope(doc).map_err(DecodeError::Invalid)?)
            }
        };
        event.check().map_err(DecodeError::Invalid)?;
        check_key(msg, event.order_id.as_str())?;
        // v7: its creation time leads, which is how old ids are purged.
        let id = Uuid::parse_str(event.event_id.as_str())
            .ok()
            .filter(|id| id.get_version_num() == 7)
            .ok_or_else(|| {
                DecodeError::Invalid(format!(
                    "event_id {:?} is not a UUID v7 (orderflow's order events always are)",
                    event.event_id.as_str()
                ))
            })?;
        Ok((id, event))
    }

    fn dead_letter_record(
        &self,
        msg: &RawMessage,
        class: DeadLetterClass,
        reason: &str,
    ) -> NewRecord {
        dead_letter_of(&self.topic, &self.dlq_topic, msg, class, reason)
    }
}

type Decoded = Result<(Uuid, Counted), DecodeError>;

impl Apply for Analytics {
    type Decoded = Vec<Decoded>;

    /// It only reads order events: nothing for live streams to pick up.
    const ANNOUNCES: bool = false;

    /// `order-events` is written by the relay alone, without transactions:
    /// a gap is a broker skipping records (Tansu, docs/tansu.md).
    const GAP_FREE: bool = true;
    const MIXES_PARTITIONS: bool = false;

    fn topic(&self) -> &str {
        &self.topic
    }

    fn group(&self, settings: &Settings) -> String {
        format!("{}.analytics", settings.group_id)
    }

    /// Larger batches than the input loops': nobody waits on a figure the
    /// way a customer waits on an order, and each batch's fixed cost is
    /// shared by more events.
    fn batching(&self, settings: &Settings) -> (usize, std::time::Duration) {
        (
            settings.analytics.batch_max_messages,
            settings.analytics.batch_max_wait,
        )
    }

    fn partition_count(&self) -> Option<Arc<AtomicI32>> {
        Some(self.partitions.clone())
    }

    fn consumer_config(&self, settings: &Settings, group: &str) -> rdkafka::ClientConfig {
        let wait = settings.analytics.fetch_wait.as_millis().to_string();
        crate::kafka::consumer_config(settings, group, &[("fetch.wait.max.ms", wait)])
    }

    async fn decode(&self, batch: &[RawMessage]) -> Result<Vec<Decoded>, DecodeError> {
        decode_each(batch, |msg| self.decode_one(msg)).await
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &[RawMessage],
        decoded: &Vec<Decoded>,
    ) -> anyhow::Result<BatchReport> {
        analytics::lock_shared(conn)
            .await
            .context("failed to take the analytics lock")?;
        let ids: Vec<Uuid> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok().map(|(id, _)| *id))
            .collect();
        let part = batch.first().map_or(0, |m| m.partition);
        let layout = self.partitions.load(Ordering::Relaxed);
        let mut fresh = claims::claim(conn, part, layout, &ids)
            .await
            .context("failed to claim event ids")?;
        // The first delivery of each new id counts; everything else is a
        // duplicate.
        let counted: Vec<bool> = decoded
            .iter()
            .map(|d| d.as_ref().is_ok_and(|(id, _)| fresh.remove(id)))
            .collect();
        let new_events = || {
            decoded
                .iter()
                .zip(&counted)
                .filter(|(_, c)| **c)
                .filter_map(|(d, _)| d.as_ref().ok().map(|(_, e)| e))
        };
        let mut orders: HashMap<String, OrderFacts> = HashMap::new();
        let (mut missing, mut with_lines) = (Vec::new(), Vec::new());
        {
            let cache = self
                .orders
                .lock()
                .expect("the order cache is never poisoned");
            for event in new_events().filter(|e| needs_order(e)) {
                let id = event.order_id.as_str();
                if needs_lines(event) {
                    with_lines.push(id);
                    missing.push(id);
                } else if let Some(facts) = cache.get(id) {
                    orders.insert(id.to_owned(), facts);
                } else {
                    missing.push(id);
                }
            }
        }
        if !missing.is_empty() {
            let read = analytics::order_facts(conn, &missing, &with_lines)
                .await
                .context("failed to read the orders of the batch's events")?;
            let mut cache = self
                .orders
                .lock()
                .expect("the order cache is never poisoned");
            for (id, facts) in read {
                cache.put(&id, &facts);
                orders.insert(id, facts);
            }
        }
        let mut delta = Delta::default();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut letters = Vec::new();
        for ((msg, d), counted) in batch.iter().zip(decoded).zip(&counted) {
            let outcome = match d {
                Err(e) => {
                    letters.push(self.dead_letter_record(
                        msg,
                        DeadLetterClass::Decode,
                        &e.to_string(),
                    ));
                    (Outcome::DeadLettered, None)
                }
                Ok((_, event)) if !counted => (Outcome::Duplicate, Some(event.occurred_at)),
                Ok((_, event)) => match delta.add(event, &orders) {
                    Ok(()) => (Outcome::Applied, Some(event.occurred_at)),
                    Err(e) => {
                        letters.push(self.dead_letter_record(
                            msg,
                            DeadLetterClass::Invalid,
                            &e.to_string(),
                        ));
                        (Outcome::DeadLettered, Some(event.occurred_at))
                    }
                },
            };
            outcomes.push(outcome);
        }
        analytics::add(conn, part, &delta)
            .await
            .context("failed to add to the rollups")?;
        outbox::enqueue_many(conn, &letters)
            .await
            .context("failed to enqueue dead letters")?;
        Ok(BatchReport {
            outcomes,
            tally: Default::default(),
        })
    }

    async fn dead_letter(
        &self,
        conn: &mut PgConnection,
        msg: &RawMessage,
        reason: &str,
    ) -> anyhow::Result<()> {
        dead_letter_alone(conn, &self.topic, &self.dlq_topic, msg, reason).await
    }
}

/// How often the ids of counted events are purged.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Forgets counted event ids older than `retention`, every ten minutes,
/// until `stop`. Several instances may purge at once; they delete the same
/// slices, which costs a little waiting and nothing else.
pub async fn purge_seen(
    pool: sqlx::PgPool,
    retention: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match claims::purge_claims(&pool, crate::store::older_than(retention)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                purged = n,
                "forgot counted order-event ids past ANALYTICS_DEDUPE_RETENTION_SECS"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "failed to purge counted order-event ids; retrying later")
            }
        }
    }
}
