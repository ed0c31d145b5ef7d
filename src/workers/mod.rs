//! The stream-processing side: one handler per input topic (pure of Kafka),
//! the generic consumer loop that drives any handler, and the outbox relay.

pub mod checkout;
pub mod consumer;
pub mod emit;
pub mod housekeeping;
pub mod lifecycle;
pub mod relay;

use std::future::Future;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::events::{Codec, DecodeError, Normalized};
use crate::telemetry::Outcome;

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Applied,
    Duplicate,
    Rejected,
    /// The order is not known yet: stored, applied when its checkout is.
    Parked,
    /// Valid, but changes nothing in the order's state (cancelling a
    /// cancelled order, a failed payment for a paid one).
    Ignored,
    /// Decoded but unusable in a way that cannot be recorded against an order
    /// (e.g. its order id belongs to another cart): dead-letter it.
    DeadLetter(String),
}

impl Verdict {
    /// The outcome it is counted and recorded as.
    pub fn outcome(&self) -> Outcome {
        match self {
            Verdict::Applied => Outcome::Applied,
            Verdict::Duplicate => Outcome::Duplicate,
            Verdict::Rejected => Outcome::Rejected,
            Verdict::Parked => Outcome::Parked,
            Verdict::Ignored => Outcome::Ignored,
            Verdict::DeadLetter(_) => Outcome::DeadLettered,
        }
    }
}

/// A verdict plus what the loop needs for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub verdict: Verdict,
    /// The event's own time, for end-to-end latency.
    pub occurred_at: Option<DateTime<Utc>>,
    /// Business counters, reported only once the transaction commits.
    pub tally: Tally,
}

/// What applying an event did to orders and money, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub transitions: Vec<(crate::domain::OrderStatus, crate::domain::OrderStatus)>,
    /// (currency, amount in minor units) of each refund requested.
    pub refunds: Vec<(String, i64)>,
    pub payments_rejected: u32,
    /// Parked events applied because their checkout arrived.
    pub unparked: u32,
}

/// The business logic for one input topic. Implementations read and write
/// PostgreSQL through the connection they are given (a transaction owned by
/// the loop) and never touch Kafka; their outgoing events go to the outbox.
pub trait Handler: Send + Sync + 'static {
    type Event: Send + Sync;

    /// Names the input in the inbox (`processed_events.source`).
    fn source(&self) -> &'static str;

    /// Bytes to a checked event. Errors are permanent: the message is
    /// dead-lettered with the error text.
    /// The Avro schema this handler reads (`schemas/*.avsc`); Avro payloads
    /// are resolved to it before [`Handler::decode`].
    fn reader_schema(&self) -> &'static apache_avro::Schema;

    fn decode(
        &self,
        codec: &Codec,
        key: Option<&[u8]>,
        payload: &Normalized<'_>,
    ) -> Result<Self::Event, DecodeError>;

    /// The order an event belongs to; the loop locks it for the batch.
    fn order_id<'e>(&self, event: &'e Self::Event) -> &'e str;

    /// Applies a batch in order inside the caller's transaction; one
    /// [`Handled`] per event. An `Err` aborts the whole batch; the loop
    /// retries it (transient) or isolates the failing message.
    fn apply_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [&'a Self::Event],
    ) -> impl Future<Output = anyhow::Result<Vec<Handled>>> + Send + 'a;

    /// Applies one event: a batch of one.
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        event: &'a Self::Event,
    ) -> impl Future<Output = anyhow::Result<Handled>> + Send + 'a {
        async move {
            let mut handled = self.apply_batch(conn, std::slice::from_ref(&event)).await?;
            anyhow::ensure!(
                handled.len() == 1,
                "a batch of one gave {} results",
                handled.len()
            );
            Ok(handled.pop().expect("length checked"))
        }
    }
}

/// Applies a batch the way every writer must: the batch's orders locked
/// first, in one canonical order (`store::lifecycle::lock_orders`, so loops
/// of different topics never deadlock), then the handler, all in the
/// caller's transaction.
pub async fn apply_locked<H: Handler>(
    handler: &H,
    conn: &mut PgConnection,
    events: &[&H::Event],
) -> anyhow::Result<Vec<Handled>> {
    let order_ids: Vec<&str> = events.iter().map(|e| handler.order_id(e)).collect();
    crate::store::lifecycle::lock_orders(conn, &order_ids)
        .await
        .context("failed to lock orders")?;
    handler.apply_batch(conn, events).await
}

/// Checks the envelope fields every input event has. Returns the order id.
pub fn check_envelope<'a>(
    event_id: &str,
    order_id: &'a str,
    key: Option<&[u8]>,
) -> Result<&'a str, DecodeError> {
    if event_id.is_empty() || event_id.len() > 128 {
        return Err(DecodeError::Invalid(
            "event_id must be 1 to 128 characters".into(),
        ));
    }
    crate::domain::OrderId::parse(order_id).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    // The key decides the partition and so the per-order ordering guarantee;
    // a message keyed by something else breaks it, so refuse it loudly.
    if let Some(key) = key {
        if key != order_id.as_bytes() {
            return Err(DecodeError::Invalid(format!(
                "message key {:?} does not match order_id {order_id:?}",
                String::from_utf8_lossy(&key[..key.len().min(140)])
            )));
        }
    }
    Ok(order_id)
}
