//! Produces a scenario's messages at a fixed rate, in order, and keeps count:
//! how many were sent and how many distinct events that makes (what the
//! inbox must hold once they are applied). The producer waits out broker
//! outages (a five-minute message timeout), so a fault cannot lose input
//! on the way in; a delivery that still fails stops the scenario.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use orderflow::config::Settings;
use orderflow_testkit::mix::{Input, Message};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicUsize,
    /// Distinct (source, event id) pairs among the messages sent, over
    /// every `drive` of the scenario.
    seen: Mutex<HashSet<(Input, String)>>,
    /// Per (input, partition): one past the highest offset delivered, the
    /// offset a group has consumed everything at.
    ends: Mutex<HashMap<(Input, i32), i64>>,
    /// Set by a scenario: stop sending after what is in flight is delivered.
    pub paused: AtomicBool,
    /// Set here while paused with nothing in flight.
    pub idle: AtomicBool,
}

impl Progress {
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    pub fn distinct(&self) -> usize {
        self.seen.lock().expect("not poisoned").len()
    }

    /// The end offsets of everything delivered so far.
    pub fn ends(&self) -> HashMap<(Input, i32), i64> {
        self.ends.lock().expect("not poisoned").clone()
    }

    fn saw(&self, input: Input, event_id: &str) {
        self.seen
            .lock()
            .expect("not poisoned")
            .insert((input, event_id.to_owned()));
    }

    fn delivered(&self, input: Input, partition: i32, offset: i64) {
        let mut ends = self.ends.lock().expect("not poisoned");
        let end = ends.entry((input, partition)).or_default();
        *end = (*end).max(offset + 1);
    }
}

/// The producer every scenario uses.
pub fn producer(settings: &Settings) -> anyhow::Result<FutureProducer> {
    orderflow::kafka::producer_config(settings)
        .set("message.timeout.ms", "300000")
        // One record per batch: Tansu 0.6 serves a fetch that starts inside
        // a batch from the next batch, silently skipping the rest of that
        // one (docs/tansu.md), so a consumer restarting at a committed
        // offset mid-batch would lose input. On Kafka batching is safe.
        .set("batch.num.messages", "1")
        .set("message.max.bytes", "20000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("failed to create the scenario's producer")
}

/// Sends `messages` at `rate` per second (0: as fast as possible) and waits
/// for every delivery. While `progress.paused`, it stops sending, lets what
/// is in flight be delivered and reports itself idle.
pub async fn drive(
    settings: Settings,
    messages: Arc<Vec<Message>>,
    rate: u64,
    progress: Arc<Progress>,
) -> anyhow::Result<()> {
    let producer = producer(&settings)?;
    let topics = &settings.topics;
    let mut in_flight: VecDeque<(DeliveryFuture, Input)> = VecDeque::new();
    let mut started = Instant::now();
    let began = started;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let mut next = 0;
    // Where the rate's clock starts counting, moved on by pauses.
    let mut sent_at_start = 0;
    while next < messages.len() {
        if progress.paused.load(Ordering::SeqCst) {
            confirm(&mut in_flight, 0, &progress).await?;
            progress.idle.store(true, Ordering::SeqCst);
            while progress.paused.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            progress.idle.store(false, Ordering::SeqCst);
            started = Instant::now();
            sent_at_start = next;
        }
        let due = if rate == 0 {
            messages.len()
        } else {
            ticker.tick().await;
            (sent_at_start + (started.elapsed().as_secs_f64() * rate as f64) as usize)
                .min(messages.len())
        };
        while next < due && !progress.paused.load(Ordering::SeqCst) {
            let m = &messages[next];
            let delivery = send_raw(
                &producer,
                m.input.topic(topics),
                m.key.as_deref(),
                &m.payload,
            )?;
            in_flight.push_back((delivery, m.input));
            confirm(&mut in_flight, WINDOW, &progress)
                .await
                .with_context(|| {
                    format!(
                        "{next} of {} messages sent, {} s into the drive",
                        messages.len(),
                        began.elapsed().as_secs()
                    )
                })?;
            if let Some(id) = &m.event_id {
                progress.saw(m.input, id);
            }
            progress.sent.fetch_add(1, Ordering::SeqCst);
            next += 1;
        }
    }
    confirm(&mut in_flight, 0, &progress).await
}

/// Most deliveries awaited at once.
const WINDOW: usize = 10_000;

/// Awaits the oldest deliveries until at most `keep` are in flight,
/// recording where each landed.
async fn confirm(
    in_flight: &mut VecDeque<(DeliveryFuture, Input)>,
    keep: usize,
    progress: &Progress,
) -> anyhow::Result<()> {
    while in_flight.len() > keep {
        let (delivery, input) = in_flight.pop_front().expect("not empty");
        let delivered = delivery
            .await
            .context("the producer dropped a delivery")?
            .map_err(|(e, _)| e)
            .with_context(|| format!("failed to produce to the {input:?} topic"))?;
        progress.delivered(input, delivered.partition, delivered.offset);
    }
    Ok(())
}

/// Hands a record to the producer, key and payload byte for byte (poison
/// keys need not be UTF-8); waits for room when its queue is full.
fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
) -> anyhow::Result<DeliveryFuture> {
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Timeout::After(Duration::from_millis(50)));
            }
            Err((e, _)) => return Err(e).with_context(|| format!("failed to produce to {topic}")),
        }
    }
}
