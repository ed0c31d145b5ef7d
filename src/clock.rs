//! The wall clock orderflow stamps its decisions with.
//!
//! One batch is one instant: every order event a batch announces carries the
//! same `occurred_at`, and the rows the batch writes (an order's
//! `created_at`, a history row's `at`, a payment's `recorded_at`, a refund's
//! `requested_at`) carry that same instant, in milliseconds (the wire's
//! precision). So figures computed from the tables and from `order-events`
//! agree to the millisecond (the analytics rebuild depends on it).
//!
//! Tests move the clock (`advance`) to spread traffic over several days; in
//! production it is the system clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

/// The system clock plus an offset shared by every clone.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Now, truncated to milliseconds.
    pub fn now(&self) -> DateTime<Utc> {
        let at = Utc::now() + TimeDelta::milliseconds(self.offset_ms.load(Ordering::Relaxed));
        truncate_ms(at)
    }

    /// Moves this clock and every clone of it forward by `by`.
    pub fn advance(&self, by: TimeDelta) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }
}

/// `at` without its sub-millisecond part.
pub fn truncate_ms(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_offset_and_time_is_in_whole_milliseconds() {
        let clock = Clock::default();
        let other = clock.clone();
        let before = clock.now();
        other.advance(TimeDelta::days(2));
        let after = clock.now();
        assert!(after - before >= TimeDelta::days(2));
        assert_eq!(after.timestamp_subsec_micros() % 1000, 0);
    }
}
