//! The inbox: dedupe records for consumed events, written in the transaction
//! that applies them, so "seen" and "applied" can never disagree.

use sqlx::PgConnection;

/// Claims `(source, event_id)`. Returns `false` when it was already claimed
/// (a duplicate). A concurrent claim of the same id blocks until the other
/// transaction ends, so exactly one of them sees `true`.
pub async fn claim(
    conn: &mut PgConnection,
    source: &str,
    event_id: &str,
    order_id: Option<&str>,
    outcome: &str,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO processed_events (source, event_id, order_id, outcome)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(source)
    .bind(event_id)
    .bind(order_id)
    .bind(outcome)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Rewrites the recorded outcome of a claimed event (claims are optimistic).
pub async fn set_outcome(
    conn: &mut PgConnection,
    source: &str,
    event_id: &str,
    outcome: &str,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE processed_events SET outcome = $3 WHERE source = $1 AND event_id = $2")
        .bind(source)
        .bind(event_id)
        .bind(outcome)
        .execute(conn)
        .await?;
    Ok(())
}
