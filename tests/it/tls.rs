//! Transport security: PostgreSQL over verified TLS, and a Kafka client
//! built with SSL and zstd.
//!
//! `./scripts/test.sh` starts a throwaway PostgreSQL that accepts TLS
//! connections only (`hostnossl … reject`), with a CA of its own, and
//! exports `ORDERFLOW_TLS_DATABASE_URL` (`sslmode=verify-full`,
//! `sslrootcert=` that CA).

use std::time::Duration;

use orderflow::app::{self, Component};
use orderflow::store::inbox::Outcome;
use sqlx::{Connection, PgConnection};

use crate::helpers::{checkout, TestEnv, WAIT};

fn tls_url(database: &str) -> String {
    let url = std::env::var("ORDERFLOW_TLS_DATABASE_URL").expect(
        "ORDERFLOW_TLS_DATABASE_URL is not set: run ./scripts/test.sh, which starts a \
         TLS-only PostgreSQL, or point it at a server that requires TLS",
    );
    let (base, query) = url
        .split_once('?')
        .expect("the URL has sslmode=… parameters");
    let server = base.rsplit_once('/').expect("the URL names a database").0;
    format!("{server}/{database}?{query}")
}

#[tokio::test]
async fn orderflow_runs_on_postgresql_over_verified_tls() {
    let database = format!("orderflow_tls_{}", uuid::Uuid::new_v4().simple());
    let url = tls_url(&database);

    // The server refuses plaintext, so everything below went through TLS.
    let plain = url.replace("sslmode=verify-full", "sslmode=disable");
    let refused = PgConnection::connect(&plain).await;
    assert!(
        refused.is_err(),
        "the TLS-only server took a plaintext connection"
    );
    // verify-full checks the certificate against the given CA only: the
    // system's roots do not know the test CA.
    let without_ca = url
        .split('&')
        .filter(|p| !p.starts_with("sslrootcert="))
        .collect::<Vec<_>>()
        .join("&");
    assert!(
        PgConnection::connect(&without_ca).await.is_err(),
        "a certificate from an unknown CA was accepted"
    );

    orderflow::store::migrate(&url)
        .await
        .expect("migrations over TLS");
    let env = TestEnv::new().await;
    let mut settings = env.settings.clone();
    settings.database_url = url.clone();
    let running = app::start(settings.clone(), &Component::ALL)
        .await
        .expect("start over TLS");
    env.produce_checkout(&checkout("tls-1", 1, 1)).await;
    let started = std::time::Instant::now();
    while running
        .metrics
        .messages_count(&settings.topics.checkouts, Outcome::Applied.as_str())
        < 1
    {
        assert!(
            started.elapsed() < WAIT,
            "the checkout was not applied over TLS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pool = orderflow::store::pool(&url, 1).unwrap();
    let (orders, ssl): (i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders),
                (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((orders, ssl), (1, true));
    running.stop().await;
    pool.close().await;
}

#[tokio::test]
async fn a_zstd_compressed_checkout_is_applied() {
    let env = TestEnv::new().await;
    let app = env.start().await;
    let mut config = orderflow::kafka::producer_config(&env.settings);
    config.set("compression.type", "zstd");
    let producer: rdkafka::producer::FutureProducer = config.create().expect("zstd producer");
    let event = checkout("zstd-1", 1, 1);
    let payload = serde_json::to_vec(&event).unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&env.settings.topics.checkouts)
                .key("zstd-1")
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("the broker took a zstd batch");
    app.wait_handled(&env.settings.topics.checkouts, Outcome::Applied, 1)
        .await;
    env.wait_status("zstd-1", "PENDING_PAYMENT").await;
    app.stop().await;
}
