//! A fresh world for orderflow's integration tests and its benchmark: a
//! database of its own (migrated, dropped when the world is dropped, even by
//! a failing assertion), topics of its own, and `orderflow run` as a child
//! process. Nothing here is used by the service itself.

pub mod broker;
pub mod mix;
pub mod oracle;
pub mod prom;
pub mod registry;
pub mod sse;
mod worker;

use std::path::Path;

use anyhow::Context;
use orderflow::config::{Settings, Topics};

pub use worker::Worker;

/// A database, topic names and a consumer group no one else uses, named by
/// `id`. The database is dropped with the world.
pub struct World {
    pub id: String,
    pub settings: Settings,
    database: FreshDatabase,
}

impl World {
    /// Makes a fresh world from `base`: database `orderflow_<kind>_<id>` on
    /// the same server, migrated; topics `<kind>-<id>-*`, created; group
    /// `orderflow-<kind>-<id>`. `customise` may change the settings before
    /// anything is created.
    pub async fn create(
        base: &Settings,
        kind: &str,
        customise: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<World> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let server = base
            .database_url
            .rsplit_once('/')
            .map(|(server, _)| server.to_owned())
            .context("DATABASE_URL names no database")?;
        let mut settings = base.clone();
        settings.database_url = format!("{server}/orderflow_{kind}_{id}");
        settings.topics = Topics::prefixed(&format!("{kind}-{id}-"));
        settings.group_id = format!("orderflow-{kind}-{id}");
        customise(&mut settings);
        let database = FreshDatabase::create(&settings.database_url).await?;
        create_topics(&settings).await?;
        Ok(World {
            id,
            settings,
            database,
        })
    }

    /// Moves the world to another set of fresh topics and consumer group
    /// (named `<kind>-<id>-<suffix>-*`); the database stays.
    pub async fn fresh_topics(&mut self, kind: &str, suffix: &str) -> anyhow::Result<()> {
        let prefix = format!("{kind}-{}-{suffix}-", self.id);
        self.settings.topics = Topics::prefixed(&prefix);
        self.settings.group_id = format!("orderflow-{kind}-{}-{suffix}", self.id);
        create_topics(&self.settings).await
    }

    pub fn database_url(&self) -> &str {
        self.database.url()
    }
}

/// Creates every topic of `settings` from the repository's `topics/`.
pub async fn create_topics(settings: &Settings) -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topics");
    let specs = orderflow::kafka::topics::load_specs(&dir)?;
    orderflow::kafka::topics::apply(settings, &specs).await?;
    Ok(())
}

/// A database created and migrated for one test or run, dropped when this
/// value is dropped: teardown runs even when an assertion fails.
pub struct FreshDatabase {
    url: String,
}

impl FreshDatabase {
    pub async fn create(url: &str) -> anyhow::Result<FreshDatabase> {
        orderflow::store::migrate(url)
            .await
            .with_context(|| format!("failed to create {}", orderflow::config::redact_url(url)))?;
        Ok(FreshDatabase {
            url: url.to_owned(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        // Drop may run inside a runtime (or while one unwinds), so the async
        // DROP DATABASE runs on a thread of its own with a runtime of its own.
        let url = self.url.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(orderflow::store::drop_database(&url))
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop {}: {e:#}", self.url);
        }
    }
}
