//! `orderflow schemas register` and `orderflow schemas check`: the files in
//! `schemas/` against a Confluent-compatible registry, one subject per topic
//! (`<topic>-value`, the topic-name strategy).

use anyhow::Context;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;
use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_subject_and_version, post_schema, SrSettings,
};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

use crate::config::Settings;
use crate::events::avro::SCHEMA_FILES;

/// One schema file and the subject it belongs to.
pub struct Subject {
    pub subject: String,
    pub file: &'static str,
    pub schema: &'static str,
}

pub fn subjects(settings: &Settings) -> Vec<Subject> {
    let names = settings.topics.by_role();
    SCHEMA_FILES
        .iter()
        .map(|(role, file, schema)| Subject {
            subject: format!("{}-value", names[role]),
            file,
            schema,
        })
        .collect()
}

fn registry(settings: &Settings) -> anyhow::Result<(SrSettings, String)> {
    let url = settings
        .schema_registry_url
        .clone()
        .context("SCHEMA_REGISTRY_URL is not set")?;
    Ok((crate::events::codec::registry_settings(&url)?, url))
}

fn supplied(schema: &str) -> SuppliedSchema {
    SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned())
}

/// Registers every schema (a no-op for a version the subject already has).
/// Returns (subject, schema id).
pub async fn register(settings: &Settings) -> anyhow::Result<Vec<(String, u32)>> {
    let (sr, url) = registry(settings)?;
    let mut out = Vec::new();
    for s in subjects(settings) {
        let registered = post_schema(&sr, s.subject.clone(), supplied(s.schema))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "failed to register {} as {} at {url}: {e}",
                    s.file,
                    s.subject
                )
            })?;
        out.push((s.subject, registered.id));
    }
    Ok(out)
}

/// The verdict of `schemas check` for one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The subject has no version yet: anything is compatible.
    New,
    Compatible {
        latest_version: Option<u32>,
    },
    Incompatible {
        latest_version: Option<u32>,
        reason: String,
    },
}

/// Checks each schema file for BACKWARD compatibility with the latest
/// registered version: can a consumer on the file's schema read everything
/// written with the registered one? The check runs here (apache-avro), so it
/// means BACKWARD whatever the subject's configured level.
pub async fn check(settings: &Settings) -> anyhow::Result<Vec<(String, Check)>> {
    let (sr, url) = registry(settings)?;
    let mut out = Vec::new();
    for s in subjects(settings) {
        let latest = match get_schema_by_subject_and_version(&sr, &s.subject, None).await {
            Ok(latest) => latest,
            Err(e) if e.retriable => anyhow::bail!("schema registry at {url} unavailable: {e}"),
            // 404: subject not found. Anything else is reported as such.
            Err(e)
                if e.error.contains("404")
                    || e.cause.as_deref().is_some_and(|c| c.contains("404")) =>
            {
                out.push((s.subject, Check::New));
                continue;
            }
            Err(e) => anyhow::bail!("failed to read the latest {} from {url}: {e}", s.subject),
        };
        let writer = Schema::parse_str(&latest.schema)
            .with_context(|| format!("registered schema of {} does not parse", s.subject))?;
        let reader = Schema::parse_str(s.schema)
            .with_context(|| format!("schemas/{} does not parse", s.file))?;
        let verdict = match SchemaCompatibility::can_read(&writer, &reader) {
            Ok(Compatibility::Full) => Check::Compatible {
                latest_version: latest.version,
            },
            // Some values written with the registered schema would not
            // resolve (a removed enum symbol, a narrowed union): a break.
            Ok(Compatibility::Partial) => Check::Incompatible {
                latest_version: latest.version,
                reason: "only partially compatible: some registered values would not resolve"
                    .into(),
            },
            Err(e) => Check::Incompatible {
                latest_version: latest.version,
                reason: e.to_string(),
            },
        };
        out.push((s.subject, verdict));
    }
    Ok(out)
}
