//! The stream-processing side. Handlers decide (one per input topic, pure of
//! Kafka and of the inbox and outbox); the batch applier owns the
//! transaction protocol every batch follows; the consumer loop feeds it from
//! Kafka; the relay publishes the outbox; housekeeping keeps gauges fresh.
//!
//! A handler is three steps, all inside the batch's transaction:
//! [`Handler::decode`] (bytes to a checked event, before the transaction),
//! [`Handler::load`] (the rows its decisions need, for the events never seen
//! before) and [`Handler::decide`] (one event at a time, in order: the rows to
//! write and the events to announce go into the [`Plan`]). Adding an input is
//! a handler file and one line of wiring in `app.rs`.

pub mod apply;
pub mod backoff;
pub mod batch;
mod buffers;
pub mod checkout;
pub mod consumer;
pub mod housekeeping;
mod intake;
pub mod lifecycle;
mod membership;
pub mod plan;
mod positions;
pub mod relay;

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::{EventId, OrderId};
use crate::events::{Codec, DecodeError, Normalized};
use crate::store::inbox::{Outcome, Source};

pub use batch::{Applier, BatchReport, RawMessage};
pub use plan::{Plan, Tally};

/// What every input event carries.
pub trait Input {
    fn event_id(&self) -> &EventId;
    /// The order it belongs to; the applier locks it for the batch, and the
    /// message's key must equal it.
    fn order_id(&self) -> &OrderId;
    /// When it happened upstream (end-to-end latency starts here).
    fn occurred_at(&self) -> DateTime<Utc>;
}

/// The business logic for one input topic. It reads through the connection
/// it is given (the batch's transaction, orders locked, event ids claimed)
/// and writes nothing itself: what to write and announce goes into the
/// [`Plan`], which the applier writes with the inbox and outbox rows.
pub trait Handler: Send + Sync + 'static {
    type Event: Input + Send + Sync;
    /// What [`Handler::decide`] needs to know, read once per batch and
    /// updated as decisions are made (an order created by one event is seen
    /// by the next).
    type Facts: Send;

    /// Names the input in the inbox.
    fn source(&self) -> Source;

    /// The Avro schema this handler reads (`schemas/*.avsc`); Avro payloads
    /// are resolved to it before [`Handler::decode`].
    fn reader_schema(&self) -> &'static apache_avro::Schema;

    /// A normalized payload to a checked event. Errors are permanent: the
    /// message is dead-lettered with the error text.
    fn decode(&self, codec: &Codec, payload: &Normalized<'_>) -> Result<Self::Event, DecodeError>;

    /// Reads the facts for `events`, the batch's events never seen before.
    fn load<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [&'a Self::Event],
    ) -> impl Future<Output = anyhow::Result<Self::Facts>> + Send + 'a;

    /// Decides one event. Pure: no I/O.
    fn decide(&self, facts: &mut Self::Facts, event: &Self::Event, plan: &mut Plan) -> Verdict;
}

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
