//! The outbox: records to publish, written in the transaction that caused
//! them and relayed to Kafka afterwards (see `workers::relay`). Every kind of
//! record orderflow publishes is built here: order events and dead letters.
//!
//! Rows are published in `id` order within a shard, and deleted once
//! published. Rows of one order are written by transactions that serialise
//! on that order's lock, so their ids follow commit order; they share a slot
//! (a hash of the key, `outbox_slot` in the database), hence a shard with a
//! single publisher, which preserves each order's event sequence.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::leases::{self, Lease};
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

    /// The headers as the outbox stores them (a JSON array of pairs).
    pub fn headers_json(&self) -> String {
        serde_json::to_string(&self.headers).expect("string pairs serialise")
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

/// Enqueues many records in one statement, in their order (ids follow it).
pub async fn enqueue_many<'r>(
    conn: &mut PgConnection,
    records: impl IntoIterator<Item = &'r NewRecord>,
) -> sqlx::Result<()> {
    let records: Vec<&NewRecord> = records.into_iter().collect();
    if records.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    let topics: Vec<&str> = records.iter().map(|r| r.topic.as_str()).collect();
    let keys: Vec<Option<&[u8]>> = records.iter().map(|r| r.key.as_deref()).collect();
    let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    let headers: Vec<String> = records.iter().map(|r| r.headers_json()).collect();
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
    /// `outbox_slot(key)`: the shard is `slot % OUTBOX_SHARDS`.
    pub slot: i16,
}

impl PendingRecord {
    pub fn is_order_event(&self) -> bool {
        self.kind == RecordKind::OrderEvent.as_str()
    }
}

/// The oldest unpublished records of `slots`, in id order; an order event's
/// payload is its body in the order feed and its one header its event type
/// there (`feed::append`).
pub async fn pending(
    conn: &mut PgConnection,
    slots: &[i16],
    limit: i64,
) -> sqlx::Result<Vec<PendingRecord>> {
    sqlx::query_as(
        "SELECT o.id, o.kind, o.topic, o.key,
                COALESCE(o.payload, convert_to(f.body::text, 'UTF8')) AS payload,
                COALESCE(o.headers, jsonb_build_array(jsonb_build_array('event_type', f.event_type)))
                    AS headers,
                o.created_at, o.slot
         FROM outbox o
         LEFT JOIN order_feed f ON f.user_id = o.feed_user_id AND f.seq = o.feed_seq
         WHERE o.sent_at IS NULL AND o.slot = ANY($1) ORDER BY o.id LIMIT $2",
    )
    .bind(slots)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Deletes published rows, those of shards whose lease in `held` is still
/// held (owner, epoch, not expired) at the moment of the delete, in one
/// statement; returns the leases that were. Rows of a shard whose lease
/// passed on stay: the new owner publishes them again, identically. This
/// is the fence that keeps a relay that froze or lost the database from
/// removing what it no longer owns.
pub async fn delete_published(
    conn: &mut PgConnection,
    ids: &[i64],
    held: &[Lease],
    shards: i32,
) -> sqlx::Result<Vec<Lease>> {
    let Some(owner) = held.first().map(|l| l.owner.as_str()) else {
        return Ok(Vec::new());
    };
    let (lease_shards, epochs) = leases::columns(held);
    let still: Vec<i32> = sqlx::query_scalar(
        "WITH held AS (
             SELECT l.shard FROM relay_leases l
             JOIN unnest($3::int[], $4::bigint[]) AS h(shard, epoch)
               ON l.shard = h.shard AND l.epoch = h.epoch
             WHERE l.owner = $2 AND l.shards = $5 AND l.expires_at > clock_timestamp()),
         gone AS (
             DELETE FROM outbox
             WHERE id = ANY($1) AND slot % $5 IN (SELECT shard FROM held))
         SELECT shard FROM held",
    )
    .bind(ids)
    .bind(owner)
    .bind(&lease_shards)
    .bind(&epochs)
    .bind(shards)
    .fetch_all(conn)
    .await?;
    Ok(leases::still_held(held, &still))
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

/// Deletes rows marked published (by a version before sharding, still
/// running during a rolling upgrade) older than `retention`, at most `limit`
/// at a time.
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
