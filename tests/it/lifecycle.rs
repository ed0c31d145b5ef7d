//! The lifecycle rules, one test per group of table rows, on the real broker
//! and database.

use orderflow::store::inbox::Outcome;

use crate::helpers::{
    cancellation, checkout, event_id, failed_payment, payment, TestEnv, CHECKOUT_TOTAL,
};

#[tokio::test]
async fn a_matching_payment_pays_a_pending_order_and_one_whose_payment_failed() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    env.produce_checkout(&checkout("pay-a", 1, 1)).await;
    env.produce_checkout(&checkout("pay-b", 2, 1)).await;
    env.wait_count("SELECT count(*) FROM orders", 2).await;

    env.produce_payment(&payment("pay-a", "p-a", CHECKOUT_TOTAL))
        .await;
    env.produce_payment(&failed_payment("pay-b", "p-b1", CHECKOUT_TOTAL))
        .await;
    env.wait_status("pay-a", "PAID").await;
    env.wait_status("pay-b", "PAYMENT_FAILED").await;
    env.produce_payment(&payment("pay-b", "p-b2", CHECKOUT_TOTAL))
        .await;
    env.wait_status("pay-b", "PAID").await;

    assert_eq!(
        env.event_types_of("pay-a").await,
        ["OrderCreated", "OrderPaid"]
    );
    assert_eq!(
        env.event_types_of("pay-b").await,
        ["OrderCreated", "OrderPaymentFailed", "OrderPaid"]
    );
    let (_, order) = app.get("/orders/pay-b").await;
    let history: Vec<_> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to_status"].clone())
        .collect();
    assert_eq!(history, ["PENDING_PAYMENT", "PAYMENT_FAILED", "PAID"]);
    assert_eq!(order["paid_payment_id"], "p-b2");
    assert_eq!(order["payments"].as_array().unwrap().len(), 2);
    assert_eq!(order["payments"][0]["disposition"], "FAILED");
    assert_eq!(order["payments"][1]["disposition"], "PAID");
    let paid = &env.events_of("pay-a").await[1].1;
    assert_eq!(
        (paid["status"].as_str(), paid["amount_minor"].as_i64()),
        (Some("PAID"), Some(CHECKOUT_TOTAL))
    );
    assert!(app
        .metrics()
        .await
        .contains("orderflow_order_transitions_total{from=\"PAYMENT_FAILED\",to=\"PAID\"} 1"));

    app.stop().await;
}

#[tokio::test]
async fn a_payment_that_does_not_fit_is_rejected_and_refunded_whatever_the_state() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    env.produce_checkout(&checkout("fit-pending", 1, 1)).await;
    env.produce_checkout(&checkout("fit-paid", 2, 1)).await;
    env.wait_count("SELECT count(*) FROM orders", 2).await;
    env.produce_payment(&payment("fit-paid", "p-good", CHECKOUT_TOTAL))
        .await;
    env.wait_status("fit-paid", "PAID").await;

    env.produce_payment(&payment("fit-pending", "p-short", CHECKOUT_TOTAL - 1))
        .await;
    let mut euros = payment("fit-pending", "p-eur", CHECKOUT_TOTAL);
    euros.currency = "EUR".into();
    env.produce_payment(&euros).await;
    env.produce_payment(&payment("fit-paid", "p-over", CHECKOUT_TOTAL + 100))
        .await;
    env.wait_count("SELECT count(*) FROM refunds", 3).await;

    assert_eq!(env.status_of("fit-pending").await, "PENDING_PAYMENT");
    assert_eq!(env.status_of("fit-paid").await, "PAID");
    assert_eq!(
        env.event_types_of("fit-pending").await,
        [
            "OrderCreated",
            "PaymentRejected",
            "RefundRequested",
            "PaymentRejected",
            "RefundRequested"
        ]
    );
    let events = env.events_of("fit-paid").await;
    let types: Vec<_> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "OrderCreated",
            "OrderPaid",
            "PaymentRejected",
            "RefundRequested"
        ]
    );
    let refund = &events[3].1;
    assert_eq!(refund["payment_id"], "p-over");
    assert_eq!(refund["amount_minor"], CHECKOUT_TOTAL + 100);
    assert!(events[2].1["reason"]
        .as_str()
        .unwrap()
        .contains("does not match order total"));
    let text = app.metrics().await;
    assert!(
        text.contains("orderflow_payments_rejected_total 3"),
        "{text}"
    );
    assert!(text.contains("orderflow_refunds_requested_total{currency=\"EUR\"} 1"));

    app.stop().await;
}

#[tokio::test]
async fn a_second_payment_is_refunded_and_repeated_webhooks_change_nothing() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    env.produce_checkout(&checkout("twice", 1, 1)).await;
    env.wait_count("SELECT count(*) FROM orders", 1).await;
    let first = payment("twice", "p-1", CHECKOUT_TOTAL);
    env.produce_payment(&first).await;
    env.produce_payment(&first).await; // same event again
    let mut webhook_retry = payment("twice", "p-1", CHECKOUT_TOTAL);
    webhook_retry.event_id = event_id("retry-of-p-1"); // new event id, same payment
    env.produce_payment(&webhook_retry).await;
    env.produce_payment(&payment("twice", "p-2", CHECKOUT_TOTAL))
        .await;

    let topic = &env.settings.topics.payment_confirmations;
    app.wait_handled(topic, Outcome::Applied, 2).await;
    app.wait_handled(topic, Outcome::Duplicate, 2).await;
    assert_eq!(env.status_of("twice").await, "PAID");
    assert_eq!(
        env.event_types_of("twice").await,
        ["OrderCreated", "OrderPaid", "RefundRequested"]
    );
    assert_eq!(env.events_of("twice").await[2].1["payment_id"], "p-2");
    assert_eq!(env.count("SELECT count(*) FROM payments").await, 2);
    assert_eq!(
        env.count("SELECT count(*) FROM order_status_history").await,
        2
    );

    app.stop().await;
}

#[tokio::test]
async fn cancelling_cancels_unpaid_orders_refunds_paid_ones_and_ignores_repeats() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    for (i, id) in ["c-pending", "c-failed", "c-paid"].iter().enumerate() {
        env.produce_checkout(&checkout(id, i as i64, 1)).await;
    }
    env.wait_count("SELECT count(*) FROM orders", 3).await;
    env.produce_payment(&failed_payment("c-failed", "p-f", CHECKOUT_TOTAL))
        .await;
    env.produce_payment(&payment("c-paid", "p-ok", CHECKOUT_TOTAL))
        .await;
    env.wait_status("c-failed", "PAYMENT_FAILED").await;
    env.wait_status("c-paid", "PAID").await;

    for id in ["c-pending", "c-failed", "c-paid"] {
        env.produce_cancellation(&cancellation(id)).await;
    }
    env.wait_count("SELECT count(*) FROM orders WHERE status = 'CANCELLED'", 3)
        .await;
    assert_eq!(
        env.event_types_of("c-pending").await,
        ["OrderCreated", "OrderCancelled"]
    );
    assert_eq!(
        env.event_types_of("c-paid").await,
        [
            "OrderCreated",
            "OrderPaid",
            "OrderCancelled",
            "RefundRequested"
        ]
    );
    let refund = &env.events_of("c-paid").await[3].1;
    assert_eq!(
        (
            refund["payment_id"].as_str(),
            refund["amount_minor"].as_i64()
        ),
        (Some("p-ok"), Some(CHECKOUT_TOTAL))
    );
    assert_eq!(refund["status"], "CANCELLED");
    let cancelled = &env.events_of("c-pending").await[1].1;
    assert_eq!(cancelled["requested_by"], "CUSTOMER");

    // A cancelled order ignores another cancellation and refunds a payment.
    env.produce_cancellation(&cancellation("c-pending")).await;
    app.wait_handled(&env.settings.topics.cancellations, Outcome::Ignored, 1)
        .await;
    env.produce_payment(&payment("c-pending", "p-late", CHECKOUT_TOTAL))
        .await;
    env.wait_count(
        "SELECT count(*) FROM refunds WHERE payment_id = 'p-late'",
        1,
    )
    .await;
    assert_eq!(env.status_of("c-pending").await, "CANCELLED");
    assert_eq!(
        env.event_types_of("c-pending").await,
        ["OrderCreated", "OrderCancelled", "RefundRequested"]
    );
    // Orders by status, as the batches moved them, and on the gauge.
    assert_eq!(
        env.status_counts().await,
        [("CANCELLED".to_owned(), 3)].into()
    );
    app.wait_metric("orderflow_orders{status=\"CANCELLED\"} 3")
        .await;
    for gone in ["PENDING_PAYMENT", "PAID", "PAYMENT_FAILED"] {
        assert!(app
            .metrics()
            .await
            .contains(&format!("orderflow_orders{{status=\"{gone}\"}} 0")));
    }

    app.stop().await;
}

#[tokio::test]
async fn a_rejected_order_refunds_payments_and_ignores_cancellations() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let mut bad = checkout("r-1", 1, 1);
    bad.items[0].quantity = 0;
    env.produce_checkout(&bad).await;
    env.wait_status("r-1", "REJECTED").await;
    env.produce_payment(&payment("r-1", "p-r", 999)).await;
    env.produce_cancellation(&cancellation("r-1")).await;
    env.wait_count(
        "SELECT count(*) FROM refunds WHERE payment_id = 'p-r' AND amount_minor = 999",
        1,
    )
    .await;
    app.wait_handled(&env.settings.topics.cancellations, Outcome::Ignored, 1)
        .await;
    assert_eq!(env.status_of("r-1").await, "REJECTED");
    assert_eq!(
        env.event_types_of("r-1").await,
        ["OrderRejected", "RefundRequested"]
    );

    app.stop().await;
}

#[tokio::test]
async fn events_for_an_unknown_order_are_parked_then_applied_in_arrival_order() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    env.produce_payment(&failed_payment("early", "p-1", CHECKOUT_TOTAL))
        .await;
    env.wait_count("SELECT count(*) FROM parked_events", 1)
        .await;
    env.produce_payment(&payment("early", "p-2", CHECKOUT_TOTAL))
        .await;
    env.wait_count("SELECT count(*) FROM parked_events", 2)
        .await;
    env.produce_cancellation(&cancellation("early")).await;
    env.wait_count("SELECT count(*) FROM parked_events", 3)
        .await;

    let (status, parked) = app.get("/parked-events").await;
    assert_eq!(status, 200);
    assert_eq!(parked["count"], 3);
    let sources: Vec<_> = parked["parked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["source"].clone())
        .collect();
    assert_eq!(sources, ["payment", "payment", "cancellation"]);
    assert!(parked["parked"][0]["age_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        app.handled(&env.settings.topics.payment_confirmations, Outcome::Parked),
        2
    );

    env.produce_checkout(&checkout("early", 1, 1)).await;
    env.wait_status("early", "CANCELLED").await;
    assert_eq!(env.count("SELECT count(*) FROM parked_events").await, 0);
    let (_, order) = app.get("/orders/early").await;
    let history: Vec<_> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to_status"].clone())
        .collect();
    assert_eq!(
        history,
        ["PENDING_PAYMENT", "PAYMENT_FAILED", "PAID", "CANCELLED"]
    );
    assert_eq!(
        env.event_types_of("early").await,
        [
            "OrderCreated",
            "OrderPaymentFailed",
            "OrderPaid",
            "OrderCancelled",
            "RefundRequested"
        ]
    );
    assert_eq!(
        env.count("SELECT count(*) FROM processed_events WHERE outcome = 'parked'")
            .await,
        0,
        "drained events record their final outcome"
    );
    // Created and moved three times in one batch: counted once, CANCELLED.
    assert_eq!(
        env.status_counts().await,
        [("CANCELLED".to_owned(), 1)].into()
    );

    app.stop().await;
}

#[tokio::test]
async fn parked_events_older_than_the_limit_are_reported_not_dropped() {
    let env = TestEnv::with(|s| s.parked_max_age = std::time::Duration::ZERO).await;
    let app = env.start().await;
    env.produce_payment(&payment("never", "p-x", 1)).await;
    env.wait_count("SELECT count(*) FROM parked_events", 1)
        .await;
    app.wait_metric("orderflow_parked_events_stale 1").await;
    assert!(app.metrics().await.contains("orderflow_parked_events 1"));
    assert_eq!(env.count("SELECT count(*) FROM parked_events").await, 1);

    app.stop().await;
}
