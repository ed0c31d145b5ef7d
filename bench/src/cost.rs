//! The cost of one input event of each kind, on the running worker and a
//! database that already holds the throughput phase's orders: first
//! `--cost-events` checkouts (new orders), then a confirmed payment of each
//! (PAID), then a cancellation of each (a refund requested), one kind at a
//! time. Per 1,000 events of the kind: rows inserted, updated and deleted in
//! orderflow's tables (`pg_stat_user_tables`), WAL bytes
//! (`pg_current_wal_lsn`), and CPU of the worker, PostgreSQL and the broker
//! (/proc). A kind's work counts until its inputs are applied and their order
//! events published and counted by the analytics loop (part of `run`).
//!
//! PostgreSQL's table counters reach `pg_stat_user_tables` when a backend
//! flushes them, at most 10 s after its last transaction when idle, so each
//! reading waits that out; CPU and WAL are read when the work is done, before
//! that wait (an idle broker and worker still use some CPU).

use std::collections::BTreeMap;
use std::time::Duration;

use orderflow::events::CheckoutEvent;
use orderflow::produce::{enqueue, InFlight};
use orderflow_testkit::prom;

use crate::harness::Bench;
use crate::load::{cancel_for, checkout, payment_for};
use crate::progress;
use crate::report::EventCost;

/// Longer than PostgreSQL's idle stats flush interval (10 s).
pub(crate) const STATS_FLUSH: Duration = Duration::from_secs(11);

/// Tuples inserted, updated, deleted and HOT-updated so far, by table.
type TableCounts = BTreeMap<String, [i64; 4]>;

impl Bench {
    pub async fn cost(&self, n: u64) -> anyhow::Result<Vec<EventCost>> {
        let mut rng = rand::thread_rng();
        let checkouts: Vec<CheckoutEvent> = (0..n)
            .map(|i| {
                let id = orderflow::domain::OrderId::parse(&format!("cost-{i}"))?;
                Ok(checkout(
                    &mut rng,
                    &id,
                    3_000_000_000_000 + i as i64,
                    self.users,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let t = self.settings().topics.clone();
        let payloads = |kind: &str| -> anyhow::Result<Vec<(String, Vec<u8>)>> {
            checkouts
                .iter()
                .map(|c| {
                    let payload = match kind {
                        "checkout" => serde_json::to_vec(c)?,
                        "payment" => serde_json::to_vec(&payment_for(c, &self.tables))?,
                        _ => serde_json::to_vec(&cancel_for(c))?,
                    };
                    Ok((c.order_id.to_string(), payload))
                })
                .collect()
        };
        let reserved = crate::waldump::Reserved::new(&self.pool, &self.world.id).await;
        let mut costs = Vec::new();
        for (kind, topic) in [
            ("checkout", &t.checkouts),
            ("payment", &t.payment_confirmations),
            ("cancellation (refund requested)", &t.cancellations),
        ] {
            let messages = payloads(kind)?;
            progress(format!("cost: {n} × {kind}"));
            let cost = self
                .cost_of(kind, topic, &messages, reserved.as_ref())
                .await;
            costs.push(cost?);
        }
        if let Some(reserved) = reserved {
            reserved.release(&self.pool).await?;
        }
        Ok(costs)
    }

    async fn cost_of(
        &self,
        kind: &str,
        topic: &str,
        messages: &[(String, Vec<u8>)],
        reserved: Option<&crate::waldump::Reserved>,
    ) -> anyhow::Result<EventCost> {
        tokio::time::sleep(STATS_FLUSH).await;
        let pid = self.worker()?.pid();
        let tables_before = self.table_counts().await?;
        let wal_before = self.wal_position().await?;
        let cpu_before = crate::cpu::now(pid);
        let handled_before = self.handled(topic).await?;
        let events_before = self.order_events_progress().await?;

        let mut in_flight = InFlight::new(topic);
        for (key, payload) in messages {
            in_flight
                .push(enqueue(&self.producer, topic, key, payload)?, None)
                .await?;
        }
        in_flight.confirm_all().await?;
        let n = messages.len() as u64;
        let started = std::time::Instant::now();
        while self.handled(topic).await? < handled_before + n as f64 {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(300),
                "cost: the {kind} burst was not applied in 5 minutes"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.wait_burst_done(true, events_before).await?;
        let cpu = (crate::cpu::now(pid) - cpu_before).per_thousand(n);
        let wal_after = self.wal_position().await?;
        let wal = wal_after - wal_before;
        // For a closer look: pg_waldump --stats=record -s FROM -e TO.
        progress(format!(
            "  {kind}: WAL from {} to {}",
            lsn(wal_before),
            lsn(wal_after)
        ));
        let mut wal_by_relation = Vec::new();
        if let Some(reserved) = reserved {
            match reserved
                .by_relation(&self.pool, &lsn(wal_before), &lsn(wal_after))
                .await
            {
                Ok(shares) => wal_by_relation = shares,
                Err(e) => progress(format!("  (no WAL breakdown: {e:#})")),
            }
        }
        tokio::time::sleep(STATS_FLUSH).await;
        let tables_after = self.table_counts().await?;

        let per_k = 1_000.0 / n.max(1) as f64;
        let mut cost = EventCost {
            kind: kind.to_owned(),
            events: n,
            wal_kb: wal as f64 / 1024.0 * per_k,
            cpu,
            ..EventCost::default()
        };
        for share in &mut wal_by_relation {
            share.bytes = (share.bytes as f64 * per_k) as u64;
            share.fpi_bytes = (share.fpi_bytes as f64 * per_k) as u64;
            share.records = (share.records as f64 * per_k) as u64;
        }
        if !wal_by_relation.is_empty() {
            progress(format!(
                "  WAL per 1,000 by relation (bytes, of which full-page images; records): {}",
                wal_by_relation
                    .iter()
                    .take(16)
                    .map(|s| format!(
                        "{} {:.0} kB ({:.0}; {})",
                        s.relation,
                        s.bytes as f64 / 1024.0,
                        s.fpi_bytes as f64 / 1024.0,
                        s.records
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        cost.wal_by_relation = wal_by_relation;
        for (table, after) in &tables_after {
            let before = tables_before.get(table).copied().unwrap_or_default();
            let d: Vec<f64> = (0..4)
                .map(|i| (after[i] - before[i]) as f64 * per_k)
                .collect();
            if d.iter().any(|v| *v != 0.0) {
                cost.rows_inserted += d[0];
                cost.rows_updated += d[1];
                cost.rows_deleted += d[2];
                cost.rows_hot_updated += d[3];
                cost.by_table.push((table.clone(), d[0], d[1], d[2]));
            }
        }
        progress(format!(
            "  per 1,000: rows +{:.0} ~{:.0} (HOT {:.0}) -{:.0}, WAL {:.0} kB, CPU ms worker {:.0} PostgreSQL {:.0} broker {:.0}; {}",
            cost.rows_inserted,
            cost.rows_updated,
            cost.rows_hot_updated,
            cost.rows_deleted,
            cost.wal_kb,
            cost.cpu.worker,
            cost.cpu.postgres,
            cost.cpu.broker,
            cost.by_table
                .iter()
                .map(|(t, i, u, d)| format!("{t} +{i:.0}~{u:.0}-{d:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(cost)
    }

    /// Messages of `topic` the worker has handled, whatever their outcome.
    async fn handled(&self, topic: &str) -> anyhow::Result<f64> {
        let page = self.worker()?.metrics_page().await?;
        Ok(prom::sum(
            &page,
            "orderflow_messages_total",
            &[("topic", topic)],
        ))
    }

    async fn table_counts(&self) -> anyhow::Result<TableCounts> {
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd
             FROM pg_stat_user_tables",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(t, i, u, d, h)| (t, [i, u, d, h]))
            .collect())
    }

    /// Bytes of WAL written by the whole cluster so far.
    async fn wal_position(&self) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

/// A WAL position as PostgreSQL writes it (`16/B374D848`).
fn lsn(position: i64) -> String {
    format!("{:X}/{:X}", position >> 32, position & 0xFFFF_FFFF)
}
