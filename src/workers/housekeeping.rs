//! Periodic read-only checks that feed gauges: parked events (count, oldest
//! age, how many exceed `PARKED_MAX_AGE_SECS`) and orders by status.

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
    loop {
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
