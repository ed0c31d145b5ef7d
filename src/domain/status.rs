//! The statuses an order can be in, as stored in PostgreSQL and published.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    PaymentFailed,
    Cancelled,
    RefundRequested,
    Rejected,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::PendingPayment,
        OrderStatus::Paid,
        OrderStatus::PaymentFailed,
        OrderStatus::Cancelled,
        OrderStatus::RefundRequested,
        OrderStatus::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingPayment => "PENDING_PAYMENT",
            OrderStatus::Paid => "PAID",
            OrderStatus::PaymentFailed => "PAYMENT_FAILED",
            OrderStatus::Cancelled => "CANCELLED",
            OrderStatus::RefundRequested => "REFUND_REQUESTED",
            OrderStatus::Rejected => "REJECTED",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown order status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for OrderStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_its_name() {
        for st in OrderStatus::ALL {
            assert_eq!(st.as_str().parse::<OrderStatus>().unwrap(), st);
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{st}\""));
        }
    }
}
