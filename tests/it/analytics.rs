//! Analytics: the rollups of order-events equal the same figures computed
//! by plain SQL from the order tables, to the minor unit, over several days
//! and currencies; after the relay republishes order-events; after a rebuild
//! that runs while the loop does; after the worker is SIGKILLed mid-stream.
//!
//! The oracle below reads the tables differently from the rebuild on
//! purpose: creations from the first history row, payments from `payments`,
//! lines from `orders.items`, percentiles with `percentile_disc`, ratios
//! with numeric `round`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, TimeDelta};
use orderflow::app::Component;
use orderflow::store::inbox::Outcome;
use orderflow_testkit::mix::{Input, Message, Mix, MixOptions, TOTAL};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{TestApp, TestEnv, WAIT};
use crate::restart::{Worker, GROUP};

/// The mix's cart (2 × 1,000 + 550, California tax 185) in each currency:
/// its shipping differs.
const CURRENCIES: [(&str, i64); 3] = [("USD", TOTAL), ("EUR", 3_225), ("JPY", 3_535)];

/// A seeded mix of orders' lives in `currency`: the test kit's mix, its
/// checkouts and payments moved to that currency (the right total where the
/// mix pays the right total, 7 less where it pays 7 less), its lines spread
/// over a small catalogue.
fn mix_in(
    currency: &str,
    total: i64,
    seed: u64,
    prefix: &str,
    events: usize,
) -> (Vec<Message>, usize) {
    let mix = Mix::generate(MixOptions {
        events,
        seed,
        prefix: Box::leak(prefix.to_owned().into_boxed_str()),
        skewed_clocks: false,
    });
    let mut rng = StdRng::seed_from_u64(seed ^ 0xa11);
    let messages = mix
        .messages
        .into_iter()
        .map(|mut m| {
            let Ok(mut doc) = serde_json::from_slice::<Value>(&m.payload) else {
                return m;
            };
            match m.input {
                Input::Checkouts => {
                    // Carts are numbered from 0 in every mix: keep them apart.
                    let cart = doc["cart_id"].as_i64().unwrap_or_default();
                    doc["cart_id"] = json!(cart + seed as i64 * 100_000);
                    doc["currency"] = json!(currency);
                    for item in doc["items"].as_array_mut().into_iter().flatten() {
                        let sku = format!("SKU-{}", rng.gen_range(1..=7));
                        item["name"] = json!(format!("Thing {sku}"));
                        item["sku"] = json!(sku);
                    }
                }
                Input::Payments => {
                    let amount = doc["amount_minor"].as_i64().unwrap_or_default();
                    doc["amount_minor"] = json!(amount - TOTAL + total);
                    doc["currency"] = json!(currency);
                }
                Input::Cancellations => {}
            }
            m.payload = serde_json::to_vec(&doc).unwrap();
            m
        })
        .collect();
    (messages, mix.distinct_events.len())
}

/// Several currencies' mixes, interleaved.
fn mixes(seed: u64, prefix: &str, events_per_currency: usize) -> (Vec<Message>, usize) {
    let mut all = Vec::new();
    let mut distinct = 0;
    for (i, (currency, total)) in CURRENCIES.iter().enumerate() {
        let (messages, n) = mix_in(
            currency,
            *total,
            seed + i as u64,
            &format!("{prefix}{currency}-"),
            events_per_currency,
        );
        all.push(messages);
        distinct += n;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut merged = Vec::new();
    while all.iter().any(|m| !m.is_empty()) {
        let k = rng.gen_range(0..all.len());
        if !all[k].is_empty() {
            merged.push(all[k].remove(0));
        }
    }
    (merged, distinct)
}

async fn produce_all(env: &TestEnv, messages: &[Message]) {
    let topics = &env.settings.topics;
    for m in messages {
        let key = m.key.as_deref().map(|k| std::str::from_utf8(k).unwrap());
        env.produce(m.input.topic(topics), key, &m.payload).await;
    }
}

/// Until every input event so far is applied and every order event so far
/// is counted by the analytics loop.
async fn settle(env: &TestEnv, inputs: i64) {
    wait_long(env, &format!("{inputs} input events applied"), || async {
        env.count("SELECT count(*) FROM processed_events").await >= inputs
    })
    .await;
    wait_long(env, "every order event counted", || async {
        let feed = env.count("SELECT count(*) FROM order_feed").await;
        let unsent = env.count("SELECT count(*) FROM outbox").await;
        let seen = env
            .count("SELECT count(DISTINCT id) FROM analytics_claims, unnest(ids) AS id")
            .await;
        unsent == 0 && seen >= feed
    })
    .await;
}

async fn wait_long<F, Fut>(_env: &TestEnv, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < WAIT * 4, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per (day, currency): the counters, from the order tables.
const ORACLE_COUNTS: &str = "
WITH created AS (
    SELECT (h.at AT TIME ZONE 'UTC')::date AS day, o.currency,
           count(*) FILTER (WHERE h.to_status <> 'REJECTED') AS created,
           count(*) FILTER (WHERE h.to_status = 'REJECTED') AS rejected
    FROM order_status_history h JOIN orders o ON o.order_id = h.order_id
    WHERE h.from_status IS NULL GROUP BY 1, 2),
paid AS (
    SELECT (p.recorded_at AT TIME ZONE 'UTC')::date AS day, o.currency,
           count(*) AS paid, sum(p.amount_minor) AS gross
    FROM payments p JOIN orders o ON o.order_id = p.order_id
    WHERE p.disposition = 'PAID' GROUP BY 1, 2),
moved AS (
    SELECT (h.at AT TIME ZONE 'UTC')::date AS day, o.currency,
           count(*) FILTER (WHERE h.to_status = 'PAYMENT_FAILED') AS failed,
           count(*) FILTER (WHERE h.to_status = 'CANCELLED') AS cancelled
    FROM order_status_history h JOIN orders o ON o.order_id = h.order_id
    WHERE h.from_status IS NOT NULL GROUP BY 1, 2),
refunded AS (
    SELECT (requested_at AT TIME ZONE 'UTC')::date AS day, currency,
           count(*) AS refunds, sum(amount_minor) AS amount
    FROM refunds GROUP BY 1, 2)
SELECT day, currency,
       COALESCE(created, 0)::bigint, COALESCE(rejected, 0)::bigint, COALESCE(paid, 0)::bigint,
       COALESCE(failed, 0)::bigint, COALESCE(cancelled, 0)::bigint, COALESCE(gross, 0)::bigint,
       COALESCE(refunds, 0)::bigint, COALESCE(amount, 0)::bigint
FROM created FULL JOIN paid USING (day, currency) FULL JOIN moved USING (day, currency)
     FULL JOIN refunded USING (day, currency)";

/// Time from creation to payment of every paid order, bucketed as the
/// README says (upper bound in seconds), with its day and currency.
const ORACLE_BUCKETS: &str = "
SELECT (p.recorded_at AT TIME ZONE 'UTC')::date AS day, o.currency,
       CASE WHEN s < 60 THEN s + 1
            WHEN s < 600 THEN (s / 10 + 1) * 10
            WHEN s < 3600 THEN (s / 60 + 1) * 60
            WHEN s < 86400 THEN (s / 600 + 1) * 600
            ELSE (s / 86400 + 1) * 86400 END AS le
FROM payments p JOIN orders o ON o.order_id = p.order_id,
     LATERAL (SELECT GREATEST(0, floor(extract(epoch FROM p.recorded_at - o.created_at)))::bigint AS s) AS t
WHERE p.disposition = 'PAID'";

type Counters = [i64; 8];

/// The expected figures of (currency, days), derived by SQL.
async fn expected_figures(pool: &PgPool, rows: &[Counters], buckets: &[i64]) -> Value {
    let mut c = [0i64; 8];
    for row in rows {
        for (total, n) in c.iter_mut().zip(row) {
            *total += n;
        }
    }
    let [created, rejected, paid, failed, cancelled, gross, refunds, refunded] = c;
    /// Average order value, conversion, cancellation rate, p50, p95.
    type Derived = (
        Option<i64>,
        Option<f64>,
        Option<f64>,
        Option<i32>,
        Option<i32>,
    );
    let derived: Derived = sqlx::query_as(
        "SELECT round($1::numeric / NULLIF($2, 0))::bigint,
                round($2::numeric / NULLIF($3, 0), 4)::float8,
                round($4::numeric / NULLIF($3, 0), 4)::float8,
                (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY le) FROM unnest($5::bigint[]) le)::int,
                (SELECT percentile_disc(0.95) WITHIN GROUP (ORDER BY le) FROM unnest($5::bigint[]) le)::int",
    )
    .bind(gross)
    .bind(paid)
    .bind(created)
    .bind(cancelled)
    .bind(buckets)
    .fetch_one(pool)
    .await
    .unwrap();
    json!({
        "orders_created": created, "orders_rejected": rejected, "orders_paid": paid,
        "orders_payment_failed": failed, "orders_cancelled": cancelled,
        "gross_revenue_minor": gross, "refunds_requested": refunds, "refunded_minor": refunded,
        "net_revenue_minor": gross - refunded,
        "average_order_value_minor": derived.0, "payment_conversion": derived.1,
        "cancellation_rate": derived.2,
        "time_to_pay_seconds": {"p50": derived.3, "p95": derived.4},
    })
}

/// Every figure of `/analytics/summary` and `/analytics/daily` (each
/// currency, the whole range) and of `/analytics/top-products` equals the
/// oracle's. Returns how many (day, currency) pairs were compared.
async fn assert_figures_match(env: &TestEnv, app: &TestApp) -> usize {
    type Row = (NaiveDate, String, i64, i64, i64, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(ORACLE_COUNTS)
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let samples: Vec<(NaiveDate, String, i64)> = sqlx::query_as(ORACLE_BUCKETS)
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let mut by_currency: BTreeMap<String, BTreeMap<NaiveDate, (Counters, Vec<i64>)>> =
        BTreeMap::new();
    for (day, currency, a, b, c, d, e, f, g, h) in rows {
        by_currency
            .entry(currency)
            .or_default()
            .entry(day)
            .or_default()
            .0 = [a, b, c, d, e, f, g, h];
    }
    for (day, currency, le) in samples {
        by_currency
            .entry(currency)
            .or_default()
            .entry(day)
            .or_default()
            .1
            .push(le);
    }
    let days: Vec<NaiveDate> = by_currency
        .values()
        .flat_map(|d| d.keys().copied())
        .collect();
    let (from, to) = (*days.iter().min().unwrap(), *days.iter().max().unwrap());
    let range = format!("from={from}&to={to}");
    let (status, body) = app.get(&format!("/analytics/summary?{range}")).await;
    if by_currency.len() > 1 {
        assert_eq!(status, 400, "several currencies need currency=: {body}");
    }
    let mut compared = 0;
    for (currency, days) in &by_currency {
        let all: Vec<Counters> = days.values().map(|(c, _)| *c).collect();
        let buckets: Vec<i64> = days.values().flat_map(|(_, b)| b.clone()).collect();
        let mut expected = expected_figures(&env.pool, &all, &buckets).await;
        expected["from"] = json!(from);
        expected["to"] = json!(to);
        expected["currency"] = json!(currency);
        let (status, summary) = app
            .get(&format!("/analytics/summary?{range}&currency={currency}"))
            .await;
        assert_eq!(status, 200, "{summary}");
        assert_eq!(summary, expected, "summary of {currency}");

        let (status, daily) = app
            .get(&format!("/analytics/daily?{range}&currency={currency}"))
            .await;
        assert_eq!(status, 200, "{daily}");
        let entries = daily["days"].as_array().unwrap();
        assert_eq!(
            entries.len() as i64,
            (to - from).num_days() + 1,
            "every day, empty ones too"
        );
        for entry in entries {
            let date: NaiveDate = serde_json::from_value(entry["date"].clone()).unwrap();
            let (counts, buckets) = days.get(&date).cloned().unwrap_or_default();
            let mut expected = expected_figures(&env.pool, &[counts], &buckets).await;
            expected["date"] = json!(date);
            assert_eq!(entry, &expected, "{currency} on {date}");
            compared += 1;
        }

        let products: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT i->>'sku', max(i->>'name'), sum((i->>'quantity')::bigint)::bigint,
                    sum((i->>'line_total_minor')::bigint)::bigint
             FROM orders o, json_array_elements(o.items) i
             WHERE o.currency = $1 AND o.status <> 'REJECTED'
             GROUP BY 1 ORDER BY 3 DESC, 4 DESC, 1",
        )
        .bind(currency)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        let expected: Vec<Value> = products
            .iter()
            .map(|(sku, name, units, revenue)| {
                json!({"sku": sku, "name": name, "units": units, "revenue_minor": revenue})
            })
            .collect();
        let (status, top) = app
            .get(&format!(
                "/analytics/top-products?{range}&currency={currency}&by=units&limit=100"
            ))
            .await;
        assert_eq!(status, 200, "{top}");
        assert_eq!(
            top["products"],
            json!(expected),
            "top products of {currency}"
        );
    }
    compared
}

#[tokio::test]
async fn rollups_equal_plain_sql_over_days_and_currencies_through_republish_and_rebuild() {
    let env = TestEnv::new().await;
    let clock = env.settings.clock.clone();
    let app = env.start().await;
    // Three days; a tail of each day's traffic arrives the next day, so some
    // orders are paid a day after they were created.
    let mut produced = std::collections::HashSet::new();
    let mut carried: Vec<Message> = Vec::new();
    for day in 0..3u64 {
        let (messages, _) = mixes(7_000 + day * 10, &format!("d{day}-"), 120);
        let cut = messages.len() * 9 / 10;
        let today: Vec<Message> = carried
            .drain(..)
            .chain(messages[..cut].iter().cloned())
            .collect();
        carried = messages[cut..].to_vec();
        produce_all(&env, &today).await;
        produced.extend(
            today
                .iter()
                .filter_map(|m| Some((m.input, m.event_id.clone()?))),
        );
        if day < 2 {
            settle(&env, produced.len() as i64).await;
            clock.advance(TimeDelta::days(1));
        }
    }
    produce_all(&env, &carried).await;
    produced.extend(
        carried
            .iter()
            .filter_map(|m| Some((m.input, m.event_id.clone()?))),
    );
    let mut inputs = produced.len() as i64;
    settle(&env, inputs).await;
    let compared = assert_figures_match(&env, &app).await;
    assert!(
        compared >= 9,
        "three days of three currencies, got {compared}"
    );
    let paid = env
        .count("SELECT count(DISTINCT currency) FROM orders WHERE status = 'PAID'")
        .await;
    assert_eq!(
        paid, 3,
        "every currency has paid orders (its total is right)"
    );
    let late = env
        .count(
            "SELECT count(*) FROM payments p JOIN orders o USING (order_id)
             WHERE p.disposition = 'PAID' AND p.recorded_at - o.created_at > interval '20 hours'",
        )
        .await;
    assert!(late > 0, "some orders were paid the next day");

    // The relay publishing order-events again (at-least-once): counted once.
    let published = env.count("SELECT count(*) FROM order_feed").await as usize;
    let records = env
        .read_topic(
            &env.settings.topics.order_events,
            published,
            Duration::from_millis(500),
        )
        .await;
    let duplicates_before = app.handled(&env.settings.topics.order_events, Outcome::Duplicate);
    for r in &records {
        env.produce(
            &env.settings.topics.order_events,
            r.key.as_deref(),
            &r.payload,
        )
        .await;
    }
    app.wait_handled(
        &env.settings.topics.order_events,
        Outcome::Duplicate,
        duplicates_before + records.len() as u64,
    )
    .await;
    assert_figures_match(&env, &app).await;

    // A rebuild while traffic flows and the loop runs: nothing counted
    // twice, nothing lost.
    clock.advance(TimeDelta::days(1));
    let (messages, distinct) = mixes(9_000, "rebuild-", 150);
    inputs += distinct as i64;
    let producer = TestEnv::with_settings(env.settings.clone()).await;
    let producing = tokio::spawn(async move { produce_all(&producer, &messages).await });
    wait_long(&env, "traffic under way", || async {
        env.count("SELECT count(*) FROM orders WHERE order_id LIKE 'rebuild-%'")
            .await
            > 30
    })
    .await;
    let rebuilt = orderflow::store::analytics::rebuild(&env.pool, None)
        .await
        .unwrap();
    assert!(rebuilt.daily_rows >= 9, "{rebuilt:?}");
    producing.await.unwrap();
    settle(&env, inputs).await;
    assert_figures_match(&env, &app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_worker_killed_mid_stream_counts_everything_once() {
    let env = TestEnv::new().await;
    // The first worker never commits offsets: whatever it counted is
    // redelivered to the second, which must not count it again.
    let mut first = Worker::spawn(
        &env.settings,
        &format!("{GROUP},auto.commit.interval.ms=3600000"),
    )
    .await;
    let (messages, inputs) = mixes(11_000, "kill-", 200);
    let producer = TestEnv::with_settings(env.settings.clone()).await;
    let producing = tokio::spawn(async move { produce_all(&producer, &messages).await });
    wait_long(&env, "some events counted", || async {
        env.count("SELECT coalesce(sum(n), 0)::bigint FROM analytics_claims")
            .await
            > 300
    })
    .await;
    first.kill().await;
    let second = Worker::spawn(&env.settings, GROUP).await;
    producing.await.unwrap();
    settle(&env, inputs as i64).await;
    second
        .wait_handled(&env.settings.topics.order_events, Outcome::Duplicate, 1)
        .await;
    // Compare through an in-process HTTP server on the same store.
    let reader = env.start_only(&[Component::Http]).await;
    assert_figures_match(&env, &reader).await;
    reader.stop().await;
    second.terminate().await;
}

#[tokio::test]
async fn bad_ranges_and_parameters_get_400_with_a_message() {
    let env = TestEnv::new().await;
    let app = env.start_only(&[Component::Http]).await;
    for (query, needle) in [
        (
            "/analytics/summary?from=2026-13-01&to=2026-12-01",
            "not a date",
        ),
        ("/analytics/summary?from=2026-02-01&to=2026-01-01", "after"),
        (
            "/analytics/daily?from=2025-01-01&to=2026-01-02",
            "at most 366",
        ),
        ("/analytics/summary?currency=U$D", "currency"),
        ("/analytics/summary?frm=2026-01-01", "unknown field"),
        ("/analytics/top-products?by=margin", "units or revenue"),
        ("/analytics/top-products?limit=0", "limit"),
        ("/analytics/daily?limit=5", "top-products"),
    ] {
        let (status, body) = app.get(query).await;
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{query}: {message}");
    }
    // No figures yet: zeros, every day listed, no currency to pick.
    let (status, daily) = app
        .get("/analytics/daily?from=2026-01-01&to=2026-01-03&currency=EUR")
        .await;
    assert_eq!(status, 200);
    let days = daily["days"].as_array().unwrap();
    assert_eq!(days.len(), 3);
    assert_eq!(days[1]["date"], "2026-01-02");
    assert_eq!(days[1]["orders_created"], 0);
    assert_eq!(days[1]["payment_conversion"], Value::Null);
    let (_, summary) = app
        .get("/analytics/summary?from=2026-01-01&to=2026-01-31")
        .await;
    assert_eq!(summary["currency"], Value::Null);
    assert_eq!(summary["gross_revenue_minor"], 0);
    app.stop().await;
}

#[tokio::test]
async fn the_loop_and_the_rebuild_bucket_times_to_pay_alike() {
    let env = TestEnv::new().await;
    let mut samples: Vec<i64> = vec![-1, 0, 999, 1_000, 59_999, 60_000, 86_399_999, 86_400_000];
    let mut rng = StdRng::seed_from_u64(5);
    samples.extend((0..2_000).map(|_| rng.gen_range(0..40 * 86_400_000i64)));
    let from_sql: Vec<i32> =
        sqlx::query_scalar("SELECT analytics_le_seconds(ms) FROM unnest($1::bigint[]) WITH ORDINALITY AS t(ms, n) ORDER BY n")
            .bind(&samples)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    for (ms, sql) in samples.iter().zip(from_sql) {
        assert_eq!(
            orderflow::analytics::rollup::le_seconds(*ms),
            sql,
            "{ms} ms"
        );
    }
}

/// Tansu answers a fetch that starts inside a record batch with the next
/// batch (docs/tansu.md), and the relay writes `order-events` in batches: a
/// loop that resumes at a committed offset inside one must read the skipped
/// records again rather than count without them.
#[tokio::test]
async fn a_loop_resuming_inside_a_record_batch_counts_every_record() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Offset, TopicPartitionList};

    let env = TestEnv::new().await;
    let topic = env.settings.topics.order_events.clone();
    let refund = |amount: i64| {
        serde_json::to_vec(&json!({
            "event_id": uuid::Uuid::now_v7().to_string(),
            "order_id": "gap-1",
            "occurred_at": "2026-11-30T12:00:00Z",
            "event_type": "RefundRequested",
            "payment_id": "pay-gap-1",
            "amount_minor": amount,
            "currency": "USD",
            "reason": "test",
        }))
        .unwrap()
    };
    // Sixty records in one producer batch (offsets 0–59), as the relay
    // sends them under load.
    let batching: FutureProducer = orderflow::kafka::producer_config(&env.settings)
        .set("linger.ms", "500")
        .create()
        .unwrap();
    let payloads: Vec<Vec<u8>> = (0..60).map(|i| refund(100 + i)).collect();
    let sends = payloads.iter().map(|p| {
        batching.send(
            FutureRecord::<str, [u8]>::to(&topic)
                .key("gap-1")
                .payload(p),
            Duration::from_secs(10),
        )
    });
    let delivered: Vec<(i32, i64)> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|d| {
            d.map(|d| (d.partition, d.offset))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    let partition = delivered[0].0;
    assert_eq!(
        delivered.iter().map(|d| d.1).collect::<Vec<_>>(),
        (0..60).collect::<Vec<_>>()
    );
    // And one more, in a batch of its own (offset 60).
    assert_eq!(
        env.produce(&topic, Some("gap-1"), &refund(1_000)).await,
        (partition, 60)
    );
    // The group counted offsets 0–19 before it stopped: its committed offset
    // is inside the batch.
    let group = format!("{}.analytics", env.settings.group_id);
    let committer: BaseConsumer = orderflow::kafka::observer_config(&env.settings, &group)
        .create()
        .unwrap();
    let mut at = TopicPartitionList::new();
    at.add_partition_offset(&topic, partition, Offset::Offset(20))
        .unwrap();
    committer.commit(&at, CommitMode::Sync).unwrap();

    let app = env
        .start_only(&[Component::Analytics, Component::Http])
        .await;
    // Offsets 20–60: 41 refunds of 120…159 and 1,000.
    let expected_minor: i64 = (120..160).sum::<i64>() + 1_000;
    env.wait_until("offsets 20–60 counted", || async {
        env.count("SELECT coalesce(sum(refunds_requested), 0)::bigint FROM analytics_daily")
            .await
            == 41
    })
    .await;
    assert_eq!(
        env.count("SELECT sum(refunded_minor)::bigint FROM analytics_daily")
            .await,
        expected_minor
    );
    assert!(
        app.metrics().await.contains(&format!(
            "orderflow_consumer_rewinds_total{{topic=\"{topic}\"}}"
        )),
        "the loop read the skipped records again"
    );
    // Nothing more arrives later (the records before 20 are not counted).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.count("SELECT coalesce(sum(refunds_requested), 0)::bigint FROM analytics_daily")
            .await,
        41
    );
    app.stop().await;
}

/// The claim rows: an event read again on its partition is found, whatever
/// the batch around it; one read on another partition after the topic's
/// partition count changed is found too; purging forgets whole rows older
/// than the retention.
#[tokio::test]
async fn claims_find_earlier_copies_and_purge_by_age() {
    use orderflow::store::claims::{claim, purge_claims};
    use uuid::Uuid;

    let env = TestEnv::new().await;
    let mut conn = env.pool.acquire().await.unwrap();
    let hour_ago = (chrono::Utc::now() - TimeDelta::hours(1)).timestamp_millis() as u128;
    let old = Uuid::from_u128((hour_ago << 80) | (7 << 76) | (2 << 62) | 42);
    let recent: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let mut first = recent.clone();
    first.push(old);
    assert_eq!(claim(&mut conn, 0, 6, &first).await.unwrap().len(), 6);

    // A redelivery with something new: only the new one is fresh.
    let new = Uuid::now_v7();
    let again = [recent[0], recent[4], old, new];
    let fresh = claim(&mut conn, 0, 6, &again).await.unwrap();
    assert_eq!(fresh, [new].into_iter().collect());
    // Within one batch, an id counts once.
    let twice = Uuid::now_v7();
    assert_eq!(
        claim(&mut conn, 2, 6, &[twice, twice]).await.unwrap().len(),
        1
    );

    // After partitions were added a key can move: rows claimed under the
    // old count are searched on every partition.
    let moved = claim(&mut conn, 5, 8, &[recent[1], old]).await.unwrap();
    assert!(moved.is_empty(), "{moved:?}");

    // Rows whose ids are all older than the cutoff go, whole.
    let purged = purge_claims(&env.pool, chrono::Utc::now() - TimeDelta::minutes(30))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(
        claim(&mut conn, 0, 6, &[old, recent[2]]).await.unwrap(),
        [old].into_iter().collect()
    );
}
