//! The live-streams phase: many SSE subscribers on the worker while events
//! flow. Measures the worker's RSS with no stream and with every stream
//! open and idle, commit → received latency at a fixed rate (clients here
//! read `occurred_at` off each event; the worker's own histogram gives feed
//! write → send), and throughput of the same burst of the mix with and
//! without the subscribers attached.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use orderflow::domain::OrderId;
use orderflow::produce::{enqueue, sample_checkout};
use orderflow_testkit::prom::{self, Histogram};
use orderflow_testkit::sse;
use rdkafka::producer::Producer;
use rdkafka::util::Timeout;

use crate::harness::Bench;
use crate::load::{at_rate, payment_for};
use crate::report::{percentile, Report};
use crate::{progress, Options};

/// Users of the phase's user streams: `USER_BASE + k` owns order `sse-k`.
const USER_BASE: i64 = 7_000_000_000;
/// Carts of the phase's orders (unique across the run).
const CART_BASE: i64 = 800_000_000_000;
/// A payment follows its checkout this many checkouts later.
const PAYMENT_LAG: u64 = 250;

/// Set when the phase is over: subscribers stop counting drops.
type Stop = Arc<AtomicBool>;

/// What every subscriber task records.
#[derive(Default)]
struct Received {
    /// occurred_at → received, ms, of each order event (not snapshots).
    latencies_ms: Vec<f64>,
    events: u64,
    snapshots: u64,
    /// Streams that ended or failed before the phase stopped them.
    dropped: u64,
}

impl Bench {
    pub async fn streams(&mut self, o: &Options, report: &mut Report) -> anyhow::Result<()> {
        let n = o.sse_subscribers;
        report.sse_subscribers = n;
        progress(format!(
            "streams: throughput without subscribers ({} checkouts of the mix)",
            o.sse_checkouts
        ));
        // Bursts in the order without, with, with, without, so that a drift
        // of the machine over the phase weighs on both sides alike.
        let without_first = self.burst(o.sse_checkouts, "ssa", 810_000_000_000).await?;
        progress(format!("  {without_first:.0} events/s"));

        tokio::time::sleep(Duration::from_secs(2)).await;
        report.sse_rss_before_mb = self.worker_rss();
        progress(format!(
            "streams: opening {n} streams (half orders, half users)"
        ));
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = Stop::default();
        let mut tasks = Vec::with_capacity(n as usize);
        let base = self.worker_base()?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?;
        let orders = n / 2;
        for i in 0..n {
            let path = if i < orders {
                format!("/orders/sse-{i}/events?wait=true")
            } else {
                format!("/users/{}/orders/events", USER_BASE + i as i64)
            };
            let url = format!("{base}{path}");
            let (http, received, stop) = (http.clone(), received.clone(), stop.clone());
            tasks.push(tokio::spawn(subscriber(http, url, received, stop)));
            if i % 500 == 499 {
                self.wait_connections(i + 1).await?;
            }
        }
        self.wait_connections(n).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        report.sse_rss_idle_mb = self.worker_rss();
        report.sse_kb_per_connection = if n > 0 {
            (report.sse_rss_idle_mb - report.sse_rss_before_mb) * 1024.0 / n as f64
        } else {
            0.0
        };
        progress(format!(
            "  worker RSS {:.1} MB with none, {:.1} MB with {n} idle ({:.1} KB each)",
            report.sse_rss_before_mb, report.sse_rss_idle_mb, report.sse_kb_per_connection
        ));

        let before = self.sse_histogram().await?;
        let checkouts = n.max(2 * PAYMENT_LAG);
        let rate = o.latency_rate;
        progress(format!(
            "streams: {checkouts} checkouts and their payments at {rate} events/s to the subscribed orders and users"
        ));
        let sent = self.feed_subscribers(checkouts, rate).await?;
        let expected = orders + 2 * (n - orders); // OrderPaid per order stream; created + paid per user stream
        let waited = Instant::now();
        loop {
            let got = received.lock().unwrap().events;
            if got >= expected {
                break;
            }
            if waited.elapsed() > Duration::from_secs(60) {
                progress(format!("  only {got} of {expected} events arrived"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let server = self.sse_histogram().await?.minus(&before);
        {
            let mut r = received.lock().unwrap();
            r.latencies_ms.sort_by(|a, b| a.total_cmp(b));
            report.sse_events_sent = sent;
            report.sse_events_received = r.events;
            report.sse_snapshots_received = r.snapshots;
            report.sse_latency_p50_ms = percentile(&r.latencies_ms, 0.5);
            report.sse_latency_p99_ms = percentile(&r.latencies_ms, 0.99);
            report.sse_latency_max_ms = r.latencies_ms.last().copied().unwrap_or(0.0);
        }
        report.sse_server_p50_ms = server.quantile(0.5) * 1000.0;
        report.sse_server_p99_ms = server.quantile(0.99) * 1000.0;
        progress(format!(
            "  applied → received p50 {:.1} ms, p99 {:.1} ms; feed write → send p50 {:.1} ms, p99 {:.1} ms",
            report.sse_latency_p50_ms,
            report.sse_latency_p99_ms,
            report.sse_server_p50_ms,
            report.sse_server_p99_ms
        ));

        progress(format!(
            "streams: throughput with the {n} subscribers attached ({} checkouts of the mix)",
            o.sse_checkouts
        ));
        let with_first = self.burst(o.sse_checkouts, "ssb", 820_000_000_000).await?;
        progress(format!("  {with_first:.0} events/s; once more"));
        let with_second = self.burst(o.sse_checkouts, "ssc", 830_000_000_000).await?;
        progress(format!("  {with_second:.0} events/s"));
        stop.store(true, Ordering::Release);
        for t in tasks {
            t.abort();
        }
        report.sse_streams_dropped = received.lock().unwrap().dropped;
        self.wait_closed().await?;
        progress(format!(
            "streams: throughput without subscribers again ({} checkouts of the mix)",
            o.sse_checkouts
        ));
        let without_second = self.burst(o.sse_checkouts, "ssd", 840_000_000_000).await?;
        progress(format!("  {without_second:.0} events/s"));
        report.sse_throughput_without = (without_first + without_second) / 2.0;
        report.sse_throughput_with = (with_first + with_second) / 2.0;
        report.sse_throughput_ratio = report.sse_throughput_with / report.sse_throughput_without;
        progress(format!(
            "  without {:.0} (mean of {without_first:.0}, {without_second:.0}), with {:.0} (mean of {with_first:.0}, {with_second:.0}) events/s: {:+.1} %",
            report.sse_throughput_without,
            report.sse_throughput_with,
            (report.sse_throughput_ratio - 1.0) * 100.0
        ));
        Ok(())
    }

    fn worker_rss(&self) -> f64 {
        self.worker.as_ref().map_or(0.0, |w| w.rss_mb().0)
    }

    async fn worker_metrics(&self) -> anyhow::Result<String> {
        self.worker
            .as_ref()
            .context("no worker")?
            .metrics_page()
            .await
    }

    fn worker_base(&self) -> anyhow::Result<String> {
        Ok(self.worker.as_ref().context("no worker")?.base.clone())
    }

    /// Waits until the worker has seen every stream's client go.
    async fn wait_closed(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let page = self.worker_metrics().await?;
            let open = prom::sum(&page, "orderflow_sse_connections", &[]);
            if open == 0.0 {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                progress(format!(
                    "  {open} streams still open after their clients left"
                ));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_connections(&self, n: u64) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let page = self.worker_metrics().await?;
            let open = prom::sum(&page, "orderflow_sse_connections", &[]);
            if open as u64 >= n {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("only {open} of {n} streams opened");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn sse_histogram(&self) -> anyhow::Result<Histogram> {
        let page = self.worker_metrics().await?;
        Ok(Histogram::parse_unlabelled(
            &page,
            "orderflow_sse_commit_to_send_seconds",
        ))
    }

    /// Checkout `sse-k` (user `USER_BASE + k`), and `PAYMENT_LAG` checkouts
    /// later its payment, alternating, at `rate` events/s.
    async fn feed_subscribers(&self, checkouts: u64, rate: u64) -> anyhow::Result<u64> {
        let t = &self.settings().topics;
        let mut rng = rand::thread_rng();
        let mut made = Vec::with_capacity(checkouts as usize);
        let total = 2 * checkouts;
        let secs = total.div_ceil(rate);
        let mut next_checkout = 0u64;
        let mut next_payment = 0u64;
        let sent = at_rate(rate, secs, |_| {
            let pay_due = next_payment + PAYMENT_LAG <= next_checkout || next_checkout == checkouts;
            if pay_due && next_payment < checkouts {
                let c = &made[next_payment as usize];
                let p = payment_for(c, &self.tables);
                let mut p = p;
                p.occurred_at = chrono::Utc::now();
                enqueue(
                    &self.latency_producer,
                    &t.payment_confirmations,
                    p.order_id.as_str(),
                    &serde_json::to_vec(&p)?,
                )?;
                next_payment += 1;
            } else if next_checkout < checkouts {
                let k = next_checkout;
                let order_id = OrderId::parse(&format!("sse-{k}"))?;
                let mut c = sample_checkout(&mut rng, &order_id, CART_BASE + k as i64, false);
                c.user_id = USER_BASE + k as i64;
                c.occurred_at = chrono::Utc::now();
                enqueue(
                    &self.latency_producer,
                    &t.checkouts,
                    order_id.as_str(),
                    &serde_json::to_vec(&c)?,
                )?;
                made.push(c);
                next_checkout += 1;
            }
            Ok(())
        })
        .await?;
        self.latency_producer
            .flush(Timeout::After(Duration::from_secs(30)))?;
        Ok(sent.min(total))
    }

    /// Produces `checkouts` of the mix (orders `<prefix>-n`) while the
    /// worker runs, and returns events/s from the first send to the last
    /// commit.
    /// The mix of `checkouts` checkouts (orders `<prefix>-n`, carts from
    /// `cart_base`), produced while the worker runs; events/s to the last
    /// commit.
    pub(crate) async fn burst(
        &self,
        checkouts: u64,
        prefix: &str,
        cart_base: i64,
    ) -> anyhow::Result<f64> {
        let already = self.processed_now().await?;
        let started = Instant::now();
        let total = self.produce_mix_named(checkouts, prefix, cart_base).await?;
        let target = already + total as i64;
        while self.processed_now().await? < target {
            if started.elapsed() > Duration::from_secs(900) {
                bail!("the burst did not finish in 15 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(total as f64 / started.elapsed().as_secs_f64())
    }

    async fn processed_now(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM processed_events")
            .fetch_one(&self.pool)
            .await?)
    }
}

/// One stream: opens it, counts what arrives, until stopped.
async fn subscriber(
    http: reqwest::Client,
    url: String,
    received: Arc<Mutex<Received>>,
    stop: Stop,
) {
    let mut stream = match sse::connect(&http, &url, None).await {
        Ok(s) => s,
        Err(_) => {
            received.lock().unwrap().dropped += 1;
            return;
        }
    };
    while !stop.load(Ordering::Acquire) {
        match stream.next(Duration::from_secs(3600)).await {
            Ok(Some(event)) => {
                let now = chrono::Utc::now();
                let mut r = received.lock().unwrap();
                if event.event == "snapshot" {
                    r.snapshots += 1;
                    continue;
                }
                r.events += 1;
                // Epoch milliseconds, as on order-events.
                if let Some(at) = event.json()["occurred_at"].as_i64() {
                    let ms = (now.timestamp_micros() - at * 1000) as f64 / 1000.0;
                    r.latencies_ms.push(ms);
                }
            }
            _ => {
                if !stop.load(Ordering::Acquire) {
                    received.lock().unwrap().dropped += 1;
                }
                return;
            }
        }
    }
}
