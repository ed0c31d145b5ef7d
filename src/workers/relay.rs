//! The outbox relay: publishes committed outbox rows to Kafka, in id order,
//! then marks them sent; purges sent rows after `OUTBOX_RETENTION_SECS`, and
//! (one writer per database being a good place for it) the order feed past
//! `FEED_RETENTION_SECS` and the inbox past `DEDUPE_RETENTION`.
//!
//! Exactly one relay publishes per database at a time, the holder of a lease
//! (`store::leases`, `RELAY_LEASE_SECS`); the other instances stand by and
//! take it over once it expires. One publisher is what keeps an order's
//! events in the order they were committed, across instances and restarts.
//!
//! Fencing: the leader renews its lease long before it expires and checks it
//! before every round; marking rows sent requires the lease (owner, epoch,
//! unexpired) in the same statement. A leader that froze (SIGSTOP, a long GC
//! pause, a partition from the database) and woke after its lease passed on
//! marks nothing and steps down. What it may still deliver is what librdkafka
//! held for it when it froze: rows the new leader publishes too, identical
//! and in the same order, so consumers that dedupe by `event_id` see each
//! order's events once and in order. A PostgreSQL session held open by a
//! frozen process no longer blocks anyone, as the advisory lock used to.
//!
//! Delivery on `order-events` is at-least-once: a crash between publishing
//! and marking sent republishes the tail of a batch, in the same order.
//! Records are enqueued in id order and only the prefix up to the first
//! failed delivery is marked sent.

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

/// The outbox is one shard today (scale-out will split it).
const SHARD: i32 = 0;
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

impl Relay {
    /// Runs until `shutdown`. Database or broker trouble is retried with
    /// backoff; it never ends the process.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown).await {
                Ok(()) => failures = 0,
                Err(e) => {
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
        Ok(())
    }

    /// Takes the lease (or waits for it), then publishes until shutdown,
    /// an error, or the lease is lost.
    async fn lead(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.settings.database_url)
            .await
            .context("failed to connect the relay to PostgreSQL")?;
        let ttl = self.settings.relay_lease;
        let lease = loop {
            let taken = leases::try_take(&mut conn, SHARD, &self.settings.instance_id, ttl)
                .await
                .context("failed to try the relay lease")?;
            if let Some(lease) = taken {
                break lease;
            }
            // A standby: the leader reports the backlog.
            self.metrics.set_outbox_backlog(0, None);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.settings.outbox_poll_interval * 5) => {}
            }
        };
        info!(epoch = lease.epoch, "outbox relay is the leader");
        self.metrics.set_relay_leader(true);
        let producer: FutureProducer = crate::kafka::producer_config(&self.settings)
            .create()
            .context("failed to create Kafka producer")?;
        let result = self
            .publish_loop(&mut conn, &producer, &lease, shutdown)
            .await;
        self.metrics.set_relay_leader(false);
        if result.is_ok() {
            // Stepped down: another instance reports the backlog now. After
            // a failure the last count stays (the relay retries, and an
            // outage must keep OrderflowOutboxStalled armed).
            self.metrics.set_outbox_backlog(0, None);
        }
        // Whatever librdkafka still holds was never marked sent; it will be
        // published again by the next leader, so a short flush is enough.
        let _ = producer.flush(Timeout::After(Duration::from_secs(5)));
        if shutdown.is_cancelled() {
            // Hand over at once rather than after the lease runs out.
            let _ = leases::release(&self.pool, &lease).await;
        }
        let _ = conn.close().await;
        result
    }

    async fn publish_loop(
        &self,
        conn: &mut PgConnection,
        producer: &FutureProducer,
        lease: &Lease,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut last_purge = Instant::now();
        let mut last_backlog = Instant::now() - BACKLOG_EVERY;
        let mut renewed = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if let Some(fatal) = producer.client().fatal_error() {
                anyhow::bail!("Kafka producer hit a fatal error: {fatal:?}");
            }
            // Renew at a third of the lease, so two failed renewals still
            // leave time; a process that froze past that renews (or finds
            // the lease gone) before it publishes anything.
            if renewed.elapsed() >= self.settings.relay_lease / 3 {
                if !leases::renew(conn, lease, self.settings.relay_lease)
                    .await
                    .context("failed to renew the relay lease")?
                {
                    warn!(epoch = lease.epoch, "lost the relay lease; standing by");
                    return Ok(());
                }
                renewed = Instant::now();
            }
            if last_backlog.elapsed() >= BACKLOG_EVERY {
                let (rows, oldest) = outbox::backlog(&self.pool)
                    .await
                    .context("failed to count the outbox")?;
                self.metrics.set_outbox_backlog(rows, oldest);
                last_backlog = Instant::now();
            }
            if last_purge.elapsed() >= PURGE_EVERY {
                let purged = outbox::purge(&self.pool, self.settings.outbox_retention, 10_000)
                    .await
                    .context("failed to purge the outbox")?;
                self.metrics.outbox_purged(purged);
                // The relay leader is one writer per database: a good place
                // for the order feed's retention too.
                let purged = crate::store::feed::purge(
                    &self.pool,
                    self.settings.streams.feed_retention,
                    10_000,
                )
                .await
                .context("failed to purge the order feed")?;
                if purged > 0 {
                    debug!(rows = purged, "purged old order feed rows");
                }
                if let Some(retention) = self.settings.dedupe_retention {
                    self.purge_inbox(retention).await?;
                }
                last_purge = Instant::now();
            }
            let rows = outbox::pending(conn, self.settings.outbox_batch_size)
                .await
                .context("failed to read the outbox")?;
            if rows.is_empty() {
                self.metrics.set_outbox_backlog(0, None);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = self.wakeup.notified() => {}
                    _ = tokio::time::sleep(self.settings.outbox_poll_interval) => {}
                }
                continue;
            }
            let span = tracing::info_span!(
                "relay_round",
                epoch = lease.epoch,
                rows = rows.len(),
                first_id = rows[0].id,
                last_id = rows[rows.len() - 1].id
            );
            if !self
                .publish_round(conn, producer, lease, rows)
                .instrument(span)
                .await?
            {
                warn!(
                    epoch = lease.epoch,
                    "the relay lease passed on while publishing; standing by"
                );
                return Ok(());
            }
        }
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

    /// Publishes `rows` in id order and marks the delivered prefix sent.
    /// Returns `false` when the lease was lost (nothing marked).
    async fn publish_round(
        &self,
        conn: &mut PgConnection,
        producer: &FutureProducer,
        lease: &Lease,
        mut rows: Vec<PendingRecord>,
    ) -> anyhow::Result<bool> {
        if self.codec.avro_enabled() {
            for row in rows.iter_mut().filter(|r| r.is_order_event()) {
                row.payload = self
                    .codec
                    .order_event_wire(&row.topic, &row.payload)
                    .await?;
            }
        }
        let (sent, failure) = publish_in_order(producer, &rows).await;
        if !sent.is_empty() {
            let ids: Vec<i64> = sent.iter().map(|r| r.id).collect();
            let held = outbox::mark_sent(conn, &ids, lease)
                .await
                .context("failed to mark outbox rows sent")?;
            if !held {
                return Ok(false);
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
            None => Ok(true),
        }
    }
}

/// Enqueues every row in order, then awaits the deliveries. Returns the rows
/// delivered before the first failure, and that failure.
async fn publish_in_order<'r>(
    producer: &FutureProducer,
    rows: &'r [PendingRecord],
) -> (&'r [PendingRecord], Option<anyhow::Error>) {
    let mut deliveries: Vec<DeliveryFuture> = Vec::with_capacity(rows.len());
    let mut failure = None;
    'rows: for row in rows {
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(row.headers.len());
            for (k, v) in row.headers.iter() {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
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
