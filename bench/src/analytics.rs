//! The analytics phase: what the analytics loop costs the write path
//! (bursts of the mix with and without it, alternated so drift cancels),
//! its own rate (replaying the throughput phase's order-events into empty
//! rollups, a fresh group), and the analytics routes and rebuild with a
//! million orders in the database.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use orderflow::config::Topics;
use orderflow_testkit::{prom, Worker};

use crate::harness::Bench;
use crate::report::Report;
use crate::{progress, Options};

/// Every component but the analytics loop.
const WITHOUT_ANALYTICS: &str = "checkouts,payment-confirmations,cancellations,relay,http";

/// Time for a restarted worker's groups to settle before a burst.
const SETTLE: Duration = Duration::from_secs(8);

impl Bench {
    pub async fn analytics(
        &mut self,
        o: &Options,
        report: &mut Report,
        throughput_topics: &Topics,
        throughput_order_events: i64,
    ) -> anyhow::Result<()> {
        if o.analytics_checkouts > 0 {
            self.analytics_cost(o, report).await?;
        }
        self.analytics_replay(report, throughput_topics, throughput_order_events)
            .await?;
        self.analytics_reads(o, report).await
    }

    /// Bursts without and with the analytics loop, alternated,
    /// `--analytics-rounds` times each.
    async fn analytics_cost(&mut self, o: &Options, report: &mut Report) -> anyhow::Result<()> {
        let (mut without, mut with) = (Vec::new(), Vec::new());
        let (mut cpu_without, mut cpu_with) = (Vec::new(), Vec::new());
        let mut trailing = Vec::new();
        let rounds = (0..2 * o.analytics_rounds).map(|round| (round, round % 2 == 1));
        for (round, analytics) in rounds {
            let args: &[&str] = if analytics {
                &[]
            } else {
                &["--only", WITHOUT_ANALYTICS]
            };
            self.restart_worker(args).await?;
            tokio::time::sleep(SETTLE).await;
            if analytics {
                // What the previous burst published without the loop is
                // counted first, so the burst measures its own work only.
                self.wait_analytics_caught_up(Duration::from_secs(300))
                    .await?;
            }
            let pid = self.worker()?.pid();
            let before = self.order_events_progress().await?;
            let cpu_before = crate::cpu::now(pid);
            let events_before = self.count("SELECT count(*) FROM processed_events").await?;
            let rate = self
                .burst(
                    o.analytics_checkouts,
                    &format!("an{round}"),
                    2_000_000_000_000 + round as i64 * 10_000_000_000,
                )
                .await?;
            let events =
                (self.count("SELECT count(*) FROM processed_events").await? - events_before) as u64;
            // The CPU of the burst's whole work: until its order events are
            // published and, with the loop, counted (the loop may trail the
            // inputs by its linger).
            let trailed = self.wait_burst_done(analytics, before).await?;
            let cpu = (crate::cpu::now(pid) - cpu_before).per_thousand(events);
            if analytics {
                trailing.push(trailed);
            }
            if analytics {
                &mut cpu_with
            } else {
                &mut cpu_without
            }
            .push(cpu);
            progress(format!(
                "analytics: burst {} of {} checkouts {} the loop: {rate:.0} events/s; CPU ms per 1,000 events: {cpu:.0?}",
                round + 1,
                o.analytics_checkouts,
                if analytics { "with" } else { "without" }
            ));
            if analytics { &mut with } else { &mut without }.push(rate);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        report.analytics_throughput_without = mean(&without);
        report.analytics_throughput_with = mean(&with);
        report.analytics_burst_trailing_s = trailing.iter().copied().fold(0.0, f64::max);
        report.analytics_rounds = o.analytics_rounds;
        let mean_cpu = |v: &[crate::cpu::CpuTimes]| {
            let n = v.len().max(1) as f64;
            let sum = v.iter().fold(crate::cpu::CpuTimes::default(), |a, c| {
                crate::cpu::CpuTimes {
                    worker: a.worker + c.worker / n,
                    postgres: a.postgres + c.postgres / n,
                    broker: a.broker + c.broker / n,
                    machine: a.machine + c.machine / n,
                }
            });
            sum
        };
        report.analytics_cpu_without = Some(mean_cpu(&cpu_without));
        report.analytics_cpu_with = Some(mean_cpu(&cpu_with));
        Ok(())
    }

    /// The throughput phase's order-events, read again by an analytics-only
    /// worker in a fresh group into emptied rollups.
    async fn analytics_replay(
        &mut self,
        report: &mut Report,
        topics: &Topics,
        expected: i64,
    ) -> anyhow::Result<()> {
        self.stop_worker().await?;
        sqlx::query(
            "TRUNCATE analytics_claims, analytics_daily, analytics_time_to_pay, analytics_products",
        )
        .execute(&self.pool)
        .await?;
        progress(format!(
            "analytics: replaying {expected} order events of the throughput phase (analytics only, fresh group)"
        ));
        let group = format!("{}-replay", self.settings().group_id);
        let env = [
            ("KAFKA_GROUP_ID", group.as_str()),
            ("TOPIC_ORDER_EVENTS", topics.order_events.as_str()),
        ];
        self.worker = Some(
            Worker::spawn_with_args(
                &self.binary,
                self.settings(),
                &env,
                &["--only", "analytics,http"],
                Stdio::inherit(),
            )
            .await?,
        );
        let mut first: Option<(Instant, i64)> = None;
        let started = Instant::now();
        loop {
            let seen = self
                .count("SELECT coalesce(sum(n), 0)::bigint FROM analytics_claims")
                .await?;
            if first.is_none() && seen > 0 {
                first = Some((Instant::now(), seen));
            }
            if seen >= expected {
                let (at, base) = first.unwrap_or((started, 0));
                report.analytics_replay_events = expected;
                report.analytics_events_per_s =
                    (expected - base) as f64 / at.elapsed().as_secs_f64();
                break;
            }
            if started.elapsed() > Duration::from_secs(900) {
                bail!("the analytics replay did not finish in 15 minutes: {seen} of {expected}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        progress(format!("  {:.0} events/s", report.analytics_events_per_s));
        self.stop_worker().await
    }

    /// Orders up to `--analytics-orders`, spread over 90 days, a timed
    /// rebuild, then the two routes under load.
    async fn analytics_reads(&mut self, o: &Options, report: &mut Report) -> anyhow::Result<()> {
        let have = self.count("SELECT count(*) FROM orders").await?;
        let add = (o.analytics_orders as i64 - have).max(0);
        progress(format!(
            "analytics: adding {add} orders over 90 days (to {} in all)",
            have + add
        ));
        let started = Instant::now();
        for statement in PRELOAD {
            sqlx::query(statement)
                .bind(add)
                .execute(&self.pool)
                .await
                .with_context(|| format!("preload: {statement}"))?;
        }
        sqlx::query("ANALYZE").execute(&self.pool).await?;
        progress(format!("  in {:.0} s", started.elapsed().as_secs_f64()));
        report.analytics_orders = self.count("SELECT count(*) FROM orders").await?;
        let started = Instant::now();
        let rebuilt = orderflow::store::analytics::rebuild(&self.pool, None).await?;
        report.analytics_rebuild_s = started.elapsed().as_secs_f64();
        progress(format!(
            "  rebuild of {} orders: {:.1} s ({rebuilt:?})",
            report.analytics_orders, report.analytics_rebuild_s
        ));
        self.restart_worker(&[]).await?;
        let addr = self.worker()?.base.trim_start_matches("http://").to_owned();
        let today = chrono::Utc::now().date_naive();
        let routes = [
            ("GET /analytics/summary (30 days)", 29),
            ("GET /analytics/daily (90 days)", 89),
        ];
        for (route, span) in routes {
            let from = today - chrono::TimeDelta::days(span);
            let kind = if span == 29 { "summary" } else { "daily" };
            let path = move |i: usize| {
                let currency = ["USD", "EUR", "JPY"][i % 3];
                format!("/analytics/{kind}?from={from}&to={today}&currency={currency}")
            };
            let run = crate::http_load::run(&addr, o.http_secs, 8, route, path).await?;
            report.http.push(run);
        }
        Ok(())
    }

    /// Waits until the analytics loop has counted every order event of the
    /// feed; returns how long that took, `None` past `limit`.
    pub async fn wait_analytics_caught_up(&self, limit: Duration) -> anyhow::Result<Option<f64>> {
        let started = Instant::now();
        loop {
            let feed = self.count("SELECT count(*) FROM order_feed").await?;
            let seen = self
                .count("SELECT coalesce(sum(n), 0)::bigint FROM analytics_claims")
                .await?;
            if seen >= feed {
                return Ok(Some(started.elapsed().as_secs_f64()));
            }
            if started.elapsed() > limit {
                progress(format!(
                    "analytics still {} events behind after {} s",
                    feed - seen,
                    limit.as_secs()
                ));
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// From one read of the worker's metrics: the outbox backlog, and the
    /// `order-events` records its relay published and its analytics loop
    /// handled so far.
    pub(crate) async fn order_events_progress(&self) -> anyhow::Result<Progress> {
        let page = self.worker()?.metrics_page().await?;
        let topic = [("topic", self.settings().topics.order_events.as_str())];
        Ok(Progress {
            backlog: prom::sum(&page, "orderflow_outbox_backlog", &[]),
            published: prom::sum(&page, "orderflow_outbox_published_total", &topic),
            counted: prom::sum(&page, "orderflow_messages_total", &topic),
        })
    }

    /// Waits until the outbox is empty and, `with_loop`, until the loop has
    /// handled every record published since the burst began; returns how
    /// long that took after the inputs were committed. Reads the worker's
    /// metrics, not the tables (counting those would load PostgreSQL).
    pub(crate) async fn wait_burst_done(
        &self,
        with_loop: bool,
        before: Progress,
    ) -> anyhow::Result<f64> {
        let started = Instant::now();
        loop {
            let now = self.order_events_progress().await?;
            let backlog = now.backlog;
            let published = now.published - before.published;
            let counted = now.counted - before.counted;
            if backlog == 0.0 && (!with_loop || counted >= published) {
                return Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("order events of the burst still unpublished or uncounted after 5 minutes: backlog {backlog}, published {published}, counted {counted}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn restart_worker(&mut self, args: &[&str]) -> anyhow::Result<()> {
        self.stop_worker().await?;
        self.worker = Some(
            Worker::spawn_with_args(&self.binary, self.settings(), &[], args, Stdio::inherit())
                .await?,
        );
        Ok(())
    }

    async fn stop_worker(&mut self) -> anyhow::Result<()> {
        if let Some(worker) = self.worker.take() {
            worker
                .terminate()
                .await
                .context("failed to stop the worker")?;
        }
        Ok(())
    }

    pub async fn count(&self, query: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(query).fetch_one(&self.pool).await?)
    }
}
/// `$1` orders, ids `pre-<n>`, created over the last 90 days in three
/// currencies, two lines each; 60 % paid within ten minutes.
const PRELOAD: [&str; 2] = [
    "INSERT INTO orders (order_id, cart_id, user_id, status, currency, subtotal_minor, tax_minor,
         tax_rate_ppm, shipping_minor, total_minor, item_count, payment_method, shipping_address,
         billing_address, checkout_event_id, checkout_occurred_at, items, paid_payment_id,
         paid_amount_minor, created_at, updated_at)
     SELECT 'pre-' || g, -g, g % 100000,
            CASE WHEN g % 10 < 6 THEN 'PAID' ELSE 'PENDING_PAYMENT' END,
            (ARRAY['USD', 'EUR', 'JPY'])[g % 3 + 1], 2550, 185, 72500, 499, 3234, 3, 'card',
            '{}', '{}', 'pre-e' || g, t,
            json_build_array(
                json_build_object('line_no', 1, 'sku', 'SKU-' || g % 50, 'name', 'Thing ' || g % 50,
                    'quantity', 2, 'unit_price_minor', 1000, 'line_total_minor', 2000),
                json_build_object('line_no', 2, 'sku', 'SKU-' || g % 7, 'name', 'Thing ' || g % 7,
                    'quantity', 1, 'unit_price_minor', 550, 'line_total_minor', 550)),
            CASE WHEN g % 10 < 6 THEN 'pre-p' || g END, CASE WHEN g % 10 < 6 THEN 3234 END, t, t
     FROM generate_series(1, $1) AS g,
          LATERAL (SELECT now() - (g % 90) * interval '1 day' - (g % 86399) * interval '1 second' AS t) AS x",
    "INSERT INTO order_status_changes (order_id, from_status, to_status, cause_event_id, at)
     SELECT order_id, 'PENDING_PAYMENT', 'PAID', 'pre-pe' || order_id,
            created_at + (length(order_id) * 37 % 600) * interval '1 second'
     FROM orders WHERE order_id LIKE 'pre-%' AND status = 'PAID' AND $1 >= 0",
];

/// Where the worker's outbox and analytics loop stand, from its metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    backlog: f64,
    published: f64,
    counted: f64,
}
