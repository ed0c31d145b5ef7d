//! Topic definitions (`topics/*.toml`, built into the binary) and
//! `orderflow topics apply`.
//!
//! A definition names a *role* (`checkouts`, `checkouts.dlq`, ...); the actual
//! topic name comes from the settings, so renamed topics keep their specs.
//! Applying is idempotent: missing topics are created, existing ones are left
//! alone (a partition-count difference is reported, never "fixed").

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;

use crate::config::Settings;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub role: String,
    pub partitions: i32,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// The definitions of `topics/`, built into the binary: `topics apply`
/// needs no files next to it (`--dir` reads others instead).
const EMBEDDED: &[(&str, &str)] = &[
    (
        "cancellations.dlq.toml",
        include_str!("../../topics/cancellations.dlq.toml"),
    ),
    (
        "cancellations.toml",
        include_str!("../../topics/cancellations.toml"),
    ),
    (
        "checkouts.dlq.toml",
        include_str!("../../topics/checkouts.dlq.toml"),
    ),
    (
        "checkouts.toml",
        include_str!("../../topics/checkouts.toml"),
    ),
    (
        "order-events.analytics.dlq.toml",
        include_str!("../../topics/order-events.analytics.dlq.toml"),
    ),
    (
        "order-events.toml",
        include_str!("../../topics/order-events.toml"),
    ),
    (
        "payment-confirmations.dlq.toml",
        include_str!("../../topics/payment-confirmations.dlq.toml"),
    ),
    (
        "payment-confirmations.toml",
        include_str!("../../topics/payment-confirmations.toml"),
    ),
];

/// The built-in definitions (`topics/*.toml` at build time).
pub fn embedded_specs() -> anyhow::Result<Vec<TopicSpec>> {
    EMBEDDED
        .iter()
        .map(|(name, text)| parse_spec(name, text))
        .collect()
}

/// The longest `retention.ms` of the built-in input topics' definitions
/// (what `DEDUPE_RETENTION` must exceed).
pub fn input_retention() -> Option<Duration> {
    embedded_specs()
        .ok()?
        .iter()
        .filter(|s| {
            ["checkouts", "payment-confirmations", "cancellations"].contains(&s.role.as_str())
        })
        .filter_map(|s| s.config.get("retention.ms")?.parse::<u64>().ok())
        .max()
        .map(Duration::from_millis)
}

fn parse_spec(name: &str, text: &str) -> anyhow::Result<TopicSpec> {
    let spec: TopicSpec =
        toml::from_str(text).with_context(|| format!("failed to parse {name}"))?;
    if spec.partitions < 1 {
        bail!("{name}: partitions must be at least 1");
    }
    Ok(spec)
}

/// Reads every `*.toml` in `dir`, sorted by file name.
pub fn load_specs(dir: &Path) -> anyhow::Result<Vec<TopicSpec>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("failed to read topic definitions in {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("failed to read {}", p.display()))?;
            parse_spec(&p.display().to_string(), &text)
        })
        .collect()
}

/// What `apply` did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created,
    Existed,
}

/// Creates the topics of `specs` that do not exist yet.
pub async fn apply(
    settings: &Settings,
    specs: &[TopicSpec],
) -> anyhow::Result<Vec<(String, Applied)>> {
    let names = settings.topics.by_role();
    let mut topics = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = names
            .get(spec.role.as_str())
            .with_context(|| format!("topic definition has unknown role {:?}", spec.role))?;
        topics.push((name.clone(), spec));
    }
    // Ask only for what is missing: a create of an existing topic is an
    // error on the broker's side (Tansu logs each at ERROR).
    let existing = existing_topics(settings).await?;
    let mut applied: Vec<(String, Applied)> = topics
        .iter()
        .filter(|(name, _)| existing.contains(name))
        .map(|(name, _)| (name.clone(), Applied::Existed))
        .collect();
    topics.retain(|(name, _)| !existing.contains(name));
    if topics.is_empty() {
        return Ok(applied);
    }
    let admin: AdminClient<DefaultClientContext> = super::base_config(settings)
        .create()
        .context("failed to create Kafka admin client")?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, spec)| {
            let mut topic = NewTopic::new(
                name,
                spec.partitions,
                TopicReplication::Fixed(settings.topic_replication_factor),
            );
            for (k, v) in &spec.config {
                topic = topic.set(k, v);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .with_context(|| format!("failed to create topics on {}", settings.kafka_brokers))?;
    for result in results {
        match result {
            Ok(name) => applied.push((name, Applied::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                applied.push((name, Applied::Existed))
            }
            Err((name, code)) => bail!("failed to create topic {name}: {code}"),
        }
    }
    Ok(applied)
}

/// The topics the cluster has, from metadata (a blocking librdkafka call,
/// made off the async workers).
async fn existing_topics(settings: &Settings) -> anyhow::Result<std::collections::HashSet<String>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let config = super::base_config(settings);
    let brokers = settings.kafka_brokers.clone();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create().context("failed to create a Kafka client")?;
        let metadata = client
            .fetch_metadata(None, Duration::from_secs(30))
            .with_context(|| format!("failed to list the topics on {brokers}"))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.name().to_owned())
            .collect())
    })
    .await
    .context("listing topics panicked")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_dedupe_retention_exceeds_the_input_topics_retention() {
        let topics = input_retention().expect("input topics set retention.ms");
        assert_eq!(topics, Duration::from_secs(7 * 86_400));
        let settings = crate::config::Settings::from_lookup(|_| None).unwrap();
        assert!(settings.dedupe_retention.expect("on by default") > topics);
    }

    #[test]
    fn the_built_in_definitions_are_the_files_of_topics() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("topics");
        let on_disk = load_specs(&dir).unwrap();
        let built_in = embedded_specs().unwrap();
        let roles = |specs: &[TopicSpec]| -> Vec<(String, i32)> {
            specs
                .iter()
                .map(|s| (s.role.clone(), s.partitions))
                .collect()
        };
        // A file added to topics/ must be added to EMBEDDED too.
        assert_eq!(roles(&built_in), roles(&on_disk));
    }
}
