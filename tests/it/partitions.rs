//! Partitions of one topic are applied concurrently: a batch that cannot
//! commit holds up its own partition, in order, and nothing else, even when
//! it started out shared with other partitions; a shared batch commits every
//! partition's offset.

use std::collections::BTreeMap;
use std::time::Duration;

use orderflow::app::Component;
use orderflow::store::lifecycle::lock_orders;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::helpers::{checkout, TestEnv};

#[tokio::test]
async fn a_stuck_partition_does_not_hold_up_the_others() {
    let env = TestEnv::new().await;
    let app = env
        .start_only(&[Component::Checkouts, Component::Http])
        .await;
    let stuck = StuckPartition::produce(&env).await;
    stuck.only_it_waits(&env).await;
    app.stop().await;
}

/// A backlog over every partition, queued before the worker starts, makes
/// shared batches; one of its orders is locked elsewhere. The shared batch
/// gives up on the lock, its partitions go on apart, and only the locked
/// order's partition waits.
#[tokio::test]
async fn a_stuck_partition_in_a_shared_batch_holds_up_only_itself() {
    let env = TestEnv::new().await;
    let stuck = StuckPartition::produce(&env).await;
    let app = env
        .start_only(&[Component::Checkouts, Component::Http])
        .await;
    stuck.only_it_waits(&env).await;
    app.stop().await;
}

/// "stuck-0" locked by an open transaction, as a slow batch of another loop
/// would hold it (its partition cannot commit until it ends), and 40 free
/// orders produced after it: those on its partition and those elsewhere.
struct StuckPartition {
    holder: sqlx::Transaction<'static, sqlx::Postgres>,
    behind: Vec<String>,
    elsewhere: Vec<String>,
}

impl StuckPartition {
    async fn produce(env: &TestEnv) -> Self {
        let mut holder = env.pool.begin().await.unwrap();
        lock_orders(&mut holder, &["stuck-0"]).await.unwrap();
        let (stuck, _) = env.produce_checkout(&checkout("stuck-0", 1, 1)).await;
        let (mut behind, mut elsewhere) = (Vec::new(), Vec::new());
        for i in 1..=40 {
            let id = format!("free-{i}");
            let (partition, _) = env.produce_checkout(&checkout(&id, 100 + i, 1)).await;
            if partition == stuck {
                behind.push(id);
            } else {
                elsewhere.push(id);
            }
        }
        assert!(!elsewhere.is_empty(), "every order hashed to one partition");
        StuckPartition {
            holder,
            behind,
            elsewhere,
        }
    }

    /// Every other partition gets through while the stuck one waits, its
    /// later messages behind it in offset order; released, all 41 apply.
    async fn only_it_waits(self, env: &TestEnv) {
        let elsewhere = &self.elsewhere;
        env.wait_until("the free partitions to be applied", || async {
            env.orders_among(elsewhere).await == elsewhere.len() as i64
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(env.orders_among(&["stuck-0".to_owned()]).await, 0);
        assert_eq!(
            env.orders_among(&self.behind).await,
            0,
            "a message applied past its partition's stuck batch"
        );
        self.holder.commit().await.unwrap();
        env.wait_count("SELECT count(*) FROM orders", 41).await;
    }
}

/// Checkouts over every partition, few on each, queued before the worker
/// starts: they share transactions (fewer than the partitions they use),
/// and after the stop the group's committed offset of every partition is
/// its end, so a restart reads nothing again.
#[tokio::test]
async fn a_shared_batch_commits_the_offset_of_every_partition_in_it() {
    let env = TestEnv::new().await;
    let topic = env.settings.topics.checkouts.clone();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for i in 0..30 {
        let (partition, offset) = env
            .produce_checkout(&checkout(&format!("spread-{i}"), 200 + i, 1))
            .await;
        ends.insert(partition, offset + 1);
    }
    assert!(ends.len() >= 3, "30 orders on {} partitions", ends.len());
    let app = env
        .start_only(&[Component::Checkouts, Component::Http])
        .await;
    env.wait_count("SELECT count(*) FROM orders", 30).await;
    let page = app.metrics().await;
    let batches = orderflow_testkit::prom::sum(
        &page,
        "orderflow_batch_size_messages_count",
        &[("topic", &topic)],
    );
    assert!(
        batches < ends.len() as f64,
        "{batches} transactions for {} partitions: none shared",
        ends.len()
    );
    app.stop().await;

    let observer: BaseConsumer =
        orderflow::kafka::observer_config(&env.settings, &env.settings.group_for(&topic))
            .create()
            .unwrap();
    let mut asked = TopicPartitionList::new();
    for &partition in ends.keys() {
        asked.add_partition(&topic, partition);
    }
    let committed = observer
        .committed_offsets(asked, Duration::from_secs(10))
        .unwrap();
    let committed: BTreeMap<i32, i64> = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => (e.partition(), o),
            other => panic!(
                "partition {} has no committed offset: {other:?}",
                e.partition()
            ),
        })
        .collect();
    assert_eq!(committed, ends);
}

/// `topics apply` creates what is missing and only that: a second run finds
/// every topic, and a topic deleted meanwhile would be the only one asked
/// for (here: one topic of a fresh set created alone first).
#[tokio::test]
async fn topics_apply_creates_only_the_missing_topics() {
    use orderflow::kafka::topics::{apply, load_specs, Applied};

    let env = TestEnv::new().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("topics");
    let specs = load_specs(&dir).unwrap();
    let again = apply(&env.settings, &specs).await.unwrap();
    assert_eq!(again.len(), specs.len());
    assert!(
        again.iter().all(|(_, a)| *a == Applied::Existed),
        "{again:?}"
    );

    let mut settings = env.settings.clone();
    settings.topics = orderflow::config::Topics::prefixed(&format!("{}-apply-", settings.group_id));
    let checkouts = specs
        .iter()
        .filter(|s| s.role == "checkouts")
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(
        apply(&settings, &checkouts).await.unwrap()[0].1,
        Applied::Created
    );
    let all = apply(&settings, &specs).await.unwrap();
    let created = all.iter().filter(|(_, a)| *a == Applied::Created).count();
    assert_eq!(created, specs.len() - 1, "{all:?}");
    assert!(all.contains(&(settings.topics.checkouts.clone(), Applied::Existed)));
}
