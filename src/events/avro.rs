//! Avro: orderflow's reader schemas (the files in `schemas/`), conversion of
//! decoded Avro values to the JSON documents the handlers read, and of order
//! events to the `order-events` envelope record.

use std::sync::LazyLock;

use anyhow::Context;
use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::{json, Map, Number, Value as Json};

use super::order_events::OrderEvent;

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
///
/// Driven by the schema: the common fields come from the event, and the
/// variant named by `event_type` (`OrderCreated` → field `order_created`) is
/// filled from the event body's JSON form, field by field in schema order;
/// every other variant field is null. A field added to both a body and the
/// schema therefore needs no change here.
pub fn order_event_value(event: &OrderEvent) -> anyhow::Result<Value> {
    let Schema::Record(envelope) = &*ORDER_EVENT else {
        anyhow::bail!("order-event.avsc is not a record");
    };
    let body = serde_json::to_value(&event.body)?;
    let variant = snake_case(event.event_type());
    let mut fields = Vec::with_capacity(envelope.fields.len());
    for field in &envelope.fields {
        let value = match field.name.as_str() {
            "event_id" => Value::String(event.event_id.to_string()),
            "causation_event_id" => Value::String(event.causation_event_id.to_string()),
            "order_id" => Value::String(event.order_id.to_string()),
            "status" => Value::String(event.status.as_str().to_owned()),
            "occurred_at" => Value::TimestampMillis(event.occurred_at.timestamp_millis()),
            "event_type" => Value::String(event.event_type().to_owned()),
            name if name == variant => {
                let Schema::Union(union) = &field.schema else {
                    anyhow::bail!("order-event.avsc: {name} is not a union");
                };
                let record = union
                    .variants()
                    .iter()
                    .position(|s| matches!(s, Schema::Record(_)))
                    .with_context(|| format!("order-event.avsc: {name} has no record branch"))?;
                Value::Union(
                    record as u32,
                    Box::new(record_from_json(&union.variants()[record], &body)?),
                )
            }
            _ => Value::Union(0, Box::new(Value::Null)),
        };
        fields.push((field.name.clone(), value));
    }
    Ok(Value::Record(fields))
}

/// The inverse of [`order_event_value`], on the JSON form of a decoded
/// envelope ([`to_json`]): the common fields plus the fields of the variant
/// that `event_type` names, as the flat JSON that `OrderEvent` reads.
pub fn order_event_from_envelope(mut envelope: Json) -> Result<OrderEvent, String> {
    let object = envelope
        .as_object_mut()
        .ok_or("the envelope is not a record")?;
    let event_type = object
        .get("event_type")
        .and_then(Json::as_str)
        .ok_or("event_type is missing")?
        .to_owned();
    let variant = snake_case(&event_type);
    let body = match object.remove(&variant) {
        Some(Json::Object(body)) => body,
        _ => {
            return Err(format!(
                "event_type {event_type} but field {variant} is not set"
            ))
        }
    };
    // Every variant field (set or null) goes; the body's fields come up.
    object.retain(|_, v| !v.is_object() && !v.is_null());
    object.extend(body);
    serde_json::from_value(envelope).map_err(|e| e.to_string())
}

/// A record of longs and strings, in schema field order, from a JSON object.
fn record_from_json(schema: &Schema, json: &Json) -> anyhow::Result<Value> {
    let Schema::Record(record) = schema else {
        anyhow::bail!("expected a record schema");
    };
    let mut fields = Vec::with_capacity(record.fields.len());
    for field in &record.fields {
        let raw = json.get(&field.name);
        let value = match (&field.schema, raw) {
            (Schema::Long, Some(Json::Number(n))) => n.as_i64().map(Value::Long),
            (Schema::String, Some(Json::String(s))) => Some(Value::String(s.clone())),
            _ => None,
        }
        .with_context(|| {
            format!(
                "field {} is missing or not a {:?}",
                field.name, field.schema
            )
        })?;
        fields.push((field.name.clone(), value));
    }
    Ok(Value::Record(fields))
}

/// `OrderCreated` → `order_created`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::lifecycle::RequestedBy;
    use crate::domain::{EventId, OrderId, OrderStatus};
    use crate::events::OrderEventBody;

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
                requested_by: RequestedBy::Support,
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
            let cause = EventId::parse("cause").unwrap();
            let order = OrderId::parse("o-1").unwrap();
            let at = crate::clock::Clock::default().now();
            let event = OrderEvent::new(&cause, &order, OrderStatus::Paid, at, body);
            let value = order_event_value(&event).unwrap();
            assert!(
                value.validate(&ORDER_EVENT),
                "{} does not fit order-event.avsc",
                event.event_type()
            );
            let bytes = write_datum(&ORDER_EVENT, value).unwrap();
            let back = read_datum(&ORDER_EVENT, &bytes).unwrap();
            let json = to_json(back);
            assert_eq!(
                order_event_from_envelope(json.clone()).as_ref(),
                Ok(&event),
                "the envelope reads back as the event"
            );
            assert_eq!(json["event_type"], event.event_type());
            assert_eq!(json["occurred_at"], event.occurred_at.timestamp_millis());
            // The variant carries exactly the body's fields; the others are null.
            let mut body = serde_json::to_value(&event.body).unwrap();
            body.as_object_mut().unwrap().remove("event_type");
            let variant = snake_case(event.event_type());
            assert_eq!(json[&variant], body, "{variant}");
            let non_null = json
                .as_object()
                .unwrap()
                .values()
                .filter(|v| v.is_object())
                .count();
            assert_eq!(non_null, 1, "exactly one variant is set");
        }
    }
}
