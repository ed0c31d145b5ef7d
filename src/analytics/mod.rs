//! Order analytics as a stream processor: a consumer loop of `order-events`
//! (group `<KAFKA_GROUP_ID>.analytics`) that keeps daily rollups per
//! currency in PostgreSQL, the figures the HTTP routes derive from them, and
//! the rebuild from the order tables.
//!
//! Contract (docs/analytics.md): every figure counts events on
//! `order-events`, deduplicated by `event_id`, bucketed by the UTC day of
//! the event's `occurred_at`, per currency. Exactly once: a batch's rollup
//! changes and the ids it counted commit in one transaction, so a
//! redelivery, a crash or a republished event never counts twice.
//!
//! - [`rollup`]: what a batch of events adds (pure), and the time-to-pay
//!   histogram's buckets;
//! - [`consumer`]: the loop's batch step (the generic consumer loop drives it);
//! - [`report`]: the figures of a range, from the rollups' sums.

pub mod consumer;
pub mod report;
pub mod rollup;

pub use consumer::Analytics;
