//! Restarts: a killed worker redelivers without double effects; a stopped
//! worker commits its offsets so nothing is redelivered.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use orderflow::config::Settings;
use orderflow::telemetry::Outcome;
use tokio::process::{Child, Command};

use crate::helpers::{checkout, TestEnv, WAIT};

/// The real `orderflow run` binary in a child process.
pub struct Worker {
    pub child: Child,
    base: String,
}

impl Worker {
    pub async fn spawn(settings: &Settings, kafka_config: &str) -> Worker {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .arg("run")
            .env("DATABASE_URL", &settings.database_url)
            .env("KAFKA_BROKERS", &settings.kafka_brokers)
            .env("KAFKA_GROUP_ID", &settings.group_id)
            .env("KAFKA_CONSUMER_CONFIG", kafka_config)
            .env("KAFKA_STATISTICS_INTERVAL_MS", "500")
            .envs(settings.topics.vars())
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("BATCH_MAX_WAIT_MS", "10")
            .env("OUTBOX_POLL_INTERVAL_MS", "50")
            .env(
                "RUST_LOG",
                std::env::var("TEST_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn orderflow run");
        let worker = Worker {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while reqwest::get(format!("{}/readyz", worker.base))
            .await
            .map(|r| r.status().as_u16())
            .ok()
            != Some(200)
        {
            assert!(started.elapsed() < WAIT, "worker never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        worker
    }

    pub async fn handled(&self, topic: &str, outcome: Outcome) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series = format!(
            "orderflow_messages_total{{outcome=\"{}\",topic=\"{topic}\"}} ",
            outcome.as_str()
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0)
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

    pub fn kill(&mut self) {
        let pid = self.child.id().expect("running") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }

    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap()
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
    first.kill();
    first.child.wait().await.unwrap();

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
    env.drop_database().await;
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
    env.drop_database().await;
}
