//! Partitions of one topic are applied concurrently: a batch that cannot
//! commit holds up its own partition, in order, and nothing else.

use std::time::Duration;

use orderflow::app::Component;
use orderflow::store::lifecycle::lock_orders;

use crate::helpers::{checkout, TestEnv};

#[tokio::test]
async fn a_stuck_partition_does_not_hold_up_the_others() {
    let env = TestEnv::new().await;
    let app = env
        .start_only(&[Component::Checkouts, Component::Http])
        .await;

    // An open transaction holds the order lock of "stuck-0", as a slow batch
    // of another loop would: its partition cannot commit until it ends.
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

    // Every other partition gets through while the stuck one waits...
    env.wait_until("the free partitions to be applied", || async {
        env.orders_among(&elsewhere).await == elsewhere.len() as i64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.orders_among(&["stuck-0".to_owned()]).await, 0);
    // ...and its later messages stay behind it, in offset order.
    assert_eq!(
        env.orders_among(&behind).await,
        0,
        "a message applied past its partition's stuck batch"
    );

    holder.commit().await.unwrap();
    env.wait_count("SELECT count(*) FROM orders", 41).await;
    app.stop().await;
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
