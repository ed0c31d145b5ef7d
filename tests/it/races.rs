//! The park-versus-checkout race, provoked deterministically by holding one
//! transaction open while the other tries to run.

use std::sync::Arc;
use std::time::Duration;

use orderflow::events::Codec;
use orderflow::store::lifecycle::lock_orders;
use orderflow::workers::checkout::CheckoutHandler;
use orderflow::workers::emit::Emitter;
use orderflow::workers::lifecycle::{Input, Lifecycle, LifecycleHandler};
use orderflow::workers::{Handler, Verdict};

use crate::helpers::{checkout, payment, TestEnv, CHECKOUT_TOTAL};

fn handlers(env: &TestEnv) -> (Arc<CheckoutHandler>, Arc<LifecycleHandler>) {
    let emitter = Emitter::new(
        Codec::new(1 << 20),
        env.settings.topics.order_events.clone(),
    );
    let lifecycle = Arc::new(Lifecycle::new(emitter.clone()));
    (
        Arc::new(CheckoutHandler::new(emitter, lifecycle.clone(), 0)),
        Arc::new(LifecycleHandler::payments(lifecycle)),
    )
}

#[tokio::test]
async fn a_payment_parked_while_its_checkout_is_being_applied_is_not_lost() {
    let env = TestEnv::new().await;
    let (checkouts, payments) = handlers(&env);

    // Transaction A parks a payment for an order nobody knows yet...
    let mut a = env.pool.begin().await.unwrap();
    lock_orders(&mut a, &["race-1"]).await.unwrap();
    let parked = payments
        .apply(
            &mut a,
            &Input::Payment(payment("race-1", "p-1", CHECKOUT_TOTAL)),
        )
        .await
        .unwrap();
    assert_eq!(parked.verdict, Verdict::Parked);

    // ...while transaction B applies the checkout. Without the order lock B
    // would create the order, find nothing parked, commit, and the payment
    // would wait forever.
    let pool = env.pool.clone();
    let ev = checkout("race-1", 1, 1);
    let b = tokio::spawn(async move {
        let mut b = pool.begin().await.unwrap();
        lock_orders(&mut b, &["race-1"]).await.unwrap();
        let handled = checkouts.apply(&mut b, &ev).await.unwrap();
        b.commit().await.unwrap();
        handled
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !b.is_finished(),
        "the checkout must wait for the order lock"
    );
    a.commit().await.unwrap();

    let created = b.await.unwrap();
    assert_eq!(created.verdict, Verdict::Applied);
    assert_eq!(created.tally.unparked, 1);
    assert_eq!(env.status_of("race-1").await, "PAID");
    assert_eq!(env.count("SELECT count(*) FROM parked_events").await, 0);
    env.drop_database().await;
}

#[tokio::test]
async fn a_payment_arriving_while_its_checkout_commits_sees_the_order() {
    let env = TestEnv::new().await;
    let (checkouts, payments) = handlers(&env);

    let mut a = env.pool.begin().await.unwrap();
    lock_orders(&mut a, &["race-2"]).await.unwrap();
    checkouts
        .apply(&mut a, &checkout("race-2", 2, 1))
        .await
        .unwrap();

    let pool = env.pool.clone();
    let b = tokio::spawn(async move {
        let mut b = pool.begin().await.unwrap();
        lock_orders(&mut b, &["race-2"]).await.unwrap();
        let handled = payments
            .apply(
                &mut b,
                &Input::Payment(payment("race-2", "p-2", CHECKOUT_TOTAL)),
            )
            .await
            .unwrap();
        b.commit().await.unwrap();
        handled
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_finished(), "the payment must wait for the order lock");
    a.commit().await.unwrap();

    assert_eq!(
        b.await.unwrap().verdict,
        Verdict::Applied,
        "applied, not parked"
    );
    assert_eq!(env.status_of("race-2").await, "PAID");
    env.drop_database().await;
}
