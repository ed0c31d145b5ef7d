//! Payment confirmations (provider webhooks forwarded to a topic) and
//! cancellations (`schemas/payment-confirmation.avsc`, `schemas/cancellation.avsc`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::domain::lifecycle::{PaymentStatus, RequestedBy};
use crate::domain::{EventId, OrderId};

/// The longest provider payment id we accept, in bytes.
pub const MAX_PAYMENT_ID_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentConfirmation {
    pub event_id: EventId,
    pub order_id: OrderId,
    /// The provider's id, unique per payment.
    pub payment_id: String,
    pub status: PaymentStatus,
    pub amount_minor: i64,
    pub currency: String,
    pub provider: String,
    #[serde(default)]
    pub failure_reason: Option<String>,
    #[serde(with = "super::time")]
    pub occurred_at: DateTime<Utc>,
}

impl PaymentConfirmation {
    /// What the types cannot say: a payment id of sane length and money
    /// that is not negative. Either failing means it is no real webhook.
    pub fn check(&self) -> Result<(), String> {
        if self.payment_id.is_empty() || self.payment_id.len() > MAX_PAYMENT_ID_LEN {
            return Err(format!(
                "payment_id must be 1 to {MAX_PAYMENT_ID_LEN} characters"
            ));
        }
        if self.amount_minor < 0 {
            return Err(format!("amount_minor {} is negative", self.amount_minor));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancellation {
    pub event_id: EventId,
    pub order_id: OrderId,
    pub reason: String,
    pub requested_by: RequestedBy,
    #[serde(with = "super::time")]
    pub occurred_at: DateTime<Utc>,
}
