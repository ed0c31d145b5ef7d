//! The ids of the order events the analytics loop counted
//! (`analytics_claims`, see its migration): one row per run of a batch's ids
//! close in time, found again by partition and creation-time span.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The part of rows (rollups and claims) a rebuild writes; a loop's batch
/// writes its partition's.
pub const REBUILT_PART: i32 = -1;

/// Per-partition advisory locks (class, partition) between batches of the
/// same partition (two instances overlap during a rebalance): a batch's
/// claims must see the claims of any batch of its partition before it.
const CLAIM_LOCK_CLASS: i32 = 0x616e_636c;

/// Ids further apart than this in creation time go to separate claim rows,
/// so a late or republished old event does not stretch a row over hours.
const CLAIM_ROW_SPAN_MS: i64 = 1_000;

/// The creation time of a UUID v7, in ms since the epoch (its first 48 bits).
pub fn v7_millis(id: &Uuid) -> i64 {
    i64::try_from(id.as_u128() >> 80).unwrap_or(i64::MAX)
}

/// Records `ids`, read from `order-events` partition `part` while the topic
/// had `layout` partitions (0: unknown), as counted, and returns those that
/// were not already. A batch's ids are split into runs close in time; each
/// run of new ids becomes one row.
pub async fn claim(
    conn: &mut PgConnection,
    part: i32,
    layout: i32,
    ids: &[Uuid],
) -> sqlx::Result<HashSet<Uuid>> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(CLAIM_LOCK_CLASS)
        .bind(part)
        .execute(&mut *conn)
        .await?;
    let mut sorted: Vec<Uuid> = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let (los, his): (Vec<i64>, Vec<i64>) = runs(&sorted)
        .iter()
        .map(|r| (v7_millis(&sorted[r.start]), v7_millis(&sorted[r.end - 1])))
        .unzip();
    // Runs joined to the claims, so that each run is an index scan of the
    // spans (a row matching two runs comes twice; the set takes it once).
    let earlier: Vec<Vec<Uuid>> = sqlx::query_scalar(
        "SELECT c.ids FROM unnest($1::int8[], $2::int8[]) AS r(lo, hi)
         JOIN analytics_claims c ON c.span && int8range(r.lo, r.hi, '[]')
         WHERE c.part = $3 OR c.part = $5 OR c.layout <> $4 OR $4 = 0",
    )
    .bind(&los)
    .bind(&his)
    .bind(part)
    .bind(layout)
    .bind(REBUILT_PART)
    .fetch_all(&mut *conn)
    .await?;
    let claimed: HashSet<Uuid> = earlier.into_iter().flatten().collect();
    let fresh: Vec<Uuid> = sorted
        .into_iter()
        .filter(|id| !claimed.contains(id))
        .collect();
    if fresh.is_empty() {
        return Ok(HashSet::new());
    }
    let mut run_of = Vec::with_capacity(fresh.len());
    for (n, r) in runs(&fresh).iter().enumerate() {
        run_of.extend(std::iter::repeat_n(n as i32, r.len()));
    }
    let millis: Vec<i64> = fresh.iter().map(v7_millis).collect();
    sqlx::query(
        "INSERT INTO analytics_claims (part, layout, span, n, ids)
         SELECT $1, $2, int8range(min(ms), max(ms), '[]'), count(*), array_agg(id ORDER BY id)
         FROM unnest($3::uuid[], $4::int4[], $5::int8[]) AS t(id, run, ms)
         GROUP BY run",
    )
    .bind(part)
    .bind(layout)
    .bind(&fresh)
    .bind(&run_of)
    .bind(&millis)
    .execute(&mut *conn)
    .await?;
    Ok(fresh.into_iter().collect())
}

/// Splits ascending v7 ids where two neighbours are more than
/// [`CLAIM_ROW_SPAN_MS`] apart in creation time.
fn runs(sorted: &[Uuid]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..sorted.len() {
        if v7_millis(&sorted[i]) - v7_millis(&sorted[i - 1]) > CLAIM_ROW_SPAN_MS {
            runs.push(start..i);
            start = i;
        }
    }
    if !sorted.is_empty() {
        runs.push(start..sorted.len());
    }
    runs
}

/// Marks the order events of the feed that occurred from `since` (all, if
/// `None`) as counted, for a rebuild that counted them from the tables: one
/// claim row per second of the events' creation times, as part
/// [`REBUILT_PART`] (searched by every batch). Returns how many ids.
pub async fn mark_feed(conn: &mut PgConnection, since: Option<DateTime<Utc>>) -> sqlx::Result<u64> {
    let marked: i64 = sqlx::query_scalar(
        "WITH marked AS (
             INSERT INTO analytics_claims (part, layout, span, n, ids)
             SELECT $2, 0, int8range(min(ms), max(ms), '[]'), count(*), array_agg(id ORDER BY id)
             FROM (
                 SELECT id, ('x' || lpad(substr(replace(id::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint AS ms
                 FROM (SELECT DISTINCT (body->>'event_id')::uuid AS id FROM order_feed
                       WHERE to_timestamp((body->>'occurred_at')::bigint / 1000.0) >= $1
                         AND body->>'event_id' ~ '^[0-9a-fA-F-]{36}$') AS f
             ) AS t
             GROUP BY ms / 1000
             RETURNING n
         )
         SELECT coalesce(sum(n), 0)::bigint FROM marked",
    )
    .bind(since)
    .bind(REBUILT_PART)
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(marked).unwrap_or(0))
}

/// Forgets counted event ids created before `before` (whole claim rows,
/// whose span ends before it). Returns how many ids went.
pub async fn purge_claims(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<u64> {
    let forgotten: i64 = sqlx::query_scalar(
        "WITH gone AS (DELETE FROM analytics_claims WHERE span << int8range($1, NULL) RETURNING n)
         SELECT coalesce(sum(n), 0)::bigint FROM gone",
    )
    .bind(before.timestamp_millis())
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(forgotten).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, n: u128) -> Uuid {
        Uuid::from_u128((u128::from(ms) << 80) | (7 << 76) | n)
    }

    #[test]
    fn v7_ids_give_their_creation_time() {
        let id = Uuid::now_v7();
        let now = Utc::now().timestamp_millis();
        assert!((now - v7_millis(&id)).abs() < 1_000);
        assert_eq!(v7_millis(&at(1_700_000_000_123, 5)), 1_700_000_000_123);
    }

    #[test]
    fn runs_split_where_ids_are_more_than_a_second_apart() {
        let ids = [
            at(10_000, 1),
            at(10_400, 2),
            at(11_400, 3),
            at(12_401, 4),
            at(90_000, 5),
        ];
        assert_eq!(runs(&ids), vec![0..3, 3..4, 4..5]);
        assert_eq!(runs(&ids[..1]), vec![0..1]);
        assert!(runs(&[]).is_empty());
    }
}
