//! The park-versus-checkout race, provoked deterministically by holding one
//! transaction open while the other tries to run.

use std::time::Duration;

use orderflow::events::Codec;
use orderflow::store::inbox::Outcome;
use orderflow::store::lifecycle::lock_orders;
use orderflow::workers::checkout::CheckoutHandler;
use orderflow::workers::lifecycle::LifecycleHandler;
use orderflow::workers::{Applier, RawMessage};

use crate::helpers::{checkout, payment, TestEnv, CHECKOUT_TOTAL};

fn appliers(env: &TestEnv) -> (Applier<CheckoutHandler>, Applier<LifecycleHandler>) {
    let codec = Codec::new(1 << 20);
    let t = &env.settings.topics;
    (
        Applier::new(
            CheckoutHandler::new(0),
            codec.clone(),
            &t.checkouts,
            &t.order_events,
        ),
        Applier::new(
            LifecycleHandler::payments(),
            codec,
            &t.payment_confirmations,
            &t.order_events,
        ),
    )
}

/// `event` as the consumer receives it: JSON, keyed by its order id.
fn message(order_id: &str, event: &impl serde::Serialize) -> RawMessage {
    RawMessage {
        partition: 0,
        offset: 0,
        key: Some(order_id.as_bytes().to_vec()),
        payload: Some(serde_json::to_vec(event).unwrap()),
    }
}

#[tokio::test]
async fn a_payment_parked_while_its_checkout_is_being_applied_is_not_lost() {
    let env = TestEnv::new().await;
    let (checkouts, payments) = appliers(&env);

    // Transaction A parks a payment for an order nobody knows yet...
    let mut a = env.pool.begin().await.unwrap();
    lock_orders(&mut a, &["race-1"]).await.unwrap();
    let pay = message("race-1", &payment("race-1", "p-1", CHECKOUT_TOTAL));
    let parked = payments.apply_messages(&mut a, &[pay]).await.unwrap();
    assert_eq!(parked.outcomes[0].0, Outcome::Parked);

    // ...while transaction B applies the checkout. Without the order lock B
    // would create the order, find nothing parked, commit, and the payment
    // would wait forever.
    let pool = env.pool.clone();
    let co = message("race-1", &checkout("race-1", 1, 1));
    let b = tokio::spawn(async move {
        let mut b = pool.begin().await.unwrap();
        lock_orders(&mut b, &["race-1"]).await.unwrap();
        let report = checkouts.apply_messages(&mut b, &[co]).await.unwrap();
        b.commit().await.unwrap();
        report
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !b.is_finished(),
        "the checkout must wait for the order lock"
    );
    a.commit().await.unwrap();

    let created = b.await.unwrap();
    assert_eq!(created.outcomes[0].0, Outcome::Applied);
    assert_eq!(created.tally.unparked, 1);
    assert_eq!(env.status_of("race-1").await, "PAID");
    assert_eq!(env.count("SELECT count(*) FROM parked_events").await, 0);
}

#[tokio::test]
async fn a_payment_arriving_while_its_checkout_commits_sees_the_order() {
    let env = TestEnv::new().await;
    let (checkouts, payments) = appliers(&env);

    let mut a = env.pool.begin().await.unwrap();
    lock_orders(&mut a, &["race-2"]).await.unwrap();
    let co = message("race-2", &checkout("race-2", 2, 1));
    checkouts.apply_messages(&mut a, &[co]).await.unwrap();

    let pool = env.pool.clone();
    let pay = message("race-2", &payment("race-2", "p-2", CHECKOUT_TOTAL));
    let b = tokio::spawn(async move {
        let mut b = pool.begin().await.unwrap();
        lock_orders(&mut b, &["race-2"]).await.unwrap();
        let report = payments.apply_messages(&mut b, &[pay]).await.unwrap();
        b.commit().await.unwrap();
        report
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_finished(), "the payment must wait for the order lock");
    a.commit().await.unwrap();

    assert_eq!(
        b.await.unwrap().outcomes[0].0,
        Outcome::Applied,
        "applied, not parked"
    );
    assert_eq!(env.status_of("race-2").await, "PAID");
}
