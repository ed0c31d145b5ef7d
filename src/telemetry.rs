//! Logging setup and every Prometheus metric orderflow exports.
//!
//! Metrics live in a [`Metrics`] value with its own registry rather than the
//! process-global one, so that several apps in one test process do not count
//! into each other. Names use the `orderflow_` prefix, `_total` on counters and
//! the unit in the name; labels are few and low-cardinality (never an order id).

use std::time::Duration;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global tracing subscriber. `RUST_LOG` filters (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// How a consumed message ended. The label value of `orderflow_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The event changed state (created an order, ...).
    Applied,
    /// Already seen (same event id, same cart): nothing changed.
    Duplicate,
    /// Understood but refused by the business rules; recorded and announced.
    Rejected,
    /// Could not be understood; sent to the dead-letter topic with the reason.
    DeadLettered,
    /// For an order not known yet; stored until its checkout arrives.
    Parked,
    /// Valid but changes nothing (cancelling a cancelled order).
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected => "rejected",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Parked => "parked",
            Outcome::Ignored => "ignored",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    messages: IntCounterVec,
    batch_duration: HistogramVec,
    batch_size: HistogramVec,
    end_to_end_latency: HistogramVec,
    transient_failures: IntCounterVec,
    consumer_lag: IntGaugeVec,
    consumer_up: IntGaugeVec,
    outbox_backlog: IntGauge,
    outbox_published: IntCounterVec,
    outbox_publish_latency: Histogram,
    outbox_publish_failures: IntCounter,
    outbox_purged: IntCounter,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    transitions: IntCounterVec,
    refunds: IntCounterVec,
    refunded_minor: IntCounterVec,
    payments_rejected: IntCounter,
    unparked: IntCounter,
    parked: IntGauge,
    parked_oldest_age: prometheus::Gauge,
    parked_stale: IntGauge,
    orders_by_status: IntGaugeVec,
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

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("orderflow".into()), None).expect("valid prefix");
        macro_rules! register {
            ($metric:expr) => {{
                let m = $metric.expect("valid metric definition");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric registered once");
                m
            }};
        }
        Metrics {
            messages: register!(IntCounterVec::new(
                Opts::new("messages_total", "Consumed messages by topic and outcome"),
                &["topic", "outcome"]
            )),
            batch_duration: register!(HistogramVec::new(
                HistogramOpts::new(
                    "batch_duration_seconds",
                    "Time to apply and commit one batch"
                )
                .buckets(latency_buckets()),
                &["topic"]
            )),
            batch_size: register!(HistogramVec::new(
                HistogramOpts::new("batch_size_messages", "Messages per committed batch")
                    .buckets(exponential_buckets(1.0, 2.0, 12).expect("valid buckets")),
                &["topic"]
            )),
            end_to_end_latency: register!(HistogramVec::new(
                HistogramOpts::new(
                    "end_to_end_latency_seconds",
                    "From the event's occurred_at to the commit of its effect"
                )
                .buckets(end_to_end_buckets()),
                &["topic"]
            )),
            transient_failures: register!(IntCounterVec::new(
                Opts::new(
                    "transient_failures_total",
                    "Batches retried after a transient failure"
                ),
                &["topic"]
            )),
            consumer_lag: register!(IntGaugeVec::new(
                Opts::new(
                    "consumer_lag_messages",
                    "Messages behind the high watermark, from librdkafka statistics"
                ),
                &["topic", "partition"]
            )),
            consumer_up: register!(IntGaugeVec::new(
                Opts::new("consumer_up", "1 while the consumer loop of a topic runs"),
                &["topic"]
            )),
            outbox_backlog: register!(IntGauge::new(
                "outbox_backlog",
                "Outbox records not yet published"
            )),
            outbox_published: register!(IntCounterVec::new(
                Opts::new(
                    "outbox_published_total",
                    "Outbox records published, by destination topic"
                ),
                &["topic"]
            )),
            outbox_publish_latency: register!(Histogram::with_opts(
                HistogramOpts::new(
                    "outbox_publish_latency_seconds",
                    "From an outbox record's creation to its acknowledged publication"
                )
                .buckets(latency_buckets())
            )),
            outbox_publish_failures: register!(IntCounter::new(
                "outbox_publish_failures_total",
                "Relay batches that failed to publish and will be retried"
            )),
            outbox_purged: register!(IntCounter::new(
                "outbox_purged_total",
                "Published outbox rows deleted after retention"
            )),
            http_requests: register!(IntCounterVec::new(
                Opts::new("http_requests_total", "HTTP requests by route and status"),
                &["route", "status"]
            )),
            http_duration: register!(HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "HTTP request latency by route"
                )
                .buckets(exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
                &["route"]
            )),
            transitions: register!(IntCounterVec::new(
                Opts::new(
                    "order_transitions_total",
                    "Order status changes by from and to status"
                ),
                &["from", "to"]
            )),
            refunds: register!(IntCounterVec::new(
                Opts::new("refunds_requested_total", "Refunds requested, by currency"),
                &["currency"]
            )),
            refunded_minor: register!(IntCounterVec::new(
                Opts::new(
                    "refunds_requested_minor_units_total",
                    "Amount of refunds requested, in minor units"
                ),
                &["currency"]
            )),
            payments_rejected: register!(IntCounter::new(
                "payments_rejected_total",
                "Confirmed payments that did not fit their order (wrong amount or currency)"
            )),
            unparked: register!(IntCounter::new(
                "parked_events_applied_total",
                "Parked events applied because their checkout arrived"
            )),
            parked: register!(IntGauge::new(
                "parked_events",
                "Events waiting for their order's checkout"
            )),
            parked_oldest_age: register!(prometheus::Gauge::new(
                "parked_events_oldest_age_seconds",
                "Age of the oldest parked event"
            )),
            parked_stale: register!(IntGauge::new(
                "parked_events_stale",
                "Parked events older than PARKED_MAX_AGE_SECS"
            )),
            orders_by_status: register!(IntGaugeVec::new(
                Opts::new(
                    "orders",
                    "Orders in the store by status (refreshed every few seconds)"
                ),
                &["status"]
            )),
            registry,
        }
    }

    pub fn set_orders_by_status(&self, counts: &[(String, i64)]) {
        for status in crate::domain::OrderStatus::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| s == status.as_str())
                .map_or(0, |(_, n)| *n);
            self.orders_by_status
                .with_label_values(&[status.as_str()])
                .set(n);
        }
    }

    /// Business counters of one committed message.
    pub fn tally(&self, tally: &crate::workers::Tally) {
        for (from, to) in &tally.transitions {
            self.transitions
                .with_label_values(&[from.as_str(), to.as_str()])
                .inc();
        }
        for (currency, amount) in &tally.refunds {
            self.refunds.with_label_values(&[currency]).inc();
            self.refunded_minor
                .with_label_values(&[currency])
                .inc_by(u64::try_from(*amount).unwrap_or(0));
        }
        self.payments_rejected
            .inc_by(u64::from(tally.payments_rejected));
        self.unparked.inc_by(u64::from(tally.unparked));
    }

    pub fn parked(&self, stats: &crate::store::parked::ParkedStats) {
        self.parked.set(stats.count);
        self.parked_oldest_age.set(stats.oldest_age_seconds);
        self.parked_stale.set(stats.stale);
        if stats.stale > 0 {
            tracing::warn!(
                stale = stats.stale,
                oldest_age_seconds = stats.oldest_age_seconds,
                "parked events are older than PARKED_MAX_AGE_SECS"
            );
        }
    }

    /// The text exposition format served on `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }

    pub fn message_handled(&self, topic: &str, outcome: Outcome) {
        self.messages
            .with_label_values(&[topic, outcome.as_str()])
            .inc();
    }

    pub fn messages_count(&self, topic: &str, outcome: Outcome) -> u64 {
        self.messages
            .with_label_values(&[topic, outcome.as_str()])
            .get()
    }

    pub fn batch_committed(&self, topic: &str, size: usize, took: Duration) {
        self.batch_duration
            .with_label_values(&[topic])
            .observe(took.as_secs_f64());
        self.batch_size
            .with_label_values(&[topic])
            .observe(size as f64);
    }

    pub fn end_to_end(&self, topic: &str, latency: Duration) {
        self.end_to_end_latency
            .with_label_values(&[topic])
            .observe(latency.as_secs_f64());
    }

    pub fn transient_failure(&self, topic: &str, error: &anyhow::Error, retry_in: Duration) {
        self.transient_failures.with_label_values(&[topic]).inc();
        tracing::warn!(
            topic,
            error = format!("{error:#}"),
            retry_in_ms = retry_in.as_millis() as u64,
            "transient failure, retrying batch"
        );
    }

    pub fn transient_failures_count(&self, topic: &str) -> u64 {
        self.transient_failures.with_label_values(&[topic]).get()
    }

    pub fn set_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag);
    }

    pub fn forget_partition(&self, topic: &str, partition: i32) {
        let _ = self
            .consumer_lag
            .remove_label_values(&[topic, &partition.to_string()]);
    }

    pub fn set_consumer_up(&self, topic: &str, up: bool) {
        self.consumer_up
            .with_label_values(&[topic])
            .set(i64::from(up));
    }

    pub fn consumer_is_up(&self, topic: &str) -> bool {
        self.consumer_up.with_label_values(&[topic]).get() > 0
    }

    pub fn set_outbox_backlog(&self, rows: i64) {
        self.outbox_backlog.set(rows);
    }

    pub fn outbox_published(&self, topic: &str, age: Duration) {
        self.outbox_published.with_label_values(&[topic]).inc();
        self.outbox_publish_latency.observe(age.as_secs_f64());
    }

    pub fn outbox_publish_failed(&self, error: &anyhow::Error) {
        self.outbox_publish_failures.inc();
        tracing::warn!(
            error = format!("{error:#}"),
            "outbox publish failed; will retry"
        );
    }

    pub fn outbox_purged(&self, rows: u64) {
        self.outbox_purged.inc_by(rows);
        if rows > 0 {
            tracing::debug!(rows, "purged published outbox rows");
        }
    }

    pub fn http_request(&self, route: &str, status: u16, took: Duration) {
        self.http_requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.http_duration
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
        let m = Metrics::new();
        m.message_handled("checkouts", Outcome::DeadLettered);
        m.set_consumer_up("checkouts", true);
        let text = m.render();
        assert!(
            text.contains(
                r#"orderflow_messages_total{outcome="dead_lettered",topic="checkouts"} 1"#
            ),
            "{text}"
        );
        assert!(m.consumer_is_up("checkouts"));
        assert!(!m.consumer_is_up("cancellations"));
    }
}
