//! What a batch of order events adds to the rollups. Pure: the events, and
//! what the store knows of their orders, in; a [`Delta`] out.
//!
//! | event | adds to (day of `occurred_at`, currency of the order) |
//! |---|---|
//! | `OrderCreated` | `orders_created`; its lines to the products |
//! | `OrderRejected` | `orders_rejected` (currency as the cart gave it) |
//! | `OrderPaid` | `orders_paid`, `gross_revenue_minor` += amount, time to pay |
//! | `OrderPaymentFailed` | `orders_payment_failed` |
//! | `OrderCancelled` | `orders_cancelled` |
//! | `RefundRequested` | `refunds_requested`, `refunded_minor` (the refund's currency) |
//! | `PaymentRejected` | nothing (its refund is counted) |

use std::collections::HashMap;

use crate::events::{OrderEvent, OrderEventBody};
use crate::store::analytics::{Counts, Delta, OrderFacts, ProductSums};

/// The time-to-pay bucket of `elapsed_ms`, named by its upper bound in
/// seconds: 1 s wide under a minute, 10 s under 10 minutes, 1 min under an
/// hour, 10 min under a day, a day beyond. Negative times (clocks of two
/// instances apart) count as 0. The SQL function `analytics_le_seconds` is
/// the same (the analytics tests hold both to one oracle).
pub fn le_seconds(elapsed_ms: i64) -> i32 {
    let s = elapsed_ms.max(0) / 1000;
    let step = match s {
        0..60 => 1,
        60..600 => 10,
        600..3600 => 60,
        3600..86400 => 600,
        _ => 86400,
    };
    i32::try_from((s / step + 1) * step).unwrap_or(i32::MAX)
}

/// The nearest-rank `percent` percentile of a histogram given as (upper
/// bound, count) in ascending bounds: the bound of the bucket holding the
/// ⌈n·percent/100⌉-th smallest value. `None` when empty.
pub fn percentile(buckets: &[(i32, i64)], percent: u32) -> Option<i32> {
    let total: i64 = buckets.iter().map(|(_, n)| n).sum();
    if total <= 0 {
        return None;
    }
    let rank = ((i128::from(total) * i128::from(percent) + 99) / 100).max(1);
    let mut seen = 0i128;
    buckets.iter().find_map(|&(le, n)| {
        seen += i128::from(n);
        (seen >= rank).then_some(le)
    })
}

/// Why an event cannot be counted (it is dead-lettered with this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("order {0:?} is not in the store, so its currency is unknown")]
pub struct UnknownOrder(pub String);

/// Whether counting `event` needs its order's facts (all but refunds and
/// rejected payments).
pub fn needs_order(event: &OrderEvent) -> bool {
    !matches!(
        event.body,
        OrderEventBody::RefundRequested { .. } | OrderEventBody::PaymentRejected { .. }
    )
}

/// Whether counting `event` needs its order's lines.
pub fn needs_lines(event: &OrderEvent) -> bool {
    matches!(event.body, OrderEventBody::OrderCreated { .. })
}

impl Delta {
    /// Adds one event, first seen, with its order's facts.
    pub fn add(
        &mut self,
        event: &OrderEvent,
        orders: &HashMap<String, OrderFacts>,
    ) -> Result<(), UnknownOrder> {
        let day = event.occurred_at.date_naive();
        let order = match needs_order(event) {
            true => Some(
                orders
                    .get(event.order_id.as_str())
                    .ok_or_else(|| UnknownOrder(event.order_id.to_string()))?,
            ),
            false => None,
        };
        let currency = |o: Option<&OrderFacts>| o.map(|o| o.currency.clone()).unwrap_or_default();
        let mut count = |currency: String, f: &dyn Fn(&mut Counts)| {
            f(self.daily.entry((day, currency)).or_default());
        };
        match &event.body {
            OrderEventBody::OrderCreated { .. } => {
                let currency = currency(order);
                count(currency.clone(), &|c| c.orders_created += 1);
                for line in order.map(|o| o.lines.as_slice()).unwrap_or_default() {
                    let key = (day, currency.clone(), line.sku.clone());
                    let product = self.products.entry(key).or_insert_with(|| ProductSums {
                        sku: line.sku.clone(),
                        name: line.name.clone(),
                        units: 0,
                        revenue_minor: 0,
                    });
                    product.name = product.name.clone().max(line.name.clone());
                    product.units += line.quantity;
                    product.revenue_minor += line.line_total_minor;
                }
            }
            OrderEventBody::OrderRejected { .. } => {
                count(currency(order), &|c| c.orders_rejected += 1);
            }
            OrderEventBody::OrderPaid { amount_minor, .. } => {
                let amount = *amount_minor;
                let currency = currency(order);
                count(currency.clone(), &|c| {
                    c.orders_paid += 1;
                    c.gross_revenue_minor += amount;
                });
                if let Some(order) = order {
                    let elapsed = event.occurred_at - order.created_at;
                    let le = le_seconds(elapsed.num_milliseconds());
                    *self.time_to_pay.entry((day, currency, le)).or_default() += 1;
                }
            }
            OrderEventBody::OrderPaymentFailed { .. } => {
                count(currency(order), &|c| c.orders_payment_failed += 1);
            }
            OrderEventBody::OrderCancelled { .. } => {
                count(currency(order), &|c| c.orders_cancelled += 1);
            }
            OrderEventBody::RefundRequested {
                amount_minor,
                currency,
                ..
            } => {
                let amount = *amount_minor;
                count(currency.clone(), &|c| {
                    c.refunds_requested += 1;
                    c.refunded_minor += amount;
                });
            }
            OrderEventBody::PaymentRejected { .. } => {}
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.daily.is_empty() && self.time_to_pay.is_empty() && self.products.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_named_by_their_upper_bound() {
        let cases = [
            (-5, 1),
            (0, 1),
            (999, 1),
            (1_000, 2),
            (59_999, 60),
            (60_000, 70),
            (599_999, 600),
            (600_000, 660),
            (3_599_999, 3_600),
            (3_600_000, 4_200),
            (86_399_999, 86_400),
            (86_400_000, 172_800),
            (i64::MAX, i32::MAX),
        ];
        for (ms, le) in cases {
            assert_eq!(le_seconds(ms), le, "{ms} ms");
        }
    }

    #[test]
    fn percentiles_are_nearest_rank_over_the_buckets() {
        assert_eq!(percentile(&[], 50), None);
        let h = [(1, 1), (2, 1), (3, 1), (4, 1)];
        assert_eq!(percentile(&h, 50), Some(2));
        assert_eq!(percentile(&h, 95), Some(4));
        assert_eq!(percentile(&[(10, 19), (20, 1)], 95), Some(10));
        assert_eq!(percentile(&[(10, 18), (20, 2)], 95), Some(20));
    }
}
