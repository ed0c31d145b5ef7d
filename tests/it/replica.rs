//! Reads from a real hot standby (`DATABASE_READ_URL`): the read routes are
//! served by it, a read with `?min_lsn=` (a position from a response) or
//! `?min_event=` (an event id from a live stream) never returns data older
//! than what the client has seen, and `orderflow_replica_lag_*` follows the
//! standby.
//!
//! `./scripts/test.sh` starts a throwaway primary and a standby streaming
//! from it (`pg_basebackup -R`) and exports `ORDERFLOW_REPLICA_PRIMARY_URL`
//! and `ORDERFLOW_REPLICA_STANDBY_URL`.

use std::time::Instant;

use orderflow::app::{self, Component};
use orderflow::store::inbox::Outcome;
use orderflow::store::replica::Lsn;
use orderflow_testkit::prom;
use sqlx::PgPool;

use crate::helpers::{checkout, TestEnv, WAIT};

fn server(var: &str) -> String {
    let url = std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: run ./scripts/test.sh, which starts a primary and a hot \
             standby of its own"
        )
    });
    url.rsplit_once('/')
        .expect("the URL names a database")
        .0
        .to_owned()
}

struct Reply {
    status: u16,
    from: String,
    lsn: Option<Lsn>,
}

async fn get(http: &reqwest::Client, url: &str) -> Reply {
    let response = http.get(url).send().await.expect("the request");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Reply {
        status: response.status().as_u16(),
        from: header("x-orderflow-read-from").unwrap_or_default(),
        lsn: header("x-orderflow-lsn").and_then(|l| Lsn::parse(&l)),
    }
}

async fn metrics_page(http: &reqwest::Client, metrics_url: &str) -> String {
    http.get(metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn scalar_f64(metrics_url: &str, http: &reqwest::Client, name: &str) -> f64 {
    let page = metrics_page(http, metrics_url).await;
    let value = prom::samples(&page, name)
        .next()
        .map_or(f64::NAN, |(_, v)| v);
    value
}

#[tokio::test]
async fn reads_go_to_the_standby_and_min_lsn_never_reads_older_than_seen() {
    let database = format!("orderflow_replica_{}", uuid::Uuid::new_v4().simple());
    let primary_url = format!("{}/{database}", server("ORDERFLOW_REPLICA_PRIMARY_URL"));
    let standby_url = format!("{}/{database}", server("ORDERFLOW_REPLICA_STANDBY_URL"));
    let standby_admin = PgPool::connect(&format!(
        "{}/postgres",
        server("ORDERFLOW_REPLICA_STANDBY_URL")
    ))
    .await
    .expect("the standby");
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&standby_admin)
        .await
        .unwrap();
    assert!(
        in_recovery,
        "ORDERFLOW_REPLICA_STANDBY_URL is not a standby"
    );
    orderflow::store::migrate(&primary_url)
        .await
        .expect("migrations on the primary");

    let env = TestEnv::new().await;
    let mut settings = env.settings.clone();
    settings.database_url = primary_url.clone();
    settings.database_read_url = Some(standby_url);
    let running = app::start(settings.clone(), &Component::ALL)
        .await
        .expect("start with a replica");
    let base = format!("http://{}", running.http_addr.unwrap());
    let metrics_url = format!("{base}/metrics");
    let http = reqwest::Client::new();
    let primary = orderflow::store::pool(&primary_url, 2).unwrap();
    let applied = |n: u64| {
        let (metrics, topic) = (running.metrics.clone(), settings.topics.checkouts.clone());
        move || {
            let metrics = metrics.clone();
            let topic = topic.clone();
            async move { metrics.messages_count(&topic, Outcome::Applied.as_str()) >= n }
        }
    };

    // Replayed by the standby, read from it.
    env.produce_checkout(&checkout("repl-a", 1, 1)).await;
    env.wait_until("checkout a applied", applied(1)).await;
    let status_a = format!("{base}/orders/repl-a/status");
    env.wait_until("order a read from the standby", || async {
        let reply = get(&http, &status_a).await;
        reply.status == 200 && reply.from == "replica"
    })
    .await;
    let sessions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = $1 AND application_name = 'orderflow-read'",
    )
    .bind(&database)
    .fetch_one(&standby_admin)
    .await
    .unwrap();
    assert!(sessions >= 1, "no orderflow-read session on the standby");
    let history = get(&http, &format!("{base}/users/1/orders")).await;
    assert_eq!((history.status, history.from.as_str()), (200, "replica"));
    assert!(history.lsn.is_some(), "a position header");

    // A live stream of user 1 (streams read the primary).
    let mut live =
        orderflow_testkit::sse::connect(&http, &format!("{base}/users/1/orders/events"), None)
            .await
            .expect("a user stream");
    let snapshot = live.next(WAIT).await.unwrap().unwrap();
    assert_eq!(snapshot.event, "snapshot");

    // The standby stops replaying: it falls behind the next write.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&standby_admin)
        .await
        .unwrap();
    env.produce_checkout(&checkout("repl-b", 2, 1)).await;
    env.wait_until("checkout b applied", applied(2)).await;
    let created = live.next(WAIT).await.unwrap().unwrap();
    assert_eq!(created.event, "OrderCreated");
    let event_id = created.id.clone().expect("an event id");
    let written: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&primary)
        .await
        .unwrap();
    let written = Lsn::parse(&written).unwrap();
    let status_b = format!("{base}/orders/repl-b/status");
    // Without a position: the standby's view, where b does not exist yet.
    let stale = get(&http, &status_b).await;
    assert_eq!((stale.status, stale.from.as_str()), (404, "replica"));
    assert!(stale.lsn.unwrap() < written);
    // With one: the primary, after waiting for the standby in vain.
    let fresh = get(&http, &format!("{status_b}?min_lsn={written}")).await;
    assert_eq!((fresh.status, fresh.from.as_str()), (200, "primary"));
    let seen = fresh.lsn.expect("a position header");
    assert!(seen >= written);
    // The same with the event id the stream gave: b exists from that event.
    let by_event = get(&http, &format!("{status_b}?min_event={event_id}")).await;
    assert_eq!((by_event.status, by_event.from.as_str()), (200, "primary"));
    let history = get(
        &http,
        &format!("{base}/users/1/orders?min_event={event_id}"),
    )
    .await;
    assert_eq!((history.status, history.from.as_str()), (200, "primary"));
    env.wait_until("the lag gauges show the paused standby", || async {
        scalar_f64(&metrics_url, &http, "orderflow_replica_lag_bytes").await > 0.0
            && scalar_f64(&metrics_url, &http, "orderflow_replica_lag_seconds").await > 0.0
    })
    .await;

    // Replay resumes: min_lsn reads move to the standby once it has replayed
    // the position, and never show b missing on the way.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&standby_admin)
        .await
        .unwrap();
    let mut from_replica = 0;
    let started = Instant::now();
    while from_replica < 10 {
        assert!(
            started.elapsed() < WAIT,
            "min_lsn reads never reached the standby"
        );
        let query = if from_replica % 2 == 0 {
            format!("min_lsn={seen}")
        } else {
            format!("min_event={event_id}")
        };
        let reply = get(&http, &format!("{status_b}?{query}")).await;
        assert_eq!(
            reply.status, 200,
            "a read with {query} older than seen ({})",
            reply.from
        );
        if reply.from == "replica" {
            from_replica += 1;
        }
    }
    env.wait_until("the lag gauges back to 0", || async {
        scalar_f64(&metrics_url, &http, "orderflow_replica_lag_bytes").await == 0.0
    })
    .await;
    for bad in ["min_lsn=nope", "min_event=-3"] {
        assert_eq!(
            get(&http, &format!("{status_b}?{bad}")).await.status,
            400,
            "{bad}"
        );
    }
    drop(live);
    let page = metrics_page(&http, &metrics_url).await;
    assert!(page.contains("orderflow_http_reads_total{source=\"replica\"}"));
    assert!(page.contains("orderflow_http_reads_total{source=\"primary\"}"));

    running.stop().await;
    primary.close().await;
    standby_admin.close().await;
}
