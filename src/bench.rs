//! `orderflow bench`: throughput, latency, HTTP and memory of the real worker,
//! with the database ceiling and a naive design measured in the same run so
//! machine noise cancels out in the ratios.
//!
//! It creates a fresh database and fresh topics, runs `orderflow run` as a
//! child process (so its RSS is the worker's alone), and drops the database
//! at the end. Run it from a release build: `cargo run --release -- bench`.

use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::workers::checkout::CheckoutHandler;
use crate::workers::emit::Emitter;
use crate::workers::lifecycle::Lifecycle;
use crate::workers::Handler;

/// `orderflow bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Checkouts for the throughput phase (payments and cancellations are added).
    #[arg(long, default_value_t = 200_000)]
    pub checkouts: u64,
    /// Checkouts per second in the latency phase.
    #[arg(long, default_value_t = 1_000)]
    pub latency_rate: u64,
    /// Length of the latency phase, seconds.
    #[arg(long, default_value_t = 60)]
    pub latency_secs: u64,
    /// Length of each HTTP phase, seconds.
    #[arg(long, default_value_t = 10)]
    pub http_secs: u64,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 64)]
    pub http_concurrency: usize,
    /// Checkouts for the database-ceiling baseline (the naive one uses a fifth).
    #[arg(long, default_value_t = 20_000)]
    pub baseline_events: u64,
    /// Print the result as JSON as well.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checkouts: u64,
    pub total_events: u64,
    pub throughput_events_per_s: f64,
    pub throughput_checkouts_per_s: f64,
    pub outbox_drained_s: f64,
    pub db_ceiling_checkouts_per_s: f64,
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
    pub http_status_rps: f64,
    pub http_status_p50_ms: f64,
    pub http_status_p99_ms: f64,
    pub http_history_rps: f64,
    pub http_history_p50_ms: f64,
    pub http_history_p99_ms: f64,
    pub worker_peak_rss_mb: f64,
    pub worker_rss_after_throughput_mb: f64,
    pub worker_rss_end_mb: f64,
    /// Messages per committed transaction in the throughput phase, by topic.
    pub mean_batch_size: Vec<(String, f64)>,
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

/// Everything one bench run needs, on fresh names.
struct Bench {
    settings: Settings,
    pool: PgPool,
    producer: FutureProducer,
    worker: Option<tokio::process::Child>,
    http: String,
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
    let specs = crate::kafka::topics::load_specs(std::path::Path::new("topics"))?;
    crate::kafka::topics::apply(&settings, &specs).await?;
    let pool = crate::store::pool(&settings.database_url, 16)?;
    let mut producer_config = crate::kafka::producer_config(&settings);
    producer_config
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4");
    let producer: FutureProducer = producer_config.create().context("bench producer")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut bench = Bench {
        settings,
        pool,
        producer,
        worker: None,
        http: format!("http://127.0.0.1:{port}"),
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
            "baseline: database ceiling ({} checkouts, batches of 500, no Kafka)",
            o.baseline_events
        ));
        report.db_ceiling_checkouts_per_s = self.db_ceiling(o.baseline_events).await?;
        progress(format!(
            "  {:.0} checkouts/s",
            report.db_ceiling_checkouts_per_s
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
        self.start_worker(port).await?;
        let started = Instant::now();
        let target = already + total as i64;
        let mut last_report = Instant::now();
        let mut peak = 0.0f64;
        loop {
            let done = self.processed().await?;
            peak = peak.max(self.rss_mb().0);
            if last_report.elapsed() > Duration::from_secs(3) {
                progress(format!(
                    "throughput: {} / {} committed, {:.0} events/s, RSS {:.0} MB",
                    done - already,
                    total,
                    (done - already) as f64 / started.elapsed().as_secs_f64(),
                    self.rss_mb().0
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
            report.throughput_checkouts_per_s / report.db_ceiling_checkouts_per_s;
        report.ratio_to_naive = report.throughput_checkouts_per_s / report.naive_checkouts_per_s;

        // 2. Latency at a fixed rate.
        progress(format!(
            "latency: {} checkouts/s for {} s",
            o.latency_rate, o.latency_secs
        ));
        let marker = chrono::Utc::now();
        let n = self.produce_at_rate(o.latency_rate, o.latency_secs).await?;
        report.latency_events = n;
        let want = n as i64;
        let waited = Instant::now();
        while self
            .count_since("SELECT count(*) FROM orders WHERE cart_id >= 900000000000 AND checkout_occurred_at >= $1", marker)
            .await?
            < want
        {
            if waited.elapsed() > Duration::from_secs(120) {
                bail!("latency phase did not finish");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (p50, p95, p99, max): (f64, f64, f64, f64) = sqlx::query_as(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY ms),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)
             FROM (SELECT (EXTRACT(EPOCH FROM created_at - checkout_occurred_at) * 1000)::float8 AS ms
                   FROM orders WHERE cart_id >= 900000000000 AND checkout_occurred_at >= $1) l",
        )
        .bind(marker)
        .fetch_one(&self.pool)
        .await?;
        (
            report.latency_p50_ms,
            report.latency_p95_ms,
            report.latency_p99_ms,
            report.latency_max_ms,
        ) = (p50, p95, p99, max);
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
        progress(format!(
            "http: GET /orders/{{id}}/status, {} connections, {} s",
            o.http_concurrency, o.http_secs
        ));
        let ids = Arc::new(order_ids);
        let (rps, p50, p99) = self
            .http_load(o, {
                let ids = ids.clone();
                move |i| format!("/orders/{}/status", ids[i % ids.len()])
            })
            .await?;
        (
            report.http_status_rps,
            report.http_status_p50_ms,
            report.http_status_p99_ms,
        ) = (rps, p50, p99);
        progress(format!(
            "http: GET /users/{{id}}/orders, {} connections, {} s",
            o.http_concurrency, o.http_secs
        ));
        let (rps, p50, p99) = self
            .http_load(o, |i| {
                // Sample users are 1..=20 (see produce::sample_checkout).
                format!("/users/{}/orders?limit=20", i % 20 + 1)
            })
            .await?;
        (
            report.http_history_rps,
            report.http_history_p50_ms,
            report.http_history_p99_ms,
        ) = (rps, p50, p99);

        let (now, hwm) = self.rss_mb();
        report.worker_rss_end_mb = now;
        report.worker_peak_rss_mb = peak.max(hwm);
        Ok(report)
    }

    /// Mean messages per batch by topic, from the worker's histogram.
    async fn mean_batch_sizes(&self) -> anyhow::Result<Vec<(String, f64)>> {
        let text = reqwest::get(format!("{}/metrics", self.http))
            .await?
            .text()
            .await?;
        let value = |prefix: &str| -> Vec<(String, f64)> {
            text.lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .filter_map(|rest| {
                    let (labels, v) = rest.rsplit_once(' ')?;
                    let topic = labels.split('"').nth(1)?.to_owned();
                    Some((topic, v.parse().ok()?))
                })
                .collect()
        };
        let sums = value("orderflow_batch_size_messages_sum{");
        let counts = value("orderflow_batch_size_messages_count{");
        Ok(sums
            .into_iter()
            .filter_map(|(t, sum)| {
                let count = counts.iter().find(|(c, _)| *c == t)?.1;
                Some((t, (sum / count * 10.0).round() / 10.0))
            })
            .collect())
    }

    async fn processed(&self) -> anyhow::Result<i64> {
        self.count("SELECT count(*) FROM processed_events").await
    }

    async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sql).fetch_one(&self.pool).await?)
    }

    async fn count_since(
        &self,
        sql: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sql)
            .bind(at)
            .fetch_one(&self.pool)
            .await?)
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

    async fn start_worker(&mut self, port: u16) -> anyhow::Result<()> {
        let s = &self.settings;
        let t = &s.topics;
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("run")
            .env("DATABASE_URL", &s.database_url)
            .env("KAFKA_BROKERS", &s.kafka_brokers)
            .env("KAFKA_GROUP_ID", &s.group_id)
            .env("TOPIC_CHECKOUTS", &t.checkouts)
            .env("TOPIC_PAYMENT_CONFIRMATIONS", &t.payment_confirmations)
            .env("TOPIC_CANCELLATIONS", &t.cancellations)
            .env("TOPIC_ORDER_EVENTS", &t.order_events)
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .context("failed to start the worker")?;
        self.worker = Some(child);
        let started = Instant::now();
        let client = reqwest::Client::new();
        while client
            .get(format!("{}/readyz", self.http))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
            .eq(&false)
        {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("worker not ready after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Checkouts with payments (0.9 per order) and cancellations (0.05).
    async fn produce_mix(&self, checkouts: u64) -> anyhow::Result<u64> {
        let t = self.settings.topics.clone();
        let mut rng = rand::thread_rng();
        let mut sent = 0u64;
        let started = Instant::now();
        let mut pending = Vec::new();
        for n in 0..checkouts {
            let order_id = format!("b-{n}");
            let ev = crate::produce::sample_checkout(&mut rng, &order_id, n as i64, false);
            pending.push(self.send(&t.checkouts, &order_id, serde_json::to_vec(&ev)?)?);
            sent += 1;
            if rng.gen_bool(0.9) {
                pending.push(self.send(
                    &t.payment_confirmations,
                    &order_id,
                    serde_json::to_vec(&payment_for(&ev))?,
                )?);
                sent += 1;
            }
            if rng.gen_bool(0.05) {
                pending.push(self.send(
                    &t.cancellations,
                    &order_id,
                    serde_json::to_vec(&cancel_for(&ev))?,
                )?);
                sent += 1;
            }
            if pending.len() >= 50_000 {
                for d in pending.drain(..) {
                    d.await.ok();
                }
                progress(format!(
                    "produced {sent} events ({:.0}/s)",
                    sent as f64 / started.elapsed().as_secs_f64()
                ));
            }
        }
        for d in pending {
            d.await.ok();
        }
        self.producer
            .flush(Timeout::After(Duration::from_secs(60)))?;
        Ok(sent)
    }

    fn send(
        &self,
        topic: &str,
        key: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
        loop {
            match self
                .producer
                .send_result(FutureRecord::to(topic).key(key).payload(&payload))
            {
                Ok(d) => return Ok(d),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    self.producer
                        .poll(Timeout::After(Duration::from_millis(50)));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Checkouts at a fixed rate, each stamped with its send time.
    async fn produce_at_rate(&self, rate: u64, secs: u64) -> anyhow::Result<u64> {
        let mut rng = rand::thread_rng();
        let total = rate * secs;
        let started = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        let mut sent = 0u64;
        while sent < total {
            ticker.tick().await;
            let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
            while sent < due {
                let order_id = format!("lat-{sent}");
                let mut ev = crate::produce::sample_checkout(
                    &mut rng,
                    &order_id,
                    900_000_000_000 + sent as i64,
                    false,
                );
                ev.occurred_at = chrono::Utc::now();
                self.send(
                    &self.settings.topics.checkouts,
                    &order_id,
                    serde_json::to_vec(&ev)?,
                )?;
                sent += 1;
            }
            if sent % (rate * 5) == 0 && sent > 0 {
                progress(format!("latency: sent {sent} / {total}"));
            }
        }
        self.producer
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
        let producer = self.producer.clone();
        let sender_topic = topic.clone();
        let sender = tokio::spawn(async move {
            let begun = Instant::now();
            let mut ticker = tokio::time::interval(Duration::from_millis(10));
            let mut sent = 0u64;
            while sent < total {
                ticker.tick().await;
                let due = ((begun.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                while sent < due {
                    let now = chrono::Utc::now().timestamp_micros().to_string();
                    let _ = producer
                        .send_result(FutureRecord::to(&sender_topic).key(&now).payload(&now));
                    sent += 1;
                }
            }
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
        sender.await?;
        latencies.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        Ok((pct(0.5), pct(0.99)))
    }

    /// The same handler and rows, written by a plain loop: 500 checkouts per
    /// transaction, no Kafka anywhere.
    async fn db_ceiling(&self, n: u64) -> anyhow::Result<f64> {
        let handler = local_handler(&self.settings);
        let mut rng = rand::thread_rng();
        let events: Vec<CheckoutEvent> = (0..n)
            .map(|i| {
                crate::produce::sample_checkout(
                    &mut rng,
                    &format!("ceil-{i}"),
                    500_000_000_000 + i as i64,
                    false,
                )
            })
            .collect();
        let started = Instant::now();
        for chunk in events.chunks(500) {
            let mut tx = self.pool.begin().await?;
            let ids: Vec<&str> = chunk.iter().map(|e| e.order_id.as_str()).collect();
            crate::store::lifecycle::lock_orders(&mut tx, &ids).await?;
            let batch: Vec<&CheckoutEvent> = chunk.iter().collect();
            handler.apply_batch(&mut tx, &batch).await?;
            tx.commit().await?;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    }

    /// The pattern the old service started from: per message, one
    /// transaction, then one synchronous produce of the resulting event.
    async fn naive(&self, n: u64) -> anyhow::Result<f64> {
        let handler = local_handler(&self.settings);
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
            self.producer
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

    /// `concurrency` tasks issue requests back to back for `http_secs`.
    async fn http_load(
        &self,
        o: &BenchOptions,
        path: impl Fn(usize) -> String + Send + Sync + 'static,
    ) -> anyhow::Result<(f64, f64, f64)> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(o.http_concurrency)
            .build()?;
        let path = Arc::new(path);
        let counter = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(o.http_secs);
        let mut tasks = Vec::new();
        for worker in 0..o.http_concurrency {
            let (client, path, base, counter) = (
                client.clone(),
                path.clone(),
                self.http.clone(),
                counter.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut i = worker * 1_000_003;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match client.get(format!("{base}{}", path(i))).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        _ => errors += 1,
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
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
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        let rps = all.len() as f64 / elapsed;
        progress(format!(
            "  {rps:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms",
            pct(0.5),
            pct(0.99)
        ));
        Ok((rps, pct(0.5), pct(0.99)))
    }
}

fn local_handler(settings: &Settings) -> CheckoutHandler {
    let emitter = Emitter::new(
        Codec::new(settings.max_message_bytes),
        settings.topics.order_events.clone(),
    );
    CheckoutHandler::new(
        emitter.clone(),
        Arc::new(Lifecycle::new(emitter)),
        settings.default_tax_rate_ppm,
    )
}

fn payment_for(ev: &CheckoutEvent) -> PaymentConfirmation {
    // The amount is not known to the producer; a fixed amount exercises the
    // mismatch path for most orders, which costs the same as a match.
    PaymentConfirmation {
        event_id: uuid::Uuid::new_v4().to_string(),
        order_id: ev.order_id.clone(),
        payment_id: format!("pay-{}", ev.order_id),
        status: PaymentStatus::Confirmed,
        amount_minor: 1_000,
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
        let rows = [
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
                "baseline: database ceiling",
                format!("{:.0} checkouts/s", self.db_ceiling_checkouts_per_s),
            ),
            (
                "baseline: naive (tx + sync produce per message)",
                format!("{:.0} checkouts/s", self.naive_checkouts_per_s),
            ),
            (
                "ratio to database ceiling",
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
                    .map(|(t, n)| {
                        format!(
                            "{} {n}",
                            t.split_once('-').map_or(t.as_str(), |(_, rest)| rest
                                .split_once('-')
                                .map_or(rest, |(_, r)| r))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "GET /orders/{id}/status",
                format!(
                    "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
                    self.http_status_rps, self.http_status_p50_ms, self.http_status_p99_ms
                ),
            ),
            (
                "GET /users/{id}/orders",
                format!(
                    "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
                    self.http_history_rps, self.http_history_p50_ms, self.http_history_p99_ms
                ),
            ),
            (
                "worker RSS",
                format!(
                    "peak {:.0} MB, after throughput {:.0} MB, end {:.0} MB",
                    self.worker_peak_rss_mb,
                    self.worker_rss_after_throughput_mb,
                    self.worker_rss_end_mb
                ),
            ),
        ];
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
