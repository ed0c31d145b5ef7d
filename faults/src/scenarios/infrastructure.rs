//! Faults of what orderflow depends on: PostgreSQL restarted or out of
//! connections, the broker restarted, the network between them bad, the
//! schema registry gone.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::{ConnectOptions, Connection};

use crate::proxy::Mode;
use crate::report::Outcome;
use crate::run::{Options, Run, Spec};

/// The local cluster's version, for `pg_ctlcluster`.
fn cluster_version() -> anyhow::Result<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .context("no /etc/postgresql: this scenario restarts a local Debian cluster")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no PostgreSQL cluster in /etc/postgresql")
}

async fn pg_ctl(action: &str) -> anyhow::Result<()> {
    let version = cluster_version()?;
    let mut command = tokio::process::Command::new("pg_ctlcluster");
    command.args(["--skip-systemctl-redirect", &version, "main", action]);
    if action == "stop" {
        command.args(["--", "-m", "fast"]);
    }
    let status = command
        .status()
        .await
        .context("failed to run pg_ctlcluster")?;
    if !status.success() {
        bail!("pg_ctlcluster {action} failed: {status}");
    }
    Ok(())
}

/// Scenario 2: PostgreSQL stopped for 10 s mid-stream, then started: loops pause
/// and resume without leaving their groups.
pub async fn postgres_restart(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 2,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "postgres-restart", spec).await?;
    // Spread over ~40 s, so traffic keeps coming through the outage.
    run.produce(Some(run.spread_over(Duration::from_secs(40))));
    run.wait_sent(0.4).await?;
    run.faults += 1;
    pg_ctl("stop").await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let batches = committed_batches(&run).await;
    pg_ctl("start").await?;
    let back = Instant::now();
    while committed_batches(&run).await <= batches {
        if back.elapsed() > Duration::from_secs(120) {
            bail!("no batch committed within 2 minutes of PostgreSQL's return");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = back.elapsed();
    run.notes.push(format!(
        "first batch committed {:.1} s after PostgreSQL was back",
        resumed.as_secs_f64()
    ));
    run.recovered().await?;
    run.finish().await
}

/// Batches committed so far by the live workers.
async fn committed_batches(run: &Run) -> f64 {
    let mut n = 0.0;
    for slot in &run.workers {
        if let Some(worker) = &slot.worker {
            if let Ok(page) = worker.metrics_page().await {
                n +=
                    orderflow_testkit::prom::sum(&page, "orderflow_batch_size_messages_count", &[]);
            }
        }
    }
    n
}

/// Scenario 3: The broker stopped and started on the same port and storage: every
/// client reconnects by itself.
pub async fn broker_restart(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        durable_broker: true,
        workers: 2,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "broker-restart", spec).await?;
    // Tansu's sqlite storage, the one that survives a restart, falls behind
    // at 2,000 messages/s (docs/tansu.md): a quarter of that.
    run.produce(Some(run.spread_over(Duration::from_secs(200))));
    run.wait_sent(0.4).await?;
    run.faults += 1;
    // Tansu 0.6 answers produce requests in flight across its restart with
    // UNKNOWN_SERVER_ERROR (a panic in its storage layer: docs/tansu.md),
    // which fails the send for good; the mix is paused around the restart
    // so no input is lost on the way in. orderflow's relay keeps publishing
    // through it.
    run.pause_input().await?;
    run.broker.restart().await?;
    run.resume_input();
    run.recovered().await?;
    run.finish().await
}

/// Scenario 8: A bad network between orderflow and the broker, then PostgreSQL:
/// added latency, every connection cut, traffic black-holed.
pub async fn network(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 2,
        kafka_proxy: true,
        pg_proxy: true,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "network", spec).await?;
    run.produce(None);
    let blackhole = opts.scaled(Duration::from_secs(30));
    for (at, to_broker) in [(0.15, true), (0.55, false)] {
        fn phase(run: &Run, to_broker: bool) -> &crate::proxy::Proxy {
            let proxy = if to_broker {
                &run.kafka_proxy
            } else {
                &run.pg_proxy
            };
            proxy.as_ref().expect("started with one")
        }
        run.wait_sent(at).await?;
        run.faults += 3;
        phase(&run, to_broker).set(Mode::Delay(Duration::from_millis(50)));
        tokio::time::sleep(Duration::from_secs(10)).await;
        phase(&run, to_broker).set(Mode::Pass);
        phase(&run, to_broker).cut_all();
        run.recovered().await?;
        phase(&run, to_broker).set(Mode::Blackhole);
        tokio::time::sleep(blackhole).await;
        phase(&run, to_broker).set(Mode::Pass);
        run.recovered().await?;
    }
    run.finish().await
}

/// Scenario 10: The schema registry down for 60 s with Avro traffic in flight:
/// nothing dead-lettered, everything applied once it is back.
pub async fn registry_down(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 2,
        avro: true,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "registry-down", spec).await?;
    run.produce(None);
    run.wait_sent(0.3).await?;
    run.faults += 1;
    let registry = run.registry.as_ref().expect("started with one");
    registry.set_down(true);
    tokio::time::sleep(opts.scaled(Duration::from_secs(60))).await;
    registry.set_down(false);
    run.recovered().await?;
    run.finish().await
}

/// Scenario 11: Every PostgreSQL connection taken by another client for 30 s:
/// retried, not dead-lettered.
pub async fn connections(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 2,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "connections", spec).await?;
    run.produce(None);
    run.wait_sent(0.4).await?;
    run.faults += 1;
    let options: sqlx::postgres::PgConnectOptions = run.settings().database_url.parse()?;
    let mut hogs = Vec::new();
    // Superusers may take the reserved slots too: take until refused.
    while let Ok(conn) = options.connect().await {
        hogs.push(conn);
        if hogs.len() > 10_000 {
            break;
        }
    }
    run.notes.push(format!(
        "took the {} connections PostgreSQL had left",
        hogs.len()
    ));
    tokio::time::sleep(opts.scaled(Duration::from_secs(30))).await;
    for conn in hogs {
        let _ = conn.close().await;
    }
    run.recovered().await?;
    run.finish().await
}
