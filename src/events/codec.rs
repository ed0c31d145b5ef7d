//! The one seam between bytes on a topic and typed events.
//!
//! The format is detected per message from its first byte: `{` is JSON,
//! `0` is Confluent Avro (magic byte, 4-byte big-endian schema id, Avro
//! binary), so one topic may carry both during a migration. Avro is decoded
//! with the *writer* schema fetched from the registry by id (cached) and then
//! resolved to orderflow's *reader* schema, so producers on older or newer
//! compatible schemas are read correctly. Handlers see either the JSON bytes
//! or the equivalent JSON document, and deserialise their own types.

use std::sync::Arc;

use apache_avro::Schema;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::avro;
use super::OrderEvent;

/// Why a payload could not become an event. All but
/// [`DecodeError::RegistryUnavailable`] are permanent: the same bytes fail the
/// same way, so the message is dead-lettered with this text.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("payload of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("Confluent Avro (magic byte 0) received but SCHEMA_REGISTRY_URL is not set")]
    AvroNotEnabled,
    #[error("payload is neither JSON nor Confluent Avro (first byte 0x{0:02x})")]
    UnknownFormat(u8),
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("undecodable Avro: {0}")]
    Avro(String),
    #[error("Avro does not resolve to the reader schema: {0}")]
    Unresolvable(String),
    /// Transient: the registry could not be asked. Retry, never dead-letter.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    #[error("invalid event: {0}")]
    Invalid(String),
}

impl DecodeError {
    pub fn is_transient(&self) -> bool {
        matches!(self, DecodeError::RegistryUnavailable(_))
    }
}

/// Registry client settings: no proxy (the registry is on the service
/// network), a 5 s timeout so an outage is noticed and retried quickly.
pub fn registry_settings(url: &str) -> anyhow::Result<SrSettings> {
    SrSettings::new_builder(url.trim_end_matches('/').to_owned())
        .no_proxy()
        .set_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| anyhow::anyhow!("failed to set up the schema registry client for {url}: {e}"))
}

/// A payload in a format the handlers can deserialise.
#[derive(Debug)]
pub enum Normalized<'a> {
    Json(&'a [u8]),
    /// An Avro value resolved to the reader schema, as JSON.
    Document(serde_json::Value),
}

/// The registry clients; present when `SCHEMA_REGISTRY_URL` is set.
struct Registry {
    decoder: AvroDecoder,
    encoder: AvroEncoder,
}

/// Encodes and decodes events. Cheap to clone; shared by all loops.
#[derive(Clone)]
pub struct Codec {
    max_payload_bytes: usize,
    registry: Option<Arc<Registry>>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("avro", &self.registry.is_some())
            .finish()
    }
}

impl Codec {
    /// JSON only.
    pub fn new(max_payload_bytes: usize) -> Self {
        Codec {
            max_payload_bytes,
            registry: None,
        }
    }

    /// JSON and Confluent Avro through the registry at `registry_url`.
    pub fn with_registry(max_payload_bytes: usize, registry_url: &str) -> anyhow::Result<Self> {
        let settings = registry_settings(registry_url)?;
        Ok(Codec {
            max_payload_bytes,
            registry: Some(Arc::new(Registry {
                decoder: AvroDecoder::new(settings.clone()),
                encoder: AvroEncoder::new(settings),
            })),
        })
    }

    pub fn avro_enabled(&self) -> bool {
        self.registry.is_some()
    }

    /// Detects the format and, for Avro, decodes and resolves to `reader`.
    pub async fn normalize<'a>(
        &self,
        reader: &Schema,
        payload: Option<&'a [u8]>,
    ) -> Result<Normalized<'a>, DecodeError> {
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
            b'{' => Ok(Normalized::Json(bytes)),
            0 => {
                let registry = self.registry.as_ref().ok_or(DecodeError::AvroNotEnabled)?;
                let decoded = registry.decoder.decode(Some(bytes)).await.map_err(|e| {
                    let text = match &e.cause {
                        Some(cause) => format!("{}: {cause}", e.error),
                        None => e.error.clone(),
                    };
                    if e.retriable {
                        DecodeError::RegistryUnavailable(text)
                    } else {
                        DecodeError::Avro(text)
                    }
                })?;
                let resolved = decoded
                    .value
                    .resolve(reader)
                    .map_err(|e| DecodeError::Unresolvable(e.to_string()))?;
                Ok(Normalized::Document(avro::to_json(resolved)))
            }
            other => Err(DecodeError::UnknownFormat(other)),
        }
    }

    /// Deserialises a normalized payload into `T`.
    pub fn decode<T: DeserializeOwned>(&self, payload: &Normalized<'_>) -> Result<T, DecodeError> {
        match payload {
            Normalized::Json(bytes) => Ok(serde_json::from_slice(bytes)?),
            Normalized::Document(doc) => Ok(T::deserialize(doc)?),
        }
    }

    pub fn encode<T: Serialize>(&self, event: &T) -> Vec<u8> {
        // Serialising our own derive(Serialize) types to JSON cannot fail:
        // they contain no maps with non-string keys and no fallible impls.
        serde_json::to_vec(event).expect("order events always serialise to JSON")
    }

    /// The wire form of an order event stored (as JSON) in the outbox: Avro
    /// under subject `<topic>-value` when a registry is configured, else the
    /// JSON unchanged. The subject's schema must be registered
    /// (`orderflow schemas register`); nothing is auto-registered.
    pub async fn order_event_wire(&self, topic: &str, json: &[u8]) -> anyhow::Result<Vec<u8>> {
        let Some(registry) = &self.registry else {
            return Ok(json.to_vec());
        };
        let event: OrderEvent = serde_json::from_slice(json)?;
        let strategy = SubjectNameStrategy::TopicNameStrategy(topic.to_owned(), false);
        registry
            .encoder
            .encode_value(avro::order_event_value(&event)?, &strategy)
            .await
            .map_err(|e| {
                // The encoder caches a non-retriable error (subject not
                // registered yet) for good; the relay retries with backoff,
                // so let the next round ask the registry again: `run`
                // started before `schemas register` recovers by itself.
                registry.encoder.remove_errors_from_cache();
                anyhow::anyhow!(
                    "failed to encode {} as Avro for {topic}-value: {e}",
                    event.event_type()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::CheckoutEvent;

    fn decode(c: &Codec, bytes: Option<&[u8]>) -> Result<CheckoutEvent, DecodeError> {
        let n = futures::executor::block_on(c.normalize(&crate::events::avro::CHECKOUT, bytes))?;
        c.decode(&n)
    }

    #[test]
    fn garbage_empty_and_oversized_payloads_are_decode_errors() {
        let c = Codec::new(1024);
        assert!(matches!(decode(&c, None), Err(DecodeError::Empty)));
        assert!(matches!(decode(&c, Some(b"  ")), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(&c, Some(b"\x00\x00\x00\x00\x01")),
            Err(DecodeError::AvroNotEnabled)
        ));
        assert!(matches!(
            decode(&c, Some(b"hello")),
            Err(DecodeError::UnknownFormat(b'h'))
        ));
        assert!(matches!(
            decode(&c, Some(b"{\"event_id\":1}")),
            Err(DecodeError::Json(_))
        ));
        let big = vec![b' '; 2048];
        assert!(matches!(
            decode(&c, Some(&big)),
            Err(DecodeError::TooLarge { size: 2048, .. })
        ));
        assert!(!DecodeError::Empty.is_transient());
        assert!(DecodeError::RegistryUnavailable("down".into()).is_transient());
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
        let c = Codec::new(4096);
        let a = decode(&c, Some(json("1764000000000").as_bytes())).unwrap();
        let b = decode(&c, Some(json("\"2025-11-24T16:00:00Z\"").as_bytes())).unwrap();
        assert_eq!(a.occurred_at, b.occurred_at);
        assert_eq!(a.billing_address.state, "");
    }

    mod properties {
        use super::*;
        use crate::events::{Cancellation, PaymentConfirmation};
        use proptest::prelude::*;

        fn decode_all(c: &Codec, bytes: &[u8]) {
            for schema in [
                &*crate::events::avro::CHECKOUT,
                &*crate::events::avro::PAYMENT_CONFIRMATION,
                &*crate::events::avro::CANCELLATION,
            ] {
                if let Ok(n) = futures::executor::block_on(c.normalize(schema, Some(bytes))) {
                    let _ = c.decode::<CheckoutEvent>(&n);
                    let _ = c.decode::<PaymentConfirmation>(&n);
                    let _ = c.decode::<Cancellation>(&n);
                }
            }
        }

        proptest! {
            /// Arbitrary bytes are decoded or refused, never a panic.
            #[test]
            fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                decode_all(&Codec::new(1024), &bytes);
            }

            /// Nor do near-valid events: a valid checkout with one byte
            /// changed or cut short.
            #[test]
            fn mutated_checkouts_never_panic_the_decoders(at in 0usize..600, byte in any::<u8>(), cut in any::<bool>()) {
                let json = br#"{"event_id":"e1","order_id":"o1","cart_id":1,"user_id":2,"currency":"USD","items":[{"sku":"A","name":"a","quantity":1,"unit_price_minor":100}],"shipping_address":{"street":"s","city":"c","state":"CA","zip_code":"z","country":"US"},"billing_address":{"street":"s","city":"c","zip_code":"z","country":"US"},"payment_method":"card","occurred_at":1764000000000}"#;
                let mut bytes = json.to_vec();
                let at = at % bytes.len();
                if cut { bytes.truncate(at) } else { bytes[at] = byte }
                decode_all(&Codec::new(4096), &bytes);
            }
        }
    }
}
