//! `orderflow produce`: sends sample checkouts, or events from a JSON-lines
//! file, keyed by their `order_id`. Used by the run script and handy for
//! poking a running system.

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::Utc;
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::VecDeque;

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use crate::config::Settings;
use crate::domain::{EventId, OrderId};
use crate::events::{Address, CheckoutEvent, CheckoutItem};

const CATALOGUE: &[(&str, &str, i64)] = &[
    ("SKU-TSHIRT", "Organic cotton T-shirt", 1_999),
    ("SKU-MUG", "Stoneware mug", 1_250),
    ("SKU-BOOK", "The Rust Programming Language", 3_995),
    ("SKU-SOCKS", "Wool socks (3 pairs)", 1_500),
    ("SKU-LAMP", "Desk lamp", 4_900),
    ("SKU-STICKER", "Ferris sticker", 199),
];

const PLACES: &[(&str, &str, &str)] = &[
    ("US", "CA", "San Francisco"),
    ("US", "NY", "New York"),
    ("US", "OR", "Portland"),
    ("DE", "BE", "Berlin"),
    ("GB", "", "London"),
];

/// A plausible checkout for `order_id`; `invalid` makes it one the rules reject.
pub fn sample_checkout(
    rng: &mut impl Rng,
    order_id: &OrderId,
    cart_id: i64,
    invalid: bool,
) -> CheckoutEvent {
    let lines = rng.gen_range(1..=4);
    let mut items: Vec<CheckoutItem> = CATALOGUE
        .choose_multiple(rng, lines)
        .map(|(sku, name, price)| CheckoutItem {
            sku: (*sku).into(),
            name: (*name).into(),
            quantity: rng.gen_range(1..=3),
            unit_price_minor: *price,
        })
        .collect();
    if invalid {
        items[0].quantity = 0;
    }
    let (country, state, city) = *PLACES.choose(rng).expect("places is not empty");
    let currency = match country {
        "DE" => "EUR",
        "GB" => "GBP",
        _ => "USD",
    };
    let address = Address {
        street: format!("{} Main Street", rng.gen_range(1..999)),
        city: city.into(),
        state: state.into(),
        zip_code: format!("{:05}", rng.gen_range(10_000..99_999)),
        country: country.into(),
    };
    CheckoutEvent {
        event_id: EventId::parse(&uuid::Uuid::new_v4().to_string())
            .expect("a UUID is a valid event id"),
        order_id: order_id.clone(),
        cart_id,
        user_id: rng.gen_range(1..=20),
        currency: currency.into(),
        items,
        shipping_address: address.clone(),
        billing_address: address,
        payment_method: ["card", "paypal", "invoice"]
            .choose(rng)
            .copied()
            .unwrap_or("card")
            .into(),
        occurred_at: Utc::now(),
    }
}

pub struct SampleOptions {
    pub count: u64,
    pub interval: Duration,
    /// Every n-th checkout is invalid (0: none).
    pub invalid_every: u64,
    /// Every n-th checkout is sent twice (0: none).
    pub duplicate_every: u64,
}

pub fn producer(settings: &Settings) -> anyhow::Result<FutureProducer> {
    crate::kafka::producer_config(settings)
        .create()
        .context("failed to create Kafka producer")
}

/// The producer of `orderflow produce`: one record per batch, because Tansu
/// 0.6 skips the rest of a batch for a consumer that starts inside it
/// (docs/tansu.md), and sample traffic is light. `KAFKA_PRODUCER_CONFIG`
/// still overrides it.
pub(crate) fn input_producer(settings: &Settings) -> anyhow::Result<FutureProducer> {
    let mut config = crate::kafka::producer_config(settings);
    if !settings
        .kafka_producer_extra
        .iter()
        .any(|(k, _)| k == "batch.num.messages")
    {
        config.set("batch.num.messages", "1");
    }
    config.create().context("failed to create Kafka producer")
}

/// Hands a record to the producer without waiting for its delivery; waits
/// for room when the producer's queue is full.
pub fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<DeliveryFuture> {
    loop {
        match producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Timeout::After(Duration::from_millis(50)));
            }
            Err((e, _)) => return Err(e).with_context(|| format!("failed to produce to {topic}")),
        }
    }
}

/// Deliveries in flight, confirmed in order; at most `WINDOW` outstanding.
pub struct InFlight<'a> {
    pub topic: &'a str,
    pending: VecDeque<(DeliveryFuture, Option<String>)>,
}

impl<'a> InFlight<'a> {
    const WINDOW: usize = 10_000;

    pub fn new(topic: &'a str) -> Self {
        InFlight {
            topic,
            pending: VecDeque::new(),
        }
    }

    /// Tracks a delivery; `note` is printed once it is confirmed.
    pub async fn push(
        &mut self,
        delivery: DeliveryFuture,
        note: Option<String>,
    ) -> anyhow::Result<()> {
        self.pending.push_back((delivery, note));
        while self.pending.len() > Self::WINDOW {
            self.confirm_oldest().await?;
        }
        Ok(())
    }

    async fn confirm_oldest(&mut self) -> anyhow::Result<()> {
        let Some((delivery, note)) = self.pending.pop_front() else {
            return Ok(());
        };
        delivery
            .await
            .context("producer dropped a delivery")?
            .map_err(|(e, _)| e)
            .with_context(|| format!("failed to produce to {}", self.topic))?;
        if let Some(note) = note {
            println!("{note}");
        }
        Ok(())
    }

    pub async fn confirm_all(&mut self) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            self.confirm_oldest().await?;
        }
        Ok(())
    }
}

/// Fails at once, naming the fix, when `topic` does not exist: a send to it
/// would only fail after the 30 s message timeout.
async fn check_topic(producer: &FutureProducer, topic: &str) -> anyhow::Result<()> {
    let client = producer.clone();
    let name = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(Some(&name), Duration::from_secs(10))
    })
    .await
    .context("metadata lookup panicked")?
    .context("failed to read topic metadata from the broker")?;
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
        _ => bail!("topic {topic} does not exist; create the topics with `orderflow topics apply`"),
    }
}

/// Sends sample checkouts to the checkouts topic, printing each order id once
/// the broker has it. Without an interval, sends are pipelined.
pub async fn samples(settings: &Settings, options: &SampleOptions) -> anyhow::Result<()> {
    let producer = input_producer(settings)?;
    let topic = &settings.topics.checkouts;
    check_topic(&producer, topic).await?;
    let mut in_flight = InFlight::new(topic);
    let mut rng = rand::thread_rng();
    let run = Utc::now().timestamp_millis();
    for n in 1..=options.count {
        let order_id = OrderId::parse(&format!("ord-{run}-{n}")).context("sample order id")?;
        let cart_id = run * 1_000 + n as i64;
        let invalid = options.invalid_every > 0 && n % options.invalid_every == 0;
        let event = sample_checkout(&mut rng, &order_id, cart_id, invalid);
        let payload = serde_json::to_vec(&event).context("failed to encode sample")?;
        let note = format!(
            "sent {order_id} (user {}){}",
            event.user_id,
            if invalid { " [invalid]" } else { "" }
        );
        if options.duplicate_every > 0 && n % options.duplicate_every == 0 {
            in_flight
                .push(
                    enqueue(&producer, topic, order_id.as_str(), &payload)?,
                    None,
                )
                .await?;
        }
        in_flight
            .push(
                enqueue(&producer, topic, order_id.as_str(), &payload)?,
                Some(note),
            )
            .await?;
        if !options.interval.is_zero() {
            in_flight.confirm_all().await?;
            tokio::time::sleep(options.interval).await;
        }
    }
    in_flight.confirm_all().await
}

/// Sends each non-empty line of `path` as one message to `topic`, keyed by
/// the line's `order_id` field.
pub async fn from_file(
    settings: &Settings,
    topic: &str,
    path: &std::path::Path,
) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    // The whole file is checked before anything is sent: a bad line halfway
    // must not leave the lines before it published and the rest not.
    let records = keyed_lines(&text).map_err(|bad| {
        anyhow::anyhow!(
            "{}: nothing sent; fix these lines first:\n{}",
            path.display(),
            bad.join("\n")
        )
    })?;
    let producer = input_producer(settings)?;
    check_topic(&producer, topic).await?;
    let mut in_flight = InFlight::new(topic);
    let mut sent = 0;
    for (key, line) in records {
        in_flight
            .push(enqueue(&producer, topic, &key, line.as_bytes())?, None)
            .await?;
        sent += 1;
    }
    in_flight.confirm_all().await?;
    Ok(sent)
}

/// The non-blank lines of a JSON-lines file with the `order_id` each is keyed
/// by, or every bad line (`line N: why`, at most 20 listed).
fn keyed_lines(text: &str) -> Result<Vec<(String, &str)>, Vec<String>> {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(value) => match value.get("order_id").and_then(|v| v.as_str()) {
                Some(key) => records.push((key.to_owned(), line)),
                None => bad.push(format!(
                    "line {}: no string order_id to key the message by",
                    i + 1
                )),
            },
            Err(e) => bad.push(format!("line {}: not JSON ({e})", i + 1)),
        }
    }
    if bad.is_empty() {
        Ok(records)
    } else {
        let more = bad.len().saturating_sub(20);
        bad.truncate(20);
        if more > 0 {
            bad.push(format!("… and {more} more"));
        }
        Err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::keyed_lines;

    #[test]
    fn a_file_is_checked_whole_and_every_bad_line_named() {
        let good = "{\"order_id\": \"a\", \"x\": 1}\n\n{\"order_id\": \"b\"}\n";
        let records = keyed_lines(good).unwrap();
        assert_eq!(
            records.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(records[1].1, "{\"order_id\": \"b\"}");

        let bad = "{\"order_id\": \"a\"}\nnot json\n{\"order_id\": 7}\n{\"order_id\": \"d\"}\n";
        let errors = keyed_lines(bad).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("line 2: not JSON"), "{errors:?}");
        assert!(
            errors[1].starts_with("line 3: no string order_id"),
            "{errors:?}"
        );

        let many = "x\n".repeat(25);
        let errors = keyed_lines(&many).unwrap_err();
        assert_eq!(errors.len(), 21);
        assert_eq!(errors[20], "… and 5 more");
    }
}
