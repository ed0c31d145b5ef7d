//! The housekeeping's VACUUM pass (where autovacuum is off) works on the
//! tables that changed enough, by autovacuum's default thresholds, and
//! leaves the others alone.

use orderflow::store::maintenance;

use crate::helpers::TestEnv;

/// Inserts `n` rows into `feed_heads` from `conn` and makes its statistics
/// visible to the next transaction (they are otherwise flushed within 10 s).
async fn insert_heads(conn: &mut sqlx::PgConnection, from: i64, n: i64) {
    sqlx::query(
        "INSERT INTO feed_heads (user_id, seq) SELECT g, 1 FROM generate_series($1::bigint, $2::bigint) g",
    )
    .bind(from)
    .bind(from + n - 1)
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn vacuum_works_on_the_tables_that_changed_enough_and_no_others() {
    let env = TestEnv::new().await;
    let mut conn = env.pool.acquire().await.unwrap();
    let first = maintenance::vacuum(&mut conn).await.unwrap();
    assert!(
        !first.iter().any(|s| s.ends_with(" refunds")),
        "an empty table needs nothing: {first:?}"
    );

    // 100 new rows: more than 50 changed, fewer than 1,000 inserted.
    insert_heads(&mut conn, 1, 100).await;
    let done = maintenance::vacuum(&mut conn).await.unwrap();
    assert!(done.contains(&"ANALYZE feed_heads".to_owned()), "{done:?}");
    let again = maintenance::vacuum(&mut conn).await.unwrap();
    assert!(
        !again.iter().any(|s| s.ends_with(" feed_heads")),
        "nothing changed since: {again:?}"
    );

    // 1,500 more: 1,600 inserted since the last VACUUM (none), over 1,000 +
    // 20 % of the table.
    insert_heads(&mut conn, 1_000, 1_500).await;
    let done = maintenance::vacuum(&mut conn).await.unwrap();
    assert!(
        done.contains(&"VACUUM (ANALYZE) feed_heads".to_owned()),
        "{done:?}"
    );
    let again = maintenance::vacuum(&mut conn).await.unwrap();
    assert!(
        !again.iter().any(|s| s.ends_with(" feed_heads")),
        "nothing changed since: {again:?}"
    );
}
