//! Checkouts become orders: pricing, events, duplicates, rejections, dead letters.

use std::time::Duration;

use orderflow::store::inbox::Outcome;

use crate::helpers::{checkout, event_id, TestEnv};

#[tokio::test]
async fn a_checkout_becomes_a_priced_order_with_an_order_created_event() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let ev = checkout("ord-1", 101, 7);
    env.produce_checkout(&ev).await;

    env.wait_count("SELECT count(*) FROM orders", 1).await;
    let (status, order) = app.get("/orders/ord-1").await;
    assert_eq!(status, 200);
    assert_eq!(order["status"], "PENDING_PAYMENT");
    assert_eq!(order["currency"], "USD");
    assert_eq!(order["subtotal_minor"], 2_550);
    assert_eq!(order["tax_rate_ppm"], 72_500);
    assert_eq!(order["tax_minor"], 185); // 184.875 rounds half-up
    assert_eq!(order["shipping_minor"], 499);
    assert_eq!(order["total_minor"], 3_234);
    assert_eq!(order["item_count"], 3);
    assert_eq!(order["items"][0]["line_total_minor"], 2_000);
    assert_eq!(order["items"][1]["sku"], "SKU-B");
    assert_eq!(order["history"].as_array().unwrap().len(), 1);
    assert_eq!(order["history"][0]["to_status"], "PENDING_PAYMENT");
    assert_eq!(order["history"][0]["cause_event_id"], ev.event_id.as_str());
    assert!(order["history"][0]["from_status"].is_null());
    assert_eq!(order["history"][0]["at"], order["created_at"]);
    assert_eq!(order["billing_address"], order["shipping_address"]);
    assert_eq!(order["billing_address"]["city"], "San Francisco");

    let records = env
        .read_topic(&env.settings.topics.order_events, 1, Duration::ZERO)
        .await;
    let created = records[0].json();
    assert_eq!(records[0].key.as_deref(), Some("ord-1"));
    assert_eq!(records[0].headers["event_type"], "OrderCreated");
    assert_eq!(created["event_type"], "OrderCreated");
    assert_eq!(created["causation_event_id"], ev.event_id.as_str());
    assert_eq!(created["order_id"], "ord-1");
    assert_eq!(created["user_id"], 7);
    assert_eq!(created["status"], "PENDING_PAYMENT");
    assert_eq!(created["total_minor"], 3_234);
    assert_eq!(created["item_count"], 3);
    assert_ne!(created["event_id"], ev.event_id.as_str());
    assert_eq!(
        app.handled(&env.settings.topics.checkouts, Outcome::Applied),
        1
    );
    // Published rows are marked sent.
    env.wait_count("SELECT count(*) FROM outbox", 0).await;

    app.stop().await;
}

#[tokio::test]
async fn a_billing_address_is_stored_once_when_it_is_the_shipping_address() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let same = checkout("ord-same", 111, 7);
    let mut other = checkout("ord-other", 112, 7);
    other.billing_address.street = "9 Billing Road".into();
    other.billing_address.country = "DE".into();
    env.produce_checkout(&same).await;
    env.produce_checkout(&other).await;

    env.wait_count("SELECT count(*) FROM orders", 2).await;
    let (_, order) = app.get("/orders/ord-same").await;
    assert_eq!(order["billing_address"], order["shipping_address"]);
    let (_, order) = app.get("/orders/ord-other").await;
    assert_eq!(order["billing_address"]["street"], "9 Billing Road");
    assert_eq!(order["billing_address"]["country"], "DE");
    assert_eq!(order["shipping_address"]["country"], "US");
    assert_eq!(
        env.count("SELECT count(*) FROM orders WHERE billing_address IS NULL")
            .await,
        1,
        "only the order whose addresses are equal stores no billing address"
    );

    app.stop().await;
}

#[tokio::test]
async fn the_same_event_twice_creates_one_order_and_counts_a_duplicate() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let ev = checkout("ord-dup", 202, 1);
    env.produce_checkout(&ev).await;
    env.produce_checkout(&ev).await;

    app.wait_handled(&env.settings.topics.checkouts, Outcome::Duplicate, 1)
        .await;
    assert_eq!(
        app.handled(&env.settings.topics.checkouts, Outcome::Applied),
        1
    );
    assert_eq!(env.count("SELECT count(*) FROM orders").await, 1);
    assert_eq!(env.count("SELECT count(*) FROM order_items").await, 2);
    assert_eq!(
        env.count("SELECT count(*) FROM order_status_history").await,
        1
    );
    assert_eq!(env.count("SELECT count(*) FROM order_feed").await, 1);

    app.stop().await;
}

#[tokio::test]
async fn a_second_checkout_of_the_same_cart_creates_nothing_new() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    env.produce_checkout(&checkout("ord-first", 303, 1)).await;
    // New event id and new order id, same cart: an upstream double submit.
    env.produce_checkout(&checkout("ord-second", 303, 1)).await;
    // Same order id and cart under a new event id: an upstream retry.
    env.produce_checkout(&checkout("ord-first", 303, 1)).await;

    let topic = &env.settings.topics.checkouts;
    app.wait_handled(topic, Outcome::Duplicate, 2).await;
    assert_eq!(app.handled(topic, Outcome::Applied), 1);
    // The two order ids hash to different partitions, so either may win;
    // exactly one order exists for the cart either way.
    let ids: Vec<String> = sqlx::query_scalar("SELECT order_id FROM orders")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids[0] == "ord-first" || ids[0] == "ord-second", "{ids:?}");
    assert_eq!(env.count("SELECT count(*) FROM order_feed").await, 1);
    assert_eq!(
        env.count("SELECT count(*) FROM processed_events WHERE outcome = 'duplicate'")
            .await,
        2
    );

    app.stop().await;
}

#[tokio::test]
async fn invalid_checkouts_are_recorded_as_rejected_with_their_reason() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let mut cases = Vec::new();
    let mut no_items = checkout("rej-empty", 1, 1);
    no_items.items.clear();
    cases.push((no_items, "cart has no items"));
    let mut zero = checkout("rej-zero", 2, 1);
    zero.items[1].quantity = 0;
    cases.push((zero, "item 2 (SKU-B): quantity 0 must be at least 1"));
    let mut negative = checkout("rej-neg", 3, 1);
    negative.items[0].unit_price_minor = -5;
    cases.push((negative, "unit price -5 must not be negative"));
    let mut currency = checkout("rej-cur", 4, 1);
    currency.currency = "ABC".into();
    cases.push((currency, "unknown currency code \"ABC\""));
    let mut overflow = checkout("rej-big", 5, 1);
    overflow.items[0].unit_price_minor = i64::MAX / 2;
    cases.push((overflow, "overflows"));
    for (ev, _) in &cases {
        env.produce_checkout(ev).await;
    }

    env.wait_count(
        "SELECT count(*) FROM orders WHERE status = 'REJECTED'",
        cases.len() as i64,
    )
    .await;
    for (ev, reason) in &cases {
        let (status, order) = app.get(&format!("/orders/{}", ev.order_id)).await;
        assert_eq!(status, 200);
        assert_eq!(order["status"], "REJECTED");
        let stored = order["rejection_reason"].as_str().unwrap();
        assert!(
            stored.contains(reason),
            "{}: {stored:?} should contain {reason:?}",
            ev.order_id
        );
        assert!(order["total_minor"].is_null());
        assert_eq!(order["history"][0]["to_status"], "REJECTED");
    }
    let events = env
        .read_topic(
            &env.settings.topics.order_events,
            cases.len(),
            Duration::ZERO,
        )
        .await;
    for record in &events {
        let e = record.json();
        assert_eq!(e["event_type"], "OrderRejected");
        assert_eq!(e["status"], "REJECTED");
        let (ev, reason) = cases
            .iter()
            .find(|(ev, _)| e["order_id"] == ev.order_id.as_str())
            .unwrap();
        assert_eq!(e["causation_event_id"], ev.event_id.as_str());
        assert!(e["reason"].as_str().unwrap().contains(reason));
    }
    assert_eq!(
        app.handled(&env.settings.topics.checkouts, Outcome::Rejected),
        cases.len() as u64
    );

    app.stop().await;
}

#[tokio::test]
async fn undecodable_messages_go_to_the_dead_letter_topic_and_the_loop_moves_on() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let topic = env.settings.topics.checkouts.clone();
    // All on one key, so all on one partition, in this order.
    env.produce(&topic, Some("ord-ok"), b"this is not json")
        .await;
    env.produce(
        &topic,
        Some("ord-ok"),
        br#"{"event_id": "e1", "order_id": 12}"#,
    )
    .await;
    let mut wrong_key = checkout("ord-other", 9, 1);
    wrong_key.event_id = event_id("wrong-key");
    env.produce(
        &topic,
        Some("ord-ok"),
        &serde_json::to_vec(&wrong_key).unwrap(),
    )
    .await;
    env.produce_checkout(&checkout("ord-ok", 10, 1)).await;

    env.wait_count("SELECT count(*) FROM orders", 1).await;
    app.wait_handled(&topic, Outcome::DeadLettered, 3).await;
    let dead = env
        .read_topic(&format!("{topic}.dlq"), 3, Duration::ZERO)
        .await;
    assert_eq!(dead[0].payload, b"this is not json");
    assert_eq!(dead[0].key.as_deref(), Some("ord-ok"));
    assert!(
        dead[0].headers["error"].contains("neither JSON nor Confluent Avro"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(dead[0].headers["error_class"], "decode");
    assert_eq!(dead[0].headers["source_topic"], topic);
    assert!(dead[0].headers.contains_key("source_offset"));
    assert!(
        dead[1].headers["error"].contains("invalid JSON"),
        "{:?}",
        dead[1].headers
    );
    assert!(
        dead[2].headers["error"].contains("does not match order_id"),
        "{:?}",
        dead[2].headers
    );
    // Nothing was recorded for the dead letters.
    assert_eq!(env.count("SELECT count(*) FROM processed_events").await, 1);

    app.stop().await;
}

#[tokio::test]
async fn an_order_id_reused_for_another_cart_is_dead_lettered_not_merged() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    env.produce_checkout(&checkout("ord-taken", 1, 1)).await;
    env.produce_checkout(&checkout("ord-taken", 2, 1)).await;

    let topic = &env.settings.topics.checkouts;
    app.wait_handled(topic, Outcome::DeadLettered, 1).await;
    let dead = env
        .read_topic(&format!("{topic}.dlq"), 1, Duration::ZERO)
        .await;
    assert!(
        dead[0].headers["error"].contains("already belongs to cart 1"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(
        env.count("SELECT cart_id FROM orders WHERE order_id = 'ord-taken'")
            .await,
        1
    );

    app.stop().await;
}

#[tokio::test]
async fn a_batch_survives_a_database_outage_and_is_applied_when_it_returns() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let db = env
        .settings
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let admin =
        orderflow::store::pool(&env.settings.database_url.replace(&db, "postgres"), 1).unwrap();
    // Take the database away: refuse new connections and cut existing ones.
    sqlx::query(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db)
        .execute(&admin)
        .await
        .unwrap();

    env.produce_checkout(&checkout("ord-outage", 77, 1)).await;
    let topic = env.settings.topics.checkouts.clone();
    let started = std::time::Instant::now();
    while app.running.metrics.transient_failures_count(&topic) == 0 {
        assert!(
            started.elapsed() < crate::helpers::WAIT,
            "no transient failure observed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.handled(&topic, Outcome::DeadLettered), 0);
    assert_eq!(app.handled(&topic, Outcome::Applied), 0);

    sqlx::query(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))
        .execute(&admin)
        .await
        .unwrap();
    app.wait_handled(&topic, Outcome::Applied, 1).await;
    let pool = orderflow::store::pool(&env.settings.database_url, 1).unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    pool.close().await;
    admin.close().await;

    app.stop().await;
}

#[tokio::test]
async fn a_backlog_of_one_partition_is_applied_in_batches_in_offset_order() {
    let env = TestEnv::new().await;
    // Queue 60 checkouts on one key (one partition) before any worker runs.
    let mut events = Vec::new();
    for i in 0..60 {
        let mut ev = checkout("ord-batch", 7_000 + i, 1);
        if i > 0 {
            // Later checkouts reuse the order id with other carts: only the
            // first may win, which it does only if order is kept.
            ev.event_id = event_id(&format!("later-{i}"));
        }
        events.push(ev);
    }
    for ev in &events {
        env.produce_checkout(ev).await;
    }
    let app = env.start().await;
    let topic = env.settings.topics.checkouts.clone();
    app.wait_handled(&topic, Outcome::DeadLettered, 59).await;
    assert_eq!(app.handled(&topic, Outcome::Applied), 1);
    assert_eq!(
        env.count("SELECT cart_id FROM orders WHERE order_id = 'ord-batch'")
            .await,
        7_000
    );
    let text = app.metrics().await;
    let batches: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "orderflow_batch_size_messages_count{{topic=\"{topic}\"}} "
            ))
        })
        .expect("batch size metric")
        .parse()
        .unwrap();
    assert!(
        batches < 60,
        "60 messages took {batches} transactions: not batched"
    );

    // Published rows are deleted as they are published; rows an older
    // version marked sent are purged after the retention; unpublished ones
    // never.
    // (60 rows: one OrderCreated and 59 dead letters.)
    env.wait_count("SELECT count(*) FROM outbox", 0).await;
    assert_eq!(env.count("SELECT count(*) FROM order_feed").await, 1);
    app.stop().await;
    sqlx::query(
        "INSERT INTO outbox (topic, payload, sent_at) VALUES ('nowhere', 'x', NULL),
                                                             ('legacy', 'y', now())",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let purged = orderflow::store::outbox::purge(&env.pool, Duration::ZERO, 1_000)
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(
        env.count("SELECT count(*) FROM outbox WHERE topic = 'nowhere'")
            .await,
        1
    );

    // The feed keeps what the outbox still points at, however old.
    sqlx::query(
        "INSERT INTO outbox (kind, topic, key, headers, feed_user_id, feed_seq)
         SELECT 'order_event', 'nowhere', convert_to(order_id, 'UTF8'), '[]', user_id, seq
         FROM order_feed",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let feed_purge = || orderflow::store::feed::purge(&env.pool, Duration::ZERO, 1_000);
    assert_eq!(feed_purge().await.unwrap(), 0, "still to be published");
    sqlx::query("DELETE FROM outbox WHERE feed_seq IS NOT NULL")
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(feed_purge().await.unwrap(), 1);
}

/// `orderflow produce`, run as users run it.
async fn produce_cli(env: &TestEnv, topic: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .arg("produce")
        .args(args)
        .env("KAFKA_BROKERS", &env.settings.kafka_brokers)
        .env("TOPIC_CHECKOUTS", topic)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn produce_sends_every_sample_and_refuses_a_missing_topic_at_once() {
    let env = TestEnv::new().await;
    let topic = env.settings.topics.checkouts.clone();
    let out = produce_cli(
        &env,
        &topic,
        &["--count", "300", "--duplicate-every", "100"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("sent ")).count(),
        300
    );
    let records = env
        .read_topic(&topic, 303, Duration::from_millis(500))
        .await;
    assert_eq!(records.len(), 303, "300 samples and 3 duplicates");

    let missing = format!("{topic}-missing");
    let out = produce_cli(&env, &missing, &["--count", "1"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("topic {missing} does not exist"))
            && stderr.contains("topics apply"),
        "{stderr}"
    );
}

/// The inbox forgets events past `DEDUPE_RETENTION`, in batches, and keeps
/// the rest; a checkout redelivered after its inbox row is gone still
/// changes nothing (its order id is taken).
#[tokio::test]
async fn the_inbox_forgets_events_past_the_retention_and_nothing_is_applied_twice() {
    use orderflow::store::inbox;
    let env = TestEnv::new().await;
    let app = env.start().await;
    let topic = env.settings.topics.checkouts.clone();
    let old = checkout("inbox-old-1", 1, 1);
    for (i, c) in [
        &old,
        &checkout("inbox-old-2", 2, 1),
        &checkout("inbox-new", 3, 1),
    ]
    .into_iter()
    .enumerate()
    {
        env.produce_checkout(c).await;
        app.wait_handled(&topic, Outcome::Applied, i as u64 + 1)
            .await;
    }
    sqlx::query(
        "UPDATE processed_events SET processed_at = now() - interval '9 days'
         WHERE order_id LIKE 'inbox-old-%'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let eight_days = Duration::from_secs(8 * 86_400);
    assert_eq!(inbox::purge(&env.pool, eight_days, 1).await.unwrap(), 1);
    assert_eq!(inbox::purge(&env.pool, eight_days, 10).await.unwrap(), 1);
    assert_eq!(inbox::purge(&env.pool, eight_days, 10).await.unwrap(), 0);
    assert_eq!(
        env.count("SELECT count(*) FROM processed_events").await,
        1,
        "the recent one stays"
    );
    // A very late redelivery of a forgotten checkout: a duplicate by its
    // order id, not a second order.
    env.produce_checkout(&old).await;
    app.wait_handled(&topic, Outcome::Duplicate, 1).await;
    assert_eq!(env.count("SELECT count(*) FROM orders").await, 3);
    app.stop().await;
}
