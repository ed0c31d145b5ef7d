//! Relay leases (`relay_leases`): who may publish an outbox shard, until
//! when, and under which epoch. Time is the database's clock, one clock for
//! every instance. Marking rows sent checks the lease in the same statement
//! (`outbox::mark_sent`), which is what fences a former leader.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

/// A lease held: the shard, the holder and the epoch it took it under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub shard: i32,
    pub owner: String,
    pub epoch: i64,
}

/// Takes the lease of `shard` for `owner` if it is free, has expired, or is
/// `owner`'s own (a relay retrying after a failed round takes it back at
/// once, under a new epoch, instead of waiting its own lease out); `None`
/// while someone else holds it.
pub async fn try_take(
    conn: &mut PgConnection,
    shard: i32,
    owner: &str,
    ttl: Duration,
) -> sqlx::Result<Option<Lease>> {
    let epoch: Option<i64> = sqlx::query_scalar(
        "INSERT INTO relay_leases (shard, owner, epoch, expires_at)
         VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3))
         ON CONFLICT (shard) DO UPDATE
             SET owner = EXCLUDED.owner, epoch = relay_leases.epoch + 1, expires_at = EXCLUDED.expires_at
             WHERE relay_leases.expires_at < clock_timestamp()
                OR relay_leases.owner = EXCLUDED.owner
         RETURNING epoch",
    )
    .bind(shard)
    .bind(owner)
    .bind(ttl.as_secs_f64())
    .fetch_optional(conn)
    .await?;
    Ok(epoch.map(|epoch| Lease {
        shard,
        owner: owner.to_owned(),
        epoch,
    }))
}

/// Extends a lease that is still held; `false` if it expired or passed on.
pub async fn renew(conn: &mut PgConnection, lease: &Lease, ttl: Duration) -> sqlx::Result<bool> {
    let renewed = sqlx::query(
        "UPDATE relay_leases SET expires_at = clock_timestamp() + make_interval(secs => $4)
         WHERE shard = $1 AND owner = $2 AND epoch = $3 AND expires_at > clock_timestamp()",
    )
    .bind(lease.shard)
    .bind(&lease.owner)
    .bind(lease.epoch)
    .bind(ttl.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(renewed.rows_affected() == 1)
}

/// Gives a lease up at once, so a standby need not wait for it to expire.
pub async fn release(pool: &PgPool, lease: &Lease) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE relay_leases SET expires_at = clock_timestamp()
         WHERE shard = $1 AND owner = $2 AND epoch = $3",
    )
    .bind(lease.shard)
    .bind(&lease.owner)
    .bind(lease.epoch)
    .execute(pool)
    .await?;
    Ok(())
}
