//! The outbox: records to publish, written in the transaction that caused
//! them and relayed to Kafka afterwards (see `workers::relay`).
//!
//! Rows are published in `id` order. Rows of one order are written by
//! transactions that serialise on that order's row, so their ids follow commit
//! order and the relay preserves each order's event sequence.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// A record to publish.
#[derive(Debug, Clone)]
pub struct NewRecord<'a> {
    pub kind: RecordKind,
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
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

pub async fn enqueue(conn: &mut PgConnection, record: &NewRecord<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (kind, topic, key, payload, headers) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(record.kind.as_str())
    .bind(record.topic)
    .bind(record.key)
    .bind(record.payload)
    .bind(sqlx::types::Json(&record.headers))
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

pub async fn mark_sent(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query("UPDATE outbox SET sent_at = clock_timestamp() WHERE id = ANY($1)")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn backlog(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(pool)
        .await
}

/// Deletes published rows older than `retention`, at most `limit` at a time.
pub async fn purge(pool: &PgPool, retention: Duration, limit: i64) -> sqlx::Result<u64> {
    let cutoff =
        Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
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

/// Enqueues many records in one statement, in slice order (ids follow it).
pub async fn enqueue_many(conn: &mut PgConnection, records: &[NewRecord<'_>]) -> sqlx::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    let topics: Vec<&str> = records.iter().map(|r| r.topic).collect();
    let keys: Vec<Option<&[u8]>> = records.iter().map(|r| r.key).collect();
    let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload).collect();
    let headers: Vec<String> = records
        .iter()
        .map(|r| serde_json::to_string(&r.headers).expect("headers serialise"))
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
