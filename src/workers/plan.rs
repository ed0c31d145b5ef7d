//! What a batch's decisions amount to: the rows to write, the order events to
//! announce, and the business counters to report once it commits. Handlers
//! fill a [`Plan`] through its methods; the applier turns it into
//! `store::changes::Changes`, adding the inbox and outbox rows that only it
//! writes.
//!
//! The plan keeps one final state per order: an order created and then paid
//! in the same batch (a payment parked before its checkout) is inserted once,
//! already PAID, with both steps in its history.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::{EventId, OrderId, OrderStatus};
use crate::events::{OrderEvent, OrderEventBody};
use crate::store::changes::Changes;
use crate::store::lifecycle::{NewPayment, Refund};
use crate::store::orders::{NewOrder, StatusUpdate, Transition};
use crate::store::parked::Parking;
use crate::telemetry::Metrics;

/// Business counters of a batch, reported only once it commits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// (from, to) of every status change (not counting creations).
    pub transitions: Vec<(OrderStatus, OrderStatus)>,
    /// (currency, amount in minor units) of each refund requested.
    pub refunds: Vec<(String, i64)>,
    pub payments_rejected: u64,
    /// Parked events applied because their checkout arrived.
    pub unparked: u64,
    /// Currency of each order created (not rejected).
    pub created: Vec<String>,
    /// (currency, amount in minor units) of each order paid.
    pub paid: Vec<(String, i64)>,
}

impl Tally {
    /// Adds another batch's counters to these.
    pub fn absorb(&mut self, other: Tally) {
        self.transitions.extend(other.transitions);
        self.refunds.extend(other.refunds);
        self.payments_rejected += other.payments_rejected;
        self.unparked += other.unparked;
        self.created.extend(other.created);
        self.paid.extend(other.paid);
    }

    pub fn report(&self, metrics: &Metrics) {
        for (from, to) in &self.transitions {
            metrics.transition(from.as_str(), to.as_str());
        }
        for (currency, amount) in &self.refunds {
            metrics.refund_requested(currency, *amount);
        }
        metrics.payments_rejected(self.payments_rejected);
        metrics.parked_applied(self.unparked);
        for currency in &self.created {
            metrics.order_created(currency);
        }
        for (currency, amount) in &self.paid {
            metrics.revenue(currency, *amount);
        }
    }
}

#[derive(Debug)]
pub struct Plan {
    /// Its `at` is the batch's instant: every row's time and every event's
    /// `occurred_at`.
    changes: Changes,
    /// Index into `changes.orders` of each order created by this batch.
    created: HashMap<OrderId, usize>,
    /// Index into `changes.statuses` of each existing order changed.
    updated: HashMap<OrderId, usize>,
    events: Vec<OrderEvent>,
    tally: Tally,
}

impl Default for Plan {
    /// A plan stamped with the system clock (tests).
    fn default() -> Self {
        Plan::new(crate::clock::Clock::default().now())
    }
}

impl Plan {
    /// An empty plan whose rows and events are stamped `at` (milliseconds;
    /// finer is dropped, as on the wire).
    pub fn new(at: DateTime<Utc>) -> Self {
        Plan {
            changes: Changes::at(crate::clock::truncate_ms(at)),
            created: HashMap::new(),
            updated: HashMap::new(),
            events: Vec::new(),
            tally: Tally::default(),
        }
    }

    /// Creates an order (in `order.status`). Its first history row is the
    /// order row itself (`order_status_history` derives it).
    pub fn create_order(&mut self, order: NewOrder) {
        self.created
            .insert(order.order_id.clone(), self.changes.orders.len());
        self.changes.orders.push(order);
    }

    /// Moves an order from `from` to `to`; `paid_by` when it was paid.
    pub fn transition(
        &mut self,
        order_id: &OrderId,
        (from, to): (OrderStatus, OrderStatus),
        cause: &EventId,
        reason: Option<String>,
        paid_by: Option<(String, i64)>,
    ) {
        self.changes.history.push(Transition {
            order_id: order_id.clone(),
            from,
            to,
            cause_event_id: cause.clone(),
            reason,
        });
        self.tally.transitions.push((from, to));
        if let Some(&i) = self.created.get(order_id) {
            let order = &mut self.changes.orders[i];
            order.status = to;
            order.paid_by = paid_by.or(order.paid_by.take());
        } else if let Some(&i) = self.updated.get(order_id) {
            let update = &mut self.changes.statuses[i];
            update.status = to;
            update.paid_by = paid_by.or(update.paid_by.take());
        } else {
            self.updated
                .insert(order_id.clone(), self.changes.statuses.len());
            self.changes.statuses.push(StatusUpdate {
                order_id: order_id.clone(),
                status: to,
                paid_by,
            });
        }
    }

    pub fn record_payment(&mut self, payment: NewPayment) {
        self.changes.payments.push(payment);
    }

    /// Records a refund request (callers make sure it is the payment's first).
    pub fn request_refund(&mut self, refund: Refund) {
        self.tally
            .refunds
            .push((refund.currency.clone(), refund.amount_minor));
        self.changes.refunds.push(refund);
    }

    pub fn payment_rejected(&mut self) {
        self.tally.payments_rejected += 1;
    }

    pub fn park(&mut self, parking: Parking) {
        self.changes.parked.push(parking);
    }

    /// A parked event (by `seq`) was applied and leaves the parking.
    pub fn unpark(&mut self, seq: i64) {
        self.changes.unparked.push(seq);
        self.tally.unparked += 1;
    }

    /// Announces an event on `order-events` (in the order announced),
    /// stamped with the batch's instant.
    pub fn announce(
        &mut self,
        cause: &EventId,
        order_id: &OrderId,
        status: OrderStatus,
        body: OrderEventBody,
    ) {
        match &body {
            OrderEventBody::OrderCreated { currency, .. } => {
                self.tally.created.push(currency.clone());
            }
            OrderEventBody::OrderPaid {
                currency,
                amount_minor,
                ..
            } => self.tally.paid.push((currency.clone(), *amount_minor)),
            _ => {}
        }
        self.events.push(OrderEvent::new(
            cause,
            order_id,
            status,
            self.changes.at,
            body,
        ));
    }

    /// The orders this batch creates, in their current planned state.
    pub fn created_orders(&self) -> &[NewOrder] {
        &self.changes.orders
    }

    /// The rows to write, the events to announce, and the counters.
    pub fn finish(self) -> (Changes, Vec<OrderEvent>, Tally) {
        (self.changes, self.events, self.tally)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventId;

    fn id(s: &str) -> OrderId {
        OrderId::parse(s).unwrap()
    }

    #[test]
    fn an_existing_order_changed_twice_is_updated_once_in_its_final_state() {
        let mut plan = Plan::default();
        let cause = EventId::parse("e").unwrap();
        let pay = Some(("p-1".to_owned(), 100));
        use OrderStatus::*;
        plan.transition(&id("o"), (PendingPayment, Paid), &cause, None, pay.clone());
        plan.transition(&id("o"), (Paid, Cancelled), &cause, None, None);
        let (changes, _, tally) = plan.finish();
        assert_eq!(
            changes.statuses,
            [StatusUpdate {
                order_id: id("o"),
                status: Cancelled,
                paid_by: pay
            }]
        );
        assert_eq!(changes.history.len(), 2);
        assert_eq!(changes.history[1].from, Paid);
        assert_eq!(
            tally.transitions,
            [(PendingPayment, Paid), (Paid, Cancelled)]
        );
    }
}
