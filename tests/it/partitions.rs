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
    let mut behind = Vec::new();
    let mut elsewhere = 0;
    for i in 1..=40 {
        let id = format!("free-{i}");
        let (partition, _) = env.produce_checkout(&checkout(&id, 100 + i, 1)).await;
        if partition == stuck {
            behind.push(id);
        } else {
            elsewhere += 1;
        }
    }
    assert!(elsewhere > 0, "every order hashed to one partition");
    let behind = format!(
        "ARRAY[{}]::text[]",
        behind
            .iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(",")
    );

    // Every other partition gets through while the stuck one waits...
    env.wait_count(
        &format!(
            "SELECT count(*) FROM orders WHERE order_id LIKE 'free-%' AND order_id <> ALL({behind})"
        ),
        elsewhere,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.count("SELECT count(*) FROM orders WHERE order_id = 'stuck-0'")
            .await,
        0
    );
    // ...and its later messages stay behind it, in offset order.
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM orders WHERE order_id = ANY({behind})"
        ))
        .await,
        0,
        "a message applied past its partition's stuck batch"
    );

    holder.commit().await.unwrap();
    env.wait_count("SELECT count(*) FROM orders", 41).await;
    app.stop().await;
    env.drop_database().await;
}
