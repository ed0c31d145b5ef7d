//! Payment confirmations (provider webhooks forwarded to a topic) and
//! cancellations (`schemas/payment-confirmation.avsc`, `schemas/cancellation.avsc`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    Confirmed,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentConfirmation {
    pub event_id: String,
    pub order_id: String,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancellation {
    pub event_id: String,
    pub order_id: String,
    pub reason: String,
    pub requested_by: RequestedBy,
    #[serde(with = "super::time")]
    pub occurred_at: DateTime<Utc>,
}
