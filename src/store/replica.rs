//! Positions in the write-ahead log (`Lsn`), on the primary and on a
//! streaming replica, and how far a replica is behind.
//!
//! A position read *after* a query bounds what the query saw: every commit
//! it saw lies at or below it (the primary's `pg_current_wal_lsn()`, a
//! replica's `pg_last_wal_replay_lsn()`). A replica that has replayed a
//! position shows every commit at or below it to a query that starts after.

use std::fmt;

use sqlx::PgPool;

/// A WAL position, as PostgreSQL writes it: `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn parse(raw: &str) -> Option<Lsn> {
        let (high, low) = raw.trim().split_once('/')?;
        if high.is_empty() || low.is_empty() || high.len() > 8 || low.len() > 8 {
            return None;
        }
        let high = u32::from_str_radix(high, 16).ok()?;
        let low = u32::from_str_radix(low, 16).ok()?;
        Some(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// How far the server behind `pool` has got: what a replica has replayed,
/// or what a primary has written (a replica that was promoted answers as a
/// primary).
pub async fn position(pool: &PgPool) -> Result<Lsn, sqlx::Error> {
    let raw: Option<String> = sqlx::query_scalar(
        "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                      ELSE pg_current_wal_lsn() END)::text",
    )
    .fetch_one(pool)
    .await?;
    // NULL only on a replica that has replayed nothing yet.
    Ok(raw.as_deref().and_then(Lsn::parse).unwrap_or(Lsn(0)))
}

/// How far `replica` is behind `primary`: (seconds, bytes). Seconds are 0
/// when it has replayed everything the primary had written a moment
/// before; otherwise the time since the last transaction it replayed
/// committed on the primary (infinite when it never replayed one).
pub async fn lag(primary: &PgPool, replica: &PgPool) -> Result<(f64, u64), sqlx::Error> {
    let written = position(primary).await?;
    let (replayed, since): (Option<String>, Option<f64>) = sqlx::query_as(
        "SELECT pg_last_wal_replay_lsn()::text,
                EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8",
    )
    .fetch_one(replica)
    .await?;
    let Some(replayed) = replayed.as_deref().and_then(Lsn::parse) else {
        // Not in recovery (a promoted replica, or the primary itself).
        return Ok((0.0, 0));
    };
    if replayed >= written {
        return Ok((0.0, 0));
    }
    Ok((
        since.map_or(f64::INFINITY, |s| s.max(0.0)),
        written.0 - replayed.0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_print_and_order_as_postgresql_does() {
        let a = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(a.0, 0x16_B374_D848);
        assert_eq!(a.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/0"), Some(Lsn(0)));
        assert!(Lsn::parse("0/FFFFFFFF").unwrap() < Lsn::parse("1/0").unwrap());
        for bad in ["", "16", "/1", "1/", "x/1", "1/2/3", "123456789/0", "-1/0"] {
            assert_eq!(Lsn::parse(bad), None, "{bad:?}");
        }
    }
}
