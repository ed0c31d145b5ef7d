//! Kafka plumbing shared by every client: configuration and topic
//! administration. Handlers never see any of this.

pub mod topics;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::ClientConfig;

use crate::config::Settings;

fn client(settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.kafka_brokers)
        .set("client.id", "orderflow")
        .set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// Admin clients: the connection plus `KAFKA_CONFIG`.
pub fn base_config(settings: &Settings) -> ClientConfig {
    let mut config = client(settings);
    apply_extra(&mut config, settings, &[]);
    config
}

/// At-least-once consumer: offsets are auto-committed in the background, but
/// only offsets the loop explicitly *stored* after its database commit.
/// `tuning` overrides the defaults for one loop; `KAFKA_CONFIG` and
/// `KAFKA_CONSUMER_CONFIG` override both.
pub fn consumer_config(
    settings: &Settings,
    group_id: &str,
    tuning: &[(&str, String)],
) -> ClientConfig {
    let mut config = client(settings);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set(
            "statistics.interval.ms",
            settings.statistics_interval.as_millis().to_string(),
        )
        // Bound what librdkafka prefetches per partition (memory, and what a
        // crash makes us re-read).
        .set("queued.min.messages", "2000")
        .set("queued.max.messages.kbytes", "4096")
        // Kafka answers a fetch as soon as data is there; Tansu holds every
        // fetch for this long (docs/tansu.md), so keep it short. On Kafka it
        // only bounds idle long-polls (about 100 fetches/s per idle loop).
        .set("fetch.wait.max.ms", "10");
    for (key, value) in tuning {
        config.set(*key, value);
    }
    apply_extra(&mut config, settings, &settings.kafka_consumer_extra);
    config
}

/// A consumer of `group_id` that is never subscribed, so never joins the
/// group: it reads metadata, the group's committed offsets and watermarks.
pub fn observer_config(settings: &Settings, group_id: &str) -> ClientConfig {
    let mut config = client(settings);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    apply_extra(&mut config, settings, &settings.kafka_consumer_extra);
    config
}

/// A reader that assigns partitions itself and never commits (`orderflow
/// dlq`): an observer that fetches, so reading moves no group's position.
/// Short fetch waits: Tansu holds every fetch this long (docs/tansu.md).
pub fn reader_config(settings: &Settings) -> ClientConfig {
    let mut config = observer_config(settings, "orderflow-reader");
    config.set("fetch.wait.max.ms", "10");
    config
}

/// Idempotent producer: retries cannot duplicate or reorder records within a
/// partition. `murmur2_random` puts a key where Java producers put it.
pub fn producer_config(settings: &Settings) -> ClientConfig {
    let mut config = client(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    apply_extra(&mut config, settings, &settings.kafka_producer_extra);
    config
}

/// `KAFKA_CONFIG` (every client), then the role's own variable, so the more
/// specific setting wins and both override the defaults above.
fn apply_extra(config: &mut ClientConfig, settings: &Settings, role: &[(String, String)]) {
    for (key, value) in settings.kafka_extra.iter().chain(role) {
        config.set(key, value);
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::config::ClientConfig;

    /// librdkafka is built with what managed clusters need: TLS (SSL,
    /// SASL_SSL with SCRAM) and zstd. Without them a client configured for
    /// them fails at creation ("not available at build time").
    #[test]
    fn the_kafka_client_is_built_with_ssl_scram_and_zstd() {
        let native = ClientConfig::new().create_native_config().unwrap();
        let features = native.get("builtin.features").unwrap();
        for feature in ["ssl", "sasl_scram", "zstd"] {
            assert!(
                features.split(',').any(|f| f == feature),
                "{feature} missing from {features}"
            );
        }
        let producer: Result<rdkafka::producer::BaseProducer, _> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("security.protocol", "sasl_ssl")
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", "u")
            .set("sasl.password", "p")
            .set("compression.type", "zstd")
            .create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }
}
