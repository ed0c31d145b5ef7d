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
        // The SIGKILLed instance redelivers what it applied since its last
        // offset commit (at most a second): hundreds at 100,000 events, but
        // a handful or none in a small run, where the input is a trickle.
        expect_redeliveries: opts.events >= 10_000,
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

/// Outbox shards each live worker's relay holds (0 for one that does not
/// answer, such as a frozen one).
async fn relay_shards(run: &Run) -> Vec<(usize, u32)> {
    let mut held = Vec::new();
    for (slot, s) in run.workers.iter().enumerate() {
        if let Some(worker) = &s.worker {
            held.push((slot, worker.relay_shards().await.unwrap_or(0)));
        }
    }
    held
}

/// Polls the relays' shards until `done` returns something, for at most
/// `within`; `what` says what was awaited when it never does.
async fn wait_shards<T>(
    run: &Run,
    within: Duration,
    what: &str,
    done: impl Fn(&[(usize, u32)]) -> Option<T>,
) -> anyhow::Result<T> {
    let since = Instant::now();
    loop {
        let held = relay_shards(run).await;
        if let Some(found) = done(&held) {
            return Ok(found);
        }
        if since.elapsed() > within {
            bail!(
                "{what}: shards per relay {held:?} of {} after {} s",
                run.outbox_shards(),
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Once every shard is held, the worker holding the most of them.
async fn busiest_relay(run: &Run, within: Duration) -> anyhow::Result<usize> {
    let total = run.outbox_shards();
    wait_shards(run, within, "not every shard held", |held| {
        let sum: u32 = held.iter().map(|(_, n)| n).sum();
        (sum == total).then(|| held.iter().max_by_key(|(_, n)| *n).expect("workers").0)
    })
    .await
}

/// Waits until every shard is held and each relay holds between 25 % and
/// 45 % of them; returns the shares.
async fn balanced(run: &Run, within: Duration) -> anyhow::Result<Vec<(usize, u32)>> {
    let total = run.outbox_shards();
    let fair = |n: u32| (25..=45).contains(&(n * 100 / total));
    wait_shards(run, within, "not each 25-45 %", |held| {
        let sum: u32 = held.iter().map(|(_, n)| n).sum();
        (sum == total && held.iter().all(|(_, n)| fair(*n))).then(|| held.to_vec())
    })
    .await
}

/// How long until the workers other than `not` hold every shard.
async fn taken_over(run: &Run, not: usize, within: Duration) -> anyhow::Result<Duration> {
    let since = Instant::now();
    let total = run.outbox_shards();
    wait_shards(run, within, "not taken over", |held| {
        let others: u32 = held
            .iter()
            .filter(|(slot, _)| *slot != not)
            .map(|(_, n)| n)
            .sum();
        (others == total).then(|| since.elapsed())
    })
    .await
}

/// Scenario 5: The relay holding the most outbox shards SIGKILLed
/// mid-publish: the others take its shards once their leases expire, and
/// every outbox row still reaches `order-events` in each order's order.
pub async fn relay_kill(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 2,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "relay-kill", spec).await?;
    run.produce(None);
    run.wait_sent(0.5).await?;
    let leader = busiest_relay(&run, Duration::from_secs(30)).await?;
    run.kill(leader).await?;
    let took = taken_over(&run, leader, Duration::from_secs(60)).await?;
    run.notes.push(format!(
        "the other relays held all shards {:.1} s after the kill",
        took.as_secs_f64()
    ));
    run.restart(leader).await?;
    run.recovered().await?;
    run.finish().await
}

/// Scenario 6: Three relays share the outbox shards, each holding 25–45 %
/// of them; the one holding the most is frozen (SIGSTOP): its session stays
/// open, yet the others must take its shards within 30 s; woken (SIGCONT),
/// it must publish nothing under the leases it lost (the oracle's fencing
/// check) and nothing out of order.
pub async fn relay_freeze(opts: &Options) -> anyhow::Result<Outcome> {
    let spec = Spec {
        workers: 3,
        ..Spec::default()
    };
    let mut run = Run::start(opts, "relay-freeze", spec).await?;
    run.produce(None);
    let shares = balanced(&run, Duration::from_secs(30)).await?;
    run.notes
        .push(format!("shards per relay before the freeze: {shares:?}"));
    run.wait_sent(0.4).await?;
    let leader = busiest_relay(&run, Duration::from_secs(30)).await?;
    run.signal(leader, Signal::SIGSTOP)?;
    let frozen = Instant::now();
    let took = taken_over(&run, leader, Duration::from_secs(30)).await?;
    run.notes.push(format!(
        "the other relays held all shards {:.1} s after the freeze",
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
