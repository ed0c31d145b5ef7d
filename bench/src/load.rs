//! Load generators: the mix of checkouts, payments and cancellations, a
//! fixed-rate sender, and the broker-alone floor under the latency phase.

use std::time::{Duration, Instant};

use anyhow::bail;
use orderflow::config::Topics;
use orderflow::domain::{EventId, OrderId};
use orderflow::events::{
    Cancellation, CheckoutEvent, PaymentConfirmation, PaymentStatus, RequestedBy,
};
use orderflow::produce::{enqueue, sample_checkout, InFlight};
use orderflow::store::pricing_tables::PricingTables;
use rand::Rng;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::util::Timeout;
use rdkafka::Message;

use crate::harness::Bench;
use crate::progress;
use crate::report::percentile;

/// One checkout of the benchmark mix with what follows it: a payment and a
/// cancellation, each with its probability (by default 0.9 and 0.05, the
/// ratios 1 : 0.9 : 0.05).
#[derive(Debug, Clone)]
pub struct Mixed {
    pub checkout: CheckoutEvent,
    pub payment: Option<PaymentConfirmation>,
    pub cancellation: Option<Cancellation>,
}

impl Mixed {
    pub fn new(
        rng: &mut impl Rng,
        ratios: (f64, f64),
        tables: &PricingTables,
        order_id: &str,
        cart_id: i64,
        users: i64,
    ) -> anyhow::Result<Mixed> {
        let order_id = OrderId::parse(order_id)?;
        let checkout = checkout(rng, &order_id, cart_id, users);
        Ok(Mixed {
            payment: rng
                .gen_bool(ratios.0)
                .then(|| payment_for(&checkout, tables)),
            cancellation: rng.gen_bool(ratios.1).then(|| cancel_for(&checkout)),
            checkout,
        })
    }

    pub fn events(&self) -> u64 {
        1 + u64::from(self.payment.is_some()) + u64::from(self.cancellation.is_some())
    }
}

/// A sample checkout by one of `users` customers (user ids 1..=users), at
/// random. The sample traffic of `orderflow produce` has 20, so that a demo
/// user has a history to show; a benchmark of a shop needs as many as a
/// shop has: every batch locks the feed heads of its orders' users until it
/// commits, so with 20 users concurrent batches wait for each other.
pub fn checkout(
    rng: &mut impl Rng,
    order_id: &OrderId,
    cart_id: i64,
    users: i64,
) -> orderflow::events::CheckoutEvent {
    let mut checkout = sample_checkout(rng, order_id, cart_id, false);
    checkout.user_id = rng.gen_range(1..=users.max(1));
    checkout
}

fn new_event_id() -> EventId {
    EventId::parse(&uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid event id")
}

/// A confirmed payment of the order's total, priced with the same tables the
/// worker uses, so orders get PAID and cancelling a paid one requests a refund.
pub(crate) fn payment_for(ev: &CheckoutEvent, tables: &PricingTables) -> PaymentConfirmation {
    let amount_minor = orderflow::workers::checkout::price(tables, ev)
        .map_or(1_000, |priced| priced.total.minor());
    PaymentConfirmation {
        event_id: new_event_id(),
        order_id: ev.order_id.clone(),
        payment_id: format!("pay-{}", ev.order_id),
        status: PaymentStatus::Confirmed,
        amount_minor,
        currency: ev.currency.clone(),
        provider: "bench".into(),
        failure_reason: None,
        occurred_at: chrono::Utc::now(),
    }
}

pub(crate) fn cancel_for(ev: &CheckoutEvent) -> Cancellation {
    Cancellation {
        event_id: new_event_id(),
        order_id: ev.order_id.clone(),
        reason: "bench".into(),
        requested_by: RequestedBy::Customer,
        occurred_at: chrono::Utc::now(),
    }
}

/// Calls `send(n)` for n = 0, 1, … at `rate` per second for `secs` seconds
/// (every 10 ms, whatever has fallen due); returns how many were sent.
pub async fn at_rate(
    rate: u64,
    secs: u64,
    mut send: impl FnMut(u64) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let total = rate * secs;
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0u64;
    while sent < total {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            send(sent)?;
            sent += 1;
        }
    }
    Ok(sent)
}

impl Bench {
    /// The mix, produced as fast as the broker takes it; a failed delivery
    /// stops the run (the worker would otherwise wait for it forever).
    pub async fn produce_mix(&self, checkouts: u64) -> anyhow::Result<u64> {
        self.produce_mix_named(checkouts, "b", 0).await
    }

    /// The mix with orders `<prefix>-n` and carts from `cart_base`.
    pub async fn produce_mix_named(
        &self,
        checkouts: u64,
        prefix: &str,
        cart_base: i64,
    ) -> anyhow::Result<u64> {
        self.produce_mix_with(&self.producer, checkouts, prefix, cart_base)
            .await
    }

    /// [`Bench::produce_mix_named`] through `producer`.
    pub async fn produce_mix_with(
        &self,
        producer: &FutureProducer,
        checkouts: u64,
        prefix: &str,
        cart_base: i64,
    ) -> anyhow::Result<u64> {
        let t = &self.settings().topics;
        let started = Instant::now();
        let mut sent = 0u64;
        // Per topic: deliveries are confirmed in order within one topic.
        let mut in_flight = [
            InFlight::new(&t.checkouts),
            InFlight::new(&t.payment_confirmations),
            InFlight::new(&t.cancellations),
        ];
        let mut rng = rand::thread_rng();
        for n in 0..checkouts {
            let mixed = Mixed::new(
                &mut rng,
                self.ratios,
                &self.tables,
                &format!("{prefix}-{n}"),
                cart_base + n as i64,
                self.users,
            )?;
            let key = mixed.checkout.order_id.to_string();
            let payloads = [
                Some(serde_json::to_vec(&mixed.checkout)?),
                mixed.payment.map(|p| serde_json::to_vec(&p)).transpose()?,
                mixed
                    .cancellation
                    .map(|c| serde_json::to_vec(&c))
                    .transpose()?,
            ];
            for (topic, payload) in in_flight.iter_mut().zip(payloads) {
                let Some(payload) = payload else { continue };
                let delivery = enqueue(producer, topic.topic, &key, &payload)?;
                topic.push(delivery, None).await?;
                sent += 1;
                if sent.is_multiple_of(50_000) {
                    let rate = sent as f64 / started.elapsed().as_secs_f64();
                    progress(format!("produced {sent} events ({rate:.0}/s)"));
                }
            }
        }
        for topic in &mut in_flight {
            topic.confirm_all().await?;
        }
        Ok(sent)
    }

    /// Checkouts at a fixed rate, each stamped with its send time.
    pub async fn produce_at_rate(&self, rate: u64, secs: u64) -> anyhow::Result<u64> {
        let mut rng = rand::thread_rng();
        let topic = &self.settings().topics.checkouts;
        let sent = at_rate(rate, secs, |n| {
            let order_id = OrderId::parse(&format!("lat-{n}"))?;
            let mut ev = checkout(&mut rng, &order_id, 900_000_000_000 + n as i64, self.users);
            ev.occurred_at = chrono::Utc::now();
            enqueue(
                &self.latency_producer,
                topic,
                order_id.as_str(),
                &serde_json::to_vec(&ev)?,
            )?;
            if (n + 1).is_multiple_of(rate * 5) {
                progress(format!("latency: sent {} / {}", n + 1, rate * secs));
            }
            Ok(())
        })
        .await?;
        self.latency_producer
            .flush(Timeout::After(Duration::from_secs(30)))?;
        Ok(sent)
    }

    /// Produce → consume latency of the broker with no orderflow in between,
    /// on an otherwise unused `topic`, with the worker's consumer settings.
    pub async fn broker_floor(
        &self,
        topic: &str,
        rate: u64,
        secs: u64,
    ) -> anyhow::Result<(f64, f64)> {
        let consumer = self
            .assigned_consumer(
                topic,
                &format!("{}-floor-{topic}", self.settings().group_id),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let total = rate * secs;
        let producer = self.latency_producer.clone();
        let sender_topic = topic.to_owned();
        let sender = tokio::spawn(async move {
            at_rate(rate, secs, |_| {
                let now = chrono::Utc::now().timestamp_micros().to_string();
                enqueue(&producer, &sender_topic, &now, now.as_bytes()).map(drop)
            })
            .await
        });
        let latencies = received_ms(&consumer, total, secs, |payload| {
            Some(
                std::str::from_utf8(payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            )
        })
        .await;
        sender.await??;
        Ok((percentile(&latencies, 0.5), percentile(&latencies, 0.99)))
    }

    /// A plain consumer, in a group of its own, of the latency phase's
    /// checkouts as they are produced: the broker's produce → consume time
    /// under the phase's own load (the machine busy with the worker and the
    /// database), beside the quiet floor of [`Bench::broker_floor`]. Collects
    /// `occurred_at` → received, in ms, for `total` checkouts or until
    /// `secs` + 20 s have passed.
    pub async fn watch_checkouts(
        &self,
        total: u64,
        secs: u64,
    ) -> anyhow::Result<tokio::task::JoinHandle<Vec<f64>>> {
        let settings = self.settings();
        let consumer = self
            .assigned_consumer(
                &settings.topics.checkouts,
                &format!("{}-watch", settings.group_id),
            )
            .await?;
        Ok(tokio::spawn(async move {
            received_ms(&consumer, total, secs, |payload| {
                serde_json::from_slice::<CheckoutEvent>(payload)
                    .ok()
                    .map(|ev| ev.occurred_at.timestamp_micros())
            })
            .await
        }))
    }

    /// A consumer with the worker's settings, in `group`, of `topic` from
    /// its end, returned once it has its assignment.
    async fn assigned_consumer(&self, topic: &str, group: &str) -> anyhow::Result<StreamConsumer> {
        let consumer: StreamConsumer =
            orderflow::kafka::consumer_config(self.settings(), group, &[])
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "latest")
                .create()?;
        consumer.subscribe(&[topic])?;
        let started = Instant::now();
        while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
            let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
            if started.elapsed() > Duration::from_secs(20) {
                bail!("consumer of {topic} got no assignment");
            }
        }
        Ok(consumer)
    }

    /// A new, unused topic defined like the checkouts topic (its partitions),
    /// for a floor of the same shape.
    pub async fn checkouts_like_topic(&self) -> anyhow::Result<String> {
        let mut settings = self.settings().clone();
        settings.topics = Topics::prefixed(&format!("bench-{}-floor-", self.world.id));
        let specs: Vec<_> = orderflow::kafka::topics::embedded_specs()?
            .into_iter()
            .filter(|s| s.role == "checkouts")
            .collect();
        orderflow::kafka::topics::apply(&settings, &specs).await?;
        Ok(settings.topics.checkouts)
    }
}

/// Receives until `total` messages or `secs` + 20 s: for each message whose
/// payload `sent_at` reads (µs since the epoch), ms from then to its
/// receipt, sorted.
async fn received_ms(
    consumer: &StreamConsumer,
    total: u64,
    secs: u64,
    sent_at: impl Fn(&[u8]) -> Option<i64>,
) -> Vec<f64> {
    let mut latencies = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + Duration::from_secs(secs + 20);
    while (latencies.len() as u64) < total && Instant::now() < deadline {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else {
            continue;
        };
        if let Some(sent) = m.payload().and_then(&sent_at) {
            latencies.push((chrono::Utc::now().timestamp_micros() - sent) as f64 / 1000.0);
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    latencies
}
