//! The run: a fresh world, the baselines, then the worker under each phase's
//! load, measured from outside (the database, its `/metrics`, /proc).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use orderflow::config::{Settings, Topics};
use orderflow::store::pricing_tables::PricingTables;
use orderflow_testkit::prom::{self, Histogram};
use orderflow_testkit::{Worker, World};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

use crate::report::{percentile, Report};
use crate::{progress, Options};

/// The worker's occurred_at → commit histogram.
const END_TO_END: &str = "orderflow_end_to_end_latency_seconds";
/// The worker's apply + commit time of each batch.
const BATCH_DURATION: &str = "orderflow_batch_duration_seconds";
/// How long a batch's oldest message waited in the worker's loop.
const BATCH_WAIT: &str = "orderflow_batch_wait_seconds";

/// Everything one bench run needs, on fresh names.
pub struct Bench {
    pub world: World,
    pub pool: PgPool,
    /// Bulk loading: long linger, big batches.
    pub producer: FutureProducer,
    /// Single events (the latency phases, the naive baseline): the worker's
    /// own producer defaults, as an upstream service would send them.
    pub latency_producer: FutureProducer,
    pub worker: Option<Worker>,
    pub(crate) binary: std::path::PathBuf,
    /// The fresh database's tax and shipping tables, to pay the right totals.
    pub tables: PricingTables,
    /// (payments, cancellations) per checkout.
    pub ratios: (f64, f64),
    /// Customers the generated checkouts are spread over.
    pub users: i64,
}

/// The whole run. A phase that fails ends it, but what the phases before it
/// measured is returned with the error (a full run takes half an hour).
pub async fn run(
    base: &Settings,
    options: &Options,
    binary: &Path,
) -> anyhow::Result<(Report, anyhow::Result<()>)> {
    let world = World::create(base, "bench", |_| {}).await?;
    progress(format!(
        "database orderflow_bench_{id}, topics bench-{id}-*",
        id = world.id
    ));
    let settings = &world.settings;
    let pool = orderflow::store::pool(&settings.database_url, 16)?;
    let mut bulk = orderflow::kafka::producer_config(settings);
    bulk.set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4");
    let producer: FutureProducer = bulk.create().context("bench producer")?;
    let latency_producer = orderflow::produce::producer(settings)?;
    let tables = {
        let mut conn = pool.acquire().await?;
        PricingTables::load(&mut conn, settings.default_tax_rate_ppm).await?
    };
    let mut bench = Bench {
        world,
        pool,
        producer,
        latency_producer,
        worker: None,
        binary: binary.to_owned(),
        tables,
        ratios: (options.payment_ratio, options.cancellation_ratio),
        users: options.users,
    };
    let mut report = Report {
        checkouts: options.checkouts,
        latency_rate_per_s: options.latency_rate,
        ..Report::default()
    };
    let result = bench.measure(options, &mut report).await;
    if let Some(mut worker) = bench.worker.take() {
        let _ = worker.kill().await;
    }
    bench.pool.close().await;
    Ok((report, result))
}

impl Bench {
    pub fn settings(&self) -> &Settings {
        &self.world.settings
    }

    async fn measure(&mut self, o: &Options, report: &mut Report) -> anyhow::Result<()> {
        self.baselines(o, report).await?;
        let mut peak = self.throughput(o, report).await?;
        let throughput_topics = self.settings().topics.clone();
        let order_events = self.count("SELECT count(*) FROM order_feed").await?;
        peak = peak.max(self.rss_mb().1);
        self.latency(o, report).await?;
        peak = peak.max(self.rss_mb().0);
        self.http(o, report).await?;
        if o.cost_events > 0 {
            report.cost = self.cost(o.cost_events).await?;
        }
        let (now, hwm) = self.rss_mb();
        report.worker_rss_end_mb = now;
        report.worker_peak_rss_mb = peak.max(hwm);
        if o.sse_subscribers > 0 {
            self.streams(o, report).await?;
        }
        if o.analytics {
            self.analytics(o, report, &throughput_topics, order_events)
                .await?;
        }
        if o.relay_rows > 0 && !o.relay_instances.is_empty() {
            report.relay = self.relay_scaling(o.relay_rows, &o.relay_instances).await?;
        }
        if !o.instances.is_empty() {
            (report.scale, report.churn) = self.scale_out(o).await?;
        }
        if o.preload_orders > 0 {
            report.size = Some(self.size(o).await?);
        }
        Ok(())
    }

    /// The database ceiling and the naive design, on rows of their own, with
    /// the same handler code as the worker.
    async fn baselines(&self, o: &Options, report: &mut Report) -> anyhow::Result<()> {
        progress(format!(
            "baseline: database ceiling ({} checkouts with their payments and cancellations, batches of {}, no Kafka)",
            o.baseline_events,
            self.settings().batch_max_messages
        ));
        (
            report.db_ceiling_checkouts_per_s,
            report.db_ceiling_events_per_s,
        ) = self.db_ceiling(o.baseline_events).await?;
        progress(format!(
            "  {:.0} events/s ({:.0} checkouts/s)",
            report.db_ceiling_events_per_s, report.db_ceiling_checkouts_per_s
        ));
        let naive_n = (o.baseline_events / 5).max(200);
        progress(format!(
            "baseline: naive design ({naive_n} checkouts, one transaction + one synchronous produce each)"
        ));
        report.naive_checkouts_per_s = self.naive(naive_n).await?;
        progress(format!("  {:.0} checkouts/s", report.naive_checkouts_per_s));
        Ok(())
    }

    /// Produces the whole mix, then starts the worker and times it to the
    /// last commit. Returns the peak RSS seen.
    async fn throughput(&mut self, o: &Options, report: &mut Report) -> anyhow::Result<f64> {
        let total = self.produce_mix(o.checkouts).await?;
        report.total_events = total;
        let already = self.processed().await?;
        progress(format!("produced {total} events; starting the worker"));
        self.start_worker().await?;
        let started = Instant::now();
        let target = already + total as i64;
        let mut last_report = Instant::now();
        let mut peak = 0.0f64;
        loop {
            let done = self.processed().await?;
            peak = peak.max(self.rss_mb().0);
            if last_report.elapsed() > Duration::from_secs(3) {
                progress(format!(
                    "throughput: {} / {total} committed, {:.0} events/s, RSS {:.0} MB ({})",
                    done - already,
                    (done - already) as f64 / started.elapsed().as_secs_f64(),
                    self.rss_mb().0,
                    self.handled_by_topic().await.unwrap_or_default()
                ));
                last_report = Instant::now();
            }
            if done >= target {
                break;
            }
            if started.elapsed() > Duration::from_secs(1800) {
                bail!("throughput phase did not finish in 30 minutes");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        report.throughput_events_per_s = total as f64 / elapsed;
        report.throughput_checkouts_per_s = o.checkouts as f64 / elapsed;
        while orderflow::store::outbox::backlog(&self.pool).await?.0 > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        report.outbox_drained_s = started.elapsed().as_secs_f64();
        // The analytics loop (part of a plain `run`) counts every order
        // event once; how long after the outbox drained it has.
        report.analytics_caught_up_s = self
            .wait_analytics_caught_up(Duration::from_secs(120))
            .await?;
        progress(format!(
            "throughput: {:.0} events/s; outbox drained after {:.1} s; analytics caught up {:?} s later",
            report.throughput_events_per_s, report.outbox_drained_s, report.analytics_caught_up_s
        ));
        report.worker_rss_after_throughput_mb = self.rss_mb().0;
        report.mean_batch_size = self.mean_batch_sizes().await.unwrap_or_default();
        progress(format!(
            "mean batch size by topic: {:?}",
            report.mean_batch_size
        ));
        report.ratio_to_db_ceiling =
            report.throughput_events_per_s / report.db_ceiling_events_per_s;
        report.ratio_to_naive = report.throughput_checkouts_per_s / report.naive_checkouts_per_s;
        Ok(peak)
    }

    /// Latency at a fixed rate, by a new worker on fresh topics over the
    /// same (now full) database. Tansu's fetches cost more the more a topic
    /// holds (docs/tansu.md); Kafka's do not, and measuring on the
    /// 390,000-message topics would measure that instead of orderflow.
    async fn latency(&mut self, o: &Options, report: &mut Report) -> anyhow::Result<()> {
        if let Some(mut worker) = self.worker.take() {
            worker.kill().await.context("failed to stop the worker")?;
        }
        self.world.fresh_topics("bench", "latency").await?;
        progress("worker restarted on fresh topics");
        self.start_worker().await?;
        progress(format!(
            "latency: {} checkouts/s for {} s",
            o.latency_rate, o.latency_secs
        ));
        // Measured by the worker itself after each commit (occurred_at →
        // commit), as the difference of its histogram across the phase.
        let before = self.checkout_histogram(END_TO_END).await?;
        let batches_before = self.checkout_histogram(BATCH_DURATION).await?;
        let waits_before = self.checkout_histogram(BATCH_WAIT).await?;
        let watch = self
            .watch_checkouts(o.latency_rate * o.latency_secs, o.latency_secs)
            .await?;
        let n = self.produce_at_rate(o.latency_rate, o.latency_secs).await?;
        report.latency_events = n;
        let waited = Instant::now();
        let latencies = loop {
            let h = self.checkout_histogram(END_TO_END).await?.minus(&before);
            if h.count() >= n {
                break h;
            }
            if waited.elapsed() > Duration::from_secs(120) {
                bail!(
                    "latency phase did not finish: {} of {n} committed",
                    h.count()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let ms = |q| latencies.quantile(q) * 1000.0;
        (
            report.latency_p50_ms,
            report.latency_p95_ms,
            report.latency_p99_ms,
            report.latency_p999_ms,
            report.latency_max_ms,
        ) = (ms(0.5), ms(0.95), ms(0.99), ms(0.999), ms(1.0));
        let batches = self
            .checkout_histogram(BATCH_DURATION)
            .await?
            .minus(&batches_before);
        report.latency_batches = batches.count();
        (report.latency_batch_p50_ms, report.latency_batch_p99_ms) = (
            batches.quantile(0.5) * 1000.0,
            batches.quantile(0.99) * 1000.0,
        );
        let waits = self
            .checkout_histogram(BATCH_WAIT)
            .await?
            .minus(&waits_before);
        (report.latency_wait_p50_ms, report.latency_wait_p99_ms) =
            (waits.quantile(0.5) * 1000.0, waits.quantile(0.99) * 1000.0);
        let watched = watch.await.context("the checkouts' watcher panicked")?;
        (report.broker_loaded_p50_ms, report.broker_loaded_p99_ms) =
            (percentile(&watched, 0.5), percentile(&watched, 0.99));
        progress("latency floor: the broker alone (produce → consume, no orderflow), 5 s");
        let one = Topics::dlq(&self.settings().topics.payment_confirmations);
        (report.broker_floor_p50_ms, report.broker_floor_p99_ms) =
            self.broker_floor(&one, o.latency_rate, 5).await?;
        progress(format!(
            "  p50 {:.1} ms, p99 {:.1} ms",
            report.broker_floor_p50_ms, report.broker_floor_p99_ms
        ));
        let like_checkouts = self.checkouts_like_topic().await?;
        (report.broker_floor6_p50_ms, report.broker_floor6_p99_ms) = self
            .broker_floor(&like_checkouts, o.latency_rate, 5)
            .await?;
        progress(format!(
            "  on a topic shaped like checkouts: p50 {:.1} ms, p99 {:.1} ms",
            report.broker_floor6_p50_ms, report.broker_floor6_p99_ms
        ));
        Ok(())
    }

    /// Each read route at each concurrency level.
    async fn http(&self, o: &Options, report: &mut Report) -> anyhow::Result<()> {
        let order_ids: Vec<String> =
            sqlx::query_scalar("SELECT order_id FROM orders ORDER BY random() LIMIT 10000")
                .fetch_all(&self.pool)
                .await?;
        let ids = Arc::new(order_ids);
        let addr = self.worker()?.base.trim_start_matches("http://").to_owned();
        for &connections in &o.http_concurrency {
            let ids = ids.clone();
            let path = move |i: usize| format!("/orders/{}/status", ids[i % ids.len()]);
            let run = crate::http_load::run(
                &addr,
                o.http_secs,
                connections,
                "GET /orders/{id}/status",
                path,
            )
            .await?;
            report.http.push(run);
        }
        // Users with orders, as often as they have orders (with the sample's
        // 20 users, each with thousands of orders, every one of them).
        let user_ids: Vec<i64> =
            sqlx::query_scalar("SELECT user_id FROM orders ORDER BY random() LIMIT 10000")
                .fetch_all(&self.pool)
                .await?;
        anyhow::ensure!(!user_ids.is_empty(), "no users with orders to read");
        let users = Arc::new(user_ids);
        for &connections in &o.http_concurrency {
            let users = users.clone();
            let path = move |i: usize| format!("/users/{}/orders?limit=20", users[i % users.len()]);
            let run = crate::http_load::run(
                &addr,
                o.http_secs,
                connections,
                "GET /users/{id}/orders",
                path,
            )
            .await?;
            report.http.push(run);
        }
        Ok(())
    }

    pub(crate) async fn start_worker(&mut self) -> anyhow::Result<()> {
        self.worker = Some(Worker::spawn(&self.binary, self.settings(), &[]).await?);
        Ok(())
    }

    /// Kills `workers` (those still running) and frees their relay leases
    /// and memberships, which would hold the next round's shards until they
    /// expired.
    pub(crate) async fn kill_workers(&self, workers: Vec<Worker>) -> anyhow::Result<()> {
        for mut worker in workers {
            if worker.pid().is_some() {
                worker.kill().await?;
            }
        }
        for table in ["relay_leases", "relay_members"] {
            sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Kills the run's own worker, if one is running, as [`Bench::kill_workers`].
    pub(crate) async fn kill_worker(&mut self) -> anyhow::Result<()> {
        match self.worker.take() {
            Some(worker) => self.kill_workers(vec![worker]).await,
            None => Ok(()),
        }
    }

    pub(crate) fn worker(&self) -> anyhow::Result<&Worker> {
        self.worker.as_ref().context("no worker running")
    }

    /// (current RSS, peak RSS) of the worker in MB.
    fn rss_mb(&self) -> (f64, f64) {
        self.worker.as_ref().map_or((0.0, 0.0), Worker::rss_mb)
    }

    pub(crate) async fn processed(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM processed_events")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Messages handled so far by topic, from the worker's counters.
    async fn handled_by_topic(&self) -> anyhow::Result<String> {
        let page = self.worker()?.metrics_page().await?;
        let mut by_topic = std::collections::BTreeMap::<&str, f64>::new();
        for (labels, value) in prom::samples(&page, "orderflow_messages_total") {
            if let Some(topic) = prom::label(labels, "topic") {
                *by_topic
                    .entry(crate::report::short_topic(topic))
                    .or_default() += value;
            }
        }
        Ok(by_topic
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", "))
    }

    /// Mean messages per batch by topic, from the worker's histogram.
    async fn mean_batch_sizes(&self) -> anyhow::Result<Vec<(String, f64)>> {
        let page = self.worker()?.metrics_page().await?;
        let by_topic = |name| -> Vec<(&str, f64)> {
            prom::samples(&page, name)
                .filter_map(|(labels, v)| Some((prom::label(labels, "topic")?, v)))
                .collect()
        };
        let counts = by_topic("orderflow_batch_size_messages_count");
        Ok(by_topic("orderflow_batch_size_messages_sum")
            .into_iter()
            .filter_map(|(t, sum)| {
                let count = counts.iter().find(|(c, _)| *c == t)?.1;
                Some((t.to_owned(), (sum / count * 10.0).round() / 10.0))
            })
            .collect())
    }

    /// One of the worker's histograms ([`END_TO_END`], [`BATCH_DURATION`],
    /// [`BATCH_WAIT`]), its checkouts series.
    async fn checkout_histogram(&self, metric: &str) -> anyhow::Result<Histogram> {
        Ok(Histogram::parse(
            &self.worker()?.metrics_page().await?,
            metric,
            &self.settings().topics.checkouts,
        ))
    }
}
