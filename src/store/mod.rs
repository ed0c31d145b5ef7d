//! PostgreSQL: the source of truth, and the only module that speaks SQL.
//! Connection, migrations, and one module per table family. Write functions
//! take a `&mut PgConnection` so that callers compose them inside one
//! transaction ([`changes::Changes`] is one batch's writes); read queries
//! take the pool.

pub mod analytics;
pub mod changes;
pub mod claims;
pub mod feed;
pub mod inbox;
pub mod leases;
pub mod lifecycle;
pub mod maintenance;
pub mod members;
pub mod orders;
pub mod outbox;
pub mod parked;
pub mod pricing_tables;
pub mod queries;
pub mod replica;
pub mod status_counts;

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use std::str::FromStr;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The instant `retention` ago: rows from before it are purged.
pub(crate) fn older_than(retention: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX)
}

/// Opens a pool. Connections are made lazily, so a database that is down at
/// start makes `/readyz` fail rather than the process.
pub fn pool(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url).context("failed to parse DATABASE_URL")?;
    Ok(lazy_pool(options, max_connections))
}

/// A pool for the HTTP reads on a streaming replica (`DATABASE_READ_URL`),
/// its sessions named `orderflow-read` in `pg_stat_activity`.
pub fn read_pool(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .context("failed to parse DATABASE_READ_URL")?
        .application_name("orderflow-read");
    Ok(lazy_pool(options, max_connections))
}

fn lazy_pool(options: PgConnectOptions, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // No ping before each use: it doubled the round trips of a status
        // read. A connection that died is found by the query itself, whose
        // error is transient (the loops retry, HTTP answers 503 once).
        .test_before_acquire(false)
        .connect_lazy_with(options)
}

/// Creates the database named in `url` when it does not exist (connecting to
/// the `postgres` maintenance database to do so).
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url).context("failed to parse DATABASE_URL")?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .with_context(|| {
            format!(
                "failed to connect to PostgreSQL at {}",
                crate::config::redact_url(url)
            )
        })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .context("failed to look up the database")?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Lost a race with another instance creating it: fine.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).with_context(|| format!("failed to create database {name}")),
        }
    }
    admin.close().await.ok();
    Ok(())
}

/// Creates the database if needed and applies pending migrations.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    ensure_database(url).await?;
    let mut conn = PgConnection::connect(url)
        .await
        .with_context(|| format!("failed to connect to {}", crate::config::redact_url(url)))?;
    MIGRATOR
        .run(&mut conn)
        .await
        .context("failed to apply migrations")?;
    conn.close().await.ok();
    Ok(())
}

/// Drops a database (tests and benchmarks clean up after themselves).
pub async fn drop_database(url: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url).context("failed to parse DATABASE_URL")?;
    let name = options
        .get_database()
        .context("DATABASE_URL names no database")?
        .to_owned();
    let mut admin = options
        .database("postgres")
        .connect()
        .await
        .context("failed to connect to PostgreSQL")?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    sqlx::query(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("failed to drop database {name}"))?;
    Ok(())
}

/// Whether a database error will go away by itself (connection lost, server
/// restarting, serialization conflict) as opposed to one the same input will
/// always hit (a constraint or data error).
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => match db.code() {
            // 08: connection exception, 40: transaction rollback (serialization,
            // deadlock), 53: insufficient resources, 57: operator intervention
            // (admin shutdown, cannot connect now), 58: system error; 55P03:
            // a lock not obtained within `lock_timeout`.
            Some(code) => {
                code == "55P03"
                    || ["08", "40", "53", "57", "58"]
                        .iter()
                        .any(|class| code.starts_with(class))
            }
            None => true,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}
