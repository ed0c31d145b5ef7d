//! The figures of a range, derived from the rollups' sums. Money stays in
//! integer minor units of one currency; ratios are decimals rounded half-up
//! to 4 places, computed in integers.

use serde::Serialize;

use super::rollup::percentile;
use crate::store::analytics::Counts;

/// Every figure of one range (a day or several) in one currency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub orders_created: i64,
    pub orders_rejected: i64,
    pub orders_paid: i64,
    pub orders_payment_failed: i64,
    pub orders_cancelled: i64,
    pub gross_revenue_minor: i64,
    pub refunds_requested: i64,
    pub refunded_minor: i64,
    pub net_revenue_minor: i64,
    /// gross / orders_paid, rounded half-up; null without paid orders.
    pub average_order_value_minor: Option<i64>,
    /// orders_paid / orders_created; null without created orders.
    pub payment_conversion: Option<f64>,
    /// orders_cancelled / orders_created; null without created orders.
    pub cancellation_rate: Option<f64>,
    pub time_to_pay_seconds: TimeToPay,
}

/// Percentiles of the time from creation to payment, each the upper bound
/// (seconds) of the histogram bucket it falls in; null without payments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimeToPay {
    pub p50: Option<i32>,
    pub p95: Option<i32>,
}

impl Figures {
    /// From summed counters and the time-to-pay histogram (upper bound,
    /// orders) in ascending bounds.
    pub fn new(c: &Counts, time_to_pay: &[(i32, i64)]) -> Self {
        Figures {
            orders_created: c.orders_created,
            orders_rejected: c.orders_rejected,
            orders_paid: c.orders_paid,
            orders_payment_failed: c.orders_payment_failed,
            orders_cancelled: c.orders_cancelled,
            gross_revenue_minor: c.gross_revenue_minor,
            refunds_requested: c.refunds_requested,
            refunded_minor: c.refunded_minor,
            net_revenue_minor: c.gross_revenue_minor - c.refunded_minor,
            average_order_value_minor: divide_half_up(c.gross_revenue_minor, c.orders_paid, 1),
            payment_conversion: ratio(c.orders_paid, c.orders_created),
            cancellation_rate: ratio(c.orders_cancelled, c.orders_created),
            time_to_pay_seconds: TimeToPay {
                p50: percentile(time_to_pay, 50),
                p95: percentile(time_to_pay, 95),
            },
        }
    }
}

/// n·scale / d rounded half-up (half away from zero); `None` when d is 0.
pub fn divide_half_up(n: i64, d: i64, scale: i64) -> Option<i64> {
    if d == 0 {
        return None;
    }
    let (n, d) = (i128::from(n) * i128::from(scale), i128::from(d));
    let q = (2 * n.abs() + d.abs()) / (2 * d.abs());
    let q = if (n < 0) != (d < 0) { -q } else { q };
    i64::try_from(q).ok()
}

/// n / d as a decimal with 4 places, rounded half-up.
pub fn ratio(n: i64, d: i64) -> Option<f64> {
    // A value of at most 4 decimals: its shortest representation (what
    // serde_json prints) is those digits exactly.
    divide_half_up(n, d, 10_000).map(|e4| e4 as f64 / 10_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_and_ratios_round_half_up_in_integers() {
        assert_eq!(divide_half_up(5, 2, 1), Some(3));
        assert_eq!(divide_half_up(7, 3, 1), Some(2));
        assert_eq!(divide_half_up(1, 0, 1), None);
        assert_eq!(ratio(2, 3), Some(0.6667));
        assert_eq!(ratio(1, 8), Some(0.125));
        assert_eq!(ratio(0, 5), Some(0.0));
        assert_eq!(serde_json::to_string(&ratio(2, 3)).unwrap(), "0.6667");
        let c = Counts {
            orders_created: 3,
            orders_paid: 2,
            gross_revenue_minor: 1001,
            refunded_minor: 100,
            orders_cancelled: 1,
            ..Counts::default()
        };
        let f = Figures::new(&c, &[(5, 1), (60, 1)]);
        assert_eq!(f.net_revenue_minor, 901);
        assert_eq!(f.average_order_value_minor, Some(501));
        assert_eq!(f.cancellation_rate, Some(0.3333));
        assert_eq!(
            f.time_to_pay_seconds,
            TimeToPay {
                p50: Some(5),
                p95: Some(60)
            }
        );
    }
}
