//! Topic definitions (`topics/*.toml`) and `orderflow topics apply`.
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
            let spec: TopicSpec = toml::from_str(&text)
                .with_context(|| format!("failed to parse {}", p.display()))?;
            if spec.partitions < 1 {
                bail!("{}: partitions must be at least 1", p.display());
            }
            Ok(spec)
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
    let mut applied = Vec::new();
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
