//! Faults of the input: poison, overload, a duplicate storm, clocks that
//! disagree and events that arrive long before their checkout; and the soak.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use orderflow_testkit::mix::Input;
use orderflow_testkit::prom::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::report::Outcome;
use crate::run::{inputs_handled, Options, Run, Spec};

/// Scenario 9: Poison: a tenth of the input mutated (truncated JSON, wrong types,
/// huge numbers, non-UTF-8 keys and values, bad Avro frames, 10 MB
/// payloads) among valid traffic on all three topics.
pub async fn poison(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 2,
        poison: opts.events / 10,
        huge: if opts.quick { 1 } else { 3 },
        avro: true,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "poison", spec).await?;
    run.faults = run.poison.len();
    run.produce(None);
    run.settle().await?;
    let panics = worker_logs_mention(&run, "panicked")?;
    if panics > 0 {
        run.notes
            .push(format!("{panics} panics in the worker logs"));
    }
    let mut outcome = run.finish().await?;
    if panics > 0 {
        outcome.failed = Some(format!("{panics} panics"));
    }
    Ok(outcome)
}

fn worker_logs_mention(run: &Run, what: &str) -> anyhow::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(run.dir())? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with("worker-"))
        {
            n += std::fs::read_to_string(&path)?.matches(what).count();
        }
    }
    Ok(n)
}

/// Scenario 12: Overload: input at three times the sustainable rate; lag grows and
/// drains, RSS stays bounded, and the status route keeps answering fast.
pub async fn overload(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 2,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "overload", spec).await?;
    let sustainable = calibrate(&mut run).await?;
    let rate = 3 * sustainable;
    run.notes.push(format!("sustainable ≈ {sustainable} events/s (measured on the first tenth); the rest produced at {rate}/s"));
    run.faults += 1;
    let stop = Arc::new(AtomicBool::new(false));
    let order = run.mix.model.keys().next().cloned().unwrap_or_default();
    let probe = tokio::spawn(probe_status(
        run.worker(0)?.base.clone(),
        order,
        stop.clone(),
    ));
    run.produce_range(run.messages.len() / 10..run.messages.len(), Some(rate));
    let (mut peak_rss, mut peak_lag) = (0.0f64, 0i64);
    let started = Instant::now();
    while run.progress.sent() < run.total_messages() {
        run.check_producer().await?;
        if started.elapsed().as_secs() % 30 == 29 {
            eprintln!(
                "[faults] overload: {} of {} sent",
                run.progress.sent(),
                run.total_messages()
            );
        }
        for slot in &run.workers {
            if let Some(w) = &slot.worker {
                peak_rss = peak_rss.max(w.rss_mb().0);
            }
        }
        let lag = run.progress.distinct() as i64 - run.processed().await.unwrap_or(0);
        peak_lag = peak_lag.max(lag);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let overloaded = started.elapsed();
    run.recovered().await?;
    stop.store(true, Ordering::SeqCst);
    let mut latencies = probe.await?;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let p99 = latencies
        .get(latencies.len() * 99 / 100)
        .copied()
        .unwrap_or(0.0);
    run.notes.push(format!(
        "overloaded for {:.0} s: lag peaked at {peak_lag} events, worker RSS at {peak_rss:.0} MB; status route p99 {p99:.1} ms over {} probes",
        overloaded.as_secs_f64(),
        latencies.len()
    ));
    let mut outcome = run.finish().await?;
    if p99 >= 50.0 {
        outcome.failed = Some(format!("status p99 {p99:.1} ms ≥ 50 ms under overload"));
    }
    Ok(outcome)
}

/// Produces the first tenth as fast as the broker takes it and measures how
/// fast the workers apply it: events per second, from the first send to
/// the last of them applied.
async fn calibrate(run: &mut Run) -> anyhow::Result<u64> {
    let started = Instant::now();
    run.produce_range(0..run.messages.len() / 10, Some(0));
    run.produced().await?;
    let target = run.progress.distinct() as i64;
    while run.processed().await.unwrap_or(0) < target {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("calibration did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(((target as f64 / started.elapsed().as_secs_f64()) as u64).max(100))
}

/// Status-route latencies (ms), 20 requests a second, until `stop`.
async fn probe_status(base: String, order: String, stop: Arc<AtomicBool>) -> Vec<f64> {
    let client = reqwest::Client::new();
    let mut latencies = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        let answered = client
            .get(format!("{base}/orders/{order}/status"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok();
        latencies.push(if answered {
            t.elapsed().as_secs_f64() * 1000.0
        } else {
            5000.0
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies
}

/// Scenario 13: A duplicate storm: the whole input replayed twice more (the groups'
/// offsets reset to the beginning): every message a duplicate, no change.
pub async fn duplicate_storm(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 2,
        expect_redeliveries: true,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "duplicate-storm", spec).await?;
    run.produce(None);
    run.settle().await?;
    let before = snapshot(&run).await?;
    for round in 1..=2 {
        for slot in 0..run.workers.len() {
            run.stop(slot).await?;
        }
        reset_offsets(&run)?;
        run.faults += 1;
        for slot in 0..run.workers.len() {
            run.restart(slot).await?;
        }
        let want = run.progress.sent() as f64;
        let since = Instant::now();
        while handled_now(&run, "duplicate").await < want {
            if since.elapsed() > Duration::from_secs(600) {
                bail!("replay {round} was not handled within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let applied = handled_now(&run, "applied").await;
        if applied > 0.0 {
            run.notes
                .push(format!("replay {round}: {applied} messages applied again"));
        }
    }
    let after = snapshot(&run).await?;
    let mut outcome = run.finish().await?;
    if before != after {
        outcome.failed = Some(format!("state changed: {before:?} → {after:?}"));
    }
    Ok(outcome)
}

/// Row counts that a replay must leave as they are.
async fn snapshot(run: &Run) -> anyhow::Result<Vec<i64>> {
    let mut counts = Vec::new();
    for table in [
        "orders",
        "order_status_history",
        "payments",
        "refunds",
        "outbox",
        "processed_events",
    ] {
        counts.push(
            sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&run.pool)
                .await?,
        );
    }
    Ok(counts)
}

/// Input messages of `outcome` handled by the live workers (since they
/// started).
async fn handled_now(run: &Run, outcome: &str) -> f64 {
    let mut n = 0.0;
    for slot in &run.workers {
        if let Some(worker) = &slot.worker {
            if let Ok(page) = worker.metrics_page().await {
                n += inputs_handled(run.settings(), &page, Some(outcome));
            }
        }
    }
    n
}

/// Commits offset 0 for every partition of every input, for each loop's
/// group, while no member is running.
fn reset_offsets(run: &Run) -> anyhow::Result<()> {
    let settings = run.settings();
    for input in Input::ALL {
        let topic = input.topic(&settings.topics);
        let group = settings.group_for(topic);
        let consumer: BaseConsumer = orderflow::kafka::observer_config(settings, &group)
            .create()
            .context("offset reset consumer")?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(0))?;
        }
        consumer
            .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            .with_context(|| format!("failed to reset {group}'s offsets"))?;
    }
    Ok(())
}

/// Scenario 14: Clocks that disagree and events long before their checkout:
/// `occurred_at` from a week in the past to an hour in the future, and the
/// checkouts of a twentieth of the orders held back for up to ten minutes.
pub async fn clock_skew(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 2,
        skewed_clocks: true,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "clock-skew", spec).await?;
    let hold = opts.scaled(Duration::from_secs(600));
    run.hold_back_checkouts(20, hold);
    run.faults += 1;
    run.produce(None);
    run.settle().await?;
    run.notes.push(format!(
        "checkouts held back for {:.0} s",
        hold.as_secs_f64()
    ));
    run.finish().await
}

/// Scenario 15: Soak: 1,000 events/s for 30 minutes, a random worker SIGKILLed every
/// five; resources and latency must stay flat.
pub async fn soak(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 2,
        expect_redeliveries: true,
        ..Spec::default()
    };
    let length = opts.scaled(Duration::from_secs(1800));
    let mut opts = opts.clone();
    opts.events = (length.as_secs() * 1000) as usize;
    let mut run = Run::start(&opts, "soak", spec).await?;
    run.produce(Some(1000));
    let every = length / 6;
    let started = Instant::now();
    let mut windows = Vec::new();
    let mut before = latency(&run).await;
    // Resources are compared from the end of the first window, once the
    // workers carry the load, to the end.
    let mut start = None;
    for k in 0..6 {
        tokio::time::sleep((every * (k + 1)).saturating_sub(started.elapsed())).await;
        if start.is_none() {
            start = Some(resources(&run).await);
        }
        let now = latency(&run).await;
        windows.push(now.minus(&before).quantile(0.99) * 1000.0);
        if k < 5 {
            let victim = k as usize % 2;
            run.kill(victim).await?;
            run.restart(victim).await?;
            before = latency(&run).await;
        }
        run.scrape().await;
    }
    let end = resources(&run).await;
    run.settle().await?;
    let start = start.expect("measured in the first window");
    run.notes.push(format!(
        "resources (RSS MB, open fds, db connections) after the first window {start:?}, after the last {end:?}"
    ));
    run.notes.push(format!(
        "checkout batch commit p99 (ms) per window: {:?}",
        windows.iter().map(|w| w.round()).collect::<Vec<_>>()
    ));
    run.finish().await
}

/// (RSS MB, open file descriptors) of each live worker, and connections to
/// the scenario's database.
async fn resources(run: &Run) -> (Vec<(f64, usize)>, i64) {
    let per_worker = run
        .workers
        .iter()
        .filter_map(|s| s.worker.as_ref())
        .map(|w| {
            let fds = w
                .pid()
                .and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
                .map_or(0, |d| d.count());
            (w.rss_mb().0.round(), fds)
        })
        .collect();
    let db = run
        .world
        .settings
        .database_url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let connections =
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
            .bind(db)
            .fetch_one(&run.pool)
            .await
            .unwrap_or(-1);
    (per_worker, connections)
}

/// The checkouts' batch durations (a batch's transaction, from its first
/// statement to its commit), summed over live workers. Not the
/// occurred_at → commit histogram: the mix stamps occurred_at when it is
/// generated, before the run.
async fn latency(run: &Run) -> Histogram {
    let topic = run.settings().topics.checkouts.clone();
    let mut sum = Histogram::default();
    for slot in &run.workers {
        if let Some(worker) = &slot.worker {
            let page = worker.metrics_page().await.unwrap_or_default();
            sum = sum.plus(&Histogram::parse(
                &page,
                "orderflow_batch_duration_seconds",
                &topic,
            ));
        }
    }
    sum
}
