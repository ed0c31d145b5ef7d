//! The checkout event published by the cart service (`schemas/checkout.avsc`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::pricing::CartLine;
use crate::domain::{EventId, OrderId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutEvent {
    pub event_id: EventId,
    pub order_id: OrderId,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::BTreeSet;

    fn avro_fields(record: &Value) -> BTreeSet<String> {
        record["fields"]
            .as_array()
            .expect("record has fields")
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect()
    }

    fn json_fields(value: &Value) -> BTreeSet<String> {
        value.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn json_field_names_match_the_avro_schema() {
        let schema: Value = serde_json::from_str(include_str!("../../schemas/checkout.avsc"))
            .expect("checkout.avsc is JSON");
        let address = Address {
            street: "s".into(),
            city: "c".into(),
            state: "st".into(),
            zip_code: "z".into(),
            country: "US".into(),
        };
        let event = CheckoutEvent {
            event_id: EventId::parse("e").unwrap(),
            order_id: OrderId::parse("o").unwrap(),
            cart_id: 1,
            user_id: 2,
            currency: "USD".into(),
            items: vec![CheckoutItem {
                sku: "A".into(),
                name: "a".into(),
                quantity: 1,
                unit_price_minor: 1,
            }],
            shipping_address: address.clone(),
            billing_address: address,
            payment_method: "card".into(),
            occurred_at: Utc::now(),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(avro_fields(&schema), json_fields(&json));
        let fields = schema["fields"].as_array().unwrap();
        let by_name = |n: &str| fields.iter().find(|f| f["name"] == n).unwrap().clone();
        assert_eq!(
            avro_fields(&by_name("items")["type"]["items"]),
            json_fields(&json["items"][0])
        );
        assert_eq!(
            avro_fields(&by_name("shipping_address")["type"]),
            json_fields(&json["shipping_address"])
        );
        assert!(
            json["occurred_at"].is_i64(),
            "occurred_at is epoch millis like timestamp-millis"
        );
    }
}
