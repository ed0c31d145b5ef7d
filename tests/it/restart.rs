//! Restarts: a killed worker redelivers without double effects; a stopped
//! worker commits its offsets so nothing is redelivered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use orderflow::config::Settings;
use orderflow::store::inbox::Outcome;

use crate::helpers::{checkout, TestEnv, WAIT};

/// The real `orderflow run` binary in a child process (the test kit's
/// worker), with the tests' short intervals.
pub struct Worker(orderflow_testkit::Worker);

impl Worker {
    pub async fn spawn(settings: &Settings, kafka_config: &str) -> Worker {
        let log = std::env::var("TEST_WORKER_LOG").unwrap_or_else(|_| "warn".into());
        let env = [
            ("KAFKA_CONSUMER_CONFIG", kafka_config),
            ("KAFKA_STATISTICS_INTERVAL_MS", "500"),
            ("BATCH_MAX_WAIT_MS", "10"),
            ("OUTBOX_POLL_INTERVAL_MS", "50"),
            ("RUST_LOG", log.as_str()),
        ];
        let binary = std::path::Path::new(env!("CARGO_BIN_EXE_orderflow"));
        Worker(
            orderflow_testkit::Worker::spawn(binary, settings, &env)
                .await
                .expect("worker starts and becomes ready"),
        )
    }

    pub async fn handled(&self, topic: &str, outcome: Outcome) -> u64 {
        self.0
            .handled(topic, outcome.as_str())
            .await
            .expect("worker metrics")
    }

    pub async fn wait_handled(&self, topic: &str, outcome: Outcome, n: u64) {
        let started = Instant::now();
        while self.handled(topic, outcome).await < n {
            assert!(
                started.elapsed() < WAIT * 2,
                "timed out waiting for {n} {outcome:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, and wait until it is gone.
    pub async fn kill(&mut self) {
        self.0.kill().await.expect("SIGKILL the worker");
    }

    pub async fn terminate(self) -> std::process::ExitStatus {
        self.0.terminate().await.expect("graceful stop")
    }
}

/// Short session timeouts so the killed member's partitions move quickly.
pub const GROUP: &str = "session.timeout.ms=6000,heartbeat.interval.ms=1000";

#[tokio::test]
async fn a_killed_worker_redelivers_on_restart_without_double_effects() {
    let env = TestEnv::new().await;
    let topic = env.settings.topics.checkouts.clone();
    // The first worker never auto-commits, so everything it applied must be
    // redelivered to the second: the test bites only if redelivery happens.
    let mut first = Worker::spawn(
        &env.settings,
        &format!("{GROUP},auto.commit.interval.ms=3600000"),
    )
    .await;
    let orders = 30;
    for i in 0..orders {
        env.produce_checkout(&checkout(&format!("k-{i}"), 5000 + i, i % 4))
            .await;
    }
    env.wait_count("SELECT count(*) FROM orders", orders).await;
    env.wait_count("SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0)
        .await;
    first.kill().await;

    let second = Worker::spawn(&env.settings, GROUP).await;
    second
        .wait_handled(&topic, Outcome::Duplicate, orders as u64)
        .await;
    assert_eq!(second.handled(&topic, Outcome::Applied).await, 0);
    assert_eq!(env.count("SELECT count(*) FROM orders").await, orders);
    assert_eq!(
        env.count("SELECT count(*) FROM order_items").await,
        orders * 2
    );
    assert_eq!(
        env.count("SELECT count(*) FROM order_status_history").await,
        orders
    );
    assert_eq!(env.count("SELECT count(*) FROM outbox").await, orders);

    // The restarted worker carries on with new work.
    env.produce_checkout(&checkout("k-after", 9999, 1)).await;
    env.wait_count("SELECT count(*) FROM orders", orders + 1)
        .await;
    env.wait_count("SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0)
        .await;

    // Each order announced once: a republished record is the same record.
    let records = env
        .read_topic(
            &env.settings.topics.order_events,
            orders as usize + 1,
            Duration::from_secs(2),
        )
        .await;
    let mut by_event: HashMap<String, Vec<u8>> = HashMap::new();
    for r in &records {
        let id = r.json()["event_id"].as_str().unwrap().to_owned();
        if let Some(previous) = by_event.insert(id, r.payload.clone()) {
            assert_eq!(previous, r.payload, "one event id, two contents");
        }
    }
    assert_eq!(by_event.len(), orders as usize + 1);

    assert!(second.terminate().await.success());
}

#[tokio::test]
async fn a_graceful_stop_commits_offsets_so_a_restart_redelivers_nothing() {
    let env = TestEnv::new().await;
    let topic = env.settings.topics.checkouts.clone();
    let app = env.start().await;
    for i in 0..5 {
        env.produce_checkout(&checkout(&format!("g-{i}"), 100 + i, 1))
            .await;
    }
    app.wait_handled(&topic, Outcome::Applied, 5).await;
    app.stop().await;

    let again = env.start().await;
    env.produce_checkout(&checkout("g-after", 999, 1)).await;
    again.wait_handled(&topic, Outcome::Applied, 1).await;
    assert_eq!(again.handled(&topic, Outcome::Duplicate), 0);
    assert_eq!(env.count("SELECT count(*) FROM orders").await, 6);

    again.stop().await;
}
