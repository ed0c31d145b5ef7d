//! Housekeeping queries: readiness, orders by status, and VACUUM where the
//! server runs without autovacuum.

use anyhow::Context;
use sqlx::{PgConnection, PgPool};

/// The tables the workers write.
const WRITTEN_TABLES: &str = "orders, order_status_changes, processed_events, payments, refunds, parked_events, outbox, order_feed, feed_heads, analytics_claims, analytics_daily, analytics_time_to_pay, analytics_products";

/// Whether the database answers at all.
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

/// Whether the server vacuums by itself (`None` if it could not be asked).
pub async fn autovacuum_enabled(pool: &PgPool) -> Option<bool> {
    let setting: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(pool)
        .await
        .ok()?;
    Some(setting != "off")
}

/// How many orders are in each stored status.
pub async fn orders_by_status(pool: &PgPool) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status")
        .fetch_all(pool)
        .await
}

/// Refreshes the planner's statistics of the tables the workers write. Where
/// nothing else does (autovacuum off, no housekeeping running), a table that
/// grew from empty keeps the statistics of an empty table, and lookups by
/// `= ANY($1)` turn into sequential scans.
pub async fn analyze(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query(&format!("ANALYZE {WRITTEN_TABLES}"))
        .execute(conn)
        .await
        .context("ANALYZE failed")?;
    Ok(())
}

/// What autovacuum would do for the tables the workers write, paced as it
/// paces itself (a cost-based delay), so the pass does not starve the
/// batches running alongside: unpaced, it put a latency spike into every
/// minute after a bulk load.
pub async fn vacuum(conn: &mut PgConnection) -> anyhow::Result<()> {
    // VACUUM cannot run in a transaction, so the pacing is set on the
    // session and reset before the connection goes back to the pool.
    sqlx::query("SET vacuum_cost_delay = '2ms'")
        .execute(&mut *conn)
        .await
        .context("failed to pace VACUUM")?;
    let result = sqlx::query(&format!("VACUUM (ANALYZE) {WRITTEN_TABLES}"))
        .execute(&mut *conn)
        .await
        .context("VACUUM failed");
    sqlx::query("RESET vacuum_cost_delay")
        .execute(&mut *conn)
        .await
        .context("failed to reset the VACUUM pacing")?;
    result.map(|_| ())
}
