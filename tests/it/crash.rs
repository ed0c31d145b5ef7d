//! Crash safety: thousands of mixed events for hundreds of orders —
//! duplicates, payments before checkouts, cancellations racing payments —
//! while the worker is SIGKILLed twice; the result must match a model
//! computed independently from the same events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use orderflow::events::{CheckoutEvent, PaymentStatus};
use orderflow::store::inbox::Outcome;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::helpers::{
    cancellation, checkout, event_id, failed_payment, payment, TestEnv, CHECKOUT_TOTAL, WAIT,
};
use crate::restart::{Worker, GROUP};

const ORDERS: usize = 700;

#[derive(Clone)]
enum Msg {
    Checkout(Box<CheckoutEvent>),
    Payment(orderflow::events::PaymentConfirmation),
    Cancel(orderflow::events::Cancellation),
}

/// What one order's events must lead to, whatever the interleaving.
#[derive(Debug, Default)]
struct Expected {
    rejected: bool,
    cancelled: bool,
    correct: Vec<String>,
    wrong: Vec<(String, i64)>,
    failed: bool,
}

impl Expected {
    fn status(&self) -> &'static str {
        if self.rejected {
            "REJECTED"
        } else if self.cancelled {
            "CANCELLED"
        } else if !self.correct.is_empty() {
            "PAID"
        } else if self.failed {
            "PAYMENT_FAILED"
        } else {
            "PENDING_PAYMENT"
        }
    }

    /// payment id -> refunded amount.
    fn refunds(&self) -> BTreeMap<String, i64> {
        let mut r: BTreeMap<String, i64> = self.wrong.iter().cloned().collect();
        let correct = self.correct.iter().map(|p| (p.clone(), CHECKOUT_TOTAL));
        if self.rejected || self.cancelled {
            r.extend(correct);
        } else {
            r.extend(correct.skip(1));
        }
        r
    }
}

/// Each order's messages, in the order they must be produced per topic.
fn scenario(rng: &mut StdRng) -> (Vec<Vec<Msg>>, BTreeMap<String, Expected>) {
    let mut stories = Vec::new();
    let mut model = BTreeMap::new();
    for i in 0..ORDERS {
        let id = format!("crash-{i}");
        let mut exp = Expected::default();
        let mut co = checkout(&id, i as i64, (i % 50) as i64);
        if i % 10 == 9 {
            co.items[0].quantity = 0;
            exp.rejected = true;
        }
        let mut payments = Vec::new();
        let pid = |n: u32| format!("pay-{i}-{n}");
        match i % 6 {
            0 => payments.push(payment(&id, &pid(1), CHECKOUT_TOTAL)),
            1 => {
                payments.push(failed_payment(&id, &pid(1), CHECKOUT_TOTAL));
                payments.push(payment(&id, &pid(2), CHECKOUT_TOTAL));
            }
            2 => {
                payments.push(payment(&id, &pid(1), CHECKOUT_TOTAL - 7));
                payments.push(payment(&id, &pid(2), CHECKOUT_TOTAL));
            }
            3 => {
                payments.push(payment(&id, &pid(1), CHECKOUT_TOTAL));
                payments.push(payment(&id, &pid(2), CHECKOUT_TOTAL));
            }
            4 => {}
            _ => {
                // A provider hammering one webhook: same event, then a new
                // event id for the same payment.
                let p = payment(&id, &pid(1), CHECKOUT_TOTAL);
                let mut retry = p.clone();
                retry.event_id = event_id(&format!("retry-{i}"));
                payments.extend([p.clone(), p.clone(), p, retry]);
            }
        }
        let mut seen = BTreeSet::new();
        for p in &payments {
            if !seen.insert((p.payment_id.clone(), p.status == PaymentStatus::Confirmed)) {
                continue;
            }
            match p.status {
                PaymentStatus::Failed => exp.failed = true,
                PaymentStatus::Confirmed if exp.rejected || p.amount_minor != CHECKOUT_TOTAL => {
                    exp.wrong.push((p.payment_id.clone(), p.amount_minor))
                }
                PaymentStatus::Confirmed => exp.correct.push(p.payment_id.clone()),
            }
        }
        if exp.rejected {
            // Every confirmed payment of a rejected order is refunded.
            exp.wrong
                .extend(exp.correct.drain(..).map(|p| (p, CHECKOUT_TOTAL)));
            exp.failed = false;
        }
        let mut cancels = Vec::new();
        if i % 5 == 0 {
            let c = cancellation(&id);
            cancels.push(c.clone());
            if i % 3 == 0 {
                cancels.push(c); // duplicate delivery
            }
            exp.cancelled = true;
        }
        let mut story = Vec::new();
        let early = i % 4 == 0; // payments and cancellations before the checkout
        if !early {
            story.push(Msg::Checkout(Box::new(co.clone())));
        }
        // Interleave payments and cancellations at random (across topics
        // nothing is ordered anyway).
        let (mut p, mut c) = (
            payments.into_iter().peekable(),
            cancels.into_iter().peekable(),
        );
        while p.peek().is_some() || c.peek().is_some() {
            if c.peek().is_none() || (p.peek().is_some() && rng.gen_bool(0.6)) {
                story.push(Msg::Payment(p.next().unwrap()));
            } else {
                story.push(Msg::Cancel(c.next().unwrap()));
            }
        }
        if early {
            story.push(Msg::Checkout(Box::new(co.clone())));
        }
        if i % 10 == 3 {
            story.push(Msg::Checkout(Box::new(co))); // the same checkout delivered twice
        }
        stories.push(story);
        model.insert(id, exp);
    }
    (stories, model)
}

#[tokio::test]
async fn killed_twice_mid_stream_the_outcome_matches_the_model() {
    let env = TestEnv::new().await;
    let mut rng = StdRng::seed_from_u64(20261125);
    let (stories, model) = scenario(&mut rng);

    // Merge the stories into one stream, keeping each story's order.
    let mut cursors: Vec<std::vec::IntoIter<Msg>> =
        stories.into_iter().map(|s| s.into_iter()).collect();
    let mut stream = Vec::new();
    while !cursors.is_empty() {
        let k = rng.gen_range(0..cursors.len());
        match cursors[k].next() {
            Some(m) => stream.push(m),
            None => {
                cursors.swap_remove(k);
            }
        }
    }
    let distinct_events: BTreeSet<String> = stream
        .iter()
        .map(|m| match m {
            Msg::Checkout(c) => format!("checkout/{}", c.event_id),
            Msg::Payment(p) => format!("payment/{}", p.event_id),
            Msg::Cancel(c) => format!("cancellation/{}", c.event_id),
        })
        .collect();
    let total = stream.len();
    assert!(total > 2_000, "{total} events is not a few thousand");

    // The first worker never commits offsets: whatever it did must be
    // redelivered after the kill.
    let mut first = Worker::spawn(
        &env.settings,
        &format!("{GROUP},auto.commit.interval.ms=3600000"),
    )
    .await;
    let producer_env = TestEnv::with_settings(env.settings.clone()).await;
    let producing = tokio::spawn(async move {
        for (n, msg) in stream.iter().enumerate() {
            match msg {
                Msg::Checkout(c) => {
                    producer_env.produce_checkout(c).await;
                }
                Msg::Payment(p) => producer_env.produce_payment(p).await,
                Msg::Cancel(c) => producer_env.produce_cancellation(c).await,
            }
            if n % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    let processed = "SELECT count(*) FROM processed_events";
    let wait_for = |fraction: f64| {
        let env = &env;
        let target = (distinct_events.len() as f64 * fraction) as i64;
        async move {
            let started = Instant::now();
            while env.count(processed).await < target {
                assert!(
                    started.elapsed() < WAIT * 4,
                    "stuck below {target} processed events"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(0.25).await;
    first.kill().await;
    let mut second = Worker::spawn(&env.settings, GROUP).await;
    wait_for(0.6).await;
    let mut redelivered = 0;
    for topic in [
        &env.settings.topics.checkouts,
        &env.settings.topics.payment_confirmations,
        &env.settings.topics.cancellations,
    ] {
        redelivered += second.handled(topic, Outcome::Duplicate).await;
    }
    second.kill().await;
    let third = Worker::spawn(&env.settings, GROUP).await;
    producing.await.unwrap();

    // Everything is applied, published, nothing is parked.
    env.wait_count(processed, distinct_events.len() as i64)
        .await;
    env.wait_count("SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0)
        .await;
    assert_eq!(env.count("SELECT count(*) FROM parked_events").await, 0);
    assert!(
        redelivered > 0,
        "no redelivery observed: the kill did not bite"
    );

    // Orders and refunds match the model exactly.
    let statuses: HashMap<String, String> = sqlx::query_as("SELECT order_id, status FROM orders")
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let refunds: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT order_id, payment_id, amount_minor FROM refunds")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let mut refunds_by_order: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for (order, payment, amount) in refunds {
        refunds_by_order
            .entry(order)
            .or_default()
            .insert(payment, amount);
    }
    let mut mismatches = Vec::new();
    let mut expected_refunds = 0;
    for (id, exp) in &model {
        if statuses.get(id).map(String::as_str) != Some(exp.status()) {
            mismatches.push(format!(
                "{id}: status {:?}, expected {}",
                statuses.get(id),
                exp.status()
            ));
        }
        let want = exp.refunds();
        expected_refunds += want.len();
        let got = refunds_by_order.get(id).cloned().unwrap_or_default();
        if got != want {
            mismatches.push(format!("{id}: refunds {got:?}, expected {want:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );

    // order-events: every outbox record published, none twice with different
    // content, and each refund announced exactly once.
    let outbox = env
        .count("SELECT count(*) FROM outbox WHERE topic LIKE '%order-events'")
        .await as usize;
    let records = env
        .read_topic(
            &env.settings.topics.order_events,
            outbox,
            Duration::from_secs(2),
        )
        .await;
    let mut by_id: HashMap<String, Vec<u8>> = HashMap::new();
    let mut refund_events = 0;
    let mut created_or_rejected: HashMap<String, usize> = HashMap::new();
    for r in &records {
        let v = r.json();
        let id = v["event_id"].as_str().unwrap().to_owned();
        if let Some(previous) = by_id.insert(id.clone(), r.payload.clone()) {
            assert_eq!(
                previous, r.payload,
                "event {id} published with two contents"
            );
            continue;
        }
        match v["event_type"].as_str().unwrap() {
            "RefundRequested" => refund_events += 1,
            "OrderCreated" | "OrderRejected" => {
                *created_or_rejected
                    .entry(v["order_id"].as_str().unwrap().to_owned())
                    .or_default() += 1
            }
            _ => {}
        }
    }
    assert_eq!(
        by_id.len(),
        outbox,
        "an outbox record is missing from the topic"
    );
    assert_eq!(refund_events, expected_refunds);
    assert_eq!(created_or_rejected.len(), ORDERS);
    assert!(created_or_rejected.values().all(|n| *n == 1));

    println!(
        "crash test: {total} events ({} distinct) for {ORDERS} orders, 2 kills, {redelivered} redeliveries seen by the second worker, {expected_refunds} refunds, 0 mismatches",
        distinct_events.len()
    );
    assert!(third.terminate().await.success());
}
