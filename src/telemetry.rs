//! Logging setup and every Prometheus metric orderflow exports.
//!
//! A leaf: it imports nothing of orderflow, and callers pass label values as
//! strings. Metrics live in a [`Metrics`] value with its own registry rather
//! than the process-global one, so that several apps in one test process do
//! not count into each other. Names use the `orderflow_` prefix, `_total` on
//! counters and the unit in the name; labels are few and low-cardinality
//! (never an order id).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{
    exponential_buckets, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global tracing subscriber, JSON lines or text (coloured
/// only when stderr is a terminal, so log files hold no escape codes).
/// `RUST_LOG` filters (default `info,rdkafka=warn,sqlx=warn`).
pub fn init_tracing(json: bool) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

pub struct Metrics {
    registry: Registry,
    /// The standard `process_*` metrics, unprefixed as dashboards expect.
    process: Registry,
    liveness: Mutex<HashMap<String, LoopHealth>>,
    /// The relay leader's oldest unpublished outbox row: its age when
    /// measured, and when that was. The gauge is computed from it at each
    /// scrape, so it keeps growing while the relay fails or backs off.
    oldest_unpublished: Mutex<Option<(Duration, Instant)>>,
    consumer: ConsumerMetrics,
    outbox: OutboxMetrics,
    http: HttpMetrics,
    orders: OrdersMetrics,
    streams: StreamMetrics,
}

fn latency_buckets() -> Vec<f64> {
    // 0.5 ms .. ~65 s
    exponential_buckets(0.0005, 2.0, 18).expect("valid buckets")
}

/// Finer where the latency objective lives (tens of milliseconds, 100 ms
/// exactly a bound), so quantiles read off it are within a few ms.
fn end_to_end_buckets() -> Vec<f64> {
    vec![
        0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1,
        0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    ]
}

/// The consumer loops.
struct ConsumerMetrics {
    assigned_partitions: IntGaugeVec,
    rebalances: IntCounterVec,
    group_unowned: IntGaugeVec,
    group_lag: IntGaugeVec,
    group_rejoins: IntCounterVec,
    messages: IntCounterVec,
    batch_duration: HistogramVec,
    batch_wait: HistogramVec,
    batch_size: HistogramVec,
    end_to_end_latency: HistogramVec,
    transient_failures: IntCounterVec,
    consumer_lag: IntGaugeVec,
    consumer_up: IntGaugeVec,
    rewinds: IntCounterVec,
    offsets_skipped: IntCounterVec,
}

impl ConsumerMetrics {
    fn new(r: &Registrar) -> Self {
        let sizes = exponential_buckets(1.0, 2.0, 12).expect("valid buckets");
        ConsumerMetrics {
            messages: r.counters(
                "messages_total",
                "Consumed messages by topic and outcome",
                &["topic", "outcome"],
            ),
            batch_duration: r.histograms(
                "batch_duration_seconds",
                "Time to apply and commit one batch",
                latency_buckets(),
                &["topic"],
            ),
            batch_wait: r.histograms(
                "batch_wait_seconds",
                "How long a batch's oldest message waited in the loop before the batch started (its partition's previous batch in flight, or no free slot)",
                end_to_end_buckets(),
                &["topic"],
            ),
            batch_size: r.histograms(
                "batch_size_messages",
                "Messages per committed batch",
                sizes,
                &["topic"],
            ),
            end_to_end_latency: r.histograms(
                "end_to_end_latency_seconds",
                "From the event's occurred_at to the commit of its effect",
                end_to_end_buckets(),
                &["topic"],
            ),
            transient_failures: r.counters(
                "transient_failures_total",
                "Batches retried after a transient failure",
                &["topic"],
            ),
            consumer_lag: r.gauges(
                "consumer_lag_messages",
                "Messages behind the high watermark, from librdkafka statistics",
                &["topic", "partition"],
            ),
            assigned_partitions: r.gauges(
                "consumer_assigned_partitions",
                "Partitions of a topic assigned to this instance's loop",
                &["topic"],
            ),
            rebalances: r.counters(
                "rebalances_total",
                "Partition assignments and revocations seen by a loop",
                &["topic", "kind"],
            ),
            group_unowned: r.gauges(
                "group_unowned_partitions",
                "Partitions of a group's topic that no live member reports owning",
                &["group", "topic"],
            ),
            group_lag: r.gauges(
                "group_lag_messages",
                "A group's lag summed over every partition of its topic, from its committed offsets",
                &["group", "topic"],
            ),
            group_rejoins: r.counters(
                "group_rejoins_total",
                "Times this instance rejoined a group to repair unowned partitions",
                &["group"],
            ),
            consumer_up: r.gauges(
                "consumer_up",
                "1 while the consumer loop of a topic runs and its client is in contact with a broker and its group coordinator",
                &["topic"],
            ),
            rewinds: r.counters(
                "consumer_rewinds_total",
                "Seeks back over a gap the broker left in a gap-free topic (order-events)",
                &["topic"],
            ),
            offsets_skipped: r.counters(
                "consumer_offsets_skipped_total",
                "Offsets of a gap-free topic never delivered, even reading from offset 0",
                &["topic"],
            ),
        }
    }
}

/// The outbox relay.
struct OutboxMetrics {
    outbox_backlog: IntGauge,
    oldest_unpublished_age: Gauge,
    relay_leader: IntGauge,
    relay_shards: IntGauge,
    outbox_published: IntCounterVec,
    outbox_publish_latency: Histogram,
    outbox_publish_failures: IntCounter,
    outbox_purged: IntCounter,
    inbox_purged: IntCounter,
}

impl OutboxMetrics {
    fn new(r: &Registrar) -> Self {
        OutboxMetrics {
            outbox_backlog: r.gauge("outbox_backlog", "Outbox records not yet published"),
            oldest_unpublished_age: r.add(Gauge::new(
                "outbox_oldest_unpublished_age_seconds",
                "Age of the oldest outbox record not yet published (0 when none, or on a relay standby)",
            )),
            relay_leader: r.gauge(
                "relay_leader",
                "1 while this instance holds at least one outbox shard's lease and publishes it",
            ),
            relay_shards: r.gauge(
                "relay_shards",
                "Outbox shards whose lease this instance holds (of OUTBOX_SHARDS)",
            ),
            outbox_published: r.counters(
                "outbox_published_total",
                "Outbox records published, by destination topic",
                &["topic"],
            ),
            outbox_publish_latency: r.add(Histogram::with_opts(
                HistogramOpts::new(
                    "outbox_publish_latency_seconds",
                    "From an outbox record's creation to its acknowledged publication",
                )
                .buckets(latency_buckets()),
            )),
            outbox_publish_failures: r.counter(
                "outbox_publish_failures_total",
                "Relay batches that failed to publish and will be retried",
            ),
            outbox_purged: r.counter(
                "outbox_purged_total",
                "Outbox rows marked published by an older version, deleted after OUTBOX_RETENTION_SECS",
            ),
            inbox_purged: r.counter(
                "inbox_purged_total",
                "Inbox rows (applied event ids) deleted after DEDUPE_RETENTION",
            ),
        }
    }
}

/// The HTTP API.
struct HttpMetrics {
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    reads: IntCounterVec,
    replica_lag_seconds: Gauge,
    replica_lag_bytes: IntGauge,
}

impl HttpMetrics {
    fn new(r: &Registrar) -> Self {
        let http_buckets = exponential_buckets(0.0001, 2.0, 16).expect("valid buckets");
        HttpMetrics {
            http_requests: r.counters(
                "http_requests_total",
                "HTTP requests by route and status",
                &["route", "status"],
            ),
            http_duration: r.histograms(
                "http_request_duration_seconds",
                "HTTP request latency by route",
                http_buckets,
                &["route"],
            ),
            reads: r.counters(
                "http_reads_total",
                "Reads of the HTTP read routes by the database that served them (with DATABASE_READ_URL)",
                &["source"],
            ),
            replica_lag_seconds: r.add(Gauge::new(
                "replica_lag_seconds",
                "How far the read replica (DATABASE_READ_URL) is behind the primary: 0 when it has replayed what the primary had written, else the time since the last transaction it replayed committed",
            )),
            replica_lag_bytes: r.gauge(
                "replica_lag_bytes",
                "WAL bytes the read replica has not replayed yet",
            ),
        }
    }
}

/// Live order streams (server-sent events).
struct StreamMetrics {
    connections: IntGaugeVec,
    events_sent: IntCounter,
    disconnects: IntCounterVec,
    commit_to_send: Histogram,
    feed_reads: IntCounter,
}

impl StreamMetrics {
    fn new(r: &Registrar) -> Self {
        StreamMetrics {
            connections: r.gauges("sse_connections", "Open live streams by route", &["route"]),
            events_sent: r.counter(
                "sse_events_sent_total",
                "Events written to live streams (snapshots included)",
            ),
            disconnects: r.counters(
                "sse_disconnects_total",
                "Live streams ended, by reason: client, slow (buffer full), shutdown, error",
                &["reason"],
            ),
            commit_to_send: r.add(Histogram::with_opts(
                HistogramOpts::new(
                    "sse_commit_to_send_seconds",
                    "From an order event's write in its batch transaction to its send on a stream",
                )
                .buckets(end_to_end_buckets()),
            )),
            feed_reads: r.counter(
                "feed_reads_total",
                "Reads of the order feed by this instance's tailer",
            ),
        }
    }
}

/// Orders, money and parked events.
struct OrdersMetrics {
    transitions: IntCounterVec,
    refunds: IntCounterVec,
    refunded_minor: IntCounterVec,
    created: IntCounterVec,
    revenue_minor: IntCounterVec,
    payments_rejected: IntCounter,
    unparked: IntCounter,
    parked: IntGauge,
    parked_oldest_age: prometheus::Gauge,
    parked_stale: IntGauge,
    orders_by_status: IntGaugeVec,
}

impl OrdersMetrics {
    fn new(r: &Registrar) -> Self {
        OrdersMetrics {
            transitions: r.counters(
                "order_transitions_total",
                "Order status changes by from and to status",
                &["from", "to"],
            ),
            refunds: r.counters(
                "refunds_requested_total",
                "Refunds requested, by currency",
                &["currency"],
            ),
            refunded_minor: r.counters(
                "refunds_requested_minor_units_total",
                "Amount of refunds requested, in minor units",
                &["currency"],
            ),
            created: r.counters(
                "orders_created_total",
                "Orders created (priced, not rejected), by currency",
                &["currency"],
            ),
            revenue_minor: r.counters(
                "revenue_minor_units_total",
                "Gross revenue: amounts of the payments that paid orders, in minor units",
                &["currency"],
            ),
            payments_rejected: r.counter(
                "payments_rejected_total",
                "Confirmed payments that did not fit their order (wrong amount or currency)",
            ),
            unparked: r.counter(
                "parked_events_applied_total",
                "Parked events applied because their checkout arrived",
            ),
            parked: r.gauge("parked_events", "Events waiting for their order's checkout"),
            parked_oldest_age: r.add(prometheus::Gauge::new(
                "parked_events_oldest_age_seconds",
                "Age of the oldest parked event",
            )),
            parked_stale: r.gauge(
                "parked_events_stale",
                "Parked events older than PARKED_MAX_AGE_SECS",
            ),
            orders_by_status: r.gauges(
                "orders",
                "Orders in the store by status (refreshed every few seconds)",
                &["status"],
            ),
        }
    }
}

/// Registers metrics as they are made; a definition that does not register
/// is a programming error, found by the first test that makes a `Metrics`.
struct Registrar(Registry);

impl Registrar {
    fn add<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        metric: prometheus::Result<M>,
    ) -> M {
        let metric = metric.expect("valid metric definition");
        self.0
            .register(Box::new(metric.clone()))
            .expect("metric registered once");
        metric
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help))
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels))
    }

    fn histograms(
        &self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
        labels: &[&str],
    ) -> HistogramVec {
        self.add(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets),
            labels,
        ))
    }
}

/// What makes a consumer loop "up" (see [`Metrics::consumer_running`]).
struct LoopHealth {
    running: bool,
    contact: Option<Instant>,
    window: Duration,
}

impl LoopHealth {
    fn up(&self) -> bool {
        self.running && self.contact.is_some_and(|at| at.elapsed() <= self.window)
    }
}

/// Marks a consumer loop running until dropped, so a loop that ends or
/// panics reads down.
pub struct LoopRunning {
    metrics: Arc<Metrics>,
    topic: String,
}

impl Drop for LoopRunning {
    fn drop(&mut self) {
        if let Some(health) = self.metrics.liveness().get_mut(&self.topic) {
            health.running = false;
        }
        self.metrics.refresh_liveness();
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r =
            Registrar(Registry::new_custom(Some("orderflow".into()), None).expect("valid prefix"));
        let build_info = r.gauges(
            "build_info",
            "Always 1; the labels say which build runs",
            &["version", "git_sha"],
        );
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("ORDERFLOW_GIT_SHA").unwrap_or("unknown"),
            ])
            .set(1);
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        process
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registered once");
        Metrics {
            process,
            liveness: Mutex::new(HashMap::new()),
            oldest_unpublished: Mutex::new(None),
            consumer: ConsumerMetrics::new(&r),
            outbox: OutboxMetrics::new(&r),
            http: HttpMetrics::new(&r),
            orders: OrdersMetrics::new(&r),
            streams: StreamMetrics::new(&r),
            registry: r.0,
        }
    }

    /// Orders by status; pass every status, with 0 for the empty ones.
    pub fn set_orders_by_status(&self, counts: &[(&str, i64)]) {
        for (status, n) in counts {
            self.orders
                .orders_by_status
                .with_label_values(&[status])
                .set(*n);
        }
    }

    /// An order moved from one status to another (counted after the commit).
    pub fn transition(&self, from: &str, to: &str) {
        self.orders.transitions.with_label_values(&[from, to]).inc();
    }

    /// A refund of `amount_minor` was requested.
    pub fn refund_requested(&self, currency: &str, amount_minor: i64) {
        self.orders.refunds.with_label_values(&[currency]).inc();
        self.orders
            .refunded_minor
            .with_label_values(&[currency])
            .inc_by(u64::try_from(amount_minor).unwrap_or(0));
    }

    /// An order was created in `currency`.
    pub fn order_created(&self, currency: &str) {
        self.orders.created.with_label_values(&[currency]).inc();
    }

    /// An order was paid `amount_minor`.
    pub fn revenue(&self, currency: &str, amount_minor: i64) {
        self.orders
            .revenue_minor
            .with_label_values(&[currency])
            .inc_by(u64::try_from(amount_minor).unwrap_or(0));
    }

    pub fn payments_rejected(&self, n: u64) {
        self.orders.payments_rejected.inc_by(n);
    }

    /// Parked events applied because their checkout arrived.
    pub fn parked_applied(&self, n: u64) {
        self.orders.unparked.inc_by(n);
    }

    /// The parked-events gauges; warns while any is older than the maximum.
    pub fn set_parked(&self, count: i64, oldest_age_seconds: f64, stale: i64) {
        self.orders.parked.set(count);
        self.orders.parked_oldest_age.set(oldest_age_seconds);
        self.orders.parked_stale.set(stale);
        if stale > 0 {
            tracing::warn!(
                stale,
                oldest_age_seconds,
                "parked events are older than PARKED_MAX_AGE_SECS"
            );
        }
    }

    /// The text exposition format served on `/metrics`.
    pub fn render(&self) -> String {
        self.refresh_liveness();
        let age = self
            .oldest_unpublished
            .lock()
            .expect("oldest unpublished lock")
            .map_or(0.0, |(age, at)| (age + at.elapsed()).as_secs_f64());
        self.outbox.oldest_unpublished_age.set(age);
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }

    /// A consumed message ended with `outcome` (see `store::inbox::Outcome`).
    pub fn message_handled(&self, topic: &str, outcome: &str) {
        self.consumer
            .messages
            .with_label_values(&[topic, outcome])
            .inc();
    }

    pub fn messages_count(&self, topic: &str, outcome: &str) -> u64 {
        self.consumer
            .messages
            .with_label_values(&[topic, outcome])
            .get()
    }

    pub fn batch_committed(&self, topic: &str, size: usize, waited: Duration, took: Duration) {
        self.consumer
            .batch_wait
            .with_label_values(&[topic])
            .observe(waited.as_secs_f64());
        self.consumer
            .batch_duration
            .with_label_values(&[topic])
            .observe(took.as_secs_f64());
        self.consumer
            .batch_size
            .with_label_values(&[topic])
            .observe(size as f64);
    }

    pub fn end_to_end(&self, topic: &str, latency: Duration) {
        self.consumer
            .end_to_end_latency
            .with_label_values(&[topic])
            .observe(latency.as_secs_f64());
    }

    pub fn transient_failure(&self, topic: &str, error: &anyhow::Error, retry_in: Duration) {
        self.consumer
            .transient_failures
            .with_label_values(&[topic])
            .inc();
        tracing::warn!(
            topic,
            error = format!("{error:#}"),
            retry_in_ms = retry_in.as_millis() as u64,
            "transient failure, retrying batch"
        );
    }

    pub fn transient_failures_count(&self, topic: &str) -> u64 {
        self.consumer
            .transient_failures
            .with_label_values(&[topic])
            .get()
    }

    pub fn set_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer
            .consumer_lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag);
    }

    pub fn forget_partition(&self, topic: &str, partition: i32) {
        let _ = self
            .consumer
            .consumer_lag
            .remove_label_values(&[topic, &partition.to_string()]);
    }

    /// A loop's assignment changed: `kind` is `assign` or `revoke`.
    pub fn rebalanced(&self, topic: &str, kind: &str, assigned: usize) {
        self.consumer
            .rebalances
            .with_label_values(&[topic, kind])
            .inc();
        self.consumer
            .assigned_partitions
            .with_label_values(&[topic])
            .set(assigned as i64);
    }

    /// Ownership and lag of a group as the membership watch measured them.
    pub fn set_group_state(&self, group: &str, topic: &str, unowned: i64, lag: i64) {
        self.consumer
            .group_unowned
            .with_label_values(&[group, topic])
            .set(unowned);
        self.consumer
            .group_lag
            .with_label_values(&[group, topic])
            .set(lag);
    }

    /// A loop sought back over a gap the broker left.
    pub fn rewound(&self, topic: &str) {
        self.consumer.rewinds.with_label_values(&[topic]).inc();
    }

    /// A loop went on past `n` offsets it could not be given.
    pub fn offsets_skipped(&self, topic: &str, n: i64) {
        self.consumer
            .offsets_skipped
            .with_label_values(&[topic])
            .inc_by(u64::try_from(n).unwrap_or(0));
    }

    pub fn group_rejoined(&self, group: &str) {
        self.consumer
            .group_rejoins
            .with_label_values(&[group])
            .inc();
    }

    /// The loop of `topic` runs until the guard is dropped. It is up while
    /// it runs and its client was last in contact with a broker and its
    /// group coordinator ([`Metrics::consumer_contact`]) at most `window`
    /// ago.
    pub fn consumer_running(self: &Arc<Self>, topic: &str, window: Duration) -> LoopRunning {
        self.liveness().insert(
            topic.to_owned(),
            LoopHealth {
                running: true,
                contact: None,
                window,
            },
        );
        self.refresh_liveness();
        LoopRunning {
            metrics: self.clone(),
            topic: topic.to_owned(),
        }
    }

    /// The loop of `topic` is in contact with a broker and its group's
    /// coordinator (statistics said so, or partitions were assigned).
    pub fn consumer_contact(&self, topic: &str) {
        if let Some(health) = self.liveness().get_mut(topic) {
            health.contact = Some(Instant::now());
        }
    }

    pub fn consumer_is_up(&self, topic: &str) -> bool {
        self.liveness().get(topic).is_some_and(LoopHealth::up)
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, HashMap<String, LoopHealth>> {
        self.liveness.lock().expect("liveness lock")
    }

    fn refresh_liveness(&self) {
        for (topic, health) in self.liveness().iter() {
            self.consumer
                .consumer_up
                .with_label_values(&[topic])
                .set(i64::from(health.up()));
        }
    }

    /// This relay holds `shards` outbox shards (leader while any).
    pub fn set_relay_shards(&self, shards: usize) {
        self.outbox.relay_leader.set(i64::from(shards > 0));
        self.outbox.relay_shards.set(shards as i64);
    }

    /// The whole outbox's backlog as a publishing relay counted it, with the
    /// age of its oldest row; `(0, None)` on a relay holding no shard.
    pub fn set_outbox_backlog(&self, rows: i64, oldest_age: Option<Duration>) {
        self.outbox.outbox_backlog.set(rows);
        *self
            .oldest_unpublished
            .lock()
            .expect("oldest unpublished lock") = oldest_age.map(|age| (age, Instant::now()));
    }

    pub fn outbox_published(&self, topic: &str, age: Duration) {
        self.outbox
            .outbox_published
            .with_label_values(&[topic])
            .inc();
        self.outbox
            .outbox_publish_latency
            .observe(age.as_secs_f64());
    }

    pub fn outbox_publish_failed(&self, error: &anyhow::Error) {
        self.outbox.outbox_publish_failures.inc();
        tracing::warn!(
            error = format!("{error:#}"),
            "outbox publish failed; will retry"
        );
    }

    pub fn outbox_purged(&self, rows: u64) {
        self.outbox.outbox_purged.inc_by(rows);
        if rows > 0 {
            tracing::debug!(rows, "purged published outbox rows");
        }
    }

    pub fn inbox_purged(&self, rows: u64) {
        self.outbox.inbox_purged.inc_by(rows);
        if rows > 0 {
            tracing::debug!(rows, "purged inbox rows past DEDUPE_RETENTION");
        }
    }

    /// A live stream opened (+1) or closed (-1) on `route`.
    pub fn sse_connections(&self, route: &str, delta: i64) {
        self.streams
            .connections
            .with_label_values(&[route])
            .add(delta);
    }

    /// An event sent on a stream; `since_commit` for events of the feed.
    pub fn sse_event_sent(&self, since_commit: Option<Duration>) {
        self.streams.events_sent.inc();
        if let Some(took) = since_commit {
            self.streams.commit_to_send.observe(took.as_secs_f64());
        }
    }

    pub fn sse_disconnect(&self, reason: &str) {
        self.streams.disconnects.with_label_values(&[reason]).inc();
    }

    pub fn feed_read(&self) {
        self.streams.feed_reads.inc();
    }

    /// A read route served by `source` (`primary` or `replica`).
    pub fn http_read(&self, source: &str) {
        self.http.reads.with_label_values(&[source]).inc();
    }

    pub fn replica_lag(&self, seconds: f64, bytes: u64) {
        self.http.replica_lag_seconds.set(seconds);
        self.http
            .replica_lag_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn http_request(&self, route: &str, status: u16, took: Duration) {
        self.http
            .http_requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.http
            .http_duration
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_prefix_and_labels() {
        let m = Arc::new(Metrics::new());
        m.message_handled("checkouts", "dead_lettered");
        let running = m.consumer_running("checkouts", Duration::from_secs(60));
        m.consumer_contact("checkouts");
        let text = m.render();
        assert!(
            text.contains(
                r#"orderflow_messages_total{outcome="dead_lettered",topic="checkouts"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"orderflow_consumer_up{topic="checkouts"} 1"#));
        assert!(text.contains("orderflow_build_info{"), "{text}");
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(m.consumer_is_up("checkouts"));
        assert!(!m.consumer_is_up("cancellations"));
        drop(running);
        assert!(!m.consumer_is_up("checkouts"), "a dropped loop reads down");
        assert!(m
            .render()
            .contains(r#"orderflow_consumer_up{topic="checkouts"} 0"#));
    }

    #[test]
    fn a_loop_is_up_only_after_contact_and_while_it_is_fresh() {
        let m = Arc::new(Metrics::new());
        let _running = m.consumer_running("checkouts", Duration::from_millis(50));
        assert!(!m.consumer_is_up("checkouts"), "no broker contact yet");
        m.consumer_contact("checkouts");
        assert!(m.consumer_is_up("checkouts"));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!m.consumer_is_up("checkouts"), "contact went stale");
    }

    #[test]
    fn the_oldest_unpublished_age_keeps_growing_between_measurements() {
        let m = Metrics::new();
        m.set_outbox_backlog(3, Some(Duration::from_secs(100)));
        m.render();
        let age = m.outbox.oldest_unpublished_age.get();
        std::thread::sleep(Duration::from_millis(20));
        m.render();
        let later = m.outbox.oldest_unpublished_age.get();
        assert!(later > 100.0 && later > age, "{age} -> {later}");
        m.set_outbox_backlog(0, None);
        m.render();
        assert_eq!(m.outbox.oldest_unpublished_age.get(), 0.0);
    }
}
