//! Where a burst's WAL went, by relation: `pg_waldump` over the burst's LSN
//! range, each record's bytes charged to the first relation it touches
//! (records that touch none, such as commits, to their resource manager),
//! with the full-page images among them. Needs the server's `pg_wal`
//! directory readable by this process (same machine, run as root or
//! `postgres`) and `pg_waldump` of the server's major version; when either is
//! missing the cost phase goes on without the breakdown.
//!
//! A physical replication slot holds the WAL from the first reading until
//! the dump, so a checkpoint cannot recycle it; it is dropped afterwards.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use serde::Serialize;
use sqlx::PgPool;

/// WAL of one relation (or resource manager) in a burst.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalShare {
    pub relation: String,
    pub records: u64,
    pub bytes: u64,
    /// Of `bytes`, those of full-page images.
    pub fpi_bytes: u64,
}

/// Holds the cluster's WAL from its creation until [`Reserved::release`].
pub struct Reserved {
    slot: String,
    wal_dir: PathBuf,
    waldump: PathBuf,
}

impl Reserved {
    /// Reserves WAL if the dump can work here; `None` (and why, on stderr)
    /// if it cannot.
    pub async fn new(pool: &PgPool, id: &str) -> Option<Reserved> {
        match Self::try_new(pool, id).await {
            Ok(reserved) => Some(reserved),
            Err(e) => {
                crate::progress(format!("  (no WAL breakdown by relation: {e:#})"));
                None
            }
        }
    }

    async fn try_new(pool: &PgPool, id: &str) -> anyhow::Result<Reserved> {
        let data_dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
            .fetch_one(pool)
            .await?;
        let wal_dir = PathBuf::from(data_dir).join("pg_wal");
        std::fs::read_dir(&wal_dir)
            .with_context(|| format!("cannot read {}", wal_dir.display()))?;
        let major: i32 =
            sqlx::query_scalar("SELECT current_setting('server_version_num')::int / 10000")
                .fetch_one(pool)
                .await?;
        let waldump = [
            PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/pg_waldump")),
            PathBuf::from(format!("/usr/pgsql-{major}/bin/pg_waldump")),
        ]
        .into_iter()
        .find(|p| p.exists())
        .or_else(|| which("pg_waldump"))
        .context("no pg_waldump found")?;
        let slot = format!("orderflow_bench_{id}");
        sqlx::query("SELECT pg_create_physical_replication_slot($1, true)")
            .bind(&slot)
            .execute(pool)
            .await
            .context("failed to create a replication slot to hold the WAL")?;
        Ok(Reserved {
            slot,
            wal_dir,
            waldump,
        })
    }

    pub async fn release(self, pool: &PgPool) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(&self.slot)
            .execute(pool)
            .await?;
        Ok(())
    }

    /// The WAL between two LSNs (`16/B374D848`), by relation, largest first.
    pub async fn by_relation(
        &self,
        pool: &PgPool,
        from: &str,
        to: &str,
    ) -> anyhow::Result<Vec<WalShare>> {
        let out = Command::new(&self.waldump)
            .arg("-p")
            .arg(&self.wal_dir)
            .args(["-s", from, "-e", to])
            .output()
            .context("failed to run pg_waldump")?;
        if !out.status.success() && out.stdout.is_empty() {
            bail!(
                "pg_waldump failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let names = relation_names(pool).await?;
        let mut shares: HashMap<String, WalShare> = HashMap::new();
        for record in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(parse)
        {
            let relation = match record.filenode {
                Some((db, node)) if db == names.0 => names
                    .1
                    .get(&node)
                    .cloned()
                    .unwrap_or_else(|| format!("relfilenode {node}")),
                Some(_) => "(other database)".to_owned(),
                None => format!("({})", record.rmgr),
            };
            let share = shares.entry(relation.clone()).or_insert_with(|| WalShare {
                relation,
                ..WalShare::default()
            });
            share.records += 1;
            share.bytes += record.bytes;
            share.fpi_bytes += record.fpi_bytes;
        }
        let mut shares: Vec<WalShare> = shares.into_values().collect();
        shares.sort_by_key(|s| std::cmp::Reverse(s.bytes));
        Ok(shares)
    }
}

/// One line of pg_waldump's output.
#[derive(Debug, PartialEq)]
struct Record {
    rmgr: String,
    bytes: u64,
    fpi_bytes: u64,
    /// (database oid, relfilenode) of the first block reference.
    filenode: Option<(u32, u32)>,
}

/// `rmgr: Heap len (rec/tot): 54/ 198, tx: …, desc: INSERT …, blkref #0:
/// rel 1663/5/16384 blk 0 FPW` → its relation and sizes. A record with a
/// full-page image is `tot` = `rec` + the image (and its header).
fn parse(line: &str) -> Option<Record> {
    let rmgr = line.strip_prefix("rmgr:")?.split_whitespace().next()?;
    let lens = line.split_once("len (rec/tot):")?.1;
    let (rec, rest) = lens.split_once('/')?;
    let tot = rest.split(',').next()?.trim();
    let (rec, tot): (u64, u64) = (rec.trim().parse().ok()?, tot.parse().ok()?);
    let filenode = line.split_once(" rel ").and_then(|(_, r)| {
        let mut parts = r.split_whitespace().next()?.split('/');
        let _tablespace = parts.next()?;
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    });
    let fpi = line.contains(" FPW") || line.contains(" FPI");
    Some(Record {
        rmgr: rmgr.to_owned(),
        bytes: tot,
        fpi_bytes: if fpi { tot.saturating_sub(rec) } else { 0 },
        filenode,
    })
}

/// This database's oid and its relations by relfilenode.
async fn relation_names(pool: &PgPool) -> anyhow::Result<(u32, HashMap<u32, String>)> {
    let db: i64 = sqlx::query_scalar(
        "SELECT oid::bigint FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?;
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT pg_relation_filenode(oid)::bigint, relname::text FROM pg_class
         WHERE pg_relation_filenode(oid) IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    Ok((
        db as u32,
        rows.into_iter().map(|(n, r)| (n as u32, r)).collect(),
    ))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.exists())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_goes_to_its_first_relation_with_its_image() {
        let line = "rmgr: Heap        len (rec/tot):     54/  8246, tx:        123, lsn: 0/01000028, prev 0/01000000, desc: INSERT off 3 flags 0x00, blkref #0: rel 1663/5/16384 blk 0 FPW";
        assert_eq!(
            parse(line),
            Some(Record {
                rmgr: "Heap".into(),
                bytes: 8246,
                fpi_bytes: 8192,
                filenode: Some((5, 16384)),
            })
        );
    }

    #[test]
    fn a_commit_has_no_relation() {
        let line = "rmgr: Transaction len (rec/tot):     34/    34, tx:        731, lsn: 0/0153B2C8, prev 0/0153B290, desc: COMMIT 2026-11-30 18:40:01.123 UTC";
        let record = parse(line).unwrap();
        assert_eq!(
            (record.bytes, record.fpi_bytes, record.filenode),
            (34, 0, None)
        );
        assert_eq!(record.rmgr, "Transaction");
    }
}
