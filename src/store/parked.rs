//! Read side of parked events: gauges and the `/parked-events` listing.

use sqlx::PgPool;

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
