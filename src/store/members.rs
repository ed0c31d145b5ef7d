//! Consumer group members as each instance reports itself
//! (`consumer_members`): which partitions it owns, refreshed every few
//! seconds. The broker's own view (DescribeGroups) is not used: Tansu
//! reports no members at all.

use std::time::Duration;

use sqlx::PgPool;

/// Records (or refreshes) `instance_id`'s partitions of `topic` in `group_id`.
pub async fn report(
    pool: &PgPool,
    group_id: &str,
    instance_id: &str,
    topic: &str,
    partitions: &[i32],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO consumer_members (group_id, instance_id, topic, partitions)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (group_id, instance_id) DO UPDATE
             SET topic = EXCLUDED.topic, partitions = EXCLUDED.partitions, seen_at = clock_timestamp()",
    )
    .bind(group_id)
    .bind(instance_id)
    .bind(topic)
    .bind(partitions)
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes `instance_id` from `group_id` (it left the group).
pub async fn leave(pool: &PgPool, group_id: &str, instance_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM consumer_members WHERE group_id = $1 AND instance_id = $2")
        .bind(group_id)
        .bind(instance_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The members of `group_id` seen within `fresh`: (instance id, partitions),
/// by instance id. Older rows (members that died or froze) are deleted once
/// they are ten times staler than that.
pub async fn live(
    pool: &PgPool,
    group_id: &str,
    fresh: Duration,
) -> sqlx::Result<Vec<(String, Vec<i32>)>> {
    sqlx::query(
        "DELETE FROM consumer_members
         WHERE group_id = $1 AND seen_at < clock_timestamp() - make_interval(secs => $2 * 10)",
    )
    .bind(group_id)
    .bind(fresh.as_secs_f64())
    .execute(pool)
    .await?;
    sqlx::query_as(
        "SELECT instance_id, partitions FROM consumer_members
         WHERE group_id = $1 AND seen_at >= clock_timestamp() - make_interval(secs => $2)
         ORDER BY instance_id",
    )
    .bind(group_id)
    .bind(fresh.as_secs_f64())
    .fetch_all(pool)
    .await
}
