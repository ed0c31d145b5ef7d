//! Relay leases (`relay_leases`): who may publish each outbox shard, until
//! when, and under which epoch; and the relays taking part (`relay_members`).
//! Time is the database's clock, one clock for every instance. Deleting
//! published rows checks the lease in the same statement
//! (`outbox::delete_published`), which is what fences a former owner.
//!
//! A lease is taken under a shard count (`OUTBOX_SHARDS`): shard k names
//! the slots s with s % shards = k, so a relay configured with another count
//! takes nothing while a lease of the old count is live.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

/// A lease held: the shard, the holder and the epoch it took it under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub shard: i32,
    pub owner: String,
    pub epoch: i64,
}

/// Reports `owner` as a live relay and returns how many relays are live
/// (seen within `ttl`, `owner` included): the divisor of the fair share.
pub async fn heartbeat(conn: &mut PgConnection, owner: &str, ttl: Duration) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "WITH me AS (
             INSERT INTO relay_members (instance_id) VALUES ($1)
             ON CONFLICT (instance_id) DO UPDATE SET seen_at = clock_timestamp())
         SELECT 1 + count(*) FROM relay_members
         WHERE instance_id <> $1 AND seen_at > clock_timestamp() - make_interval(secs => $2)",
    )
    .bind(owner)
    .bind(ttl.as_secs_f64())
    .fetch_one(conn)
    .await
}

/// Forgets `owner` as a relay (a clean shutdown), and members not seen for
/// long, so the table stays small.
pub async fn leave(pool: &PgPool, owner: &str) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM relay_members
         WHERE instance_id = $1 OR seen_at < clock_timestamp() - interval '1 day'",
    )
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// Takes up to `want` shards (of `shards`) that are free or expired, lowest
/// first, for `owner`, each under a new epoch; nothing while a live lease of
/// another shard count exists. Two relays racing for a shard cannot both get
/// it: the upsert re-checks the expiry on the row it locks.
pub async fn take(
    conn: &mut PgConnection,
    owner: &str,
    shards: i32,
    want: i64,
    ttl: Duration,
) -> sqlx::Result<Vec<Lease>> {
    if want <= 0 {
        return Ok(Vec::new());
    }
    let taken: Vec<(i32, i64)> = sqlx::query_as(
        "WITH free AS (
             SELECT s.shard FROM generate_series(0, $2 - 1) AS s(shard)
             LEFT JOIN relay_leases l USING (shard)
             WHERE (l.shard IS NULL OR l.expires_at < clock_timestamp())
               AND NOT EXISTS (SELECT 1 FROM relay_leases o
                               WHERE o.shards <> $2 AND o.owner <> $1
                                 AND o.expires_at > clock_timestamp())
             ORDER BY s.shard LIMIT $3)
         INSERT INTO relay_leases AS l (shard, owner, epoch, expires_at, shards)
         SELECT shard, $1, 1, clock_timestamp() + make_interval(secs => $4), $2 FROM free
         ON CONFLICT (shard) DO UPDATE
             SET owner = EXCLUDED.owner, epoch = l.epoch + 1,
                 expires_at = EXCLUDED.expires_at, shards = EXCLUDED.shards
             WHERE l.expires_at < clock_timestamp()
         RETURNING shard, epoch",
    )
    .bind(owner)
    .bind(shards)
    .bind(want)
    .bind(ttl.as_secs_f64())
    .fetch_all(conn)
    .await?;
    let mut leases: Vec<Lease> = taken
        .into_iter()
        .map(|(shard, epoch)| Lease {
            shard,
            owner: owner.to_owned(),
            epoch,
        })
        .collect();
    leases.sort_by_key(|l| l.shard);
    Ok(leases)
}

/// Extends the leases in `held` that are still held; returns those (the
/// others expired or passed on).
pub async fn renew(
    conn: &mut PgConnection,
    held: &[Lease],
    ttl: Duration,
) -> sqlx::Result<Vec<Lease>> {
    let Some(owner) = held.first().map(|l| l.owner.as_str()) else {
        return Ok(Vec::new());
    };
    let (shards, epochs) = columns(held);
    let renewed: Vec<i32> = sqlx::query_scalar(
        "UPDATE relay_leases l SET expires_at = clock_timestamp() + make_interval(secs => $4)
         FROM unnest($2::int[], $3::bigint[]) AS h(shard, epoch)
         WHERE l.shard = h.shard AND l.epoch = h.epoch AND l.owner = $1
           AND l.expires_at > clock_timestamp()
         RETURNING l.shard",
    )
    .bind(owner)
    .bind(&shards)
    .bind(&epochs)
    .bind(ttl.as_secs_f64())
    .fetch_all(conn)
    .await?;
    Ok(still_held(held, &renewed))
}

/// Gives leases up at once, so another relay need not wait for them to
/// expire.
pub async fn release(conn: &mut PgConnection, leases: &[Lease]) -> sqlx::Result<()> {
    let Some(owner) = leases.first().map(|l| l.owner.as_str()) else {
        return Ok(());
    };
    let (shards, epochs) = columns(leases);
    sqlx::query(
        "UPDATE relay_leases l SET expires_at = clock_timestamp()
         FROM unnest($2::int[], $3::bigint[]) AS h(shard, epoch)
         WHERE l.shard = h.shard AND l.epoch = h.epoch AND l.owner = $1",
    )
    .bind(owner)
    .bind(&shards)
    .bind(&epochs)
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives up every lease `owner` holds, whatever the epoch: a relay starting
/// over (after a failed round) forgot what it held; releasing lets it, or
/// another relay, take those shards at once instead of after their expiry.
pub async fn release_all(conn: &mut PgConnection, owner: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE relay_leases SET expires_at = clock_timestamp()
         WHERE owner = $1 AND expires_at > clock_timestamp()",
    )
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(())
}

/// The leases of `held` whose shard a statement found still held.
pub(crate) fn still_held(held: &[Lease], shards: &[i32]) -> Vec<Lease> {
    held.iter()
        .filter(|l| shards.contains(&l.shard))
        .cloned()
        .collect()
}

/// The shards and epochs of `leases`, as two columns for `unnest`.
pub(crate) fn columns(leases: &[Lease]) -> (Vec<i32>, Vec<i64>) {
    leases.iter().map(|l| (l.shard, l.epoch)).unzip()
}

/// The slots (0..256, `outbox.slot`) that shard `shard` of `shards` covers.
pub fn slots_of(shard: i32, shards: i32) -> impl Iterator<Item = i16> {
    (shard..256)
        .step_by(shards.max(1) as usize)
        .map(|s| s as i16)
}

/// The fair share of `shards` among `live` relays, rounded up so that the
/// shares cover every shard.
pub fn fair_share(shards: i32, live: i64) -> i64 {
    let live = live.max(1);
    (i64::from(shards) + live - 1) / live
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_belongs_to_exactly_one_shard() {
        for shards in [1, 2, 3, 16, 100, 256] {
            let mut seen = [0u8; 256];
            for shard in 0..shards {
                for slot in slots_of(shard, shards) {
                    seen[slot as usize] += 1;
                    assert_eq!(i32::from(slot) % shards, shard);
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "{shards} shards");
        }
    }

    #[test]
    fn fair_shares_cover_every_shard() {
        assert_eq!(fair_share(16, 1), 16);
        assert_eq!(fair_share(16, 3), 6);
        assert_eq!(fair_share(16, 0), 16);
        for live in 1..40 {
            assert!(fair_share(16, live) * live >= 16);
        }
    }
}
