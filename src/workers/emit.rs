//! Writes order events to the outbox, encoded for `order-events`.

use anyhow::Context;
use sqlx::PgConnection;

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

    pub async fn emit(&self, conn: &mut PgConnection, event: &OrderEvent) -> anyhow::Result<()> {
        let payload = self.codec.encode(event);
        let record = outbox::NewRecord {
            kind: outbox::RecordKind::OrderEvent,
            topic: &self.topic,
            key: Some(event.order_id.as_bytes()),
            payload: &payload,
            headers: vec![("event_type".into(), event.event_type().into())],
        };
        outbox::enqueue(conn, &record)
            .await
            .with_context(|| format!("failed to enqueue {}", event.event_type()))
    }
}
