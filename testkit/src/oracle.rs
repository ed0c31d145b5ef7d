//! The one oracle of the fault suite (and the crash test): once the system is
//! quiet, compare everything observable with the mix's model.
//!
//! 1. Exactly once in effect: every order's status, payments and refunds
//!    equal the model's.
//! 2. No input lost: every event id produced is in the inbox; every poison
//!    message is on its dead-letter topic with a reason; nothing is parked.
//! 3. The outbox is fully published (empty: rows are deleted as they are
//!    published), every committed order event is on `order-events` and
//!    nothing else is, no event id was published with two contents, and no
//!    refund was announced twice.
//! 4. Per order, the status-changing events on `order-events`, in topic order
//!    (first occurrence of each event id), follow the status history, and
//!    all of an order's events follow its commit order.
//! 5. The order feed (what live streams replay, and the record of every
//!    order event committed) holds each event once, with the body
//!    published, and each user's cursors are 1, 2, 3… without a hole.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use orderflow::config::Settings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::ClientConfig;
use sqlx::PgPool;

use crate::mix::{Expected, Input, Message, Mix};

/// What the oracle found.
#[derive(Debug, Default)]
pub struct Findings {
    pub orders: usize,
    pub order_events: usize,
    pub republished: usize,
    pub dead_letters: usize,
    /// Each broken guarantee, with the order or event it concerns.
    pub mismatches: Vec<String>,
}

impl Findings {
    fn mismatch(&mut self, what: String) {
        if self.mismatches.len() < 10_000 {
            self.mismatches.push(what);
        }
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
    /// The producer's timestamp (CreateTime), milliseconds.
    pub created_ms: Option<i64>,
}

/// Runs every check. `poison` are the messages that must be dead-lettered.
pub async fn check(
    pool: &PgPool,
    settings: &Settings,
    mix: &Mix,
    poison: &[Message],
) -> anyhow::Result<Findings> {
    let mut findings = Findings {
        orders: mix.model.len(),
        ..Findings::default()
    };
    check_state(pool, mix, &mut findings).await?;
    check_inbox(pool, mix, &mut findings).await?;
    let feed = check_feed(pool, &mut findings).await?;
    check_order_events(pool, settings, &feed, &mut findings).await?;
    check_dead_letters(settings, poison, &mut findings).await?;
    Ok(findings)
}

/// The order events committed, from the order feed: each order's in commit
/// order, with their bodies.
struct Committed {
    /// Event ids per order, in commit order.
    per_order: HashMap<String, Vec<String>>,
    bodies: HashMap<String, serde_json::Value>,
}

/// Check 5: each user's cursors without a hole, each event once.
async fn check_feed(pool: &PgPool, f: &mut Findings) -> anyhow::Result<Committed> {
    let feed: Vec<(i64, i64, String, String)> = sqlx::query_as(
        "SELECT user_id, seq, order_id, body::text FROM order_feed ORDER BY user_id, seq",
    )
    .fetch_all(pool)
    .await?;
    let mut last_seq: HashMap<i64, i64> = HashMap::new();
    let mut committed = Committed {
        per_order: HashMap::new(),
        bodies: HashMap::new(),
    };
    for (user, seq, order, body) in feed {
        let last = last_seq.insert(user, seq).unwrap_or(0);
        if seq != last + 1 {
            f.mismatch(format!("feed of user {user}: cursor {seq} after {last}"));
        }
        let body: serde_json::Value = serde_json::from_str(&body)?;
        let id = body["event_id"].as_str().unwrap_or_default().to_owned();
        committed
            .per_order
            .entry(order)
            .or_default()
            .push(id.clone());
        if committed.bodies.insert(id.clone(), body).is_some() {
            f.mismatch(format!("event {id} twice in the feed"));
        }
    }
    Ok(committed)
}

/// Statuses, payments and refunds of every order against the model.
async fn check_state(pool: &PgPool, mix: &Mix, f: &mut Findings) -> anyhow::Result<()> {
    let mut actual: BTreeMap<String, Expected> = BTreeMap::new();
    let statuses: Vec<(String, String)> = sqlx::query_as("SELECT order_id, status FROM orders")
        .fetch_all(pool)
        .await?;
    let status_names = [
        "PENDING_PAYMENT",
        "PAID",
        "PAYMENT_FAILED",
        "CANCELLED",
        "REFUND_REQUESTED",
        "REJECTED",
    ];
    for (order, status) in statuses {
        let name = status_names
            .iter()
            .find(|s| **s == status)
            .copied()
            .unwrap_or("?");
        actual.entry(order).or_default().status = name;
    }
    let payments: Vec<(String, String, String)> =
        sqlx::query_as("SELECT order_id, payment_id, status FROM payments")
            .fetch_all(pool)
            .await?;
    for (order, payment, status) in payments {
        let status = if status == "FAILED" {
            "FAILED"
        } else {
            "CONFIRMED"
        };
        actual
            .entry(order)
            .or_default()
            .payments
            .insert((payment, status));
    }
    let refunds: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT order_id, payment_id, amount_minor FROM refunds")
            .fetch_all(pool)
            .await?;
    for (order, payment, amount) in refunds {
        actual
            .entry(order)
            .or_default()
            .refunds
            .insert(payment, amount);
    }
    for (order, want) in &mix.model {
        match actual.remove(order) {
            Some(got) if &got == want => {}
            Some(got) => f.mismatch(format!("order {order}: {got:?}, expected {want:?}")),
            None => f.mismatch(format!("order {order}: missing, expected {want:?}")),
        }
    }
    for order in actual.keys() {
        f.mismatch(format!("order {order} exists but no checkout created it"));
    }
    check_status_counts(pool, f).await
}

/// The orders-by-status counts the batches keep equal a count of `orders`.
async fn check_status_counts(pool: &PgPool, f: &mut Findings) -> anyhow::Result<()> {
    for (status, kept, counted) in status_count_mismatches(pool).await? {
        f.mismatch(format!(
            "orders by status: {kept} {status} kept, {counted} in the orders table"
        ));
    }
    Ok(())
}

/// Each status whose count the batches keep (`order_status_counts`) differs
/// from a count of `orders`: (status, kept, counted).
pub async fn status_count_mismatches(pool: &PgPool) -> anyhow::Result<Vec<(String, i64, i64)>> {
    Ok(sqlx::query_as(
        "SELECT status, coalesce(kept, 0)::bigint, coalesce(counted, 0)::bigint
         FROM (SELECT status, sum(n) AS kept FROM order_status_counts GROUP BY status) k
         FULL JOIN (SELECT status, count(*) AS counted FROM orders GROUP BY status) c
             USING (status)
         WHERE coalesce(kept, 0) <> coalesce(counted, 0)",
    )
    .fetch_all(pool)
    .await?)
}

/// Every produced event id applied (in the inbox), nothing left parked, the
/// outbox published.
async fn check_inbox(pool: &PgPool, mix: &Mix, f: &mut Findings) -> anyhow::Result<()> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT source, event_id FROM processed_events")
            .fetch_all(pool)
            .await?;
    let inbox: BTreeSet<(String, String)> = rows.into_iter().collect();
    for (source, id) in &mix.distinct_events {
        if !inbox.contains(&(source.to_string(), id.clone())) {
            f.mismatch(format!("{source} event {id} is not in the inbox: lost"));
        }
    }
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_events")
        .fetch_one(pool)
        .await?;
    if parked > 0 {
        f.mismatch(format!("{parked} events are still parked"));
    }
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?;
    if unsent > 0 {
        f.mismatch(format!("{unsent} outbox rows were never published"));
    }
    Ok(())
}

/// The topic's order events against the committed ones, the refunds and
/// the history.
async fn check_order_events(
    pool: &PgPool,
    settings: &Settings,
    committed: &Committed,
    f: &mut Findings,
) -> anyhow::Result<()> {
    let topic = &settings.topics.order_events;
    let records = read_topic(
        settings,
        topic,
        committed.bodies.len(),
        Duration::from_secs(3),
    )
    .await?;
    let decoded: Vec<(serde_json::Value, &Record)> = records
        .iter()
        .map(|r| Ok((order_event_json(settings, &r.payload)?, r)))
        .collect::<anyhow::Result<_>>()?;
    let mut first: HashMap<String, &[u8]> = HashMap::new();
    let mut sequence: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut refund_events: BTreeMap<String, usize> = BTreeMap::new();
    let mut published_order: HashMap<String, Vec<String>> = HashMap::new();
    for (event, record) in &decoded {
        let id = event["event_id"].as_str().unwrap_or_default().to_owned();
        if let Some(earlier) = first.get(&id) {
            f.republished += 1;
            if *earlier != record.payload.as_slice() {
                f.mismatch(format!("event {id} published with two contents"));
            }
            continue;
        }
        match committed.bodies.get(&id) {
            None => f.mismatch(format!("event {id} on {topic} was never committed")),
            // Avro decodes to a JSON of its own shape: compare JSON only.
            Some(body) if settings.schema_registry_url.is_none() && body != event => f.mismatch(
                format!("event {id}: published body differs from the committed one"),
            ),
            Some(_) => {}
        }
        first.insert(id.clone(), &record.payload);
        let order = event["order_id"].as_str().unwrap_or_default().to_owned();
        published_order.entry(order.clone()).or_default().push(id);
        match event["event_type"].as_str().unwrap_or_default() {
            "RefundRequested" => {
                let payment = event["payment_id"].as_str().unwrap_or_default().to_owned();
                *refund_events.entry(payment).or_default() += 1;
            }
            "OrderCreated" | "OrderRejected" | "OrderPaid" | "OrderPaymentFailed"
            | "OrderCancelled" => {
                let status = event["status"].as_str().unwrap_or_default().to_owned();
                sequence.entry(order).or_default().push(status);
            }
            _ => {}
        }
    }
    f.order_events = first.len();
    check_fencing(&records, f);
    for (order, ids) in &committed.per_order {
        for id in ids {
            if !first.contains_key(id) {
                f.mismatch(format!("event {id} of order {order} never reached {topic}"));
            }
        }
        if published_order.get(order).is_some_and(|got| got != ids) {
            f.mismatch(format!(
                "order {order}: published in another order than committed"
            ));
        }
    }
    let refunds: Vec<(String,)> = sqlx::query_as("SELECT payment_id FROM refunds")
        .fetch_all(pool)
        .await?;
    for (payment,) in &refunds {
        match refund_events.remove(payment) {
            Some(1) => {}
            n => f.mismatch(format!(
                "refund of {payment} announced {} times",
                n.unwrap_or(0)
            )),
        }
    }
    for payment in refund_events.keys() {
        f.mismatch(format!("refund of {payment} announced but not recorded"));
    }
    check_sequences(pool, &sequence, f).await
}

/// The relays' fencing: per outbox shard (header `relay_shard`), in the
/// order the records were created, none under an epoch (`relay_epoch`)
/// older than one that had already published. Records a frozen relay held
/// in librdkafka were created before it froze, so they pass; a relay that
/// enqueued after its lease passed on does not.
fn check_fencing(records: &[Record], f: &mut Findings) {
    let mut by_shard: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for r in records {
        let (Some(shard), Some(epoch), Some(at)) = (
            r.headers.get("relay_shard"),
            r.headers.get("relay_epoch").and_then(|e| e.parse().ok()),
            r.created_ms,
        ) else {
            continue;
        };
        by_shard.entry(shard).or_default().push((at, epoch));
    }
    for (shard, mut stamps) in by_shard {
        stamps.sort_unstable();
        // `before`: the highest epoch among records created strictly
        // earlier than the current one.
        let (mut before, mut highest, mut this_ms) = (0i64, 0i64, None);
        for (at, epoch) in stamps {
            if this_ms != Some(at) {
                before = highest;
                this_ms = Some(at);
            }
            highest = highest.max(epoch);
            if epoch < before {
                f.mismatch(format!(
                    "shard {shard}: a record under epoch {epoch} created at {at} ms, \
                     after epoch {before} had published"
                ));
            }
        }
    }
}

/// Per order, the statuses announced (first occurrences, topic order) equal
/// the status history (id order).
async fn check_sequences(
    pool: &PgPool,
    announced: &BTreeMap<String, Vec<String>>,
    f: &mut Findings,
) -> anyhow::Result<()> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT order_id, to_status FROM order_status_history ORDER BY id")
            .fetch_all(pool)
            .await?;
    let mut history: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (order, status) in rows {
        history.entry(order).or_default().push(status);
    }
    for (order, statuses) in &history {
        let got = announced.get(order).cloned().unwrap_or_default();
        if &got != statuses {
            f.mismatch(format!(
                "order {order}: announced {got:?}, history {statuses:?}"
            ));
        }
    }
    Ok(())
}

/// Every poison message on its input's dead-letter topic, with a reason.
async fn check_dead_letters(
    settings: &Settings,
    poison: &[Message],
    f: &mut Findings,
) -> anyhow::Result<()> {
    for input in Input::ALL {
        let expected: BTreeSet<Vec<u8>> = poison
            .iter()
            .filter(|m| m.input == input)
            .filter_map(|m| m.key.clone())
            .collect();
        let dlq = orderflow::config::Topics::dlq(input.topic(&settings.topics));
        let records = read_topic(settings, &dlq, expected.len(), Duration::from_secs(2)).await?;
        f.dead_letters += records.len();
        if expected.is_empty() {
            // No poison was sent: nothing valid may have been dead-lettered.
            for r in records.iter().take(5) {
                let why = r.headers.get("error").cloned().unwrap_or_default();
                f.mismatch(format!("an unexpected dead letter on {dlq}: {why}"));
            }
            continue;
        }
        let mut found = BTreeSet::new();
        for r in &records {
            if r.headers.get("error").is_none_or(|e| e.is_empty()) {
                f.mismatch(format!("a dead letter on {dlq} has no reason"));
            }
            if let Some(key) = &r.key {
                found.insert(key.clone());
            }
        }
        for key in expected.difference(&found) {
            f.mismatch(format!(
                "poison {} never reached {dlq}",
                String::from_utf8_lossy(key)
            ));
        }
    }
    Ok(())
}

/// An order event as JSON: the payload itself, or (with a registry) the
/// Confluent Avro frame decoded with the envelope schema.
fn order_event_json(settings: &Settings, payload: &[u8]) -> anyhow::Result<serde_json::Value> {
    if settings.schema_registry_url.is_none() || payload.first() != Some(&0) {
        return serde_json::from_slice(payload).context("an order event that is not JSON");
    }
    let value =
        orderflow::events::avro::read_datum(&orderflow::events::avro::ORDER_EVENT, &payload[5..])
            .context("an order event that is not an envelope datum")?;
    let mut json = orderflow::events::avro::to_json(value);
    // The variant's fields (payment_id, ...) next to the envelope's.
    let variant = json
        .as_object()
        .and_then(|o| o.values().find(|v| v.is_object()).cloned());
    if let (Some(serde_json::Value::Object(fields)), Some(object)) = (variant, json.as_object_mut())
    {
        object.extend(fields);
    }
    Ok(json)
}

/// Reads `topic` from the beginning with a fresh group: at least `at_least`
/// records (or whatever arrives within a minute), then `linger` longer.
pub async fn read_topic(
    settings: &Settings,
    topic: &str,
    at_least: usize,
    linger: Duration,
) -> anyhow::Result<Vec<Record>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .set("group.id", format!("oracle-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .context("oracle consumer")?;
    consumer.subscribe(&[topic])?;
    let mut records = Vec::with_capacity(at_least);
    let mut deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Instant::now();
    while Instant::now() < deadline {
        let wait = if records.len() >= at_least {
            linger
        } else {
            Duration::from_secs(5)
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(m)) => {
                records.push(Record {
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: headers_of(&m),
                    created_ms: match m.timestamp() {
                        rdkafka::Timestamp::CreateTime(ms) => Some(ms),
                        _ => None,
                    },
                });
                last = Instant::now();
                if records.len() == at_least {
                    deadline = Instant::now() + linger;
                }
            }
            Ok(Err(e)) => anyhow::bail!("reading {topic}: {e}"),
            Err(_) if records.len() >= at_least || last.elapsed() > Duration::from_secs(30) => {
                break
            }
            Err(_) => {}
        }
    }
    Ok(records)
}

/// A record's headers as text (lossy), by name.
pub fn headers_of(message: &impl rdkafka::message::Message) -> HashMap<String, String> {
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(shard: &str, epoch: i64, at: i64) -> Record {
        Record {
            key: None,
            payload: Vec::new(),
            headers: HashMap::from([
                ("relay_shard".to_owned(), shard.to_owned()),
                ("relay_epoch".to_owned(), epoch.to_string()),
            ]),
            created_ms: Some(at),
        }
    }

    #[test]
    fn a_record_under_a_superseded_epoch_after_the_new_one_published_is_a_mismatch() {
        let mut f = Findings::default();
        // Held in flight when its relay froze: created before the new epoch
        // published, so delivered late but fine; another shard is apart.
        let fine = [
            stamped("1", 1, 10),
            stamped("1", 1, 15),
            stamped("1", 2, 20),
            stamped("2", 1, 30),
            stamped("1", 2, 20),
        ];
        check_fencing(&fine, &mut f);
        assert!(f.mismatches.is_empty(), "{:?}", f.mismatches);
        check_fencing(&[stamped("1", 2, 20), stamped("1", 1, 25)], &mut f);
        assert_eq!(f.mismatches.len(), 1, "{:?}", f.mismatches);
    }
}
