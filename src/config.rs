//! Settings, read once from environment variables at start and checked there.
//!
//! Every variable has a default that works on a developer machine (see the
//! README table). A value that does not parse fails start-up with a message
//! naming the variable; nothing is re-read later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// One environment variable orderflow reads.
pub struct Variable {
    pub name: &'static str,
    /// Empty: unset by default.
    pub default: &'static str,
    pub help: &'static str,
}

/// Every variable [`Settings::from_lookup`] reads (and `RUST_LOG`), for
/// `orderflow run --help`; the README's table says more about each. A test
/// keeps this list, the code and the README in step.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "DATABASE_URL",
        default: "postgres://postgres@127.0.0.1:5432/orderflow",
        help: "PostgreSQL (sslmode=require|verify-ca|verify-full, sslrootcert=PATH for TLS)",
    },
    Variable {
        name: "DATABASE_MAX_CONNECTIONS",
        default: "20",
        help: "pool size shared by the loops' batches and HTTP",
    },
    Variable {
        name: "DATABASE_READ_URL",
        default: "",
        help: "a streaming replica for the HTTP read routes (empty: the primary)",
    },
    Variable {
        name: "READ_MIN_LSN_WAIT_MS",
        default: "250",
        help: "how long a read with ?min_lsn= or ?min_event= waits for the replica before reading the primary",
    },
    Variable {
        name: "KAFKA_BROKERS",
        default: "127.0.0.1:9092",
        help: "bootstrap servers",
    },
    Variable {
        name: "KAFKA_GROUP_ID",
        default: "orderflow",
        help: "consumer group (the other loops use <id>.<topic>)",
    },
    Variable {
        name: "KAFKA_CONFIG",
        default: "",
        help: "extra librdkafka properties for every client, k=v,k=v or k=v;k=v",
    },
    Variable {
        name: "KAFKA_CONSUMER_CONFIG",
        default: "",
        help: "the same, for consumers only",
    },
    Variable {
        name: "KAFKA_PRODUCER_CONFIG",
        default: "",
        help: "the same, for producers only",
    },
    Variable {
        name: "KAFKA_STATISTICS_INTERVAL_MS",
        default: "5000",
        help: "librdkafka statistics: lag, broker contact (readiness)",
    },
    Variable {
        name: "TOPIC_CHECKOUTS",
        default: "checkouts",
        help: "input; dead letters on <name>.dlq",
    },
    Variable {
        name: "TOPIC_PAYMENT_CONFIRMATIONS",
        default: "payment-confirmations",
        help: "input; dead letters on <name>.dlq",
    },
    Variable {
        name: "TOPIC_CANCELLATIONS",
        default: "cancellations",
        help: "input; dead letters on <name>.dlq",
    },
    Variable {
        name: "TOPIC_ORDER_EVENTS",
        default: "order-events",
        help: "output; read by the analytics loop",
    },
    Variable {
        name: "SCHEMA_REGISTRY_URL",
        default: "",
        help: "Confluent-compatible registry: Avro in and out",
    },
    Variable {
        name: "TOPIC_REPLICATION_FACTOR",
        default: "1",
        help: "for topics apply; -1 = broker default",
    },
    Variable {
        name: "HTTP_ADDR",
        default: "127.0.0.1:8080",
        help: "HTTP listen address",
    },
    Variable {
        name: "BATCH_MAX_MESSAGES",
        default: "500",
        help: "most messages of a partition per transaction",
    },
    Variable {
        name: "BATCH_MAX_WAIT_MS",
        default: "0",
        help: "how long a partial batch lingers for more",
    },
    Variable {
        name: "BATCH_CONCURRENCY",
        default: "4",
        help: "batches one loop applies at once",
    },
    Variable {
        name: "MAX_MESSAGE_BYTES",
        default: "1000000",
        help: "larger payloads are dead-lettered",
    },
    Variable {
        name: "OUTBOX_POLL_INTERVAL_MS",
        default: "200",
        help: "relay polling when idle",
    },
    Variable {
        name: "OUTBOX_BATCH_SIZE",
        default: "1000",
        help: "rows the relay publishes per round",
    },
    Variable {
        name: "OUTBOX_RETENTION_SECS",
        default: "86400",
        help: "rows an older version marked published are deleted after this (published rows are deleted at once)",
    },
    Variable {
        name: "OUTBOX_SHARDS",
        default: "16",
        help: "outbox shards, each published by one relay at a time (1-256; the same on every instance)",
    },
    Variable {
        name: "DEDUPE_RETENTION",
        default: "8d",
        help: "how long the inbox remembers applied events (keep above the input topics' retention); off = for ever",
    },
    Variable {
        name: "DEFAULT_TAX_RATE_PPM",
        default: "0",
        help: "tax for a region without a tax_rates row",
    },
    Variable {
        name: "PARKED_MAX_AGE_SECS",
        default: "3600",
        help: "parked events older than this are reported",
    },
    Variable {
        name: "INSTANCE_ID",
        default: "host-pid-random",
        help: "this process's name among the instances",
    },
    Variable {
        name: "RELAY_LEASE_SECS",
        default: "10",
        help: "the relay's lease on the outbox",
    },
    Variable {
        name: "GROUP_REPAIR_AFTER_SECS",
        default: "60",
        help: "rejoin after partitions stay unowned this long; 0 = off",
    },
    Variable {
        name: "SSE_HEARTBEAT_SECS",
        default: "15",
        help: "comment line on every live stream this often",
    },
    Variable {
        name: "SSE_MAX_CONNECTIONS",
        default: "10000",
        help: "live streams per instance",
    },
    Variable {
        name: "SSE_BUFFER_EVENTS",
        default: "256",
        help: "events queued per live stream",
    },
    Variable {
        name: "FEED_RETENTION_SECS",
        default: "604800",
        help: "how long streams can resume from",
    },
    Variable {
        name: "ANALYTICS_DEDUPE_RETENTION_SECS",
        default: "691200",
        help: "how long analytics remembers counted event ids",
    },
    Variable {
        name: "ANALYTICS_BATCH_MAX_WAIT_MS",
        default: "250",
        help: "analytics batch gathering time",
    },
    Variable {
        name: "ANALYTICS_BATCH_MAX_MESSAGES",
        default: "5000",
        help: "order events per analytics batch",
    },
    Variable {
        name: "ANALYTICS_FETCH_WAIT_MS",
        default: "100",
        help: "fetch.wait.max.ms of the analytics consumer",
    },
    Variable {
        name: "SHUTDOWN_TIMEOUT_SECS",
        default: "30",
        help: "a graceful stop taking longer exits anyway",
    },
    Variable {
        name: "LOG_FORMAT",
        default: "text",
        help: "text or json",
    },
    Variable {
        name: "RUST_LOG",
        default: "info,rdkafka=warn,sqlx=warn",
        help: "log filter",
    },
];

/// [`VARIABLES`] as aligned text lines.
pub fn variables_help() -> String {
    let width = VARIABLES.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut text = String::from("Configuration (environment variables, default in brackets):\n");
    for v in VARIABLES {
        let default = if v.default.is_empty() {
            String::new()
        } else {
            format!(" [{}]", v.default)
        };
        text.push_str(&format!("  {:<width$}  {}{default}\n", v.name, v.help));
    }
    text
}

#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

/// Names of the topics orderflow reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub checkouts: String,
    pub payment_confirmations: String,
    pub cancellations: String,
    pub order_events: String,
}

impl Topics {
    /// The dead-letter topic of an input topic: `<input>.dlq`.
    pub fn dlq(input: &str) -> String {
        format!("{input}.dlq")
    }

    /// The three input topics' names.
    pub fn inputs(&self) -> [&str; 3] {
        [
            &self.checkouts,
            &self.payment_confirmations,
            &self.cancellations,
        ]
    }

    /// Every topic name keyed by its role in `topics/*.toml`.
    pub fn by_role(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("checkouts", self.checkouts.clone()),
            ("checkouts.dlq", Self::dlq(&self.checkouts)),
            ("payment-confirmations", self.payment_confirmations.clone()),
            (
                "payment-confirmations.dlq",
                Self::dlq(&self.payment_confirmations),
            ),
            ("cancellations", self.cancellations.clone()),
            ("cancellations.dlq", Self::dlq(&self.cancellations)),
            ("order-events", self.order_events.clone()),
            ("order-events.analytics.dlq", self.analytics_dlq()),
        ])
    }

    /// Where the analytics loop dead-letters the `order-events` it cannot
    /// read: `<order-events>.analytics.dlq`.
    pub fn analytics_dlq(&self) -> String {
        format!("{}.analytics.dlq", self.order_events)
    }

    /// Each name with the environment variable that sets it, e.g. to start
    /// another `orderflow` process on the same topics.
    pub fn vars(&self) -> [(&'static str, &str); 4] {
        [
            ("TOPIC_CHECKOUTS", &self.checkouts),
            ("TOPIC_PAYMENT_CONFIRMATIONS", &self.payment_confirmations),
            ("TOPIC_CANCELLATIONS", &self.cancellations),
            ("TOPIC_ORDER_EVENTS", &self.order_events),
        ]
    }

    /// A fresh set of names under a prefix, for tests and benchmarks.
    pub fn prefixed(prefix: &str) -> Self {
        Topics {
            checkouts: format!("{prefix}checkouts"),
            payment_confirmations: format!("{prefix}payment-confirmations"),
            cancellations: format!("{prefix}cancellations"),
            order_events: format!("{prefix}order-events"),
        }
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics::prefixed("")
    }
}

/// `Debug` leaves out secrets: see the impl below.
#[derive(Clone)]
pub struct Settings {
    pub database_url: String,
    pub database_max_connections: u32,
    /// A streaming replica the HTTP read routes use (`DATABASE_READ_URL`);
    /// `None`: the primary.
    pub database_read_url: Option<String>,
    /// How long a read that must see what its client has seen (`?min_lsn=`,
    /// `?min_event=`) waits for the replica before reading the primary.
    pub read_min_lsn_wait: Duration,
    pub kafka_brokers: String,
    /// Extra librdkafka properties for every client (`KAFKA_CONFIG`, `k=v,k=v`
    /// or `k=v;k=v`), e.g. `security.protocol=SASL_SSL`.
    pub kafka_extra: Vec<(String, String)>,
    /// Extra properties for consumers only (`KAFKA_CONSUMER_CONFIG`).
    pub kafka_consumer_extra: Vec<(String, String)>,
    /// Extra properties for producers only (`KAFKA_PRODUCER_CONFIG`).
    pub kafka_producer_extra: Vec<(String, String)>,
    pub group_id: String,
    pub topics: Topics,
    /// `-1` asks the broker for its default replication factor.
    pub topic_replication_factor: i32,
    pub http_addr: SocketAddr,
    pub batch_max_messages: usize,
    pub batch_max_wait: Duration,
    /// Batches (of different partitions) one loop applies at once.
    pub batch_concurrency: usize,
    pub max_message_bytes: usize,
    pub outbox_poll_interval: Duration,
    pub outbox_batch_size: i64,
    pub outbox_retention: Duration,
    /// Outbox shards (`OUTBOX_SHARDS`, 1..=256): the relays' unit of work.
    pub outbox_shards: i32,
    /// How long the inbox remembers an applied event (`DEDUPE_RETENTION`);
    /// `None`: for ever.
    pub dedupe_retention: Option<Duration>,
    pub default_tax_rate_ppm: u32,
    pub statistics_interval: Duration,
    pub log_format: LogFormat,
    /// How long a graceful stop may take before the process exits anyway.
    pub shutdown_timeout: Duration,
    /// Parked events older than this are reported (metric, log, endpoint).
    pub parked_max_age: Duration,
    /// Confluent-compatible schema registry; enables Avro in and out.
    pub schema_registry_url: Option<String>,
    /// Names this process among the instances (relay lease owner, group
    /// member); unique per process unless `INSTANCE_ID` says otherwise.
    pub instance_id: String,
    /// How long a relay lease lasts without renewal: a leader that froze or
    /// lost the database is replaced after at most this long.
    pub relay_lease: Duration,
    /// Partitions of a loop's topic owned by no live member for this long
    /// make one member rejoin its group (a rebalance); `None` (0) disables.
    pub group_repair_after: Option<Duration>,
    /// Live order streams (server-sent events).
    pub streams: StreamSettings,
    /// Analytics (`ANALYTICS_*`).
    pub analytics: AnalyticsSettings,
    /// What batches stamp their writes and events with (not configurable:
    /// the system clock; tests move it).
    pub clock: crate::clock::Clock,
}

/// Live order streams: `SSE_*` and `FEED_RETENTION_SECS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// A comment line this often keeps proxies from closing an idle stream.
    pub heartbeat: Duration,
    /// Open streams per instance; more get 503 with `Retry-After`.
    pub max_connections: usize,
    /// Events buffered per subscriber; a subscriber this far behind is
    /// disconnected (it resumes from its cursor).
    pub buffer: usize,
    /// How long the order feed keeps events for resuming streams.
    pub feed_retention: Duration,
}

/// The analytics loop: `ANALYTICS_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyticsSettings {
    /// How long the ids of counted `order-events` are remembered. An event
    /// read again later than this (a replay of the topic from further back)
    /// would be counted again, so it must exceed `order-events`' retention
    /// (7 days in `topics/order-events.toml`).
    pub dedupe_retention: Duration,
    /// At most this many messages of one partition per batch.
    pub batch_max_messages: usize,
    /// How long a partition's messages linger to make a batch: the figures
    /// may trail the orders by this much, and each batch's fixed cost (a
    /// transaction, the rollup upserts) is shared by more events.
    pub batch_max_wait: Duration,
    /// `fetch.wait.max.ms` of the loop's consumer: how long a fetch waits
    /// for data (Tansu holds every fetch this long).
    pub fetch_wait: Duration,
}

/// `<host>-<pid>-<4 hex digits>`: unique per process, readable in logs.
fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "orderflow".to_owned());
    let salt = uuid::Uuid::new_v4().as_u128() as u16;
    format!("{host}-{}-{salt:04x}", std::process::id())
}

impl std::fmt::Debug for Settings {
    /// The database URL with its password replaced, and of the Kafka extras
    /// only the keys: values such as `sasl.password` are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = |extra: &[(String, String)]| -> Vec<String> {
            extra.iter().map(|(k, _)| format!("{k}=***")).collect()
        };
        f.debug_struct("Settings")
            .field("database_url", &redact_url(&self.database_url))
            .field("database_max_connections", &self.database_max_connections)
            .field(
                "database_read_url",
                &self.database_read_url.as_deref().map(redact_url),
            )
            .field("read_min_lsn_wait", &self.read_min_lsn_wait)
            .field("kafka_brokers", &self.kafka_brokers)
            .field("kafka_extra", &keys(&self.kafka_extra))
            .field("kafka_consumer_extra", &keys(&self.kafka_consumer_extra))
            .field("kafka_producer_extra", &keys(&self.kafka_producer_extra))
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("topic_replication_factor", &self.topic_replication_factor)
            .field("http_addr", &self.http_addr)
            .field("batch_max_messages", &self.batch_max_messages)
            .field("batch_max_wait", &self.batch_max_wait)
            .field("batch_concurrency", &self.batch_concurrency)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("outbox_poll_interval", &self.outbox_poll_interval)
            .field("outbox_batch_size", &self.outbox_batch_size)
            .field("outbox_retention", &self.outbox_retention)
            .field("dedupe_retention", &self.dedupe_retention)
            .field("default_tax_rate_ppm", &self.default_tax_rate_ppm)
            .field("statistics_interval", &self.statistics_interval)
            .field("log_format", &self.log_format)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("parked_max_age", &self.parked_max_age)
            .field(
                "schema_registry_url",
                &self.schema_registry_url.as_deref().map(redact_url),
            )
            .field("instance_id", &self.instance_id)
            .field("relay_lease", &self.relay_lease)
            .field("outbox_shards", &self.outbox_shards)
            .field("group_repair_after", &self.group_repair_after)
            .field("streams", &self.streams)
            .field("analytics", &self.analytics)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".into()),
        }
    }
}

impl Settings {
    /// The consumer group of the loop reading `topic`. Each loop has its own
    /// group so that a member joining or dying in one loop never stalls the
    /// others with a rebalance. Checkouts keep the bare `KAFKA_GROUP_ID` (the
    /// group the foundation shipped with, so its committed offsets carry
    /// over); the other loops use `<KAFKA_GROUP_ID>.<topic>`.
    pub fn group_for(&self, topic: &str) -> String {
        if topic == self.topics.checkouts {
            self.group_id.clone()
        } else {
            format!("{}.{topic}", self.group_id)
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup`, so tests need not mutate the process
    /// environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get =
            |var: &'static str, default: &str| lookup(var).unwrap_or_else(|| default.to_owned());
        let topics = Topics {
            checkouts: get("TOPIC_CHECKOUTS", "checkouts"),
            payment_confirmations: get("TOPIC_PAYMENT_CONFIRMATIONS", "payment-confirmations"),
            cancellations: get("TOPIC_CANCELLATIONS", "cancellations"),
            order_events: get("TOPIC_ORDER_EVENTS", "order-events"),
        };
        for (var, name) in topics.vars() {
            check_topic_name(var, name)?;
        }
        let settings = Settings {
            database_url: get(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/orderflow",
            ),
            database_max_connections: parse(&lookup, "DATABASE_MAX_CONNECTIONS", 20)?,
            database_read_url: Some(get("DATABASE_READ_URL", "")).filter(|u| !u.trim().is_empty()),
            read_min_lsn_wait: Duration::from_millis(parse(&lookup, "READ_MIN_LSN_WAIT_MS", 250)?),
            kafka_brokers: get("KAFKA_BROKERS", "127.0.0.1:9092"),
            kafka_extra: parse_kv_list("KAFKA_CONFIG", &get("KAFKA_CONFIG", ""))?,
            kafka_consumer_extra: parse_kv_list(
                "KAFKA_CONSUMER_CONFIG",
                &get("KAFKA_CONSUMER_CONFIG", ""),
            )?,
            kafka_producer_extra: parse_kv_list(
                "KAFKA_PRODUCER_CONFIG",
                &get("KAFKA_PRODUCER_CONFIG", ""),
            )?,
            group_id: get("KAFKA_GROUP_ID", "orderflow"),
            topics,
            topic_replication_factor: parse(&lookup, "TOPIC_REPLICATION_FACTOR", 1)?,
            http_addr: parse(
                &lookup,
                "HTTP_ADDR",
                "127.0.0.1:8080".parse().expect("valid default"),
            )?,
            batch_max_messages: parse(&lookup, "BATCH_MAX_MESSAGES", 500)?,
            batch_max_wait: Duration::from_millis(parse(&lookup, "BATCH_MAX_WAIT_MS", 0)?),
            batch_concurrency: parse(&lookup, "BATCH_CONCURRENCY", 4)?,
            max_message_bytes: parse(&lookup, "MAX_MESSAGE_BYTES", 1_000_000)?,
            outbox_poll_interval: Duration::from_millis(parse(
                &lookup,
                "OUTBOX_POLL_INTERVAL_MS",
                200,
            )?),
            outbox_batch_size: parse(&lookup, "OUTBOX_BATCH_SIZE", 1000)?,
            outbox_retention: Duration::from_secs(parse(&lookup, "OUTBOX_RETENTION_SECS", 86_400)?),
            outbox_shards: parse(&lookup, "OUTBOX_SHARDS", 16)?,
            dedupe_retention: parse_retention("DEDUPE_RETENTION", &get("DEDUPE_RETENTION", "8d"))?,
            default_tax_rate_ppm: parse(&lookup, "DEFAULT_TAX_RATE_PPM", 0)?,
            statistics_interval: Duration::from_millis(parse(
                &lookup,
                "KAFKA_STATISTICS_INTERVAL_MS",
                5_000,
            )?),
            log_format: parse(&lookup, "LOG_FORMAT", LogFormat::Text)?,
            shutdown_timeout: Duration::from_secs(parse(&lookup, "SHUTDOWN_TIMEOUT_SECS", 30)?),
            parked_max_age: Duration::from_secs(parse(&lookup, "PARKED_MAX_AGE_SECS", 3600)?),
            schema_registry_url: lookup("SCHEMA_REGISTRY_URL").filter(|u| !u.trim().is_empty()),
            instance_id: lookup("INSTANCE_ID")
                .filter(|id| !id.trim().is_empty())
                .unwrap_or_else(default_instance_id),
            relay_lease: Duration::from_secs(parse(&lookup, "RELAY_LEASE_SECS", 10)?),
            group_repair_after: match parse(&lookup, "GROUP_REPAIR_AFTER_SECS", 60)? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            streams: StreamSettings {
                heartbeat: Duration::from_secs(parse(&lookup, "SSE_HEARTBEAT_SECS", 15)?),
                max_connections: parse(&lookup, "SSE_MAX_CONNECTIONS", 10_000)?,
                buffer: parse(&lookup, "SSE_BUFFER_EVENTS", 256)?,
                feed_retention: Duration::from_secs(parse(
                    &lookup,
                    "FEED_RETENTION_SECS",
                    7 * 86_400,
                )?),
            },
            analytics: AnalyticsSettings {
                dedupe_retention: Duration::from_secs(parse(
                    &lookup,
                    "ANALYTICS_DEDUPE_RETENTION_SECS",
                    8 * 86_400,
                )?),
                batch_max_messages: parse(&lookup, "ANALYTICS_BATCH_MAX_MESSAGES", 5_000)?,
                batch_max_wait: Duration::from_millis(parse(
                    &lookup,
                    "ANALYTICS_BATCH_MAX_WAIT_MS",
                    250,
                )?),
                fetch_wait: Duration::from_millis(parse(&lookup, "ANALYTICS_FETCH_WAIT_MS", 100)?),
            },
            clock: crate::clock::Clock::default(),
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |var: &'static str, value: String, reason: &str| ConfigError {
            var,
            value,
            reason: reason.into(),
        };
        if self.analytics.batch_max_messages == 0 {
            return Err(bad(
                "ANALYTICS_BATCH_MAX_MESSAGES",
                "0".into(),
                "must be at least 1",
            ));
        }
        if self.batch_max_messages == 0 {
            return Err(bad("BATCH_MAX_MESSAGES", "0".into(), "must be at least 1"));
        }
        if self.streams.heartbeat.is_zero() {
            return Err(bad("SSE_HEARTBEAT_SECS", "0".into(), "must be at least 1"));
        }
        if self.streams.buffer == 0 {
            return Err(bad("SSE_BUFFER_EVENTS", "0".into(), "must be at least 1"));
        }
        if self.batch_concurrency == 0 {
            return Err(bad("BATCH_CONCURRENCY", "0".into(), "must be at least 1"));
        }
        if self.database_max_connections < 1 {
            return Err(bad(
                "DATABASE_MAX_CONNECTIONS",
                self.database_max_connections.to_string(),
                "must be at least 1",
            ));
        }
        if self.default_tax_rate_ppm > 1_000_000 {
            return Err(bad(
                "DEFAULT_TAX_RATE_PPM",
                self.default_tax_rate_ppm.to_string(),
                "must be between 0 and 1000000",
            ));
        }
        if self.relay_lease < Duration::from_secs(2) {
            return Err(bad(
                "RELAY_LEASE_SECS",
                self.relay_lease.as_secs().to_string(),
                "must be at least 2",
            ));
        }
        if !(1..=256).contains(&self.outbox_shards) {
            return Err(bad(
                "OUTBOX_SHARDS",
                self.outbox_shards.to_string(),
                "must be between 1 and 256",
            ));
        }
        if self.outbox_batch_size < 1 {
            return Err(bad(
                "OUTBOX_BATCH_SIZE",
                self.outbox_batch_size.to_string(),
                "must be at least 1",
            ));
        }
        if self.topic_replication_factor == 0 || self.topic_replication_factor < -1 {
            return Err(bad(
                "TOPIC_REPLICATION_FACTOR",
                self.topic_replication_factor.to_string(),
                "must be -1 (broker default) or at least 1",
            ));
        }
        for (var, url) in [
            ("DATABASE_URL", Some(&self.database_url)),
            ("DATABASE_READ_URL", self.database_read_url.as_ref()),
        ] {
            let Some(url) = url else { continue };
            if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                return Err(bad(
                    var,
                    redact_url(url),
                    "must start with postgres:// or postgresql://",
                ));
            }
        }
        if let Some(url) = &self.schema_registry_url {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(bad(
                    "SCHEMA_REGISTRY_URL",
                    redact_url(url),
                    "must start with http:// or https://",
                ));
            }
        }
        if self.kafka_brokers.trim().is_empty() {
            return Err(bad(
                "KAFKA_BROKERS",
                String::new(),
                "must list at least one host:port",
            ));
        }
        Ok(())
    }
}

fn parse<T: FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match lookup(var) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|e: T::Err| ConfigError {
            var,
            value: raw.clone(),
            reason: e.to_string(),
        }),
    }
}

/// A retention: `off` (keep for ever), or a number of seconds with an
/// optional unit, `s`, `m`, `h` or `d` (`8d`, `192h`, `691200`).
fn parse_retention(var: &'static str, text: &str) -> Result<Option<Duration>, ConfigError> {
    let bad = |reason: &str| ConfigError {
        var,
        value: text.to_owned(),
        reason: reason.into(),
    };
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| bad("expected off, or a number with an optional unit: 8d, 192h, 691200"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3_600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(bad("unknown unit: use s, m, h or d")),
    };
    if seconds == 0 {
        return Err(bad("must be more than 0 (off keeps the inbox for ever)"));
    }
    Ok(Some(Duration::from_secs(seconds)))
}

/// `k=v` pairs separated by `;` when the list holds one (then values may
/// hold commas), otherwise by `,`, where a piece without `=` continues the
/// previous value: `debug=cgrp,fetch` is one pair, as is
/// `debug=cgrp,fetch;client.rack=a` with another.
fn parse_kv_list(var: &'static str, raw: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let separator = if raw.contains(';') { ';' } else { ',' };
    let mut pairs: Vec<(String, String)> = Vec::new();
    for piece in raw
        .split(separator)
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match piece.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                pairs.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            None if separator == ',' && !pairs.is_empty() => {
                let value = &mut pairs.last_mut().expect("not empty").1;
                value.push(',');
                value.push_str(piece);
            }
            _ => {
                return Err(ConfigError {
                    var,
                    // Values may be secrets (sasl.password); show only the key.
                    value: piece.split('=').next().unwrap_or_default().to_owned(),
                    reason:
                        "expected key=value pairs separated by ',' (or ';' when values hold commas)"
                            .into(),
                });
            }
        }
    }
    Ok(pairs)
}

fn check_topic_name(var: &'static str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 244 // leaves room for the ".dlq" suffix under Kafka's 249
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            var,
            value: name.to_owned(),
            reason: "a topic name is 1-244 characters of [a-zA-Z0-9._-]".into(),
        })
    }
}

/// The URL with any password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn dedupe_retention_takes_units_and_off_and_refuses_zero() {
        let r = |t: &str| parse_retention("DEDUPE_RETENTION", t);
        assert_eq!(r("8d").unwrap(), Some(Duration::from_secs(691_200)));
        assert_eq!(r("192h").unwrap(), Some(Duration::from_secs(691_200)));
        assert_eq!(r("691200").unwrap(), Some(Duration::from_secs(691_200)));
        assert_eq!(r("90m").unwrap(), Some(Duration::from_secs(5_400)));
        assert_eq!(r("off").unwrap(), None);
        assert!(r("0").is_err() && r("0d").is_err());
        assert!(r("8w").is_err() && r("").is_err() && r("d").is_err());
    }

    #[test]
    fn the_variables_list_matches_what_is_read_and_the_readme() {
        let read = std::cell::RefCell::new(std::collections::BTreeSet::new());
        Settings::from_lookup(|k| {
            read.borrow_mut().insert(k.to_owned());
            None
        })
        .unwrap();
        let listed: std::collections::BTreeSet<String> = VARIABLES
            .iter()
            .map(|v| v.name.to_owned())
            .filter(|n| n != "RUST_LOG")
            .collect();
        assert_eq!(listed, read.into_inner());
        let readme = include_str!("../README.md");
        for v in VARIABLES {
            assert!(
                readme.contains(&format!("`{}`", v.name)),
                "{} is not in the README's configuration table",
                v.name
            );
        }
        let help = variables_help();
        assert!(help.contains("SHUTDOWN_TIMEOUT_SECS") && help.contains("[30]"));
    }

    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_work_on_a_developer_machine() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.topics.checkouts, "checkouts");
        assert_eq!(Topics::dlq(&s.topics.checkouts), "checkouts.dlq");
        assert_eq!(s.kafka_brokers, "127.0.0.1:9092");
        assert_eq!(s.http_addr.port(), 8080);
    }

    #[test]
    fn an_invalid_value_names_its_variable() {
        let err = settings(&[("BATCH_MAX_MESSAGES", "lots")]).unwrap_err();
        assert_eq!(err.var, "BATCH_MAX_MESSAGES");
        assert!(err
            .to_string()
            .contains("invalid BATCH_MAX_MESSAGES=\"lots\""));
        assert_eq!(
            settings(&[("HTTP_ADDR", "nowhere")]).unwrap_err().var,
            "HTTP_ADDR"
        );
        assert_eq!(
            settings(&[("TOPIC_CHECKOUTS", "bad topic")])
                .unwrap_err()
                .var,
            "TOPIC_CHECKOUTS"
        );
        assert_eq!(
            settings(&[("DATABASE_URL", "mysql://x")]).unwrap_err().var,
            "DATABASE_URL"
        );
        assert_eq!(
            settings(&[("KAFKA_CONFIG", "novalue")]).unwrap_err().var,
            "KAFKA_CONFIG"
        );
    }

    #[test]
    fn kafka_config_pairs_are_parsed_and_secrets_are_not_echoed() {
        let s = settings(&[(
            "KAFKA_CONFIG",
            "security.protocol=SASL_SSL, sasl.password=hunter2",
        )])
        .unwrap();
        assert_eq!(s.kafka_extra[1], ("sasl.password".into(), "hunter2".into()));
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn kafka_config_values_may_hold_commas() {
        let pairs = |raw: &str| settings(&[("KAFKA_CONFIG", raw)]).unwrap().kafka_extra;
        let kv = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(pairs("debug=cgrp,fetch"), [kv("debug", "cgrp,fetch")]);
        assert_eq!(
            pairs("client.id=x, debug=cgrp,fetch,topic"),
            [kv("client.id", "x"), kv("debug", "cgrp,fetch,topic")]
        );
        assert_eq!(
            pairs("debug=cgrp,fetch; sasl.mechanism=PLAIN;"),
            [kv("debug", "cgrp,fetch"), kv("sasl.mechanism", "PLAIN")]
        );
        assert_eq!(
            settings(&[("KAFKA_CONFIG", "a=1;novalue")])
                .unwrap_err()
                .var,
            "KAFKA_CONFIG"
        );
        assert_eq!(
            settings(&[("KAFKA_CONFIG", "=x")]).unwrap_err().var,
            "KAFKA_CONFIG"
        );
    }

    #[test]
    fn debug_output_holds_no_secrets() {
        let s = settings(&[
            ("DATABASE_URL", "postgres://app:db-secret@db:5432/orders"),
            ("KAFKA_CONFIG", "sasl.password=kafka-secret"),
            ("KAFKA_PRODUCER_CONFIG", "ssl.key.password=key-secret"),
        ])
        .unwrap();
        let shown = format!("{s:?}");
        for secret in ["db-secret", "kafka-secret", "key-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("postgres://app:***@db:5432/orders"),
            "{shown}"
        );
        assert!(shown.contains("sasl.password=***"), "{shown}");
    }
}
