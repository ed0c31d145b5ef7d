//! Parked events (`parked_events`): payments and cancellations that arrived
//! before their order's checkout, kept in arrival (`seq`) order until the
//! checkout's batch applies them. Also the read side: gauges and the
//! `/parked-events` listing.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::inbox::Source;
use crate::domain::{EventId, OrderId};

/// An event to park.
#[derive(Debug, Clone)]
pub struct Parking {
    pub source: Source,
    pub event_id: EventId,
    pub order_id: OrderId,
    /// The event as JSON, to be decoded again when it is applied.
    pub payload: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
}

pub async fn park_many(conn: &mut PgConnection, rows: &[Parking]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let sources: Vec<&str> = rows.iter().map(|r| r.source.as_str()).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let orders: Vec<&str> = rows.iter().map(|r| r.order_id.as_str()).collect();
    let payloads: Vec<String> = rows.iter().map(|r| r.payload.to_string()).collect();
    let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.occurred_at).collect();
    sqlx::query(
        "INSERT INTO parked_events (source, event_id, order_id, payload, occurred_at)
         SELECT s, e, o, p::jsonb, a FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
              WITH ORDINALITY AS t(s, e, o, p, a, n) ORDER BY n",
    )
    .bind(&sources)
    .bind(&ids)
    .bind(&orders)
    .bind(&payloads)
    .bind(&at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A parked event as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Parked {
    pub seq: i64,
    pub source: String,
    pub payload: serde_json::Value,
}

/// The parked events of `order_ids`, oldest first.
pub async fn of_orders(conn: &mut PgConnection, order_ids: &[&str]) -> sqlx::Result<Vec<Parked>> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT seq, source, payload FROM parked_events WHERE order_id = ANY($1) ORDER BY seq",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await
}

/// Removes applied parked events.
pub async fn remove(conn: &mut PgConnection, seqs: &[i64]) -> sqlx::Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM parked_events WHERE seq = ANY($1)")
        .bind(seqs)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ParkedStats {
    pub count: i64,
    pub oldest_age_seconds: f64,
    /// Parked longer than the configured maximum age.
    pub stale: i64,
}

pub async fn stats(pool: &PgPool, max_age: std::time::Duration) -> sqlx::Result<ParkedStats> {
    let (count, oldest, stale): (i64, Option<f64>, i64) = sqlx::query_as(
        "SELECT count(*),
                EXTRACT(EPOCH FROM clock_timestamp() - min(parked_at))::float8,
                count(*) FILTER (WHERE parked_at < clock_timestamp() - make_interval(secs => $1))
         FROM parked_events",
    )
    .bind(max_age.as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok(ParkedStats {
        count,
        oldest_age_seconds: oldest.unwrap_or(0.0),
        stale,
    })
}

/// Oldest first, as a JSON document `{"parked": [...], "count": n}`.
pub async fn list(pool: &PgPool, limit: i64) -> sqlx::Result<String> {
    sqlx::query_scalar(
        "SELECT json_build_object(
            'count', (SELECT count(*) FROM parked_events),
            'parked', COALESCE(json_agg(json_build_object(
                'source', source, 'event_id', event_id, 'order_id', order_id,
                'parked_at', parked_at, 'occurred_at', occurred_at,
                'age_seconds', EXTRACT(EPOCH FROM clock_timestamp() - parked_at)::float8,
                'event', payload) ORDER BY seq), '[]'::json))::text
         FROM (SELECT * FROM parked_events ORDER BY seq LIMIT $1) p",
    )
    .bind(limit)
    .fetch_one(pool)
    .await
}
