//! The read API: order detail and status, user history, health, metrics.

use orderflow::store::inbox::Outcome;

use crate::helpers::{checkout, TestEnv, WAIT};

#[tokio::test]
async fn unknown_orders_and_bad_parameters_get_json_errors() {
    let env = TestEnv::new().await;
    let app = env.start().await;

    let (status, body) = app.get("/orders/nope").await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (404, "order nope not found")
    );
    let (status, _) = app.get("/orders/nope/status").await;
    assert_eq!(status, 404);
    let (status, body) = app.get(&format!("/orders/{}", "x".repeat(200))).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("longer than 128"));
    let (status, body) = app.get("/users/abc/orders").await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (400, "user_id \"abc\" is not an integer")
    );
    for bad in ["limit=0", "limit=101", "limit=ten", "before=yesterday"] {
        let (status, body) = app.get(&format!("/users/1/orders?{bad}")).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].is_string(), "{bad}");
    }
    let oversized = app
        .http
        .get(format!("{}/healthz", app.base))
        .header("x-padding", "a".repeat(10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status().as_u16(), 431, "request heads over 8 KB");
    let (status, body) = app.get("/no/such/route").await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (404, "no such route")
    );

    app.stop().await;
}

#[tokio::test]
async fn status_is_small_and_history_pages_newest_first_with_items() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    for i in 1..=5 {
        env.produce_checkout(&checkout(&format!("u-ord-{i}"), 1000 + i, 42))
            .await;
    }
    env.produce_checkout(&checkout("other-user", 2000, 43))
        .await;
    env.wait_count("SELECT count(*) FROM orders", 6).await;

    let (status, body) = app.get("/orders/u-ord-3/status").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "PENDING_PAYMENT");
    assert_eq!(body["order_id"], "u-ord-3");
    assert!(body.get("items").is_none());

    let expected: Vec<String> = sqlx::query_scalar(
        "SELECT order_id FROM orders WHERE user_id = 42 ORDER BY created_at DESC, order_id DESC",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut path = "/users/42/orders?limit=2".to_owned();
    loop {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200);
        for order in page["orders"].as_array().unwrap() {
            assert_eq!(order["user_id"], 42);
            assert_eq!(order["items"].as_array().unwrap().len(), 2);
            seen.push(order["order_id"].as_str().unwrap().to_owned());
        }
        match page["next_before"].as_str() {
            Some(cursor) => path = format!("/users/42/orders?limit=2&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    let (_, empty) = app.get("/users/999/orders").await;
    assert_eq!(empty["orders"].as_array().unwrap().len(), 0);
    assert!(empty["next_before"].is_null());

    app.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_report_the_running_service() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
    // Ready once every loop's client has reached the broker and its group
    // coordinator (statistics every 500 ms in tests).
    app.wait_ready().await;
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["database"], true);
    assert_eq!(ready["consumers"][&env.settings.topics.checkouts], true);

    env.produce_checkout(&checkout("m-1", 1, 1)).await;
    app.wait_handled(&env.settings.topics.checkouts, Outcome::Applied, 1)
        .await;
    env.wait_count("SELECT count(*) FROM outbox", 0).await;
    app.get("/orders/m-1").await;
    let text = app.metrics().await;
    for expected in [
        "orderflow_messages_total{outcome=\"applied\"",
        "orderflow_batch_duration_seconds_bucket",
        "orderflow_batch_wait_seconds_count",
        "orderflow_end_to_end_latency_seconds_count",
        "orderflow_outbox_publish_latency_seconds_count",
        "orderflow_outbox_published_total",
        "orderflow_http_requests_total{route=\"/orders/{order_id}\",status=\"200\"}",
        "orderflow_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert!(!text.contains("m-1"), "an order id leaked into a label");
    let topic = &env.settings.topics.checkouts;
    for expected in [
        format!("orderflow_consumer_up{{topic=\"{topic}\"}} 1"),
        format!("orderflow_consumer_assigned_partitions{{topic=\"{topic}\"}}"),
        format!("orderflow_rebalances_total{{kind=\"assign\",topic=\"{topic}\"}}"),
        "orderflow_outbox_oldest_unpublished_age_seconds 0".to_owned(),
        "orderflow_build_info{git_sha=".to_owned(),
        "\nprocess_resident_memory_bytes ".to_owned(),
        "\nprocess_cpu_seconds_total ".to_owned(),
    ] {
        assert!(text.contains(&expected), "missing {expected} in\n{text}");
    }
    // Lag comes from librdkafka statistics, every 500 ms in tests.
    app.wait_metric("orderflow_consumer_lag_messages{").await;

    // An HTTP-only deployment expects no consumers and is ready on its own.
    let http_only = env.start_only(&[orderflow::app::Component::Http]).await;
    let (status, _) = http_only.get("/readyz").await;
    assert_eq!(status, 200);
    http_only.stop().await;

    app.stop().await;
}

#[tokio::test]
async fn a_worker_that_cannot_reach_kafka_is_not_ready_and_keeps_its_outbox_backlog() {
    let env = TestEnv::new().await;
    // The database is fine; nothing listens where the brokers should be.
    let mut settings = env.settings.clone();
    settings.kafka_brokers = "127.0.0.1:1".to_owned();
    // The relay's deliveries fail after 2 s instead of 30.
    settings
        .kafka_producer_extra
        .push(("message.timeout.ms".into(), "2000".into()));
    // One row waiting in the outbox, as a checkout's commit would leave it.
    let mut conn = env.pool.acquire().await.unwrap();
    orderflow::store::outbox::enqueue_many(
        &mut conn,
        &[orderflow::store::outbox::NewRecord {
            kind: orderflow::store::outbox::RecordKind::Raw,
            topic: env.settings.topics.order_events.clone(),
            key: Some(b"k".to_vec()),
            payload: b"{}".to_vec(),
            headers: Vec::new(),
        }],
    )
    .await
    .unwrap();
    drop(conn);
    let unreachable = TestEnv::with_settings(settings).await;
    let app = unreachable.start().await;
    // Long enough for several statistics intervals (500 ms in tests).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["database"], true);
    assert_eq!(ready["consumers"][&env.settings.topics.checkouts], false);
    let text = app.metrics().await;
    let line = format!(
        "orderflow_consumer_up{{topic=\"{}\"}} 0",
        env.settings.topics.checkouts
    );
    assert!(text.contains(&line), "missing {line} in\n{text}");

    // The relay fails its rounds, and the backlog it counted stays (it was
    // reset to 0 after each failure, which kept OrderflowOutboxStalled
    // silent through a broker outage); the row's age keeps growing.
    let gauge = |text: &str, name: &str| orderflow_testkit::prom::sum(text, name, &[]);
    let started = std::time::Instant::now();
    let text = loop {
        let text = app.metrics().await;
        if gauge(&text, "orderflow_outbox_publish_failures_total") >= 1.0 {
            break text;
        }
        assert!(started.elapsed() < WAIT, "the relay never failed:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(gauge(&text, "orderflow_outbox_backlog"), 1.0, "{text}");
    let age = gauge(&text, "orderflow_outbox_oldest_unpublished_age_seconds");
    assert!(age >= 2.0, "age {age}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let later = gauge(
        &app.metrics().await,
        "orderflow_outbox_oldest_unpublished_age_seconds",
    );
    assert!(later > age, "{age} -> {later}");
    app.stop().await;
}
