//! The outbox: records to publish, written in the transaction that caused
//! them and relayed to Kafka afterwards (see `workers::relay`). Every kind of
//! record orderflow publishes is built here: order events and dead letters.
//!
//! Rows are published in `id` order. Rows of one order are written by
//! transactions that serialise on that order's lock, so their ids follow
//! commit order and the relay preserves each order's event sequence.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::leases::Lease;
use crate::events::{DeadLetter, OrderEvent};

/// A record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub kind: RecordKind,
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// How the relay turns a row's payload into the published value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Published byte for byte (dead letters).
    Raw,
    /// An order event stored as JSON, encoded for the wire at publish time.
    OrderEvent,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Raw => "raw",
            RecordKind::OrderEvent => "order_event",
        }
    }
}

impl NewRecord {
    /// `event` for `topic`, keyed by its order id, with an `event_type`
    /// header; stored as JSON (the relay encodes Avro when configured).
    pub fn order_event(topic: &str, event: &OrderEvent) -> NewRecord {
        NewRecord {
            kind: RecordKind::OrderEvent,
            topic: topic.to_owned(),
            key: Some(event.order_id.as_str().as_bytes().to_vec()),
            // Our own derive(Serialize) types: no maps with non-string keys,
            // no fallible impls, so JSON encoding cannot fail.
            payload: serde_json::to_vec(event).expect("order events serialise to JSON"),
            headers: vec![("event_type".into(), event.event_type().into())],
        }
    }

    pub fn is_order_event(&self) -> bool {
        self.kind == RecordKind::OrderEvent
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The dead letter of a failed message, for `dlq_topic`.
    pub fn dead_letter(dlq_topic: &str, letter: &DeadLetter<'_>) -> NewRecord {
        NewRecord {
            kind: RecordKind::Raw,
            topic: dlq_topic.to_owned(),
            key: letter.key.map(<[u8]>::to_vec),
            payload: letter.payload().to_vec(),
            headers: letter.headers(),
        }
    }
}

/// Enqueues many records in one statement, in slice order (ids follow it).
pub async fn enqueue_many(conn: &mut PgConnection, records: &[NewRecord]) -> sqlx::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    let topics: Vec<&str> = records.iter().map(|r| r.topic.as_str()).collect();
    let keys: Vec<Option<&[u8]>> = records.iter().map(|r| r.key.as_deref()).collect();
    let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    let headers: Vec<String> = records
        .iter()
        .map(|r| serde_json::to_string(&r.headers).expect("string pairs serialise"))
        .collect();
    sqlx::query(
        "INSERT INTO outbox (kind, topic, key, payload, headers)
         SELECT k, t, ky, p, h::jsonb FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::text[])
              WITH ORDINALITY AS u(k, t, ky, p, h, n) ORDER BY n",
    )
    .bind(&kinds)
    .bind(&topics)
    .bind(&keys)
    .bind(&payloads)
    .bind(&headers)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingRecord {
    pub id: i64,
    pub kind: String,
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: sqlx::types::Json<Vec<(String, String)>>,
    pub created_at: DateTime<Utc>,
}

impl PendingRecord {
    pub fn is_order_event(&self) -> bool {
        self.kind == RecordKind::OrderEvent.as_str()
    }
}

/// The oldest unpublished records, in id order.
pub async fn pending(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<PendingRecord>> {
    sqlx::query_as(
        "SELECT id, kind, topic, key, payload, headers, created_at FROM outbox
         WHERE sent_at IS NULL ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Marks rows published, if `lease` is still held (owner, epoch, not
/// expired) at the moment of the update; returns whether it was. A leader
/// that lost its lease (it froze, the network dropped it) marks nothing:
/// its rows are published again by the new leader, identically.
pub async fn mark_sent(conn: &mut PgConnection, ids: &[i64], lease: &Lease) -> sqlx::Result<bool> {
    let held: bool = sqlx::query_scalar(
        "WITH held AS (
             SELECT 1 FROM relay_leases
             WHERE shard = $2 AND owner = $3 AND epoch = $4 AND expires_at > clock_timestamp()),
         marked AS (
             UPDATE outbox SET sent_at = clock_timestamp()
             WHERE id = ANY($1) AND EXISTS (SELECT 1 FROM held))
         SELECT EXISTS (SELECT 1 FROM held)",
    )
    .bind(ids)
    .bind(lease.shard)
    .bind(&lease.owner)
    .bind(lease.epoch)
    .fetch_one(conn)
    .await?;
    Ok(held)
}

/// Unpublished rows: how many, and the age of the oldest (lowest id) by the
/// database's clock.
pub async fn backlog(pool: &PgPool) -> sqlx::Result<(i64, Option<Duration>)> {
    let (rows, age): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*),
                (SELECT extract(epoch FROM clock_timestamp() - created_at)::float8
                 FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 1)
         FROM outbox WHERE sent_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok((rows, age.map(|s| Duration::from_secs_f64(s.max(0.0)))))
}

/// Deletes published rows older than `retention`, at most `limit` at a time.
pub async fn purge(pool: &PgPool, retention: Duration, limit: i64) -> sqlx::Result<u64> {
    let cutoff = super::older_than(retention);
    Ok(sqlx::query(
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1 LIMIT $2)",
    )
    .bind(cutoff)
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}
