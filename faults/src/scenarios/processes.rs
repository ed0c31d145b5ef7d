//! Faults of the processes: workers killed, frozen, joining and leaving;
//! the relay leader killed and frozen.

use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::Signal;

use crate::report::Outcome;
use crate::run::{Options, Run, Spec};

/// Scenario 1: SIGKILL of a worker mid-batch, three times.
pub async fn kill(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 2,
        expect_redeliveries: true,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "kill", spec).await?;
    // At least 30 s of input, so each kill lands mid-stream in small runs.
    run.produce(Some(run.spread_over(Duration::from_secs(30))));
    for fraction in [0.25, 0.5, 0.75] {
        run.wait_sent(fraction).await?;
        run.kill(0).await?;
        run.restart(0).await?;
        run.recovered().await?;
    }
    run.finish().await
}

/// Scenario 4: Rebalances under load, with default consumer settings: three
/// instances; a fourth joins, one is SIGKILLed, one stops gracefully.
pub async fn rebalance(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 3,
        expect_redeliveries: true,
        default_consumer_settings: true,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "rebalance", spec).await?;
    run.produce(Some(run.spread_over(Duration::from_secs(60))));
    run.wait_sent(0.25).await?;
    run.faults += 1;
    run.add_worker().await?;
    run.recovered().await?;
    run.wait_sent(0.5).await?;
    run.kill(1).await?;
    let killed = run.recovered().await?;
    run.wait_sent(0.75).await?;
    run.faults += 1;
    run.stop(2).await?;
    run.recovered().await?;
    run.notes.push(format!(
        "after the SIGKILL, caught up in {:.0} s",
        killed.as_secs_f64()
    ));
    run.finish().await
}

/// The slot whose worker holds the relay lease.
async fn relay_leader(run: &Run) -> anyhow::Result<Option<usize>> {
    for (slot, s) in run.workers.iter().enumerate() {
        if let Some(worker) = &s.worker {
            let page = worker.metrics_page().await.unwrap_or_default();
            if page.lines().any(|l| l.trim() == "orderflow_relay_leader 1") {
                return Ok(Some(slot));
            }
        }
    }
    Ok(None)
}

async fn wait_for_leader(
    run: &Run,
    not: Option<usize>,
    within: Duration,
) -> anyhow::Result<(usize, Duration)> {
    let since = Instant::now();
    loop {
        if let Some(slot) = relay_leader(run).await? {
            if Some(slot) != not {
                return Ok((slot, since.elapsed()));
            }
        }
        if since.elapsed() > within {
            bail!(
                "no relay leader (other than worker {not:?}) within {} s",
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Scenario 5: The relay leader SIGKILLed mid-publish: a standby takes the lease
/// once it expires, and every outbox row still reaches `order-events` in
/// each order's order.
pub async fn relay_kill(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 2,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "relay-kill", spec).await?;
    run.produce(None);
    run.wait_sent(0.5).await?;
    let (leader, _) = wait_for_leader(&run, None, Duration::from_secs(30)).await?;
    run.kill(leader).await?;
    let (_, took) = wait_for_leader(&run, Some(leader), Duration::from_secs(60)).await?;
    run.notes.push(format!(
        "a standby took over the outbox {:.1} s after the kill",
        took.as_secs_f64()
    ));
    run.restart(leader).await?;
    run.recovered().await?;
    run.finish().await
}

/// Scenario 6: A frozen relay leader (SIGSTOP): its session stays open, yet a
/// standby must take over within 30 s; woken (SIGCONT), it must publish
/// nothing out of order.
pub async fn relay_freeze(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 2,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "relay-freeze", spec).await?;
    run.produce(None);
    run.wait_sent(0.4).await?;
    let (leader, _) = wait_for_leader(&run, None, Duration::from_secs(30)).await?;
    run.signal(leader, Signal::SIGSTOP)?;
    let frozen = Instant::now();
    let (_, took) = wait_for_leader(&run, Some(leader), Duration::from_secs(30)).await?;
    run.notes.push(format!(
        "a standby took over the outbox {:.1} s after the freeze",
        took.as_secs_f64()
    ));
    let hold = opts.scaled(Duration::from_secs(40));
    tokio::time::sleep(hold.saturating_sub(frozen.elapsed())).await;
    run.worker(leader)?.signal(Signal::SIGCONT)?;
    run.recovered().await?;
    run.finish().await
}

/// Scenario 7: A frozen consumer: SIGSTOP past the session timeout, then SIGCONT.
/// Its partitions move; woken, its in-flight batch must not apply twice
/// nor commit an offset over the new owner's work.
pub async fn consumer_freeze(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 2,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "consumer-freeze", spec).await?;
    run.produce(None);
    run.wait_sent(0.4).await?;
    run.signal(1, Signal::SIGSTOP)?;
    // Past the 10 s session the scenarios run with (20 s in quick runs).
    tokio::time::sleep(opts.scaled(Duration::from_secs(60))).await;
    run.worker(1)?.signal(Signal::SIGCONT)?;
    run.recovered().await?;
    run.finish().await
}
