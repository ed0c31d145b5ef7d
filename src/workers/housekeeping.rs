//! Periodic checks that feed gauges: parked events (count, oldest age, how
//! many exceed `PARKED_MAX_AGE_SECS`; every few seconds, from a small table)
//! and orders by status (every 30 s: it reads the whole orders table, which
//! took 3.4 s under load at 260,000 orders). Where the server runs without
//! autovacuum, it also does autovacuum's work on the tables the workers write
//! (VACUUM ANALYZE every minute): without it the planner keeps the statistics
//! of an empty table, turning index lookups into sequential scans, and every
//! status update and outbox purge leaves dead rows behind for scans to read.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::store::parked;
use crate::telemetry::Metrics;

/// How often the orders-by-status gauge is recounted.
const ORDERS_COUNT_EVERY: Duration = Duration::from_secs(30);

/// How often the tables are vacuumed where autovacuum is off.
const VACUUM_EVERY: Duration = Duration::from_secs(60);

/// Refreshes the gauges every `every` and, where autovacuum is off, vacuums
/// on a schedule of its own: a pass can take most of a minute under load,
/// and must hold up neither the gauges nor shutdown.
pub async fn run(
    pool: PgPool,
    metrics: Arc<Metrics>,
    max_age: Duration,
    every: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let autovacuum: Option<String> = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&pool)
        .await
        .ok();
    let gauges = refresh_gauges(&pool, &metrics, max_age, every, &shutdown);
    if autovacuum.as_deref() == Some("off") {
        tracing::warn!("autovacuum is off on this PostgreSQL server; orderflow will VACUUM ANALYZE its tables every minute");
        tokio::join!(gauges, vacuum_periodically(&pool, &shutdown));
    } else {
        gauges.await;
    }
    Ok(())
}

async fn refresh_gauges(
    pool: &PgPool,
    metrics: &Metrics,
    max_age: Duration,
    every: Duration,
    shutdown: &CancellationToken,
) {
    let mut last_count: Option<std::time::Instant> = None;
    loop {
        match parked::stats(pool, max_age).await {
            Ok(stats) => metrics.parked(&stats),
            Err(e) => tracing::debug!(error = %e, "could not read parked-event stats"),
        }
        if last_count.is_none_or(|at| at.elapsed() >= ORDERS_COUNT_EVERY) {
            let by_status: sqlx::Result<Vec<(String, i64)>> =
                sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status")
                    .fetch_all(pool)
                    .await;
            match by_status {
                Ok(counts) => metrics.set_orders_by_status(&counts),
                Err(e) => tracing::debug!(error = %e, "could not count orders by status"),
            }
            last_count = Some(std::time::Instant::now());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn vacuum_periodically(pool: &PgPool, shutdown: &CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(VACUUM_EVERY) => {}
        }
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "no connection for VACUUM");
                continue;
            }
        };
        let finished = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            result = vacuum(&mut conn) => Some(result),
        };
        match finished {
            // Cut short mid-statement: the connection leaves the pool rather
            // than go back to it busy; the next start vacuums again.
            None => {
                drop(conn.detach());
                return;
            }
            Some(Err(e)) => tracing::warn!(error = format!("{e:#}"), "VACUUM ANALYZE failed"),
            Some(Ok(())) => {}
        }
    }
}

/// What autovacuum would do for the tables the workers write, paced as it
/// paces itself (a cost-based delay), so the pass does not starve the
/// batches running alongside: unpaced, it put a latency spike into every
/// minute after a bulk load.
async fn vacuum(conn: &mut PgConnection) -> anyhow::Result<()> {
    use anyhow::Context;
    let tables = "orders, order_items, order_status_history, processed_events, payments, refunds, parked_events, outbox";
    // VACUUM cannot run in a transaction, so the pacing is set on the
    // session and reset before the connection goes back to the pool.
    sqlx::query("SET vacuum_cost_delay = '2ms'")
        .execute(&mut *conn)
        .await
        .context("failed to pace VACUUM")?;
    let result = sqlx::query(&format!("VACUUM (ANALYZE) {tables}"))
        .execute(&mut *conn)
        .await
        .context("VACUUM failed");
    sqlx::query("RESET vacuum_cost_delay")
        .execute(&mut *conn)
        .await
        .context("failed to reset the VACUUM pacing")?;
    result.map(|_| ())
}
