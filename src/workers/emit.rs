//! Builds the outbox records of order events, encoded for `order-events`.

use crate::events::{Codec, OrderEvent};
use crate::store::outbox;

#[derive(Debug, Clone)]
pub struct Emitter {
    codec: Codec,
    topic: String,
}

impl Emitter {
    pub fn new(codec: Codec, topic: String) -> Self {
        Emitter { codec, topic }
    }

    /// The JSON stored in the outbox for `event`.
    pub fn payload(&self, event: &OrderEvent) -> Vec<u8> {
        self.codec.encode(event)
    }

    /// The outbox record for `event` with its encoded `payload`.
    pub fn record<'a>(&'a self, event: &'a OrderEvent, payload: &'a [u8]) -> outbox::NewRecord<'a> {
        outbox::NewRecord {
            kind: outbox::RecordKind::OrderEvent,
            topic: &self.topic,
            key: Some(event.order_id.as_bytes()),
            payload,
            headers: vec![("event_type".into(), event.event_type().into())],
        }
    }
}
