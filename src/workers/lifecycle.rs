//! Payment confirmations and cancellations: the order lifecycle.
//!
//! The rules are `domain::lifecycle`; this module reads what they need,
//! turns their decisions into rows and order events, and parks what arrives
//! before its order. Every writer of an order holds that order's lock (taken
//! for the whole batch by the applier). That is what makes parking safe: a
//! payment for an unknown order is parked in a transaction holding the lock,
//! and a checkout creates the order and applies its parked events
//! ([`drain_parked`]) in a transaction holding the same lock, so whichever
//! commits second sees the other's work.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use sqlx::PgConnection;

use super::{Handler, Input, Plan, Verdict};
use crate::domain::lifecycle::{self, Decision, Effect, OrderFacts, PaymentStatus};
use crate::domain::{truncate_chars, EventId, Money, OrderId};
use crate::events::{
    Cancellation, Codec, DecodeError, Normalized, OrderEventBody, PaymentConfirmation,
};
use crate::store::inbox::{InboxRow, Source};
use crate::store::lifecycle::{self as store, NewPayment, Refund};
use crate::store::orders::NewOrder;
use crate::store::parked::{self, Parking};

const MAX_TEXT: usize = 1024;

/// A lifecycle input, as applied or parked.
#[derive(Debug, Clone)]
pub enum LifecycleEvent {
    Payment(PaymentConfirmation),
    Cancellation(Cancellation),
}

impl LifecycleEvent {
    pub fn source(&self) -> Source {
        match self {
            LifecycleEvent::Payment(_) => Source::Payment,
            LifecycleEvent::Cancellation(_) => Source::Cancellation,
        }
    }
}

impl Input for LifecycleEvent {
    fn event_id(&self) -> &EventId {
        match self {
            LifecycleEvent::Payment(p) => &p.event_id,
            LifecycleEvent::Cancellation(c) => &c.event_id,
        }
    }

    fn order_id(&self) -> &OrderId {
        match self {
            LifecycleEvent::Payment(p) => &p.order_id,
            LifecycleEvent::Cancellation(c) => &c.order_id,
        }
    }

    fn occurred_at(&self) -> chrono::DateTime<chrono::Utc> {
        match self {
            LifecycleEvent::Payment(p) => p.occurred_at,
            LifecycleEvent::Cancellation(c) => c.occurred_at,
        }
    }
}

/// What the lifecycle decisions of one batch know.
#[derive(Debug, Default)]
pub struct LifecycleFacts {
    /// Every known order the batch touches, as the decisions leave it.
    orders: HashMap<OrderId, OrderFacts>,
    /// (payment_id, status) pairs recorded already: a repeat is a duplicate.
    payments_seen: HashSet<(String, PaymentStatus)>,
    /// Payments refunded already, ever: never refunded twice.
    refunded: HashSet<String>,
}

impl LifecycleFacts {
    /// Reads the facts for `events`; `known` are orders the batch itself
    /// creates (not in the database yet).
    pub async fn load(
        conn: &mut PgConnection,
        events: &[&LifecycleEvent],
        mut known: HashMap<OrderId, OrderFacts>,
    ) -> anyhow::Result<LifecycleFacts> {
        let unknown: Vec<&str> = events
            .iter()
            .map(|e| e.order_id())
            .filter(|id| !known.contains_key(*id))
            .map(OrderId::as_str)
            .collect();
        known.extend(
            store::facts_many(conn, &unknown)
                .await
                .context("failed to read orders")?,
        );
        let payments: Vec<(&str, PaymentStatus)> = events
            .iter()
            .filter_map(|e| match e {
                LifecycleEvent::Payment(p) => Some((p.payment_id.as_str(), p.status)),
                LifecycleEvent::Cancellation(_) => None,
            })
            .collect();
        let payments_seen = store::payments_seen(conn, &payments)
            .await
            .context("failed to read payments")?;
        // A refund names either a payment of the batch or an order's payer.
        let mut could_refund: Vec<&str> = payments.iter().map(|(id, _)| *id).collect();
        could_refund.extend(
            known
                .values()
                .filter_map(|f| f.paid_by.as_ref())
                .map(|(p, _)| p.as_str()),
        );
        let refunded = store::refunded(conn, &could_refund)
            .await
            .context("failed to read refunds")?;
        Ok(LifecycleFacts {
            orders: known,
            payments_seen,
            refunded,
        })
    }
}

/// Applies one event to its order, or parks it when the order is unknown.
pub fn decide(facts: &mut LifecycleFacts, event: &LifecycleEvent, plan: &mut Plan) -> Verdict {
    let order_id = event.order_id();
    let Some(order) = facts.orders.get_mut(order_id) else {
        plan.park(Parking {
            source: event.source(),
            event_id: event.event_id().clone(),
            order_id: order_id.clone(),
            payload: match event {
                LifecycleEvent::Payment(p) => serde_json::to_value(p),
                LifecycleEvent::Cancellation(c) => serde_json::to_value(c),
            }
            .expect("events serialise to JSON"),
            occurred_at: event.occurred_at(),
        });
        return Verdict::Parked;
    };
    let decision = match event {
        LifecycleEvent::Payment(p) => {
            if !facts.payments_seen.insert((p.payment_id.clone(), p.status)) {
                return Verdict::Duplicate;
            }
            let decision = lifecycle::decide_payment(order, &domain_payment(p));
            plan.record_payment(payment_row(p, &decision));
            decision
        }
        LifecycleEvent::Cancellation(c) => lifecycle::decide_cancellation(
            order,
            &lifecycle::Cancellation {
                reason: truncate_chars(&c.reason, MAX_TEXT),
                requested_by: c.requested_by,
            },
        ),
    };
    if decision.is_ignored() {
        return Verdict::Ignored;
    }
    apply_decision(
        order,
        &mut facts.refunded,
        event.event_id(),
        order_id,
        decision,
        plan,
    );
    Verdict::Applied
}

/// Plans the transition and the announcements of a decision that does
/// something, and updates the order's facts for the next event.
fn apply_decision(
    order: &mut OrderFacts,
    refunded: &mut HashSet<String>,
    cause: &EventId,
    order_id: &OrderId,
    decision: Decision,
    plan: &mut Plan,
) {
    let status = decision.new_status.unwrap_or(order.status);
    let paid_by = decision.effects.iter().find_map(|e| match e {
        Effect::Paid { payment_id, amount } => Some((payment_id.clone(), *amount)),
        _ => None,
    });
    if let Some(paid_by) = &paid_by {
        order.paid_by = Some(paid_by.clone());
    }
    if let Some(to) = decision.new_status {
        let reason = decision.effects.iter().find_map(|e| match e {
            Effect::PaymentFailed { reason, .. } | Effect::Cancelled { reason, .. } => {
                Some(reason.clone())
            }
            _ => None,
        });
        let paid = paid_by.map(|(p, amount)| (p, amount.minor()));
        plan.transition(order_id, (order.status, to), cause, reason, paid);
        order.status = to;
    }
    for effect in decision.effects {
        let body = match effect {
            Effect::RefundRequested {
                payment_id,
                amount,
                currency,
                reason,
            } => {
                // At most one refund per payment, ever, whatever asks for it.
                if !refunded.insert(payment_id.clone()) {
                    continue;
                }
                let currency = truncate_chars(&currency, 16);
                plan.request_refund(Refund {
                    payment_id: payment_id.clone(),
                    order_id: order_id.clone(),
                    amount_minor: amount.minor(),
                    currency: currency.clone(),
                    reason: reason.clone(),
                    cause_event_id: cause.clone(),
                });
                OrderEventBody::RefundRequested {
                    payment_id,
                    amount_minor: amount.minor(),
                    currency,
                    reason,
                }
            }
            Effect::PaymentRejected {
                payment_id,
                amount,
                currency,
                reason,
            } => {
                plan.payment_rejected();
                OrderEventBody::PaymentRejected {
                    payment_id,
                    amount_minor: amount.minor(),
                    currency: truncate_chars(&currency, 16),
                    reason,
                }
            }
            other => announce(other, &order.currency),
        };
        plan.announce(cause, order_id, status, body);
    }
}

/// The announcement of an effect that needs nothing recorded beside it.
fn announce(effect: Effect, order_currency: &str) -> OrderEventBody {
    match effect {
        Effect::Paid { payment_id, amount } => OrderEventBody::OrderPaid {
            payment_id,
            amount_minor: amount.minor(),
            currency: order_currency.to_owned(),
        },
        Effect::PaymentFailed { payment_id, reason } => {
            OrderEventBody::OrderPaymentFailed { payment_id, reason }
        }
        Effect::Cancelled {
            reason,
            requested_by,
        } => OrderEventBody::OrderCancelled {
            reason,
            requested_by,
        },
        Effect::RefundRequested { .. } | Effect::PaymentRejected { .. } => {
            unreachable!("recorded by apply_decision")
        }
    }
}

fn domain_payment(p: &PaymentConfirmation) -> lifecycle::Payment {
    lifecycle::Payment {
        payment_id: p.payment_id.clone(),
        status: p.status,
        amount: Money::from_minor(p.amount_minor),
        currency: p.currency.clone(),
        failure_reason: p.failure_reason.clone(),
    }
}

fn payment_row(p: &PaymentConfirmation, decision: &Decision) -> NewPayment {
    NewPayment {
        payment_id: p.payment_id.clone(),
        status: p.status,
        order_id: p.order_id.clone(),
        amount_minor: p.amount_minor,
        currency: truncate_chars(&p.currency, 16),
        provider: truncate_chars(&p.provider, 64),
        failure_reason: p
            .failure_reason
            .as_deref()
            .map(|r| truncate_chars(r, MAX_TEXT)),
        disposition: decision.disposition(),
        event_id: p.event_id.clone(),
        occurred_at: p.occurred_at,
    }
}

/// Applies the parked events of the orders `plan` creates, in arrival order,
/// through the same rules, and plans their removal from the parking. Returns
/// each one's final inbox outcome. Called by the applier right after the
/// batch's decisions, under the same locks.
pub async fn drain_parked(
    conn: &mut PgConnection,
    plan: &mut Plan,
) -> anyhow::Result<Vec<InboxRow>> {
    let created: HashMap<OrderId, OrderFacts> = plan
        .created_orders()
        .iter()
        .map(|o| (o.order_id.clone(), facts_of(o)))
        .collect();
    if created.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = created.keys().map(OrderId::as_str).collect();
    let rows = parked::of_orders(conn, &ids)
        .await
        .context("failed to read parked events")?;
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let event = match row.source.parse() {
            Ok(Source::Payment) => LifecycleEvent::Payment(
                serde_json::from_value(row.payload).context("parked payment")?,
            ),
            Ok(Source::Cancellation) => LifecycleEvent::Cancellation(
                serde_json::from_value(row.payload).context("parked cancellation")?,
            ),
            _ => anyhow::bail!("parked event from unknown source {:?}", row.source),
        };
        events.push((row.seq, event));
    }
    let refs: Vec<&LifecycleEvent> = events.iter().map(|(_, e)| e).collect();
    let mut facts = LifecycleFacts::load(conn, &refs, created).await?;
    let mut outcomes = Vec::with_capacity(events.len());
    for (seq, event) in &events {
        let verdict = decide(&mut facts, event, plan);
        plan.unpark(*seq);
        outcomes.push(InboxRow {
            source: event.source(),
            event_id: event.event_id().clone(),
            order_id: event.order_id().clone(),
            outcome: verdict.outcome(),
        });
    }
    Ok(outcomes)
}

/// What the rules know of an order the batch is creating.
fn facts_of(order: &NewOrder) -> OrderFacts {
    OrderFacts {
        status: order.status,
        total: order.amounts.map(|a| Money::from_minor(a.total)),
        currency: order.currency.clone(),
        paid_by: order
            .paid_by
            .as_ref()
            .map(|(p, a)| (p.clone(), Money::from_minor(*a))),
    }
}

/// Which lifecycle topic a [`LifecycleHandler`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Payments,
    Cancellations,
}

/// The handler of the payment-confirmations or the cancellations topic.
pub struct LifecycleHandler {
    kind: Kind,
}

impl LifecycleHandler {
    pub fn payments() -> Self {
        LifecycleHandler {
            kind: Kind::Payments,
        }
    }

    pub fn cancellations() -> Self {
        LifecycleHandler {
            kind: Kind::Cancellations,
        }
    }
}

impl Handler for LifecycleHandler {
    type Event = LifecycleEvent;
    type Facts = LifecycleFacts;

    fn source(&self) -> Source {
        match self.kind {
            Kind::Payments => Source::Payment,
            Kind::Cancellations => Source::Cancellation,
        }
    }

    fn reader_schema(&self) -> &'static apache_avro::Schema {
        match self.kind {
            Kind::Payments => &crate::events::avro::PAYMENT_CONFIRMATION,
            Kind::Cancellations => &crate::events::avro::CANCELLATION,
        }
    }

    fn decode(
        &self,
        codec: &Codec,
        payload: &Normalized<'_>,
    ) -> Result<LifecycleEvent, DecodeError> {
        match self.kind {
            Kind::Payments => {
                let p: PaymentConfirmation = codec.decode(payload)?;
                p.check().map_err(DecodeError::Invalid)?;
                Ok(LifecycleEvent::Payment(p))
            }
            Kind::Cancellations => Ok(LifecycleEvent::Cancellation(codec.decode(payload)?)),
        }
    }

    async fn load<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [&'a LifecycleEvent],
    ) -> anyhow::Result<LifecycleFacts> {
        LifecycleFacts::load(conn, events, HashMap::new()).await
    }

    fn decide(
        &self,
        facts: &mut LifecycleFacts,
        event: &LifecycleEvent,
        plan: &mut Plan,
    ) -> Verdict {
        decide(facts, event, plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::lifecycle::RequestedBy;
    use crate::domain::OrderStatus;

    fn order(status: OrderStatus) -> OrderFacts {
        OrderFacts {
            status,
            total: Some(Money::from_minor(1000)),
            currency: "USD".into(),
            paid_by: None,
        }
    }

    fn pay(order: &str, payment: &str, event: &str) -> LifecycleEvent {
        LifecycleEvent::Payment(PaymentConfirmation {
            event_id: EventId::parse(event).unwrap(),
            order_id: OrderId::parse(order).unwrap(),
            payment_id: payment.into(),
            status: PaymentStatus::Confirmed,
            amount_minor: 1000,
            currency: "USD".into(),
            provider: "p".into(),
            failure_reason: None,
            occurred_at: chrono::Utc::now(),
        })
    }

    fn cancel(order: &str, event: &str) -> LifecycleEvent {
        LifecycleEvent::Cancellation(Cancellation {
            event_id: EventId::parse(event).unwrap(),
            order_id: OrderId::parse(order).unwrap(),
            reason: "r".into(),
            requested_by: RequestedBy::Customer,
            occurred_at: chrono::Utc::now(),
        })
    }

    #[test]
    fn pay_then_cancel_in_one_batch_refunds_the_payer_once_and_parks_the_unknown() {
        let mut facts = LifecycleFacts::default();
        facts.orders.insert(
            OrderId::parse("o").unwrap(),
            order(OrderStatus::PendingPayment),
        );
        let mut plan = Plan::default();
        let verdicts: Vec<Verdict> = [
            pay("o", "p-1", "e1"),
            pay("o", "p-1", "e2"),
            cancel("o", "e3"),
            cancel("o", "e4"),
            pay("unknown", "p-9", "e5"),
        ]
        .iter()
        .map(|e| decide(&mut facts, e, &mut plan))
        .collect();
        use Verdict::*;
        assert_eq!(verdicts, [Applied, Duplicate, Applied, Ignored, Parked]);
        let (changes, events, tally) = plan.finish();
        let types: Vec<&str> = events.iter().map(|e| e.event_type()).collect();
        assert_eq!(types, ["OrderPaid", "OrderCancelled", "RefundRequested"]);
        assert_eq!(changes.statuses.len(), 1, "one update per order");
        assert_eq!(changes.statuses[0].status, OrderStatus::Cancelled);
        assert_eq!(changes.refunds.len(), 1);
        assert_eq!(changes.parked.len(), 1);
        assert_eq!(tally.refunds, [("USD".to_owned(), 1000)]);
    }
}
