//! `orderflow dlq list|replay`: dead letters shown with their reasons, and
//! sent back once their cause is fixed, harmlessly more than once.

use orderflow::config::Topics;
use orderflow::dlq::{self, Filter, Letter};
use orderflow::events::DeadLetterClass;
use orderflow::store::inbox::Outcome;

use crate::helpers::{checkout, TestEnv};

async fn letters(env: &TestEnv, topic: &str, filter: &Filter) -> Vec<Letter> {
    let mut found = Vec::new();
    dlq::read(&env.settings, topic, filter, |l| {
        found.push(l);
        Ok(())
    })
    .await
    .expect("read the dead-letter topic");
    found
}

#[tokio::test]
async fn a_dead_letter_is_listed_with_its_reason_and_replayed_once_its_cause_is_fixed() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let topic = env.settings.topics.checkouts.clone();
    let dlq_topic = Topics::dlq(&topic);

    // A database refusal that lasts until an operator fixes it: a trigger
    // standing in for, say, a constraint a deploy got wrong.
    sqlx::query(
        "CREATE FUNCTION refuse_dlq_order() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.order_id = 'dlq-db-1' THEN RAISE EXCEPTION 'orders are closed for dlq-db-1'; END IF;
           RETURN NEW;
         END $$",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_dlq_order BEFORE INSERT ON orders
         FOR EACH ROW EXECUTE FUNCTION refuse_dlq_order()",
    )
    .execute(&env.pool)
    .await
    .unwrap();

    env.produce(&topic, Some("dlq-bad-1"), b"this is not json")
        .await;
    env.produce_checkout(&checkout("dlq-db-1", 1, 7)).await;
    app.wait_handled(&topic, Outcome::DeadLettered, 2).await;

    let all = letters(&env, &dlq_topic, &Filter::default()).await;
    assert_eq!(all.len(), 2, "{all:?}");
    let decode = all
        .iter()
        .find(|l| l.class() == Some(DeadLetterClass::Decode))
        .expect("a decode dead letter");
    assert!(
        decode.reason().contains("neither JSON nor Confluent Avro"),
        "{}",
        decode.reason()
    );
    let database = Filter {
        class: Some(DeadLetterClass::Database),
        since: None,
    };
    let refused = letters(&env, &dlq_topic, &database).await;
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0]
            .reason()
            .contains("orders are closed for dlq-db-1"),
        "{}",
        refused[0].reason()
    );
    assert_eq!(refused[0].source_topic(), topic);
    assert_eq!(refused[0].key.as_deref(), Some(&b"dlq-db-1"[..]));

    // A dry run counts and sends nothing.
    let dry = dlq::replay(&env.settings, &dlq_topic, &database, true, |_| {})
        .await
        .unwrap();
    assert_eq!(dry.sent, 1);

    // The cause is fixed; the replay applies the checkout.
    sqlx::query("DROP TRIGGER refuse_dlq_order ON orders")
        .execute(&env.pool)
        .await
        .unwrap();
    let done = dlq::replay(&env.settings, &dlq_topic, &database, false, |_| {})
        .await
        .unwrap();
    assert_eq!((done.sent, done.truncated, done.foreign), (1, 0, 0));
    env.wait_status("dlq-db-1", "PENDING_PAYMENT").await;
    // The dry run had sent nothing: exactly one new delivery was applied.
    app.wait_handled(&topic, Outcome::Applied, 1).await;

    // A second replay is harmless: the inbox knows the event.
    dlq::replay(&env.settings, &dlq_topic, &database, false, |_| {})
        .await
        .unwrap();
    app.wait_handled(&topic, Outcome::Duplicate, 1).await;
    assert_eq!(app.handled(&topic, Outcome::Applied), 1);
    assert_eq!(
        env.count("SELECT count(*) FROM order_feed").await,
        1,
        "one OrderCreated, however many replays"
    );
    app.stop().await;
}

#[tokio::test]
async fn dlq_list_prints_each_dead_letter_and_a_count() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let topic = env.settings.topics.checkouts.clone();
    env.produce(&topic, Some("cli-bad-1"), b"{not json").await;
    app.wait_handled(&topic, Outcome::DeadLettered, 1).await;

    // Given the input topic's name, it reads its dead-letter topic.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["dlq", "list", &topic, "--class", "decode"])
        .env("KAFKA_BROKERS", &env.settings.kafka_brokers)
        .env("TOPIC_CHECKOUTS", &topic)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].contains("decode") && lines[0].contains("key=cli-bad-1"),
        "{stdout}"
    );
    assert!(stderr.contains("1 dead letter(s) in"), "{stderr}");
    app.stop().await;
}
