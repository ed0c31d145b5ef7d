//! Exponential backoff with jitter: the one retry schedule of the consumer
//! loops (a batch that failed transiently, a broker error) and the relay.
//!
//! The wait before retry `n` is drawn from the upper half of
//! `min(max, base × 2^(n-1))` ("equal jitter"): never less than half the
//! ceiling, so retries still back off, and spread out, so instances that
//! failed together (a database restart) do not come back in lockstep.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The longest wait before retry `attempt` (1 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// The wait before retry `attempt`, with `unit` (in `[0, 1)`) choosing
    /// where in the upper half of the ceiling it falls.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        ceiling / 2 + ceiling.div_f64(2.0).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The wait before retry `attempt`, randomly jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));

    #[test]
    fn the_ceiling_doubles_from_the_base_up_to_the_maximum() {
        assert_eq!(B.ceiling(1), Duration::from_millis(100));
        assert_eq!(B.ceiling(2), Duration::from_millis(200));
        assert_eq!(B.ceiling(9), Duration::from_millis(25_600));
        assert_eq!(B.ceiling(10), Duration::from_secs(30));
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_in_the_upper_half_of_the_ceiling() {
        assert_eq!(B.delay_with(3, 0.0), Duration::from_millis(200));
        assert_eq!(B.delay_with(3, 0.5), Duration::from_millis(300));
        assert!(B.delay_with(3, 0.999) < Duration::from_millis(400));
        for attempt in 1..12 {
            let d = B.delay(attempt);
            assert!(d >= B.ceiling(attempt) / 2 && d <= B.ceiling(attempt));
        }
    }
}
