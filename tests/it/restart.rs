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
    env.wait_count("SELECT count(*) FROM outbox", 0).await;
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
    assert_eq!(env.count("SELECT count(*) FROM order_feed").await, orders);

    // The restarted worker carries on with new work.
    env.produce_checkout(&checkout("k-after", 9999, 1)).await;
    env.wait_count("SELECT count(*) FROM orders", orders + 1)
        .await;
    env.wait_count("SELECT count(*) FROM outbox", 0).await;

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

/// A worker whose broker vanished still stops: librdkafka's consumer close
/// can wait for an unreachable broker indefinitely, and once it blocked the
/// runtime's threads the graceful stop's own timeout never fired (found by
/// the fault suite: workers hung after SIGTERM for as long as one cared to
/// wait). The process must exit within SHUTDOWN_TIMEOUT_SECS and the
/// watchdog's margin.
#[tokio::test]
async fn a_worker_whose_broker_is_gone_still_exits_after_sigterm() {
    let dir = std::env::temp_dir().join(format!("orderflow-gone-{}", uuid::Uuid::new_v4()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut broker = orderflow_testkit::broker::Broker::start(&dir, port, port, false)
        .await
        .expect("a broker of the test's own");
    let env = TestEnv::with(|s| s.kafka_brokers = format!("127.0.0.1:{port}")).await;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_orderflow"));
    let worker = orderflow_testkit::Worker::spawn(
        binary,
        &env.settings,
        &[
            ("KAFKA_CONSUMER_CONFIG", GROUP),
            ("SHUTDOWN_TIMEOUT_SECS", "3"),
        ],
    )
    .await
    .expect("worker starts");
    // Joined its groups (it has applied a checkout), and the membership
    // watch has asked the group coordinator for committed offsets: the
    // closes that hung were of consumers that had talked to it.
    env.produce_checkout(&checkout("gone-1", 9_001, 1)).await;
    env.wait_count("SELECT count(*) FROM orders", 1).await;
    let started = Instant::now();
    while !worker
        .metrics_page()
        .await
        .is_ok_and(|page| page.contains("orderflow_group_lag_messages{"))
    {
        assert!(started.elapsed() < WAIT, "the membership watch never ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The broker goes away as the worker starts its graceful stop, as when
    // a whole stack is stopped at once.
    let started = Instant::now();
    worker
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.stop().await.expect("broker stopped");
    let status = worker.terminate().await.expect("the worker exits");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3 + 5 + 5),
        "exit took {took:?}, beyond the shutdown timeout and the watchdog"
    );
    println!("worker with its broker gone exited in {took:?} ({status})");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A component that fails after the start (here a consumer loop whose
/// librdkafka settings are refused) stops the whole process with a non-zero
/// exit, so that systemd's `Restart=on-failure` or Kubernetes sees a failure.
#[tokio::test]
async fn a_failed_component_makes_the_process_exit_non_zero() {
    let env = TestEnv::new().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["run", "--only", "checkouts,http"])
        .env("DATABASE_URL", &env.settings.database_url)
        .env("KAFKA_BROKERS", &env.settings.kafka_brokers)
        .env("KAFKA_GROUP_ID", &env.settings.group_id)
        .envs(env.settings.topics.vars())
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("KAFKA_CONSUMER_CONFIG", "fetch.wait.max.ms=soon")
        .env("SHUTDOWN_TIMEOUT_SECS", "5")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("orderflow starts");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("it stops by itself")
        .unwrap();
    assert_eq!(status.code(), Some(1), "{status:?}");
}

/// Relay leases: one holder per shard; another relay gets a shard only once
/// it expired or was released, under a higher epoch; a superseded epoch
/// renews nothing and deletes nothing; a relay configured with another
/// shard count takes nothing while a lease of the old count lives.
#[tokio::test]
async fn relay_leases_have_one_holder_per_shard_and_fence_old_epochs() {
    use orderflow::store::leases::{release, renew, take, Lease};
    use orderflow::store::outbox::delete_published;
    let env = TestEnv::new().await;
    let mut conn = env.pool.acquire().await.unwrap();
    let ttl = Duration::from_secs(2);
    let shards_of = |leases: &[Lease]| leases.iter().map(|l| l.shard).collect::<Vec<_>>();

    let a = take(&mut conn, "a", 4, 3, ttl).await.unwrap();
    assert_eq!(shards_of(&a), [0, 1, 2]);
    let b = take(&mut conn, "b", 4, 3, ttl).await.unwrap();
    assert_eq!(shards_of(&b), [3], "only shard 3 is free");
    assert!(
        take(&mut conn, "c", 8, 8, ttl).await.unwrap().is_empty(),
        "another shard count waits for the live leases"
    );

    release(&mut conn, &a[2..]).await.unwrap();
    let b2 = take(&mut conn, "b", 4, 1, ttl).await.unwrap();
    assert_eq!(shards_of(&b2), [2]);
    assert!(b2[0].epoch > a[2].epoch);
    assert_eq!(
        shards_of(&renew(&mut conn, &a, ttl).await.unwrap()),
        [0, 1],
        "shard 2 passed on"
    );

    // The fence: rows of a shard are deleted only by its current holder.
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO outbox (topic, key, payload)
         SELECT 't', convert_to('order-' || n, 'UTF8'), 'x' FROM generate_series(1, 200) n
         RETURNING id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let of_shard = |shard: i32| format!("SELECT count(*) FROM outbox WHERE slot % 4 = {shard}");
    let in_two = env.count(&of_shard(2)).await;
    assert!(in_two > 0 && in_two < 200, "{in_two} rows in shard 2");
    let kept = delete_published(&mut conn, &ids, &a, 4).await.unwrap();
    assert_eq!(shards_of(&kept), [0, 1], "a no longer holds shard 2");
    assert_eq!(env.count(&of_shard(0)).await, 0);
    assert_eq!(env.count(&of_shard(2)).await, in_two, "not a's to delete");
    let kept = delete_published(&mut conn, &ids, &b2, 4).await.unwrap();
    assert_eq!(shards_of(&kept), [2]);
    assert_eq!(env.count(&of_shard(2)).await, 0);

    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let b3 = take(&mut conn, "b", 4, 4, ttl).await.unwrap();
    assert_eq!(shards_of(&b3), [0, 1, 2, 3], "all expired");
    assert!(b3[0].epoch > a[0].epoch);
    assert!(renew(&mut conn, &a, ttl).await.unwrap().is_empty());
    assert!(delete_published(&mut conn, &ids, &a, 4)
        .await
        .unwrap()
        .is_empty());
    assert!(env.count(&of_shard(3)).await > 0, "a deleted nothing");

    release(&mut conn, &b3).await.unwrap();
    let c = take(&mut conn, "c", 8, 8, ttl).await.unwrap();
    assert_eq!(shards_of(&c), (0..8).collect::<Vec<_>>());
}
