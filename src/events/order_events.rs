//! Events published on `order-events`, keyed by order id.
//!
//! Every event carries its own `event_id` (UUID v7, so ids sort by creation),
//! the `causation_event_id` of the input event that caused it, the order id,
//! the order's status after the change, and `occurred_at` (when orderflow
//! applied the change: the instant of the batch that applied it, the same
//! for every event of that batch, see `clock`). `event_type` names the variant.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::lifecycle::RequestedBy;
use crate::domain::{EventId, OrderId, OrderStatus};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub event_id: EventId,
    pub causation_event_id: EventId,
    pub order_id: OrderId,
    pub status: OrderStatus,
    #[serde(with = "super::time")]
    pub occurred_at: DateTime<Utc>,
    #[serde(flatten)]
    pub body: OrderEventBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type")]
pub enum OrderEventBody {
    OrderCreated {
        user_id: i64,
        cart_id: i64,
        currency: String,
        subtotal_minor: i64,
        tax_minor: i64,
        shipping_minor: i64,
        total_minor: i64,
        /// Units across all lines.
        item_count: i64,
        line_count: i64,
    },
    OrderRejected {
        user_id: i64,
        cart_id: i64,
        reason: String,
    },
    OrderPaid {
        payment_id: String,
        amount_minor: i64,
        currency: String,
    },
    OrderPaymentFailed {
        payment_id: String,
        reason: String,
    },
    OrderCancelled {
        reason: String,
        requested_by: RequestedBy,
    },
    /// Money to give back; at most one per `payment_id`, ever.
    RefundRequested {
        payment_id: String,
        amount_minor: i64,
        currency: String,
        reason: String,
    },
    /// A confirmed payment that does not fit the order (always followed by a
    /// `RefundRequested` for it).
    PaymentRejected {
        payment_id: String,
        amount_minor: i64,
        currency: String,
        reason: String,
    },
}

impl OrderEvent {
    pub fn new(
        causation_event_id: &EventId,
        order_id: &OrderId,
        status: OrderStatus,
        occurred_at: DateTime<Utc>,
        body: OrderEventBody,
    ) -> Self {
        OrderEvent {
            event_id: EventId::new_v7(),
            causation_event_id: causation_event_id.clone(),
            order_id: order_id.clone(),
            status,
            occurred_at,
            body,
        }
    }

    pub fn event_type(&self) -> &'static str {
        match self.body {
            OrderEventBody::OrderCreated { .. } => "OrderCreated",
            OrderEventBody::OrderRejected { .. } => "OrderRejected",
            OrderEventBody::OrderPaid { .. } => "OrderPaid",
            OrderEventBody::OrderPaymentFailed { .. } => "OrderPaymentFailed",
            OrderEventBody::OrderCancelled { .. } => "OrderCancelled",
            OrderEventBody::RefundRequested { .. } => "RefundRequested",
            OrderEventBody::PaymentRejected { .. } => "PaymentRejected",
        }
    }
}
