//! The outbox relay: publishes committed outbox rows to Kafka, shard by
//! shard in id order, then deletes them; and, on the instance holding shard
//! 0, the housekeeping one writer per database is enough for: rows an older
//! version marked sent (`OUTBOX_RETENTION_SECS`), the order feed past
//! `FEED_RETENTION_SECS` and the inbox past `DEDUPE_RETENTION`.
//!
//! The outbox has `OUTBOX_SHARDS` shards (an order's rows all fall in one,
//! `store::outbox`), each published by the holder of its lease
//! (`store::leases`, `RELAY_LEASE_SECS`). Every relay heartbeats as a member
//! and holds its fair share, the shard count divided by the live relays and
//! rounded up: it takes free or expired shards up to that share and releases
//! those above it, so shards spread over the instances as they join, and the
//! shards of a relay that died are taken over once its lease expires. One
//! publisher per shard is what keeps an order's events in commit order,
//! across instances and restarts.
//!
//! Fencing: a relay renews its leases every third of the lease and stops
//! enqueueing once half of it has passed since the last renewal (a process
//! that froze wakes up past that and renews, or learns it lost the shards,
//! before it publishes anything); deleting published rows requires the
//! lease (owner, epoch, unexpired) in the same statement. Every record
//! carries the shard and epoch it was published under (headers
//! `relay_shard`, `relay_epoch`). What a frozen relay may still deliver is
//! what librdkafka held for it when it froze: rows the new owner publishes
//! too, identical, so consumers that dedupe by `event_id` see each order's
//! events once and in order.
//!
//! Delivery on `order-events` is at-least-once: a crash between publishing
//! and deleting republishes the tail of a round, in the same order. Records
//! are enqueued in id order and only the prefix up to the first failed
//! delivery is deleted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use sqlx::{Connection, PgConnection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::backoff::Backoff;
use crate::config::Settings;
use crate::store::leases::{self, Lease};
use crate::store::outbox::{self, PendingRecord};
use crate::telemetry::Metrics;

const PURGE_EVERY: Duration = Duration::from_secs(60);
const BACKLOG_EVERY: Duration = Duration::from_secs(2);

/// Retries after a failed round (database or broker trouble): 200 ms doubling
/// to 30 s, jittered.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));

pub struct Relay {
    pub settings: Settings,
    /// Encodes order events for the wire (Avro when a registry is set).
    pub codec: crate::events::Codec,
    pub pool: sqlx::PgPool,
    pub metrics: Arc<Metrics>,
    pub wakeup: Arc<Notify>,
}

/// The shards a relay holds, and when it last knew them to be its own.
struct Held {
    leases: Vec<Lease>,
    /// The slots the leases cover (`outbox.slot`).
    slots: Vec<i16>,
    /// Taken before the last renewal was sent: the leases last at least
    /// `RELAY_LEASE_SECS` from here, by any clock.
    renewed: Instant,
}

impl Held {
    fn set(&mut self, mut leases: Vec<Lease>, shards: i32) {
        leases.sort_by_key(|l| l.shard);
        self.slots = leases
            .iter()
            .flat_map(|l| leases::slots_of(l.shard, shards))
            .collect();
        self.leases = leases;
    }

    fn epoch_of(&self, shard: i32) -> i64 {
        self.leases
            .iter()
            .find(|l| l.shard == shard)
            .map_or(0, |l| l.epoch)
    }
}

impl Relay {
    /// Runs until `shutdown`. Database or broker trouble is retried with
    /// backoff; it never ends the process.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            match self.serve(&shutdown).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    // A relay that served for a while starts its backoff
                    // over: failures a day apart are not a streak.
                    if started.elapsed() > Duration::from_secs(60) {
                        failures = 0;
                    }
                    failures += 1;
                    self.metrics.outbox_publish_failed(&e);
                    let wait = RETRY.delay(failures);
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        let _ = leases::leave(&self.pool, &self.settings.instance_id).await;
        Ok(())
    }

    /// Holds a fair share of the shards and publishes them until shutdown
    /// or an error.
    async fn serve(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.settings.database_url)
            .await
            .context("failed to connect the relay to PostgreSQL")?;
        // Leases of an earlier round of this process are forgotten: free
        // them for whoever takes them next (this relay, a moment later).
        leases::release_all(&mut conn, &self.settings.instance_id)
            .await
            .context("failed to release the relay's earlier leases")?;
        let producer: FutureProducer = crate::kafka::producer_config(&self.settings)
            .create()
            .context("failed to create Kafka producer")?;
        let mut held = Held {
            leases: Vec::new(),
            slots: Vec::new(),
            renewed: Instant::now(),
        };
        let result = self
            .publish_loop(&mut conn, &producer, &mut held, shutdown)
            .await;
        self.metrics.set_relay_shards(0);
        if result.is_ok() {
            // Other relays report the backlog now. After a failure the last
            // count stays (the relay retries, and an outage must keep
            // OrderflowOutboxStalled armed).
            self.metrics.set_outbox_backlog(0, None);
        }
        // Whatever librdkafka still holds was never deleted; it will be
        // published again by the shards' next owner, so a short flush is
        // enough.
        let _ = producer.flush(Timeout::After(Duration::from_secs(5)));
        if shutdown.is_cancelled() {
            // Hand over at once rather than after the leases run out.
            let _ = leases::release(&mut conn, &held.leases).await;
        }
        let _ = conn.close().await;
        result
    }

    /// Renews the leases held, reports this relay as live, and takes or
    /// releases shards to hold its fair share.
    async fn balance(&self, conn: &mut PgConnection, held: &mut Held) -> anyhow::Result<()> {
        let me = &self.settings.instance_id;
        let ttl = self.settings.relay_lease;
        let shards = self.settings.outbox_shards;
        let before = shard_numbers(&held.leases);
        let started = Instant::now();
        let mut leases = leases::renew(conn, &held.leases, ttl)
            .await
            .context("failed to renew the relay leases")?;
        if leases.len() < held.leases.len() {
            let kept = shard_numbers(&leases);
            warn!(held = ?before, ?kept, "relay leases passed on; publishing the rest");
        }
        let live = leases::heartbeat(conn, me, ttl)
            .await
            .context("failed to report the relay as live")?;
        let share = leases::fair_share(shards, live) as usize;
        if leases.len() < share {
            let want = (share - leases.len()) as i64;
            let taken = leases::take(conn, me, shards, want, ttl)
                .await
                .context("failed to take relay leases")?;
            leases.extend(taken);
        } else if leases.len() > share {
            leases.sort_by_key(|l| l.shard);
            let excess = leases.split_off(share);
            leases::release(conn, &excess)
                .await
                .context("failed to release relay leases")?;
        }
        held.set(leases, shards);
        held.renewed = started;
        let after = shard_numbers(&held.leases);
        if after != before {
            let epochs: Vec<i64> = held.leases.iter().map(|l| l.epoch).collect();
            info!(shards = ?after, ?epochs, live, "outbox shards this relay publishes");
        }
        self.metrics.set_relay_shards(held.leases.len());
        Ok(())
    }

    async fn publish_loop(
        &self,
        conn: &mut PgConnection,
        producer: &FutureProducer,
        held: &mut Held,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let tick = self.settings.relay_lease / 3;
        let mut last_purge = Instant::now();
        let mut last_backlog = Instant::now() - BACKLOG_EVERY;
        let mut last_balance: Option<Instant> = None;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if let Some(fatal) = producer.client().fatal_error() {
                anyhow::bail!("Kafka producer hit a fatal error: {fatal:?}");
            }
            // At a third of the lease, so two failed renewals still leave
            // time; a process that froze past that renews (or finds the
            // leases gone) before it publishes anything.
            if last_balance.is_none_or(|at| at.elapsed() >= tick) {
                self.balance(conn, held).await?;
                last_balance = Some(Instant::now());
            }
            if held.leases.is_empty() {
                // A relay holding no shard: the others report the backlog.
                self.metrics.set_outbox_backlog(0, None);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(tick) => {}
                }
                continue;
            }
            // Every publishing relay reports the whole outbox (the alerts
            // take the max): shards nobody holds still count.
            if last_backlog.elapsed() >= BACKLOG_EVERY {
                let (rows, oldest) = outbox::backlog(&self.pool)
                    .await
                    .context("failed to count the outbox")?;
                self.metrics.set_outbox_backlog(rows, oldest);
                last_backlog = Instant::now();
            }
            if held.leases[0].shard == 0 && last_purge.elapsed() >= PURGE_EVERY {
                self.housekeeping().await?;
                last_purge = Instant::now();
            }
            let rows = outbox::pending(conn, &held.slots, self.settings.outbox_batch_size)
                .await
                .context("failed to read the outbox")?;
            if rows.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = self.wakeup.notified() => {}
                    _ = tokio::time::sleep(self.settings.outbox_poll_interval) => {}
                }
                continue;
            }
            let span = tracing::info_span!(
                "relay_round",
                shards = held.leases.len(),
                rows = rows.len(),
                first_id = rows[0].id,
                last_id = rows[rows.len() - 1].id
            );
            self.publish_round(conn, producer, held, rows)
                .instrument(span)
                .await?;
        }
    }

    /// Purges what one writer per database is enough for: rows an older
    /// version marked sent, the order feed, the inbox.
    async fn housekeeping(&self) -> anyhow::Result<()> {
        let purged = outbox::purge(&self.pool, self.settings.outbox_retention, 10_000)
            .await
            .context("failed to purge the outbox")?;
        self.metrics.outbox_purged(purged);
        let purged =
            crate::store::feed::purge(&self.pool, self.settings.streams.feed_retention, 10_000)
                .await
                .context("failed to purge the order feed")?;
        if purged > 0 {
            debug!(rows = purged, "purged old order feed rows");
        }
        if let Some(retention) = self.settings.dedupe_retention {
            self.purge_inbox(retention).await?;
        }
        Ok(())
    }

    /// Deletes inbox rows past `retention` in batches, for at most a few
    /// seconds per pass (the next pass, a minute later, goes on).
    async fn purge_inbox(&self, retention: Duration) -> anyhow::Result<()> {
        const BATCH: i64 = 10_000;
        let started = Instant::now();
        loop {
            let purged = crate::store::inbox::purge(&self.pool, retention, BATCH)
                .await
                .context("failed to purge the inbox")?;
            self.metrics.inbox_purged(purged);
            if purged < BATCH as u64 || started.elapsed() > Duration::from_secs(5) {
                return Ok(());
            }
        }
    }

    /// Publishes `rows` in id order and deletes the delivered prefix, for
    /// the shards still held; drops the shards found lost.
    async fn publish_round(
        &self,
        conn: &mut PgConnection,
        producer: &FutureProducer,
        held: &mut Held,
        mut rows: Vec<PendingRecord>,
    ) -> anyhow::Result<()> {
        if self.codec.avro_enabled() {
            for row in rows.iter_mut().filter(|r| r.is_order_event()) {
                row.payload = self
                    .codec
                    .order_event_wire(&row.topic, &row.payload)
                    .await?;
            }
        }
        let shards = self.settings.outbox_shards;
        let stamps: Vec<(i32, i64)> = rows
            .iter()
            .map(|r| {
                let shard = i32::from(r.slot) % shards;
                (shard, held.epoch_of(shard))
            })
            .collect();
        // Past half the lease since the last renewal (a freeze, a slow
        // round), enqueue nothing more: renew first.
        let deadline = held.renewed + self.settings.relay_lease / 2;
        let (sent, failure) = publish_in_order(producer, &rows, &stamps, deadline).await;
        if !sent.is_empty() {
            let ids: Vec<i64> = sent.iter().map(|r| r.id).collect();
            let still = outbox::delete_published(conn, &ids, &held.leases, shards)
                .await
                .context("failed to delete published outbox rows")?;
            if still.len() < held.leases.len() {
                warn!(
                    held = ?shard_numbers(&held.leases),
                    kept = ?shard_numbers(&still),
                    "relay leases passed on while publishing; their rows stay for the new owner"
                );
                held.set(still, shards);
            }
            let now = Utc::now();
            for row in sent {
                self.metrics.outbox_published(
                    &row.topic,
                    (now - row.created_at).to_std().unwrap_or_default(),
                );
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The shard numbers of `leases`.
fn shard_numbers(leases: &[Lease]) -> Vec<i32> {
    leases.iter().map(|l| l.shard).collect()
}

/// Enqueues rows in order until `deadline`, each stamped with its (shard,
/// epoch), then awaits the deliveries. Returns the rows delivered before the
/// first failure (or the deadline), and that failure.
async fn publish_in_order<'r>(
    producer: &FutureProducer,
    rows: &'r [PendingRecord],
    stamps: &[(i32, i64)],
    deadline: Instant,
) -> (&'r [PendingRecord], Option<anyhow::Error>) {
    let mut deliveries: Vec<DeliveryFuture> = Vec::with_capacity(rows.len());
    let mut failure = None;
    'rows: for (row, (shard, epoch)) in rows.iter().zip(stamps) {
        let (shard, epoch) = (shard.to_string(), epoch.to_string());
        loop {
            if Instant::now() >= deadline {
                break 'rows;
            }
            let mut headers = OwnedHeaders::new_with_capacity(row.headers.len() + 2);
            for (k, v) in row.headers.iter() {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            headers = headers
                .insert(Header {
                    key: "relay_shard",
                    value: Some(shard.as_bytes()),
                })
                .insert(Header {
                    key: "relay_epoch",
                    value: Some(epoch.as_bytes()),
                });
            let mut record = FutureRecord::<[u8], [u8]>::to(&row.topic)
                .payload(&row.payload)
                .headers(headers);
            if let Some(key) = &row.key {
                record = record.key(key);
            }
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    continue 'rows;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Let librdkafka drain before enqueueing this row; never
                    // skip ahead, or later rows would overtake it.
                    producer.poll(Timeout::After(Duration::from_millis(10)));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    failure = Some(
                        anyhow::Error::new(e)
                            .context(format!("failed to enqueue outbox row {}", row.id)),
                    );
                    break 'rows;
                }
            }
        }
    }
    let mut delivered = 0;
    for delivery in deliveries {
        let error = match delivery.await {
            Ok(Ok(_)) => {
                delivered += 1;
                continue;
            }
            Ok(Err((e, _))) => anyhow::Error::new(e),
            Err(_canceled) => anyhow::anyhow!("the producer dropped the delivery"),
        };
        let row = &rows[delivered];
        warn!(
            row = row.id,
            error = format!("{error:#}"),
            "outbox delivery failed"
        );
        failure = Some(error.context(format!(
            "failed to deliver outbox row {} to {}",
            row.id, row.topic
        )));
        break;
    }
    (&rows[..delivered], failure)
}
