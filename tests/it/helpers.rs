//! Test harness: a fresh world per test (database, topic names, consumer
//! group; `orderflow_testkit::World`, dropped with the test even when an
//! assertion fails), the real broker on KAFKA_BROKERS (started by
//! scripts/test.sh), the real app.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use orderflow::app::{self, Component, Running};
use orderflow::config::Settings;
use orderflow::domain::{EventId, OrderId};
use orderflow::events::{
    Cancellation, CheckoutEvent, CheckoutItem, PaymentConfirmation, PaymentStatus, RequestedBy,
};
use orderflow::store::inbox::Outcome;
use orderflow_testkit::World;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use sqlx::PgPool;

pub const WAIT: Duration = Duration::from_secs(30);

/// One test's world: its own database, topics and consumer group.
pub struct TestEnv {
    pub settings: Settings,
    pub pool: PgPool,
    producer: FutureProducer,
    /// Drops the database when the test ends, however it ends; `None` for a
    /// second handle on another test's world.
    _world: Option<World>,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        Self::with(|_| {}).await
    }

    pub async fn with(customise: impl FnOnce(&mut Settings)) -> TestEnv {
        let base = Settings::from_env().expect("settings from the environment");
        let world = World::create(&base, "test", |settings| {
            settings.http_addr = "127.0.0.1:0".parse().unwrap();
            settings.batch_max_wait = Duration::from_millis(10);
            settings.outbox_poll_interval = Duration::from_millis(50);
            settings.statistics_interval = Duration::from_millis(500);
            settings.topic_replication_factor = 1;
            customise(settings);
        })
        .await
        .expect("a fresh test world");
        let mut env = Self::with_settings(world.settings.clone()).await;
        env._world = Some(world);
        env
    }

    /// A second handle on an existing environment (its own producer and
    /// pool), e.g. to produce from another task. Does not create anything.
    pub async fn with_settings(settings: Settings) -> TestEnv {
        let pool = orderflow::store::pool(&settings.database_url, 4).unwrap();
        let producer = orderflow::produce::producer(&settings).unwrap();
        TestEnv {
            settings,
            pool,
            producer,
            _world: None,
        }
    }

    pub async fn start(&self) -> TestApp {
        self.start_only(&Component::ALL).await
    }

    pub async fn start_only(&self, components: &[Component]) -> TestApp {
        let running = app::start(self.settings.clone(), components)
            .await
            .expect("start app");
        let base = format!("http://{}", running.http_addr.expect("http started"));
        TestApp {
            running,
            base,
            http: reqwest::Client::new(),
        }
    }

    /// Produces one record; returns its (partition, offset).
    pub async fn produce(&self, topic: &str, key: Option<&str>, payload: &[u8]) -> (i32, i64) {
        let mut record = rdkafka::producer::FutureRecord::<str, [u8]>::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(e, _)| e)
            .expect("produce")
    }

    /// Produces `event` as JSON to `topic`, keyed by `order_id`.
    pub async fn produce_json(
        &self,
        topic: &str,
        order_id: &OrderId,
        event: &impl serde::Serialize,
    ) -> (i32, i64) {
        self.produce(
            topic,
            Some(order_id.as_str()),
            &serde_json::to_vec(event).unwrap(),
        )
        .await
    }

    /// Produces a checkout; returns its (partition, offset).
    pub async fn produce_checkout(&self, checkout: &CheckoutEvent) -> (i32, i64) {
        self.produce_json(
            &self.settings.topics.checkouts,
            &checkout.order_id,
            checkout,
        )
        .await
    }

    pub async fn produce_payment(&self, p: &PaymentConfirmation) {
        self.produce_json(&self.settings.topics.payment_confirmations, &p.order_id, p)
            .await;
    }

    pub async fn produce_cancellation(&self, c: &Cancellation) {
        self.produce_json(&self.settings.topics.cancellations, &c.order_id, c)
            .await;
    }

    /// Polls `query` (a scalar count, no parameters) until it returns
    /// `expected`.
    pub async fn wait_count(&self, query: &str, expected: i64) {
        self.wait_until(&format!("`{query}` = {expected}"), || async {
            self.count(query).await == expected
        })
        .await;
    }

    /// Polls `check` until it holds; fails the test after [`WAIT`].
    pub async fn wait_until<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        while !check().await {
            assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn count(&self, query: &str) -> i64 {
        sqlx::query_scalar(query)
            .fetch_one(&self.pool)
            .await
            .expect(query)
    }

    /// Orders by status as the batches keep them (`order_status_counts`,
    /// which the `orderflow_orders` gauge reads), asserted equal to a count
    /// of the orders table.
    pub async fn status_counts(&self) -> HashMap<String, i64> {
        let mismatches = orderflow_testkit::oracle::status_count_mismatches(&self.pool)
            .await
            .unwrap();
        assert_eq!(mismatches, [], "(status, kept, counted)");
        orderflow::store::status_counts::read(&self.pool)
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .collect()
    }

    /// How many of `order_ids` have an order.
    pub async fn orders_among(&self, order_ids: &[String]) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE order_id = ANY($1)")
            .bind(order_ids)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn status_of(&self, order_id: &str) -> String {
        sqlx::query_scalar("SELECT status FROM orders WHERE order_id = $1")
            .bind(order_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until the order has `status`.
    pub async fn wait_status(&self, order_id: &str, status: &str) {
        self.wait_until(&format!("order {order_id} to be {status}"), || async {
            let now: Option<String> =
                sqlx::query_scalar("SELECT status FROM orders WHERE order_id = $1")
                    .bind(order_id)
                    .fetch_optional(&self.pool)
                    .await
                    .unwrap();
            now.as_deref() == Some(status)
        })
        .await;
    }

    /// The order events of `order_id`, as (event_type, json), in commit
    /// order: from the order feed, which holds each event as published.
    pub async fn events_of(&self, order_id: &str) -> Vec<(String, serde_json::Value)> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_type, body::text FROM order_feed WHERE order_id = $1 ORDER BY seq",
        )
        .bind(order_id)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(event_type, body)| (event_type, serde_json::from_str(&body).unwrap()))
            .collect()
    }

    pub async fn event_types_of(&self, order_id: &str) -> Vec<String> {
        self.events_of(order_id)
            .await
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    /// Reads `n` records from `topic` from the beginning (a fresh group), and
    /// then `linger` longer to catch any extra record.
    pub async fn read_topic(&self, topic: &str, n: usize, linger: Duration) -> Vec<Record> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.kafka_brokers)
            .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let mut records = Vec::new();
        let started = Instant::now();
        let mut deadline = started + WAIT;
        while Instant::now() < deadline {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, consumer.recv()).await {
                Ok(Ok(m)) => {
                    let headers = orderflow_testkit::oracle::headers_of(&m);
                    records.push(Record {
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                    if records.len() == n {
                        deadline = Instant::now() + linger;
                    }
                }
                Ok(Err(e)) => panic!("reading {topic}: {e}"),
                Err(_) => break,
            }
        }
        assert!(
            records.len() >= n,
            "read {} records from {topic}, expected {n}",
            records.len()
        );
        records
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("record is JSON")
    }
}

pub struct TestApp {
    pub running: Running,
    pub base: String,
    pub http: reqwest::Client,
}

impl TestApp {
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let (status, body) = self.get("/readyz").await;
            if status == 200 {
                return;
            }
            assert!(started.elapsed() < WAIT, "not ready: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `/metrics` until it contains `expected`.
    pub async fn wait_metric(&self, expected: &str) {
        let started = Instant::now();
        while !self.metrics().await.contains(expected) {
            assert!(
                started.elapsed() < WAIT,
                "timed out waiting for {expected:?} in /metrics"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn handled(&self, topic: &str, outcome: Outcome) -> u64 {
        self.running.metrics.messages_count(topic, outcome.as_str())
    }

    /// Waits until `handled(topic, outcome)` reaches `n`.
    pub async fn wait_handled(&self, topic: &str, outcome: Outcome, n: u64) {
        let started = Instant::now();
        while self.handled(topic, outcome) < n {
            assert!(
                started.elapsed() < WAIT,
                "timed out waiting for {n} {outcome:?} on {topic}, got {}",
                self.handled(topic, outcome)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }
}

/// A fresh event id.
pub fn new_event_id() -> EventId {
    event_id(&uuid::Uuid::new_v4().to_string())
}

pub fn event_id(raw: &str) -> EventId {
    EventId::parse(raw).expect("a valid event id")
}

pub fn order_id_of(raw: &str) -> OrderId {
    OrderId::parse(raw).expect("a valid order id")
}

/// A valid checkout shipped to California: 2 × 1,000 + 1 × 550 = 2,550 cents.
pub fn checkout(order_id: &str, cart_id: i64, user_id: i64) -> CheckoutEvent {
    let address = orderflow_testkit::mix::california();
    CheckoutEvent {
        event_id: new_event_id(),
        order_id: order_id_of(order_id),
        cart_id,
        user_id,
        currency: "USD".into(),
        items: vec![
            CheckoutItem {
                sku: "SKU-A".into(),
                name: "Thing A".into(),
                quantity: 2,
                unit_price_minor: 1_000,
            },
            CheckoutItem {
                sku: "SKU-B".into(),
                name: "Thing B".into(),
                quantity: 1,
                unit_price_minor: 550,
            },
        ],
        shipping_address: address.clone(),
        billing_address: address,
        payment_method: "card".into(),
        occurred_at: chrono::Utc::now(),
    }
}

/// A confirmed payment of `amount` USD.
pub fn payment(order_id: &str, payment_id: &str, amount: i64) -> PaymentConfirmation {
    PaymentConfirmation {
        event_id: new_event_id(),
        order_id: order_id_of(order_id),
        payment_id: payment_id.into(),
        status: PaymentStatus::Confirmed,
        amount_minor: amount,
        currency: "USD".into(),
        provider: "stripe".into(),
        failure_reason: None,
        occurred_at: chrono::Utc::now(),
    }
}

pub fn failed_payment(order_id: &str, payment_id: &str, amount: i64) -> PaymentConfirmation {
    PaymentConfirmation {
        status: PaymentStatus::Failed,
        failure_reason: Some("card declined".into()),
        ..payment(order_id, payment_id, amount)
    }
}

pub fn cancellation(order_id: &str) -> Cancellation {
    Cancellation {
        event_id: new_event_id(),
        order_id: order_id_of(order_id),
        reason: "changed my mind".into(),
        requested_by: RequestedBy::Customer,
        occurred_at: chrono::Utc::now(),
    }
}

/// The total of [`checkout`]: 2,550 + 185 tax + 499 shipping.
pub const CHECKOUT_TOTAL: i64 = 3_234;
