//! The one seam between bytes on a topic and typed events.
//!
//! Today inputs are JSON. The format is chosen per message from its first
//! byte so that Confluent Avro (magic byte 0) can be added here without
//! touching the handlers or the consumer loop.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a payload could not become an event. Always permanent: the same bytes
/// will fail the same way, so the message is dead-lettered with this text.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("payload of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("Confluent Avro (magic byte 0) is not accepted yet; send JSON")]
    AvroNotEnabled,
    #[error("payload is neither JSON nor Confluent Avro (first byte 0x{0:02x})")]
    UnknownFormat(u8),
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid event: {0}")]
    Invalid(String),
}

/// Encodes and decodes events. Cheap to clone; shared by all loops.
#[derive(Debug, Clone)]
pub struct Codec {
    max_payload_bytes: usize,
}

impl Codec {
    pub fn new(max_payload_bytes: usize) -> Self {
        Codec { max_payload_bytes }
    }

    pub fn decode<T: DeserializeOwned>(&self, payload: Option<&[u8]>) -> Result<T, DecodeError> {
        let bytes = payload.unwrap_or_default();
        if bytes.len() > self.max_payload_bytes {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: self.max_payload_bytes,
            });
        }
        let first = bytes
            .iter()
            .copied()
            .find(|b| !b.is_ascii_whitespace())
            .ok_or(DecodeError::Empty)?;
        match first {
            b'{' => Ok(serde_json::from_slice(bytes)?),
            0 => Err(DecodeError::AvroNotEnabled),
            other => Err(DecodeError::UnknownFormat(other)),
        }
    }

    pub fn encode<T: Serialize>(&self, event: &T) -> Vec<u8> {
        // Serialising our own derive(Serialize) types to JSON cannot fail:
        // they contain no maps with non-string keys and no fallible impls.
        serde_json::to_vec(event).expect("order events always serialise to JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::CheckoutEvent;

    fn codec() -> Codec {
        Codec::new(1024)
    }

    #[test]
    fn garbage_empty_and_oversized_payloads_are_decode_errors() {
        let c = codec();
        assert!(matches!(
            c.decode::<CheckoutEvent>(None),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            c.decode::<CheckoutEvent>(Some(b"  ")),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            c.decode::<CheckoutEvent>(Some(b"\x00\x00\x00\x00\x01")),
            Err(DecodeError::AvroNotEnabled)
        ));
        assert!(matches!(
            c.decode::<CheckoutEvent>(Some(b"hello")),
            Err(DecodeError::UnknownFormat(b'h'))
        ));
        assert!(matches!(
            c.decode::<CheckoutEvent>(Some(b"{\"event_id\":1}")),
            Err(DecodeError::Json(_))
        ));
        let big = vec![b' '; 2048];
        assert!(matches!(
            c.decode::<CheckoutEvent>(Some(&big)),
            Err(DecodeError::TooLarge { size: 2048, .. })
        ));
    }

    #[test]
    fn a_checkout_decodes_with_millis_or_rfc3339_timestamps() {
        let json = |at: &str| {
            format!(
                r#"{{"event_id":"e1","order_id":"o1","cart_id":1,"user_id":2,"currency":"USD",
                "items":[{{"sku":"A","name":"a","quantity":1,"unit_price_minor":100}}],
                "shipping_address":{{"street":"s","city":"c","state":"CA","zip_code":"z","country":"US"}},
                "billing_address":{{"street":"s","city":"c","zip_code":"z","country":"US"}},
                "payment_method":"card","occurred_at":{at},"added_later":true}}"#
            )
        };
        let a: CheckoutEvent = codec()
            .decode(Some(json("1764000000000").as_bytes()))
            .unwrap();
        let b: CheckoutEvent = codec()
            .decode(Some(json("\"2025-11-24T16:00:00Z\"").as_bytes()))
            .unwrap();
        assert_eq!(a.occurred_at, b.occurred_at);
        assert_eq!(a.billing_address.state, "");
    }
}
