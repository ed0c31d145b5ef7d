//! Periodic checks that feed gauges: parked events (count, oldest age, how
//! many exceed `PARKED_MAX_AGE_SECS`) and orders by status. Where the
//! server runs without autovacuum, it also refreshes the planner statistics
//! of the tables the workers write, which otherwise stay those of an empty
//! table and turn index lookups into sequential scans as the tables grow.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store::parked;
use crate::telemetry::Metrics;

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
    let analyze = autovacuum.as_deref() == Some("off");
    if analyze {
        tracing::warn!("autovacuum is off on this PostgreSQL server; orderflow will ANALYZE its tables every minute");
    }
    let mut last_analyze = std::time::Instant::now();
    loop {
        if analyze && last_analyze.elapsed() >= Duration::from_secs(60) {
            let tables = "orders, order_items, order_status_history, processed_events, payments, refunds, parked_events, outbox";
            if let Err(e) = sqlx::query(&format!("ANALYZE {tables}"))
                .execute(&pool)
                .await
            {
                tracing::warn!(error = %e, "ANALYZE failed");
            }
            last_analyze = std::time::Instant::now();
        }
        match parked::stats(&pool, max_age).await {
            Ok(stats) => metrics.parked(&stats),
            Err(e) => tracing::debug!(error = %e, "could not read parked-event stats"),
        }
        let by_status: sqlx::Result<Vec<(String, i64)>> =
            sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status")
                .fetch_all(&pool)
                .await;
        match by_status {
            Ok(counts) => metrics.set_orders_by_status(&counts),
            Err(e) => tracing::debug!(error = %e, "could not count orders by status"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}
