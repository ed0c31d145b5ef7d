//! The size phase (`--preload-orders N`; 0 skips it): does orderflow stay as
//! fast with years of orders behind it as on a new database?
//!
//! On a database of its own, nearly empty (an unmeasured warm-up round, then
//! VACUUM ANALYZE, as after the preload): one worker takes a round of the mix
//! (`--size-checkouts` checkouts with their payments and cancellations) and
//! the status route is read for a few seconds; then N orders are bulk-loaded as
//! if they had come through orderflow over the last `--preload-days` days
//! (each order with its status history and, for the 60 % that are paid, its
//! payment; inside the inbox's and the feed's retention windows their inbox
//! rows and feed events too, as the housekeeping would have left them), the
//! tables are vacuumed and analysed, and the same round and reads run again
//! on fresh topics. Reported: both rates, their ratio, and the reads.
//!
//! Progress is read from the worker's `orderflow_messages_total`, not by
//! counting the inbox, which would scan millions of rows every tick and
//! load the database being measured.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use orderflow_testkit::World;
use rand::Rng;

use crate::cost::STATS_FLUSH;
use crate::harness::Bench;
use crate::report::{DbWork, HttpRun, ScaleRound, SizeRun};
use crate::scale::{Batching, Tally};
use crate::{progress, Options};

/// Ids of preloaded orders are `big-<g>`, g = 1..=N, in creation order.
const PREFIX: &str = "big-";
/// Orders per preload statement, so progress shows and no single
/// transaction holds the whole load.
const CHUNK: i64 = 500_000;

impl Bench {
    /// The phase, on a fresh database and topics that replace the run's
    /// for its length (and are dropped after).
    pub async fn size(&mut self, o: &Options) -> anyhow::Result<SizeRun> {
        if let Some(mut worker) = self.worker.take() {
            worker.kill().await.context("failed to stop the worker")?;
        }
        let fresh = World::create(self.settings(), "bench", |_| {}).await?;
        progress(format!(
            "size: database orderflow_bench_{id}, topics bench-{id}-*",
            id = fresh.id
        ));
        let pool = orderflow::store::pool(&fresh.settings.database_url, 16)?;
        let outer_world = std::mem::replace(&mut self.world, fresh);
        let outer_pool = std::mem::replace(&mut self.pool, pool);
        let run = self.size_rounds(o).await;
        let stopped = self.kill_worker().await;
        std::mem::replace(&mut self.pool, outer_pool).close().await;
        drop(std::mem::replace(&mut self.world, outer_world));
        let run = run?;
        stopped?;
        Ok(run)
    }

    async fn size_rounds(&mut self, o: &Options) -> anyhow::Result<SizeRun> {
        // A first, unmeasured round and VACUUM ANALYZE, so that the empty
        // database's round runs on statistics as the preloaded one's does
        // (the preload ends with VACUUM ANALYZE): on the tables' first
        // statistics it ran about a fifth slower.
        let warm_up = (o.size_checkouts / 5).max(1_000);
        progress(format!("size: warm-up round of {warm_up} checkouts"));
        self.scale_round(1, warm_up, 99, Tally::WorkerMetrics, Batching::Bulk)
            .await?;
        sqlx::query("VACUUM ANALYZE")
            .execute(&self.pool)
            .await
            .context("VACUUM ANALYZE after the warm-up")?;
        let mut run = SizeRun {
            orders_before: self.count("SELECT count(*) FROM orders").await?,
            ..SizeRun::default()
        };
        progress(format!(
            "size: a round on {} orders, then {} more, then the round again",
            run.orders_before, o.preload_orders
        ));
        (run.before, run.work_before) = self.measured_round(o.size_checkouts, 100).await?;
        let small: Vec<String> =
            sqlx::query_scalar("SELECT order_id FROM orders ORDER BY random() LIMIT 10000")
                .fetch_all(&self.pool)
                .await?;
        run.status_reads_before = self.status_reads(o, small).await?;

        run.preload_s = self.preload(o.preload_orders, o.preload_days).await?;
        run.orders_after = run.orders_before + o.preload_orders as i64;
        run.database_mb = self
            .count("SELECT pg_database_size(current_database())")
            .await? as f64
            / 1e6;
        progress(format!(
            "  {:.0} s; the database is {:.0} MB",
            run.preload_s, run.database_mb
        ));

        (run.after, run.work_after) = self.measured_round(o.size_checkouts, 101).await?;
        let mut rng = rand::thread_rng();
        let big: Vec<String> = (0..10_000)
            .map(|_| format!("{PREFIX}{}", rng.gen_range(1..=o.preload_orders.max(1))))
            .collect();
        run.status_reads_after = self.status_reads(o, big).await?;
        run.ratio = run.after.steady_events_per_s / run.before.steady_events_per_s;
        progress(format!(
            "size: {:.0} events/s on {} orders, {:.0} on {} ({:.0} %)",
            run.before.steady_events_per_s,
            run.orders_before,
            run.after.steady_events_per_s,
            run.orders_after,
            run.ratio * 100.0
        ));
        Ok(run)
    }

    /// A one-worker round of the mix and what the database did for it. Both
    /// rounds start right after a checkpoint, so neither pays for the
    /// other's (or the preload's) dirty pages, and each logs a full-page
    /// image on its first change to a page.
    async fn measured_round(
        &mut self,
        checkouts: u64,
        round: usize,
    ) -> anyhow::Result<(ScaleRound, DbWork)> {
        sqlx::query("CHECKPOINT")
            .execute(&self.pool)
            .await
            .context("CHECKPOINT before a size round")?;
        let start = self.db_counters().await?;
        let done = self
            .scale_round(1, checkouts, round, Tally::WorkerMetrics, Batching::Bulk)
            .await?;
        // The workers are gone; the bench's own sessions flush their
        // statistics within PostgreSQL's idle interval.
        tokio::time::sleep(STATS_FLUSH).await;
        let work = self.db_counters().await?.minus(&start, done.events);
        Ok((done, work))
    }

    async fn db_counters(&self) -> anyhow::Result<DbCounters> {
        let (wal_bytes, fpi): (i64, i64) = sqlx::query_as(
            "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint, wal_fpi FROM pg_stat_wal",
        )
        .fetch_one(&self.pool)
        .await
        .context("reading pg_stat_wal")?;
        let reads: Vec<(String, i64)> = sqlx::query_as(
            "SELECT relname::text, (coalesce(heap_blks_read, 0) + coalesce(idx_blks_read, 0)
                 + coalesce(toast_blks_read, 0) + coalesce(tidx_blks_read, 0))::bigint
             FROM pg_statio_user_tables",
        )
        .fetch_all(&self.pool)
        .await
        .context("reading pg_statio_user_tables")?;
        Ok(DbCounters {
            wal_bytes,
            fpi,
            reads: reads.into_iter().collect(),
        })
    }

    /// `GET /orders/{id}/status` of `ids`, at 8 connections, by a worker of
    /// its own.
    async fn status_reads(&mut self, o: &Options, ids: Vec<String>) -> anyhow::Result<HttpRun> {
        anyhow::ensure!(!ids.is_empty(), "no orders to read");
        self.start_worker().await?;
        let addr = self.worker()?.base.trim_start_matches("http://").to_owned();
        let path = move |i: usize| format!("/orders/{}/status", ids[i % ids.len()]);
        let secs = o.http_secs.clamp(1, 5);
        let run = crate::http_load::run(&addr, secs, 8, "GET /orders/{id}/status", path).await;
        let stopped = self.kill_worker().await;
        let run = run?;
        stopped?;
        Ok(run)
    }

    /// Loads `n` orders created over the last `days` days; returns the
    /// seconds it took, VACUUM ANALYZE included.
    async fn preload(&self, n: u64, days: u64) -> anyhow::Result<f64> {
        let started = Instant::now();
        let n = n as i64;
        let span = (days.max(1) * 86_400) as f64;
        let anchor = chrono::Utc::now();
        // The start of a retention window (`None`: kept for ever).
        let retention = |d: Option<std::time::Duration>| {
            d.and_then(|d| chrono::TimeDelta::from_std(d).ok())
                .and_then(|d| anchor.checked_sub_signed(d))
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
        };
        let inbox_from = retention(self.settings().dedupe_retention);
        let feed_from = retention(Some(self.settings().streams.feed_retention));
        let mut lo = 1i64;
        while lo <= n {
            let hi = (lo + CHUNK - 1).min(n);
            for (table, statement) in PRELOAD {
                sqlx::query(statement)
                    .bind(lo)
                    .bind(hi)
                    .bind(n)
                    .bind(span)
                    .bind(anchor)
                    .bind(match table {
                        "processed_events" => inbox_from,
                        _ => feed_from,
                    })
                    .execute(&self.pool)
                    .await
                    .with_context(|| format!("preload of {table}, orders {lo}..={hi}"))?;
            }
            progress(format!(
                "  preloaded {hi} of {n} orders ({:.0} s)",
                started.elapsed().as_secs_f64()
            ));
            lo = hi + 1;
        }
        sqlx::query(
            "INSERT INTO feed_heads (user_id, seq)
             SELECT user_id, max(seq) FROM order_feed WHERE user_id >= 1000000 GROUP BY user_id
             ON CONFLICT (user_id) DO UPDATE SET seq = greatest(feed_heads.seq, excluded.seq)",
        )
        .execute(&self.pool)
        .await
        .context("preload of feed_heads")?;
        progress("  VACUUM ANALYZE");
        sqlx::query("VACUUM ANALYZE")
            .execute(&self.pool)
            .await
            .context("VACUUM ANALYZE after the preload")?;
        Ok(started.elapsed().as_secs_f64())
    }
}

/// Cumulative counters of the database's work at one instant.
struct DbCounters {
    wal_bytes: i64,
    fpi: i64,
    /// Blocks read from outside shared buffers, by table.
    reads: BTreeMap<String, i64>,
}

impl DbCounters {
    /// The work from `start` to `self`, per 1,000 of `events`.
    fn minus(&self, start: &DbCounters, events: u64) -> DbWork {
        let per_1000 = |n: i64| n as f64 * 1000.0 / events.max(1) as f64;
        let mut most_read: Vec<(String, f64)> = self
            .reads
            .iter()
            .map(|(table, n)| {
                let before = start.reads.get(table).copied().unwrap_or(0);
                (table.clone(), per_1000(n - before))
            })
            .filter(|(_, n)| *n >= 0.5)
            .collect();
        most_read.sort_by(|a, b| b.1.total_cmp(&a.1));
        let blocks_read = most_read.iter().map(|(_, n)| n).sum();
        most_read.truncate(5);
        DbWork {
            wal_kb: per_1000(self.wal_bytes - start.wal_bytes) / 1000.0,
            full_page_images: per_1000(self.fpi - start.fpi),
            blocks_read,
            most_read,
        }
    }
}

// Every statement takes the same parameters: $1..=$2 the chunk's g, $3 N,
// $4 the span in seconds, $5 now, $6 the start of the table's retention
// window. Order g was created at $5 - $4 * (1 - g / N): in id order, as
// time-ordered inserts (the BRIN indexes rely on that) would have left it.
// Users are 1,000,000 + g mod 100,000, so user u's k-th order (k = g div
// 100,000) has feed seqs 2k + 1 (created) and 2k + 2 (paid).
macro_rules! chunk {
    () => {
        " FROM generate_series($1::bigint, $2::bigint) AS g,
              LATERAL (SELECT $5::timestamptz - make_interval(secs => $4 * (1 - g::float8 / $3))
                       AS t) AS x"
    };
}

const PRELOAD: [(&str, &str); 5] = [
    (
        "orders",
        concat!(
            "INSERT INTO orders (order_id, cart_id, user_id, currency, subtotal_minor, tax_minor,
                 tax_rate_ppm, shipping_minor, total_minor, item_count, payment_method,
                 shipping_address, billing_address, checkout_event_id, checkout_occurred_at,
                 items, created_at, status, updated_at, paid_payment_id, paid_amount_minor)
             SELECT 'big-' || g, -1000000000000 - g, 1000000 + g % 100000,
                    (ARRAY['USD', 'EUR', 'JPY'])[g % 3 + 1], 2550, 185, 72500, 499, 3234, 3, 'card',
                    '{\"city\": \"Springfield\", \"state\": \"IL\", \"street\": \"1 Main Street\", \"country\": \"US\", \"zip_code\": \"62701\"}',
                    NULL,
                    'big-e' || g, t,
                    json_build_array(
                        json_build_object('line_no', 1, 'sku', 'SKU-' || g % 50, 'name', 'Thing ' || g % 50,
                            'quantity', 2, 'unit_price_minor', 1000, 'line_total_minor', 2000),
                        json_build_object('line_no', 2, 'sku', 'SKU-' || g % 7, 'name', 'Thing ' || g % 7,
                            'quantity', 1, 'unit_price_minor', 550, 'line_total_minor', 550)),
                    t, CASE WHEN g % 10 < 6 THEN 'PAID' ELSE 'PENDING_PAYMENT' END,
                    t + interval '5 minutes',
                    CASE WHEN g % 10 < 6 THEN 'big-p' || g END,
                    CASE WHEN g % 10 < 6 THEN 3234 END",
            chunk!(),
            "
             WHERE $6::timestamptz IS NOT NULL"
        ),
    ),
    (
        "order_status_changes",
        concat!(
            "INSERT INTO order_status_changes (order_id, from_status, to_status, cause_event_id, at)
             SELECT 'big-' || g, 'PENDING_PAYMENT', 'PAID', 'big-pe' || g, t + interval '5 minutes'",
            chunk!(),
            "
             WHERE g % 10 < 6 AND $6::timestamptz IS NOT NULL"
        ),
    ),
    (
        "payments",
        concat!(
            "INSERT INTO payments (payment_id, status, order_id, amount_minor, currency, provider,
                 disposition, event_id, occurred_at, recorded_at)
             SELECT 'big-p' || g, 'CONFIRMED', 'big-' || g, 3234,
                    (ARRAY['USD', 'EUR', 'JPY'])[g % 3 + 1], 'bench', 'PAID', 'big-pe' || g,
                    t + interval '5 minutes', t + interval '5 minutes'",
            chunk!(),
            "
             WHERE g % 10 < 6 AND $6::timestamptz IS NOT NULL"
        ),
    ),
    // Event ids are UUIDs, as upstream's are, so the live rounds' random ids
    // land among the preloaded ones in the inbox's primary key (not after
    // them, as text ids of one prefix would).
    (
        "processed_events",
        concat!(
            "INSERT INTO processed_events (source, event_id, order_id, outcome, processed_at)
             SELECT s.source, md5(s.prefix || g)::uuid::text, 'big-' || g, 'applied', t + s.after",
            chunk!(),
            ",
                  LATERAL (VALUES ('checkout', 'big-e', interval '0'),
                                  ('payment', 'big-pe', interval '5 minutes'))
                      AS s(source, prefix, after)
             WHERE (s.source = 'checkout' OR g % 10 < 6) AND t >= $6"
        ),
    ),
    (
        "order_feed",
        concat!(
            "INSERT INTO order_feed (user_id, seq, order_id, event_type, body, created_at)
             SELECT 1000000 + g % 100000, 2 * (g / 100000) + s.n, 'big-' || g, s.event_type,
                    json_build_object('event_id', 'big-oe' || s.n || '-' || g,
                        'event_type', s.event_type, 'order_id', 'big-' || g,
                        'occurred_at', t + s.after, 'user_id', 1000000 + g % 100000,
                        'cart_id', -1000000000000 - g, 'status', s.status,
                        'currency', (ARRAY['USD', 'EUR', 'JPY'])[g % 3 + 1],
                        'subtotal_minor', 2550, 'tax_minor', 185, 'shipping_minor', 499,
                        'total_minor', 3234,
                        'items', CASE WHEN s.n = 1 THEN json_build_array(
                            json_build_object('line_no', 1, 'sku', 'SKU-' || g % 50,
                                'name', 'Thing ' || g % 50, 'quantity', 2,
                                'unit_price_minor', 1000, 'line_total_minor', 2000),
                            json_build_object('line_no', 2, 'sku', 'SKU-' || g % 7,
                                'name', 'Thing ' || g % 7, 'quantity', 1,
                                'unit_price_minor', 550, 'line_total_minor', 550)) END),
                    t + s.after",
            chunk!(),
            ",
                  LATERAL (VALUES (1, 'OrderCreated', 'PENDING_PAYMENT', interval '0'),
                                  (2, 'OrderPaid', 'PAID', interval '5 minutes'))
                      AS s(n, event_type, status, after)
             WHERE (s.n = 1 OR g % 10 < 6) AND t >= $6"
        ),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_uses_every_parameter_it_is_given() {
        // sqlx sends six parameters to each; PostgreSQL refuses a statement
        // that leaves one untyped, so each must name $1..=$6.
        for (table, statement) in PRELOAD {
            for p in 1..=6 {
                assert!(
                    statement.contains(&format!("${p}")),
                    "{table}'s statement does not use ${p}"
                );
            }
        }
    }
}
