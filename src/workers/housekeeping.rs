//! Housekeeping, a component of its own: periodic checks that feed gauges,
//! and VACUUM where the server runs without autovacuum.
//!
//! - Gauges (wherever `/metrics` is served): parked events (count, oldest
//!   age, how many exceed `PARKED_MAX_AGE_SECS`) and orders by status, every
//!   few seconds, both from small tables (the batches keep the counts).
//! - VACUUM (wherever a writer runs: a consumer loop or the relay), only if
//!   autovacuum is off: VACUUM ANALYZE of the tables the workers write every
//!   minute, of those tables that changed enough (autovacuum's thresholds).
//!   Without it the planner keeps the statistics of an empty table,
//!   turning index lookups into sequential scans, and every status update and
//!   outbox purge leaves dead rows behind for scans to read.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::domain::OrderStatus;
use crate::store::{maintenance, parked, status_counts};
use crate::telemetry::Metrics;

/// How often the tables are vacuumed where autovacuum is off.
const VACUUM_EVERY: Duration = Duration::from_secs(60);

/// What housekeeping does in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duties {
    /// Refresh the gauges (every `gauge_interval`).
    pub gauges: bool,
    /// VACUUM ANALYZE where autovacuum is off.
    pub vacuum: bool,
}

pub struct Housekeeping {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub parked_max_age: Duration,
    pub gauge_interval: Duration,
    pub duties: Duties,
}

impl Housekeeping {
    /// Runs its duties until `shutdown`: a VACUUM pass can take most of a
    /// minute under load, so it runs beside the gauges, never holding them
    /// up, and is given up at shutdown.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let vacuum =
            self.duties.vacuum && maintenance::autovacuum_enabled(&self.pool).await == Some(false);
        if vacuum {
            tracing::warn!("autovacuum is off on this PostgreSQL server; orderflow will VACUUM ANALYZE those of its tables that changed enough, checking every minute");
        }
        let gauges = async {
            if self.duties.gauges {
                self.refresh_gauges(&shutdown).await;
            }
        };
        let vacuuming = async {
            if vacuum {
                vacuum_periodically(&self.pool, &shutdown).await;
            }
        };
        tokio::join!(gauges, vacuuming);
        Ok(())
    }

    async fn refresh_gauges(&self, shutdown: &CancellationToken) {
        loop {
            match parked::stats(&self.pool, self.parked_max_age).await {
                Ok(s) => self
                    .metrics
                    .set_parked(s.count, s.oldest_age_seconds, s.stale),
                Err(e) => tracing::debug!(error = %e, "could not read parked-event stats"),
            }
            match status_counts::read(&self.pool).await {
                Ok(counts) => self.metrics.set_orders_by_status(&every_status(&counts)),
                Err(e) => tracing::debug!(error = %e, "could not read orders by status"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.gauge_interval) => {}
            }
        }
    }
}

/// Every status with its count, 0 where none was counted, so a status whose
/// last order moved on reads 0 rather than its old count.
fn every_status(counts: &[(String, i64)]) -> Vec<(&'static str, i64)> {
    OrderStatus::ALL
        .iter()
        .map(|status| {
            let n = counts
                .iter()
                .find(|(s, _)| s == status.as_str())
                .map_or(0, |(_, n)| *n);
            (status.as_str(), n)
        })
        .collect()
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
            result = maintenance::vacuum(&mut conn) => Some(result),
        };
        match finished {
            // Cut short mid-statement: the connection leaves the pool rather
            // than go back to it busy; the next start vacuums again.
            None => {
                drop(conn.detach());
                return;
            }
            Some(Err(e)) => tracing::warn!(error = format!("{e:#}"), "VACUUM ANALYZE failed"),
            Some(Ok(done)) => tracing::debug!(?done, "housekeeping VACUUM pass"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_is_reported_with_zero_for_the_empty_ones() {
        let counts = every_status(&[("PAID".into(), 3)]);
        assert_eq!(counts.len(), OrderStatus::ALL.len());
        assert!(counts.contains(&("PAID", 3)));
        assert!(counts.contains(&("CANCELLED", 0)));
    }
}
