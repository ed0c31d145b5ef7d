//! The two baselines measured in every run: the database ceiling (the same
//! handlers and batch protocol with no Kafka) and the naive design (one
//! transaction and one synchronous produce per checkout).

use std::time::{Duration, Instant};

use orderflow::events::Codec;
use orderflow::workers::checkout::CheckoutHandler;
use orderflow::workers::lifecycle::LifecycleHandler;
use orderflow::workers::{Applier, Handler, RawMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

use crate::harness::Bench;
use crate::load::Mixed;

/// Appliers built as `orderflow run` builds them.
struct Appliers {
    checkouts: Applier<CheckoutHandler>,
    payments: Applier<LifecycleHandler>,
    cancellations: Applier<LifecycleHandler>,
}

impl Bench {
    fn appliers(&self) -> Appliers {
        let s = self.settings();
        let codec = Codec::new(s.max_message_bytes);
        let t = &s.topics;
        let applier =
            |handler, topic: &str| Applier::new(handler, codec.clone(), topic, &t.order_events);
        Appliers {
            checkouts: Applier::new(
                CheckoutHandler::new(s.default_tax_rate_ppm),
                codec.clone(),
                &t.checkouts,
                &t.order_events,
            ),
            payments: applier(LifecycleHandler::payments(), &t.payment_confirmations),
            cancellations: applier(LifecycleHandler::cancellations(), &t.cancellations),
        }
    }

    /// The same mix through the same appliers, written by a plain loop with
    /// no Kafka: per chunk of checkouts, one transaction for them, one for
    /// their payments and one for their cancellations, each of at most
    /// `BATCH_MAX_MESSAGES` like the worker's. Returns (checkouts/s, events/s).
    pub async fn db_ceiling(&self, n: u64) -> anyhow::Result<(f64, f64)> {
        let appliers = self.appliers();
        let mut rng = rand::thread_rng();
        let mix: Vec<Mixed> = (0..n)
            .map(|i| {
                Mixed::new(
                    &mut rng,
                    self.ratios,
                    &self.tables,
                    &format!("ceil-{i}"),
                    500_000_000_000 + i as i64,
                    self.users,
                )
            })
            .collect::<anyhow::Result<_>>()?;
        let events = mix.iter().map(Mixed::events).sum::<u64>();
        let chunk = self.settings().batch_max_messages.max(1);
        let mut statistics = Statistics::default();
        let started = Instant::now();
        for part in mix.chunks(chunk) {
            statistics.keep_fresh(&self.pool, part.len() as u64).await?;
            let checkouts = messages(part.iter().map(|m| {
                (
                    m.checkout.order_id.as_str(),
                    serde_json::to_vec(&m.checkout),
                )
            }))?;
            self.apply(&appliers.checkouts, &checkouts).await?;
            let payments = messages(
                part.iter()
                    .filter_map(|m| m.payment.as_ref())
                    .map(|p| (p.order_id.as_str(), serde_json::to_vec(p))),
            )?;
            self.apply(&appliers.payments, &payments).await?;
            let cancellations = messages(
                part.iter()
                    .filter_map(|m| m.cancellation.as_ref())
                    .map(|c| (c.order_id.as_str(), serde_json::to_vec(c))),
            )?;
            self.apply(&appliers.cancellations, &cancellations).await?;
        }
        let secs = (started.elapsed() - statistics.spent).as_secs_f64();
        Ok((n as f64 / secs, events as f64 / secs))
    }

    /// One transaction as the consumer loop makes it.
    async fn apply<H: Handler>(
        &self,
        applier: &Applier<H>,
        batch: &[RawMessage],
    ) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        applier.apply_messages(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The pattern the old service started from: per message, one
    /// transaction, then one synchronous produce of the resulting event.
    pub async fn naive(&self, n: u64) -> anyhow::Result<f64> {
        let appliers = self.appliers();
        // Topics of its own: what it publishes (checkout payloads, its cost
        // stand-in for the resulting event) must not reach the order-events
        // topic that the analytics phase replays.
        let mut own = self.settings().clone();
        own.topics =
            orderflow::config::Topics::prefixed(&format!("bench-{}-naive-", self.world.id));
        orderflow_testkit::create_topics(&own).await?;
        let topic = &own.topics.order_events;
        let mut rng = rand::thread_rng();
        let mut statistics = Statistics::default();
        let started = Instant::now();
        for i in 0..n {
            statistics.keep_fresh(&self.pool, 1).await?;
            let order_id = orderflow::domain::OrderId::parse(&format!("naive-{i}"))?;
            let ev =
                crate::load::checkout(&mut rng, &order_id, 700_000_000_000 + i as i64, self.users);
            let payload = serde_json::to_vec(&ev)?;
            let message = messages([(order_id.as_str(), Ok(payload.clone()))])?;
            self.apply(&appliers.checkouts, &message).await?;
            // Not the bulk loader: its 20 ms linger would be waited out on
            // every synchronous send and flatter the ratio.
            self.latency_producer
                .send(
                    FutureRecord::to(topic)
                        .key(order_id.as_str())
                        .payload(&payload),
                    Timeout::After(Duration::from_secs(10)),
                )
                .await
                .map_err(|(e, _)| e)?;
        }
        Ok(n as f64 / (started.elapsed() - statistics.spent).as_secs_f64())
    }
}

/// What autovacuum (or the worker's housekeeping, where autovacuum is off)
/// does for the worker: fresh planner statistics as the tables grow, here
/// each time the rows written have doubled. Without it a plain loop on a
/// fresh database plans its lookups for empty tables and ends up scanning
/// them. That upkeep runs in the background for the worker, so its time
/// (`spent`) is taken off the baseline's clock.
#[derive(Default)]
struct Statistics {
    written: u64,
    next: u64,
    spent: Duration,
}

impl Statistics {
    async fn keep_fresh(&mut self, pool: &sqlx::PgPool, rows: u64) -> anyhow::Result<()> {
        if self.written >= self.next {
            let started = Instant::now();
            let mut conn = pool.acquire().await?;
            orderflow::store::maintenance::analyze(&mut conn).await?;
            self.next = (self.written * 2).max(500);
            self.spent += started.elapsed();
        }
        self.written += rows;
        Ok(())
    }
}

/// JSON payloads as the consumer would have received them, keyed by order id.
fn messages<'a>(
    payloads: impl IntoIterator<Item = (&'a str, serde_json::Result<Vec<u8>>)>,
) -> anyhow::Result<Vec<RawMessage>> {
    payloads
        .into_iter()
        .enumerate()
        .map(|(offset, (key, payload))| {
            Ok(RawMessage {
                partition: 0,
                offset: offset as i64,
                key: Some(key.as_bytes().to_vec()),
                payload: Some(payload?),
            })
        })
        .collect()
}
