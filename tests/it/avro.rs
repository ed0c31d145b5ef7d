//! Confluent Avro in and out through the registry (a test double, see
//! registry_double.rs), JSON alongside, schema evolution, dead letters and a
//! registry outage.
//!
//! Interoperability is shown with byte-exact frames built here from the
//! Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro
//! binary datum) using apache-avro directly, not orderflow's codec: what we
//! decode is what Confluent's serializer writes, and what we publish is
//! checked to be exactly such a frame.

use std::time::{Duration, Instant};

use apache_avro::types::Value;
use apache_avro::Schema;
use orderflow::events::CheckoutEvent;
use orderflow::store::inbox::Outcome;

use crate::helpers::{checkout, payment, TestEnv, CHECKOUT_TOTAL, WAIT};
use orderflow_testkit::registry::RegistryDouble;

const CHECKOUT_AVSC: &str = include_str!("../../schemas/checkout.avsc");

/// A Confluent frame: 0, the schema id big-endian, the Avro datum.
fn frame(schema_id: u32, schema: &Schema, value: Value) -> Vec<u8> {
    let resolved = value.resolve(schema).expect("value fits the writer schema");
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(&schema_id.to_be_bytes());
    bytes.extend(
        apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(resolved)
            .expect("encode datum"),
    );
    bytes
}

fn checkout_value(ev: &CheckoutEvent) -> Value {
    apache_avro::to_value(ev).expect("checkout to Avro value")
}

async fn env_with_registry(registry: &RegistryDouble) -> TestEnv {
    let url = registry.url.clone();
    let env = TestEnv::with(|s| s.schema_registry_url = Some(url)).await;
    orderflow::schemas::register(&env.settings)
        .await
        .expect("register schemas");
    env
}

#[tokio::test]
async fn avro_in_and_out_through_the_registry() {
    let registry = RegistryDouble::start().await;
    let env = env_with_registry(&registry).await;
    let app = env.start().await;
    let checkouts_subject = format!("{}-value", env.settings.topics.checkouts);
    let id = registry.latest_id(&checkouts_subject).unwrap();
    let schema = Schema::parse_str(CHECKOUT_AVSC).unwrap();
    let ev = checkout("avro-1", 1, 5);
    env.produce(
        &env.settings.topics.checkouts,
        Some("avro-1"),
        &frame(id, &schema, checkout_value(&ev)),
    )
    .await;
    env.wait_status("avro-1", "PENDING_PAYMENT").await;
    let (_, order) = app.get("/orders/avro-1").await;
    assert_eq!(order["total_minor"], CHECKOUT_TOTAL);
    assert_eq!(order["items"].as_array().unwrap().len(), 2);

    // A JSON payment on the same system; the output is Avro either way.
    env.produce_payment(&payment("avro-1", "p-1", CHECKOUT_TOTAL))
        .await;
    env.wait_status("avro-1", "PAID").await;
    env.wait_count("SELECT count(*) FROM outbox", 0).await;

    let out_subject = format!("{}-value", env.settings.topics.order_events);
    let out_id = registry.latest_id(&out_subject).unwrap();
    let out_schema = Schema::parse_str(include_str!("../../schemas/order-event.avsc")).unwrap();
    let records = env
        .read_topic(&env.settings.topics.order_events, 2, Duration::ZERO)
        .await;
    let mut types = Vec::new();
    for r in &records {
        assert_eq!(r.payload[0], 0, "magic byte");
        assert_eq!(
            u32::from_be_bytes(r.payload[1..5].try_into().unwrap()),
            out_id,
            "schema id of {out_subject}"
        );
        let value = apache_avro::reader::datum::GenericDatumReader::builder(&out_schema)
            .build()
            .unwrap()
            .read_value(&mut &r.payload[5..])
            .expect("a plain Avro datum");
        let json = orderflow::events::avro::to_json(value);
        assert_eq!(json["order_id"], "avro-1");
        types.push(json["event_type"].as_str().unwrap().to_owned());
        if json["event_type"] == "OrderCreated" {
            assert_eq!(json["order_created"]["total_minor"], CHECKOUT_TOTAL);
            assert!(json["order_paid"].is_null());
        }
    }
    assert_eq!(types, ["OrderCreated", "OrderPaid"]);

    // The analytics loop reads the Avro order-events as they are published.
    env.wait_count(
        "SELECT coalesce(sum(n), 0)::bigint FROM analytics_claims",
        2,
    )
    .await;
    let (_, summary) = app.get("/analytics/summary").await;
    assert_eq!(summary["orders_created"], 1, "{summary}");
    assert_eq!(summary["orders_paid"], 1);
    assert_eq!(summary["gross_revenue_minor"], CHECKOUT_TOTAL);

    app.stop().await;
}

#[tokio::test]
async fn newer_and_older_writer_schemas_and_json_share_one_topic() {
    let registry = RegistryDouble::start().await;
    let env = env_with_registry(&registry).await;
    let app = env.start().await;
    let subject = format!("{}-value", env.settings.topics.checkouts);

    // Newer writer: an added optional field the reader does not know.
    let mut newer: serde_json::Value = serde_json::from_str(CHECKOUT_AVSC).unwrap();
    newer["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "coupon", "type": ["null", "string"], "default": null}));
    let newer_text = newer.to_string();
    let newer_id = registry.force_register(&subject, &newer_text);
    let newer_schema = Schema::parse_str(&newer_text).unwrap();
    let ev = checkout("evo-new", 1, 1);
    let Value::Record(mut fields) = checkout_value(&ev) else {
        unreachable!()
    };
    fields.push((
        "coupon".into(),
        Value::Union(1, Box::new(Value::String("SAVE10".into()))),
    ));
    env.produce(
        &env.settings.topics.checkouts,
        Some("evo-new"),
        &frame(newer_id, &newer_schema, Value::Record(fields)),
    )
    .await;

    // Older writer: addresses without `state`, which the reader defaults to "".
    let older_text = CHECKOUT_AVSC.replace(
        r#"{"name": "state", "type": "string", "default": "", "doc": "Empty where the country has no states."},"#,
        "",
    );
    assert_ne!(older_text, CHECKOUT_AVSC, "the older schema must differ");
    let older_id = registry.force_register(&subject, &older_text);
    let older_schema = Schema::parse_str(&older_text).unwrap();
    let old = checkout("evo-old", 2, 1);
    let Value::Record(mut old_fields) = checkout_value(&old) else {
        unreachable!()
    };
    for (name, value) in old_fields.iter_mut() {
        if let (true, Value::Record(address)) = (name.ends_with("_address"), value) {
            address.retain(|(field, _)| field != "state");
        }
    }
    let old_avro = Value::Record(old_fields);
    env.produce(
        &env.settings.topics.checkouts,
        Some("evo-old"),
        &frame(older_id, &older_schema, old_avro),
    )
    .await;

    // And plain JSON on the same topic.
    env.produce_checkout(&checkout("evo-json", 3, 1)).await;

    env.wait_count("SELECT count(*) FROM orders", 3).await;
    let (_, newer_order) = app.get("/orders/evo-new").await;
    assert_eq!(newer_order["total_minor"], CHECKOUT_TOTAL);
    let (_, older_order) = app.get("/orders/evo-old").await;
    assert_eq!(older_order["shipping_address"]["state"], "");
    // No state: California's rate does not apply, the default (0) does.
    assert_eq!(older_order["tax_minor"], 0);
    assert_eq!(
        app.handled(&env.settings.topics.checkouts, Outcome::DeadLettered),
        0
    );

    app.stop().await;
}

#[tokio::test]
async fn bad_avro_is_dead_lettered_but_a_registry_outage_is_waited_out() {
    let registry = RegistryDouble::start().await;
    let env = env_with_registry(&registry).await;
    let app = env.start().await;
    let topic = env.settings.topics.checkouts.clone();
    let subject = format!("{topic}-value");

    // Unknown schema id, and a writer schema that cannot resolve to ours.
    env.produce(&topic, Some("bad-1"), &[0, 0, 0, 0x03, 0xe7, 2, 4, 6])
        .await;
    let alien = r#"{"type":"record","name":"Checkout","namespace":"orderflow.v1","fields":[{"name":"x","type":"int"}]}"#;
    let alien_id = registry.force_register("someone-else-value", alien);
    let alien_schema = Schema::parse_str(alien).unwrap();
    env.produce(
        &topic,
        Some("bad-2"),
        &frame(
            alien_id,
            &alien_schema,
            Value::Record(vec![("x".into(), Value::Int(1))]),
        ),
    )
    .await;
    app.wait_handled(&topic, Outcome::DeadLettered, 2).await;
    let dead = env
        .read_topic(&format!("{topic}.dlq"), 2, Duration::ZERO)
        .await;
    let reasons: Vec<&str> = dead.iter().map(|d| d.headers["error"].as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("undecodable Avro")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("does not resolve")),
        "{reasons:?}"
    );

    // A new schema version the worker has never fetched, then the registry
    // goes down: the message waits, it is not dead-lettered.
    let mut v2: serde_json::Value = serde_json::from_str(CHECKOUT_AVSC).unwrap();
    v2["doc"] = serde_json::json!("version 2 of the checkout");
    let v2_text = v2.to_string();
    let v2_id = registry.force_register(&subject, &v2_text);
    registry.set_down(true);
    let ev = checkout("outage-1", 9, 1);
    env.produce(
        &topic,
        Some("outage-1"),
        &frame(
            v2_id,
            &Schema::parse_str(&v2_text).unwrap(),
            checkout_value(&ev),
        ),
    )
    .await;
    let started = Instant::now();
    while app.running.metrics.transient_failures_count(&topic) < 2 {
        assert!(started.elapsed() < WAIT, "the outage was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.count("SELECT count(*) FROM orders").await, 0);
    registry.set_down(false);
    env.wait_status("outage-1", "PENDING_PAYMENT").await;
    assert_eq!(
        app.handled(&topic, Outcome::DeadLettered),
        2,
        "nothing more was dead-lettered"
    );
    assert!(registry.requests() > 0);

    app.stop().await;
}

#[tokio::test]
async fn schemas_check_fails_on_a_backward_incompatible_registered_version() {
    let registry = RegistryDouble::start().await;
    let env = env_with_registry(&registry).await;
    // Async: the registry double is served by this test's runtime.
    let run = |settings: &orderflow::config::Settings| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(["schemas", "check"])
            .env(
                "SCHEMA_REGISTRY_URL",
                settings.schema_registry_url.as_deref().unwrap(),
            )
            .envs(settings.topics.vars())
            .output()
    };
    let ok = run(&env.settings).await.unwrap();
    assert!(
        ok.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("BACKWARD compatible"));

    // Someone registered a checkout whose cart_id is a string: our schema
    // (long) cannot read what that writer produces.
    let broken = CHECKOUT_AVSC.replace(
        r#"{"name": "cart_id", "type": "long""#,
        r#"{"name": "cart_id", "type": "string""#,
    );
    assert_ne!(broken, CHECKOUT_AVSC);
    registry.force_register(&format!("{}-value", env.settings.topics.checkouts), &broken);
    let bad = run(&env.settings).await.unwrap();
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success(), "{stdout}");
    assert!(stdout.contains("NOT backward compatible"), "{stdout}");
}

/// `run` started before `schemas register`: the relay cannot encode order
/// events (the registry does not know the subject), and must recover once
/// the schemas are registered, without a restart. The registry client caches
/// such a "not found" for good unless told to forget it.
#[tokio::test]
async fn the_relay_recovers_once_the_order_events_schema_is_registered() {
    let registry = RegistryDouble::start().await;
    let url = registry.url.clone();
    let env = TestEnv::with(|s| s.schema_registry_url = Some(url)).await;
    let app = env.start().await;
    env.produce_checkout(&checkout("late-schema-1", 1, 1)).await;
    app.wait_handled(&env.settings.topics.checkouts, Outcome::Applied, 1)
        .await;
    let started = Instant::now();
    loop {
        let text = app.metrics().await;
        let failures =
            orderflow_testkit::prom::sum(&text, "orderflow_outbox_publish_failures_total", &[]);
        if failures >= 2.0 {
            break;
        }
        assert!(started.elapsed() < WAIT, "the relay never failed to encode");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.count("SELECT count(*) FROM outbox").await, 1);
    orderflow::schemas::register(&env.settings)
        .await
        .expect("register schemas");
    env.wait_count("SELECT count(*) FROM outbox", 0).await;
    let published = env
        .read_topic(&env.settings.topics.order_events, 1, Duration::ZERO)
        .await;
    assert_eq!(published[0].payload[0], 0, "published as Confluent Avro");
    app.stop().await;
}
