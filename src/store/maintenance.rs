//! Housekeeping queries: readiness, and VACUUM where the server runs without
//! autovacuum (orders by status are in `status_counts`).

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

/// What autovacuum would do for the tables the workers write, by its
/// default thresholds: VACUUM a table once more than 20 % of its rows are
/// dead or were inserted since its last VACUUM (plus 50 and 1,000 rows), and
/// ANALYZE it once more than 10 % changed since its last ANALYZE (plus 50).
/// A table that did not change enough is left alone: ANALYZE samples
/// 30,000 pages of a table however little of it changed, and a VACUUM of a
/// table with dead rows reads every page of its indexes, which with
/// millions of orders was most of a minute's work every minute. Paced as
/// autovacuum paces itself (a cost-based delay), so the pass does not
/// starve the batches running alongside: unpaced, it put a latency spike
/// into every minute after a bulk load. Returns the statements it ran.
pub async fn vacuum(conn: &mut PgConnection) -> anyhow::Result<Vec<String>> {
    let due: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT relname::text,
                n_dead_tup > 50 + 0.2 * n_live_tup
                    OR n_ins_since_vacuum > 1000 + 0.2 * n_live_tup,
                n_mod_since_analyze > 50 + 0.1 * n_live_tup
         FROM pg_stat_user_tables
         WHERE schemaname = current_schema() AND relname = ANY($1)
         ORDER BY relname",
    )
    .bind(WRITTEN_TABLES.split(", ").collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await
    .context("failed to read the tables' change counts")?;
    let statements: Vec<String> = due
        .into_iter()
        .filter_map(|(table, vacuum, analyze)| match (vacuum, analyze) {
            (true, true) => Some(format!("VACUUM (ANALYZE) {table}")),
            (true, false) => Some(format!("VACUUM {table}")),
            (false, true) => Some(format!("ANALYZE {table}")),
            (false, false) => None,
        })
        .collect();
    if statements.is_empty() {
        return Ok(Vec::new());
    }
    // VACUUM cannot run in a transaction, so the pacing is set on the
    // session and reset before the connection goes back to the pool.
    sqlx::query("SET vacuum_cost_delay = '2ms'")
        .execute(&mut *conn)
        .await
        .context("failed to pace VACUUM")?;
    let mut done = Vec::new();
    let mut result = Ok(());
    for statement in statements {
        if let Err(e) = sqlx::query(&statement).execute(&mut *conn).await {
            result = Err(e).with_context(|| format!("{statement} failed"));
            break;
        }
        done.push(statement);
    }
    sqlx::query("RESET vacuum_cost_delay")
        .execute(&mut *conn)
        .await
        .context("failed to reset the VACUUM pacing")?;
    result.map(|()| done)
}
