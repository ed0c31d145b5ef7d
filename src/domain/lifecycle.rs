//! The order state machine: what a payment confirmation or a cancellation
//! does to an order. Pure; the lifecycle handler persists the [`Decision`]s
//! that [`decide_payment`] and [`decide_cancellation`] return.
//!
//! | order state | event | result |
//! |---|---|---|
//! | PENDING_PAYMENT or PAYMENT_FAILED | payment CONFIRMED, same currency, amount = total | PAID, `OrderPaid` |
//! | PENDING_PAYMENT | payment FAILED | PAYMENT_FAILED, `OrderPaymentFailed` |
//! | PAYMENT_FAILED, PAID, CANCELLED, REJECTED | payment FAILED | no change (recorded, counted as ignored) |
//! | any | payment CONFIRMED with wrong amount or currency | no change, `PaymentRejected` + `RefundRequested` for that payment |
//! | PAID | CONFIRMED payment with another `payment_id` | stays PAID, `RefundRequested` for the second payment |
//! | PENDING_PAYMENT or PAYMENT_FAILED | cancellation | CANCELLED, `OrderCancelled` |
//! | PAID | cancellation | CANCELLED, `OrderCancelled` + `RefundRequested` for the paid amount |
//! | CANCELLED | payment CONFIRMED | stays CANCELLED, `RefundRequested` |
//! | CANCELLED or REJECTED | cancellation | no change (counted as ignored) |
//! | REJECTED | payment CONFIRMED | stays REJECTED, `RefundRequested` |
//! | not yet known | payment or cancellation | parked; applied in arrival order when the checkout is processed |
//!
//! A wrong amount is checked before the state: money that does not match
//! the order is never kept, whatever the order's state. Dedupe (same
//! `event_id`, same `payment_id` with the same status) happens before this.

use serde::{Deserialize, Serialize};

use super::{Money, OrderStatus};

/// What the state machine needs to know about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFacts {
    pub status: OrderStatus,
    /// `None` for a REJECTED order, which was never priced.
    pub total: Option<Money>,
    pub currency: String,
    /// The payment that paid the order, once PAID (kept after a cancellation
    /// so the refund names it).
    pub paid_by: Option<(String, Money)>,
}

/// What the provider says happened to a payment (`status` on the wire and in
/// `payments.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    Confirmed,
    Failed,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Confirmed => "CONFIRMED",
            PaymentStatus::Failed => "FAILED",
        }
    }
}

impl std::str::FromStr for PaymentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [PaymentStatus::Confirmed, PaymentStatus::Failed]
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown payment status {s:?}"))
    }
}

/// Who asked for a cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RequestedBy {
    Customer,
    Support,
    System,
}

impl RequestedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestedBy::Customer => "CUSTOMER",
            RequestedBy::Support => "SUPPORT",
            RequestedBy::System => "SYSTEM",
        }
    }
}

/// What a payment did to its order, as stored in `payments.disposition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// It paid the order.
    Paid,
    /// A failed payment that moved the order to PAYMENT_FAILED.
    Failed,
    /// Confirmed money that did not fit the order (amount or currency).
    Rejected,
    /// Confirmed money the order could not keep (already paid, cancelled,
    /// rejected): refunded.
    Refunded,
    /// Changed nothing (a failed payment for an order past pending).
    Ignored,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Paid => "PAID",
            Disposition::Failed => "FAILED",
            Disposition::Rejected => "REJECTED",
            Disposition::Refunded => "REFUNDED",
            Disposition::Ignored => "IGNORED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: String,
    pub status: PaymentStatus,
    pub amount: Money,
    pub currency: String,
    pub failure_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellation {
    pub reason: String,
    pub requested_by: RequestedBy,
}

/// One consequence of an event, to be persisted and published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Paid {
        payment_id: String,
        amount: Money,
    },
    PaymentFailed {
        payment_id: String,
        reason: String,
    },
    Cancelled {
        reason: String,
        requested_by: RequestedBy,
    },
    RefundRequested {
        payment_id: String,
        amount: Money,
        currency: String,
        reason: String,
    },
    PaymentRejected {
        payment_id: String,
        amount: Money,
        currency: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The status after the event, when it changes.
    pub new_status: Option<OrderStatus>,
    pub effects: Vec<Effect>,
}

impl Decision {
    fn ignored() -> Self {
        Decision {
            new_status: None,
            effects: Vec::new(),
        }
    }

    /// Nothing changed and nothing is announced.
    pub fn is_ignored(&self) -> bool {
        self.new_status.is_none() && self.effects.is_empty()
    }

    /// What this decision did with the payment it was made for.
    pub fn disposition(&self) -> Disposition {
        let has = |f: fn(&Effect) -> bool| self.effects.iter().any(f);
        if has(|e| matches!(e, Effect::Paid { .. })) {
            Disposition::Paid
        } else if has(|e| matches!(e, Effect::PaymentFailed { .. })) {
            Disposition::Failed
        } else if has(|e| matches!(e, Effect::PaymentRejected { .. })) {
            Disposition::Rejected
        } else if has(|e| matches!(e, Effect::RefundRequested { .. })) {
            Disposition::Refunded
        } else {
            Disposition::Ignored
        }
    }
}

fn refund(p: &Payment, reason: impl Into<String>) -> Effect {
    Effect::RefundRequested {
        payment_id: p.payment_id.clone(),
        amount: p.amount,
        currency: p.currency.clone(),
        reason: reason.into(),
    }
}

pub fn decide_payment(order: &OrderFacts, p: &Payment) -> Decision {
    use OrderStatus::*;
    if p.status == PaymentStatus::Failed {
        return match order.status {
            PendingPayment => Decision {
                new_status: Some(PaymentFailed),
                effects: vec![Effect::PaymentFailed {
                    payment_id: p.payment_id.clone(),
                    reason: p
                        .failure_reason
                        .clone()
                        .unwrap_or_else(|| "payment failed".into()),
                }],
            },
            _ => Decision::ignored(),
        };
    }
    // A confirmed payment: money has moved, so every branch either keeps it
    // (pays the order) or asks for it back.
    let mismatch = match order.total {
        _ if p.currency != order.currency => Some(format!(
            "payment currency {} does not match order currency {}",
            p.currency, order.currency
        )),
        Some(total) if p.amount != total => Some(format!(
            "payment amount {} does not match order total {}",
            p.amount.minor(),
            total.minor()
        )),
        _ => None,
    };
    if let (Some(reason), false) = (&mismatch, order.status == Rejected) {
        return Decision {
            new_status: None,
            effects: vec![
                Effect::PaymentRejected {
                    payment_id: p.payment_id.clone(),
                    amount: p.amount,
                    currency: p.currency.clone(),
                    reason: reason.clone(),
                },
                refund(p, reason.clone()),
            ],
        };
    }
    match order.status {
        PendingPayment | PaymentFailed => Decision {
            new_status: Some(Paid),
            effects: vec![Effect::Paid {
                payment_id: p.payment_id.clone(),
                amount: p.amount,
            }],
        },
        Paid => Decision {
            new_status: None,
            effects: vec![refund(p, "order already paid by another payment")],
        },
        Cancelled => Decision {
            new_status: None,
            effects: vec![refund(p, "order is cancelled")],
        },
        Rejected => Decision {
            new_status: None,
            effects: vec![refund(p, "order was rejected")],
        },
        // Never entered by these rules; a payment there is refunded too.
        RefundRequested => Decision {
            new_status: None,
            effects: vec![refund(p, "order is being refunded")],
        },
    }
}

pub fn decide_cancellation(order: &OrderFacts, c: &Cancellation) -> Decision {
    use OrderStatus::*;
    let cancelled = Effect::Cancelled {
        reason: c.reason.clone(),
        requested_by: c.requested_by,
    };
    match order.status {
        PendingPayment | PaymentFailed => Decision {
            new_status: Some(Cancelled),
            effects: vec![cancelled],
        },
        Paid => {
            let mut effects = vec![cancelled];
            if let Some((payment_id, amount)) = &order.paid_by {
                effects.push(Effect::RefundRequested {
                    payment_id: payment_id.clone(),
                    amount: *amount,
                    currency: order.currency.clone(),
                    reason: format!("order cancelled: {}", c.reason),
                });
            }
            Decision {
                new_status: Some(Cancelled),
                effects,
            }
        }
        Cancelled | Rejected | RefundRequested => Decision::ignored(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    fn order(status: OrderStatus) -> OrderFacts {
        OrderFacts {
            status,
            total: if status == Rejected {
                None
            } else {
                Some(Money::from_minor(1000))
            },
            currency: "USD".into(),
            paid_by: (status == Paid).then(|| ("pay-1".to_owned(), Money::from_minor(1000))),
        }
    }

    fn pay(id: &str, status: PaymentStatus, amount: i64, currency: &str) -> Payment {
        Payment {
            payment_id: id.into(),
            status,
            amount: Money::from_minor(amount),
            currency: currency.into(),
            failure_reason: None,
        }
    }

    fn confirmed(amount: i64) -> Payment {
        pay("pay-2", PaymentStatus::Confirmed, amount, "USD")
    }

    fn kinds(d: &Decision) -> Vec<&'static str> {
        d.effects
            .iter()
            .map(|e| match e {
                Effect::Paid { .. } => "Paid",
                Effect::PaymentFailed { .. } => "PaymentFailed",
                Effect::Cancelled { .. } => "Cancelled",
                Effect::RefundRequested { .. } => "RefundRequested",
                Effect::PaymentRejected { .. } => "PaymentRejected",
            })
            .collect()
    }

    fn cancel() -> Cancellation {
        Cancellation {
            reason: "changed mind".into(),
            requested_by: RequestedBy::Customer,
        }
    }

    #[test]
    fn a_matching_confirmed_payment_pays_a_pending_or_failed_order() {
        for status in [PendingPayment, PaymentFailed] {
            let d = decide_payment(&order(status), &confirmed(1000));
            assert_eq!(d.new_status, Some(Paid));
            assert_eq!(kinds(&d), ["Paid"]);
        }
    }

    #[test]
    fn a_failed_payment_fails_only_a_pending_order() {
        let failed = pay("pay-2", PaymentStatus::Failed, 1000, "USD");
        let d = decide_payment(&order(PendingPayment), &failed);
        assert_eq!(
            (d.new_status, kinds(&d)),
            (Some(PaymentFailed), vec!["PaymentFailed"])
        );
        for status in [PaymentFailed, Paid, Cancelled, Rejected] {
            assert!(
                decide_payment(&order(status), &failed).is_ignored(),
                "{status}"
            );
        }
    }

    #[test]
    fn a_wrong_amount_or_currency_is_rejected_and_refunded_in_any_state() {
        for status in [PendingPayment, PaymentFailed, Paid, Cancelled] {
            for p in [
                confirmed(999),
                pay("pay-2", PaymentStatus::Confirmed, 1000, "EUR"),
            ] {
                let d = decide_payment(&order(status), &p);
                assert_eq!(d.new_status, None, "{status}");
                assert_eq!(
                    kinds(&d),
                    ["PaymentRejected", "RefundRequested"],
                    "{status}"
                );
            }
        }
        // A rejected order has no total: any confirmed payment is refunded.
        let d = decide_payment(&order(Rejected), &confirmed(5));
        assert_eq!((d.new_status, kinds(&d)), (None, vec!["RefundRequested"]));
    }

    #[test]
    fn a_second_payment_on_a_paid_order_is_refunded() {
        let d = decide_payment(&order(Paid), &confirmed(1000));
        assert_eq!((d.new_status, kinds(&d)), (None, vec!["RefundRequested"]));
        assert!(
            matches!(&d.effects[0], Effect::RefundRequested { payment_id, .. } if payment_id == "pay-2")
        );
    }

    #[test]
    fn payments_on_cancelled_or_rejected_orders_are_refunded() {
        for status in [Cancelled, Rejected] {
            let d = decide_payment(&order(status), &confirmed(1000));
            assert_eq!(
                (d.new_status, kinds(&d)),
                (None, vec!["RefundRequested"]),
                "{status}"
            );
        }
    }

    #[test]
    fn cancelling_an_unpaid_order_cancels_it() {
        for status in [PendingPayment, PaymentFailed] {
            let d = decide_cancellation(&order(status), &cancel());
            assert_eq!(
                (d.new_status, kinds(&d)),
                (Some(Cancelled), vec!["Cancelled"])
            );
        }
    }

    #[test]
    fn cancelling_a_paid_order_refunds_the_paid_amount() {
        let d = decide_cancellation(&order(Paid), &cancel());
        assert_eq!(d.new_status, Some(Cancelled));
        assert_eq!(kinds(&d), ["Cancelled", "RefundRequested"]);
        match &d.effects[1] {
            Effect::RefundRequested {
                payment_id, amount, ..
            } => {
                assert_eq!((payment_id.as_str(), amount.minor()), ("pay-1", 1000));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cancelling_a_cancelled_or_rejected_order_changes_nothing() {
        for status in [Cancelled, Rejected] {
            assert!(decide_cancellation(&order(status), &cancel()).is_ignored());
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_status() -> impl Strategy<Value = OrderStatus> {
            proptest::sample::select(OrderStatus::ALL.to_vec())
        }

        fn any_order() -> impl Strategy<Value = OrderFacts> {
            (
                any_status(),
                proptest::option::of(0i64..100_000),
                prop_oneof![Just("USD"), Just("EUR")],
                proptest::option::of(0i64..100_000),
            )
                .prop_map(|(status, total, currency, paid)| OrderFacts {
                    status,
                    total: total.map(Money::from_minor),
                    currency: currency.into(),
                    paid_by: paid.map(|a| ("pay-0".to_owned(), Money::from_minor(a))),
                })
        }

        fn any_payment() -> impl Strategy<Value = Payment> {
            (
                prop_oneof![Just(PaymentStatus::Confirmed), Just(PaymentStatus::Failed)],
                0i64..100_000,
                prop_oneof![Just("USD"), Just("EUR")],
            )
                .prop_map(|(status, amount, currency)| Payment {
                    payment_id: "pay-1".into(),
                    status,
                    amount: Money::from_minor(amount),
                    currency: currency.into(),
                    failure_reason: None,
                })
        }

        proptest! {
            /// Confirmed money is either kept (the order becomes PAID) or
            /// refunded in full; failed payments never move money.
            #[test]
            fn confirmed_money_is_kept_or_refunded_in_full(order in any_order(), p in any_payment()) {
                let d = decide_payment(&order, &p);
                let refunded: Vec<Money> = d.effects.iter().filter_map(|e| match e {
                    Effect::RefundRequested { payment_id, amount, .. } if payment_id == &p.payment_id => Some(*amount),
                    _ => None,
                }).collect();
                let paid = d.effects.iter().any(|e| matches!(e, Effect::Paid { .. }));
                match p.status {
                    PaymentStatus::Failed => prop_assert!(refunded.is_empty() && !paid),
                    PaymentStatus::Confirmed => {
                        prop_assert!(paid != (refunded.len() == 1), "kept xor refunded: {:?}", d);
                        prop_assert!(refunded.iter().all(|a| *a == p.amount));
                        if paid { prop_assert_eq!(d.new_status, Some(OrderStatus::Paid)); }
                    }
                }
            }

            /// A cancellation never requests more than the order's payer paid,
            /// and a cancelled, rejected or refunding order stays as it is.
            #[test]
            fn cancelling_refunds_at_most_what_was_paid(order in any_order()) {
                let d = decide_cancellation(&order, &Cancellation { reason: "r".into(), requested_by: RequestedBy::System });
                for e in &d.effects {
                    if let Effect::RefundRequested { amount, .. } = e {
                        prop_assert_eq!(order.status, OrderStatus::Paid);
                        prop_assert_eq!(Some(*amount), order.paid_by.as_ref().map(|(_, a)| *a));
                    }
                }
                if matches!(order.status, OrderStatus::Cancelled | OrderStatus::Rejected | OrderStatus::RefundRequested) {
                    prop_assert!(d.is_ignored());
                }
            }
        }
    }
}
