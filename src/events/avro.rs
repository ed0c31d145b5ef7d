//! Avro: orderflow's reader schemas (the files in `schemas/`), conversion of
//! decoded Avro values to the JSON documents the handlers read, and of order
//! events to the `order-events` envelope record.

use std::sync::LazyLock;

use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::{json, Map, Number, Value as Json};

use super::order_events::{OrderEvent, OrderEventBody};

fn parse(name: &str, text: &str) -> Schema {
    Schema::parse_str(text)
        .unwrap_or_else(|e| panic!("schemas/{name} is not a valid Avro schema: {e}"))
}

pub static CHECKOUT: LazyLock<Schema> =
    LazyLock::new(|| parse("checkout.avsc", include_str!("../../schemas/checkout.avsc")));
pub static PAYMENT_CONFIRMATION: LazyLock<Schema> = LazyLock::new(|| {
    parse(
        "payment-confirmation.avsc",
        include_str!("../../schemas/payment-confirmation.avsc"),
    )
});
pub static CANCELLATION: LazyLock<Schema> = LazyLock::new(|| {
    parse(
        "cancellation.avsc",
        include_str!("../../schemas/cancellation.avsc"),
    )
});
pub static ORDER_EVENT: LazyLock<Schema> = LazyLock::new(|| {
    parse(
        "order-event.avsc",
        include_str!("../../schemas/order-event.avsc"),
    )
});

/// Every schema file with the topic role whose `-value` subject it belongs to.
pub const SCHEMA_FILES: &[(&str, &str, &str)] = &[
    (
        "checkouts",
        "checkout.avsc",
        include_str!("../../schemas/checkout.avsc"),
    ),
    (
        "payment-confirmations",
        "payment-confirmation.avsc",
        include_str!("../../schemas/payment-confirmation.avsc"),
    ),
    (
        "cancellations",
        "cancellation.avsc",
        include_str!("../../schemas/cancellation.avsc"),
    ),
    (
        "order-events",
        "order-event.avsc",
        include_str!("../../schemas/order-event.avsc"),
    ),
];

/// Avro binary of `value` (no container, no framing).
pub fn write_datum(schema: &Schema, value: Value) -> apache_avro::AvroResult<Vec<u8>> {
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()?
        .write_value_to_vec(value)
}

/// Reads one Avro binary datum written with `schema`.
pub fn read_datum(schema: &Schema, mut bytes: &[u8]) -> apache_avro::AvroResult<Value> {
    apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()?
        .read_value(&mut bytes)
}

/// An Avro value (already resolved to our reader schema) as the JSON the
/// handlers' serde types read: records become objects, unions their branch,
/// enums their symbol, timestamps epoch milliseconds.
pub fn to_json(value: Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => json!(i),
        Value::Long(l)
        | Value::TimestampMillis(l)
        | Value::LocalTimestampMillis(l)
        | Value::TimeMicros(l) => json!(l),
        Value::TimestampMicros(l) | Value::LocalTimestampMicros(l) => json!(l.div_euclid(1_000)),
        Value::TimestampNanos(l) | Value::LocalTimestampNanos(l) => json!(l.div_euclid(1_000_000)),
        Value::Float(f) => Number::from_f64(f64::from(f)).map_or(Json::Null, Json::Number),
        Value::Double(d) => Number::from_f64(d).map_or(Json::Null, Json::Number),
        Value::Bytes(b) | Value::Fixed(_, b) => {
            Json::Array(b.into_iter().map(|x| json!(x)).collect())
        }
        Value::String(s) | Value::Enum(_, s) => Json::String(s),
        Value::Union(_, inner) => to_json(*inner),
        Value::Array(items) => Json::Array(items.into_iter().map(to_json).collect()),
        Value::Map(m) => Json::Object(m.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
        Value::Record(fields) => Json::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        Value::Uuid(u) => Json::String(u.to_string()),
        other => Json::String(format!("{other:?}")),
    }
}

/// An order event as an `OrderEvent` envelope record (`schemas/order-event.avsc`).
pub fn order_event_value(event: &OrderEvent) -> Value {
    let s = |v: &str| Value::String(v.to_owned());
    let l = Value::Long;
    let some = |index: u32, fields: Vec<(&str, Value)>| {
        Value::Union(
            index,
            Box::new(Value::Record(
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            )),
        )
    };
    let (field, variant) = match &event.body {
        OrderEventBody::OrderCreated {
            user_id,
            cart_id,
            currency,
            subtotal_minor,
            tax_minor,
            shipping_minor,
            total_minor,
            item_count,
            line_count,
        } => (
            "order_created",
            some(
                1,
                vec![
                    ("user_id", l(*user_id)),
                    ("cart_id", l(*cart_id)),
                    ("currency", s(currency)),
                    ("subtotal_minor", l(*subtotal_minor)),
                    ("tax_minor", l(*tax_minor)),
                    ("shipping_minor", l(*shipping_minor)),
                    ("total_minor", l(*total_minor)),
                    ("item_count", l(*item_count)),
                    ("line_count", l(*line_count)),
                ],
            ),
        ),
        OrderEventBody::OrderRejected {
            user_id,
            cart_id,
            reason,
        } => (
            "order_rejected",
            some(
                1,
                vec![
                    ("user_id", l(*user_id)),
                    ("cart_id", l(*cart_id)),
                    ("reason", s(reason)),
                ],
            ),
        ),
        OrderEventBody::OrderPaid {
            payment_id,
            amount_minor,
            currency,
        } => (
            "order_paid",
            some(
                1,
                vec![
                    ("payment_id", s(payment_id)),
                    ("amount_minor", l(*amount_minor)),
                    ("currency", s(currency)),
                ],
            ),
        ),
        OrderEventBody::OrderPaymentFailed { payment_id, reason } => (
            "order_payment_failed",
            some(
                1,
                vec![("payment_id", s(payment_id)), ("reason", s(reason))],
            ),
        ),
        OrderEventBody::OrderCancelled {
            reason,
            requested_by,
        } => (
            "order_cancelled",
            some(
                1,
                vec![("reason", s(reason)), ("requested_by", s(requested_by))],
            ),
        ),
        OrderEventBody::RefundRequested {
            payment_id,
            amount_minor,
            currency,
            reason,
        } => (
            "refund_requested",
            some(
                1,
                vec![
                    ("payment_id", s(payment_id)),
                    ("amount_minor", l(*amount_minor)),
                    ("currency", s(currency)),
                    ("reason", s(reason)),
                ],
            ),
        ),
        OrderEventBody::PaymentRejected {
            payment_id,
            amount_minor,
            currency,
            reason,
        } => (
            "payment_rejected",
            some(
                1,
                vec![
                    ("payment_id", s(payment_id)),
                    ("amount_minor", l(*amount_minor)),
                    ("currency", s(currency)),
                    ("reason", s(reason)),
                ],
            ),
        ),
    };
    let mut fields = vec![
        ("event_id".to_owned(), s(&event.event_id)),
        (
            "causation_event_id".to_owned(),
            s(&event.causation_event_id),
        ),
        ("order_id".to_owned(), s(&event.order_id)),
        ("status".to_owned(), s(event.status.as_str())),
        (
            "occurred_at".to_owned(),
            Value::TimestampMillis(event.occurred_at.timestamp_millis()),
        ),
        ("event_type".to_owned(), s(event.event_type())),
    ];
    for name in [
        "order_created",
        "order_rejected",
        "order_paid",
        "order_payment_failed",
        "order_cancelled",
        "refund_requested",
        "payment_rejected",
    ] {
        let value = if name == field {
            variant.clone()
        } else {
            Value::Union(0, Box::new(Value::Null))
        };
        fields.push((name.to_owned(), value));
    }
    Value::Record(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderStatus;

    #[test]
    fn every_schema_file_parses() {
        for schema in [
            &*CHECKOUT,
            &*PAYMENT_CONFIRMATION,
            &*CANCELLATION,
            &*ORDER_EVENT,
        ] {
            assert!(matches!(schema, Schema::Record(_)));
        }
    }

    #[test]
    fn every_order_event_type_fits_the_envelope_schema() {
        let bodies = vec![
            OrderEventBody::OrderCreated {
                user_id: 1,
                cart_id: 2,
                currency: "USD".into(),
                subtotal_minor: 3,
                tax_minor: 4,
                shipping_minor: 5,
                total_minor: 12,
                item_count: 6,
                line_count: 7,
            },
            OrderEventBody::OrderRejected {
                user_id: 1,
                cart_id: 2,
                reason: "r".into(),
            },
            OrderEventBody::OrderPaid {
                payment_id: "p".into(),
                amount_minor: 1,
                currency: "USD".into(),
            },
            OrderEventBody::OrderPaymentFailed {
                payment_id: "p".into(),
                reason: "r".into(),
            },
            OrderEventBody::OrderCancelled {
                reason: "r".into(),
                requested_by: "SUPPORT".into(),
            },
            OrderEventBody::RefundRequested {
                payment_id: "p".into(),
                amount_minor: 1,
                currency: "USD".into(),
                reason: "r".into(),
            },
            OrderEventBody::PaymentRejected {
                payment_id: "p".into(),
                amount_minor: 1,
                currency: "EUR".into(),
                reason: "r".into(),
            },
        ];
        for body in bodies {
            let event = OrderEvent::new("cause", "o-1", OrderStatus::Paid, body);
            let value = order_event_value(&event);
            assert!(
                value.validate(&ORDER_EVENT),
                "{} does not fit order-event.avsc",
                event.event_type()
            );
            let bytes = write_datum(&ORDER_EVENT, value).unwrap();
            let back = read_datum(&ORDER_EVENT, &bytes).unwrap();
            let json = to_json(back);
            assert_eq!(json["event_type"], event.event_type());
            assert_eq!(json["occurred_at"], event.occurred_at.timestamp_millis());
        }
    }
}
