//! The checkout event published by the cart service (`schemas/checkout.avsc`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::pricing::CartLine;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutEvent {
    pub event_id: String,
    pub order_id: String,
    pub cart_id: i64,
    pub user_id: i64,
    pub currency: String,
    pub items: Vec<CheckoutItem>,
    pub shipping_address: Address,
    pub billing_address: Address,
    pub payment_method: String,
    #[serde(with = "super::time")]
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutItem {
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub street: String,
    pub city: String,
    /// Empty where a country has no states or regions.
    #[serde(default)]
    pub state: String,
    pub zip_code: String,
    /// ISO 3166-1 alpha-2, e.g. "US".
    pub country: String,
}

impl CheckoutEvent {
    pub fn cart_lines(&self) -> Vec<CartLine> {
        self.items
            .iter()
            .map(|i| CartLine {
                sku: i.sku.clone(),
                name: i.name.clone(),
                quantity: i.quantity,
                unit_price_minor: i.unit_price_minor,
            })
            .collect()
    }
}
