//! Crash safety: thousands of mixed events for hundreds of orders —
//! duplicates, payments before checkouts, cancellations racing payments —
//! while the worker is SIGKILLed twice; the result must match the mix's
//! independent model, checked by the fault suite's oracle
//! (`orderflow_testkit::{mix, oracle}`; `./scripts/faults.sh kill` is the
//! same at 100,000 events).

use std::time::{Duration, Instant};

use orderflow::store::inbox::Outcome;
use orderflow_testkit::mix::{Mix, MixOptions};
use orderflow_testkit::oracle;

use crate::helpers::{TestEnv, WAIT};
use crate::restart::{Worker, GROUP};

#[tokio::test]
async fn killed_twice_mid_stream_the_outcome_matches_the_model() {
    let env = TestEnv::new().await;
    let mix = Mix::generate(MixOptions {
        events: 2_240,
        seed: 20_261_125,
        prefix: "crash-",
        skewed_clocks: false,
    });
    let total = mix.messages.len();
    let distinct = mix.distinct_events.len() as i64;

    // The first worker never commits offsets: whatever it did must be
    // redelivered after the kill.
    let mut first = Worker::spawn(
        &env.settings,
        &format!("{GROUP},auto.commit.interval.ms=3600000"),
    )
    .await;
    let producer_env = TestEnv::with_settings(env.settings.clone()).await;
    let messages = mix.messages.clone();
    let producing = tokio::spawn(async move {
        let topics = &producer_env.settings.topics;
        for (n, m) in messages.iter().enumerate() {
            let key = m.key.as_deref().map(|k| std::str::from_utf8(k).unwrap());
            producer_env
                .produce(m.input.topic(topics), key, &m.payload)
                .await;
            if n % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    let processed = "SELECT count(*) FROM processed_events";
    let wait_for = |fraction: f64| {
        let env = &env;
        let target = (distinct as f64 * fraction) as i64;
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

    // Everything is applied and published.
    env.wait_count(processed, distinct).await;
    env.wait_count("SELECT count(*) FROM outbox", 0).await;
    assert!(
        redelivered > 0,
        "no redelivery observed: the kill did not bite"
    );

    let findings = oracle::check(&env.pool, &env.settings, &mix, &[])
        .await
        .expect("the oracle ran");
    assert!(
        findings.mismatches.is_empty(),
        "{} mismatches:\n{}",
        findings.mismatches.len(),
        findings.mismatches.join("\n")
    );
    let refunds = env.count("SELECT count(*) FROM refunds").await;
    assert!(refunds > 0, "the mix requests refunds");
    println!(
        "crash test: {total} events ({distinct} distinct) for {} orders, 2 kills, {redelivered} redeliveries seen by the second worker, {refunds} refunds, {} order events, 0 mismatches",
        findings.orders, findings.order_events
    );
    assert!(third.terminate().await.success());
}
