//! `orderflow bench`: throughput, latency, HTTP and memory of the real worker,
//! with the database ceiling and a naive design measured in the same run so
//! machine noise cancels out in the ratios.
//!
//! It creates a fresh database and fresh topics, runs `orderflow run` as a
//! child process (so its RSS is the worker's alone), and drops the database
//! at the end. Run it from a release build: `cargo run --release -- bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::Rng;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use serde::Serialize;
use sqlx::PgPool;

use crate::config::{Settings, Topics};
use crate::events::{
    Cancellation, CheckoutEvent, Codec, PaymentConfirmation, PaymentStatus, RequestedBy,
};
use crate::produce::{enqueue, InFlight};
use crate::store::pricing_tables::PricingTables;
use crate::workers::checkout::CheckoutHandler;
use crate::workers::emit::Emitter;
use crate::workers::lifecycle::{Input, Lifecycle, LifecycleHandler};
use crate::workers::Handler;

/// `orderflow bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Checkouts for the throughput phase (payments and cancellations are added).
    #[arg(long, default_value_t = 200_000)]
    pub checkouts: u64,
    /// Payments per checkout in the throughput phase's mix.
    #[arg(long, default_value_t = 0.9)]
    pub payment_ratio: f64,
    /// Cancellations per checkout in the throughput phase's mix.
    #[arg(long, default_value_t = 0.05)]
    pub cancellation_ratio: f64,
    /// Checkouts per second in the latency phase.
    #[arg(long, default_value_t = 1_000)]
    pub latency_rate: u64,
    /// Length of the latency phase, seconds.
    #[arg(long, default_value_t = 60)]
    pub latency_secs: u64,
    /// Length of each HTTP phase, seconds.
    #[arg(long, default_value_t = 10)]
    pub http_secs: u64,
    /// Concurrent HTTP connections; each route is measured at each level.
    #[arg(long, value_delimiter = ',', default_value = "8,32,64")]
    pub http_concurrency: Vec<usize>,
    /// Checkouts for the database-ceiling baseline (the naive one uses a fifth).
    #[arg(long, default_value_t = 20_000)]
    pub baseline_events: u64,
    /// Print the result as JSON as well.
    #[arg(long)]
    pub json: bool,
    /// The orderflow binary to run as the worker (default: this one), to
    /// compare two builds under the same harness.
    #[arg(long)]
    pub worker: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checkouts: u64,
    pub total_events: u64,
    pub throughput_events_per_s: f64,
    pub throughput_checkouts_per_s: f64,
    pub outbox_drained_s: f64,
    pub db_ceiling_checkouts_per_s: f64,
    /// The same mix of events as the throughput phase.
    pub db_ceiling_events_per_s: f64,
    pub naive_checkouts_per_s: f64,
    pub ratio_to_db_ceiling: f64,
    pub ratio_to_naive: f64,
    pub latency_rate_per_s: u64,
    pub latency_events: u64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// Produce → consume through the broker alone at the same rate.
    pub broker_floor_p50_ms: f64,
    pub broker_floor_p99_ms: f64,
    /// Each route at each concurrency level.
    pub http: Vec<HttpRun>,
    pub worker_peak_rss_mb: f64,
    pub worker_rss_after_throughput_mb: f64,
    pub worker_rss_end_mb: f64,
    /// Messages per committed transaction in the throughput phase, by topic.
    pub mean_batch_size: Vec<(String, f64)>,
}

/// One route under closed-loop load: `connections` clients, each sending its
/// next request as soon as the last is answered.
#[derive(Debug, Default, Serialize)]
pub struct HttpRun {
    pub route: String,
    pub connections: usize,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

/// Everything one bench run needs, on fresh names.
struct Bench {
    /// Names this run's database, topics and groups.
    id: String,
    settings: Settings,
    pool: PgPool,
    /// Bulk loading: long linger, big batches.
    producer: FutureProducer,
    /// Single events (the latency phases, the naive baseline): the worker's
    /// own producer defaults, as an upstream service would send them.
    latency_producer: FutureProducer,
    worker: Option<tokio::process::Child>,
    http: String,
    /// For the worker's /readyz and /metrics (the load phases use `HttpConn`).
    client: reqwest::Client,
    /// The fresh database's tax and shipping tables, to pay the right totals.
    tables: PricingTables,
    /// (payments, cancellations) per checkout.
    ratios: (f64, f64),
}

pub async fn run(base: &Settings, options: &BenchOptions) -> anyhow::Result<Report> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let mut settings = base.clone();
    let server = base
        .database_url
        .rsplit_once('/')
        .map(|(s, _)| s.to_owned())
        .context("DATABASE_URL has no database")?;
    settings.database_url = format!("{server}/orderflow_bench_{id}");
    settings.topics = Topics::prefixed(&format!("bench-{id}-"));
    settings.group_id = format!("orderflow-bench-{id}");
    progress(format!(
        "database orderflow_bench_{id}, topics bench-{id}-*"
    ));
    crate::store::migrate(&settings.database_url).await?;
    create_topics(&settings).await?;
    let pool = crate::store::pool(&settings.database_url, 16)?;
    let mut producer_config = crate::kafka::producer_config(&settings);
    producer_config
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4");
    let producer: FutureProducer = producer_config.create().context("bench producer")?;
    let latency_producer: FutureProducer = crate::kafka::producer_config(&settings)
        .create()
        .context("bench latency producer")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let tables = {
        let mut conn = pool.acquire().await?;
        PricingTables::load(&mut conn, settings.default_tax_rate_ppm).await?
    };
    for (name, ratio) in [
        ("--payment-ratio", options.payment_ratio),
        ("--cancellation-ratio", options.cancellation_ratio),
    ] {
        if !(0.0..=1.0).contains(&ratio) {
            bail!("{name} must be between 0 and 1, not {ratio}");
        }
    }
    let mut bench = Bench {
        id,
        tables,
        ratios: (options.payment_ratio, options.cancellation_ratio),
        settings,
        pool,
        producer,
        latency_producer,
        worker: None,
        http: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::new(),
    };
    let result = bench.measure(options, port).await;
    if let Some(mut w) = bench.worker.take() {
        let _ = w.kill().await;
    }
    bench.pool.close().await;
    crate::store::drop_database(&bench.settings.database_url)
        .await
        .ok();
    result
}

impl Bench {
    async fn measure(&mut self, o: &BenchOptions, port: u16) -> anyhow::Result<Report> {
        let mut report = Report {
            checkouts: o.checkouts,
            latency_rate_per_s: o.latency_rate,
            ..Report::default()
        };

        // Baselines first, on their own database rows, with the same handler code.
        progress(format!(
            "baseline: database ceiling ({} checkouts with their payments and cancellations, batches of {}, no Kafka)",
            o.baseline_events, self.settings.batch_max_messages
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
        progress(format!("baseline: naive design ({naive_n} checkouts, one transaction + one synchronous produce each)"));
        report.naive_checkouts_per_s = self.naive(naive_n).await?;
        progress(format!("  {:.0} checkouts/s", report.naive_checkouts_per_s));

        // 1. Sustained throughput: produce everything, then start the worker.
        let total = self.produce_mix(o.checkouts).await?;
        report.total_events = total;
        let already = self.processed().await?;
        progress(format!("produced {total} events; starting the worker"));
        self.start_worker(port, o.worker.as_deref()).await?;
        let started = Instant::now();
        let target = already + total as i64;
        let mut last_report = Instant::now();
        let mut peak = 0.0f64;
        loop {
            let done = self.processed().await?;
            peak = peak.max(self.rss_mb().0);
            if last_report.elapsed() > Duration::from_secs(3) {
                progress(format!(
                    "throughput: {} / {} committed, {:.0} events/s, RSS {:.0} MB ({})",
                    done - already,
                    total,
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
        while self
            .count("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            .await?
            > 0
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        report.outbox_drained_s = started.elapsed().as_secs_f64();
        report.worker_rss_after_throughput_mb = self.rss_mb().0;
        report.mean_batch_size = self.mean_batch_sizes().await.unwrap_or_default();
        progress(format!(
            "mean batch size by topic: {:?}",
            report.mean_batch_size
        ));
        report.ratio_to_db_ceiling =
            report.throughput_events_per_s / report.db_ceiling_events_per_s;
        report.ratio_to_naive = report.throughput_checkouts_per_s / report.naive_checkouts_per_s;

        // 2. Latency at a fixed rate, by a new worker on fresh topics over the
        // same (now full) database. Tansu's fetches cost more the more a
        // topic holds (docs/tansu.md); Kafka's do not, and measuring on the
        // 390,000-message topics would measure that instead of orderflow.
        peak = peak.max(self.rss_mb().1);
        self.restart_on_fresh_topics(port, o.worker.as_deref())
            .await?;
        progress(format!(
            "latency: {} checkouts/s for {} s",
            o.latency_rate, o.latency_secs
        ));
        // Measured by the worker itself after each commit (occurred_at → commit),
        // as the difference of its histogram across the phase.
        let before = self.latency_histogram().await?;
        let n = self.produce_at_rate(o.latency_rate, o.latency_secs).await?;
        report.latency_events = n;
        let waited = Instant::now();
        let latencies = loop {
            let h = self.latency_histogram().await?.minus(&before);
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
        (
            report.latency_p50_ms,
            report.latency_p95_ms,
            report.latency_p99_ms,
            report.latency_max_ms,
        ) = (
            latencies.quantile(0.5) * 1000.0,
            latencies.quantile(0.95) * 1000.0,
            latencies.quantile(0.99) * 1000.0,
            latencies.quantile(1.0) * 1000.0,
        );
        peak = peak.max(self.rss_mb().0);

        // The floor under that: the broker alone, produce → consume, same rate.
        progress("latency floor: the broker alone (produce → consume, no orderflow), 5 s");
        (report.broker_floor_p50_ms, report.broker_floor_p99_ms) =
            self.broker_floor(o.latency_rate, 5).await?;
        progress(format!(
            "  p50 {:.1} ms, p99 {:.1} ms",
            report.broker_floor_p50_ms, report.broker_floor_p99_ms
        ));

        // 4. HTTP under concurrent load.
        let order_ids: Vec<String> =
            sqlx::query_scalar("SELECT order_id FROM orders ORDER BY random() LIMIT 10000")
                .fetch_all(&self.pool)
                .await?;
        let ids = Arc::new(order_ids);
        for &connections in &o.http_concurrency {
            let ids = ids.clone();
            report.http.push(
                self.http_load(o, connections, "GET /orders/{id}/status", move |i| {
                    format!("/orders/{}/status", ids[i % ids.len()])
                })
                .await?,
            );
        }
        for &connections in &o.http_concurrency {
            report.http.push(
                self.http_load(o, connections, "GET /users/{id}/orders", |i| {
                    // Sample users are 1..=20 (see produce::sample_checkout).
                    format!("/users/{}/orders?limit=20", i % 20 + 1)
                })
                .await?,
            );
        }

        let (now, hwm) = self.rss_mb();
        report.worker_rss_end_mb = now;
        report.worker_peak_rss_mb = peak.max(hwm);
        Ok(report)
    }

    /// Messages handled so far by topic, from the worker's counters.
    async fn handled_by_topic(&self) -> anyhow::Result<String> {
        let page = self.metrics_page().await?;
        let mut by_topic = std::collections::BTreeMap::<&str, f64>::new();
        for (labels, value) in samples(&page, "orderflow_messages_total") {
            if let Some(topic) = label(labels, "topic") {
                *by_topic.entry(short_topic(topic)).or_default() += value;
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
        let page = self.metrics_page().await?;
        let by_topic = |name| -> Vec<(&str, f64)> {
            samples(&page, name)
                .filter_map(|(labels, v)| Some((label(labels, "topic")?, v)))
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

    /// The worker's /metrics page.
    async fn metrics_page(&self) -> anyhow::Result<String> {
        Ok(self
            .client
            .get(format!("{}/metrics", self.http))
            .send()
            .await?
            .text()
            .await?)
    }

    async fn processed(&self) -> anyhow::Result<i64> {
        self.count("SELECT count(*) FROM processed_events").await
    }

    async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sql).fetch_one(&self.pool).await?)
    }

    /// (current RSS, peak RSS) of the worker in MB, from /proc.
    fn rss_mb(&self) -> (f64, f64) {
        let Some(pid) = self.worker.as_ref().and_then(|w| w.id()) else {
            return (0.0, 0.0);
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Stops the worker and starts another on a new set of topics (and
    /// consumer groups); the database stays as it is.
    async fn restart_on_fresh_topics(
        &mut self,
        port: u16,
        binary: Option<&std::path::Path>,
    ) -> anyhow::Result<()> {
        if let Some(mut w) = self.worker.take() {
            w.kill().await.context("failed to stop the worker")?;
        }
        let prefix = format!("bench-{}-latency-", self.id);
        self.settings.topics = Topics::prefixed(&prefix);
        self.settings.group_id = format!("orderflow-bench-{}-latency", self.id);
        create_topics(&self.settings).await?;
        progress(format!("worker restarted on fresh topics {prefix}*"));
        self.start_worker(port, binary).await
    }

    async fn start_worker(
        &mut self,
        port: u16,
        binary: Option<&std::path::Path>,
    ) -> anyhow::Result<()> {
        let s = &self.settings;
        let binary = match binary {
            Some(b) => b.to_owned(),
            None => std::env::current_exe()?,
        };
        let child = tokio::process::Command::new(binary)
            .arg("run")
            .env("DATABASE_URL", &s.database_url)
            .env("KAFKA_BROKERS", &s.kafka_brokers)
            .env("KAFKA_GROUP_ID", &s.group_id)
            .envs(s.topics.vars())
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .context("failed to start the worker")?;
        self.worker = Some(child);
        let started = Instant::now();
        loop {
            let ready = self
                .client
                .get(format!("{}/readyz", self.http))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("worker not ready after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The mix, produced as fast as the broker takes it; a failed delivery
    /// stops the run (the worker would otherwise wait for it forever).
    async fn produce_mix(&self, checkouts: u64) -> anyhow::Result<u64> {
        let t = &self.settings.topics;
        let started = Instant::now();
        let mut sent = 0u64;
        // Per topic: deliveries are confirmed in order within one topic.
        let mut in_flight = [
            InFlight::new(&t.checkouts),
            InFlight::new(&t.payment_confirmations),
            InFlight::new(&t.cancellations),
        ];
        let mut rng = rand::thread_rng();
        for n in 0..checkouts {
            let Mixed {
                checkout,
                payment,
                cancellation,
            } = mixed(&mut rng, self.ratios, &self.tables, "b", n, 0);
            let key = checkout.order_id.clone();
            let payloads = [
                Some(serde_json::to_vec(&checkout)?),
                payment.map(|p| serde_json::to_vec(&p)).transpose()?,
                cancellation.map(|c| serde_json::to_vec(&c)).transpose()?,
            ];
            for (topic, payload) in in_flight.iter_mut().zip(payloads) {
                let Some(payload) = payload else { continue };
                let delivery = enqueue(&self.producer, topic.topic, &key, &payload)?;
                topic.push(delivery, None).await?;
                sent += 1;
                if sent % 50_000 == 0 {
                    progress(format!(
                        "produced {sent} events ({:.0}/s)",
                        sent as f64 / started.elapsed().as_secs_f64()
                    ));
                }
            }
        }
        for topic in &mut in_flight {
            topic.confirm_all().await?;
        }
        Ok(sent)
    }

    /// The worker's occurred_at → commit histogram for checkouts, from /metrics.
    async fn latency_histogram(&self) -> anyhow::Result<Histogram> {
        Ok(Histogram::parse(
            &self.metrics_page().await?,
            "orderflow_end_to_end_latency_seconds",
            &self.settings.topics.checkouts,
        ))
    }

    /// Checkouts at a fixed rate, each stamped with its send time.
    async fn produce_at_rate(&self, rate: u64, secs: u64) -> anyhow::Result<u64> {
        let mut rng = rand::thread_rng();
        let sent = at_rate(rate, secs, |n| {
            let order_id = format!("lat-{n}");
            let mut ev = crate::produce::sample_checkout(
                &mut rng,
                &order_id,
                900_000_000_000 + n as i64,
                false,
            );
            ev.occurred_at = chrono::Utc::now();
            crate::produce::enqueue(
                &self.latency_producer,
                &self.settings.topics.checkouts,
                &order_id,
                &serde_json::to_vec(&ev)?,
            )?;
            if (n + 1) % (rate * 5) == 0 {
                progress(format!("latency: sent {} / {}", n + 1, rate * secs));
            }
            Ok(())
        })
        .await?;
        self.latency_producer
            .flush(Timeout::After(Duration::from_secs(30)))?;
        Ok(sent)
    }

    /// Produce → consume latency of the broker with no orderflow in between,
    /// on an otherwise unused topic, with the worker's consumer settings.
    async fn broker_floor(&self, rate: u64, secs: u64) -> anyhow::Result<(f64, f64)> {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::Message;
        let topic = Topics::dlq(&self.settings.topics.payment_confirmations);
        let consumer: StreamConsumer = crate::kafka::consumer_config(
            &self.settings,
            &format!("{}-floor", self.settings.group_id),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .create()?;
        consumer.subscribe(&[topic.as_str()])?;
        // Wait for the assignment before producing.
        let started = Instant::now();
        while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
            let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
            if started.elapsed() > Duration::from_secs(20) {
                bail!("floor consumer got no assignment");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let total = rate * secs;
        let producer = self.latency_producer.clone();
        let sender_topic = topic.clone();
        let sender = tokio::spawn(async move {
            at_rate(rate, secs, |_| {
                let now = chrono::Utc::now().timestamp_micros().to_string();
                enqueue(&producer, &sender_topic, &now, now.as_bytes()).map(drop)
            })
            .await
        });
        let mut latencies = Vec::with_capacity(total as usize);
        let deadline = Instant::now() + Duration::from_secs(secs + 20);
        while (latencies.len() as u64) < total && Instant::now() < deadline {
            if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
                let sent: i64 = m
                    .payload()
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                latencies.push((chrono::Utc::now().timestamp_micros() - sent) as f64 / 1000.0);
            }
        }
        sender.await??;
        latencies.sort_by(|a, b| a.total_cmp(b));
        Ok((percentile(&latencies, 0.5), percentile(&latencies, 0.99)))
    }

    /// The same mix through the same handlers, written by a plain loop with
    /// no Kafka: per chunk of checkouts, one transaction for them, one for
    /// their payments and one for their cancellations, each of at most
    /// `BATCH_MAX_MESSAGES` like the worker's. Returns (checkouts/s, events/s).
    async fn db_ceiling(&self, n: u64) -> anyhow::Result<(f64, f64)> {
        let (checkouts, lifecycle) = local_handlers(&self.settings);
        let payments = LifecycleHandler::payments(lifecycle.clone());
        let cancellations = LifecycleHandler::cancellations(lifecycle);
        let mut rng = rand::thread_rng();
        let mix: Vec<Mixed> = (0..n)
            .map(|i| {
                mixed(
                    &mut rng,
                    self.ratios,
                    &self.tables,
                    "ceil",
                    i,
                    500_000_000_000,
                )
            })
            .collect();
        let events = mix.iter().map(Mixed::events).sum::<u64>();
        let chunk = self.settings.batch_max_messages.max(1);
        let started = Instant::now();
        for part in mix.chunks(chunk) {
            let batch: Vec<&CheckoutEvent> = part.iter().map(|m| &m.checkout).collect();
            self.apply_locked(&checkouts, &batch).await?;
            let pays: Vec<Input> = part
                .iter()
                .filter_map(|m| m.payment.clone().map(Input::Payment))
                .collect();
            self.apply_locked(&payments, &pays.iter().collect::<Vec<_>>())
                .await?;
            let cancels: Vec<Input> = part
                .iter()
                .filter_map(|m| m.cancellation.clone().map(Input::Cancellation))
                .collect();
            self.apply_locked(&cancellations, &cancels.iter().collect::<Vec<_>>())
                .await?;
        }
        let secs = started.elapsed().as_secs_f64();
        Ok((n as f64 / secs, events as f64 / secs))
    }

    /// One transaction as the consumer loop makes it: lock the orders, apply.
    async fn apply_locked<H: Handler>(
        &self,
        handler: &H,
        batch: &[&H::Event],
    ) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        crate::workers::apply_locked(handler, &mut tx, batch).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The pattern the old service started from: per message, one
    /// transaction, then one synchronous produce of the resulting event.
    async fn naive(&self, n: u64) -> anyhow::Result<f64> {
        let (handler, _) = local_handlers(&self.settings);
        let mut rng = rand::thread_rng();
        let started = Instant::now();
        for i in 0..n {
            let ev = crate::produce::sample_checkout(
                &mut rng,
                &format!("naive-{i}"),
                700_000_000_000 + i as i64,
                false,
            );
            let mut tx = self.pool.begin().await?;
            handler.apply(&mut tx, &ev).await?;
            tx.commit().await?;
            let payload = serde_json::to_vec(&ev)?;
            // Not the bulk loader: its 20 ms linger would be waited out on
            // every synchronous send and flatter the ratio.
            self.latency_producer
                .send(
                    FutureRecord::to(&self.settings.topics.order_events)
                        .key(&ev.order_id)
                        .payload(&payload),
                    Timeout::After(Duration::from_secs(10)),
                )
                .await
                .map_err(|(e, _)| e)?;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    }

    /// `concurrency` connections issue requests back to back for
    /// `http_secs`, each over its own keep-alive connection.
    async fn http_load(
        &self,
        o: &BenchOptions,
        connections: usize,
        route: &str,
        path: impl Fn(usize) -> String + Send + Sync + 'static,
    ) -> anyhow::Result<HttpRun> {
        progress(format!(
            "http: {route}, {connections} connections, {} s",
            o.http_secs
        ));
        let addr = self.http.trim_start_matches("http://").to_owned();
        let path = Arc::new(path);
        let deadline = Instant::now() + Duration::from_secs(o.http_secs);
        let mut tasks = Vec::new();
        for worker in 0..connections {
            let (path, addr) = (path.clone(), addr.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut i = worker * 1_000_003;
                let mut conn = None;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if conn.is_none() {
                        conn = HttpConn::connect(&addr).await.ok();
                    }
                    let Some(c) = conn.as_mut() else {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    match c.get(&path(i)).await {
                        Ok(200) => latencies.push(t.elapsed().as_secs_f64() * 1000.0),
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            conn = None;
                        }
                    }
                    i += 1;
                }
                (latencies, errors)
            }));
        }
        let started = Instant::now();
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await?;
            all.extend(l);
            errors += e;
        }
        let elapsed = started.elapsed().as_secs_f64();
        if errors > 0 {
            progress(format!("  {errors} requests failed"));
        }
        all.sort_by(|a, b| a.total_cmp(b));
        let run = HttpRun {
            route: route.to_owned(),
            connections,
            requests_per_s: all.len() as f64 / elapsed,
            p50_ms: percentile(&all, 0.5),
            p99_ms: percentile(&all, 0.99),
            errors,
        };
        progress(format!(
            "  {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms",
            run.requests_per_s, run.p50_ms, run.p99_ms
        ));
        Ok(run)
    }
}

/// The load generator's HTTP/1.1 keep-alive client: a request line out, a
/// status line, headers and a `Content-Length` body in. It runs on the same
/// two cores as the server it measures, so it must cost far less than a
/// general-purpose client would.
struct HttpConn {
    stream: tokio::io::BufStream<tokio::net::TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl HttpConn {
    async fn connect(addr: &str) -> std::io::Result<HttpConn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream: tokio::io::BufStream::new(stream),
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// One GET; returns the status code once the whole body is read.
    async fn get(&mut self, path: &str) -> std::io::Result<u16> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        self.stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())
            .await?;
        self.stream.flush().await?;
        self.line.clear();
        self.stream.read_line(&mut self.line).await?;
        let status: u16 = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("no status line"))?;
        let mut length = None;
        loop {
            self.line.clear();
            if self.stream.read_line(&mut self.line).await? == 0 {
                return Err(bad("connection closed in headers"));
            }
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let length = length.ok_or_else(|| bad("no content-length"))?;
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).await?;
        Ok(status)
    }
}

/// A Prometheus histogram of one series: (upper bound, cumulative count),
/// ascending, ending with +Inf.
#[derive(Debug, Clone, Default, PartialEq)]
struct Histogram {
    buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// The `name` histogram of `topic` from a /metrics page.
    fn parse(page: &str, name: &str, topic: &str) -> Histogram {
        let mut buckets: Vec<(f64, u64)> = samples(page, &format!("{name}_bucket"))
            .filter(|(labels, _)| label(labels, "topic") == Some(topic))
            .filter_map(|(labels, count)| {
                let le = match label(labels, "le")? {
                    "+Inf" => f64::INFINITY,
                    le => le.parse().ok()?,
                };
                Some((le, count as u64))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram { buckets }
    }

    /// What was observed since `earlier`.
    fn minus(&self, earlier: &Histogram) -> Histogram {
        let before = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0, |(_, c)| *c)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| (*le, c.saturating_sub(before(*le))))
                .collect(),
        }
    }

    fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |(_, c)| *c)
    }

    /// The q-quantile, interpolated linearly within its bucket (as
    /// Prometheus's histogram_quantile does); q = 1 gives the upper bound of
    /// the highest non-empty bucket.
    fn quantile(&self, q: f64) -> f64 {
        let rank = q * self.count() as f64;
        let (mut low, mut below) = (0.0, 0u64);
        for &(le, cumulative) in &self.buckets {
            if cumulative > 0 && cumulative as f64 >= rank {
                if le.is_infinite() {
                    return low;
                }
                let within = (cumulative - below) as f64;
                return low + (le - low) * ((rank - below as f64) / within).clamp(0.0, 1.0);
            }
            (low, below) = (le, cumulative);
        }
        0.0
    }
}

/// The labelled samples of metric `name` on a /metrics page: (labels, value)
/// for each `name{labels} value` line.
fn samples<'a>(page: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    page.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.rsplit_once("} ")?;
        Some((labels, value.parse().ok()?))
    })
}

/// The value of label `key` in `a="x",b="y"` (values here hold no commas).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.trim_matches('"'))
    })
}

/// The value at fraction `p` of an ascending sample (0 when it is empty).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// Calls `send(n)` for n = 0, 1, … at `rate` per second for `secs` seconds
/// (every 10 ms, whatever has fallen due); returns how many were sent.
async fn at_rate(
    rate: u64,
    secs: u64,
    mut send: impl FnMut(u64) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let total = rate * secs;
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0u64;
    while sent < total {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            send(sent)?;
            sent += 1;
        }
    }
    Ok(sent)
}

async fn create_topics(settings: &Settings) -> anyhow::Result<()> {
    let specs = crate::kafka::topics::load_specs(std::path::Path::new("topics"))?;
    crate::kafka::topics::apply(settings, &specs).await?;
    Ok(())
}

/// `bench-<id>-checkouts` → `checkouts`.
fn short_topic(topic: &str) -> &str {
    topic
        .strip_prefix("bench-")
        .and_then(|t| t.split_once('-'))
        .map_or(topic, |(_, name)| name)
}

/// The worker's handlers, built as `orderflow run` builds them.
fn local_handlers(settings: &Settings) -> (CheckoutHandler, Arc<Lifecycle>) {
    let emitter = Emitter::new(
        Codec::new(settings.max_message_bytes),
        settings.topics.order_events.clone(),
    );
    let lifecycle = Arc::new(Lifecycle::new(emitter.clone()));
    let checkouts = CheckoutHandler::new(emitter, lifecycle.clone(), settings.default_tax_rate_ppm);
    (checkouts, lifecycle)
}

/// One checkout of the benchmark mix with what follows it: a payment and a
/// cancellation, each with its probability (by default 0.9 and 0.05, the
/// ratios 1 : 0.9 : 0.05).
#[derive(Debug, Clone)]
struct Mixed {
    checkout: CheckoutEvent,
    payment: Option<PaymentConfirmation>,
    cancellation: Option<Cancellation>,
}

impl Mixed {
    fn events(&self) -> u64 {
        1 + u64::from(self.payment.is_some()) + u64::from(self.cancellation.is_some())
    }
}

fn mixed(
    rng: &mut impl Rng,
    ratios: (f64, f64),
    tables: &PricingTables,
    prefix: &str,
    n: u64,
    cart_base: i64,
) -> Mixed {
    let order_id = format!("{prefix}-{n}");
    let checkout = crate::produce::sample_checkout(rng, &order_id, cart_base + n as i64, false);
    Mixed {
        payment: rng
            .gen_bool(ratios.0)
            .then(|| payment_for(&checkout, tables)),
        cancellation: rng.gen_bool(ratios.1).then(|| cancel_for(&checkout)),
        checkout,
    }
}

/// A confirmed payment of the order's total, priced with the same tables the
/// worker uses, so orders get PAID and cancelling a paid one requests a refund.
fn payment_for(ev: &CheckoutEvent, tables: &PricingTables) -> PaymentConfirmation {
    let amount_minor =
        crate::workers::checkout::price(tables, ev).map_or(1_000, |priced| priced.total.minor());
    PaymentConfirmation {
        event_id: uuid::Uuid::new_v4().to_string(),
        order_id: ev.order_id.clone(),
        payment_id: format!("pay-{}", ev.order_id),
        status: PaymentStatus::Confirmed,
        amount_minor,
        currency: ev.currency.clone(),
        provider: "bench".into(),
        failure_reason: None,
        occurred_at: chrono::Utc::now(),
    }
}

fn cancel_for(ev: &CheckoutEvent) -> Cancellation {
    Cancellation {
        event_id: uuid::Uuid::new_v4().to_string(),
        order_id: ev.order_id.clone(),
        reason: "bench".into(),
        requested_by: RequestedBy::Customer,
        occurred_at: chrono::Utc::now(),
    }
}

impl Report {
    pub fn print_table(&self) {
        let mut rows = vec![
            (
                "throughput (all events, to committed effect)",
                format!("{:.0} events/s", self.throughput_events_per_s),
            ),
            (
                "throughput (checkouts)",
                format!(
                    "{:.0} checkouts/s ({} checkouts, {} events)",
                    self.throughput_checkouts_per_s, self.checkouts, self.total_events
                ),
            ),
            (
                "outbox drained after",
                format!("{:.1} s", self.outbox_drained_s),
            ),
            (
                "baseline: database ceiling (same mix, no Kafka)",
                format!(
                    "{:.0} events/s ({:.0} checkouts/s)",
                    self.db_ceiling_events_per_s, self.db_ceiling_checkouts_per_s
                ),
            ),
            (
                "baseline: naive (tx + sync produce per message)",
                format!("{:.0} checkouts/s", self.naive_checkouts_per_s),
            ),
            (
                "ratio to database ceiling (events/s)",
                format!("{:.0} %", self.ratio_to_db_ceiling * 100.0),
            ),
            ("ratio to naive", format!("{:.1}×", self.ratio_to_naive)),
            (
                "latency produce → commit",
                format!(
                    "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events at {}/s)",
                    self.latency_p50_ms,
                    self.latency_p95_ms,
                    self.latency_p99_ms,
                    self.latency_max_ms,
                    self.latency_events,
                    self.latency_rate_per_s
                ),
            ),
            (
                "latency floor: broker alone, produce → consume",
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms",
                    self.broker_floor_p50_ms, self.broker_floor_p99_ms
                ),
            ),
            (
                "mean batch size (messages per transaction)",
                self.mean_batch_size
                    .iter()
                    .map(|(t, n)| format!("{} {n}", short_topic(t)))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "worker RSS",
                format!(
                    "peak {:.0} MB, after throughput {:.0} MB, end of run (second worker) {:.0} MB",
                    self.worker_peak_rss_mb,
                    self.worker_rss_after_throughput_mb,
                    self.worker_rss_end_mb
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect::<Vec<_>>();
        for run in &self.http {
            rows.push((
                format!("{}, {} connections", run.route, run.connections),
                format!(
                    "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms{}",
                    run.requests_per_s,
                    run.p50_ms,
                    run.p99_ms,
                    if run.errors > 0 {
                        format!(", {} errors", run.errors)
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        println!();
        for (k, v) in rows {
            println!("{k:<width$}  {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{label, samples, Histogram};

    #[test]
    fn samples_and_labels_are_read_off_metric_lines() {
        let page = "# HELP orderflow_messages_total x\n\
            orderflow_messages_total{outcome=\"applied\",topic=\"checkouts\"} 18\n\
            orderflow_messages_total_other{topic=\"x\"} 1\n\
            orderflow_messages_total{outcome=\"duplicate\",topic=\"checkouts\"} 4\n";
        let got: Vec<(Option<&str>, Option<&str>, f64)> = samples(page, "orderflow_messages_total")
            .map(|(l, v)| (label(l, "topic"), label(l, "outcome"), v))
            .collect();
        assert_eq!(
            got,
            [
                (Some("checkouts"), Some("applied"), 18.0),
                (Some("checkouts"), Some("duplicate"), 4.0)
            ]
        );
    }

    const PAGE: &str = r#"orderflow_end_to_end_latency_seconds_bucket{topic="c",le="0.01"} 10
orderflow_end_to_end_latency_seconds_bucket{topic="c",le="0.02"} 90
orderflow_end_to_end_latency_seconds_bucket{topic="c",le="0.05"} 100
orderflow_end_to_end_latency_seconds_bucket{topic="c",le="+Inf"} 100
orderflow_end_to_end_latency_seconds_bucket{topic="p",le="0.01"} 7
"#;

    #[test]
    fn histogram_quantiles_interpolate_within_buckets() {
        let h = Histogram::parse(PAGE, "orderflow_end_to_end_latency_seconds", "c");
        assert_eq!(h.count(), 100);
        assert!(
            (h.quantile(0.5) - 0.015).abs() < 1e-9,
            "{}",
            h.quantile(0.5)
        );
        assert!(
            (h.quantile(0.95) - 0.035).abs() < 1e-9,
            "{}",
            h.quantile(0.95)
        );
        assert!((h.quantile(1.0) - 0.05).abs() < 1e-9);
        // Earlier, the ten fastest had been observed.
        let earlier = Histogram::parse(
            &PAGE.replace("} 90", "} 10").replace("} 100", "} 10"),
            "orderflow_end_to_end_latency_seconds",
            "c",
        );
        let since = h.minus(&earlier);
        assert_eq!(since.count(), 90);
        assert!(
            (since.quantile(0.5) - 0.015625).abs() < 1e-9,
            "{}",
            since.quantile(0.5)
        );
        assert_eq!(Histogram::default().quantile(0.99), 0.0);
    }
}
