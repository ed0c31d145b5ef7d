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

/// Runs one VACUUM pass; what it ran for `table`, if anything.
async fn pass_on(conn: &mut sqlx::PgConnection, table: &str) -> Option<String> {
    let done = maintenance::vacuum(conn).await.unwrap();
    let suffix = format!(" {table}");
    done.into_iter().find(|s| s.ends_with(&suffix))
}

#[tokio::test]
async fn vacuum_works_on_the_tables_that_changed_enough_and_no_others() {
    let env = TestEnv::new().await;
    let mut conn = env.pool.acquire().await.unwrap();
    assert_eq!(pass_on(&mut conn, "refunds").await, None, "an empty table");

    // 100 new rows: more than 50 changed, fewer than 1,000 inserted.
    insert_heads(&mut conn, 1, 100).await;
    assert_eq!(
        pass_on(&mut conn, "feed_heads").await.as_deref(),
        Some("ANALYZE feed_heads")
    );
    assert_eq!(
        pass_on(&mut conn, "feed_heads").await,
        None,
        "no change since"
    );

    // 1,500 more: 1,600 inserted since the last VACUUM (none), over 1,000 +
    // 20 % of the table.
    insert_heads(&mut conn, 1_000, 1_500).await;
    assert_eq!(
        pass_on(&mut conn, "feed_heads").await.as_deref(),
        Some("VACUUM (ANALYZE) feed_heads")
    );
    assert_eq!(
        pass_on(&mut conn, "feed_heads").await,
        None,
        "no change since"
    );
}
