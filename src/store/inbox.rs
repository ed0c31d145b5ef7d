//! The inbox: dedupe records for consumed events, written in the transaction
//! that applies them, so "seen" and "applied" can never disagree.

use sqlx::PgConnection;

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
