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

/// Claims many event ids of one source at once; returns those newly claimed
/// (the rest were seen before).
pub async fn claim_many(
    conn: &mut PgConnection,
    source: &str,
    event_ids: &[&str],
    order_ids: &[&str],
) -> sqlx::Result<std::collections::HashSet<String>> {
    let claimed: Vec<String> = sqlx::query_scalar(
        "INSERT INTO processed_events (source, event_id, order_id, outcome)
         SELECT $1, e, o, 'applied' FROM UNNEST($2::text[], $3::text[]) AS t(e, o)
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(source)
    .bind(event_ids)
    .bind(order_ids)
    .fetch_all(conn)
    .await?;
    Ok(claimed.into_iter().collect())
}

/// Rewrites the outcomes of many claimed events.
pub async fn set_outcomes(
    conn: &mut PgConnection,
    source: &str,
    event_ids: &[&str],
    outcomes: &[&str],
) -> sqlx::Result<()> {
    if event_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE processed_events p SET outcome = t.o
         FROM UNNEST($2::text[], $3::text[]) AS t(e, o)
         WHERE p.source = $1 AND p.event_id = t.e",
    )
    .bind(source)
    .bind(event_ids)
    .bind(outcomes)
    .execute(conn)
    .await?;
    Ok(())
}
