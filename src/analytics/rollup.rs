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

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::domain::OrderId;
use crate::events::{OrderEvent, OrderEventBody};
use crate::store::analytics::{Counts, Delta, OrderFacts, ProductSums};

/// The order events the figures count; any other type (`PaymentRejected`,
/// or one added later) is read and counts nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Kind {
    OrderCreated,
    OrderRejected,
    OrderPaid,
    OrderPaymentFailed,
    OrderCancelled,
    RefundRequested,
    #[serde(other)]
    Other,
}

/// What the loop reads of an order event: the envelope, and the money of
/// the two types that carry some. Reading only this from the JSON costs a
/// fraction of reading the whole `OrderEvent` (whose body is flattened).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Counted {
    pub event_id: String,
    pub order_id: OrderId,
    #[serde(deserialize_with = "crate::events::time::deserialize")]
    pub occurred_at: DateTime<Utc>,
    pub event_type: Kind,
    #[serde(default)]
    pub amount_minor: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
}

impl Counted {
    /// From a whole event (the Avro path reads one).
    pub fn of(event: &OrderEvent) -> Counted {
        let (kind, money) = match &event.body {
            OrderEventBody::OrderCreated { currency, .. } => {
                (Kind::OrderCreated, (None, Some(currency.clone())))
            }
            OrderEventBody::OrderRejected { .. } => (Kind::OrderRejected, (None, None)),
            OrderEventBody::OrderPaid {
                amount_minor,
                currency,
                ..
            } => (
                Kind::OrderPaid,
                (Some(*amount_minor), Some(currency.clone())),
            ),
            OrderEventBody::OrderPaymentFailed { .. } => (Kind::OrderPaymentFailed, (None, None)),
            OrderEventBody::OrderCancelled { .. } => (Kind::OrderCancelled, (None, None)),
            OrderEventBody::RefundRequested {
                amount_minor,
                currency,
                ..
            } => (
                Kind::RefundRequested,
                (Some(*amount_minor), Some(currency.clone())),
            ),
            OrderEventBody::PaymentRejected { .. } => (Kind::Other, (None, None)),
        };
        Counted {
            event_id: event.event_id.to_string(),
            order_id: event.order_id.clone(),
            occurred_at: event.occurred_at,
            event_type: kind,
            amount_minor: money.0,
            currency: money.1,
        }
    }

    /// Why it cannot be counted as read, if it cannot: money events need
    /// their amount and currency.
    pub fn check(&self) -> Result<(), String> {
        if matches!(self.event_type, Kind::OrderPaid | Kind::RefundRequested) {
            if self.amount_minor.is_none() {
                return Err(format!("{:?} without amount_minor", self.event_type));
            }
            if self.currency.as_deref().is_none_or(str::is_empty) {
                return Err(format!("{:?} without currency", self.event_type));
            }
        }
        Ok(())
    }
}

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
/// the types that count nothing).
pub fn needs_order(event: &Counted) -> bool {
    !matches!(event.event_type, Kind::RefundRequested | Kind::Other)
}

/// Whether counting `event` needs its order's lines.
pub fn needs_lines(event: &Counted) -> bool {
    event.event_type == Kind::OrderCreated
}

impl Delta {
    /// Adds one event, first seen, with its order's facts.
    pub fn add(
        &mut self,
        event: &Counted,
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
        let money = || {
            (
                event.amount_minor.unwrap_or_default(),
                event.currency.clone(),
            )
        };
        match event.event_type {
            Kind::OrderCreated => {
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
                    if line.name > product.name {
                        product.name = line.name.clone();
                    }
                    product.units += line.quantity;
                    product.revenue_minor += line.line_total_minor;
                }
            }
            Kind::OrderRejected => count(currency(order), &|c| c.orders_rejected += 1),
            Kind::OrderPaid => {
                let (amount, _) = money();
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
            Kind::OrderPaymentFailed => count(currency(order), &|c| c.orders_payment_failed += 1),
            Kind::OrderCancelled => count(currency(order), &|c| c.orders_cancelled += 1),
            Kind::RefundRequested => {
                let (amount, currency) = money();
                count(currency.unwrap_or_default(), &|c| {
                    c.refunds_requested += 1;
                    c.refunded_minor += amount;
                });
            }
            Kind::Other => {}
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
    use crate::domain::lifecycle::RequestedBy;
    use crate::domain::{EventId, OrderStatus};

    #[test]
    fn the_json_of_every_event_type_reads_as_its_counted_view() {
        let money = |amount_minor, currency: &str| (amount_minor, currency.to_owned());
        let (a, c) = money(1_234, "EUR");
        let bodies = [
            OrderEventBody::OrderCreated {
                user_id: 1,
                cart_id: 2,
                currency: c.clone(),
                subtotal_minor: 1,
                tax_minor: 0,
                shipping_minor: 0,
                total_minor: 1,
                item_count: 1,
                line_count: 1,
            },
            OrderEventBody::OrderRejected {
                user_id: 1,
                cart_id: 2,
                reason: "r".into(),
            },
            OrderEventBody::OrderPaid {
                payment_id: "p".into(),
                amount_minor: a,
                currency: c.clone(),
            },
            OrderEventBody::OrderPaymentFailed {
                payment_id: "p".into(),
                reason: "r".into(),
            },
            OrderEventBody::OrderCancelled {
                reason: "r".into(),
                requested_by: RequestedBy::Customer,
            },
            OrderEventBody::RefundRequested {
                payment_id: "p".into(),
                amount_minor: a,
                currency: c.clone(),
                reason: "r".into(),
            },
            OrderEventBody::PaymentRejected {
                payment_id: "p".into(),
                amount_minor: a,
                currency: c,
                reason: "r".into(),
            },
        ];
        for body in bodies {
            let at = crate::clock::Clock::default().now();
            let event = OrderEvent::new(
                &EventId::new_v7(),
                &OrderId::parse("o-1").unwrap(),
                OrderStatus::Paid,
                at,
                body,
            );
            let read: Counted =
                serde_json::from_slice(&serde_json::to_vec(&event).unwrap()).unwrap();
            let mut expected = Counted::of(&event);
            if expected.event_type == Kind::Other {
                // The JSON of a type that counts nothing keeps its money
                // fields; they are never read.
                expected.amount_minor = read.amount_minor;
                expected.currency = read.currency.clone();
            }
            assert_eq!(read, expected, "{}", event.event_type());
            assert_eq!(read.check(), Ok(()));
        }
        let unpaid: Counted = serde_json::from_str(
            r#"{"event_id":"e","order_id":"o","occurred_at":1,"event_type":"OrderPaid","currency":"USD"}"#,
        )
        .unwrap();
        assert_eq!(unpaid.check(), Err("OrderPaid without amount_minor".into()));
    }

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
